"""The symmetric square root and the best low-rank approximation, as nonlinear least squares."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from lossfit.engine import FitResult, Status, least_squares
from lossfit.matrices._common import as_matrix, scaled, start, with_reference


def _sqrt_residual(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return scaled(x @ x - a)


def sqrtm(a: Any, *, solver: str = "auto", **options: Any) -> FitResult:
    """The symmetric positive definite square root ``X`` of an SPD matrix, minimising ``mean((X X - A)**2)``.

    ``X`` is parametrised symmetric and started at ``sqrt(trace(A) / n) * I``, from where Gauss-Newton is Newton's
    method for ``X^2 = A`` (each step solves a Sylvester equation) and converges to the SPD root. ``auto`` uses
    Levenberg-Marquardt with a dense Jacobian up to 20 x 20 and matrix-free Gauss-Newton above.

    Returns:
        ``params`` is X; ``reference`` compares it with the root from ``torch.linalg.eigh``.

    Example:
        >>> import torch, lossfit
        >>> root = lossfit.matrices.sqrtm(torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64))).params
        >>> [round(v, 10) for v in torch.diagonal(root).tolist()]
        [2.0, 3.0]
    """
    a = as_matrix(a, "a", square=True)
    scale = a.abs().amax().clamp_min(1e-300)
    if not torch.allclose(a, a.transpose(-1, -2), rtol=0, atol=float(1e3 * torch.finfo(a.dtype).eps * scale)):
        raise ValueError("`a` must be symmetric positive definite; it is not symmetric")
    sym = (a + a.transpose(-1, -2)) / 2
    w, v = torch.linalg.eigh(sym)
    if bool((w[..., 0] <= 0).any()):
        raise ValueError(f"`a` must be positive definite; its smallest eigenvalue is {float(w[..., 0].min()):.3g}")
    n = a.shape[-1]
    level = torch.sqrt(torch.diagonal(sym, dim1=-2, dim2=-1).sum(-1) / n)
    x0 = level[..., None, None] * torch.eye(n, dtype=a.dtype)
    result = least_squares(
        _sqrt_residual, x0, args=(sym,), batch=a.ndim == 3, solver=solver, constraints="symmetric", **options
    )
    x = result.params
    with torch.no_grad():
        exact = (v * w.sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)
        reference = {
            "relative_residual": _rel(x @ x, sym),
            "error_vs_torch": _rel(x, exact),
            "smallest_eigenvalue": float(torch.linalg.eigvalsh(x).min()),
        }
    return with_reference(result, reference)


def _factor_residual(p: dict[str, torch.Tensor], m: torch.Tensor) -> torch.Tensor:
    return scaled(p["A"] @ p["B"].transpose(-1, -2) - m)


def low_rank(m: Any, k: int, *, solver: str = "auto", seed: int = 0, **options: Any) -> FitResult:
    """The best rank-``k`` approximation ``A B^T`` of a matrix, minimising ``mean((A B^T - M)**2)``.

    By Eckart and Young the minimum is the truncated SVD, and this loss has no spurious local minima; the factors
    are started small and random (seeded). The factors themselves are not unique (``A R``, ``B R^-T`` fit as well),
    so the Jacobian is singular by construction and that status is not a failure here.

    Returns:
        ``params = {"A": (m, k), "B": (n, k)}``, with ``result.extras["approximation"]`` the product; ``reference``
        holds the relative error and the optimum's (from ``torch.linalg.svdvals``), and their gap.
    """
    m = as_matrix(m, "m")
    rows, cols = m.shape[-2:]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= min(rows, cols):
        raise ValueError(f"`k` must be an integer from 1 to {min(rows, cols)}; got {k!r}")
    batch_shape = m.shape[:-2]
    norm = m.norm(dim=(-2, -1), keepdim=True).clamp_min(1e-300)
    level = (norm / (rows * cols) ** 0.5).sqrt()
    params = {
        "A": start((*batch_shape, rows, k), m, "random", seed) * level,
        "B": start((*batch_shape, cols, k), m, "random", seed + 1) * level,
    }
    result = least_squares(_factor_residual, params, args=(m,), batch=m.ndim == 3, solver=solver, **options)
    approx = result.params["A"] @ result.params["B"].transpose(-1, -2)
    with torch.no_grad():
        sv = torch.linalg.svdvals(m)
        best = (sv[..., k:] ** 2).sum(-1).sqrt() / norm.squeeze(-1).squeeze(-1)
        got = (approx - m).norm(dim=(-2, -1)) / norm.squeeze(-1).squeeze(-1)
        reference = {
            "relative_error": float(got.max()),
            "optimal_relative_error": float(best.max()),
            "excess": float((got - best).max()),
        }
    status = result.statuses[0] if result.status is not Status.SINGULAR else Status.CONVERGED_FTOL
    result = dataclasses.replace(
        result, success=status.success, status=status, statuses=tuple(status for _ in result.statuses)
    )
    return with_reference(result, reference, approximation=approx)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref).norm(dim=(-2, -1)) / ref.norm(dim=(-2, -1)).clamp_min(1e-300)).max())
