"""Reference posteriors from a posteriordb checkout, translated into viops regression models.

A posteriordb posterior folder holds ``posterior.json`` (names the model and data), ``model.stan``, ``data.json.zip``
and ``reference_draws.json.zip`` (gold-standard NUTS draws). viops cannot run Stan, so each supported Stan model has a
translation here: the data transformation its ``transformed data`` block does, and the priors of its ``model`` block
expressed as a viops ``model`` config section. A posterior whose model has no translation is reported as such.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config.model import LinearRegressionConfig

__all__ = ["ReferencePosterior", "load_posterior", "list_posteriors", "TRANSLATIONS", "PosteriorDBError"]


class PosteriorDBError(ValueError):
    """The posteriordb folder or one of its posteriors cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ReferencePosterior:
    """One posterior: its data as a frame, the viops model, and the reference draws per viops parameter.

    Attributes:
        name: the posteriordb posterior name (``kidiq-kidscore_momiq``).
        frame: features and target, one row per observation.
        features, target: column names in ``frame``.
        model: the viops ``model`` config section equivalent to the Stan model.
        reference: ``{(block, index): (stan_name, draws)}`` for every parameter viops reports.
    """

    name: str
    frame: pd.DataFrame
    features: tuple[str, ...]
    target: str
    model: LinearRegressionConfig
    reference: dict[tuple[str, int], tuple[str, np.ndarray]]


def _read_zipped_json(path: Path):
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/")]
            if len(names) != 1:
                raise PosteriorDBError(f"{path}: expected one JSON file inside, found {len(names)}")
            return json.loads(archive.read(names[0]))
    except (OSError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise PosteriorDBError(f"{path}: cannot read ({exc})") from exc


def _blr(data: dict):
    x = np.asarray(data["X"], dtype=np.float64)
    features = {f"x{i + 1}": x[:, i] for i in range(x.shape[1])}
    model = {
        "fit_intercept": False,
        "prior": {"weights": {"normal": {"scale": 10.0}}},
        "noise": {"learned": {"half_normal": {"scale": 10.0}}},
    }
    params = {f"beta[{i + 1}]": ("weights", i) for i in range(x.shape[1])}
    return features, np.asarray(data["y"], dtype=np.float64), model, params


def _kidiq(columns: tuple[str, ...]):
    def translate(data: dict):
        features = {c: np.asarray(data[c], dtype=np.float64) for c in columns}
        model = {
            "prior": {"weights": {"flat": {}}, "intercept": {"flat": {}}},
            "noise": {"learned": {"half_cauchy": {"scale": 2.5}}},
        }
        params = {"beta[1]": ("intercept", 0), **{f"beta[{i + 2}]": ("weights", i) for i in range(len(columns))}}
        return features, np.asarray(data["kid_score"], dtype=np.float64), model, params

    return translate


def _flat_simple_regression(feature: str, x_of, y_of):
    def translate(data: dict):
        model = {"prior": {"weights": {"flat": {}}, "intercept": {"flat": {}}}, "noise": {"learned": {"flat": {}}}}
        params = {"beta[1]": ("intercept", 0), "beta[2]": ("weights", 0)}
        return {feature: x_of(data)}, y_of(data), model, params

    return translate


def _diamonds(data: dict):
    x = np.asarray(data["X"], dtype=np.float64)[:, 1:]  # column 1 is the intercept column; Stan centres the rest
    x = x - x.mean(0)
    features = {f"b{i + 1}": x[:, i] for i in range(x.shape[1])}
    model = {
        "prior": {"weights": {"normal": {"scale": 1.0}}, "intercept": {"student_t": {"df": 3, "loc": 8, "scale": 10}}},
        "noise": {"learned": {"half_student_t": {"df": 3, "scale": 10.0}}},
    }
    params = {"Intercept": ("intercept", 0), **{f"b[{i + 1}]": ("weights", i) for i in range(x.shape[1])}}
    return features, np.asarray(data["Y"], dtype=np.float64), model, params


def _arr(data: dict, key: str) -> np.ndarray:
    return np.asarray(data[key], dtype=np.float64)


#: Stan model name (``posterior.json: model_name``) -> translation into (features, target, viops model, parameters).
TRANSLATIONS = {
    "blr": _blr,
    "kidscore_momiq": _kidiq(("mom_iq",)),
    "kidscore_momhsiq": _kidiq(("mom_hs", "mom_iq")),
    "logearn_height": _flat_simple_regression(
        "height", lambda d: _arr(d, "height"), lambda d: np.log(_arr(d, "earn"))
    ),
    "logmesquite_logvolume": _flat_simple_regression(
        "log_canopy_volume",
        lambda d: np.log(_arr(d, "diam1") * _arr(d, "diam2") * _arr(d, "canopy_height")),
        lambda d: np.log(_arr(d, "weight")),
    ),
    "diamonds": _diamonds,
}


def list_posteriors(root: str | Path) -> list[str]:
    """Names of the posterior folders under ``root`` (those with a ``posterior.json``)."""
    root = Path(root)
    if not root.is_dir():
        raise PosteriorDBError(f"{root}: not a folder")
    return sorted(p.parent.name for p in root.glob("*/posterior.json"))


def load_posterior(root: str | Path, name: str) -> ReferencePosterior:
    """Load posterior ``name`` from the posteriordb folder ``root``.

    Raises:
        PosteriorDBError: the folder or a file is missing or unreadable, or its model has no viops translation.
    """
    folder = Path(root) / name
    info_path = folder / "posterior.json"
    if not info_path.is_file():
        known = ", ".join(list_posteriors(root)) if Path(root).is_dir() else "none"
        raise PosteriorDBError(f"{folder}: no posterior.json (posteriors here: {known})")
    info = json.loads(info_path.read_text())
    model_name = info.get("model_name")
    if model_name not in TRANSLATIONS:
        raise PosteriorDBError(
            f"{name}: model {model_name!r} has no viops translation (supported: {', '.join(sorted(TRANSLATIONS))})"
        )
    data = _read_zipped_json(folder / "data.json.zip")
    features, y, model, params = TRANSLATIONS[model_name](data)
    frame = pd.DataFrame({**features, "y": y})
    chains = _read_zipped_json(folder / "reference_draws.json.zip")
    reference = {}
    for stan_name, (block, index) in params.items():
        missing = [i for i, chain in enumerate(chains) if stan_name not in chain]
        if missing:
            raise PosteriorDBError(f"{name}: reference draws lack {stan_name!r} (chains {missing})")
        reference[(block, index)] = (stan_name, np.concatenate([np.asarray(c[stan_name], float) for c in chains]))
    if "sigma" in chains[0]:
        reference[("noise_scale", 0)] = ("sigma", np.concatenate([np.asarray(c["sigma"], float) for c in chains]))
    return ReferencePosterior(name, frame, tuple(features), "y", LinearRegressionConfig.model_validate(model), reference)
