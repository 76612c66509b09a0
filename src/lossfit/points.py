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

import torch

from lossfit import transforms as T
from lossfit._validation import as_real_tensor
from lossfit.engine import FitResult, least_squares
from lossfit.transforms.homogeneous import _check_model

LOSSES = ("mse", "mae", "huber", "cauchy", "soft_l1")
# Tuning constants (in units of the robust noise scale): 95% efficiency at Gaussian noise for Huber and Cauchy.
_SCALE = {"huber": 1.345, "cauchy": 2.385, "soft_l1": 1.0, "mae": 1e-3}


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
    _check_model(model)
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


def robust_start(
    model: str, src: torch.Tensor, dst: torch.Tensor, hypotheses: int | None = None, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Least median of squares over random minimal samples, batched; returns the start matrix and the noise scale.

    Each hypothesis is the closed form on a minimal sample; the one with the smallest median squared distance wins
    (Rousseeuw, 1984), and the closed form is refitted on its inliers (within 2.5 robust standard deviations). The
    number of samples (default) gives 99.9% confidence of one clean sample with half the points outliers, the
    breakdown point of the median. Batches are processed in chunks that bound the memory used.
    """
    n, d = src.shape[-2], src.shape[-1]
    k = T.min_points(model, d)
    hypotheses = hypotheses or sample_count(k)
    if src.ndim == 3:
        chunk = max(1, 4_000_000 // (hypotheses * n * d))
        if src.shape[0] > chunk:
            parts = [
                robust_start(model, src[i : i + chunk], dst[i : i + chunk], hypotheses, seed + i)
                for i in range(0, src.shape[0], chunk)
            ]
            return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    g = torch.Generator().manual_seed(seed)
    picks = torch.argsort(torch.rand(*src.shape[:-2], hypotheses, n, generator=g), dim=-1)[..., :k].to(src.device)
    gather = picks.unsqueeze(-1).expand(*picks.shape, d)
    s = torch.gather(src.unsqueeze(-3).expand(*src.shape[:-2], hypotheses, n, d), -2, gather)
    t = torch.gather(dst.unsqueeze(-3).expand(*dst.shape[:-2], hypotheses, n, d), -2, gather)
    with torch.no_grad():
        m = _safe_closed_form(model, s, t)
        dist2 = ((T.apply(m, src.unsqueeze(-3)) - dst.unsqueeze(-3)) ** 2).sum(-1)
        dist2 = torch.where(torch.isfinite(dist2), dist2, torch.full_like(dist2, float("inf")))
        med = dist2.median(dim=-1).values
        best = med.argmin(dim=-1)
        chosen = torch.gather(m, -3, best[..., None, None, None].expand(*best.shape, 1, d + 1, d + 1)).squeeze(-3)
        scale = _robust_scale(torch.gather(med, -1, best.unsqueeze(-1)).squeeze(-1), n, T.num_params(model, d))
        dist = (T.apply(chosen, src) - dst).norm(dim=-1)
        inliers = dist <= 2.5 * scale.unsqueeze(-1)
        refit = closed_form(model, src, dst, inliers.to(src.dtype) + 1e-12)
    return refit, scale


def _safe_closed_form(model: str, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Closed forms of minimal samples; a degenerate sample gives NaN (it loses the vote) instead of an error."""
    try:
        return closed_form(model, s, t)
    except RuntimeError:
        d = s.shape[-1]
        out = torch.full((*s.shape[:-2], d + 1, d + 1), float("nan"), dtype=s.dtype, device=s.device)
        flat_s, flat_t = s.reshape(-1, *s.shape[-2:]), t.reshape(-1, *t.shape[-2:])
        flat = out.reshape(-1, d + 1, d + 1)
        for i in range(flat.shape[0]):
            try:
                flat[i] = closed_form(model, flat_s[i], flat_t[i])
            except RuntimeError:
                continue
        return out


def _robust_scale(median_sq: torch.Tensor, n: int, p: int) -> torch.Tensor:
    """Rousseeuw's small-sample corrected scale from the median squared residual."""
    return 1.4826 * (1 + 5 / max(n - p, 1)) * median_sq.clamp_min(0).sqrt()


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
        f_scale: the scale of the robust loss; default the tuning constant times the robust noise scale.
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
    _check_model(model)
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
    start = closed_form(model, src_t, dst_t, w)
    scale = _robust_scale(((T.apply(start, src_t) - dst_t) ** 2).sum(-1).median(-1).values, n, T.num_params(model, d))
    if use_robust:
        start, scale = robust_start(model, src_t, dst_t, seed=seed)
    batch = src_t.ndim == 3
    p0 = T.params(model, start)

    def residual(p: torch.Tensor, s: torch.Tensor, t: torch.Tensor, root_w: torch.Tensor) -> torch.Tensor:
        return ((T.apply(T.matrix(model, p, d), s) - t) * root_w.unsqueeze(-1)).reshape(-1)

    root_w = torch.ones(src_t.shape[:-1], dtype=dtype) if w is None else w.sqrt()
    robust_kwargs: dict[str, Any] = {}
    if loss != "mse":
        noise = float(scale.max()) if scale.numel() else 1.0
        # Exact inliers have no noise scale: the floor keeps the robust loss well scaled (1e-6 of the data's extent).
        chosen_scale = f_scale if f_scale is not None else max(_SCALE[loss] * noise, 1e-6 * _spread(dst_t))
        robust_kwargs = {"loss": "soft_l1" if loss == "mae" else loss, "f_scale": chosen_scale, "group": d}
    fit = least_squares(residual, p0, args=(src_t, dst_t, root_w), batch=batch, **robust_kwargs, **options)
    m = T.matrix(model, fit.params, d)
    with torch.no_grad():
        distances = (T.apply(m, src_t) - dst_t).norm(dim=-1)
        start_distances = (T.apply(start, src_t) - dst_t).norm(dim=-1)
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
