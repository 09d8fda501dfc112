import numpy as np
import pandas as pd
import pytest

from pipelines.config.schema import DataConfig
from pipelines.tables import DataError
from pipelines.training.data import load_prepared, prepare


def _cfg(path, **kw):
    return DataConfig(path=str(path), target="y", **kw)


def test_split_is_deterministic_and_fingerprint_tracks_content(tmp_path):
    frame = pd.DataFrame({"a": np.arange(100.0), "b": np.arange(100.0) ** 2, "y": np.arange(100.0) * 3})
    frame.to_csv(tmp_path / "d.csv", index=False)
    one, two = prepare(_cfg(tmp_path / "d.csv")), prepare(_cfg(tmp_path / "d.csv"))
    assert one.fingerprint == two.fingerprint
    pd.testing.assert_frame_equal(one.train, two.train)
    assert (len(one.train), len(one.validation), len(one.test)) == (70, 15, 15)
    assert sorted(pd.concat([one.train, one.validation, one.test]).a) == list(np.arange(100.0))
    frame.loc[3, "a"] = 1000.0
    frame.to_csv(tmp_path / "d.csv", index=False)
    assert prepare(_cfg(tmp_path / "d.csv")).fingerprint != one.fingerprint


def test_prepared_data_round_trips_with_reference_snapshot(tmp_path):
    pd.DataFrame({"a": np.arange(50.0), "y": np.arange(50.0)}).to_parquet(tmp_path / "d.parquet")
    data = prepare(_cfg(tmp_path / "d.parquet"))
    data.save(tmp_path / "prep")
    back = load_prepared(tmp_path / "prep")
    assert back.fingerprint == data.fingerprint and back.features == ("a",)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "prep" / "reference.parquet"), data.train[["a"]])


def test_sklearn_source():
    data = prepare(DataConfig(sklearn="diabetes"))
    assert data.target == "target" and len(data.features) == 10 and data.num_rows == 442


@pytest.mark.parametrize(
    "content, message",
    [
        ("a,b\n1,2\n", r"target column 'y' not found; columns are: a, b"),
        ("a,y\n1,2\nfoo,3\n", r"column 'a' is not numeric \(dtype object\); first non-numeric value 'foo' at row 1 \(line 3"),
        ("a,y\n1,2\n,3\n", r"column 'a' has 1 missing or non-finite value\(s\) \(NaN/inf\), first at row 1"),
        ("a,y\n1,2\ninf,3\n", r"column 'a' has 1 missing or non-finite"),
        ("", r"is empty"),
        ("a,y\n", r"has no rows"),
    ],
)
def test_bad_data_is_named(tmp_path, content, message):
    (tmp_path / "d.csv").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        prepare(_cfg(tmp_path / "d.csv"))
    assert "d.csv" in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        prepare(_cfg(tmp_path / "missing.csv"))


def test_extra_labelled_rows_join_before_the_split(tmp_path):
    pd.DataFrame({"a": np.arange(100.0), "y": np.arange(100.0)}).to_csv(tmp_path / "d.csv", index=False)
    window = pd.DataFrame({"a": [1000.0, 1001.0, np.nan, 1003.0], "y": [1.0, np.nan, 2.0, 3.0],
                           "prediction_mean": [0.0, 0.0, 0.0, 0.0]})
    window.to_parquet(tmp_path / "w.parquet")
    data = prepare(_cfg(tmp_path / "d.csv"), extra=[tmp_path / "w.parquet"])
    rows = pd.concat([data.train, data.validation, data.test])
    # Only the rows with finite features and a label; the window's own columns are not features.
    assert data.num_rows == 102 and sorted(rows.a[rows.a >= 1000]) == [1000.0, 1003.0]
    assert data.features == ("a",) and "w.parquet" in data.source
    assert data.fingerprint != prepare(_cfg(tmp_path / "d.csv")).fingerprint


@pytest.mark.parametrize(
    "window, message",
    [
        ({"a": [1.0]}, r"extra data .*w.parquet: column\(s\) \['y'\] not found"),
        ({"a": ["x"], "y": [1.0]}, r"column 'a' is not numeric"),
        ({"a": [np.nan, 1.0], "y": [1.0, np.nan]}, r"no labelled row with finite features and target \(2 rows"),
    ],
)
def test_bad_extra_data_is_named(tmp_path, window, message):
    pd.DataFrame({"a": np.arange(10.0), "y": np.arange(10.0)}).to_csv(tmp_path / "d.csv", index=False)
    pd.DataFrame(window).to_parquet(tmp_path / "w.parquet")
    with pytest.raises(DataError, match=message):
        prepare(_cfg(tmp_path / "d.csv"), extra=[tmp_path / "w.parquet"])
