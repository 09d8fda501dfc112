"""The one way to read an indicator of a window report.

An SLO objective and a Prometheus gauge name an indicator by its dotted path (``drift.share``,
``calibration.delta.coverage_90``). :func:`check_indicator` resolves such a path against the result *types*, when
the SLO file or the gauge table is loaded, so a renamed field is an error naming the path and what exists instead,
never a silent "no data". :func:`indicator_value` then reads it from one :class:`WindowReport`, and
:func:`evidence_for` names the check whose minimum evidence the indicator needs.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping

from monitoring.checks.results import WindowReport

__all__ = ["IndicatorError", "check_indicator", "indicator_value", "indicator_detail", "evidence_for"]

#: The evidence an indicator needs, by the prefix of its path (the longest prefix wins).
EVIDENCE_OF = {"drift": "drift", "calibration": "calibration", "vi_health.elbo": "fit", "vi_health.nll": "fit",
               "vi_health.uncertainty": "uncertainty", "vi_health.latency": "latency"}


def evidence_for(indicator: str) -> str | None:
    """The :attr:`WindowReport.evidence` key that ``indicator`` depends on, or None."""
    matches = [prefix for prefix in EVIDENCE_OF if indicator.startswith(prefix)]
    return EVIDENCE_OF[max(matches, key=len)] if matches else None


class IndicatorError(ValueError):
    """An indicator path names no field of the window report; the message says which part and what exists."""


def _unwrap(hint):
    """``X | None`` -> ``X``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def check_indicator(path: str) -> None:
    """Resolve a dotted indicator path against the :class:`WindowReport` types.

    Raises:
        IndicatorError: a part of the path is not a field (naming the fields there are), or the path ends at
            something that is not a number.
    """
    hint, walked = WindowReport, []
    for part in path.split("."):
        hint = _unwrap(hint)
        if typing.get_origin(hint) is dict:  # a mapping keyed by name (uncertainty measures): any key
            hint = typing.get_args(hint)[1]
        elif dataclasses.is_dataclass(hint):
            hints = typing.get_type_hints(hint)
            fields = sorted(f.name for f in dataclasses.fields(hint) if f.metadata.get("json", True))
            derived = getattr(hint, part, None)
            if isinstance(derived, property):  # a number derived from fields (InputsResult.schema_violations)
                hint = typing.get_type_hints(derived.fget)["return"]
            elif part not in fields:
                where = ".".join(walked) or "the window report"
                raise IndicatorError(f"indicator {path!r}: {where} has no field {part!r}; it has {fields}")
            else:
                hint = hints[part]
        else:
            raise IndicatorError(f"indicator {path!r}: {'.'.join(walked)} is a number, not a group of fields")
        walked.append(part)
    hint = _unwrap(hint)
    if hint not in (int, float):
        raise IndicatorError(f"indicator {path!r} is not a number (it is {getattr(hint, '__name__', hint)})")


def indicator_value(report: WindowReport, path: str) -> float | None:
    """The number at dotted ``path`` in ``report``, or None when this window did not measure it."""
    node = report
    for part in path.split("."):
        if node is None:
            return None
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part)
    if node is None or isinstance(node, bool):
        return None
    return float(node)


def indicator_detail(report: WindowReport, path: str) -> str:
    """What a breach of ``path`` should name besides its value (the columns with schema problems), or ""."""
    if path == "inputs.schema_violations" and report.inputs is not None and report.inputs.schema_problems:
        return " (" + "; ".join(f"{c}: {p}" for c, p in report.inputs.schema_problems.items()) + ")"
    return ""
