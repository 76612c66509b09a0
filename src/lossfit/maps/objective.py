"""The per-voxel objectives of a parameter map: least squares (plain or robust) and the Rician likelihood.

Each gives, for parameters ``p (k, V)`` and signals ``y (m, V)`` (voxels last), the cost per voxel, its gradient, a
positive semi-definite curvature (Gauss-Newton for least squares, Fisher scoring for the likelihood) and the squared
length of the equivalent residual that MINPACK's gradient test divides by (``||r||^2`` for least squares).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lossfit.engine import robust
from lossfit.losses import ROBUST, Rho
from lossfit.maps.models import MapModel

Terms = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _normal(
    columns: list[torch.Tensor], r: torch.Tensor, w: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``J^T W r (k, V)`` and ``J^T W J (k, k, V)`` per voxel from the Jacobian's columns ``(m, V)`` (``W``
    diagonal, the identity when None): one product and sum per entry of the symmetric matrix."""
    weighted = columns if w is None else [c * w for c in columns]
    k = len(columns)
    g = torch.stack([(c * r).sum(0) for c in weighted])
    entries: list[list[torch.Tensor]] = [[g[0]] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1):
            entries[i][j] = entries[j][i] = (weighted[i] * columns[j]).sum(0)
    return g, torch.stack([torch.stack(row) for row in entries])


@dataclass(frozen=True)
class LeastSquares:
    """``0.5 sum(rho((r / f_scale)^2)) f_scale^2`` with ``r = model(x, p) - y``; ``rho`` from the engine's registry.

    The robust losses use the re-weighted Gauss-Newton curvature ``J^T diag(rho') J`` (the part of the Hessian that
    stays positive semi-definite)."""

    model: MapModel
    x: torch.Tensor
    loss: str = "linear"
    f_scale: float = 1.0

    @property
    def rho(self) -> Rho:
        return ROBUST[self.loss]

    def cost(self, p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r = self.model.signal(self.x, p) - y
        return 0.5 * robust.value(self.rho, r, self.f_scale).sum(0)

    def terms(self, p: torch.Tensor, y: torch.Tensor) -> Terms:
        value, j = self.model.evaluate(self.x, p)
        r = value - y
        if self.loss == "linear":
            g, h = _normal(j, r)
            r2 = (r * r).sum(0)
            return 0.5 * r2, g, h, r2
        d1, _, _ = robust.derivatives(self.rho, r, self.f_scale)
        g, h = _normal(j, r, d1)
        return 0.5 * robust.value(self.rho, r, self.f_scale).sum(0), g, h, (d1 * r * r).sum(0)


def log_bessel_i0(z: torch.Tensor) -> torch.Tensor:
    """``log I0(z)`` for ``z >= 0`` without overflow (``i0e`` is ``exp(-z) I0(z)``)."""
    return torch.log(torch.special.i0e(z)) + z


def bessel_ratio(z: torch.Tensor) -> torch.Tensor:
    """``I1(z) / I0(z)`` for ``z >= 0``, from the scaled Bessel functions (no overflow at large z)."""
    return torch.special.i1e(z) / torch.special.i0e(z)


@dataclass(frozen=True)
class Rician:
    """The negative log-likelihood of magnitude data ``y`` with a noise-free signal ``nu = model(x, p)`` and noise
    ``sigma`` per channel (Rice, 1944), constants dropped:
    ``sum((y^2 + nu^2) / (2 sigma^2) - log I0(y |nu| / sigma^2))``.

    Its gradient in ``nu`` is ``(nu - y I1(z) / I0(z)) / sigma^2`` with ``z = y nu / sigma^2``; the curvature is the
    Gaussian Fisher information ``J^T J / sigma^2`` (the likelihood's own is below it, so the steps are conservative,
    and LM's acceptance test keeps every kept step a descent). ``sigma (V,)`` comes with the data, one per voxel.
    """

    model: MapModel
    x: torch.Tensor

    def _parts(
        self, p: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        nu = self.model.signal(self.x, p)
        s2 = sigma * sigma
        z = (y * nu).abs() / s2
        cost = ((y * y + nu * nu) / (2 * s2) - log_bessel_i0(z)).sum(0)
        return nu, s2, cost

    def cost(self, p: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self._parts(p, y, sigma)[2]

    def terms(self, p: torch.Tensor, y: torch.Tensor, sigma: torch.Tensor) -> Terms:
        nu, columns = self.model.evaluate(self.x, p)
        z = (y * nu).abs() / (sigma * sigma)
        cost = ((y * y + nu * nu) / (2 * sigma * sigma) - log_bessel_i0(z)).sum(0)
        effective = (nu - y * torch.sign(nu) * bessel_ratio(z)) / sigma  # the residual whose square Fisher weighs
        g, h = _normal([c / sigma for c in columns], effective)
        return cost, g, h, (effective * effective).sum(0)


Objective = LeastSquares | Rician
