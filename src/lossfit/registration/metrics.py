"""Image similarity metrics as losses (lower is better), differentiable, with optional weights (masks).

Each takes the fixed values ``a`` and the moving values ``b`` at the same sample points, shape ``(B, N)`` (a batch
of pairs), and ``weight`` ``(B, N)`` (1 inside the masks and the overlap, 0 outside); each returns ``(B,)``.

- ``mse``: the weighted mean of ``(b - a)**2``.
- ``ncc``: ``1 - r``, where ``r`` is the weighted Pearson correlation; invariant to a linear change of intensity.
- ``mi``: minus the mutual information (nats) of a joint histogram whose counts are spread by cubic B-spline Parzen
  windows over ``bins`` bins (Mattes et al., 2003); each image's intensities are mapped to the bins by its own
  robust range, so images of different modalities and any intensity range compare.
- ``lncc``: ``1 -`` the mean local correlation over boxes of ``window`` voxels: on whole images (:func:`lncc`) or
  on sampled patches (:func:`patch_lncc`), each a box of points around a sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("mse", "ncc", "lncc", "mi")
_EPS = 1e-12


def mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean squared difference, ``(B,)``."""
    w = torch.ones_like(a) if weight is None else weight
    return (w * (b - a) ** 2).sum(-1) / w.sum(-1).clamp_min(_EPS)


def ncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``1 - `` the weighted correlation coefficient of ``a`` and ``b``, ``(B,)``: 0 for a perfect linear match."""
    w = torch.ones_like(a) if weight is None else weight
    total = w.sum(-1, keepdim=True).clamp_min(_EPS)
    da = a - (w * a).sum(-1, keepdim=True) / total
    db = b - (w * b).sum(-1, keepdim=True) / total
    cov = (w * da * db).sum(-1)
    var = (w * da * da).sum(-1) * (w * db * db).sum(-1)
    return 1 - cov / var.clamp_min(_EPS).sqrt()


def intensity_range(values: torch.Tensor, weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The 0.5th and 99.5th percentiles of each row of ``values (B, N)`` (where ``weight > 0``): ``(B,)`` each."""
    lows, highs = [], []
    for row in range(values.shape[0]):
        v = values[row] if weight is None else values[row][weight[row] > 0]
        v = v.detach().float()
        if v.numel() == 0:
            v = values[row].detach().float()
        q = torch.quantile(v[:1_000_000], torch.tensor([0.005, 0.995], device=v.device))
        lows.append(q[0])
        highs.append(torch.maximum(q[1], q[0] + 1e-6 * q[0].abs().clamp_min(1.0)))
    return torch.stack(lows).to(values.dtype), torch.stack(highs).to(values.dtype)


def _bspline3(t: torch.Tensor) -> torch.Tensor:
    """The cubic B-spline kernel (support |t| < 2)."""
    t = t.abs()
    inner = (4 - 6 * t**2 + 3 * t**3) / 6
    outer = (2 - t).clamp_min(0) ** 3 / 6
    return torch.where(t < 1, inner, outer)


def parzen_weights(
    values: torch.Tensor, low: torch.Tensor, high: torch.Tensor, bins: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each value's share of ``bins`` histogram bins under a cubic B-spline window: the first of the four bins it
    touches ``(B, N)`` and the four weights ``(B, N, 4)`` (summing to 1). The two outer bins on each side are padding,
    so a value at either end of the range keeps all its weight."""
    usable = bins - 4
    pos = (values - low.unsqueeze(-1)) / (high - low).clamp_min(_EPS).unsqueeze(-1) * (usable - 1) + 2
    pos = pos.clamp(2, bins - 3)
    base = pos.detach().floor()
    t = (pos - base).unsqueeze(-1)
    offsets = torch.tensor([1.0, 0.0, -1.0, -2.0], dtype=values.dtype, device=values.device)
    return (base - 1).long(), _bspline3(t + offsets)


def mi(
    a: torch.Tensor,
    b: torch.Tensor,
    weight: torch.Tensor | None = None,
    bins: int = 32,
    ranges: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    fixed_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Minus the mutual information of ``a`` and ``b`` in nats, ``(B,)`` (lower is better).

    ``ranges`` (low_a, high_a, low_b, high_b) fixes the histogram ranges (by default each row's robust range);
    ``fixed_weights`` may pass precomputed :func:`parzen_weights` of ``a`` (the fixed image's do not change).
    Each sample adds to 4 x 4 bins of the joint histogram (a scatter, not a dense ``N x bins`` product).
    """
    w = torch.ones_like(a) if weight is None else weight
    if ranges is None:
        la, ha = intensity_range(a, weight)
        lb, hb = intensity_range(b, weight)
    else:
        la, ha, lb, hb = ranges
    first_a, wa = parzen_weights(a, la, ha, bins) if fixed_weights is None else fixed_weights
    first_b, wb = parzen_weights(b, lb, hb, bins)
    steps = torch.arange(4, device=a.device)
    rows = (first_a.unsqueeze(-1) + steps).unsqueeze(-1)  # (B, N, 4, 1)
    cols = (first_b.unsqueeze(-1) + steps).unsqueeze(-2)  # (B, N, 1, 4)
    index = (rows * bins + cols).reshape(a.shape[0], -1)
    contrib = ((wa * w.unsqueeze(-1)).unsqueeze(-1) * wb.unsqueeze(-2)).reshape(a.shape[0], -1)
    joint = torch.zeros(a.shape[0], bins * bins, dtype=contrib.dtype, device=a.device).scatter_add(1, index, contrib)
    joint = joint.reshape(-1, bins, bins)
    joint = joint / joint.sum(dim=(-1, -2), keepdim=True).clamp_min(_EPS)
    pa = joint.sum(-1, keepdim=True)
    pb = joint.sum(-2, keepdim=True)
    ratio = joint / (pa * pb).clamp_min(_EPS)
    return -(joint * torch.log(ratio.clamp_min(_EPS))).sum(dim=(-1, -2))


def lncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None, window: int = 9) -> torch.Tensor:
    """``1 -`` the mean local correlation of whole images ``a``, ``b`` of shape ``(B, *spatial)`` over boxes of
    ``window`` voxels per axis (squared correlation as in ANTs' CC, signed so that anti-correlation is penalised),
    averaged over voxels with ``weight`` ``(B, *spatial)``; ``(B,)``."""
    d = a.dim() - 1
    pool = F.avg_pool2d if d == 2 else F.avg_pool3d
    pad = window // 2

    def mean(x: torch.Tensor) -> torch.Tensor:
        return pool(x.unsqueeze(1), window, stride=1, padding=pad, count_include_pad=False).squeeze(1)

    ma, mb = mean(a), mean(b)
    cov = mean(a * b) - ma * mb
    va = (mean(a * a) - ma * ma).clamp_min(0)
    vb = (mean(b * b) - mb * mb).clamp_min(0)
    scale = (va.flatten(1).mean(-1) * vb.flatten(1).mean(-1)).sqrt().reshape(-1, *([1] * d))
    local = cov * cov.abs() / (va * vb + 1e-4 * scale**2 + _EPS)
    w = torch.ones_like(a) if weight is None else weight
    return 1 - (w * local).flatten(1).sum(-1) / w.flatten(1).sum(-1).clamp_min(_EPS)


def patch_lncc(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``1 -`` the mean local correlation over sampled patches: ``a``, ``b`` and ``weight`` are ``(B, P, K)``, ``P``
    patches of ``K`` points each (a box around each sample). The same local term as :func:`lncc` (squared
    correlation, signed), each patch's statistics over its points with ``weight``; patches with fewer than half of
    their points counting are left out. ``(B,)``."""
    w = torch.ones_like(a) if weight is None else weight
    n = w.sum(-1)
    safe = n.clamp_min(1).unsqueeze(-1)
    da = a - (w * a).sum(-1, keepdim=True) / safe
    db = b - (w * b).sum(-1, keepdim=True) / safe
    cov = (w * da * db).sum(-1) / safe[..., 0]
    va = (w * da * da).sum(-1) / safe[..., 0]
    vb = (w * db * db).sum(-1) / safe[..., 0]
    keep = (n >= 0.5 * a.shape[-1]).to(a.dtype)
    count = keep.sum(-1).clamp_min(1)
    scale = ((keep * va).sum(-1) / count * (keep * vb).sum(-1) / count).sqrt().unsqueeze(-1)
    local = cov * cov.abs() / (va * vb + 1e-4 * scale**2 + _EPS)
    return 1 - (keep * local).sum(-1) / keep.sum(-1).clamp_min(_EPS)
