"""Reading configs: YAML, ``--set dotted.key=value`` overrides, validation, and errors that name file and key.

``load_config(path, overrides)`` reads a training config, applies the overrides, validates it against
:class:`~pipelines.config.schema.TrainConfig` and resolves ``data.path`` relative to the config file. The monitoring,
SLO and scenario files are read with :func:`read_yaml` and :func:`validate_section`, so every config error reads
the same: ``invalid <what> <file>: <dotted.key>: <problem>``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError

from pipelines.config.base import ConfigError
from pipelines.config.model import MODEL_KINDS
from pipelines.config.schema import GateConfig, TrainConfig

__all__ = ["parse_overrides", "read_yaml", "validate_section", "load_config", "load_gate_config", "config_hash"]

M = TypeVar("M")


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Parse ``["train.lr=0.001", ...]`` into ``{"train.lr": 0.001}``; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
    return out


def _apply_override(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: {'.'.join(keys[: depth + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _format_validation_error(source: str, exc: ValidationError, prefix: tuple[str, ...] = (),
                             what: str = "config") -> str:
    problems = []
    for err in exc.errors():
        loc = [*prefix, *err["loc"]]
        if len(loc) > 1 and loc[0] == "model" and loc[1] in MODEL_KINDS:
            del loc[1]  # the discriminated union's tag: the user wrote model.<key>, not model.<kind>.<key>
        where = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not part of the config schema)"
        elif "input" in err and err["type"] not in ("missing",) and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        problems.append(f"{where}: {msg}")
    return f"invalid {what} {source}: " + "; ".join(problems)


def read_yaml(path: str | Path, what: str = "config") -> Any:
    """The parsed YAML of ``path``.

    Raises:
        ConfigError: the file is missing or is not valid YAML (``what`` names the kind of file in the message).
    """
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} file not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ConfigError(f"{what} {path} cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise ConfigError(f"{what} {path} is not valid YAML: {problem}{where}") from None


def validate_section(model: type[M], raw: Any, source: str | Path, prefix: tuple[str, ...] = (),
                     what: str = "config") -> M:
    """``model`` validated from ``raw``; errors name the file and the dotted key (``prefix`` + the model's own).

    Raises:
        ConfigError: ``invalid <what> <source>: <key>: <problem>; ...``.
    """
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(source), exc, prefix, what)) from None


def load_gate_config(path: str | Path) -> GateConfig:
    """The ``gate:`` section of a YAML file (a training config, or a file holding only that section).

    Raises:
        ConfigError: unreadable file, no ``gate:`` section, or an invalid threshold.
    """
    raw = read_yaml(path)
    if not isinstance(raw, dict) or not isinstance(raw.get("gate"), dict):
        raise ConfigError(f"config {path} has no 'gate:' section")
    return validate_section(GateConfig, raw["gate"], path, prefix=("gate",))


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Load, override, validate and resolve a training config.

    Raises:
        ConfigError: the file is missing or unreadable, or any key is unknown or out of range.
    """
    path = Path(path)
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level, got {type(raw).__name__}")
    for key, value in (overrides or {}).items():
        _apply_override(raw, key, value)
    data = raw.get("data")
    if isinstance(data, dict) and isinstance(data.get("path"), str):
        data_path = Path(data["path"])
        if not data_path.is_absolute():
            data["path"] = str((path.parent / data_path).resolve())
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(str(path), exc)) from None


def config_hash(config: TrainConfig) -> str:
    """A short stable hash of the resolved config (keys sorted), for tagging runs."""
    blob = json.dumps(config.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
