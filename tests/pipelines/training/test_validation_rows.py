"""The checks during training evaluate a fixed, seeded sample of a large validation split; the final metrics use all
of it."""

import torch

from models import objectives
from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from pipelines.training import evaluation, svi_module
from pipelines.training.data import prepare
from pipelines.training.evaluation import seeded_rows


def test_seeded_rows_are_a_fixed_sample_in_table_order_and_a_small_table_is_whole():
    x, y = torch.arange(3000.0).unsqueeze(1).repeat(1, 2), torch.arange(3000.0)
    xs, ys = seeded_rows((x, y), 500, seed=1)
    assert xs.shape == (500, 2) and torch.equal(xs[:, 0], ys) and torch.equal(ys, ys.sort().values)
    assert len(ys.unique()) == 500 and abs(float(ys.mean()) - 1500) < 200
    assert torch.equal(seeded_rows((x, y), 500, seed=1)[1], ys)
    assert not torch.equal(seeded_rows((x, y), 500, seed=2)[1], ys)
    assert seeded_rows((x, y), 3000, seed=1)[0] is x


def test_validation_checks_see_val_rows_of_the_split_the_same_each_time_and_final_metrics_the_whole(
        example_dir, tracking_uri, monkeypatch):
    seen = {"checks": [], "final": []}

    def recorded(where):
        def held_out_fit(model, family, x, y, **kwargs):
            seen[where].append(x.clone())
            return objectives.held_out_fit(model, family, x, y, **kwargs)
        return held_out_fit

    monkeypatch.setattr(svi_module, "held_out_fit", recorded("checks"))
    monkeypatch.setattr(evaluation, "held_out_fit", recorded("final"))
    config = load_config(example_dir / "blr_csv.yaml", {"train.max_epochs": 4, "train.val_rows": 150})
    data = prepare(config.data)
    result = train(config, prepared=data, tracking_uri=tracking_uri, register=False)
    whole = len(data.validation)
    assert whole > 150 and len(seen["checks"]) >= 10
    assert all(torch.equal(rows, seen["checks"][0]) for rows in seen["checks"]) and len(seen["checks"][0]) == 150
    assert sorted(len(rows) for rows in seen["final"]) == sorted([whole, len(data.test)])
    assert result.metrics["validation_elbo_per_datum"] < 0
