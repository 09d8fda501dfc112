"""The registered pyfunc: predictions on the original target scale, and input errors that name the column."""

import mlflow
import numpy as np
import pandas as pd
import pytest

from pipelines.config import load_config
from pipelines.training import train


def test_standardised_model_predicts_on_the_original_scale(tmp_path, tracking_uri):
    rng = np.random.default_rng(0)
    x = rng.normal(50.0, 10.0, size=(800, 2))
    y = 1000.0 + 3.0 * x[:, 0] - 2.0 * x[:, 1] + rng.normal(0, 5.0, size=800)
    pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "y": y}).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "c.yaml").write_text(
        "name: scaled\ndata: {path: d.csv, target: y, standardize: true}\n"
        "train: {max_epochs: 60, batch_size: 64}\n"
    )
    result = train(load_config(tmp_path / "c.yaml"), tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    summary = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/posterior_summary.json")
    assert list(summary) == ["weights", "intercept", "noise_scale"]  # the noise scale is learned by default
    assert len(summary["weights"]["mean"]) == 2 and summary["noise_scale"]["mean"][0] > 0
    model = mlflow.pyfunc.load_model(f"models:/scaled/{result.model_version}")
    pred = model.predict(pd.DataFrame({"a": [50.0, 60.0], "b": [50.0, 40.0]}))
    expected = np.array([1000 + 150 - 100, 1000 + 180 - 80])
    np.testing.assert_allclose(pred["mean"], expected, atol=3.0)
    assert (pred["sd"] > 3.0).all() and (pred["sd"] < 8.0).all()  # noise SD is 5 on the original scale
    again = model.predict(pd.DataFrame({"a": [50.0, 60.0], "b": [50.0, 40.0]}))
    pd.testing.assert_frame_equal(pred, again)  # seeded: repeatable
    with pytest.raises(Exception, match="b"):
        model.predict(pd.DataFrame({"a": [1.0]}))
