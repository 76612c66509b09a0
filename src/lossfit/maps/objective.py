"""The per-voxel objectives of a parameter map: least squares (plain or robust) and the Rician likelihood.

Each gives, for parameters ``p (k, V)`` and signals ``y (m, V)`` (voxels last), the cost per voxel, its gradient, a
positive semi-definite curvature (Gauss-Newton for least squares, Fisher scoring for the likelihood) and the squared
length of the equivalent residual that MINPACK's gradient test divides by (``||r||^2`` for least squares).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lossfit.engine.solvers.voxelwise import cholesky_solve
from lossfit.losses import ROBUST, Rho, robust_derivatives, robust_value
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
        return 0.5 * robust_value(self.rho, r, self.f_scale).sum(0)

    def terms(self, p: torch.Tensor, y: torch.Tensor) -> Terms:
        value, j = self.model.evaluate(self.x, p)
        r = value - y
        if self.loss == "linear":
            g, h = _normal(j, r)
            r2 = (r * r).sum(0)
            return 0.5 * r2, g, h, r2
        d1, _, _ = robust_derivatives(self.rho, r, self.f_scale)
        g, h = _normal(j, r, d1)
        return 0.5 * robust_value(self.rho, r, self.f_scale).sum(0), g, h, (d1 * r * r).sum(0)


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


@dataclass(frozen=True)
class Projected:
    """Least squares with the linear parameters projected out (variable projection, Golub and Pereyra 1973): for
    the nonlinear parameters ``theta (q, V)`` the linear ones solve ``(Phi^T Phi) c = Phi^T y`` per voxel, the
    residual is ``Phi c - y`` and its Jacobian Kaufman's (1975) ``P_perp (dPhi/dtheta) c``. The minimiser over
    ``theta`` with ``c(theta)`` is the full problem's; a voxel whose ``Phi^T Phi`` is not positive definite (its
    basis functions collinear) gets an infinite cost (a step there is rejected)."""

    model: MapModel
    x: torch.Tensor

    def linear(self, theta: torch.Tensor, y: torch.Tensor) -> tuple[list[Any], list[list[Any]], torch.Tensor, Any]:
        """The basis, its derivatives, the linear coefficients ``(l, V)`` and the Gram matrix's factorisation
        status per voxel."""
        assert self.model.separable is not None
        basis, derivatives = self.model.separable.basis(self.x, theta)
        gram = torch.stack([torch.stack([_dot(a, b, y) for b in basis]) for a in basis])
        c, ok = cholesky_solve(gram, torch.stack([_dot(a, y, y) for a in basis]))
        return basis, derivatives, c, (gram, ok)

    def _residual(self, basis: list[Any], c: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``Phi c - y``: the constant terms first, then one fused multiply-add per basis function."""
        r = -y  # a new tensor: the updates below are in place
        for phi, coefficient in zip(basis, c, strict=True):
            if phi is None:
                r += coefficient
        for phi, coefficient in zip(basis, c, strict=True):
            if phi is not None:
                r.addcmul_(phi, coefficient)
        return r

    def cost(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        basis, _, c, (_, ok) = self.linear(theta, y)
        r = self._residual(basis, c, y)
        return torch.where(ok, 0.5 * (r * r).sum(0), torch.inf)

    def terms(self, theta: torch.Tensor, y: torch.Tensor) -> Terms:
        basis, derivatives, c, (gram, ok) = self.linear(theta, y)
        r = self._residual(basis, c, y)
        columns = []
        for per_basis in derivatives:
            d = None
            for dphi, coefficient in zip(per_basis, c, strict=True):
                if dphi is not None:
                    d = dphi * coefficient if d is None else d + dphi * coefficient
            assert d is not None
            w, _ = cholesky_solve(gram, torch.stack([_dot(a, d, y) for a in basis]))
            for phi, weight in zip(basis, w, strict=True):
                d = d - weight if phi is None else d.addcmul_(phi, weight, value=-1)
            columns.append(d)
        g, h = _normal(columns, r)
        r2 = (r * r).sum(0)
        cost = torch.where(ok, 0.5 * r2, torch.inf)
        return cost, g, h, r2

    def full(self, theta: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The model's whole parameter vector ``(k, V)`` at ``theta``, with its linear coefficients."""
        assert self.model.separable is not None
        spec = self.model.separable
        _, _, c, _ = self.linear(theta, y)
        k = len(spec.nonlinear) + len(spec.linear)
        rows: list[torch.Tensor] = [c[0]] * k
        for j, position in enumerate(spec.nonlinear):
            rows[position] = theta[j]
        for j, position in enumerate(spec.linear):
            rows[position] = c[j]
        return torch.stack(rows)


def _dot(a: torch.Tensor | None, b: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``sum_m a b`` per voxel (``like`` is ``(m, V)``), where None is the constant 1."""
    if a is None and b is None:
        return torch.full(like.shape[1:], float(like.shape[0]), dtype=like.dtype, device=like.device)
    if a is None:
        assert b is not None
        return b.sum(0)
    if b is None:
        return a.sum(0)
    return (a * b).sum(0)
