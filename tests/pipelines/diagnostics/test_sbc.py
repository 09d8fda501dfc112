"""``viops diagnose --sbc`` on a training config: the verdict, the failing latents, the plot, and clear refusals."""

import json

import numpy as np
import pandas as pd

from viops.cli import main

CONFIG = """name: sbc-blr
data: {path: data.csv, target: y, standardize: false}
model:
  kind: bayesian_linear_regression
  prior: {weights: {normal: {loc: 0.0, scale: 1.0}}, intercept: {normal: {loc: 0.0, scale: 1.0}}}
  noise: {fixed: 1.0}
guide: {family: mean_field}
"""


def _config(tmp_path):
    rng = np.random.default_rng(0)
    cov = np.full((3, 3), 0.95) + 0.05 * np.eye(3)
    x = rng.multivariate_normal(np.zeros(3), cov, size=60)
    frame = pd.DataFrame(x, columns=["a", "b", "c"])
    frame["y"] = x @ [0.5, -0.5, 1.0] + rng.normal(size=60)
    frame.to_csv(tmp_path / "data.csv", index=False)
    (tmp_path / "sbc.yaml").write_text(CONFIG)
    return tmp_path / "sbc.yaml"


def test_diagnose_sbc_fails_mean_field_on_a_correlated_design_and_says_where(tmp_path, capsys):
    config = _config(tmp_path)
    code = main(["diagnose", "--sbc", "--config", str(config), "--fits", "40", "--draws", "19", "--bins", "4",
                 "--steps", "300", "--lr", "0.05", "--out", str(tmp_path / "sbc"), "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 1 and not summary["passed"], summary
    assert set(summary["p_values"]) == {"weights[0]", "weights[1]", "weights[2]", "intercept"}
    assert summary["failed"] and all(name.startswith("weights") for name in summary["failed"])
    assert "FAILED" in err and "ranks not uniform for weights" in err
    assert (tmp_path / "sbc" / "sbc_ranks.png").stat().st_size > 5000
    assert len(json.loads((tmp_path / "sbc" / "sbc.json").read_text())["ranks"]) == 40


def test_diagnose_sbc_refuses_a_learned_noise_model_with_a_clear_error(tmp_path, capsys):
    config = _config(tmp_path)
    code = main(["diagnose", "--sbc", "--config", str(config), "--set", "model.noise={learned: {half_normal: "
                 "{scale: 1.0}}}", "--fits", "8", "--draws", "19", "--bins", "4"])
    assert code == 2 and "needs normal priors and fixed noise" in capsys.readouterr().err
