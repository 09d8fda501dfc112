"""Signed model versions: every file of a registered version's model (and of its evidence) is signed with an EC key
(OpenSSF Model Signing, the ``model-signing`` package; no network, no transparency log), and checked before anything
uses the version.

- **What is signed**: the version's logged model, file by file (``MLmodel``, ``posterior.pt``, the pyfunc's code
  and environment files): exactly what :func:`pipelines.serving.loading.load_version` downloads and loads. A changed,
  added or removed file fails verification.
- **And its evidence**: the run artifacts the gate and the monitor decide from (the resolved config, the reference
  snapshot, the held-out split: :data:`pipelines.run_artifacts.EVIDENCE`), signed as a second bundle, so that no
  one can hide drift or pass a gate by rewriting the reference or the held-out rows.
- **Where the signatures live**: in the registry, as the version's tags :data:`SIGNATURE_TAG` and
  :data:`EVIDENCE_SIGNATURE_TAG` (Sigstore bundles, JSON) next to :data:`KEY_TAG` (the SHA-256 of the public key).
  The registry database is not the artifact store, so whoever can write to the artifact bucket cannot also replace
  the signatures, and without the private key no one can forge one.
- **Keys** (docs/operations.md#signed-models): ``$VIOPS_SIGNING_KEY`` names the PEM private key of the processes
  that register versions (its password, if any, in ``$VIOPS_SIGNING_KEY_PASSWORD``); ``$VIOPS_VERIFY_KEY`` names the
  PEM public key of every process that loads, promotes or serves versions. Without ``$VIOPS_VERIFY_KEY``, a process
  holding the signing key verifies with its public half. ``viops keys generate`` writes a pair.
- **Policy**: with a verification key, a version whose signature is missing, was made by another key or does not
  match its files is refused (:class:`SignatureInvalid`: ``viops`` exits 6 and pages). With no key at all, versions
  are registered unsigned and loaded unchecked: the local profile's default, said in ``viops register``'s output.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from pipelines.errors import NotRetryable

__all__ = [
    "SIGNATURE_TAG", "EVIDENCE_SIGNATURE_TAG", "KEY_TAG", "SigningKeyError", "SignatureInvalid", "generate_keys",
    "signing_key", "verification_key", "key_fingerprint", "sign_directory", "signature_tags", "check_files",
    "download_model", "sign_run_model", "verify_version",
]

SIGNATURE_TAG = "viops.signature"
EVIDENCE_SIGNATURE_TAG = "viops.signature.evidence"
KEY_TAG = "viops.signature.key"
SIGNING_KEY_ENV = "VIOPS_SIGNING_KEY"
PASSWORD_ENV = "VIOPS_SIGNING_KEY_PASSWORD"
VERIFY_KEY_ENV = "VIOPS_VERIFY_KEY"
PRIVATE_FILE, PUBLIC_FILE = "signing-key.pem", "verify-key.pem"


class SigningKeyError(ValueError, NotRetryable):
    """A configured key file is missing or is not the kind of key it should be; nothing was signed or loaded."""


class SignatureInvalid(RuntimeError, NotRetryable):
    """A version's model files do not carry a valid signature by the trusted key: the version is refused.

    Attributes:
        model, version: the version refused.
        reason: what failed (no signature, another key, which files changed).
    """

    def __init__(self, model: str, version: str, reason: str):
        self.model, self.version, self.reason = model, str(version), reason
        super().__init__(f"version {version} of {model} is refused: {reason}")


def generate_keys(out_dir: str | Path) -> tuple[Path, Path]:
    """Write a new P-256 key pair into ``out_dir``: ``signing-key.pem`` (private, mode 0600, unencrypted) and
    ``verify-key.pem`` (public). Refuses to overwrite an existing private key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / PRIVATE_FILE, out / PUBLIC_FILE
    if private.exists():
        raise SigningKeyError(f"{private} exists; move it away first (its versions stay verifiable with "
                              f"{public} only)")
    key = ec.generate_private_key(ec.SECP256R1())
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def signing_key() -> Path | None:
    """The private key named by ``$VIOPS_SIGNING_KEY``, checked to be one; None when unset."""
    from cryptography.hazmat.primitives import serialization

    name = os.environ.get(SIGNING_KEY_ENV)
    if not name:
        return None
    path = Path(name)
    password = os.environ.get(PASSWORD_ENV)
    try:
        serialization.load_pem_private_key(_read(path, f"signing key (${SIGNING_KEY_ENV})"),
                                           password.encode() if password else None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"${SIGNING_KEY_ENV} {path} is not a usable PEM private key: {exc}") from None
    return path


def verification_key() -> bytes | None:
    """The trusted public key (PEM): ``$VIOPS_VERIFY_KEY``, else the public half of ``$VIOPS_SIGNING_KEY``; None
    when neither is set."""
    from cryptography.hazmat.primitives import serialization

    name = os.environ.get(VERIFY_KEY_ENV)
    if name:
        pem = _read(Path(name), f"verification key (${VERIFY_KEY_ENV})")
        try:
            serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise SigningKeyError(f"${VERIFY_KEY_ENV} {name} is not a PEM public key: {exc}") from None
        return pem
    private = signing_key()
    if private is None:
        return None
    password = os.environ.get(PASSWORD_ENV)
    key = serialization.load_pem_private_key(private.read_bytes(), password.encode() if password else None)
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_fingerprint(public_pem: bytes) -> str:
    """SHA-256 of the public key's DER encoding, hex: what :data:`KEY_TAG` records."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_pem)
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def sign_directory(model_dir: str | Path, private_key: Path) -> str:
    """Sign every file under ``model_dir``; returns the signature (a Sigstore bundle, JSON text)."""
    from model_signing import signing

    password = os.environ.get(PASSWORD_ENV)
    with tempfile.TemporaryDirectory(prefix="viops-sign-") as tmp:
        bundle = Path(tmp) / "model.sig"
        signing.Config().use_elliptic_key_signer(private_key=private_key, password=password).sign(model_dir, bundle)
        return bundle.read_text()


def signature_tags(model_dir: str | Path, evidence_dir: str | Path | None = None) -> dict[str, str]:
    """The version tags that sign ``model_dir`` (and ``evidence_dir``) with ``$VIOPS_SIGNING_KEY``; empty when no
    key is configured."""
    private = signing_key()
    if private is None:
        return {}
    tags = {SIGNATURE_TAG: sign_directory(model_dir, private), KEY_TAG: key_fingerprint(verification_key())}
    if evidence_dir is not None:
        tags[EVIDENCE_SIGNATURE_TAG] = sign_directory(evidence_dir, private)
    return tags


#: The parts of model-signing's mismatch message (a list's repr, so quotes may come escaped) that name files.
_Q = r"\\?['\"]"
_FILES = re.compile(rf"(Hash mismatch for {_Q}([^'\"\\]+){_Q}:|Extra files found in model {_Q}[^'\"\\]*{_Q}: "
                    rf"([^'\"\\\]]+)|Missing files in model {_Q}[^'\"\\]*{_Q}: ([^'\"\\\]]+))")


def _mismatch(message: str) -> str:
    """model-signing's mismatch message (raw digests included) as a sentence naming the files."""
    changed, added, missing = [], [], []
    for match in _FILES.finditer(message):
        if match[2]:
            changed.append(match[2])
        added += [f.strip() for f in (match[3] or "").split(",") if f.strip()]
        missing += [f.strip() for f in (match[4] or "").split(",") if f.strip()]
    parts = [f"{label} {', '.join(files)}" for label, files in
             (("changed:", changed), ("added:", added), ("missing:", missing)) if files]
    return "; ".join(parts) if parts else " ".join(message.split())[:300]


def check_files(model: str, version, tags: dict, model_dir: str | Path, *, tag: str = SIGNATURE_TAG) -> bool:
    """Verify ``model_dir`` (the version's downloaded model; with ``tag=EVIDENCE_SIGNATURE_TAG``, its run's
    evidence) against the signature in its ``tags``.

    Returns True when verified, False when no key is configured (nothing to verify with).

    Raises:
        SignatureInvalid: a key is configured and the signature is missing, by another key, or does not match.
    """
    public = verification_key()
    if public is None:
        return False
    from model_signing import verifying  # imported only when there is a key to verify with (~0.3 s)

    files = "its files" if tag == SIGNATURE_TAG else "its run's config, reference and held-out files"
    signature = (tags or {}).get(tag)
    if not signature:
        raise SignatureInvalid(model, version, f"it carries no signature (tag {tag}) and a verification key is "
                                               f"configured; it was registered without $VIOPS_SIGNING_KEY")
    expected = key_fingerprint(public)
    signed_by = (tags or {}).get(KEY_TAG)
    if signed_by and signed_by != expected:
        raise SignatureInvalid(model, version, f"it was signed by key {signed_by[:16]}…, not by the trusted key "
                                               f"{expected[:16]}…")
    with tempfile.TemporaryDirectory(prefix="viops-verify-") as tmp:
        bundle, key = Path(tmp) / "model.sig", Path(tmp) / "key.pem"
        bundle.write_text(signature)
        key.write_bytes(public)
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).verify(model_dir, bundle)
        except (ValueError, KeyError, json.JSONDecodeError) as exc:
            reason = _mismatch(str(exc)) if isinstance(exc, ValueError) else f"unreadable signature ({exc})"
            raise SignatureInvalid(model, version, f"{files} do not match their signature ({reason})") from None
    return True


def download_model(client, model_name: str, version: str, dst: str | Path, tracking_uri: str | None = None) -> Path:
    """Download a version's model files into ``dst``. The storage location is resolved with this client: MLflow's
    own ``models:/`` resolution consults the process-global registry URI, which may point at another store."""
    import mlflow

    source = client.get_model_version_download_uri(model_name, str(version))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dst),
                                                    tracking_uri=tracking_uri or client.tracking_uri))


def sign_run_model(client, model_id: str, run_id: str) -> dict[str, str]:
    """The signature tags of logged model ``model_id``'s files and of run ``run_id``'s evidence, for the version about
    to be registered from them; empty when no signing key is configured (then nothing is downloaded)."""
    import mlflow

    from pipelines.run_artifacts import RunArtifacts

    if signing_key() is None:
        return {}
    location = client.get_logged_model(model_id).artifact_location
    with tempfile.TemporaryDirectory(prefix="viops-sign-") as tmp:
        model = mlflow.artifacts.download_artifacts(artifact_uri=location, tracking_uri=client.tracking_uri,
                                                    dst_path=str(Path(tmp) / "model"))
        evidence = RunArtifacts(client.tracking_uri, run_id).download_evidence(Path(tmp) / "evidence")
        return signature_tags(model, evidence)


def verify_version(client, model_name: str, version) -> bool:
    """Download ``version`` (a ``ModelVersion``) and its run's evidence, and check both signatures
    (:func:`check_files`); True when verified, False when no key is configured (then nothing is downloaded)."""
    from pipelines.run_artifacts import RunArtifacts

    if verification_key() is None:
        return False
    with tempfile.TemporaryDirectory(prefix="viops-verify-") as tmp:
        local = download_model(client, model_name, str(version.version), Path(tmp) / "model")
        check_files(model_name, version.version, version.tags, local)
        evidence = RunArtifacts(client.tracking_uri, version.run_id).download_evidence(Path(tmp) / "evidence")
        return check_files(model_name, version.version, version.tags, evidence, tag=EVIDENCE_SIGNATURE_TAG)
