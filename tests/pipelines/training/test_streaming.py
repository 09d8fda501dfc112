"""Training data larger than memory (``data.streaming``): one validating pass, then epochs through a shuffle buffer."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from pipelines.config.schema import DataConfig, TrainConfig
from pipelines.tables import DataError
from pipelines.training.data import check_informative, count_classes, prepare
from pipelines.training.evaluation import standardization
from pipelines.training.stream_batches import StreamedBatches, StreamedGroup
from pipelines.training.stream_stats import TRAIN, VALIDATION, split_codes


def _frame(n: int, seed: int, offset: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [offset, 0.0, 5.0]
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "y": x @ [0.5, -0.1, 2.0] + rng.normal(size=n)})


def _folder(tmp_path, sizes=((700, 300), (500,), (650, 650))):
    """A dataset folder: one Parquet file per entry, with row groups of the given sizes; and all rows in order."""
    folder, frames = tmp_path / "rows", []
    folder.mkdir()
    for number, groups in enumerate(sizes):
        with pq.ParquetWriter(folder / f"part-{number}.parquet", pa.schema([(c, pa.float64()) for c in "abcy"])) as w:
            for size in groups:
                frame = _frame(size, seed=len(frames), offset=1e6)  # a large offset: float32 must not lose the rest
                w.write_table(pa.Table.from_pandas(frame, preserve_index=False))
                frames.append(frame)
    return folder, pd.concat(frames, ignore_index=True)


def _cfg(path, **streaming):
    return DataConfig(path=str(path), target="y", split={"validation": 0.2, "test": 0.1, "seed": 3},
                      streaming={"enabled": True, **streaming})


def _epoch(batches: StreamedBatches) -> tuple[np.ndarray, np.ndarray, int]:
    xs, ys, count = [], [], 0
    for item in batches.loader():
        for x, y in item if isinstance(item, StreamedGroup) else [item]:
            xs.append(x.numpy())
            ys.append(y.numpy())
            count += 1
    return np.concatenate(xs), np.concatenate(ys), count


@pytest.mark.parametrize("spill", [True, False])
def test_an_epoch_yields_every_training_row_once_standardised_in_a_fresh_order(tmp_path, spill):
    folder, rows = _folder(tmp_path)
    data = prepare(_cfg(folder, spill=spill))
    train = rows[split_codes(np.arange(len(rows)), 0.2, 0.1, seed=3) == TRAIN]
    assert data.train_rows == len(train) and data.num_rows == len(rows) == 2800
    assert len(data.validation) + len(data.test) + len(train) == len(rows)  # below holdout_rows: all kept
    stats = standardization(data)
    values = train[["a", "b", "c"]].to_numpy()
    np.testing.assert_allclose(stats["feature_mean"], values.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["feature_scale"], values.std(0), rtol=1e-5)
    batches = StreamedBatches(data.stream, 64, buffer_rows=1000, seed=0, stats=stats, classify=False, group=3)
    first_x, first_y, count = _epoch(batches)
    assert count == -(-len(train) // 64) and len(batches) == -(-count // 3)
    got = np.column_stack([first_x, first_y])  # in standardised units, where float32 keeps every digit needed
    expected = np.column_stack([(values - stats["feature_mean"]) / stats["feature_scale"],
                                (train.y - stats["target_mean"]) / stats["target_scale"]])
    np.testing.assert_allclose(got[np.argsort(got[:, 1])], expected[np.argsort(expected[:, 1])], atol=2e-5)
    second_x, _, _ = _epoch(batches)
    assert not np.allclose(first_x, second_x)
    # the buffer interleaves the row groups: the epoch switches between files far more often than it has files
    raw_b = first_x[:, 1] * stats["feature_scale"][1] + stats["feature_mean"][1]
    nearest = np.abs(rows.b.to_numpy()[None, :] - raw_b[:, None]).argmin(1)
    files = np.searchsorted([1000, 1500, 2800], nearest, side="right")
    assert np.count_nonzero(np.diff(files)) > 50


def test_the_fingerprint_is_the_in_memory_one_and_bad_rows_are_named(tmp_path):
    frame = _frame(3000, seed=1)
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=1000)
    streamed = prepare(_cfg(tmp_path / "d.parquet"))
    in_memory = prepare(DataConfig(path=str(tmp_path / "d.parquet"), target="y", split={"seed": 3}))
    assert streamed.fingerprint == in_memory.fingerprint
    frame.loc[2500, "b"] = np.nan
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=1000)
    with pytest.raises(DataError, match=r"column 'b' has a missing or non-finite value .* row 500 of row group 2"):
        prepare(_cfg(tmp_path / "d.parquet"))
    frame.assign(b="x").to_parquet(tmp_path / "s.parquet")
    with pytest.raises(DataError, match="column 'b' is not numeric"):
        prepare(_cfg(tmp_path / "s.parquet"))
    with pytest.raises(DataError, match="target column 'label' not found"):
        prepare(DataConfig(path=str(tmp_path / "d.parquet"), target="label", streaming={"enabled": True}))
    with pytest.raises(DataError, match="add new labelled rows as another Parquet file"):
        prepare(_cfg(tmp_path / "d.parquet"), extra=[tmp_path / "d.parquet"])
    with pytest.raises(DataError, match="nothing|no splits"):
        streamed.save(tmp_path / "out")


def test_every_file_of_a_folder_is_checked_and_a_bad_one_is_named(tmp_path):
    folder = tmp_path / "rows"
    folder.mkdir()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no Parquet files"):
        prepare(_cfg(tmp_path / "empty"))
    _frame(600, seed=6).to_parquet(folder / "part-0.parquet")
    later = _frame(400, seed=7)
    # another order of the columns and an integer feature: the same columns, read by name
    reordered = later[["y", "c", "a"]].assign(b=later.b.round().astype("int64"))
    reordered.to_parquet(folder / "part-1.parquet")
    data = prepare(_cfg(folder))
    assert data.num_rows == 1000 and list(data.features) == ["a", "b", "c"]
    rows = pd.concat([_frame(600, seed=6), later.assign(b=later.b.round())], ignore_index=True)
    validation = rows[split_codes(np.arange(1000), 0.2, 0.1, seed=3) == VALIDATION]
    np.testing.assert_allclose(data.validation[["a", "b", "c", "y"]].to_numpy(), validation.to_numpy())
    later.drop(columns="b").to_parquet(folder / "part-1.parquet")
    with pytest.raises(DataError, match=r"part-1\.parquet\) lacks column\(s\) \['b'\], which .*part-0\.parquet has"):
        prepare(_cfg(folder))
    later.assign(b=later.b.astype(str)).to_parquet(folder / "part-1.parquet")  # numbers written as text
    with pytest.raises(DataError, match=r"part-1\.parquet\): column 'b' is not numeric \(Parquet type string\)"):
        prepare(_cfg(folder))
    (folder / "part-1.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"part-1\.parquet\) could not be read as Parquet"):
        prepare(_cfg(folder))


def test_streaming_config_is_checked():
    with pytest.raises(ValidationError, match="Parquet"):
        DataConfig(path="rows.csv", target="y", streaming={"enabled": True})
    with pytest.raises(ValidationError, match="one process"):
        TrainConfig(name="s", data={"path": "d.parquet", "target": "y", "streaming": {"enabled": True}},
                    guide={"precondition": "laplace"})


def test_class_labels_and_constant_columns_are_checked_from_the_pass(tmp_path):
    frame = _frame(2000, seed=2).assign(y=lambda f: (f.a > 0).astype(float), c=1.5)
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=500)
    data = prepare(_cfg(tmp_path / "d.parquet"))
    assert count_classes(data) == 2
    with pytest.raises(DataError, match=r"'c' = 1\.5"):
        check_informative(data)
    frame.loc[1700, "y"] = 0.5
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=500)
    with pytest.raises(DataError, match="class indices .* row 200 of row group 3"):
        count_classes(prepare(_cfg(tmp_path / "d.parquet")))


def test_class_labels_stream_as_integers(tmp_path):
    frame = _frame(1500, seed=4).assign(y=lambda f: (f.a > 0).astype(float) + (f.b > 5))
    frame.to_parquet(tmp_path / "d.parquet", row_group_size=400)
    data = prepare(_cfg(tmp_path / "d.parquet"))
    stats = standardization(data, classify=True)
    _, y, _ = _epoch(StreamedBatches(data.stream, 100, buffer_rows=300, seed=1, stats=stats, classify=True))
    train = frame[split_codes(np.arange(1500), 0.2, 0.1, seed=3) == TRAIN]
    assert y.dtype == np.int64 and np.bincount(y).tolist() == np.bincount(train.y.astype(int)).tolist()


def test_a_failing_reader_stops_the_epoch_with_its_error(tmp_path):
    _frame(1000, seed=5).to_parquet(tmp_path / "d.parquet", row_group_size=250)
    data = prepare(_cfg(tmp_path / "d.parquet", spill=False))
    batches = StreamedBatches(data.stream, 50, buffer_rows=100, seed=0, stats=None, classify=False)
    (tmp_path / "d.parquet").write_bytes(b"not parquet any more")
    with pytest.raises(Exception, match="arquet"):
        for _ in batches.loader():
            pass


@pytest.mark.slow
def test_streamed_training_recovers_the_closed_form_posterior_of_all_training_rows(tmp_path, tracking_uri):
    from mlflow import MlflowClient

    from pipelines.config.loading import load_config
    from pipelines.lifecycle.train import train
    from tests.pipelines.training.test_posterior_accuracy import closed_form, fitted

    folder, rows = _folder(tmp_path, sizes=((1500, 1500), (1000,)))
    rows = rows.assign(a=rows.a - 1e6, c=rows.c - 5.0)  # the model's data: unit-scale features, noise 0.3
    rows["y"] = rows[["a", "b", "c"]].to_numpy() @ [0.5, -0.1, 2.0] + 0.7 + 0.3 * np.random.default_rng(9).normal(
        size=len(rows))
    for number, part in enumerate(np.split(rows, [3000])):
        part.to_parquet(folder / f"part-{number}.parquet", row_group_size=700, index=False)
    (folder.parent / "s.yaml").write_text(
        f"name: streamed\ndata: {{path: {folder}, target: y, split: {{validation: 0.15, test: 0.15, seed: 3}},\n"
        "  streaming: {enabled: true, sample_rows: 500, shuffle_buffer_rows: 1024}}\n"
        "model: {noise: {fixed: 0.3}, prior: {weights: {normal: {scale: 1.0}}, intercept: {normal: {scale: 1.0}}}}\n"
        "train: {batch_size: 256, max_epochs: 300, lr: 0.01, seed: 0}\n")
    config = load_config(folder.parent / "s.yaml", {})
    data = prepare(config.data)
    result = train(config, prepared=data, tracking_uri=tracking_uri, register=False)
    train_rows = rows[split_codes(np.arange(len(rows)), 0.15, 0.15, seed=3) == TRAIN]
    assert len(data.train) < 600 < data.train_rows == len(train_rows)  # a sample in memory, N of all of them
    exact_mean, exact_sd = closed_form(data.__class__(data.source, data.features, data.target, data.fingerprint,
                                                      train_rows.reset_index(drop=True), data.validation, data.test))
    mean, sd = fitted(result, tracking_uri)
    assert result.metrics["steps"] == 300 * -(-len(train_rows) // 256)
    assert np.abs((mean - exact_mean) / exact_sd).max() < 0.15, (mean, exact_mean, exact_sd)
    assert np.all(np.abs(sd / exact_sd - 1) < 0.12), sd / exact_sd  # a wrong N would be off by sqrt(N / 500)
    (dataset,) = MlflowClient(tracking_uri=tracking_uri).get_run(result.run_id).inputs.dataset_inputs
    assert '"num_rows": %d' % len(train_rows) in dataset.dataset.profile
