"""``make demo``: train a Bayesian linear regression on a bundled dataset, then retrain it through Airflow.

Everything runs on embedded defaults in ``--out`` (default ``demo_out/``): MLflow on SQLite, Airflow in-process
(``airflow dags test`` on a SQLite metadata DB). It prints where to look: the ``mlflow ui`` command and the run ids.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO / "configs" / "demo" / "blr_diabetes.yaml"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _airflow(args: list[str], env: dict[str, str], log: Path) -> None:
    airflow = Path(sys.executable).parent / "airflow"
    with open(log, "a") as sink:
        proc = subprocess.run([str(airflow), *args], env=env, stdout=sink, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"airflow {' '.join(args[:2])} failed (exit {proc.returncode}); log {log}:\n{tail}")


def run_demo(out: Path) -> dict:
    from mlflow import MlflowClient

    from pipelines.config import load_config
    from pipelines.training import train

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{out / 'mlflow.db'}"
    os.environ["VIOPS_AUDIT_LOG"] = str(out / "audit.jsonl")  # promotions and rollbacks, one JSON line each
    started = time.perf_counter()

    config = load_config(DEMO_CONFIG)
    if MlflowClient(tracking_uri=uri).get_experiment_by_name(config.experiment_name) is None:
        # Artifacts beside the database, not in ./mlruns of wherever `make demo` was started.
        MlflowClient(tracking_uri=uri).create_experiment(config.experiment_name,
                                                         artifact_location=(out / "artifacts").as_uri())
    _say(f"1/3 Train {DEMO_CONFIG.relative_to(REPO)} (scikit-learn diabetes, full-rank SVI) -> MLflow at {uri}; "
         f"the gate checks the first version before it becomes champion")
    first = train(config, tracking_uri=uri, run_name="demo-initial-train")
    print(f"run {first.run_id}: version {first.model_version} of {first.model_name} ({', '.join(first.aliases)}); "
          f"test predictive NLL {first.metrics['test_predictive_nll']:.3f}, {first.metrics['steps']:.0f} steps "
          f"in {first.metrics['train_seconds']:.1f}s\n{first.registration}")

    _say("2/3 Retrain through Airflow: svi_retrain (prepare -> train -> register -> evaluate -> promote | reject -> "
         "notify), in-process with `airflow dags test`")
    home = out / "airflow"
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "MLFLOW_TRACKING_URI": uri,
        "VIOPS_WORK_DIR": str(out / "work"),
        "VIOPS_RETRAIN_CONFIG": str(DEMO_CONFIG),
    }
    home.mkdir(exist_ok=True)
    log = out / "airflow.log"
    _airflow(["db", "migrate"], env, log)
    conf = {"reason": "demo: new labelled data landed", "config": str(DEMO_CONFIG)}
    _airflow(["dags", "test", "svi_retrain", "--conf", json.dumps(conf)], env, log)

    _say("3/3 What is in the registry now")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = []
    for found in sorted(client.search_model_versions(f"name='{first.model_name}'"), key=lambda v: int(v.version)):
        version = client.get_model_version(first.model_name, found.version)
        run = client.get_run(version.run_id)
        versions.append({
            "version": version.version,
            "aliases": sorted(version.aliases),
            "run_id": version.run_id,
            "trigger_reason": run.data.tags.get("viops.trigger_reason", "manual train"),
            "test_predictive_nll": run.data.metrics.get("final/test_predictive_nll"),
            "gate": {"true": "passed", "false": "rejected"}.get(version.tags.get("viops.gate.passed"), "not evaluated"),
        })
        nll = versions[-1]["test_predictive_nll"]
        print(f"  version {version.version:>2}  aliases {', '.join(versions[-1]['aliases']) or '-':<34} gate "
              f"{versions[-1]['gate']:<8}  test NLL {nll:.3f}  ({versions[-1]['trigger_reason']})")
    from pipelines.audit import read_log

    audit = read_log(env["VIOPS_AUDIT_LOG"])
    for record in audit:
        print(f"  audit: {record['time']} {record['action']} v{record['from_version'] or '-'} -> v{record['to_version']}"
              f" by {record['actor']}: {record['reason']}")
    summary = {"tracking_uri": uri, "model_name": first.model_name, "versions": versions, "audit": audit,
               "seconds": round(time.perf_counter() - started, 1)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    _say("Where to look")
    print(f"  MLflow UI:   mlflow ui --backend-store-uri {uri}   (then open http://127.0.0.1:5000)")
    print(f"               .venv/bin/mlflow ui --backend-store-uri {uri}   if the venv is not active")
    print(f"  First run:   {first.run_id}  (ELBO curve, gradient norms, posterior_summary.json, the pyfunc model)")
    print(f"  Airflow log: {log}")
    print(f"  Summary:     {out / 'summary.json'}   ({summary['seconds']} s in all)")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_out", help="directory for the MLflow DB, Airflow home and summary")
    args = parser.parse_args(argv)
    from pipelines.cli import _quiet_libraries

    _quiet_libraries()
    run_demo(Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
