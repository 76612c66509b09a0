"""What the matrix functions share: input checks, starts, the call into the engine and the reference record."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from lossfit._validation import as_real_tensor
from lossfit.engine import FitResult, Status, least_squares, minimize
from lossfit.engine.result import overall
from lossfit.engine.solvers import DENSE_LIMIT, SOLVERS

KRYLOV_LINEAR = {"damping": 0.0, "cg_rtol": 1e-15}
"""Matrix-free default for linear least squares in X: undamped Gauss-Newton, CG run to rounding."""


def as_matrix(value: Any, argument: str, *, square: bool = False, min_ndim: int = 2) -> torch.Tensor:
    """Check and convert a matrix argument: a tensor, array or nested list of real numbers, 2-D (or batched 3-D).

    Integer input becomes float64; float input keeps its dtype. Raises ``TypeError`` for a non-numeric value and
    ``ValueError`` for a wrong shape, an empty matrix or NaN/infinity, naming ``argument``.
    """
    t = as_real_tensor(value, argument)
    if t.ndim not in (1, 2, 3) or t.ndim < min_ndim:
        raise ValueError(f"`{argument}` must be a 2-D matrix (or a 3-D batch of them); got shape {tuple(t.shape)}")
    if square and t.shape[-1] != t.shape[-2]:
        raise ValueError(f"`{argument}` must be square; got shape {tuple(t.shape)}")
    return t


def start(shape: tuple[int, ...], like: torch.Tensor, init: Any, seed: int) -> torch.Tensor:
    """The start: ``"zeros"`` (gives the minimum-norm answer), ``"random"`` (uniform [0, 1), seeded) or a tensor."""
    if isinstance(init, str):
        if init == "zeros":
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        if init == "random":
            generator = torch.Generator(device="cpu").manual_seed(seed)
            return torch.rand(shape, generator=generator, dtype=like.dtype).to(like.device)
        raise ValueError(f"`init` must be 'zeros', 'random' or a tensor; got {init!r}")
    t = torch.as_tensor(init, dtype=like.dtype, device=like.device)
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"`init` must have shape {tuple(shape)}; got {tuple(t.shape)}")
    return t.clone()


def solve_least_squares(
    residual: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    args: tuple,
    batch: bool,
    solver: str,
    options: dict[str, Any],
    min_norm: bool = False,
) -> FitResult:
    """Minimise ``mean(residual**2)`` over X.

    ``auto`` takes one Gauss-Newton step, exact because the loss is quadratic in X: with a dense Jacobian up to
    ``DENSE_LIMIT`` unknowns per problem, and matrix-free (CG run to rounding) above.
    """
    if solver == "auto":
        per_problem = x0[0].numel() if batch else x0.numel()
        if per_problem <= DENSE_LIMIT:
            solver = "gauss-newton"
        else:
            solver, options = "krylov", {**KRYLOV_LINEAR, **options}
    if solver not in SOLVERS:
        names = ", ".join(repr(n) for n in ["auto", *SOLVERS])
        raise ValueError(f"`solver` must be one of {names}; got {solver!r}")
    return least_squares(residual, x0, args=args, batch=batch, solver=solver, rank_check=not min_norm, **options)


def scaled(r: torch.Tensor) -> torch.Tensor:
    """Scale residuals so that the engine's ``0.5 * sum(r**2)`` equals ``mean(r**2)``, the seeds' MSE."""
    return r * math.sqrt(2.0 / r.numel())


def with_reference(
    result: FitResult, reference: dict[str, float], status: Status | None = None, which: Any = None, **extras: Any
) -> FitResult:
    """A copy of ``result`` with its reference comparison, and ``status`` for the problems ``which`` selects (a bool
    per problem; all when None), overriding successes only (never a failure)."""
    changes: dict[str, Any] = {"reference": reference, "extras": {**result.extras, **extras}}
    if status is not None:
        n = len(result.statuses)
        flags = [True] * n if which is None else [bool(v) for v in torch.as_tensor(which).reshape(-1)]
        statuses = tuple(
            status if flag and old.success else old for old, flag in zip(result.statuses, flags, strict=True)
        )
        success, summary = overall(statuses)
        changes.update(statuses=statuses, success=success, status=summary)
    return dataclasses.replace(result, **changes)


def minimize_scalar(loss: Callable[..., torch.Tensor], x0: Any, args: tuple, solver: str, **options: Any) -> FitResult:
    """Minimise a scalar loss for the families whose loss is not a sum of squares."""
    return minimize(loss, x0, args=args, solver="lbfgs" if solver == "auto" else solver, **options)
