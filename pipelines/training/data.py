"""Training data: load, validate, split, fingerprint, and save the reference snapshot.

Sources are CSV/Parquet files or scikit-learn's bundled datasets, plus (``viops prepare --extra-data``) the labelled
rows of production windows. Validation fails with a :class:`~pipelines.tables.DataError` that names the file, the
column and the problem, before anything is trained or registered.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config.schema import DataConfig
from pipelines.tables import DataError, check_columns, fingerprint, read_table, select_columns, usable_labelled_rows
from pipelines.training.streaming import TrainStream, scan

__all__ = [
    "PreparedData",
    "load_frame",
    "validate_frame",
    "labelled_rows",
    "prepare",
    "load_prepared",
    "count_classes",
    "check_counts",
    "check_informative",
    "check_trainable",
]

MANIFEST = "manifest.json"


REFERENCE = "reference.parquet"


SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class PreparedData:
    """Validated, split data ready for training.

    Attributes:
        source: where the data came from (a file path or ``sklearn:<name>``).
        features: feature column names, in model order.
        target: the label column name.
        fingerprint: content hash of the full validated table (columns, dtypes and values).
        train, validation, test: the deterministic split; ``train[features]`` is the reference snapshot.
        stream: for a streamed source (``data.streaming``), where the training rows are read from; ``train``,
            ``validation`` and ``test`` are then bounded seeded samples of the splits
            (:mod:`pipelines.training.streaming`).
    """

    source: str
    features: tuple[str, ...]
    target: str
    fingerprint: str
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    stream: TrainStream | None = None

    @property
    def num_rows(self) -> int:
        if self.stream is not None:
            return self.stream.num_rows
        return len(self.train) + len(self.validation) + len(self.test)

    @property
    def train_rows(self) -> int:
        """N: the rows of the training split (of which ``train`` holds a sample when streamed)."""
        return self.stream.train_rows if self.stream is not None else len(self.train)

    def manifest(self) -> dict:
        return {
            "source": self.source,
            "features": list(self.features),
            "target": self.target,
            "fingerprint": self.fingerprint,
            "rows": {name: len(getattr(self, name)) for name in SPLITS} if self.stream is None else {
                "all": self.stream.num_rows, "train": self.stream.train_rows,
                "in_memory": {name: len(getattr(self, name)) for name in SPLITS}},
        }

    def save(self, directory: str | Path) -> Path:
        """Write the splits, the reference snapshot (training features) and a manifest to ``directory``."""
        if self.stream is not None:
            raise DataError(f"data {self.source} is streamed (data.streaming): 'viops train' reads it in place; "
                            f"there are no splits to write")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name in SPLITS:
            getattr(self, name).to_parquet(directory / f"{name}.parquet", index=False)
        self.train[list(self.features)].to_parquet(directory / REFERENCE, index=False)
        (directory / MANIFEST).write_text(json.dumps(self.manifest(), indent=2))
        return directory


def load_frame(cfg: DataConfig) -> tuple[pd.DataFrame, str]:
    """Read the configured source into a DataFrame; returns ``(frame, source description)``."""
    if cfg.sklearn is not None:
        from sklearn import datasets

        loader = getattr(datasets, f"load_{cfg.sklearn}")
        frame = loader(as_frame=True).frame
        return frame.rename(columns=str), f"sklearn:{cfg.sklearn}"
    return read_table(cfg.path), str(cfg.path)


def validate_frame(frame: pd.DataFrame, cfg: DataConfig, source: str) -> tuple[list[str], str]:
    """Check the table against the config; returns ``(features, target)``.

    Raises:
        DataError: no rows, a missing column, a non-numeric column, or a missing/non-finite value.
    """
    target = cfg.target or "target"
    columns = [str(c) for c in frame.columns]
    if len(frame) == 0:
        raise DataError(f"data {source} has no rows (columns: {', '.join(columns) or 'none'})")
    features = select_columns(columns, target, cfg.features, source)
    check_columns(frame, [*features, target], source)
    return features, target


def labelled_rows(path: str | Path, features: list[str], target: str) -> pd.DataFrame:
    """The rows of ``path`` whose features and target are all present and finite (those columns only).

    A production window holds rows whose label has not arrived yet, or whose inputs were bad; those are dropped, not
    trained on. Extra columns (predictions, ids) are ignored.

    Raises:
        DataError: the file cannot be read, lacks a feature or the target, has a non-numeric one, or has no usable row.
    """
    frame = read_table(path)
    columns = [*features, target]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"extra data {path}: column(s) {missing} not found; columns are: "
                        f"{', '.join(map(str, frame.columns))} (expected the training features and target)")
    for column in columns:
        values = frame[column]
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            raise DataError(f"extra data {path}: column {column!r} is not numeric (dtype {values.dtype})")
    usable = usable_labelled_rows(frame, list(features), target).rows
    if usable.empty:
        raise DataError(f"extra data {path} has no labelled row with finite features and target "
                        f"({len(frame)} rows, none usable)")
    return usable.reset_index(drop=True)


def prepare(cfg: DataConfig, extra: list[str | Path] | tuple = ()) -> PreparedData:
    """Load, validate and split the configured data (deterministic in ``cfg.split.seed``).

    ``extra``: files of new labelled rows (e.g. a production window) appended before the split, so that they reach
    training, validation and the held-out test set alike. Only their rows with finite features and target count.
    """
    if cfg.streaming.enabled:
        if extra:
            raise DataError(f"data {cfg.path} is streamed (data.streaming): add new labelled rows as another Parquet "
                            f"file of the dataset folder, not with --extra-data")
        stream, digest, samples = scan(cfg)
        columns = stream.columns
        return PreparedData(stream.source, tuple(columns[:-1]), columns[-1], digest, **samples, stream=stream)
    frame, source = load_frame(cfg)
    features, target = validate_frame(frame, cfg, source)
    table = frame[[*features, target]].astype("float64")
    if extra:
        added = [labelled_rows(path, features, target) for path in extra]
        table = pd.concat([table, *added])
        source = " + ".join([source, *map(str, extra)])
    table = table.reset_index(drop=True)
    n = len(table)
    order = np.random.default_rng(cfg.split.seed).permutation(n)
    n_test, n_val = int(round(cfg.split.test * n)), int(round(cfg.split.validation * n))
    n_train = n - n_test - n_val
    if n_train < 1 or (cfg.split.validation > 0 and n_val < 1):
        raise DataError(
            f"data {source} has {n} rows: too few for a {cfg.split.validation:.0%} validation / "
            f"{cfg.split.test:.0%} test split with at least one row in each"
        )
    parts = np.split(order, [n_train, n_train + n_val])
    train, validation, test = (table.iloc[np.sort(p)].reset_index(drop=True) for p in parts)
    return PreparedData(source, tuple(features), target, fingerprint(table), train, validation, test)


def load_prepared(directory: str | Path) -> PreparedData:
    """Read data written by :meth:`PreparedData.save`."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise DataError(f"{directory} holds no prepared data ({MANIFEST} missing); run 'viops prepare' first")
    manifest = json.loads(manifest_path.read_text())
    splits = {name: pd.read_parquet(directory / f"{name}.parquet") for name in SPLITS}
    return PreparedData(
        manifest["source"], tuple(manifest["features"]), manifest["target"], manifest["fingerprint"], **splits
    )


def count_classes(data: PreparedData, declared: int | None = None) -> int:
    """The number of classes ``C`` of a classification target, whose labels must be the integers ``0..C-1``.

    Raises:
        DataError: a label is not a non-negative integer, exceeds ``declared - 1``, or there is only one class.
    """
    if data.stream is not None:
        return data.stream.count_classes(declared)
    where = f"data {data.source}: target column {data.target!r}"
    top = -1
    for split in SPLITS:
        labels = getattr(data, split)[data.target].to_numpy()
        if not len(labels):
            continue
        bad = np.flatnonzero((labels < 0) | (labels != np.round(labels)))
        if len(bad):
            raise DataError(f"{where} must hold class indices 0, 1, ..., C-1 for a classifier; "
                            f"found {labels[bad[0]]!r} in the {split} split (row {int(bad[0])} of that split)")
        top = max(top, int(labels.max()))
    classes = top + 1
    if declared is not None and classes > declared:
        raise DataError(f"{where} has label {top} but model.num_classes is {declared} (labels must be < num_classes)")
    classes = declared or classes
    if classes < 2:
        raise DataError(f"{where} has a single class (every label is 0); a classifier needs at least two")
    return classes


def check_counts(data: PreparedData, total_count: int) -> None:
    """Check that every feature is a count in ``0..total_count`` (``total_count=1``: 0/1 data), as a binomial or
    Bernoulli likelihood needs.

    Raises:
        DataError: naming the split, column and row of the first value that is not such a count.
    """
    if data.stream is not None:
        return data.stream.check_counts(total_count)
    for split in SPLITS:
        frame = getattr(data, split)
        values = frame[list(data.features)].to_numpy()
        bad = (values < 0) | (values > total_count) | (values != np.round(values))
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise DataError(
                f"data {data.source}: column {data.features[col]!r} must hold counts 0..{total_count} for this "
                f"likelihood; found {values[row, col]!r} in the {split} split (row {row} of that split)"
            )


def check_trainable(data: PreparedData, model) -> None:
    """The checks of ``data`` that depend on the model (``model``: the config's ``model:`` section), made before any
    MLflow run exists: counts for the VAE's likelihood, something to learn for a supervised model.

    Raises:
        DataError: see :func:`check_counts` and :func:`check_informative`.
    """
    if model.kind == "vae":
        check_counts(data, model.max_count)
    else:
        check_informative(data)


def check_informative(data: PreparedData) -> None:
    """Check that a supervised model has something to learn: no feature and not the target is constant over the
    training split (a constant feature is collinear with the intercept, a constant target has nothing to explain).

    Raises:
        DataError: naming the constant column(s) and their value.
    """
    train = data.train
    if data.stream is not None:
        found = data.stream.constant_columns()
    else:
        found = [(c, train[c].iloc[0]) for c in [*data.features, data.target]
                 if len(train) and train[c].nunique(dropna=False) <= 1]
    constant = [c for c, _ in found]
    if constant:
        values = ", ".join(f"{c!r} = {v:.6g}" for c, v in found)
        what = "the target is" if constant == [data.target] else "column(s) are"
        raise DataError(f"data {data.source}: {what} constant over the {data.train_rows} training rows ({values}); "
                        f"a constant column carries no information: drop it from data.features or fix the data")
