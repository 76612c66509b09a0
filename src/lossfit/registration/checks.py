"""The independent end-of-run check of a registration: success is never claimed on an answer it cannot confirm.

The solver only ever sees its own sampled objective. At the end, each pair is measured again by other paths:

- **the overlap**: the fraction of fixed voxels (in the fixed mask) whose world point the transform maps inside the
  moving image (and its mask), decided from the mapped continuous indices, at the start and at the answer;
- **the metric over the whole fixed grid** through :func:`~lossfit.registration.resample.resample` (not the
  sampled objective), at the start and at the answer;
- **the objective recomputed** at the answer from the same samples, mapped by the answer's matrix and looked up
  through the moving level image's own geometry, against the value the solver reported;
- **the transform's linear part**: its determinant and singular values.

:func:`verdict` turns them into a status: ``CHECK_MISMATCH`` (the objective disagrees with the recomputation),
``NO_OVERLAP`` (the answer keeps less than :data:`OVERLAP_FLOOR` of the start's overlap), ``DEGENERATE`` (a
reflection, or a singular value outside :data:`SCALE_LIMITS`), ``POOR_MATCH`` (mean squares at the answer above
:data:`MATCH_FLOOR` of the fixed image's own variance: the alignment explains less than half of it, as when the
contrasts differ) or
``WORSE_THAN_START``; None when all pass.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from lossfit import transforms as T
from lossfit.engine.result import Status
from lossfit.registration import metrics as M
from lossfit.registration.image import Image
from lossfit.registration.level import INSIDE_MARGIN
from lossfit.registration.pyramid import corner_indices, ravel
from lossfit.registration.resample import resample, sample, world_to_normalized

OVERLAP_FLOOR = 0.5  # the answer must keep half the start's overlap (trial points below a quarter are refused)
OVERLAP_BARRIER = 0.25
MATCH_FLOOR = 0.5  # mean squares at the answer must explain at least half of the fixed image's variance
SCALE_LIMITS = (0.2, 5.0)  # plausible singular values of the linear part: a fifth to five times
_GRID_POINTS = 250_000  # the overlap is counted on at most this many fixed voxels (a regular subgrid: +-0.2%)


def world_extent(image: Image) -> str:
    """The world bounding box of an image's voxel centres, as ``x -90.0..90.0, y ... mm``."""
    world = image.index_to_world(corner_indices(image))
    lo, hi = world.amin(0).tolist(), world.amax(0).tolist()
    return ", ".join(f"{axis} {a:.1f}..{b:.1f}" for axis, a, b in zip("xyz", lo, hi, strict=False)) + " mm (LPS)"


def _subgrid(image: Image) -> tuple[torch.Tensor, int]:
    """Continuous indices (i, j[, k]) of a regular subgrid of at most ``_GRID_POINTS`` voxels, and its stride."""
    return _subgrid_of(tuple(image.shape))


@functools.lru_cache(maxsize=4)
def _subgrid_of(shape: tuple[int, ...]) -> tuple[torch.Tensor, int]:
    # Cached: a series or a cohort checks many pairs on one grid (the tensor is only read, never written).
    stride = max(1, math.ceil((math.prod(shape) / _GRID_POINTS) ** (1 / len(shape))))
    axes = [torch.arange(0, n, stride, dtype=torch.float64) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")  # data order (z, y, x)
    return torch.stack(list(reversed(mesh)), dim=-1).reshape(-1, len(shape)), stride


def overlap(
    fixed: Image,
    moving: Image,
    matrix: torch.Tensor,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: torch.Tensor | None = None,
) -> float:
    """The fraction of fixed voxels (where ``fixed_mask``, bool on the fixed grid) whose world point ``matrix``
    maps inside the moving image's voxel-centre box (and, with ``moving_mask`` on the moving grid, onto a voxel of
    the mask, nearest neighbour)."""
    index, stride = _subgrid(fixed)
    if fixed_mask is not None:
        keep = fixed_mask[(slice(None, None, stride),) * fixed.ndim].reshape(-1).cpu()
        index = index[keep]
    if index.shape[0] == 0:
        return 0.0
    # fixed index -> fixed world -> moving world -> moving index, as one homogeneous matrix (projective too)
    through = torch.linalg.inv(moving.affine) @ matrix.to(torch.float64).cpu() @ fixed.affine
    at = torch.addmm(through[:-1, -1], index, through[:-1, :-1].T)
    if bool((through[-1, :-1] != 0).any()) or float(through[-1, -1]) != 1.0:  # projective: divide by the weight
        at = at / (index @ through[-1, :-1] + through[-1, -1]).unsqueeze(-1)
    size = torch.tensor(moving.size, dtype=torch.float64)
    tol = 1e-6
    inside = ((at >= -tol) & (at <= size - 1 + tol)).all(dim=-1) & torch.isfinite(at).all(dim=-1)
    if moving_mask is not None and bool(inside.any()):
        flat = ravel(at[inside], tuple(moving.shape))  # the nearest voxel
        inside[inside.clone()] = moving_mask.reshape(-1).cpu()[flat]
    return float(inside.double().mean())


def metric_on_grid(
    fixed: Image,
    moving: Image,
    matrix: torch.Tensor,
    metric: str,
    *,
    fixed_mask: torch.Tensor | None = None,
    moving_mask: Image | None = None,
    bins: int = 32,
    window: int = 9,
    robust_loss: Any = None,
    f_scale: float = 1.0,
    resampled: tuple[Image, torch.Tensor] | None = None,
) -> float:
    """The metric (lower is better) between ``fixed`` and ``moving`` resampled onto its whole grid by ``matrix``,
    over the voxels inside both (and the masks); a robust mean-squares metric averages ``f^2 rho((e / f)^2)``.
    Infinite when no voxel counts. ``resampled``: that resampling and its inside mask where the caller has them
    (``resample(moving, fixed, matrix, mask=True)``), so that it is not done twice."""
    if resampled is None:
        resampled = resample(moving, fixed, matrix.to(torch.float64).cpu(), mask=True)  # type: ignore[assignment]
    assert resampled is not None
    warped, valid = resampled
    weight = valid.to(fixed.device)
    if fixed_mask is not None:
        weight = weight & fixed_mask
    if moving_mask is not None:
        mapped = resample(moving_mask, fixed, matrix.to(torch.float64).cpu(), interpolation="nearest")
        assert isinstance(mapped, Image)  # mask=False returns an Image
        weight = weight & (mapped.data > 0.5)
    if not bool(weight.any()):
        return math.inf
    a, b, w = (t.to(torch.float64).unsqueeze(0) for t in (fixed.data, warped.data, weight))
    if metric == "lncc":
        return float(M.lncc(a, b, w, window)[0])
    a, b, w = a.reshape(1, -1), b.reshape(1, -1), w.reshape(1, -1)
    if metric == "mse":
        return _mean_squares(a, b, w, robust_loss, f_scale)
    if metric == "ncc":
        return float(M.ncc(a, b, w)[0])
    step = max(1, a.shape[1] // (8 * _GRID_POINTS))  # the robust ranges from an even subsample of the voxels
    inside = w[:, ::step] > 0
    ranges = (*M.intensity_range(a[:, ::step], inside), *M.intensity_range(b[:, ::step], inside))
    return float(M.mi(a, b, w, bins, ranges)[0])


def _mean_squares(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor, rho: Any, f_scale: float) -> float:
    if rho is None:
        return float(M.mse(a, b, w)[0])
    return float((w * f_scale**2 * rho(((b - a) / f_scale) ** 2)).sum() / w.sum())


def metric_constant(
    fixed: Image, metric: str, fixed_mask: torch.Tensor | None = None, robust_loss: Any = None, f_scale: float = 1.0
) -> float:
    """Mean squares (robust, where a loss is given) between the fixed image and a constant image at its mean, over
    the fixed mask: the variance a match must explain. NaN for the other metrics (bounded; no such reference)."""
    if metric != "mse":
        return math.nan
    a = fixed.data.to(torch.float64).reshape(1, -1)
    w = torch.ones_like(a) if fixed_mask is None else fixed_mask.reshape(1, -1).to(a)
    mean = (w * a).sum() / w.sum().clamp_min(1)
    return _mean_squares(a, torch.full_like(a, float(mean)), w, robust_loss, f_scale)


def resampled_samples(
    points: torch.Tensor, matrix: torch.Tensor, level: Image, level_mask: Image | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Moving values ``(N,)`` at fixed world points ``(N, d)`` mapped by ``matrix``, looked up on the moving level
    ``level`` through its own geometry, and whether each lies inside it (and on ``level_mask``) ``(N,)`` bool."""
    mapped = T.apply(matrix.to(torch.float64), points.to(torch.float64))
    at = level.world_to_index(mapped.cpu()).to(points.device)
    last = torch.tensor(level.size, dtype=torch.float64, device=points.device) - 1
    margin = INSIDE_MARGIN * last / 2  # the objective's margin, in voxels
    inside = ((at >= -margin) & (at <= last + margin)).all(dim=-1)
    normalized = T.apply(world_to_normalized(level).to(points.device), mapped).unsqueeze(0)
    values = sample(level.data.to(torch.float64).reshape(1, 1, *level.shape), normalized)[0, 0]
    if level_mask is not None:
        on_mask = sample(level_mask.data.to(torch.float64).reshape(1, 1, *level.shape), normalized)[0, 0]
        inside = inside & (on_mask > 0.5)
    return values, inside


def linear_part(matrix: torch.Tensor) -> dict[str, Any]:
    """The determinant and the smallest and largest singular value of a world matrix's linear part."""
    d = matrix.shape[-1] - 1
    linear = (matrix[:d, :d] / matrix[d, d]).to(torch.float64).cpu()
    sv = torch.linalg.svdvals(linear)
    return {"determinant": float(torch.linalg.det(linear)), "singular_values": [float(sv[-1]), float(sv[0])]}


def metric_slack(metric: str, fixed_values: torch.Tensor) -> float:
    """How much worse than the start an answer may measure and still pass (besides 1% of the start's value):
    rounding, for an answer at the start itself. Mean squares: 1e-6 of the fixed image's squared robust range;
    the bounded metrics (NCC, local NCC, MI in nats): 1e-3."""
    if metric != "mse":
        return 1e-3
    low, high = M.intensity_range(fixed_values.reshape(1, -1).to(torch.float64))
    return 1e-6 * float(high[0] - low[0]) ** 2


def verdict(checks: dict[str, Any], metric: str) -> Status | None:
    """The first check that fails, as a status (see the module docstring); None when all pass."""
    own, again = checks["objective"], checks["objective_independent"]
    # Relative, with the metric's rounding scale as a floor (an image against itself has an objective near 0).
    tolerance = 1e-3 * max(abs(own), abs(again)) + checks.get("metric_slack", 0.0) + 1e-12
    if not (math.isfinite(own) and math.isfinite(again)) or abs(own - again) > tolerance:
        return Status.CHECK_MISMATCH
    if checks["overlap"] < OVERLAP_FLOOR * checks["overlap_start"]:
        return Status.NO_OVERLAP
    low, high = checks["singular_values"]
    if checks["determinant"] <= 0 or low < SCALE_LIMITS[0] or high > SCALE_LIMITS[1]:
        return Status.DEGENERATE
    start, answer = checks["metric_start"], checks["metric_answer"]
    constant = checks.get("metric_constant", math.nan)
    if math.isfinite(constant) and answer > MATCH_FLOOR * constant:
        return Status.POOR_MATCH
    if not math.isfinite(answer) or answer > start + 0.01 * abs(start) + checks["metric_slack"]:
        return Status.WORSE_THAN_START
    return None


__all__ = [
    "linear_part",
    "metric_constant",
    "metric_on_grid",
    "metric_slack",
    "overlap",
    "resampled_samples",
    "verdict",
    "world_extent",
]
