"""A registered version loaded for prediction: its pyfunc (as ``mlflow models serve`` runs it) and the viops
predictor inside, resolved through the client's own registry.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.registry.versions import CHAMPION, parse_model_ref, resolve_version

__all__ = ["LoadedVersion", "fetch_checked", "load_version", "load_ref", "cached_model",
           "warn_environment_mismatches"]

_logger = logging.getLogger(__name__)


@dataclass
class LoadedVersion:
    """A registered version loaded for prediction.

    Attributes:
        pyfunc: the MLflow pyfunc model (signature enforcement included), as ``mlflow models serve`` runs it.
        predictor: the viops predictor inside it: ``bundle`` (features, target, standardisation), ``model``, ``family``.
        verified: whether its files were checked against its signature (False when no key is configured).
        tags: the version's registry tags (its signatures among them).
    """

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]
    pyfunc: object
    predictor: object
    verified: bool = False
    tags: dict = field(default_factory=dict)

    @property
    def bundle(self):
        return self.predictor.bundle

    @property
    def ref(self) -> str:
        return f"{self.name}/{self.version}"

    def artifacts(self, tracking_uri: str):
        """The version's run artifacts (:class:`~pipelines.run_artifacts.RunArtifacts`). When a verification key is
        configured, the evidence the gate and the monitor read (config, reference, held-out split) is checked
        against the version's signature before any of it is read."""
        from pipelines.registry.signing import EVIDENCE_SIGNATURE_TAG, check_files, verification_key
        from pipelines.run_artifacts import RunArtifacts

        def verify(folder) -> None:
            check_files(self.name, self.version, self.tags, folder, tag=EVIDENCE_SIGNATURE_TAG)

        return RunArtifacts(tracking_uri, self.run_id, verify=verify if verification_key() is not None else None)


def fetch_checked(client, model_name: str, selector: str | None = None, *, tracking_uri: str,
                  dst: str | None = None):
    """Resolve a version (``selector``: a number or ``@alias``; default ``@champion``), download its model files
    (into ``dst``, else a new temporary folder) and check their signature. Returns ``(ModelVersion, folder,
    verified)``; ``verified`` is False when no key is configured.

    Raises:
        RegistryError: no such model, version or alias.
        SignatureInvalid: a verification key is configured and the version's files are unsigned or changed.
    """
    from pipelines.registry.signing import check_files, download_model

    version = resolve_version(client, model_name, selector or f"@{CHAMPION}")
    local = download_model(client, model_name, str(version.version), dst or tempfile.mkdtemp(prefix="viops-model-"),
                           tracking_uri)
    return version, local, check_files(model_name, version.version, version.tags, local)


def load_version(client, model_name: str, selector: str | None = None, *, tracking_uri: str,
                 cache_dir: str | Path | None = None) -> LoadedVersion:
    """Download a version (:func:`fetch_checked`: its signature checked) and load it. Nothing of a refused version
    is loaded (unpickling its files would run them).

    With ``cache_dir`` (the monitor's state folder) and no verification key configured, the version's files are
    downloaded there once, into a folder of their own (:func:`cached_model`), and later loads read them from it: a
    version's files do not change once registered. With a key, every load downloads and checks the files where the
    registry keeps them, so that a file changed there is refused (and pages) at the next load.

    Raises:
        RegistryError: no such model, version or alias.
        SignatureInvalid: a verification key is configured and the version's files are unsigned or changed.
    """
    import mlflow

    import models  # noqa: F401  (this process's own copy; the download's code folder is on sys.path while it lives)
    from pipelines.registry.signing import verification_key

    if cache_dir is not None and verification_key() is None and _writable(Path(cache_dir)):  # else a temporary copy
        version = resolve_version(client, model_name, selector or f"@{CHAMPION}")
        local, verified = cached_model(client, version, Path(cache_dir), tracking_uri), False
        try:
            pyfunc = _load(local, mlflow)
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)  # a copy that does not load is downloaded afresh next time
            raise
        weakref.finalize(pyfunc, _forget, str(local))  # the files stay for the next load
    else:
        folder = tempfile.mkdtemp(prefix="viops-model-")
        try:
            version, local, verified = fetch_checked(client, model_name, selector, tracking_uri=tracking_uri,
                                                     dst=folder)
            pyfunc = _load(local, mlflow)
        except BaseException:
            _discard(folder)
            raise
        # The files are needed only while the model is loaded: a monitor or a gate run in a long-lived worker would
        # otherwise leave a copy of the model in the temporary folder for every window and every evaluation.
        weakref.finalize(pyfunc, _discard, folder)
    return LoadedVersion(model_name, str(version.version), version.run_id, tuple(version.aliases), pyfunc,
                         pyfunc.unwrap_python_model(), verified, dict(version.tags or {}))


#: Versions of one model whose files a cache folder keeps (the most recently loaded).
CACHED_VERSIONS = 3


def cached_model(client, version, cache_dir: Path, tracking_uri: str) -> Path:
    """The folder in ``cache_dir`` holding ``version``'s model files, downloaded first when it has none. Keyed by
    model, version and run (a registry recreated elsewhere numbers its versions afresh); a download lands under a
    temporary name and is renamed into place, so a concurrent monitor sees the whole folder or none. The model's
    other cached versions beyond the :data:`CACHED_VERSIONS` most recently loaded are removed."""
    from pipelines.registry.signing import download_model

    name = version.name
    target = cache_dir / f"{name}-v{version.version}-{version.run_id}"
    if not (target / "MLmodel").is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
        try:
            local = download_model(client, name, str(version.version), staging, tracking_uri)
            try:
                os.replace(local, target)
            except OSError:  # another monitor put it in place first (or a stale partial folder is there)
                if not (target / "MLmodel").is_file():
                    shutil.rmtree(target, ignore_errors=True)
                    os.replace(local, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    now = time.time()
    mine = re.compile(rf"{re.escape(name)}-v\d+-\w+")
    try:
        os.utime(target, (now, now))  # the most recently loaded
        older = sorted((p for p in cache_dir.iterdir() if p != target and p.is_dir() and mine.fullmatch(p.name)),
                       key=lambda p: p.stat().st_mtime, reverse=True)
        abandoned = [p for p in cache_dir.glob(".download-*") if now - p.stat().st_mtime > 3600]  # killed downloads
    except OSError:  # another monitor is tidying the same folder: tidied next time
        older, abandoned = [], []
    for stale in older[CACHED_VERSIONS - 1:] + abandoned:
        shutil.rmtree(stale, ignore_errors=True)
    return target


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


def _load(local: Path, mlflow):
    warn_environment_mismatches(Path(local))
    return mlflow.pyfunc.load_model(str(local), suppress_warnings=True)


def _forget(folder: str) -> None:
    """Take a cached version's code folder off ``sys.path`` (MLflow put it there when loading); keep its files."""
    sys.path[:] = [entry for entry in sys.path if not entry.startswith(folder)]


def warn_environment_mismatches(local: Path) -> list[str]:
    """Warn, as ``mlflow.pyfunc.load_model`` does, when this Python or an installed package differs from what the
    version's files pin (their ``MLmodel`` and ``requirements.txt``); returns the mismatches. MLflow's own check
    first maps every installed distribution to its modules by reading each one's file list, 0.5-1 s per process
    that loads a model; the pins viops writes are distribution names, which need no map."""
    import yaml
    from packaging.requirements import InvalidRequirement, Requirement

    problems = []
    try:
        loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the MLmodel holds the whole signature
        flavor = yaml.load((local / "MLmodel").read_text(), Loader=loader)["flavors"]["python_function"]
        saved_in = str(flavor.get("python_version") or "")
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        saved_in = ""
    if saved_in.split(".")[:2] != platform.python_version().split(".")[:2]:
        problems.append(f"python (current: {platform.python_version()}, required: {saved_in or 'not recorded'})")
    requirements = local / "requirements.txt"
    for line in requirements.read_text().splitlines() if requirements.is_file() else []:
        try:
            requirement = Requirement(line.strip())
        except InvalidRequirement:  # a blank line, a comment, -r/-c, a path or URL: not checked, as in MLflow
            continue
        if requirement.marker and not requirement.marker.evaluate():
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            installed = None
        if installed is None or not requirement.specifier.contains(installed, prereleases=True):
            problems.append(f"{requirement.name} (current: {installed or 'uninstalled'}, required: {line.strip()})")
    if problems:
        _logger.warning("The model's environment differs from this one and may not load or predict the same:\n - "
                        "%s", "\n - ".join(problems))
    return problems


def _discard(folder: str) -> None:
    """Remove a loaded version's download, and the code folder MLflow put on ``sys.path`` from it."""
    _forget(folder)
    shutil.rmtree(folder, ignore_errors=True)


def load_ref(client, ref: str, *, tracking_uri: str) -> LoadedVersion:
    """Load ``NAME``, ``NAME@alias`` or ``NAME/version`` (``NAME`` alone means its champion)."""
    name, selector = parse_model_ref(ref)
    return load_version(client, name, selector, tracking_uri=tracking_uri)
