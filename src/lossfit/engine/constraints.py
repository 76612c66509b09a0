"""Constraints by re-parametrisation.

A constraint maps an unconstrained tensor ``u`` to a feasible parameter ``p = forward(u)``; solvers work on ``u``
and every value they try is feasible. ``inverse(p)`` gives the ``u`` a starting value corresponds to.

Constraints hold no state: what a transform needs beyond ``u`` (the base of an orthogonal parametrisation) comes
back from ``inverse`` and is passed to ``forward``. Each transform is written for one problem (no batch dimension);
the engine maps it over a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class Constraint:
    """Base class: a smooth map from unconstrained values to feasible ones."""

    name = "none"

    def forward(self, u: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        """Map unconstrained values to feasible parameters; ``aux`` is what :meth:`inverse` returned beside ``u``."""
        return u

    def inverse(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map a feasible starting value to unconstrained values, and any fixed data ``forward`` needs."""
        return p, p.new_zeros(0)

    def check(self, p: torch.Tensor, argument: str) -> None:
        """Raise ``ValueError`` naming ``argument`` when ``p`` is not feasible."""


@dataclass(frozen=True)
class Bounds(Constraint):
    """``lower <= p <= upper`` elementwise; either side may be None (or infinite).

    Convention: two-sided bounds use ``p = lower + (upper - lower) * (sin(u) + 1) / 2`` and one-sided bounds
    ``p = lower - 1 + sqrt(u**2 + 1)`` (or its mirror), the transforms MINUIT made standard, so a solver may walk
    onto a bound without overflow.
    """

    lower: float | torch.Tensor | None = None
    upper: float | torch.Tensor | None = None
    name = "bounds"

    def _sides(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.as_tensor(-math.inf if self.lower is None else self.lower, dtype=like.dtype, device=like.device)
        hi = torch.as_tensor(math.inf if self.upper is None else self.upper, dtype=like.dtype, device=like.device)
        return torch.broadcast_to(lo, like.shape), torch.broadcast_to(hi, like.shape)

    def forward(self, u: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        lo, hi = self._sides(u)
        lo_f, hi_f = torch.isfinite(lo), torch.isfinite(hi)
        zero = torch.zeros_like(u)
        lo0, hi0 = torch.where(lo_f, lo, zero), torch.where(hi_f, hi, zero)
        root = torch.sqrt(u * u + 1)
        both = lo0 + (hi0 - lo0) * (torch.sin(u) + 1) / 2
        lower_only = lo0 - 1 + root
        upper_only = hi0 + 1 - root
        return torch.where(lo_f & hi_f, both, torch.where(lo_f, lower_only, torch.where(hi_f, upper_only, u)))

    def inverse(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self._sides(p)
        lo_f, hi_f = torch.isfinite(lo), torch.isfinite(hi)
        zero = torch.zeros_like(p)
        lo0, hi0 = torch.where(lo_f, lo, zero), torch.where(hi_f, hi, zero)
        width = torch.where(lo_f & hi_f, hi0 - lo0, torch.ones_like(p))
        both = torch.asin((2 * (p - lo0) / width - 1).clamp(-1, 1))
        lower_only = torch.sqrt(((p - lo0 + 1) ** 2 - 1).clamp_min(0))
        upper_only = torch.sqrt(((hi0 - p + 1) ** 2 - 1).clamp_min(0))
        u = torch.where(lo_f & hi_f, both, torch.where(lo_f, lower_only, torch.where(hi_f, upper_only, p)))
        return u, p.new_zeros(0)

    def check(self, p: torch.Tensor, argument: str) -> None:
        lo, hi = self._sides(p)
        if bool((lo > hi).any()):
            raise ValueError(f"bounds for `{argument}`: every lower bound must be <= its upper bound")
        if bool(((p < lo) | (p > hi)).any()):
            raise ValueError(f"`{argument}` must start inside its bounds [{self.lower}, {self.upper}]")


class Positive(Constraint):
    """``p > 0`` elementwise, by ``p = exp(u)`` (a scale-free parametrisation, natural for rates and widths)."""

    name = "positive"

    def forward(self, u: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        return torch.exp(u)

    def inverse(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.log(p), p.new_zeros(0)

    def check(self, p: torch.Tensor, argument: str) -> None:
        if bool((p <= 0).any()):
            raise ValueError(f"`{argument}` is constrained positive, so its start must be > 0; got {p.min().item():g}")


class Symmetric(Constraint):
    """A symmetric ``(n, n)`` matrix; ``u`` holds its upper triangle, diagonal included (``n (n + 1) / 2`` values)."""

    name = "symmetric"

    def forward(self, u: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        n = aux.shape[-1]
        rows, cols = torch.triu_indices(n, n, device=u.device)
        upper = torch.zeros(n, n, dtype=u.dtype, device=u.device).index_put((rows, cols), u)
        return upper + upper.transpose(-1, -2) - torch.diag_embed(torch.diagonal(upper))

    def inverse(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = p.shape[-1]
        rows, cols = torch.triu_indices(n, n, device=p.device)
        sym = (p + p.transpose(-1, -2)) / 2
        return sym[rows, cols], p.new_zeros(n)

    def check(self, p: torch.Tensor, argument: str) -> None:
        _check_square(p, argument)


class SPD(Constraint):
    """A symmetric positive definite matrix, ``p = L L^T`` with ``L`` lower triangular with a positive diagonal.

    Convention: ``u`` holds ``L``'s lower triangle row by row (``n (n + 1) / 2`` values), its diagonal entries as
    ``log(diag(L))``.
    """

    name = "spd"

    def forward(self, u: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        n = aux.shape[-1]
        rows, cols = torch.tril_indices(n, n, device=u.device)
        values = torch.where(rows == cols, torch.exp(u), u)
        lower = torch.zeros(n, n, dtype=u.dtype, device=u.device).index_put((rows, cols), values)
        return lower @ lower.transpose(-1, -2)

    def inverse(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = p.shape[-1]
        lower = torch.linalg.cholesky(p)
        rows, cols = torch.tril_indices(n, n, device=p.device)
        values = lower[rows, cols]
        return torch.where(rows == cols, torch.log(values), values), p.new_zeros(n)

    def check(self, p: torch.Tensor, argument: str) -> None:
        _check_square(p, argument)
        if not torch.allclose(p, p.transpose(-1, -2)):
            raise ValueError(f"`{argument}` is constrained SPD, so its start must be symmetric")
        if bool((torch.linalg.cholesky_ex(p).info != 0).any()):
            raise ValueError(f"`{argument}` is constrained SPD, so its start must be positive definite")


class Orthogonal(Constraint):
    """An orthogonal ``(n, n)`` matrix, ``p = Q0 @ cayley(S)`` with ``S`` skew-symmetric.

    Convention: ``u`` holds ``S``'s strict upper triangle (``n (n - 1) / 2`` values, one per plane of rotation);
    ``cayley(S) = (I - S)^{-1} (I + S)``, the identity at ``S = 0``; ``Q0`` is the start's nearest orthogonal matrix,
    so ``inverse`` gives ``u = 0`` and every value the solver tries is exactly orthogonal. The Cayley transform keeps
    the determinant of ``Q0``.
    """

    name = "orthogonal"

    def forward(self, u: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        n = aux.shape[-1]
        rows, cols = torch.triu_indices(n, n, 1, device=u.device)
        upper = torch.zeros(n, n, dtype=u.dtype, device=u.device).index_put((rows, cols), u)
        skew = upper - upper.transpose(-1, -2)
        eye = torch.eye(n, dtype=u.dtype, device=u.device)
        return aux @ torch.linalg.solve(eye - skew, eye + skew)

    def inverse(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = p.shape[-1]
        left, _, right = torch.linalg.svd(p)
        return p.new_zeros(n * (n - 1) // 2), left @ right

    def check(self, p: torch.Tensor, argument: str) -> None:
        _check_square(p, argument)


def _check_square(p: torch.Tensor, argument: str) -> None:
    if p.ndim < 2 or p.shape[-1] != p.shape[-2]:
        raise ValueError(f"`{argument}` must be a square matrix for this constraint; got shape {tuple(p.shape)}")


_NAMED: dict[str, type[Constraint]] = {
    "positive": Positive,
    "symmetric": Symmetric,
    "spd": SPD,
    "orthogonal": Orthogonal,
}


def as_constraint(value: Constraint | str | tuple | None, argument: str) -> Constraint | None:
    """Resolve a constraint given by name, as a ``(lower, upper)`` pair, or as an object."""
    if value is None or isinstance(value, Constraint):
        return value
    if isinstance(value, str):
        if value not in _NAMED:
            names = ", ".join(repr(n) for n in _NAMED)
            raise ValueError(
                f"`{argument}` must be one of {names}, a (lower, upper) pair or a Constraint; got {value!r}"
            )
        return _NAMED[value]()
    if isinstance(value, tuple) and len(value) == 2:
        return Bounds(*value)
    raise TypeError(f"`{argument}` must be a constraint name, a (lower, upper) pair or a Constraint; got {value!r}")
