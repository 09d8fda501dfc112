"""The traffic split of a canary: the champion and the candidate, loaded and checked, and the router between them.

While a challenger is in canary (:mod:`pipelines.registry.deployment`), what production serves for a model is the
split: ``viops score --model NAME`` routes each row (:func:`~pipelines.serving.routing.route`) and says which version
answered it; ``viops serve --model NAME`` serves :class:`~pipelines.serving.routing.CanaryRouter`, saved by
:func:`save_router` as an MLflow pyfunc model from the two versions' signature-checked posteriors. ``NAME@champion``
or ``NAME/3`` always mean that one version alone.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipelines.serving.loading import LoadedVersion, fetch_checked, load_version
from pipelines.tables import DataError

__all__ = ["CanarySplit", "load_split", "save_router"]


@dataclass
class CanarySplit:
    """The champion, the candidate in canary, and the share of rows the candidate answers."""

    model: str
    champion: LoadedVersion
    candidate: LoadedVersion
    fraction: float
    key_column: str | None = None
    step: int = 0

    @property
    def spec(self) -> dict:
        """The router's routing file: versions, fraction and key column."""
        return {"model": self.model, "champion": self.champion.version, "candidate": self.candidate.version,
                "fraction": self.fraction, "key_column": self.key_column, "step": self.step}

    def router(self):
        """The router in this process, over the two versions already loaded."""
        from pipelines.serving.routing import CanaryRouter

        return CanaryRouter.of(self.spec, self.champion.predictor, self.candidate.predictor)

    def check_frame(self, frame, source: str) -> None:
        """The routing key must be in the input when the canary routes by one.

        Raises:
            DataError: the key column is missing.
        """
        if self.key_column is not None and self.key_column not in frame.columns:
            raise DataError(f"{source}: no column {self.key_column!r}: the canary of {self.model} routes rows by it "
                            f"(deploy.key_column); add it, or score one version (NAME@champion)")


def load_split(client, model: str, *, tracking_uri: str) -> CanarySplit | None:
    """The model's canary split, both versions loaded (signatures checked); None when no challenger is in canary.

    Raises:
        DataError: the two versions were trained on different features (they cannot share one input).
    """
    from pipelines.registry.deployment import live_candidate
    from pipelines.registry.versions import CHAMPION

    deployment = live_candidate(client, model)
    if deployment is None or deployment.stage != "canary":
        return None
    champion = load_version(client, model, f"@{CHAMPION}", tracking_uri=tracking_uri)
    candidate = load_version(client, model, deployment.version, tracking_uri=tracking_uri)
    if list(champion.bundle.features) != list(candidate.bundle.features):
        raise DataError(f"canary version {candidate.version} of {model} reads features {candidate.bundle.features}, "
                        f"the champion {champion.bundle.features}: one input cannot be routed to both")
    return CanarySplit(model, champion, candidate, deployment.fraction, deployment.policy.key_column, deployment.step)


def save_router(client, split: CanarySplit, *, tracking_uri: str, dst: str | Path) -> Path:
    """Save the canary router as an MLflow pyfunc model in ``dst`` (for ``mlflow models serve``): the two versions'
    posteriors, downloaded and checked against their signatures, and the routing file."""
    import mlflow.pyfunc

    from pipelines.serving.pyfunc import pip_requirements, stage_pyfunc_code
    from pipelines.serving.routing import ROUTER_CODE, ROUTER_ENTRY_POINT

    work = Path(tempfile.mkdtemp(prefix="viops-canary-"))
    try:
        artifacts = {}
        for role, version in (("champion", split.champion.version), ("candidate", split.candidate.version)):
            _, local, _ = fetch_checked(client, split.model, version, tracking_uri=tracking_uri,
                                        dst=str(work / role))
            (posterior,) = Path(local).rglob("posterior.pt")
            artifacts[role] = str(posterior)
        routing = work / "routing.json"
        routing.write_text(json.dumps(split.spec, indent=2))
        artifacts["routing"] = str(routing)
        mlflow.pyfunc.save_model(str(dst), python_model=str(ROUTER_ENTRY_POINT), artifacts=artifacts,
                                 code_paths=stage_pyfunc_code(work / "code", ROUTER_CODE),
                                 pip_requirements=pip_requirements())
    finally:
        shutil.rmtree(work, ignore_errors=True)  # save_model copied what the router needs into dst
    return Path(dst)
