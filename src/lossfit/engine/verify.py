"""The check of a dense least-squares answer: first-order optimality, numerical rank and covariance.

It runs part by part over a batch (see :meth:`Objective.parts`), so the whole batch's Jacobian is the only large
array it makes, and only where the result must return it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import jvp

from lossfit.engine.loop import Final
from lossfit.engine.problem import Objective, load_forward_ad


@dataclass
class Check:
    """Per problem: residuals ``(B, m)``, Jacobian ``(B, m, n)``, covariance ``(B, n, n)`` (NaN where singular),
    whether the answer is suspect (not first-order optimal) or singular, and whether a Jacobian the caller gave
    disagrees with the residuals' derivative."""

    residuals: torch.Tensor
    jacobian: torch.Tensor
    covariance: torch.Tensor
    suspect: torch.Tensor
    singular: torch.Tensor
    jacobian_mismatch: torch.Tensor


def check_least_squares(
    obj: Objective, x: torch.Tensor, rows: torch.Tensor, g0: torch.Tensor, final: Final | None = None
) -> Check:
    """Check the answers ``x`` (see :func:`_check`) with their residuals and Jacobians: those the solver left in
    ``final`` (evaluated at the same points), the others evaluated here."""
    m = obj.num_residuals or 1
    given = obj.jac is not None and not callable(obj.jac)
    kept: tuple[torch.Tensor, torch.Tensor] | None = None
    if final is not None and final.have is not None and not given:
        assert final.residuals is not None and final.jacobians is not None
        missing = (~final.have).nonzero().squeeze(1)
        if missing.numel():
            r_missing, jac_missing = obj.residual_and_jacobian(x[missing], rows[missing])
            final.residuals[missing], final.jacobians[missing] = r_missing, jac_missing
        kept = (final.residuals, final.jacobians)
    pieces = []
    for part in obj.parts(x.shape[0], m * (x.shape[1] + 1)):
        r, jac = (kept[0][part], kept[1][part]) if kept is not None else obj.residual_and_jacobian(x[part], rows, part)
        counts = None if obj.counts is None else obj.counts[rows[part]]
        suspect, singular, cov = _check(obj, r, jac, g0[part], x[part], counts)
        if obj.jac is not None:
            mismatch = jacobian_mismatch(obj, x[part], rows, jac, r, part)
        else:
            mismatch = torch.zeros_like(suspect)
        pieces.append((r, jac, cov, suspect, singular, mismatch))
    if len(pieces) == 1:
        return Check(*pieces[0])
    r, cov, suspect, singular, mismatch = (torch.cat([p[i] for p in pieces]) for i in (0, 2, 3, 4, 5))
    if kept is not None:
        r, jac = kept
    elif given:
        jac = obj.given_jacobian(x, rows, m)  # the constant itself, not a copy
    else:
        jac = torch.cat([p[1] for p in pieces])
    return Check(r, jac, cov, suspect, singular, mismatch)


def jacobian_mismatch(
    obj: Objective,
    x: torch.Tensor,
    rows: torch.Tensor,
    jac: torch.Tensor,
    r: torch.Tensor | None = None,
    part: slice | None = None,
) -> torch.Tensor:
    """Which rows' given Jacobian is not the residuals' derivative, shape ``(B,)``, checked along one seeded
    random direction ``v`` (relative 1e-6).

    A function's Jacobian is compared with a forward-mode derivative; a constant one, whose claim is that the
    residuals are linear, with the change of the residuals themselves, ``r(x + v) - r(x) = J v`` (one residual
    evaluation, and exact up to rounding for linear residuals). ``r`` are the residuals at ``x`` where known;
    ``x`` holds the rows ``rows[part]``.
    """
    g = torch.Generator().manual_seed(0)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype).to(x.device)
    with torch.no_grad():
        given = torch.einsum("bmn,bn->bm", jac, v)
        if callable(obj.jac):
            load_forward_ad()
            exact = jvp(lambda u: obj.residual(u, rows, part), (x,), (v,))[1]
            noise = jac.flatten(1).norm(dim=1) * v.norm(dim=1)
        else:
            before = obj.residual(x, rows, part) if r is None else r
            after = obj.residual(x + v, rows, part)
            exact = after - before
            # Rounding of the residuals themselves: about eps times their terms, |r| and |J| |x|.
            size = before.norm(dim=1) + after.norm(dim=1) + jac.flatten(1).norm(dim=1) * (x + v).norm(dim=1)
            noise = 100 * size
        scale = torch.maximum(exact.norm(dim=1), given.norm(dim=1))
        return ~((exact - given).norm(dim=1) <= 1e-6 * scale + torch.finfo(x.dtype).eps * noise)


def _check(
    obj: Objective,
    r: torch.Tensor,
    jac: torch.Tensor,
    g0: torch.Tensor,
    x: torch.Tensor,
    counts: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-order optimality, numerical rank and covariance from the Jacobian at the answer.

    An answer is suspect when the residuals still have a sizeable component along some column of the Jacobian
    (MINPACK's cosine above 1e-4) and the gradient has not shrunk by 1e8 from the start's ``g0``, unless the
    residuals are at the rounding level of the model (``|r| <= 10 eps |J| |x|``: the cosine is rounding noise then).
    ``counts`` are the residuals each problem counts where a mask leaves some out (for the degrees of freedom).
    """
    w = obj.weights(r)
    jw, rw = (jac, r) if w is None else (jac * w.sqrt().unsqueeze(-1), r * w.sqrt())
    m, n = jw.shape[1], jw.shape[2]
    col = jw.norm(dim=1)
    g = torch.einsum("bmn,bm->bn", jw, rw)
    rnorm = rw.norm(dim=1, keepdim=True)
    cosine = torch.where(col > 0, g.abs() / (col * rnorm).clamp_min(1e-300), torch.zeros_like(g)).amax(dim=1)
    suspect = (cosine > 1e-4) & (g.abs().amax(dim=1) > 1e-8 * g0)
    eps = torch.finfo(jw.dtype).eps
    model_scale = jac.flatten(1).norm(dim=1) * x.norm(dim=1).clamp_min(1.0)
    suspect = suspect & ~(r.norm(dim=1) <= 10 * eps * model_scale)
    safe_col = torch.where(col > 0, col, torch.ones_like(col))
    # A parameter whose full-scale change (|x| or 1) moves the residuals by less than rounding, against the most
    # influential parameter, is not determined by the data (a rate run off to a plateau, say): normalising the
    # columns would hide that, so it is tested on the scaled column norms.
    influence = col * x.abs().clamp_min(1.0)
    vanishing = (influence <= eps * influence.amax(dim=1, keepdim=True)).any(dim=1)
    small, cov_scaled = _normalised_inverse(jw, safe_col)
    kept = torch.full_like(r[:, 0], m) if counts is None else counts.to(r.dtype)
    singular = small | (col == 0).any(dim=1) | (kept < n) | vanishing
    dof = kept - n
    s2 = torch.where(dof > 0, 2 * obj.cost(r) / dof.clamp_min(1), torch.full_like(dof, float("nan")))
    cov = cov_scaled / (safe_col.unsqueeze(2) * safe_col.unsqueeze(1)) * s2[:, None, None]
    cov = torch.where(singular[:, None, None], torch.full_like(cov, float("nan")), cov)
    return suspect, singular, cov


def _normalised_inverse(jw: torch.Tensor, col: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``J = jw / col`` (columns scaled to unit norm): whether its smallest singular value is at most
    ``eps**0.6`` times its largest (numerically singular), and ``(J^T J)^-1`` ``(B, n, n)`` (meaningless where so).

    Well-conditioned matrices with more than two columns take the Cholesky factor of the ``n x n`` Gram matrix: its
    eigenvalues are at most its trace, ``n``, and at least ``1 / |(J^T J)^-1|_F``, so ``n |(J^T J)^-1|_F <= 1e4``
    proves the singular values within a factor 100 of each other (the singular test cannot hold) and makes the
    inverse accurate to about ``1e4 eps``. The others go through the SVD of ``J`` (closed form for one or two
    columns).
    """
    n = jw.shape[-1]
    rtol = torch.finfo(jw.dtype).eps ** 0.6
    if n > 2 and jw.shape[1] >= n:
        gram = torch.bmm(jw.transpose(1, 2), jw) / (col.unsqueeze(2) * col.unsqueeze(1))
        factor, info = torch.linalg.cholesky_ex(gram)
        factored = info == 0
        eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
        inverse = torch.cholesky_inverse(torch.where(factored[:, None, None], factor, eye))
        good = factored & (n * inverse.flatten(1).norm(dim=1) <= 1e4)
        small = torch.zeros_like(good)
        if not bool(good.all()):
            idx = (~good).nonzero().squeeze(1)
            small[idx], inverse[idx] = _svd_inverse(jw[idx] / col[idx].unsqueeze(1), rtol)
        return small, inverse
    return _svd_inverse(jw / col.unsqueeze(1), rtol)


def _svd_inverse(j: torch.Tensor, rtol: float) -> tuple[torch.Tensor, torch.Tensor]:
    sv, vh = _singular(j)
    small = sv[:, -1] <= rtol * sv[:, 0]
    v = vh.transpose(-1, -2)
    inverse = torch.einsum("bik,bk,bjk->bij", v, 1 / sv.clamp_min(1e-300) ** 2, v)
    return small, inverse


def _singular(j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (descending) and right singular vectors of a batch of ``(m, n)`` matrices.

    One and two columns (most curve fits) are done in closed form from a Gram-Schmidt QR, far faster than a
    batched LAPACK call for many tiny matrices; more columns use ``torch.linalg.svd``.
    """
    n = j.shape[-1]
    if n == 1:
        return j.norm(dim=1), torch.ones(j.shape[0], 1, 1, dtype=j.dtype, device=j.device)
    if n != 2:
        _, sv, vh = torch.linalg.svd(j, full_matrices=False)
        return sv, vh
    c1, c2 = j[:, :, 0], j[:, :, 1]
    r11 = c1.norm(dim=1)
    q1 = c1 / r11.clamp_min(1e-300).unsqueeze(1)
    r12 = (q1 * c2).sum(dim=1)
    r22 = (c2 - r12.unsqueeze(1) * q1).norm(dim=1)
    # Singular values of R = [[r11, r12], [0, r22]]: from its Frobenius norm and |det| (no cancellation).
    fro2 = r11 * r11 + r12 * r12 + r22 * r22
    det = (r11 * r22).abs()
    big = torch.sqrt((fro2 + torch.sqrt((fro2 * fro2 - 4 * det * det).clamp_min(0))) / 2)
    small = det / big.clamp_min(1e-300)
    # Right singular vectors: eigenvectors of R^T R = [[a, b], [b, c]].
    a, b, c = r11 * r11, r11 * r12, r12 * r12 + r22 * r22
    theta = 0.5 * torch.atan2(2 * b, a - c)
    v1 = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    v2 = torch.stack([-torch.sin(theta), torch.cos(theta)], dim=1)
    return torch.stack([big, small], dim=1), torch.stack([v1, v2], dim=1)
