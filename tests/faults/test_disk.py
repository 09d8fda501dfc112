"""A read-only or full artifact store: exit 4 with one line naming the path; the run is FAILED and marked, nothing
is registered, the champion is untouched."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest
from mlflow import MlflowClient

from tests.conftest import require
from tests.faults.conftest import viops


def _as_root(*command: str) -> subprocess.CompletedProcess:
    prefix = [] if os.geteuid() == 0 else ["sudo", "-n"]
    return subprocess.run([*prefix, *command], capture_output=True, text=True)


@pytest.fixture
def mount(tmp_path):
    """A small tmpfs of its own (permission bits do not stop root; a read-only or full mount stops everyone)."""
    path = tmp_path / "store"
    path.mkdir()
    mounted = _as_root("mount", "-t", "tmpfs", "-o", "size=256k,mode=1777", "tmpfs", str(path))
    require(mounted.returncode == 0, f"cannot mount a tmpfs here (needs root or sudo): {mounted.stderr.strip()}")
    yield path
    _as_root("umount", "-l", str(path))


def _read_only(path) -> None:
    assert _as_root("mount", "-o", "remount,ro", str(path)).returncode == 0


@pytest.mark.parametrize("fault, problem", [("read-only", "read-only file system"),
                                            ("full", "no space left on device")])
def test_an_artifact_store_that_cannot_be_written_fails_training_with_exit_4(example, mount, fault, problem):
    root, uri = example
    client = MlflowClient(uri, uri)
    experiment = f"disk-{fault}-{uuid.uuid4().hex[:6]}"
    client.create_experiment(experiment, artifact_location=str(mount))
    if fault == "read-only":
        _read_only(mount)
    else:
        (mount / "filler").write_bytes(b"\0" * (256 * 1024 - 4096))
    versions = sorted(v.version for v in client.search_model_versions("name='blr-example'"))
    champion = client.get_model_version_by_alias("blr-example", "champion").version

    ran = viops("train", "--config", str(root / "blr_csv.yaml"), "--set", f"tracking.experiment={experiment}",
                "--set", "train.max_epochs=3", env={"MLFLOW_TRACKING_URI": uri}, cwd=root)
    assert ran.code == 4, ran.stderr[-3000:]
    assert ran.last_line.startswith(f"viops train: cannot use {mount}") and ran.last_line.endswith(problem), (
        ran.last_line)
    assert "Traceback" not in ran.stderr
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["viops.artifacts_incomplete"] == "true"
    assert sorted(v.version for v in client.search_model_versions("name='blr-example'")) == versions
    assert client.get_model_version_by_alias("blr-example", "champion").version == champion


def test_scoring_into_a_read_only_folder_is_exit_4_naming_it(example, mount):
    root, uri = example
    _read_only(mount)
    ran = viops("score", "--model", "blr-example", "--input", str(root / "data.csv"), "--output",
                str(mount / "scores.csv"), env={"MLFLOW_TRACKING_URI": uri}, cwd=root)
    expected = f"viops score: cannot use {mount / 'scores.csv'}: read-only file system"
    assert ran.code == 4 and ran.last_line == expected, ran.stderr[-2000:]
