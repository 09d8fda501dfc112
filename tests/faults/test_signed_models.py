"""Signed models: versions registered with a signing key carry a signature of their model files; a version whose
files were changed in the artifact store, signed by another key, or not signed at all is refused by every command
that would use it (exit 6, one line naming the files, a page on a real Pushgateway) and nothing changes."""

from __future__ import annotations

import stat
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.registry.signing import EVIDENCE_SIGNATURE_TAG, KEY_TAG, SIGNATURE_TAG, key_fingerprint
from tests.conftest import EXAMPLE_CONFIG, make_regression_csv, mlflow_db, pushgateway
from tests.faults.conftest import DOCUMENTED_EXIT_CODES, train_here, viops

MODEL = "blr-example"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Keys, and two signed versions of the example: 1 champion, 2 challenger. Returns ``(root, uri, env)``."""
    root = tmp_path_factory.mktemp("signed")
    (root / "blr_csv.yaml").write_text(EXAMPLE_CONFIG.read_text())
    make_regression_csv(root / "data.csv")
    keys = viops("keys", "generate", "--out", str(root / "keys"))
    assert keys.code == 0, keys.stderr
    uri = mlflow_db(root / "mlflow.db")
    env = {"MLFLOW_TRACKING_URI": uri, "VIOPS_SIGNING_KEY": keys.result["signing_key"]}
    for _ in range(2):
        trained = train_here(root, uri, env=env)
        assert "(signed)" in trained.registration, trained.registration
    return root, uri, {"MLFLOW_TRACKING_URI": uri, "VIOPS_VERIFY_KEY": keys.result["verify_key"]}


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _model_file(client: MlflowClient, version: str, name: str) -> Path:
    """The version's file ``name`` where the artifact store keeps it (a local folder for this SQLite store)."""
    location = client.get_model_version_download_uri(MODEL, version).removeprefix("file://")
    (found,) = Path(location).rglob(name)
    return found


def test_a_key_pair_is_written_with_a_private_private_key(signed):
    root, _, _ = signed
    private = root / "keys" / "signing-key.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    again = viops("keys", "generate", "--out", str(root / "keys"))
    assert again.code == 2 and "exists" in again.last_line  # never overwrites a key


def test_registered_versions_carry_a_signature_by_the_key(signed):
    root, uri, env = signed
    tags = _client(uri).get_model_version(MODEL, "1").tags
    assert tags[SIGNATURE_TAG].startswith('{"mediaType":"application/vnd.dev.sigstore.bundle')
    assert tags[EVIDENCE_SIGNATURE_TAG].startswith('{"mediaType":"application/vnd.dev.sigstore.bundle')
    assert tags[KEY_TAG] == key_fingerprint((root / "keys" / "verify-key.pem").read_bytes())
    ran = viops("verify", "--model", f"{MODEL}/1", env=env)
    assert ran.code == 0 and ran.result["verified"], ran.stderr
    scored = viops("score", "--model", MODEL, "--input", str(root / "data.csv"), "--output", str(root / "s.csv"),
                   env=env)
    assert scored.code == 0, scored.stderr


def test_another_key_is_refused(signed, tmp_path):
    root, _, env = signed
    assert viops("keys", "generate", "--out", str(tmp_path)).code == 0
    ran = viops("verify", "--model", f"{MODEL}/1", env={**env, "VIOPS_VERIFY_KEY": str(tmp_path / "verify-key.pem")})
    assert ran.code == 6, ran.stderr
    assert "signed by key" in ran.last_line and "not by the trusted key" in ran.last_line


def test_a_tampered_version_is_refused_everywhere_and_pages(signed, tmp_path):
    root, uri, env = signed
    client = _client(uri)
    champion_before = client.get_model_version_by_alias(MODEL, "champion").version
    bundle = _model_file(client, "2", "posterior.pt")
    bundle.write_bytes(bundle.read_bytes() + b"\0")  # one byte appended in the artifact store
    with pushgateway(tmp_path / "pushgateway.log") as gateway:
        paged = {**env, "VIOPS_PUSHGATEWAY": gateway}
        refused = {
            "promote": viops("promote", "--model", MODEL, "--version", "2", "--force", "--reason", "t", env=paged),
            "score": viops("score", "--model", f"{MODEL}/2", "--input", str(root / "data.csv"),
                           "--output", str(tmp_path / "scored.csv"), env=paged),
            "evaluate": viops("evaluate", "--model", MODEL, "--candidate", "2", "--no-log", env=paged),
            "serve": viops("serve", "--model", f"{MODEL}/2", "--port", "1", env=paged, timeout=120),
            "verify": viops("verify", "--model", f"{MODEL}/2", env=paged),
        }
        scraped = urllib.request.urlopen(f"{gateway}/metrics", timeout=5).read().decode()
    for command, ran in refused.items():
        assert ran.code == 6, (command, ran.code, ran.stderr[-2000:])
        assert f"version 2 of {MODEL} is refused: its files do not match their signature (changed: " in ran.last_line
        assert "posterior.pt" in ran.last_line and "paged" in ran.last_line, ran.last_line
        assert "Traceback" not in ran.stderr
    assert not (tmp_path / "scored.csv").exists()
    assert 'viops_model_signature_valid{instance="",job="viops_integrity",model="blr-example",version="2"} 0' \
        in scraped
    after = client.get_model_version_by_alias(MODEL, "champion").version
    assert after == champion_before, "the champion moved onto a tampered version"
    assert "viops.promote.event_id" not in client.get_model_version(MODEL, "2").tags


def test_a_tampered_champion_or_reference_stops_the_monitor(signed, tmp_path):
    root, uri, env = signed
    client = _client(uri)
    run_dir = Path(client.get_run(client.get_model_version(MODEL, "1").run_id).info.artifact_uri.removeprefix("file://"))
    reference = run_dir / "reference" / "features.parquet"
    signed_bytes = reference.read_bytes()
    reference.write_bytes(signed_bytes[:-1] + b"\1")  # a drift reference rewritten to hide drift
    monitor = ("monitor", "--model", MODEL, "--window", str(root / "data.csv"), "--state-dir", str(tmp_path))
    ran = viops(*monitor, env=env)
    assert ran.code == 6, ran.stderr[-2000:]
    assert ran.last_line.startswith(f"viops monitor: version 1 of {MODEL} is refused: its run's config, reference and "
                                    "held-out files do not match their signature (changed: reference/features.parquet)")
    assert "NOT paged: no Pushgateway configured" in ran.last_line  # said, not hidden
    assert viops("verify", "--model", MODEL, env=env).code == 6
    reference.write_bytes(signed_bytes)
    assert viops("verify", "--model", MODEL, env=env).code == 0

    mlmodel = _model_file(client, "1", "MLmodel")
    mlmodel.write_text(mlmodel.read_text() + "\n# edited\n")
    ran = viops(*monitor, env=env)
    assert ran.code == 6 and "its files do not match their signature (changed: MLmodel)" in ran.last_line, ran.stderr
    assert ran.code in DOCUMENTED_EXIT_CODES and not list(tmp_path.glob("*.json"))  # no window recorded
