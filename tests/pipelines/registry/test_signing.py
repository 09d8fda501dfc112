"""Signing and verifying a model folder (pipelines.registry.signing): the policy for each key setting, and what a
refusal says. The end-to-end refusals of every command are in tests/faults/test_signed_models.py."""

from __future__ import annotations

import pytest

from pipelines.registry.signing import (
    KEY_TAG,
    SIGNATURE_TAG,
    SignatureInvalid,
    SigningKeyError,
    check_files,
    generate_keys,
    signature_tags,
    verification_key,
)


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    (folder / "artifacts").mkdir(parents=True)
    (folder / "MLmodel").write_text("flavors: {}\n")
    (folder / "artifacts" / "posterior.pt").write_bytes(bytes(range(256)) * 4)
    return folder


@pytest.fixture
def keys(tmp_path, monkeypatch):
    private, public = generate_keys(tmp_path / "keys")
    monkeypatch.setenv("VIOPS_SIGNING_KEY", str(private))
    monkeypatch.delenv("VIOPS_VERIFY_KEY", raising=False)
    return private, public


def test_without_keys_nothing_is_signed_or_checked(model_dir, monkeypatch):
    monkeypatch.delenv("VIOPS_SIGNING_KEY", raising=False)
    monkeypatch.delenv("VIOPS_VERIFY_KEY", raising=False)
    assert signature_tags(model_dir) == {} and verification_key() is None
    assert check_files("m", "1", {}, model_dir) is False


def test_signed_files_verify_with_the_public_key_alone(model_dir, keys, monkeypatch):
    tags = signature_tags(model_dir)
    assert set(tags) == {SIGNATURE_TAG, KEY_TAG}
    monkeypatch.delenv("VIOPS_SIGNING_KEY")
    monkeypatch.setenv("VIOPS_VERIFY_KEY", str(keys[1]))
    assert check_files("m", "1", tags, model_dir) is True


@pytest.mark.parametrize("change, said", [
    (lambda d: (d / "artifacts" / "posterior.pt").write_bytes(b"other"), "changed: artifacts/posterior.pt"),
    (lambda d: (d / "extra.py").write_text("import os"), "added: extra.py"),
    (lambda d: (d / "MLmodel").unlink(), "missing: MLmodel"),
])
def test_a_changed_added_or_missing_file_is_named(model_dir, keys, change, said):
    tags = signature_tags(model_dir)
    change(model_dir)
    with pytest.raises(SignatureInvalid) as refused:
        check_files("m", "3", tags, model_dir)
    assert str(refused.value) == f"version 3 of m is refused: its files do not match their signature ({said})"


def test_an_unsigned_version_is_refused_once_a_key_is_configured(model_dir, keys):
    with pytest.raises(SignatureInvalid, match="carries no signature"):
        check_files("m", "1", {"viops.config_hash": "x"}, model_dir)


def test_another_key_is_refused_by_fingerprint(model_dir, keys, tmp_path, monkeypatch):
    tags = signature_tags(model_dir)
    _, other = generate_keys(tmp_path / "other")
    monkeypatch.setenv("VIOPS_VERIFY_KEY", str(other))
    with pytest.raises(SignatureInvalid, match="not by the trusted key"):
        check_files("m", "1", tags, model_dir)
    del tags[KEY_TAG]  # without the fingerprint tag the signature itself still fails
    with pytest.raises(SignatureInvalid, match="do not match their signature"):
        check_files("m", "1", tags, model_dir)


def test_unusable_key_files_are_bad_input(tmp_path, monkeypatch, keys):
    monkeypatch.setenv("VIOPS_SIGNING_KEY", str(tmp_path / "absent.pem"))
    with pytest.raises(SigningKeyError, match="cannot read the signing key"):
        signature_tags(tmp_path)
    monkeypatch.setenv("VIOPS_SIGNING_KEY", str(keys[1]))  # a public key where the private one belongs
    with pytest.raises(SigningKeyError, match="not a usable PEM private key"):
        signature_tags(tmp_path)
    monkeypatch.setenv("VIOPS_VERIFY_KEY", str(keys[0]))  # and the other way round
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        verification_key()
    with pytest.raises(SigningKeyError, match="exists"):
        generate_keys(keys[0].parent)
