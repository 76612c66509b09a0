"""Point alignment: the transform that maps source points onto destination points.

``align(src, dst, model, loss)`` starts from the closed form where one exists (least squares for translation, linear
and affine maps; Umeyama's SVD solution for rigid and similarity maps; the normalised direct linear transform for
projective maps), takes a robust start by least median of squares when the loss is robust (it survives up to half
the points being outliers), and refines on the chosen loss with the engine.

Convention: points are rows, ``(N, d)`` (or ``(B, N, d)`` for a batch of point sets); the result's ``matrix`` is the
``(d + 1, d + 1)`` homogeneous matrix mapping ``src`` to ``dst`` (see :mod:`lossfit.transforms`). Robust losses act
on each point's Euclidean distance, so the fit does not depend on the axes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lossfit import transforms as T
from lossfit._validation import as_real_tensor
from lossfit.engine import FitResult, least_squares
from lossfit.losses import MAD_TO_SIGMA, TUNING, robust_for
from lossfit.transforms.homogeneous import check_model

LOSSES = ("mse", "mae", "huber", "cauchy", "soft_l1")
LINEAR_MODELS = ("translation", "linear", "affine")  # residuals linear in the parameters
# Tuning constants (in units of the robust noise scale): 95% efficiency at Gaussian noise for Huber and Cauchy.
_SCALE = {**TUNING, "mae": 1e-3}


@dataclass(frozen=True)
class Alignment(FitResult):
    """A :class:`~lossfit.FitResult` with the fitted transform.

    Attributes:
        matrix: the ``(d + 1, d + 1)`` homogeneous matrix mapping ``src`` onto ``dst`` (``(B, d + 1, d + 1)``).
        closed_form: the closed-form (or robust-start) matrix the refinement began from.
        distances: each point's distance ``|T(src) - dst|`` after the fit, ``(N,)`` or ``(B, N)``.
        inliers: the points within 2.5 robust standard deviations (all True for ``mse``).
        scale: the robust noise scale (1.4826 times the median distance, corrected for small samples).
        model: the transform model.
    """

    matrix: torch.Tensor | None = None
    closed_form: torch.Tensor | None = None
    distances: torch.Tensor | None = None
    inliers: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    model: str = ""


def closed_form(model: str, src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """The least-squares transform in closed form, batched: ``(..., N, d)`` points give ``(..., d + 1, d + 1)``.

    Translation, linear and affine maps solve the (weighted) normal equations; rigid and similarity maps use
    Umeyama's SVD solution (proper rotations only); projective maps use the direct linear transform on
    Hartley-normalised points (the algebraic, not the geometric, least squares: the refinement finishes it).
    """
    check_model(model)
    d = src.shape[-1]
    w = torch.ones(src.shape[:-1], dtype=src.dtype, device=src.device) if weights is None else weights
    w = w / w.sum(-1, keepdim=True)
    eye = torch.eye(d + 1, dtype=src.dtype, device=src.device).expand(*src.shape[:-2], d + 1, d + 1).clone()
    if model == "projective":
        return _dlt(src, dst, w)
    mu_s = (w.unsqueeze(-1) * src).sum(-2)
    mu_d = (w.unsqueeze(-1) * dst).sum(-2)
    if model == "translation":
        eye[..., :d, d] = mu_d - mu_s
        return eye
    if model in ("linear", "affine"):
        s = src if model == "linear" else src - mu_s.unsqueeze(-2)
        t = dst if model == "linear" else dst - mu_d.unsqueeze(-2)
        sw = s * w.unsqueeze(-1)
        a = torch.linalg.solve((sw.transpose(-1, -2) @ s), sw.transpose(-1, -2) @ t).transpose(-1, -2)
        eye[..., :d, :d] = a
        if model == "affine":
            eye[..., :d, d] = mu_d - (a @ mu_s.unsqueeze(-1)).squeeze(-1)
        return eye
    sc, dc = src - mu_s.unsqueeze(-2), dst - mu_d.unsqueeze(-2)
    cov = (dc * w.unsqueeze(-1)).transpose(-1, -2) @ sc
    u, sv, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    flip = torch.ones_like(sv)
    flip[..., -1] = torch.where(sign == 0, torch.ones_like(sign), sign)
    rot = (u * flip.unsqueeze(-2)) @ vh
    scale = torch.ones_like(sign)
    if model == "similarity":
        var = (w * (sc * sc).sum(-1)).sum(-1)
        scale = (sv * flip).sum(-1) / var.clamp_min(1e-300)
    eye[..., :d, :d] = scale[..., None, None] * rot
    eye[..., :d, d] = mu_d - (eye[..., :d, :d] @ mu_s.unsqueeze(-1)).squeeze(-1)
    return eye


def _normaliser(p: torch.Tensor) -> torch.Tensor:
    """Hartley's normalisation: centre the points and scale their mean distance to sqrt(d)."""
    d = p.shape[-1]
    mu = p.mean(-2)
    dist = (p - mu.unsqueeze(-2)).norm(dim=-1).mean(-1).clamp_min(1e-300)
    s = math.sqrt(d) / dist
    n = torch.eye(d + 1, dtype=p.dtype, device=p.device).expand(*p.shape[:-2], d + 1, d + 1).clone()
    n[..., :d, :d] *= s[..., None, None]
    n[..., :d, d] = -s.unsqueeze(-1) * mu
    return n


def _dlt(src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    d = src.shape[-1]
    ns, nd = _normaliser(src), _normaliser(dst)
    s = T.apply(ns, src)
    t = T.apply(nd, dst)
    ones = torch.ones_like(s[..., :1])
    sh = torch.cat([s, ones], -1)  # (..., N, d + 1)
    rows = []
    for i in range(d):
        # h_i . s - t_i (h_d . s) = 0 for each point; unknowns are H's rows, flattened.
        blocks = [torch.zeros_like(sh) for _ in range(d + 1)]
        blocks[i] = sh
        blocks[d] = -t[..., i : i + 1] * sh
        rows.append(torch.cat(blocks, -1))
    a = torch.cat(rows, -2) * torch.cat([w] * d, -1).sqrt().unsqueeze(-1)
    # Full matrices: with fewer equations than unknowns (a minimal sample) the null vector is the last of them.
    _, _, vh = torch.linalg.svd(a, full_matrices=True)
    h = vh[..., -1, :].reshape(*src.shape[:-2], d + 1, d + 1)
    m = torch.linalg.inv(nd) @ h @ ns
    return m / m[..., d : d + 1, d : d + 1]


def sample_count(k: int, outliers: float = 0.5, confidence: float = 0.999) -> int:
    """Random minimal samples of ``k`` points needed to draw one free of outliers with the given confidence."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - (1 - outliers) ** k))


def _samples_needed(inliers: torch.Tensor, k: int, confidence: float) -> torch.Tensor:
    """:func:`sample_count` for each observed inlier fraction (a tensor): 1 at no outliers, infinite at no inliers."""
    clean = inliers.clamp(0, 1) ** k
    count = math.log(1 - confidence) / torch.log1p(-clean.clamp_max(1 - 1e-16))
    return torch.where(clean > 0, count.ceil().clamp_min(1), torch.full_like(count, float("inf")))


def robust_start(
    model: str,
    src: torch.Tensor,
    dst: torch.Tensor,
    hypotheses: int | None = None,
    seed: int = 0,
    confidence: float = 0.999,
    noise: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least median of squares over random minimal samples, batched; returns the start matrix and the noise scale.

    Each hypothesis is the closed form on a minimal sample; the one with the smallest median squared distance wins
    (Rousseeuw, 1984), and the closed form is refitted on its inliers (within 2.5 robust standard deviations).

    The number of samples: ``hypotheses`` if given; otherwise enough for one outlier-free sample with the given
    ``confidence`` when half the points are outliers, the breakdown point of the median. With a known ``noise``
    (the standard deviation of the inliers' coordinates) a set may stop sooner, by RANSAC's rule (Hartley and
    Zisserman, algorithm 4.5): samples are drawn in rounds, and a set stops once it has drawn enough for that
    confidence at the inlier fraction seen so far, the largest share of points any hypothesis brought within
    ``2.5 * noise`` (a fixed threshold: a scale estimated from a wrong hypothesis would make it look right). Work is
    done in chunks that bound the memory used.
    """
    n, d = src.shape[-2], src.shape[-1]
    k = T.min_points(model, d)
    batch_shape = src.shape[:-2]
    s_all, t_all = src.reshape(-1, n, d), dst.reshape(-1, n, d)
    s_cm, t_cm = s_all.transpose(1, 2).contiguous(), t_all.transpose(1, 2).contiguous()
    b = s_all.shape[0]
    adaptive = hypotheses is None and noise is not None
    most = hypotheses or sample_count(k, 0.5, confidence)
    size = min(most, sample_count(k, 0.2, confidence)) if adaptive else most
    g = torch.Generator().manual_seed(seed)
    # A fixed count draws the samples as this function always has (the same `seed` gives the same samples).
    fixed = None if adaptive else _fixed_samples(b, most, n, k, d, seed)
    best_med = torch.full((b,), float("inf"), dtype=src.dtype, device=src.device)
    best_d2 = torch.full((b, n), float("inf"), dtype=src.dtype, device=src.device)
    consensus = torch.zeros(b, dtype=torch.long, device=src.device)
    drawn = torch.zeros(b, dtype=torch.long, device=src.device)
    # Exact inliers have no noise: the same floor as `align` (1e-6 of each set's extent) keeps them inliers.
    floor = 1e-6 * (t_all - t_all.mean(-2, keepdim=True)).abs().amax(dim=(-2, -1))
    limit = torch.clamp_min(floor, 2.5 * (noise or 0.0)) ** 2
    active = torch.arange(b, device=src.device)
    with torch.no_grad():
        while active.numel():
            chunk = max(1, 2**18 // (size * n))
            for lo in range(0, active.numel(), chunk):
                rows = active[lo : lo + chunk]
                picks = _draw(g, (rows.numel(), size), n, k) if fixed is None else fixed[lo : lo + chunk]
                d2 = _hypotheses(model, s_all[rows], t_all[rows], s_cm[rows], t_cm[rows], picks.to(src.device))
                med = _median(d2)
                med_best, arg = med.min(dim=-1)
                better = med_best < best_med[rows]
                best_d2[rows] = torch.where(
                    better[:, None], torch.gather(d2, 1, arg[:, None, None].expand(-1, 1, n)).squeeze(1), best_d2[rows]
                )
                best_med[rows] = torch.where(better, med_best, best_med[rows])
                if adaptive:
                    within = (d2 <= limit[rows, None, None]).sum(-1).amax(-1)
                    consensus[rows] = torch.maximum(consensus[rows], within)
            drawn[active] += size
            if not adaptive:
                break
            need = _samples_needed(consensus[active] / n, k, confidence).clamp_max(most) - drawn[active]
            active = active[need > 0]
            if active.numel():
                size = int(need[need > 0].median().clamp(min=size, max=most - int(drawn[active].min())))
        scale = _robust_scale(best_med, n, T.num_params(model, d))
        inliers = best_d2 <= (2.5 * scale.unsqueeze(-1)) ** 2
        refit = closed_form(model, s_all, t_all, inliers.to(src.dtype) + 1e-12)
        # The scale again from the refitted start: a minimal sample's fit misses the other inliers by more than the
        # noise (a 3-D projective map from 5 points: a median 27 times the noise, measured), and a loss scaled by
        # that keeps the outliers' pull. The lower of the two medians is the least-median estimate.
        refit_d2 = _squared_distances(refit, s_cm, t_cm, model == "projective")
        scale = torch.minimum(scale, _robust_scale(_median(refit_d2), n, T.num_params(model, d)))
    return refit.reshape(*batch_shape, d + 1, d + 1), scale.reshape(batch_shape)


def _median(x: torch.Tensor) -> torch.Tensor:
    """The lower median along the last dimension (``torch.median``'s), without NaN. On the CPU by numpy's sort,
    several times faster than ``torch.median`` for many short rows (the robust start's hypotheses)."""
    if x.device.type != "cpu":
        return x.median(dim=-1).values
    ordered = np.sort(x.detach().numpy(), axis=-1)
    return torch.from_numpy(ordered[..., (x.shape[-1] - 1) // 2].copy())


def _hypotheses(
    model: str,
    src: torch.Tensor,
    dst: torch.Tensor,
    src_cm: torch.Tensor,
    dst_cm: torch.Tensor,
    picks: torch.Tensor,
) -> torch.Tensor:
    """Every point's squared distance ``(B, H, N)`` under the minimal-sample fits of ``(B, N, d)`` point sets (the
    samples' points ``picks``, ``(B, H, k)``; ``src_cm`` and ``dst_cm`` are the same points coordinate by
    coordinate, ``(B, d, N)``). A degenerate sample gives infinite distances (it loses every vote), not an error.
    """
    b, _, d = src.shape
    count, k = picks.shape[1:]
    gather = picks.reshape(b, count * k, 1).expand(-1, -1, d)
    s = torch.gather(src, 1, gather).reshape(b, count, k, d)
    t = torch.gather(dst, 1, gather).reshape(b, count, k, d)
    m = _minimal_fit(model, s, t)
    d2 = _squared_distances(m, src_cm.unsqueeze(1), dst_cm.unsqueeze(1), model == "projective")
    return d2.nan_to_num_(nan=float("inf"))


def _fixed_samples(b: int, count: int, n: int, k: int, d: int, seed: int) -> torch.Tensor:
    """``count`` minimal samples of ``k`` of ``n`` points for each of ``b`` sets, ``(b, count, k)``: the ``k``
    smallest of ``n`` uniform numbers, drawn for blocks of sets (of about 4e6 numbers, seeded ``seed`` plus the
    block's first set)."""
    block = max(1, 4_000_000 // (count * n * d))
    picks = []
    for lo in range(0, b, block):
        g = torch.Generator().manual_seed(seed + lo)
        draws = torch.rand(min(block, b - lo), count, n, generator=g)
        picks.append(draws.topk(k, dim=-1, largest=False).indices)
    return torch.cat(picks)


def _squared_distances(m: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, projective: bool) -> torch.Tensor:
    """``|T(src) - dst|^2`` for matrices ``(..., d + 1, d + 1)`` and points given coordinate by coordinate,
    ``(..., d, N)`` (contiguous): ``(..., N)``.

    Hypotheses x points is the largest array of the robust start: it is built coordinate by coordinate, in place,
    from contiguous rows (strided or broadcast inner dimensions are several times slower on a CPU).
    """
    d = src.shape[-2]

    def entry(a: int, j: int) -> torch.Tensor:
        return m[..., a, j].unsqueeze(-1).contiguous()

    w = None
    if projective:
        w = entry(d, d) + entry(d, 0) * src[..., 0, :]
        for j in range(1, d):
            w.addcmul_(entry(d, j), src[..., j, :])
    total = torch.zeros(())
    for a in range(d):
        diff = entry(a, 0) * src[..., 0, :]
        for j in range(1, d):
            diff.addcmul_(entry(a, j), src[..., j, :])
        diff.add_(entry(a, d))
        if w is not None:
            diff.div_(w)
        diff.sub_(dst[..., a, :])
        total = diff.square_() if a == 0 else total.addcmul_(diff, diff)
    return total


def _draw(g: torch.Generator, shape: tuple[int, ...], n: int, k: int) -> torch.Tensor:
    """``k`` distinct indices below ``n`` for each entry of ``shape``, uniformly: ``shape + (k,)``.

    The j-th index is drawn among the ``n - j`` not yet taken (it is mapped past the taken ones in increasing order).
    """
    picks: list[torch.Tensor] = []
    for j in range(k):
        idx = torch.randint(0, n - j, shape, generator=g)
        if picks:
            taken, _ = torch.sort(torch.stack(picks, -1), dim=-1)
            for c in range(j):
                idx = idx + (idx >= taken[..., c]).to(idx.dtype)
        picks.append(idx)
    return torch.stack(picks, -1)


def _minimal_fit(model: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The transforms through minimal samples ``(..., k, d)``, without errors: a degenerate sample gives a
    meaningless transform (infinite, NaN, or whatever rounding makes of a singular system), which loses the vote.

    Translation, linear and affine maps solve their square system directly (by Cramer's rule up to 3 unknowns);
    the others use the closed form, which has no failure mode (SVD).
    """
    d = s.shape[-1]
    if model not in LINEAR_MODELS:
        return closed_form(model, s, t)
    eye = torch.eye(d + 1, dtype=s.dtype, device=s.device).expand(*s.shape[:-2], d + 1, d + 1).clone()
    if model == "translation":
        eye[..., :d, d] = (t - s).mean(-2)
        return eye
    a = s if model == "linear" else torch.cat([s, torch.ones_like(s[..., :1])], -1)  # (..., k, k)
    x = _solve_square(a, t)  # a x = t: x holds the map's rows as columns
    eye[..., :d, :d] = x[..., :d, :].transpose(-1, -2)
    if model == "affine":
        eye[..., :d, d] = x[..., d, :]
    return eye


def _solve_square(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a^-1 b`` for a batch of small square ``a``; singular systems give inf or NaN instead of an error."""
    k = a.shape[-1]
    if k == 1:
        return b / a
    if k == 2:
        det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
        adj = torch.stack(
            [torch.stack([a[..., 1, 1], -a[..., 0, 1]], -1), torch.stack([-a[..., 1, 0], a[..., 0, 0]], -1)], -2
        )
        return _matmul(adj, b) / det[..., None, None]
    if k == 3:
        c0 = torch.linalg.cross(a[..., 1, :], a[..., 2, :])
        c1 = torch.linalg.cross(a[..., 2, :], a[..., 0, :])
        c2 = torch.linalg.cross(a[..., 0, :], a[..., 1, :])
        det = (a[..., 0, :] * c0).sum(-1)
        adj = torch.stack([c0, c1, c2], -1)  # the adjugate: its columns are the cofactor rows
        return _matmul(adj, b) / det[..., None, None]
    x, _ = torch.linalg.solve_ex(a, b)
    return x


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for batches of tiny matrices, elementwise (a batched matrix product is slow for 3 x 3 blocks)."""
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)


def _linear_jacobian(model: str, src: torch.Tensor, root_w: torch.Tensor | None) -> torch.Tensor:
    """The constant Jacobian of the weighted residuals ``(A src + t - dst) * root_w`` (flattened point by point)
    with respect to the parameters (``A`` row by row, then ``t``): ``(..., N d, num_params)``."""
    n, d = src.shape[-2:]
    k = T.num_params(model, d)
    jac = torch.zeros(*src.shape[:-1], d, k, dtype=src.dtype, device=src.device)
    weighted = src if root_w is None else src * root_w.unsqueeze(-1)
    one = torch.ones_like(src[..., 0]) if root_w is None else root_w
    shift = 0 if model == "translation" else d * d
    for a in range(d):
        if model != "translation":
            jac[..., a, a * d : (a + 1) * d] = weighted  # d r[i, a] / d A[a, b] = src[i, b]
        if model != "linear":
            jac[..., a, shift + a] = one  # d r[i, a] / d t[a] = 1
    return jac.reshape(*src.shape[:-2], n * d, k)


def _robust_scale(median_sq: torch.Tensor, n: int, p: int) -> torch.Tensor:
    """Rousseeuw's small-sample corrected scale from the median squared residual."""
    return MAD_TO_SIGMA * (1 + 5 / max(n - p, 1)) * median_sq.clamp_min(0).sqrt()


def align(
    src: Any,
    dst: Any,
    model: str = "affine",
    loss: str = "mse",
    *,
    weights: Any = None,
    f_scale: float | None = None,
    robust: bool | None = None,
    seed: int = 0,
    **options: Any,
) -> Alignment:
    """Fit the transform mapping ``src`` onto ``dst``.

    Args:
        src, dst: corresponding points ``(N, d)``, or batches ``(B, N, d)`` fitted in one call.
        model: ``"translation"``, ``"linear"``, ``"affine"``, ``"rigid"``, ``"similarity"`` or ``"projective"``.
        loss: ``"mse"`` (least squares), ``"mae"`` (smoothed absolute distance), ``"huber"``, ``"cauchy"`` or
            ``"soft_l1"``, each on the point's Euclidean distance.
        weights: a weight per point ``(N,)`` (or ``(B, N)``), for ``mse`` and the robust losses alike.
        f_scale: the scale of the robust loss; default the tuning constant times the robust noise scale. Given for
            ``huber``, ``cauchy`` or ``soft_l1``, it also tells the robust start the inliers' noise (``f_scale``
            over the tuning constant), so that point sets with few outliers stop sampling early.
        robust: take the least-median-of-squares start (default: for every loss but ``mse``).
        seed: seeds the random samples of the robust start.
        **options: passed to :func:`lossfit.least_squares` (solver, tolerances, ...).

    Returns:
        An :class:`Alignment` (a FitResult) with ``matrix``, ``distances``, ``inliers`` and ``closed_form``;
        ``reference`` compares the fit with the closed form (RMS distances of both).

    Example:
        >>> import math, torch, lossfit
        >>> src = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
        >>> turn = lossfit.transforms.matrix("rigid", torch.tensor([math.pi / 2, 1.0, 0.0], dtype=torch.float64), 2)
        >>> fit = lossfit.align(src, lossfit.transforms.apply(turn, src), model="rigid")
        >>> fit.success, torch.allclose(fit.matrix, turn, atol=1e-12)
        (True, True)
    """
    src_t, dst_t = _points(src, "src"), _points(dst, "dst")
    if src_t.shape != dst_t.shape:
        raise ValueError(f"`src` and `dst` must have the same shape; got {tuple(src_t.shape)} and {tuple(dst_t.shape)}")
    check_model(model)
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {', '.join(repr(v) for v in LOSSES)}; got {loss!r}")
    dtype = torch.promote_types(src_t.dtype, dst_t.dtype)
    src_t, dst_t = src_t.to(dtype), dst_t.to(dtype)
    n, d = src_t.shape[-2:]
    if model in ("rigid", "similarity") and d < 2:
        raise ValueError(f"a {model} transform needs points of 2 or more dimensions; got {d}")
    need = T.min_points(model, d)
    if n < need:
        raise ValueError(f"a {d}-D {model} transform needs at least {need} point pairs; got {n}")
    _check_spread(src_t, model)
    w = None
    if weights is not None:
        w = _points(weights, "weights", ndim=src_t.ndim - 1).to(dtype)
        if w.shape != src_t.shape[:-1] or bool((w < 0).any()) or bool((w.sum(-1) <= 0).any()):
            raise ValueError(
                f"`weights` must be {tuple(src_t.shape[:-1])} non-negative values, not all zero; got {tuple(w.shape)}"
            )
    use_robust = loss != "mse" if robust is None else robust
    projective = model == "projective"
    if use_robust:
        # A scale given for a robust loss says how large the inliers' noise is: the start may then stop sampling
        # early, by RANSAC's rule (see `robust_start`).
        known = f_scale / _SCALE[loss] if f_scale is not None and loss in ("huber", "cauchy", "soft_l1") else None
        start, scale = robust_start(model, src_t, dst_t, seed=seed, noise=known)
    else:
        start = closed_form(model, src_t, dst_t, w)
        src_cm, dst_cm = src_t.transpose(-1, -2).contiguous(), dst_t.transpose(-1, -2).contiguous()
        distance2 = _squared_distances(start, src_cm, dst_cm, projective)
        scale = _robust_scale(distance2.median(-1).values, n, T.num_params(model, d))
    batch = src_t.ndim == 3

    def residual(p: torch.Tensor, s: torch.Tensor, t: torch.Tensor, root_w: torch.Tensor) -> torch.Tensor:
        return ((T.apply(T.matrix(model, p, d), s, projective) - t) * root_w.unsqueeze(-1)).reshape(-1)

    root_w = torch.ones(src_t.shape[:-1], dtype=dtype) if w is None else w.sqrt()
    robust_kwargs: dict[str, Any] = {}
    if loss != "mse":
        noise = float(scale.max()) if scale.numel() else 1.0
        # Exact inliers have no noise scale: the floor keeps the robust loss well scaled (1e-6 of the data's extent).
        chosen_scale = f_scale if f_scale is not None else max(_SCALE[loss] * noise, 1e-6 * _spread(dst_t))
        robust_kwargs = {"loss": robust_for(loss), "f_scale": chosen_scale, "group": d}
    p0 = T.params(model, start)
    # Translation, linear and affine residuals are linear in the parameters: their Jacobian is a constant.
    jac = _linear_jacobian(model, src_t, None if w is None else root_w) if model in LINEAR_MODELS else None
    fit = least_squares(residual, p0, args=(src_t, dst_t, root_w), batch=batch, jac=jac, **robust_kwargs, **options)
    m = T.matrix(model, fit.params, d)
    with torch.no_grad():
        distances = (T.apply(m, src_t, projective) - dst_t).norm(dim=-1)
        start_distances = (T.apply(start, src_t, projective) - dst_t).norm(dim=-1)
        if loss == "mse":
            inliers = torch.ones_like(distances, dtype=torch.bool)
        else:
            # The same floor as the loss's scale: exact inliers (noise at rounding level) are inliers.
            floor = 1e-6 * _spread(dst_t)
            inliers = distances <= 2.5 * torch.clamp_min(scale, floor).unsqueeze(-1)
    reference = {
        "rms_distance": float(distances.pow(2).mean(-1).sqrt().max()),
        "closed_form_rms_distance": float(start_distances.pow(2).mean(-1).sqrt().max()),
        "max_matrix_change_from_closed_form": float((m - start).abs().max()),
    }
    base = {f.name: getattr(fit, f.name) for f in dataclasses.fields(FitResult)}
    base["reference"] = reference
    return Alignment(
        **base,
        matrix=m,
        closed_form=start,
        distances=distances,
        inliers=inliers,
        scale=scale,
        model=model,
    )


def _points(value: Any, argument: str, ndim: int | None = None) -> torch.Tensor:
    t = as_real_tensor(value, argument)
    if ndim is None and t.ndim not in (2, 3):
        raise ValueError(f"`{argument}` must be points (N, d) or a batch (B, N, d); got shape {tuple(t.shape)}")
    if ndim is not None and t.ndim != ndim:
        raise ValueError(f"`{argument}` must have {ndim} dimension(s); got shape {tuple(t.shape)}")
    return t


def _spread(p: torch.Tensor) -> float:
    return float((p - p.mean(-2, keepdim=True)).abs().max().clamp_min(1e-300))


def _check_spread(src: torch.Tensor, model: str) -> None:
    """Refuse source points that cannot determine the model (all equal, or all on one line/plane for affine maps)."""
    d = src.shape[-1]
    centred = src - src.mean(-2, keepdim=True)
    sv = torch.linalg.svdvals(centred)
    tol = sv[..., :1] * max(src.shape[-2:]) * torch.finfo(src.dtype).eps * 10
    rank = (sv > tol).sum(-1)
    needed = {"translation": 0, "rigid": 1, "similarity": 1}.get(model, d)
    if bool((rank < needed).any()):
        raise ValueError(
            f"`src` points are degenerate for a {model} transform: they span {int(rank.min())} of {d} dimensions "
            "(collinear or coincident points)"
        )
