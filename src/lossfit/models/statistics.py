"""The statistics of a fit: the :class:`Regression` result (standard errors, correlations, confidence intervals),
Student's t quantiles (without a scipy dependency), the runs test on residual signs and a robust scale."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

from lossfit.engine import FitResult
from lossfit.losses import MAD_TO_SIGMA, TUNING


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularised incomplete beta function (modified Lentz's method)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        even = m * (b - m) * x / ((a + m2 - 1) * (a + m2))
        odd = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function with ``df`` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution (bisection on :func:`t_cdf`, to 1e-12)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"`p` must be strictly between 0 and 1; got {p}")
    if not df > 0:
        raise ValueError(f"`df` must be positive; got {df}")
    if p == 0.5:
        return 0.0
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > p:
        lo *= 2.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Regression(FitResult):
    """A fit with its statistics. ``stderr``, ``covariance`` come from the FitResult (least-squares fits only).

    Attributes:
        dof: degrees of freedom, ``m - n`` (residuals minus parameters).
        names: parameter names, for tables.
    """

    dof: int | torch.Tensor = 0
    names: tuple[str, ...] = ()

    @property
    def correlation(self) -> torch.Tensor | None:
        """Correlations of the parameters (from the covariance)."""
        if self.covariance is None:
            return None
        sd = torch.diagonal(self.covariance, dim1=-2, dim2=-1).clamp_min(0).sqrt()
        return self.covariance / (sd.unsqueeze(-1) * sd.unsqueeze(-2)).clamp_min(1e-300)

    def confidence_interval(self, level: float = 0.95) -> torch.Tensor:
        """``(n, 2)`` lower and upper bounds of each flat parameter, from Student's t with ``dof`` degrees of
        freedom."""
        if not 0 < level < 1:
            raise ValueError(f"`level` must be between 0 and 1; got {level}")
        dof = self.dof if isinstance(self.dof, torch.Tensor) else torch.tensor([self.dof])
        if self.stderr is None or bool((dof <= 0).any()):
            raise ValueError("no confidence intervals: the fit has no covariance (or no degrees of freedom)")
        stderr = self.stderr
        q: torch.Tensor | float
        if isinstance(self.dof, torch.Tensor):  # a batch of data sets of different sizes: a quantile each
            quantiles = {d: t_quantile(0.5 + level / 2, d) for d in set(self.dof.tolist())}
            q = torch.tensor([quantiles[d] for d in self.dof.tolist()], dtype=stderr.dtype).unsqueeze(-1)
        else:
            q = t_quantile(0.5 + level / 2, self.dof)
        centre = flat_params(self.params)
        return torch.stack([centre - q * stderr, centre + q * stderr], dim=-1)


def flat_params(params: Any) -> torch.Tensor:
    if isinstance(params, dict):
        return torch.cat([v.reshape(-1) for v in params.values()])
    return params.reshape(-1) if params.ndim <= 1 else params.reshape(params.shape[0], -1)


def result_fields(result: FitResult) -> dict[str, Any]:
    """A FitResult's fields, to build a :class:`Regression` from it."""
    return {f.name: getattr(result, f.name) for f in dataclasses.fields(FitResult)}


def runs_z(residuals: torch.Tensor) -> float:
    """Wald-Wolfowitz runs test on the signs of ``residuals`` in their order: the z score of the number of runs.

    Residuals of a good fit change sign at random (z near 0); a fit that misses a feature of the data leaves long runs
    of one sign (z strongly negative). Returns 0 when the test has nothing to say (under 20 values, or one sign only).
    """
    signs = residuals.reshape(-1) > 0
    m = signs.numel()
    n1 = int(signs.sum())
    n2 = m - n1
    if m < 20 or n1 == 0 or n2 == 0:
        return 0.0
    runs = 1 + int((signs[1:] != signs[:-1]).sum())
    mean = 2 * n1 * n2 / m + 1
    var = (mean - 1) * (mean - 2) / (m - 1)
    return (runs - mean) / var**0.5 if var > 0 else 0.0


def huber_scale(r: torch.Tensor) -> float:
    """1.345 robust standard deviations (median absolute deviation): Huber's 95%-efficiency threshold."""
    mad = (r - r.median()).abs().median()
    return float(TUNING["huber"] * MAD_TO_SIGMA * mad.clamp_min(1e-12))
