"""Eigen- and singular value decompositions, polar decomposition and square root, derived by optimisation.

The loss: the off-diagonal energy ``||offdiag(Q^T A Q)||^2 / ||A||^2`` over orthogonal ``Q`` (for the SVD, of
``(M V)^T (M V)`` over orthogonal ``V``), which is zero exactly when ``Q`` diagonalises ``A``. The default solver,
``"jacobi"``, minimises it by exact coordinate descent on the orthogonal group: each plane rotation zeroes one
off-diagonal pair, ``n/2`` disjoint planes at a time (a round-robin schedule, so a sweep costs ``O(n^3)``), which
converges quadratically and handles repeated eigenvalues. Any engine solver (``"lm"``, ``"lbfgs"``, ...) can
minimise the same loss instead, with ``Q`` parametrised by the Cayley transform (:class:`~lossfit.Orthogonal`).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import torch

from lossfit.engine import FitResult, least_squares
from lossfit.engine.api import finish
from lossfit.engine.loop import Stopping, run
from lossfit.engine.solvers import SOLVERS
from lossfit.engine.solvers.iteration import Carry, Jacobi, OwnIteration, take_rows
from lossfit.matrices._common import as_matrix, with_reference

JACOBI_REASON = "Jacobi: exact coordinate descent on the orthogonal group, n/2 plane rotations at a time"


@functools.cache
def _schedule(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-robin pairs for an even ``n``: ``n - 1`` rounds of ``n / 2`` disjoint index pairs, covering all pairs."""
    players = list(range(n))
    ps, qs = [], []
    for _ in range(n - 1):
        pairs = [(players[i], players[n - 1 - i]) for i in range(n // 2)]
        ps.append([min(a, b) for a, b in pairs])
        qs.append([max(a, b) for a, b in pairs])
        players = [players[0], players[-1], *players[1:-1]]
    return torch.tensor(ps), torch.tensor(qs)


def _rotation(app: torch.Tensor, aqq: torch.Tensor, apq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine and sine of the inner plane rotation that zeroes ``apq`` (Golub and Van Loan's symmetric Schur)."""
    nonzero = apq != 0
    tau = (aqq - app) / torch.where(nonzero, 2 * apq, torch.ones_like(apq))
    sign = torch.where(tau >= 0, torch.ones_like(tau), -torch.ones_like(tau))
    t = torch.where(nonzero, sign / (tau.abs() + torch.sqrt(1 + tau * tau)), torch.zeros_like(tau))
    c = 1 / torch.sqrt(1 + t * t)
    return c, t * c


def _rotate_columns(x: torch.Tensor, p: torch.Tensor, q: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> None:
    xp, xq = x[..., :, p], x[..., :, q]
    c, s = c.unsqueeze(-2), s.unsqueeze(-2)
    x[..., :, p] = c * xp - s * xq
    x[..., :, q] = s * xp + c * xq


def jacobi(work: torch.Tensor, two_sided: bool, max_sweeps: int, batch: bool) -> tuple[FitResult, torch.Tensor]:
    """Sweep plane rotations of ``work (B, r, n)`` (``n`` even) on the engine's driver until a sweep finds every pair
    diagonal: the result (its ``params`` the rotations ``V``) and the rotated ``work``.

    The loss of a sweep is the largest squared cosine it met before rotating: ``a_pq^2 / |a_pp a_qq|`` (two-sided)
    or ``(c_p . c_q)^2 / (|c_p|^2 |c_q|^2)`` between columns of ``M V`` (one-sided), each pair measured against its
    own scale, which makes small singular vectors as accurate as large ones (Demmel and Veselic's criterion). It
    converges (the driver's ``gtol``) when that falls below ``(n eps)^2``.
    """
    start = time.perf_counter()
    n = work.shape[-1]
    problem = _JacobiProblem(work, two_sided, batch)
    x0 = problem.pack(_eye_like(work, n), work)
    tol = (n * torch.finfo(work.dtype).eps) ** 2
    solver = Jacobi(options={"max_sweeps": max_sweeps})
    outcome = run(problem, solver, x0, Stopping(ftol=None, xtol=None, gtol=tol, max_steps=max_sweeps, max_time=None))
    outcome.time = time.perf_counter() - start
    return finish(problem, solver, outcome, JACOBI_REASON, x0), problem.split(outcome.x)[1]


class _JacobiProblem(OwnIteration):
    """The Jacobi iteration for a batch: the iterate is the rotations ``V (n, n)`` and the rotated matrix ``work``
    (``V^T A V`` two-sided, ``M V`` one-sided), one flat row per matrix."""

    def __init__(self, work: torch.Tensor, two_sided: bool, batch: bool) -> None:
        self.two_sided, self.batch = two_sided, batch
        self.shape = work.shape[1:]
        n = work.shape[-1]
        self.ps, self.qs = _schedule(n)
        eps = torch.finfo(work.dtype).eps
        # Two-sided: a pair coupled only at the rounding level of ||A|| is diagonal to working precision. One-sided: a
        # column pair is measured against its own norms, down to the rounding level of the largest column.
        floor = (work.norm(dim=(-2, -1)) / n) ** 2 if two_sided else (eps * (work * work).sum(-2).amax(-1)) ** 2
        self.floor = floor.clamp_min(1e-300).unsqueeze(-1)

    def pack(self, v: torch.Tensor, work: torch.Tensor) -> torch.Tensor:
        return torch.cat([v.flatten(1), work.flatten(1)], dim=1)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.shape[-1]
        return x[:, : n * n].reshape(-1, n, n).clone(), x[:, n * n :].reshape(-1, *self.shape).clone()

    def start(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, Carry]:
        worst = self.value(x, rows)
        return worst, worst, {}

    def iterate(
        self, x: torch.Tensor, carry: Carry, rows: torch.Tensor
    ) -> tuple[torch.Tensor, Carry, torch.Tensor, torch.Tensor, torch.Tensor]:
        v, work = self.split(x)
        before = v.clone()
        floor = take_rows(self.floor, rows)
        worst = torch.zeros_like(floor.squeeze(-1))
        for p, q in zip(self.ps, self.qs, strict=False):
            app, aqq, apq = self._pair_terms(work, p, q)
            cosine = apq * apq / torch.maximum((app * aqq).abs(), floor)
            worst = torch.maximum(worst, cosine.amax(-1))
            c, s = _rotation(app, aqq, apq)
            _rotate_columns(work, p, q, c, s)
            if self.two_sided:
                _rotate_columns(work.transpose(-1, -2), p, q, c, s)
            _rotate_columns(v, p, q, c, s)
        self.evals += 1
        return self.pack(v, work), {}, worst, worst, (v - before).norm(dim=(-2, -1))

    def value(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The largest squared cosine over all pairs at ``x`` (no rotation)."""
        _, work = self.split(x)
        if self.two_sided:
            gram = work
        else:
            gram = work.transpose(-1, -2) @ work
        diagonal = torch.diagonal(gram, dim1=-2, dim2=-1)
        scale = torch.maximum(
            (diagonal.unsqueeze(-1) * diagonal.unsqueeze(-2)).abs(), take_rows(self.floor, rows)[..., None]
        )
        cosine = (gram * gram / scale).triu(1)
        return cosine.amax(dim=(-2, -1))

    def answer(self, x: torch.Tensor) -> torch.Tensor:
        v = self.split(x)[0]
        return v if self.batch else v[0]

    def _pair_terms(
        self, work: torch.Tensor, p: torch.Tensor, q: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.two_sided:
            return work[..., p, p], work[..., q, q], work[..., p, q]
        cp, cq = work[..., :, p], work[..., :, q]
        return (cp * cp).sum(-2), (cq * cq).sum(-2), (cp * cq).sum(-2)


def _pad_even(a: torch.Tensor, both: bool) -> torch.Tensor:
    if a.shape[-1] % 2 == 0:
        return a.clone()
    pad = torch.zeros((*a.shape[:-1], 1), dtype=a.dtype, device=a.device)
    a = torch.cat([a, pad], dim=-1)
    if both:
        pad_row = torch.zeros((*a.shape[:-2], 1, a.shape[-1]), dtype=a.dtype, device=a.device)
        a = torch.cat([a, pad_row], dim=-2)
    return a


def _eye_like(a: torch.Tensor, n: int) -> torch.Tensor:
    return torch.eye(n, dtype=a.dtype, device=a.device).expand(*a.shape[:-2], n, n).clone()


def _engine_orthogonal(loss_matrix: Any, n: int, like: torch.Tensor, solver: str, options: dict[str, Any]) -> FitResult:
    """Minimise the off-diagonal energy of ``loss_matrix(Q)`` over orthogonal ``Q`` with an engine solver."""
    iu = torch.triu_indices(n, n, 1)

    def residual(q: torch.Tensor) -> torch.Tensor:
        g = loss_matrix(q)
        return g[iu[0], iu[1]] * (2**0.5) / g.norm().clamp_min(1e-300)

    return least_squares(residual, torch.eye(n, dtype=like.dtype), solver=solver, constraints="orthogonal", **options)


def _check_solver(solver: str) -> None:
    if solver not in ("auto", "jacobi", *SOLVERS):
        names = ", ".join(repr(s) for s in ("auto", "jacobi", *SOLVERS))
        raise ValueError(f"`solver` must be one of {names}; got {solver!r}")


def eigh(a: Any, *, solver: str = "auto", max_sweeps: int = 60, **options: Any) -> FitResult:
    """Eigenvalues (ascending) and orthonormal eigenvectors of a symmetric matrix.

    Args:
        a: a symmetric ``(n, n)`` matrix, or a batch ``(B, n, n)``; only checked to be symmetric within rounding.
        solver: ``"auto"``/``"jacobi"`` (default), or an engine solver minimising the same loss.
        max_sweeps: the most Jacobi sweeps.

    Returns:
        ``params = {"eigenvalues": (n,), "eigenvectors": (n, n)}`` with ``A = V diag(w) V^T``; ``reference`` holds
        the eigenvalue error against ``torch.linalg.eigvalsh`` and the reconstruction and orthogonality errors.

    Example:
        >>> import torch, lossfit
        >>> result = lossfit.matrices.eigh(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64))
        >>> [round(v, 12) for v in result.params["eigenvalues"].tolist()]
        [1.0, 3.0]
    """
    a = as_matrix(a, "a", square=True)
    _check_solver(solver)
    scale = a.abs().amax().clamp_min(1e-300)
    if not torch.allclose(a, a.transpose(-1, -2), rtol=0, atol=float(1e3 * torch.finfo(a.dtype).eps * scale)):
        raise ValueError("`a` must be symmetric; use lossfit.matrices.svd for a general matrix")
    sym = (a + a.transpose(-1, -2)) / 2
    n = a.shape[-1]
    if solver in ("auto", "jacobi"):
        padded = _pad_even(sym, both=True)
        result, work = jacobi(padded if a.ndim == 3 else padded.unsqueeze(0), True, max_sweeps, a.ndim == 3)
        values = torch.diagonal(work, dim1=-2, dim2=-1)[..., :n]
        vectors = result.params[..., :n, :n]
        if a.ndim == 2:
            values = values[0]
    else:
        if a.ndim == 3:
            raise ValueError("engine solvers take one matrix at a time here; use solver='jacobi' for a batch")
        result = _engine_orthogonal(lambda q: q.T @ sym @ q, n, a, solver, options)
        vectors = result.params
        values = torch.diagonal(vectors.T @ sym @ vectors)
    order = torch.argsort(values, dim=-1)
    values = torch.gather(values, -1, order)
    vectors = torch.gather(vectors, -1, order.unsqueeze(-2).expand_as(vectors))
    with torch.no_grad():
        exact = torch.linalg.eigvalsh(sym)
        reference = {
            "eigenvalue_error": float(((values - exact).abs().amax(-1) / scale).max()),
            "reconstruction_error": _rel(vectors @ torch.diag_embed(values) @ vectors.transpose(-1, -2), sym),
            "orthogonality_error": _orth(vectors),
        }
    result = dataclasses.replace(result, params={"eigenvalues": values, "eigenvectors": vectors})
    return with_reference(result, reference)


def svd(m: Any, k: int | None = None, *, solver: str = "auto", max_sweeps: int = 60, **options: Any) -> FitResult:
    """The thin singular value decomposition ``M = U diag(S) Vh``, or its top ``k`` triplets.

    One-sided Jacobi: rotations of ``V`` make the columns of ``M V`` orthogonal (the loss is the off-diagonal
    energy of ``(M V)^T (M V)``); ``S`` are their norms and ``U`` the normalised columns. Repeated and zero singular
    values are fine: the columns of ``U`` for zero singular values are completed to an orthonormal set.

    Returns:
        ``params = {"U": (m, r), "S": (r,), "Vh": (r, n)}`` with ``r = k or min(m, n)``, ``S`` descending; the
        ``reference`` holds the singular-value error against ``torch.linalg.svdvals`` and the reconstruction error.
    """
    m = as_matrix(m, "m")
    _check_solver(solver)
    rows, cols = m.shape[-2:]
    full = min(rows, cols)
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= full):
        raise ValueError(f"`k` must be an integer from 1 to {full}; got {k!r}")
    transposed = rows < cols
    work_in = m.transpose(-1, -2) if transposed else m
    n = work_in.shape[-1]
    if solver in ("auto", "jacobi"):
        padded = _pad_even(work_in, both=False)
        result, work = jacobi(padded if m.ndim == 3 else padded.unsqueeze(0), False, max_sweeps, m.ndim == 3)
        us, v = work[..., :, :n], result.params[..., :n, :n]
        if m.ndim == 2:
            us = us[0]
    else:
        if m.ndim == 3:
            raise ValueError("engine solvers take one matrix at a time here; use solver='jacobi' for a batch")
        result = _engine_orthogonal(lambda q: (work_in @ q).T @ (work_in @ q), n, m, solver, options)
        v = result.params
        us = work_in @ v
    s = us.norm(dim=-2)
    order = torch.argsort(s, dim=-1, descending=True)
    s = torch.gather(s, -1, order)
    us = torch.gather(us, -1, order.unsqueeze(-2).expand_as(us))
    v = torch.gather(v, -1, order.unsqueeze(-2).expand_as(v))
    u = _complete(us, s)
    if transposed:
        u, v = v, u
    r = k or full
    u, s, v = u[..., :, :r], s[..., :r], v[..., :, :r]
    vh = v.transpose(-1, -2)
    with torch.no_grad():
        exact = torch.linalg.svdvals(m)
        top = exact[..., :1].clamp_min(1e-300)
        best = torch.linalg.svd(m, full_matrices=False)
        best_rank_r = (best.U[..., :, :r] * best.S[..., None, :r]) @ best.Vh[..., :r, :]
        reference = {
            "singular_value_error": float(((s - exact[..., :r]).abs() / top).amax()),
            "reconstruction_error": _rel((u * s.unsqueeze(-2)) @ vh, best_rank_r),
            "orthogonality_error": max(_orth(u), _orth(v)),
        }
    result = dataclasses.replace(result, params={"U": u, "S": s, "Vh": vh})
    return with_reference(result, reference)


def _complete(us: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Normalise the columns of ``M V``; those of (numerically) zero norm are replaced to keep ``U`` orthonormal."""
    tol = s[..., :1] * max(us.shape[-2:]) * torch.finfo(us.dtype).eps
    good = s > tol
    u = us / torch.where(good, s, torch.ones_like(s)).unsqueeze(-2)
    if bool(good.all()):
        return u
    # Gram-Schmidt the coordinate vectors against the good columns to fill the rest (rare: rank-deficient input).
    u = torch.where(good.unsqueeze(-2), u, torch.zeros_like(u))
    flat = u.reshape(-1, *u.shape[-2:])
    mask = good.reshape(-1, good.shape[-1])
    for b in range(flat.shape[0]):
        basis = [flat[b, :, j] for j in range(flat.shape[-1]) if mask[b, j]]
        candidates = iter(torch.eye(flat.shape[-2], dtype=u.dtype, device=u.device))
        for j in range(flat.shape[-1]):
            if mask[b, j]:
                continue
            for e in candidates:
                w = e - sum((e @ q) * q for q in basis) if basis else e
                w = w - sum((w @ q) * q for q in basis) if basis else w
                if w.norm() > 0.5:
                    w = w / w.norm()
                    flat[b, :, j] = w
                    basis.append(w)
                    break
    return flat.reshape(u.shape)


def polar(m: Any, *, solver: str = "auto", **options: Any) -> FitResult:
    """The polar decomposition ``M = U P`` of a square matrix: ``U`` orthogonal, ``P`` symmetric positive semidefinite.

    ``U`` minimises ``||U - M||_F`` over orthogonal matrices (the orthogonal Procrustes problem); it is derived
    from the Jacobi SVD (``U = W Vh``, ``P = Vh^T S Vh``), or with an engine solver by minimising that loss directly.

    Returns:
        ``params = {"U": (n, n), "P": (n, n)}``; ``reference`` holds the reconstruction and orthogonality errors and
        the distance ``||U - M||`` against the closed form from ``torch.linalg.svd``.
    """
    m = as_matrix(m, "m", square=True)
    _check_solver(solver)
    if solver in ("auto", "jacobi"):
        decomposition = svd(m, **options)
        w, _s, vh = (decomposition.params[k] for k in ("U", "S", "Vh"))
        u = w @ vh
        result = decomposition
    else:
        if m.ndim == 3:
            raise ValueError("engine solvers take one matrix at a time here; use solver='jacobi' for a batch")
        eye = torch.eye(m.shape[-1], dtype=m.dtype)
        # Start from the right component: the Cayley parametrisation keeps the determinant's sign.
        start = eye.clone()
        if float(torch.linalg.det(m)) < 0:
            start[-1, -1] = -1
        result = least_squares(lambda q: q - m, start, solver=solver, constraints="orthogonal", **options)
        u = result.params
    p = u.transpose(-1, -2) @ m
    p = (p + p.transpose(-1, -2)) / 2
    with torch.no_grad():
        w_ex, _, vh_ex = torch.linalg.svd(m)
        u_ex = w_ex @ vh_ex
        reference = {
            "reconstruction_error": _rel(u @ p, m),
            "orthogonality_error": _orth(u),
            "error_vs_torch": _rel(u, u_ex),
        }
    result = dataclasses.replace(result, params={"U": u, "P": p})
    return with_reference(result, reference)


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((x - ref).norm(dim=(-2, -1)) / ref.norm(dim=(-2, -1)).clamp_min(1e-300)).max())


def _orth(q: torch.Tensor) -> float:
    eye = torch.eye(q.shape[-1], dtype=q.dtype, device=q.device)
    return float((q.transpose(-1, -2) @ q - eye).norm(dim=(-2, -1)).max())
