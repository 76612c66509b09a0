"""One pyramid level of a deformable registration: the images of a batch of pairs and the metric of a field.

The fixed level is a grid of its own (the fixed image smoothed and subsampled, :mod:`lossfit.registration.pyramid`);
the moving level keeps the moving image's grid (smoothed and subsampled the same way). A displacement ``u`` on the
fixed level's grid (channel-first, world mm; :mod:`.fields`) maps the fixed world point ``x`` to the moving world
point ``A (x + u(x))``, with ``A`` the affine stage's matrix. Every metric is a mean over one set of voxels fixed for
the level: those inside the fixed mask that the affine stage alone maps inside the moving image, ``MARGIN`` voxels
from its border (and onto its mask). A
point that the field pushes beyond the moving image counts with the value 0 there (as ITK's resampling fills), so a
field cannot drop a voxel from the metric by pushing it out of view.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import torch
import torch.nn.functional as F

from lossfit.registration import metrics as M
from lossfit.registration import pyramid as P
from lossfit.registration.deformable.fields import Grid, matvec, warp_on, world_gradient
from lossfit.registration.image import Image
from lossfit.registration.resample import world_to_normalized

GRADIENT_FLOOR = 1e-2  # of the mean squared fixed gradient: the demons step's damping floor (see .greedy)
_INSIDE = 1 + 1e-6
MARGIN = 1.5  # voxels of the moving level: fixed voxels mapped closer than this to its border do not count
Ranges = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor
]  # normalised coordinates of the first and last voxel centres are -1 and 1


@dataclasses.dataclass
class LevelPair:
    """The level's data for ``B`` pairs (see the module docstring)."""

    grid: Grid
    shrink: int
    fixed: torch.Tensor  # (B, *shape)
    fixed_gradient: torch.Tensor  # (B, d, *shape), world
    fixed_mask: torch.Tensor | None  # (B, *shape) bool
    moving: torch.Tensor  # (B, C, *moving shape): values, then the mask when there is one
    has_mask: bool
    to_moving: torch.Tensor  # (B, d+1, d+1): fixed world (after the displacement) -> moving normalised
    metric: str
    bins: int
    window: int
    ranges: Ranges | None = None  # the mutual information's intensity ranges, set once
    gradient_floor: torch.Tensor | None = None  # (B,): GRADIENT_FLOOR times the mean |grad I_f|^2 that counts

    @classmethod
    def build(
        cls,
        fixed: list[Image],
        moving: list[Image],
        affine: torch.Tensor,
        shrink: int,
        sigma: float,
        metric: str,
        *,
        fixed_mask: torch.Tensor | None,
        moving_mask: torch.Tensor | None,
        bins: int,
        window: int,
        dtype: torch.dtype | None = None,
    ) -> LevelPair:
        """The level shrunk by ``shrink`` (smoothing ``sigma`` voxels of the input) for pairs with the affine stage
        ``affine (B, d+1, d+1)`` (fixed world -> moving world), computed in ``dtype`` (default: float64 for float64
        images, else float32)."""
        d, device = fixed[0].ndim, fixed[0].device
        if dtype is None:
            dtype = torch.float64 if fixed[0].dtype == torch.float64 else torch.float32
        f_data, f_aff = P.level_images(fixed, shrink, dtype, sigma)
        m_data, m_aff = P.level_images(moving, shrink, dtype, sigma)
        grid = Grid.of(f_aff[0], tuple(f_data.shape[1:]), dtype, device)
        channels = [m_data.unsqueeze(1)]
        if moving_mask is not None:
            level = moving_mask[(slice(None, None, shrink),) * d].to(dtype)
            channels.append(level.expand(len(moving), *m_data.shape[1:]).unsqueeze(1))
        to_norm = torch.stack(
            [world_to_normalized(Image.from_affine(m_data[i], m_aff[i].cpu())) for i in range(len(moving))]
        )
        to_moving = (to_norm @ affine.to(torch.float64).cpu()).to(device, dtype)
        mask = None
        if fixed_mask is not None:
            mask = fixed_mask[(slice(None, None, shrink),) * d].to(device).expand_as(f_data)
        out = cls(
            grid, shrink, f_data, world_gradient(grid, f_data), mask, torch.cat(channels, 1),
            moving_mask is not None, to_moving, metric, bins, window,
        )  # fmt: skip
        values, _ = out.warp(torch.zeros(len(fixed), d, *grid.shape, dtype=dtype, device=device))
        inside = out.inside_margin()
        out.fixed_mask = inside if mask is None else inside & mask  # the voxels that count, for this level
        w = out.fixed_mask.to(dtype)
        squared = (out.fixed_gradient**2).sum(1)
        out.gradient_floor = GRADIENT_FLOOR * (w * squared).flatten(1).sum(-1) / w.flatten(1).sum(-1).clamp_min(1)
        if metric == "mi":
            flat = out.fixed_mask.flatten(1)
            out.ranges = (
                *M.intensity_range(f_data.flatten(1), flat),
                *M.intensity_range(values.flatten(1), flat),
            )
        return out

    @property
    def batch(self) -> int:
        return self.fixed.shape[0]

    def take(self, rows: torch.Tensor) -> LevelPair:
        """The level for the pairs ``rows`` only."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        ranges = None if self.ranges is None else cast(Ranges, tuple(r[rows] for r in self.ranges))
        return dataclasses.replace(
            self,
            fixed=self.fixed[rows],
            fixed_gradient=self.fixed_gradient[rows],
            fixed_mask=pick(self.fixed_mask),
            gradient_floor=pick(self.gradient_floor),
            moving=self.moving[rows],
            to_moving=self.to_moving[rows],
            ranges=ranges,
        )

    def warp(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The moving image at ``A (x + u(x))`` on the fixed level's grid (0 beyond it),
        ``(B, *shape)``, and whether each point falls inside the moving image (and its mask), ``(B, *shape)``."""
        d = self.grid.ndim
        points = self.grid.world + u
        m = self.to_moving.to(u.dtype)
        normalized = matvec(m[:, :d, :d], points, m[:, :d, d])  # channel-first
        out = F.grid_sample(self.moving.to(u.dtype), normalized.movedim(1, -1), mode="bilinear",
                            padding_mode="zeros", align_corners=True)  # fmt: skip
        inside = normalized.detach().abs().amax(dim=1) <= _INSIDE
        if self.has_mask:
            inside = inside & (out[:, -1].detach() > 0.5)
        return out[:, 0], inside

    def inside_margin(self) -> torch.Tensor:
        """The fixed voxels that the affine stage alone maps at least ``MARGIN`` voxels inside the moving level's
        grid (and onto its mask): near its border, its zero surround would pull the field."""
        d = self.grid.ndim
        m = self.to_moving
        normalized = matvec(m[:, :d, :d], self.grid.world.to(m.dtype).expand(self.batch, *self.grid.world.shape[1:]),
                            m[:, :d, d])  # fmt: skip
        sizes = self.moving.shape[2:][::-1]  # index order (i, j[, k])
        limit = torch.tensor([1 - 2 * MARGIN / max(n - 1, 1) for n in sizes], dtype=m.dtype, device=m.device)
        inside = (normalized.abs() <= limit.reshape(1, d, *([1] * d))).all(dim=1)
        if self.has_mask:
            looked = F.grid_sample(self.moving[:, -1:].to(m.dtype), normalized.movedim(1, -1), mode="bilinear",
                                   padding_mode="zeros", align_corners=True)  # fmt: skip
            inside = inside & (looked[:, 0] > 0.5)
        return inside

    def weight(self, inside: torch.Tensor) -> torch.Tensor:
        """The voxels that count (the level's set, whatever ``inside`` says), as a float weight ``(B, *shape)``."""
        assert self.fixed_mask is not None  # set by build
        return self.fixed_mask.to(self.fixed.dtype)

    def warp_fixed(self, u: torch.Tensor) -> torch.Tensor:
        """The fixed level at ``x + u(x)`` on its own grid, ``(B, *shape)`` (the symmetric model's half-way image;
        the nearest border value beyond the grid)."""
        return warp_on(self.grid, self.fixed.unsqueeze(1).to(u.dtype), u)[:, 0]

    def value(self, u: torch.Tensor, fixed_u: torch.Tensor | None = None) -> torch.Tensor:
        """The metric of the field ``u`` (lower is better), ``(B,)``; differentiable in ``u``. With ``fixed_u`` the
        fixed image is pulled through that field too (the symmetric model: both images meet half-way)."""
        warped, inside = self.warp(u)
        w = self.weight(inside)
        fixed = self.fixed if fixed_u is None else self.warp_fixed(fixed_u)
        return metric_value(self.metric, fixed, warped, w, self.bins, self.window, self.ranges)


def metric_value(
    metric: str,
    fixed: torch.Tensor,
    warped: torch.Tensor,
    weight: torch.Tensor,
    bins: int,
    window: int,
    ranges: Ranges | None = None,
) -> torch.Tensor:
    """A metric over whole grids ``(B, *shape)`` with a weight of the voxels that count: ``(B,)``."""
    if metric == "mse":
        count = weight.flatten(1).sum(-1).clamp_min(1.0)
        return (weight * (warped - fixed) ** 2).flatten(1).sum(-1) / count
    if metric == "lncc":
        return M.lncc(fixed, warped, weight, window)
    if metric == "ncc":
        return M.ncc(fixed.flatten(1), warped.flatten(1), weight.flatten(1))
    if ranges is None:
        flat = weight.flatten(1) > 0
        ranges = (*M.intensity_range(fixed.flatten(1), flat), *M.intensity_range(warped.detach().flatten(1), flat))
    return M.mi(fixed.flatten(1), warped.flatten(1), weight.flatten(1), bins, ranges)


__all__ = ["LevelPair", "metric_value"]
