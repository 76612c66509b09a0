"""``register(fixed, moving)``: the world transform that maps the fixed image onto the moving one.

How it works:

- **The transform** is ``T = L @ M(p) @ Q`` in world coordinates (LPS, mm), where ``M`` is the model's matrix
  (:func:`lossfit.transforms.matrix`; rotations by the exponential map, so every parameter value is valid),
  ``Q`` moves the fixed image's centre to the origin (rotations and scalings turn about it) and ``L`` holds the
  initialisation (the centres, centres of mass or principal axes brought together). ``T`` maps points of the fixed
  image's world space to the moving image's: it is what resampling the moving image onto the fixed grid needs.
- **Parameters are scaled** by the physical shift they cause (ITK's idea): each is divided by the largest distance a
  unit change moves a corner of the fixed image, so a step of 1 in any scaled parameter moves voxels by about 1 mm.
  Together with solvers that need no learning rate, nothing has to be tuned.
- **A pyramid** of levels (shrink factors, Gaussian smoothing) runs coarse to fine; each level stops on convergence
  (the engine's ftol/xtol/gtol), not after a fixed count. The finest level's status is the result's status.
- **Samples**: each level compares the images at up to ``samples`` fixed voxels (a seeded draw, the same through the
  level, weighted towards the fixed image's edges, which is where the information about the alignment is), so the
  cost of a step does not grow with the volume.
- **Mean squares** is a least-squares problem: Levenberg-Marquardt with the exact Jacobian ``grad I_m(T x) dT/dp``
  (the moving image's gradient is resampled with its values in one pass). **NCC, local NCC and mutual
  information** are scalar losses: L-BFGS with the gradient by autograd through the resampling.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lossfit import transforms as T
from lossfit.engine.loop import Stopping, run
from lossfit.engine.result import FitResult, History, SolverInfo, Status
from lossfit.engine.solvers import resolve
from lossfit.losses import rho_and_weight, robust_loss
from lossfit.registration import metrics as M
from lossfit.registration.image import Image
from lossfit.registration.resample import gaussian_smooth, index_to_normalized, resample, sample

TRANSFORMS = ("translation", "rigid", "similarity", "affine", "projective")
INITS = ("geometry", "mass", "moments", "none")
_FLOAT = torch.float64


@dataclass(frozen=True)
class Level:
    """One pyramid level: its shrink factor, smoothing (voxels of the input), samples and how it ended."""

    shrink: int
    sigma: float
    samples: int
    steps: int
    status: tuple[Status, ...]
    loss: torch.Tensor  # per step (rows) and pair (columns)
    time: float


@dataclass(frozen=True)
class Registration(FitResult):
    """The result of :func:`register`: a :class:`~lossfit.FitResult` plus the world transform and the images.

    Attributes:
        matrix: ``(d+1, d+1)`` float64 (``(B, d+1, d+1)`` for a batch): maps points of the fixed image's world space
            (LPS, mm) to the moving image's world space.
        transform, metric: what was fitted and compared.
        levels: a :class:`Level` per pyramid level, coarse to fine.
        fixed, moving: the input images (lists for a batch).
        warped: the moving image resampled onto the fixed grid (a list for a batch).
    """

    matrix: torch.Tensor | None = None
    transform: str = ""
    metric: str = ""
    levels: tuple[Level, ...] = ()
    fixed: Any = None
    moving: Any = None
    warped: Any = None

    def inverse(self) -> torch.Tensor:
        """The matrix that maps the moving image's world space back to the fixed image's."""
        assert self.matrix is not None
        return torch.linalg.inv(self.matrix)

    def warp(self, image: Image, interpolation: str = "linear", pair: int = 0) -> Image:
        """``image``, living in the moving image's world space, resampled onto the fixed image's grid."""
        assert self.matrix is not None
        fixed = self.fixed[pair] if isinstance(self.fixed, list) else self.fixed
        m = self.matrix[pair] if self.matrix.dim() == 3 else self.matrix
        out = resample(image, fixed, m, interpolation=interpolation)
        assert isinstance(out, Image)
        return out

    def save_transform(self, path: Any, pair: int = 0) -> None:
        """Write the transform as an ITK transform file (.tfm/.txt), readable by SimpleITK and ANTs."""
        from lossfit.registration.export import write_itk_transform

        assert self.matrix is not None
        write_itk_transform(path, self.matrix[pair] if self.matrix.dim() == 3 else self.matrix)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        assert self.matrix is not None
        out["matrix"] = self.matrix.tolist()
        out["convention"] = (
            "matrix maps homogeneous points of the fixed image's world space (LPS, mm) to the moving image's "
            "world space; inverse() maps back"
        )
        out["transform"], out["metric"] = self.transform, self.metric
        out["levels"] = [
            {
                "shrink": lv.shrink,
                "sigma_voxels": lv.sigma,
                "samples": lv.samples,
                "steps": lv.steps,
                "status": [s.name.lower() for s in lv.status],
                "time_s": lv.time,
            }
            for lv in self.levels
        ]
        return out


# ---------------------------------------------------------------------------------------------------------------
# The objective over one level


class _Level:
    """Residuals (mean squares) or scalar losses over the fixed samples of one level, for a batch of pairs.

    Quacks like :class:`lossfit.engine.problem.Objective` for the engine's driver and solvers.
    """

    def __init__(
        self,
        points: torch.Tensor,  # (B, N, d) fixed world points, float64
        values: torch.Tensor,  # (B, N) fixed values
        fixed_ok: torch.Tensor,  # (B, N) fixed mask at the samples
        moving: torch.Tensor,  # (B, C, *spatial) moving values (and world gradients for mse)
        to_normalized: torch.Tensor,  # (B, d+1, d+1) moving world -> normalised
        model_matrix: Any,  # q (B, n) -> M (B, d+1, d+1)
        left: torch.Tensor,  # (B, d+1, d+1): T = L M(q) Q
        right: torch.Tensor,
        metric: str,
        mi_bins: int,
        grid_shape: tuple[int, ...] | None,
        window: int,
        linear_model: bool,
    ) -> None:
        self.points = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # homogeneous
        self.values, self.fixed_ok, self.moving = values, fixed_ok, moving
        self.to_normalized, self.model_matrix, self.left, self.right = to_normalized, model_matrix, left, right
        self.metric, self.bins, self.grid_shape, self.window = metric, mi_bins, grid_shape, window
        self.kind = "residual" if metric == "mse" else "scalar"
        self.d = points.shape[-1]
        self.evals = 0
        self.num_residuals = values.shape[1]
        self.loss_scale = torch.ones(values.shape[0], dtype=_FLOAT, device=values.device)
        self.rho: Any = None
        self.f_scale = torch.ones(values.shape[0], 1, dtype=_FLOAT, device=values.device)
        self.linear_model = linear_model
        self._dt: torch.Tensor | None = None
        self._dt_rows = torch.empty(0, dtype=torch.long)
        if metric == "mi":
            self.ranges = (*M.intensity_range(values, fixed_ok), *_volume_range(moving[:, 0]))
            self.fixed_weights = M.parzen_weights(values, self.ranges[0], self.ranges[1], mi_bins)

    # -- geometry -----------------------------------------------------------------------------------------------
    def _warp(self, q: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """World points in moving space ``Y (B, N, d)``, their homogeneous weight ``w (B, N)`` and normalised
        coordinates ``(B, N, d)``."""
        t = _take(self.left, rows) @ self.model_matrix(q) @ _take(self.right, rows)
        h = _take(self.points, rows) @ t.transpose(-1, -2)
        w = h[..., self.d]
        y = h[..., : self.d] / w.unsqueeze(-1)
        a = _take(self.to_normalized, rows)
        normalized = y @ a[:, : self.d, : self.d].transpose(-1, -2) + a[:, None, : self.d, self.d]
        return y, w, normalized

    def _sampled(self, q: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
        y, w, normalized = self._warp(q, rows)
        out = sample(_take(self.moving, rows), normalized).to(_FLOAT)  # float64 from here: losses sum many samples
        ok = (normalized.detach().abs() <= 1).all(dim=-1) & _take(self.fixed_ok, rows)
        self.evals += 1
        return out, ok.to(out.dtype), y, w

    # -- least squares (mse) --------------------------------------------------------------------------------------
    def weights(self, r: torch.Tensor) -> torch.Tensor | None:
        if self.rho is None:
            return None
        return rho_and_weight(self.rho, r, self._scale(r))[1]

    def cost(self, r: torch.Tensor) -> torch.Tensor:
        if self.rho is None:
            return 0.5 * (r * r).sum(-1)
        return 0.5 * rho_and_weight(self.rho, r, self._scale(r))[0].sum(-1)

    def _scale(self, r: torch.Tensor) -> Any:
        scale = self.f_scale
        return scale if scale.shape[0] == r.shape[0] else scale[: r.shape[0]]

    def set_robust_scale(self, q: torch.Tensor, loss: str) -> None:
        """The robust loss's scale per pair: a multiple of the residuals' robust standard deviation at the level's
        start (1.4826 median absolute residual over the overlap; Huber 1.345, Cauchy 2.385 of those)."""
        self.rho = robust_loss(loss)
        rows = torch.arange(q.shape[0], device=q.device)
        out, ok, _, _ = self._sampled(q, rows)
        r = (out[:, 0] - self.values) * ok
        scales = []
        for row in range(r.shape[0]):
            inside = r[row][ok[row] > 0].abs()
            inside = inside[inside > 0]  # empty background against empty background says nothing about the noise
            mad = float(inside.median()) if inside.numel() else 1.0
            scales.append(max(1.4826 * mad, 1e-12) * {"huber": 1.345, "cauchy": 2.385}.get(loss, 1.0))
        self.f_scale = torch.tensor(scales, dtype=_FLOAT, device=q.device).unsqueeze(1)

    def residual(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out, ok, _, _ = self._sampled(q, rows)
        return ((out[:, 0] - _take(self.values, rows)) * ok).to(q.dtype)

    def residual_and_jacobian(self, q: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, ok, y, w = self._sampled(q, rows)
        d = self.d
        r = (out[:, 0] - _take(self.values, rows)) * ok
        grad = out[:, 1:].transpose(1, 2).to(_FLOAT)  # (B, N, d) world gradient of the moving image at y
        inv_w = (1 / w).unsqueeze(-1)
        # d y_i / d T_lj = (delta_il - y_i delta_dl) x_j / w: the effective gradient over the matrix rows l
        eff = torch.cat([grad * inv_w, -(grad * y).sum(-1, keepdim=True) * inv_w], dim=-1)  # (B, N, d+1)
        outer = (eff.unsqueeze(-1) * _take(self.points, rows).unsqueeze(-2)).reshape(*eff.shape[:2], (d + 1) ** 2)
        jac = outer @ self._matrix_jacobian(q, rows)
        return r.to(q.dtype), (jac * ok.unsqueeze(-1).to(_FLOAT)).to(q.dtype)

    def _matrix_jacobian(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``dT/dq`` as ``(B, (d+1)^2, n)``; constant (and cached) for the models linear in their parameters."""
        if (
            self.linear_model
            and self._dt is not None
            and self._dt.shape[0] == len(rows)
            and torch.equal(self._dt_rows, rows)
        ):
            return self._dt
        k = (self.d + 1) ** 2
        # Central differences of the closed-form model matrix, all parameters and pairs in one call (errors near
        # 1e-10 relative: ample for a Gauss-Newton step; the residuals themselves are exact).
        b, n = q.shape
        h = 1e-5
        steps = h * torch.eye(n, dtype=q.dtype, device=q.device)
        shifted = torch.cat([q.unsqueeze(1) + steps, q.unsqueeze(1) - steps], dim=1).reshape(b * 2 * n, n)
        m = self.model_matrix(shifted).reshape(b, 2, n, k)
        dm = ((m[:, 0] - m[:, 1]) / (2 * h)).transpose(1, 2)  # (B, k, n)
        dm = dm.reshape(q.shape[0], self.d + 1, self.d + 1, -1).permute(0, 3, 1, 2)  # (B, n, d+1, d+1)
        dt = (
            (_take(self.left, rows).unsqueeze(1) @ dm @ _take(self.right, rows).unsqueeze(1))
            .reshape(q.shape[0], -1, k)
            .transpose(1, 2)
        )
        self._dt, self._dt_rows = dt, rows.clone()
        return dt

    # -- scalar losses ----------------------------------------------------------------------------------------------
    def _loss(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out, ok, _, _ = self._sampled(q, rows)
        b, a = out[:, 0], _take(self.values, rows)
        if self.metric == "ncc":
            return M.ncc(a, b, ok)
        if self.metric == "mi":
            lo_a, hi_a, lo_b, hi_b = (_take(v, rows) for v in self.ranges)
            first, weights = self.fixed_weights
            return M.mi(a, b, ok, self.bins, (lo_a, hi_a, lo_b, hi_b), (_take(first, rows), _take(weights, rows)))
        if self.metric == "mse":
            return M.mse(a, b, ok)
        assert self.grid_shape is not None
        shape = (len(rows), *self.grid_shape)
        return M.lncc(a.reshape(shape), b.reshape(shape), ok.reshape(shape), self.window)

    def value(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (self._loss(q, rows) * _take(self.loss_scale, rows)).to(q.dtype)

    def value_and_grad(self, q: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            qq = q.detach().requires_grad_(True)
            f = self._loss(qq, rows) * _take(self.loss_scale, rows)
            (g,) = torch.autograd.grad(f.sum(), qq)
        return f.detach().to(q.dtype), g.to(q.dtype)

    def scale_loss(self, q: torch.Tensor) -> None:
        """Scale each pair's loss so that its largest gradient entry at ``q`` is 1: a first quasi-Newton step then
        moves the image by about a millimetre (the parameters are in millimetres of shift), whatever the metric."""
        rows = torch.arange(q.shape[0], device=q.device)
        self.loss_scale = torch.ones(q.shape[0], dtype=_FLOAT, device=q.device)
        _, g = self.value_and_grad(q, rows)
        self.loss_scale = 1 / g.abs().amax(dim=1).clamp_min(1e-12)


def _take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``t[rows]``, without copying when ``rows`` is every row in order (one pair, or a batch still all running)."""
    if rows.numel() == t.shape[0] and ((rows.numel() == 1 and int(rows[0]) == 0) or bool((rows == _arange(t)).all())):
        return t
    return t[rows]


def _arange(t: torch.Tensor) -> torch.Tensor:
    return torch.arange(t.shape[0], device=t.device)


def _volume_range(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = volume.reshape(volume.shape[0], -1)
    step = max(1, flat.shape[1] // 200_000)
    return M.intensity_range(flat[:, ::step])


# ---------------------------------------------------------------------------------------------------------------
# Input checks and the pyramid


def _as_list(images: Any, argument: str) -> list[Image]:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    for item in items:
        if not isinstance(item, Image):
            raise TypeError(f"`{argument}` must be a lossfit.registration.Image (or a list); got {type(item).__name__}")
    if not items:
        raise ValueError(f"`{argument}` must not be empty")
    return items


def _check_pairs(fixed: list[Image], moving: list[Image]) -> None:
    if len(fixed) != len(moving):
        raise ValueError(f"`fixed` and `moving` must hold as many images; got {len(fixed)} and {len(moving)}")
    for argument, images in (("fixed", fixed), ("moving", moving)):
        for i, image in enumerate(images):
            where = f"`{argument}`" + (f"[{i}]" if len(images) > 1 else "")
            if image.ndim != fixed[0].ndim:
                raise ValueError(f"{where} is {image.ndim}-D but `fixed` is {fixed[0].ndim}-D: both must match")
            if image.shape != images[0].shape:
                raise ValueError(f"{where} has shape {tuple(image.shape)}; a batch needs the same shape throughout")
            data = image.data
            if not bool(torch.isfinite(data).all()):
                raise ValueError(f"{where} holds NaN or infinite voxels; replace them (or mask them) first")
            if float(data.max() - data.min()) == 0:
                raise ValueError(f"{where} is constant: there is no gradient to follow")
            if image.ndim == 3 and image.shape[0] == 1:
                raise ValueError(f"{where} is a single slice (shape {tuple(image.shape)}) but the other is a volume")
            if min(image.shape) < 4:
                raise ValueError(f"{where} has shape {tuple(image.shape)}; each axis needs at least 4 voxels")


def _single_slice(image: Image) -> Image | None:
    """A one-slice volume whose slice lies in the x-y plane (a 2-D NIfTI file, say) as a 2-D image; else None."""
    if image.ndim != 3 or image.shape[0] != 1:
        return None
    direction = torch.tensor(image.direction, dtype=_FLOAT)
    if float(direction[:2, 2].abs().max()) > 1e-9 or float(direction[2, :2].abs().max()) > 1e-9:
        return None
    return Image(image.data[0], spacing=image.spacing[:2], origin=image.origin[:2], direction=direction[:2, :2])


def _pyramid(shape: Sequence[int], levels: int | Sequence[int] | None) -> list[int]:
    if levels is None:
        smallest = min(shape)
        count = 1
        while count < 3 and smallest // 2**count >= 24:
            count += 1
        return [2**k for k in reversed(range(count))]
    if isinstance(levels, int):
        if levels < 1:
            raise ValueError(f"`levels` must be >= 1; got {levels}")
        return [2**k for k in reversed(range(levels))]
    factors = [int(v) for v in levels]
    if not factors or any(v < 1 for v in factors) or factors != sorted(factors, reverse=True):
        raise ValueError(f"`levels` must be shrink factors >= 1, coarse to fine (e.g. (4, 2, 1)); got {levels!r}")
    return factors


def _level_images(
    images: list[Image], shrink: int, dtype: torch.dtype, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed (``sigma`` voxels of the input) and subsampled data ``(B, *shape)`` and the level grids' affines."""
    data = torch.stack([im.data.to(dtype) for im in images]).unsqueeze(1)
    if sigma > 0:  # smoothing computes only the kept voxels (a strided convolution per axis)
        data = gaussian_smooth(data, (sigma,) * (data.dim() - 2), stride=shrink)
    elif shrink > 1:
        index = (slice(None), slice(None), *([slice(None, None, shrink)] * (data.dim() - 2)))
        data = data[index]
    affines = []
    for im in images:
        a = im.affine.clone()
        a[:-1, :-1] *= shrink
        affines.append(a)
    return data[:, 0], torch.stack(affines)


def _gradient_at(data: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude (index units, central differences, clamped at the edges) of ``data (B, *spatial)`` at the
    flat voxel positions ``flat``: ``(B, len(flat))``."""
    shape = data.shape[1:]
    values = data.reshape(data.shape[0], -1)
    total = torch.zeros(data.shape[0], flat.numel(), dtype=data.dtype, device=data.device)
    stride = 1
    for axis in reversed(range(len(shape))):
        n = shape[axis]
        coord = (flat // stride) % n
        up = flat + stride * ((coord + 1).clamp(max=n - 1) - coord)
        down = flat - stride * (coord - (coord - 1).clamp(min=0))
        total += (values[:, up] - values[:, down]) ** 2
        stride *= n
    return total.sqrt()


def _world_gradient(data: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """World-space gradient ``(B, d, *spatial)`` of ``data (B, *spatial)`` on grids with index->world ``affine``."""
    d = data.dim() - 1
    by_index = torch.gradient(data, dim=tuple(range(1, d + 1)))  # along data axes (z, y, x)
    g_index = torch.stack(list(reversed(by_index)), dim=1)  # (B, d, ...) in index order (i, j, k)
    inv_t = torch.linalg.inv(affine[:, :d, :d]).transpose(-1, -2).to(data.dtype)  # dI/dy = A^-T dI/didx
    return torch.einsum("blk,bk...->bl...", inv_t, g_index)


def _centre(image: Image, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A centre (world, float64) and principal axes (columns) of an image, by geometry or intensity mass."""
    d = image.ndim
    if how == "geometry":
        return torch.tensor(image.center, dtype=_FLOAT), torch.eye(d, dtype=_FLOAT)
    data = image.data.to(_FLOAT)
    step = max(1, round((data.numel() / 2e5) ** (1 / d)))
    sub = data[(slice(None, None, step),) * d]
    weight = (sub - sub.min()).reshape(-1)
    index_grid = torch.stack(
        torch.meshgrid(*[torch.arange(0, n, step, dtype=_FLOAT) for n in data.shape], indexing="ij")[::-1], dim=-1
    ).reshape(-1, d)
    world = image.index_to_world(index_grid)
    total = weight.sum().clamp_min(1e-300)
    mean = (weight.unsqueeze(1) * world).sum(0) / total
    centred = world - mean
    cov = (weight.unsqueeze(1) * centred).T @ centred / total
    _, axes = torch.linalg.eigh(cov)
    return mean, axes


def _initial(fixed: Image, moving: Image, init: str, model: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``L`` and ``Q`` of ``T = L M(p) Q`` for one pair: turn about the fixed centre, start from ``init``."""
    d = fixed.ndim
    how = "geometry" if init in ("geometry", "none") else "mass"
    c_f, axes_f = _centre(fixed, how)
    c_m, axes_m = _centre(moving, how)
    if init == "none":
        c_m = c_f
    rot = torch.eye(d, dtype=_FLOAT)
    if init == "moments" and model != "translation":
        best = -math.inf
        for signs in torch.cartesian_prod(*[torch.tensor([1.0, -1.0], dtype=_FLOAT)] * d).reshape(-1, d):
            candidate = axes_m @ torch.diag(signs) @ axes_f.T
            if float(torch.linalg.det(candidate)) > 0 and float(candidate.trace()) > best:
                best, rot = float(candidate.trace()), candidate
    left = torch.eye(d + 1, dtype=_FLOAT)
    left[:d, :d] = rot
    left[:d, d] = c_m
    right = torch.eye(d + 1, dtype=_FLOAT)
    right[:d, d] = -c_f
    return left, right


def _identity_params(model: str, d: int) -> torch.Tensor:
    return T.params(model, torch.eye(d + 1, dtype=_FLOAT))


def _physical_scales(model: str, d: int, fixed: Image, right: torch.Tensor) -> torch.Tensor:
    """Per parameter: 1 / the largest distance (mm) a unit change moves a corner of the fixed image, at identity."""
    corners = torch.cartesian_prod(*[torch.tensor([0.0, n - 1.0], dtype=_FLOAT) for n in fixed.size]).reshape(-1, d)
    world = fixed.index_to_world(corners)
    centred = torch.cat([world, torch.ones(len(world), 1, dtype=_FLOAT)], dim=1) @ right.T

    def moved(p: torch.Tensor) -> torch.Tensor:
        h = centred @ T.matrix(model, p, d).T
        return h[:, :d] / h[:, d : d + 1]

    jac = torch.autograd.functional.jacobian(moved, _identity_params(model, d))  # (corners, d, n)
    reach = jac.norm(dim=1).amax(dim=0)
    return 1 / reach.clamp_min(1e-12)


# ---------------------------------------------------------------------------------------------------------------
# register


def register(
    fixed: Image | Sequence[Image],
    moving: Image | Sequence[Image],
    transform: str = "affine",
    metric: str = "mse",
    *,
    levels: int | Sequence[int] | None = None,
    samples: int = 100_000,
    smoothing: float = 0.0,
    sampling: str = "gradient",
    loss: str = "linear",
    init: str = "geometry",
    initial: Any = None,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    solver: str = "auto",
    bins: int = 32,
    window: int = 9,
    ftol: float = 1e-7,
    xtol: float = 1e-5,
    gtol: float = 1e-8,
    max_steps: int = 200,
    seed: int = 0,
    progress: Any = None,
) -> Registration:
    """Register ``moving`` to ``fixed``: find the world transform ``T`` with ``moving(T x) ~ fixed(x)``.

    Args:
        fixed, moving: :class:`Image` objects of the same dimension (2-D or 3-D), or two lists of them (a batch of
            same-sized pairs, each pair stopping on its own). When every image is a one-slice volume in the x-y plane
            (as 2-D NIfTI files load), they are registered as 2-D images (the matrix is then 3x3).
        transform: ``"translation"``, ``"rigid"``, ``"similarity"``, ``"affine"`` or ``"projective"`` (2-D).
        metric: ``"mse"`` (same modality), ``"ncc"`` (linear intensity change), ``"lncc"`` (local correlation,
            whole grids: slower) or ``"mi"`` (mutual information: different modalities).
        levels: pyramid shrink factors, coarse to fine (default: up to (4, 2, 1), while the coarsest level keeps 24
            voxels per axis), or a count of levels.
        sampling: ``"gradient"`` draws the compared voxels with probability growing with the fixed image's gradient
            (where its content is: edges carry the information about the alignment; flat regions add little but
            cost), ``"random"`` uniformly. Both are seeded.
        smoothing: Gaussian smoothing (voxels) of both images at the finest level (coarser levels smooth by half
            their shrink factor).
        loss: for ``metric="mse"``, ``"linear"`` (plain least squares), ``"huber"`` or ``"cauchy"``: a robust loss
            whose scale follows the residuals' robust spread at the start of each level, for content that one image
            has and the other lacks (a field of view cut off, a fill value, a lesion).
        samples: the most fixed voxels compared at the finest level (a seeded draw; all voxels when fewer);
            a level shrunk by ``s`` compares at most ``samples / s``.
        init: ``"geometry"`` (image centres), ``"mass"`` (intensity centres of mass), ``"moments"`` (centres of mass
            and principal axes) or ``"none"`` (the identity); ignored when ``initial`` (a world matrix, fixed to
            moving) is given.
        fixed_mask, moving_mask: images on the fixed/moving grids; only voxels where they are non-zero count.
        solver: ``"auto"`` (Levenberg-Marquardt for mse, L-BFGS otherwise) or any engine solver name.
        bins: histogram bins for ``mi``; ``window``: box size (voxels) for ``lncc``.
        ftol, xtol, gtol, max_steps: stopping at each level (engine semantics, on scaled parameters).
        seed: seeds the sample choice (same inputs and seed give the same result on CPU).
        progress: called as ``progress(level_index, level_count)`` before each level (for progress bars).

    Returns:
        A :class:`Registration`: ``matrix`` (fixed world -> moving world, float64), ``warped``, ``levels``,
        ``inverse()``, ``warp()``, ``save_transform()``, ``to_dict()``; ``success`` when the finest level converged.
    """
    start = time.perf_counter()
    fixed_list, moving_list = _as_list(fixed, "fixed"), _as_list(moving, "moving")
    batch = isinstance(fixed, (list, tuple))
    if all(_single_slice(im) is not None for im in fixed_list + moving_list):
        fixed_list = [_single_slice(im) or im for im in fixed_list]
        moving_list = [_single_slice(im) or im for im in moving_list]
    _check_pairs(fixed_list, moving_list)
    d = fixed_list[0].ndim
    if transform not in TRANSFORMS:
        raise ValueError(f"`transform` must be one of {', '.join(repr(t) for t in TRANSFORMS)}; got {transform!r}")
    if transform == "projective" and d != 2:
        raise ValueError("`transform='projective'` is for 2-D images")
    if metric not in M.METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(repr(m) for m in M.METRICS)}; got {metric!r}")
    if init not in INITS:
        raise ValueError(f"`init` must be one of {', '.join(repr(i) for i in INITS)}; got {init!r}")
    if sampling not in ("gradient", "random"):
        raise ValueError(f"`sampling` must be 'gradient' or 'random'; got {sampling!r}")
    if loss not in ("linear", "huber", "cauchy"):
        raise ValueError(f"`loss` must be 'linear', 'huber' or 'cauchy'; got {loss!r}")
    if loss != "linear" and metric != "mse":
        raise ValueError(f"`loss={loss!r}` applies to metric='mse' only; got metric={metric!r}")
    if not (isinstance(smoothing, (int, float)) and smoothing >= 0):
        raise ValueError(f"`smoothing` must be a number of voxels >= 0; got {smoothing!r}")
    if not (isinstance(samples, int) and samples >= 64):
        raise ValueError(f"`samples` must be an integer >= 64; got {samples!r}")
    factors = _pyramid(fixed_list[0].shape, levels)
    b = len(fixed_list)
    device = fixed_list[0].device
    dtype = torch.float32 if fixed_list[0].dtype != torch.float64 else torch.float64

    # The transform T = L M(p) Q, p = p_id + s * q.
    lefts, rights = [], []
    for f_img, m_img in zip(fixed_list, moving_list, strict=True):
        if initial is not None:
            m0 = torch.as_tensor(initial, dtype=_FLOAT)
            if m0.shape != (d + 1, d + 1):
                raise ValueError(f"`initial` must be a {d + 1}x{d + 1} matrix; got shape {tuple(m0.shape)}")
            right = torch.eye(d + 1, dtype=_FLOAT)
            right[:d, d] = -torch.tensor(f_img.center, dtype=_FLOAT)
            lefts.append(m0 @ torch.linalg.inv(right))
            rights.append(right)
        else:
            left, right = _initial(f_img, m_img, init, transform)
            lefts.append(left)
            rights.append(right)
    left_t, right_t = torch.stack(lefts).to(device), torch.stack(rights).to(device)
    p_id = _identity_params(transform, d).to(device)
    scale = _physical_scales(transform, d, fixed_list[0], rights[0]).to(device)

    def model_matrix(q: torch.Tensor) -> torch.Tensor:
        return T.matrix(transform, p_id + q * scale, d)

    chosen_name = ("lm" if metric == "mse" else "lbfgs") if solver == "auto" else solver
    generator = torch.Generator().manual_seed(seed)
    q = torch.zeros(b, p_id.numel(), dtype=_FLOAT, device=device)
    done_levels: list[Level] = []
    evaluations = 0  # resamplings of the moving image, over all levels
    history: History | None = None
    outcome = None
    for index, shrink in enumerate(factors):
        if progress is not None:
            progress(index, len(factors))
        level_start = time.perf_counter()
        finest = index == len(factors) - 1
        sigma = shrink / 2 if shrink > 1 else smoothing
        f_data, f_aff = _level_images(fixed_list, shrink, dtype, sigma)
        m_data, m_aff = _level_images(moving_list, shrink, dtype, sigma)
        spatial = tuple(f_data.shape[1:])
        count = math.prod(spatial)
        whole = metric == "lncc"
        budget = max(64, samples // shrink)  # coarse levels only need to get close: fewer samples
        n = count if whole or count <= budget else budget
        # Sorted, so that neighbouring samples read neighbouring memory (much faster resampling of big volumes).
        if n == count:
            chosen = torch.arange(count)
        elif sampling == "gradient":
            # Voxels where the fixed image changes carry the information: draw 4n candidates uniformly, then n of
            # them in proportion to the fixed image's gradient there (central differences, index units).
            candidates = torch.randperm(count, generator=generator)[: min(count, 4 * n)]
            strength = _gradient_at(f_data, candidates.to(device)).mean(0).cpu().double()
            weight = strength + 0.05 * strength.mean() + 1e-12
            pick = torch.multinomial(weight, n, replacement=False, generator=generator)
            chosen = candidates[pick].sort().values
        else:
            chosen = torch.randperm(count, generator=generator)[:n].sort().values
        chosen = chosen.to(device)
        idx = _unravel(chosen, spatial)  # (n, d) in index order, float64
        points = torch.cat([idx, torch.ones(n, 1, dtype=_FLOAT, device=device)], dim=1) @ f_aff.transpose(-1, -2)
        values = f_data.reshape(b, -1)[:, chosen]
        fixed_ok = torch.ones(b, n, dtype=torch.bool, device=device)
        if fixed_mask is not None:
            fm = resample(fixed_mask, fixed_list[0], interpolation="nearest")
            assert isinstance(fm, Image)
            level_mask, _ = _level_images([fm], shrink, dtype, 0.0)
            fixed_ok = fixed_ok & (level_mask.reshape(1, -1)[:, chosen] > 0.5)
        channels = [m_data.unsqueeze(1)]
        if metric == "mse":
            channels.append(_world_gradient(m_data, m_aff.to(device)))
        volume = torch.cat(channels, dim=1)
        if moving_mask is not None:
            mm = resample(moving_mask, moving_list[0], interpolation="nearest")
            assert isinstance(mm, Image)
            level_mmask, _ = _level_images([mm], shrink, dtype, 0.0)
            volume = volume * (level_mmask.unsqueeze(1) > 0.5)
        to_norm = torch.stack(
            [index_to_normalized(spatial, _FLOAT).to(device) @ torch.linalg.inv(a) for a in m_aff.to(device)]
        )
        objective = _Level(
            points[..., :d].to(_FLOAT),
            values,
            fixed_ok,
            volume,
            to_norm,
            model_matrix,
            left_t,
            right_t,
            metric,
            bins,
            spatial if whole else None,
            window,
            transform in ("translation", "affine", "projective"),
        )
        engine_solver = resolve(chosen_name, {})
        if loss != "linear":
            objective.set_robust_scale(q, loss)
        if engine_solver.needs == "gradient":
            objective.scale_loss(q)
        # Coarse levels hand over a start to the next: a loose tolerance; the finest level gets the requested one.
        stop = Stopping(ftol if finest else max(ftol, 1e-5), xtol if finest else max(xtol, 1e-3), gtol, max_steps, None)
        outcome = run(objective, engine_solver, q, stop, record=True)  # type: ignore[arg-type]
        evaluations += objective.evals
        q = outcome.x
        history = outcome.history
        level_status = tuple(Status(c) for c in outcome.status.tolist())
        loss_rows = history.loss if history is not None else torch.empty(0)
        done_levels.append(
            Level(
                shrink,
                sigma,
                n,
                int(outcome.steps.max()),
                level_status,
                loss_rows,
                time.perf_counter() - level_start,
            )
        )
    assert outcome is not None
    final = (left_t @ model_matrix(q) @ right_t).detach().to("cpu", _FLOAT)
    status_list = done_levels[-1].status  # the finest level's statuses are the result's
    failing = [s for s in status_list if not s.success]
    warped = []
    for i in range(b):
        out = resample(moving_list[i], fixed_list[i], final[i])
        assert isinstance(out, Image)
        warped.append(out)
    params = p_id.cpu() + q.cpu() * scale.cpu()
    return Registration(
        params=params if batch else params[0],
        loss=outcome.f.detach().cpu() if batch else outcome.f.detach().cpu()[0],
        success=not failing,
        status=failing[0] if failing else status_list[0],
        statuses=status_list,
        steps=outcome.steps if batch else outcome.steps[0],
        num_steps=sum(level.steps for level in done_levels),
        num_evals=evaluations,
        history=_squeeze(history, batch),
        solver=SolverInfo(chosen_name, {}, f"{'least squares' if metric == 'mse' else 'scalar loss'} ({metric})"),
        time=time.perf_counter() - start,
        matrix=final if batch else final[0],
        transform=transform,
        metric=metric,
        levels=tuple(done_levels),
        fixed=fixed_list if batch else fixed_list[0],
        moving=moving_list if batch else moving_list[0],
        warped=warped if batch else warped[0],
        extras={"level_times_s": [lv.time for lv in done_levels]},
    )


def _unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Continuous indices (i, j[, k]) (float64) of flat positions in data order ``shape`` (z, y, x)."""
    coords = []
    rest = flat
    for n in reversed(shape):
        coords.append(rest % n)
        rest = rest // n
    return torch.stack(coords, dim=-1).to(_FLOAT)


def _squeeze(history: History | None, batch: bool) -> History | None:
    if history is None or batch:
        return history
    return dataclasses.replace(
        history, loss=history.loss[:, 0], grad_norm=history.grad_norm[:, 0], step_norm=history.step_norm[:, 0]
    )


__all__ = ["Level", "Registration", "register"]
