"""Experiments by name when two processes create the same one at once (two monitors opening their first incident)."""

from mlflow import MlflowClient

from pipelines.tracking import experiment_id


class _Late(MlflowClient):
    """A client that, like a process racing another, looks before the other creates and creates after it did."""

    def get_experiment_by_name(self, name):
        found = super().get_experiment_by_name(name)
        if not getattr(self, "looked", False):
            self.looked = True
            MlflowClient(self._tracking_client.tracking_uri).create_experiment(name)  # the other process wins
            return None
        return found


def test_the_loser_of_a_create_race_gets_the_winners_experiment(tracking_uri):
    late = _Late(tracking_uri)
    got = experiment_id(late, "viops-incidents")
    assert got == MlflowClient(tracking_uri).get_experiment_by_name("viops-incidents").experiment_id
    assert experiment_id(MlflowClient(tracking_uri), "viops-incidents") == got  # found, not created again
    assert experiment_id(MlflowClient(tracking_uri), "fresh") != got  # created
