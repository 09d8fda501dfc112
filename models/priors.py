"""Prior distributions for regression models, built on torch.distributions.

Two families are missing from torch.distributions and are defined here as thin subclasses:
``Flat`` (the improper uniform prior, log-density 0) and ``HalfStudentT`` (a Student-t folded at zero).
Every other prior is a stock ``torch.distributions`` object.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import (
    Cauchy,
    Distribution,
    HalfCauchy,
    HalfNormal,
    Normal,
    StudentT,
    biject_to,
    constraints,
)

__all__ = ["Flat", "HalfStudentT", "PriorDensity", "make_prior", "without_sample_checks", "PRIOR_KINDS",
           "SCALE_PRIOR_KINDS", "TO_POSITIVE"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)

#: How a positive parameter (a learned noise scale) is held in ``z``: as ``u = log sigma``, mapped back by torch's
#: bijection onto the positive reals, ``sigma = exp(u)``. The models map ``u`` to ``sigma`` with it, and the hot-path
#: densities use what it implies: the log-Jacobian of ``sigma = exp(u)`` is ``u`` (:meth:`PriorDensity.log_scale`),
#: and so is ``log sigma`` (:func:`models.latent.learned_noise_log_likelihood`). ``tests/models`` checks that torch's
#: bijection is still ``exp``.
TO_POSITIVE = biject_to(constraints.positive)


class Flat(Distribution):
    """Improper uniform prior over the real line: ``log_prob`` is 0 everywhere.

    Sampling is not defined; a flat prior only contributes to the joint density.
    """

    arg_constraints: dict = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, batch_shape: torch.Size = torch.Size(), validate_args: bool | None = None):
        super().__init__(batch_shape=batch_shape, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(value)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:  # noqa: ARG002
        raise NotImplementedError("a flat prior is improper and cannot be sampled")


class HalfStudentT(Distribution):
    """Student-t with location 0 folded onto the positive half-line (density ``2 * StudentT(x)`` for x >= 0)."""

    arg_constraints = {"df": constraints.positive, "scale": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, df: float | torch.Tensor, scale: float | torch.Tensor, validate_args: bool | None = None):
        self.base = StudentT(df, torch.zeros_like(torch.as_tensor(scale, dtype=torch.get_default_dtype())), scale)
        self.df, self.scale = self.base.df, self.base.scale
        super().__init__(batch_shape=self.base.batch_shape, validate_args=validate_args)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        return self.base.rsample(sample_shape).abs()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.base.log_prob(value) + math.log(2.0)


def _student_t(df: float, loc: float = 0.0, scale: float = 1.0) -> StudentT:
    return StudentT(torch.tensor(float(df)), torch.tensor(float(loc)), torch.tensor(float(scale)))


#: Priors allowed on real-valued coefficients (weights, intercept), by config name.
PRIOR_KINDS = {
    "normal": lambda loc=0.0, scale=1.0: Normal(torch.tensor(float(loc)), torch.tensor(float(scale))),
    "student_t": _student_t,
    "cauchy": lambda loc=0.0, scale=1.0: Cauchy(torch.tensor(float(loc)), torch.tensor(float(scale))),
    "flat": lambda: Flat(),
}

#: Priors allowed on positive scale parameters (the noise scale), by config name.
SCALE_PRIOR_KINDS = {
    "half_normal": lambda scale=1.0: HalfNormal(torch.tensor(float(scale))),
    "half_cauchy": lambda scale=1.0: HalfCauchy(torch.tensor(float(scale))),
    "half_student_t": lambda df, scale=1.0: HalfStudentT(torch.tensor(float(df)), torch.tensor(float(scale))),
    "flat": lambda: Flat(),
}


def make_prior(kind: str, params: dict | None = None, *, positive: bool = False) -> Distribution:
    """Build a scalar prior from its config name and parameters.

    Args:
        kind: one of ``PRIOR_KINDS`` (or ``SCALE_PRIOR_KINDS`` when ``positive``).
        params: keyword arguments of that family, e.g. ``{"loc": 0.0, "scale": 1.0}``.
        positive: the prior is for a positive scale parameter.

    Raises:
        ValueError: the kind is unknown for this kind of parameter.
    """
    table = SCALE_PRIOR_KINDS if positive else PRIOR_KINDS
    if kind not in table:
        what = "a scale parameter" if positive else "a coefficient"
        raise ValueError(f"unknown prior {kind!r} for {what}; allowed: {', '.join(sorted(table))}")
    return without_sample_checks(table[kind](**(params or {})))


def without_sample_checks(dist: Distribution) -> Distribution:
    """``dist`` (its parameters already validated when it was built) with the per-call check of ``log_prob``'s
    argument turned off: a prior is evaluated at every training step, at values inside its support by construction
    (the models map unconstrained draws into it), and the check cost as much as the density."""
    for part in (dist, getattr(dist, "base", None), getattr(dist, "base_dist", None)):
        if isinstance(part, Distribution):
            part._validate_args = False
    return dist


def _scalar(*params) -> list[float] | None:
    """The parameters as numbers when each holds one value, else None (a prior with per-coordinate parameters)."""
    if not all(torch.is_tensor(p) and p.numel() == 1 for p in params):
        return None
    return [float(p) for p in params]


class PriorDensity:
    """A scalar prior's log-density on the training step's hot path, read once when the model is built.

    ``weights(z)`` is ``prior.log_prob(z).sum(-1)``: the prior on every coordinate of ``z``. ``log_scale(u)`` is the
    density of ``u = log sigma`` for a prior on a positive ``sigma``: ``log prior(exp(u)) + u`` (the log-Jacobian of
    ``sigma = exp(u)``). For a Normal (and a HalfNormal on a scale) with one location and scale, both are the closed
    form with the parameters as numbers: torch's ``log_prob`` squares and logs the prior's scale tensor on every call
    and adds a dozen operations, and their backward pass, to a step of a small model. Any other prior uses torch's
    own ``log_prob``. ``tests/models/test_priors_and_families.py`` checks both against torch.
    """

    def __init__(self, prior: Distribution):
        self.prior = prior
        normal = _scalar(prior.loc, prior.scale) if type(prior) is Normal else None
        half = _scalar(prior.scale) if type(prior) is HalfNormal else None
        #: Normal: (loc, 1 / (2 scale^2), log scale + log(2 pi) / 2)
        self._normal = None if normal is None else (normal[0], 0.5 / normal[1] ** 2,
                                                    math.log(normal[1]) + _HALF_LOG_2PI)
        #: HalfNormal: (1 / (2 scale^2), log 2 - log scale - log(2 pi) / 2)
        self._half = None if half is None else (0.5 / half[0] ** 2, math.log(2.0) - math.log(half[0]) - _HALF_LOG_2PI)

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        if self._normal is None:
            return self.prior.log_prob(z).sum(-1)
        loc, half_precision, log_norm = self._normal
        centred = z if loc == 0.0 else z - loc
        return -half_precision * centred.square().sum(-1) - z.shape[-1] * log_norm

    def log_scale(self, u: torch.Tensor) -> torch.Tensor:
        if self._half is None:
            sigma = TO_POSITIVE(u)
            return self.prior.log_prob(sigma) + u
        half_precision, log_norm = self._half
        return log_norm - half_precision * (2 * u).exp() + u
