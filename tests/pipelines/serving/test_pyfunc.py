"""The registered pyfunc: predictions on the original target scale, and input errors that name the column."""

import gc
import json
import platform
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.config.loading import load_config
from pipelines.lifecycle.train import train
from pipelines.serving.loading import load_version, warn_environment_mismatches
from pipelines.serving.pyfunc import BadModelInput
from tests.conftest import REPO


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
    rows = pd.DataFrame({"a": [50.0, 60.0], "b": [50.0, 40.0]})
    pred = model.predict(rows)
    expected = np.array([1000 + 150 - 100, 1000 + 180 - 80])
    np.testing.assert_allclose(pred["mean"], expected, atol=3.0)
    assert (pred["sd"] > 3.0).all() and (pred["sd"] < 8.0).all()  # noise SD is 5 on the original scale
    again = model.predict(rows)
    pd.testing.assert_frame_equal(pred, again)  # seeded: repeatable
    # The device is a param of the signature, the CPU by default; a GPU this process lacks is a 400, not a 500.
    assert {p.name: p.default for p in model.metadata.get_params_schema().params}["device"] == "cpu"
    pd.testing.assert_frame_equal(model.predict(rows, params={"device": "cpu"}), pred)
    if torch.cuda.is_available():  # other draws (the GPU's generator), the same posterior
        np.testing.assert_allclose(model.predict(rows, params={"device": "cuda"})["mean"], pred["mean"], atol=0.5)
    else:
        with pytest.raises(BadModelInput, match=r"device 'cuda': this process sees 0 CUDA device\(s\)"):
            model.predict(rows, params={"device": "cuda"})
    with pytest.raises(MlflowException, match=r"missing inputs.*\['b'\]"):
        model.predict(pd.DataFrame({"a": [1.0]}))
    # The model carries only the code it predicts with: the models, the config schema, the builder, the bundle.
    local = Path(mlflow.artifacts.download_artifacts(f"models:/scaled/{result.model_version}", dst_path=tmp_path / "m"))
    shipped = {p.relative_to(local / "code").as_posix() for p in (local / "code").rglob("*.py")}
    assert {p for p in shipped if p.startswith("pipelines/")} == {
        "pipelines/__init__.py", "pipelines/build.py", "pipelines/config/__init__.py", "pipelines/config/base.py",
        "pipelines/config/loading.py", "pipelines/config/model.py", "pipelines/config/release.py",
        "pipelines/config/schema.py", "pipelines/errors.py", "pipelines/serving/__init__.py",
        "pipelines/serving/bundle.py", "pipelines/serving/pyfunc.py"}
    assert "models/families/gaussian.py" in shipped and "models/blr.py" in shipped
    assert warn_environment_mismatches(local) == []  # saved here: this environment is the version's
    # Loaded for the gate or a monitor, the version's files live as long as the loaded model, not longer.
    before = set(sys.path)
    loaded = load_version(MlflowClient(tracking_uri, tracking_uri), "scaled", str(result.model_version),
                          tracking_uri=tracking_uri)
    (code,) = set(sys.path) - before
    folder = Path(code).parents[1]
    assert folder.name.startswith("viops-model-") and list(folder.rglob("posterior.pt"))
    pd.testing.assert_frame_equal(loaded.pyfunc.predict(pd.DataFrame({"a": [50.0, 60.0], "b": [50.0, 40.0]})), pred)
    del loaded
    gc.collect()
    assert not folder.exists() and code not in sys.path
    # ... and that is enough: it loads and predicts in an interpreter that cannot import this checkout.
    alone = subprocess.run([sys.executable, "-c", LOAD_ALONE, str(local), str(REPO)], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert json.loads(alone.stdout.strip().splitlines()[-1]) == {
        "code": str(local / "code" / "pipelines" / "__init__.py"), "mean": pred["mean"].round(6).tolist()}


def test_a_version_pinned_to_another_environment_is_warned_about_package_by_package(tmp_path, caplog):
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    python_version: 3.9.18\n")
    (tmp_path / "requirements.txt").write_text(
        f"# pinned at training time\ntorch==0.0.1\nnumpy=={np.__version__}\nno-such-distribution==1.0\n"
        "windows-only==1.0; sys_platform == 'win32'\n-c constraints.txt\n")
    with caplog.at_level("WARNING", logger="pipelines.serving.loading"):
        problems = warn_environment_mismatches(tmp_path)
    assert [p.split(" ")[0] for p in problems] == ["python", "torch", "no-such-distribution"]
    assert "python (current: 3.11" in problems[0] and "required: 3.9.18)" in problems[0]
    assert "required: torch==0.0.1" in problems[1] and "current: uninstalled" in problems[2]
    assert "torch (current: 2.13.0" in caplog.text and "numpy" not in caplog.text
    (tmp_path / "MLmodel").write_text("flavors:\n  python_function: {}\n")  # no Python version recorded
    (unrecorded, *_) = warn_environment_mismatches(tmp_path)
    assert unrecorded == f"python (current: {platform.python_version()}, required: not recorded)"


#: Load a downloaded model with the checkout removed from the import path (the editable install's entry included).
LOAD_ALONE = """
import json, sys
repo = sys.argv[2]
sys.path = [p for p in sys.path if p not in ("", ".", repo)]
# pip install -e: its finder (a class on sys.meta_path) would find the checkout's modules by name
sys.meta_path = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
pred = model.predict(pd.DataFrame({"a": [50.0, 60.0], "b": [50.0, 40.0]}))
import pipelines
print(json.dumps({"code": pipelines.__file__, "mean": pred["mean"].round(6).tolist()}))
"""


@pytest.mark.parametrize("family, min_sd_ratio", [("full_rank", 0.8), ("flow", 0.25)])
def test_preconditioned_families_round_trip_through_the_registry(family, min_sd_ratio, tmp_path, tracking_uri):
    """Unscaled, correlated data; the family (and its Laplace preconditioner) is rebuilt inside the pyfunc."""
    rng = np.random.default_rng(1)
    x = rng.normal(100.0, 15.0, size=400)  # uncentred: intercept and slope strongly correlated
    y = 20.0 + 0.6 * x + rng.normal(0, 10.0, size=400)
    pd.DataFrame({"x": x, "y": y}).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "c.yaml").write_text(
        f"name: pre-{family.replace('_', '-')}\ndata: {{path: d.csv, target: y}}\n"
        "model: {prior: {weights: {flat: {}}, intercept: {flat: {}}}}\n"
        f"guide: {{family: {family}, precondition: laplace}}\n"
        "train: {max_epochs: 40, batch_size: 128, khat_samples: 500}\n"
    )
    result = train(load_config(tmp_path / "c.yaml"), tracking_uri=tracking_uri)
    # 120 steps: enough for the full-rank family started at the Laplace Gaussian; a flow is still learning its shape
    # (its smallest SD ratio is about 0.3 by then), but it must not have collapsed.
    assert np.isfinite(result.metrics["psis_khat"])
    assert result.metrics["sd_ratio_to_laplace_min"] > min_sd_ratio, result.metrics
    mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{result.model_name}/{result.model_version}")
    pred = model.predict(pd.DataFrame({"x": [80.0, 120.0]}))
    np.testing.assert_allclose(pred["mean"], [20 + 48, 20 + 72], atol=4.0)
    assert ((pred["sd"] > 8.0) & (pred["sd"] < 13.0)).all()  # noise SD 10 plus a little parameter uncertainty


def test_scoring_on_a_device_refuses_a_version_registered_without_the_device_param():
    """Such a version's pyfunc would drop the param and score on the CPU, saying nothing."""
    from types import SimpleNamespace

    from mlflow.types.schema import ParamSchema, ParamSpec

    from pipelines.config.base import ConfigError
    from pipelines.serving.scoring import _check_device_param

    def version(*params):
        schema = ParamSchema([ParamSpec(name, "long", 0) for name in params])
        metadata = SimpleNamespace(get_params_schema=lambda: schema)
        return SimpleNamespace(name="m", version="3", pyfunc=SimpleNamespace(metadata=metadata))

    _check_device_param(version("num_samples", "seed", "device"), "cuda")
    with pytest.raises(ConfigError, match="version 3 of m was registered without the device parameter"):
        _check_device_param(version("num_samples", "seed"), "cuda")
