import numpy as np
import pandas as pd
import pytest

from pipelines.config import DataConfig
from pipelines.data import DataError, load_prepared, prepare


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
