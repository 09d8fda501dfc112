"""Batch scoring with a registered model version: predictions with uncertainty, validated input, per-batch latency.

``viops score --model NAME[@alias|/version] --input FILE --output FILE`` loads the version's pyfunc (the same one
``mlflow models serve`` serves), checks the input against the training schema (the model's feature columns, numeric,
finite) before any prediction, and scores it in batches. Columns of the input that are not features (ids, labels)
are carried into the output next to the predictions. Each batch's latency is recorded. While a challenger is in
canary, a bare ``NAME`` scores with the canary split (:mod:`pipelines.serving.canary`): each row is answered by the
version the canary routes it to, named in a ``version`` column.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.serving.loading import LoadedVersion, load_ref
from pipelines.tables import DataError, check_columns, read_table

__all__ = ["validate_input", "ScoringResult", "score_frame", "score_file"]


def validate_input(frame: pd.DataFrame, loaded: LoadedVersion, source: str, *, with_target: bool = False
                   ) -> pd.DataFrame:
    """The model's feature columns (and the target, if asked) of ``frame`` as float64, checked.

    Raises:
        DataError: no rows, a missing column, a non-numeric column, or a NaN/inf value, naming source, column and row.
    """
    bundle = loaded.bundle
    columns = [*bundle.features, *([bundle.target] if with_target else [])]
    check_columns(frame, columns, source, expected=f"version {loaded.version} of {loaded.name} was trained on "
                                                   f"features {bundle.features}")
    return frame[columns].astype("float64")


@dataclass(frozen=True)
class ScoringResult:
    """What ``score_file`` did: rows, output path, throughput and each batch's latency (seconds)."""

    model: str
    version: str
    rows: int
    output: str
    seconds: float
    batch_rows: list[int] = field(default_factory=list)
    batch_seconds: list[float] = field(default_factory=list)
    canary: dict | None = None  # the canary split that routed the rows (versions, fraction, rows it answered)

    def to_json(self) -> dict:
        latency = np.asarray(self.batch_seconds) * 1000.0
        return {
            "model": self.model, "version": self.version, "rows": self.rows, "output": self.output,
            "seconds": round(self.seconds, 4), "rows_per_second": self.rows / self.seconds if self.seconds else None,
            "batches": len(self.batch_seconds),
            "batch_latency_ms": {"p50": float(np.percentile(latency, 50)), "p95": float(np.percentile(latency, 95)),
                                 "max": float(latency.max())} if len(latency) else None,
            "batch_rows": self.batch_rows, "batch_seconds": [round(s, 6) for s in self.batch_seconds],
            "canary": self.canary,
        }


def score_frame(loaded: LoadedVersion, features: pd.DataFrame, *, batch_size: int = 10_000,
                num_samples: int | None = None, seed: int | None = None, device: str | None = None,
                predict=None) -> tuple[pd.DataFrame, list[float]]:
    """Predictions for validated ``features`` in batches of ``batch_size`` rows; returns ``(predictions, seconds)``.
    ``device``: where the pyfunc computes (``"cpu"``, ``"cuda"``, ``"cuda:<index>"``; default the CPU).
    ``predict(batch, params)``: another predictor than the version's pyfunc (a canary's router)."""
    params = {k: v for k, v in (("num_samples", num_samples), ("seed", seed), ("device", device)) if v is not None}
    predict = predict or (lambda batch, p: loaded.pyfunc.predict(batch, params=p))
    parts, seconds = [], []
    for start in range(0, len(features), batch_size):
        batch = features.iloc[start:start + batch_size]
        began = time.perf_counter()
        parts.append(predict(batch, params or None))
        seconds.append(time.perf_counter() - began)
    return pd.concat(parts), seconds


def _canary(client, ref: str, tracking_uri: str):
    """The model's canary split when ``ref`` is a bare model name (what production serves) and one is live."""
    from pipelines.registry.versions import parse_model_ref
    from pipelines.serving.canary import load_split

    name, selector = parse_model_ref(ref)
    return load_split(client, name, tracking_uri=tracking_uri) if selector is None else None


def _check_device(device: str | None) -> None:
    """A ``--device`` this machine lacks is a usage error, found before anything is read or written."""
    from pipelines.config.base import ConfigError
    from pipelines.serving.pyfunc import scoring_device

    if device is not None:
        try:
            scoring_device(device)
        except ValueError as exc:
            raise ConfigError(f"--device: {exc}") from None


def _check_device_param(loaded: LoadedVersion, device: str) -> None:
    """A version registered before its pyfunc took ``device`` would drop the param and score on the CPU: refuse."""
    from pipelines.config.base import ConfigError

    schema = loaded.pyfunc.metadata.get_params_schema()
    if "device" not in {param.name for param in (schema.params if schema else [])}:
        raise ConfigError(f"--device {device}: version {loaded.version} of {loaded.name} was registered without the "
                          f"device parameter and scores on the CPU only; leave out --device, or register it again")


def score_file(client, ref: str, input_path: str | Path, output_path: str | Path, *, tracking_uri: str,
               batch_size: int = 10_000, num_samples: int | None = None, device: str | None = None
               ) -> ScoringResult:
    """Score ``input_path`` (CSV/Parquet) with the model ``ref`` and write predictions to ``output_path``.

    The output has the input's non-feature columns (ids, labels ...) followed by the prediction columns, and a
    ``<output>.latency.json`` beside it with the per-batch latencies. Nothing is written when the input is invalid.

    Raises:
        DataError: unreadable input, or columns/values that do not match the model's training schema.
        RegistryError: unknown model, alias or version.
    """
    if batch_size < 1:
        raise DataError(f"batch size must be at least 1, got {batch_size}")
    _check_device(device)
    output_path = Path(output_path)
    if output_path.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise DataError(f"output {output_path}: unsupported format {output_path.suffix!r}; use .csv or .parquet")
    split = _canary(client, ref, tracking_uri)
    loaded = split.champion if split is not None else load_ref(client, ref, tracking_uri=tracking_uri)
    if device is not None:
        for version in [loaded] if split is None else [split.champion, split.candidate]:
            _check_device_param(version, device)
    frame = read_table(input_path)
    features = validate_input(frame, loaded, str(input_path))
    predict = None
    if split is not None:  # each row answered by the version the canary routes it to, which is named per row
        split.check_frame(frame, str(input_path))
        if split.key_column is not None:
            features = pd.concat([features, frame[[split.key_column]]], axis=1)
        router = split.router()
        predict = lambda batch, params: router.predict(None, batch, params)  # noqa: E731
    began = time.perf_counter()
    predictions, batch_seconds = score_frame(loaded, features, batch_size=batch_size, num_samples=num_samples,
                                             device=device, predict=predict)
    seconds = time.perf_counter() - began
    passthrough = frame.drop(columns=list(loaded.bundle.features))
    clash = sorted(set(passthrough.columns) & set(predictions.columns))
    if clash:
        raise DataError(f"input {input_path}: column(s) {clash} would be overwritten by the prediction columns; "
                        f"rename them")
    out = pd.concat([passthrough.reset_index(drop=True), predictions.reset_index(drop=True)], axis=1)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    if output_path.suffix.lower() == ".csv":
        out.to_csv(output_path, index=False)
    else:
        out.to_parquet(output_path, index=False)
    rows = [len(features.iloc[s:s + batch_size]) for s in range(0, len(features), batch_size)]
    canary = None
    if split is not None:
        from pipelines.serving.routing import VERSION_COLUMN

        canary = {**split.spec, "rows": int((predictions[VERSION_COLUMN] == split.candidate.version).sum())}
    result = ScoringResult(loaded.name, loaded.version, len(out), str(output_path), seconds, rows, batch_seconds,
                           canary)
    Path(f"{output_path}.latency.json").write_text(json.dumps(result.to_json(), indent=2))
    return result
