"""Live deployment against a real ``mlflow server``.

- Shadow: a retrained challenger goes to shadow instead of champion, is scored on every live window beside the
  champion, and is promoted after exactly N clean windows, with the evidence in the audit record; one that passes a
  loose offline gate but fits live data worse is rejected at its first window and never becomes champion.
- Canary: scoring and the served router send each row to one version, the same on every call, and say which; a
  canary whose calibration breaks on the rows it answered is rolled back within one window, champion untouched."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from sklearn.datasets import load_diabetes

from monitoring.checks.config import load_checks_config
from monitoring.monitor import run_monitor
from monitoring.runbooks import load_runbooks
from monitoring.scenarios import load_scenario, simulate
from monitoring.slo import load_slos
from pipelines.config.loading import load_config, parse_overrides
from pipelines.config.schema import GateConfig
from pipelines.lifecycle.retrain import RetrainRequest, retrain
from pipelines.lifecycle.train import train
from pipelines.registry.deployment import start_deployment
from pipelines.registry.gate import evaluate
from pipelines.registry.versions import alias_version
from tests.conftest import REPO, pushgateway

pytestmark = pytest.mark.integration
MODEL = "blr-diabetes"
CONFIG = REPO / "configs" / "demo" / "blr_diabetes.yaml"
SHADOW = ("deploy.strategy=shadow", "deploy.shadow_windows=3")


@pytest.fixture(scope="module")
def deployed(mlflow_server, tmp_path_factory):
    """Version 1 champion on the server; a monitor that acts, over stable windows of the demo model."""
    root = tmp_path_factory.mktemp("shadow")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        mp.setenv("VIOPS_AUDIT_LOG", str(root / "audit.jsonl"))
        first = train(load_config(CONFIG), tracking_uri=mlflow_server)
        assert "champion" in first.aliases, first.registration
        options = dict(checks=load_checks_config(REPO / "configs" / "monitoring.yaml"),
                       slos=load_slos(REPO / "configs" / "slo.yaml"), runbooks=load_runbooks(REPO / "runbooks"))

        def monitor(store, when, state, pushgateway=None):
            return run_monitor(MlflowClient(mlflow_server, mlflow_server), model=MODEL, window_path=store.path(when),
                               tracking_uri=mlflow_server, state_dir=state, execute=True, actor="test:monitor",
                               pushgateway=pushgateway, **options)

        def windows(name: str, count: int):
            scenario, training = load_scenario(REPO / "configs" / "scenarios" / "diabetes_stable.yaml")
            return simulate(scenario.model_copy(update={"windows": count, "seed": 11}), training, root / name)

        yield root, MlflowClient(mlflow_server, mlflow_server), monitor, windows


def _audit(root) -> list[dict]:
    return [json.loads(line) for line in (root / "audit.jsonl").read_text().splitlines()]


def test_a_challenger_worse_on_live_windows_is_rejected_in_shadow_and_the_champion_is_untouched(deployed,
                                                                                              mlflow_server):
    root, client, monitor, windows = deployed
    champion = alias_version(client, MODEL, "champion")
    # Trained on the same rows with their labels shuffled: on its own (shuffled) held-out split a loose gate passes it.
    frame = load_diabetes(as_frame=True).frame
    frame["target"] = np.random.default_rng(0).permutation(frame["target"].to_numpy())
    frame.to_csv(root / "shuffled.csv", index=False)
    overrides = [*SHADOW, f"data.path={root / 'shuffled.csv'}", "data.sklearn=null", "data.target=target"]
    bad = train(load_config(CONFIG, parse_overrides(overrides)), tracking_uri=mlflow_server)
    loose = GateConfig(nll_tolerance=5.0, sd_ratio_to_laplace=None, max_psis_khat=None)
    assert evaluate(client, MODEL, tracking_uri=mlflow_server, candidate=bad.model_version, gate=loose).passed
    start_deployment(client, MODEL, bad.model_version, reason="test: shuffled labels", actor="test",
                     policy=load_config(CONFIG, parse_overrides(list(SHADOW))).deploy)

    store = windows("bad", 2)
    first = monitor(store, store.windows()[0], root / "bad-state")
    shadow = first["deploy"]
    assert shadow["window"]["outcome"] == "bad" and shadow["decision"]["action"] == "reject", shadow["decision"]
    assert shadow["window"]["nll"]["lower"] > 0.02  # worse than the champion beyond the tolerance, settled
    assert shadow["executed"]["changed"] and "champion stays version " + champion in shadow["executed"]["message"]
    assert alias_version(client, MODEL, "champion") == champion and alias_version(client, MODEL, "challenger") is None
    tags = client.get_model_version(MODEL, bad.model_version).tags
    assert tags["viops.deploy.stage"] == "rejected" and "fits worse than the champion" in tags["viops.deploy.reasons"]
    record = _audit(root)[-1]
    assert (record["action"], record["verdict"]["candidate_version"]) == ("reject", bad.model_version)
    assert record["verdict"]["live"]["shadow"][0]["outcome"] == "bad"
    # The next window has no challenger in shadow: nothing more happens to it.
    assert monitor(store, store.windows()[1], root / "bad-state")["deploy"] is None


def test_a_retrained_challenger_is_promoted_after_exactly_n_clean_shadow_windows(deployed, mlflow_server):
    root, client, monitor, windows = deployed
    before = alias_version(client, MODEL, "champion")
    outcome = retrain(RetrainRequest(config=str(CONFIG), reason="test: scheduled retrain", workdir=str(root / "work"),
                                     tracking_uri=mlflow_server, overrides=(*SHADOW, "train.seed=1"),
                                     actor="test:retrain", audit_log=str(root / "audit.jsonl")))
    version = outcome["version"]
    assert outcome["verdict"]["passed"] and not outcome["promoted"] and outcome["deployment"]["stage"] == "shadow"
    assert alias_version(client, MODEL, "champion") == before and alias_version(client, MODEL, "challenger") == version

    store = windows("good", 3)
    with pushgateway(root / "pushgateway.log") as gateway:
        results = [monitor(store, when, root / "good-state", gateway) for when in store.windows()]
        scraped = urllib.request.urlopen(f"{gateway}/metrics", timeout=5).read().decode()
    decisions = [r["deploy"]["decision"] for r in results]
    assert [d["action"] for d in decisions] == ["continue", "continue", "promote"], [d["reason"] for d in decisions]
    assert [d["clean_windows"] for d in decisions] == [1, 2, 3]
    assert alias_version(client, MODEL, "champion") == version and alias_version(client, MODEL, "previous-champion") \
        == before
    assert client.get_model_version(MODEL, version).tags["viops.deploy.stage"] == "promoted"
    # The promotion is on the dashboards as `viops promote` would have put it there.
    assert results[-1]["deploy"]["executed"]["pushed"]
    assert ('viops_registry_change_timestamp_seconds{action="promote",instance="",job="viops_registry",'
            f'model="{MODEL}",previous="{before}",version="{version}"}}') in scraped
    record = _audit(root)[-1]
    assert (record["action"], record["to_version"], record["from_version"]) == ("promote", version, before)
    live = record["verdict"]["live"]
    assert [w["outcome"] for w in live["shadow"]] == ["clean"] * 3 and live["policy"]["shadow_windows"] == 3
    assert all(w["nll"]["upper"] <= 0.02 and w["nll"]["rows"] == 500 for w in live["shadow"])
    # Each window holds the challenger's own predictions beside the champion's, and its series carry its alias.
    for when, result in zip(store.windows(), results):
        stored = pd.read_parquet(store.directory(when) / "_shadow" / f"{MODEL}-v{version}.parquet")
        champion_rows = pd.read_parquet(store.path(when))
        assert len(stored) == len(champion_rows) == 500 and not np.allclose(stored["mean"], champion_rows["mean"])
        assert result["deploy"]["report"]["version"] == version
    assert f'alias="challenger",instance="",job="viops_monitor",model="{MODEL}",version="{version}"' in scraped


def test_canary_routing_is_sticky_and_a_canary_that_breaks_calibration_is_rolled_back_in_one_window(
        deployed, mlflow_server):
    import mlflow.pyfunc

    from pipelines.serving.canary import load_split, save_router
    from pipelines.serving.pyfunc import pip_requirements
    from pipelines.serving.scoring import score_file

    root, client, monitor, windows = deployed
    champion = alias_version(client, MODEL, "champion")
    canary = ("deploy.strategy=canary", "deploy.canary_fraction=0.2")
    # Its noise fixed far too small: its 90% intervals are far too narrow. A gate with no coverage band passes it.
    bad = train(load_config(CONFIG, parse_overrides([*canary, "model.noise={fixed: 0.1}", "train.seed=3"])),
                tracking_uri=mlflow_server)
    loose = GateConfig(nll_tolerance=50.0, sd_ratio_to_laplace=None, max_psis_khat=None, coverage_90=(0.0, 1.0))
    assert evaluate(client, MODEL, tracking_uri=mlflow_server, candidate=bad.model_version, gate=loose).passed
    start_deployment(client, MODEL, bad.model_version, reason="test: canary", actor="test",
                     policy=load_config(CONFIG, parse_overrides(list(canary))).deploy)

    store = windows("canary", 1)
    when = store.windows()[0]
    rows = pd.read_parquet(store.path(when))
    rows.to_csv(root / "requests.csv", index=False)
    first = score_file(client, MODEL, root / "requests.csv", root / "first.csv", tracking_uri=mlflow_server)
    second = score_file(client, MODEL, root / "requests.csv", root / "second.csv", tracking_uri=mlflow_server)
    answered = pd.read_csv(root / "first.csv")["version"].astype(str)
    assert (answered == pd.read_csv(root / "second.csv")["version"].astype(str)).all()  # sticky across calls
    assert set(answered) == {champion, bad.model_version} and 0.1 < (answered == bad.model_version).mean() < 0.3
    assert first.canary["rows"] == second.canary["rows"] == int((answered == bad.model_version).sum())
    # The router mlflow models serve runs answers each row with the same version, and says so.
    split = load_split(client, MODEL, tracking_uri=mlflow_server)
    router = save_router(client, split, tracking_uri=mlflow_server, dst=root / "router")
    assert (router / "requirements.txt").read_text().split() == pip_requirements()  # pinned, not inferred
    served = mlflow.pyfunc.load_model(str(router)).predict(rows[split.champion.bundle.features])
    assert (served["version"].astype(str).to_numpy() == answered.to_numpy()).all()
    assert np.allclose(served["mean"], pd.read_csv(root / "first.csv")["mean"])
    # Over HTTP: viops serve on the bare name serves the router with mlflow models serve.
    http = _serve_and_predict(root, mlflow_server, rows[split.champion.bundle.features].head(60))
    assert [str(p["version"]) for p in http] == answered.head(60).tolist()

    result = monitor(store, when, root / "canary-state")["deploy"]
    assert result["stage"] == "canary" and result["canary"]["rows"] == first.canary["rows"]
    decision = result["decision"]
    assert decision["action"] == "reject" and decision["canary_breach"], decision["reason"]
    assert "canary breach at 20% of the traffic: coverage_90 on the rows it answered" in decision["reason"]
    assert result["executed"]["changed"] and result["incident_id"]
    assert alias_version(client, MODEL, "champion") == champion and alias_version(client, MODEL, "challenger") is None
    assert client.get_model_version(MODEL, bad.model_version).tags["viops.deploy.stage"] == "rejected"
    incidents = [json.loads(line) for line in (root / "canary-state" / "incidents.jsonl").read_text().splitlines()]
    assert incidents[-1]["decision"]["alert"] == "ViopsCanaryBreach" and incidents[-1]["alias"] == "challenger"
    assert _audit(root)[-1]["action"] == "reject"
    # Rolled back: a bare model name serves the champion alone again.
    after = score_file(client, MODEL, root / "requests.csv", root / "after.csv", tracking_uri=mlflow_server)
    assert after.canary is None and after.version == champion


def _serve_and_predict(root, tracking_uri: str, rows: pd.DataFrame) -> list[dict]:
    """``viops serve --model MODEL`` (what production serves) in its own process; its predictions for ``rows``."""
    import os
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from tests.conftest import free_port
    from tests.servers import stop, wait_healthy

    port, log_path = free_port(), root / "serve.log"
    venv_bin = Path(sys.executable).parent
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "viops", "serve", "--model", MODEL, "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, cwd=root,
                                env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
                                     "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
                                     "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(url, proc, log_path, path="/ping", timeout=180)
            body = {"dataframe_split": {"columns": list(rows.columns), "data": rows.to_numpy().tolist()}}
            request = urllib.request.Request(f"{url}/invocations", data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as resp:
                predictions = json.loads(resp.read())["predictions"]
        finally:
            stop(proc)
    assert "serving the canary split of " in log_path.read_text()
    return predictions
