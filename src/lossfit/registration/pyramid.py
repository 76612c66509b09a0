"""The pyramid: shrink factors, the smoothed and subsampled images of each level, and the fixed samples compared.

Convention: a level shrunk by ``s`` keeps every ``s``-th voxel along each axis, starting with the first, so its
index ``i`` is the input's index ``s i`` and its index-to-world affine has its first ``d`` columns times ``s``.
Each image keeps its own grid (shape, spacing, direction, origin): nothing here assumes that two images share one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lossfit.registration.image import Image
from lossfit.registration.resample import gaussian_smooth

_FLOAT = torch.float64


def shrink_factors(shape: Sequence[int], levels: int | Sequence[int] | None, coarsest: int = 16) -> list[int]:
    """Shrink factors, coarse to fine: by default up to (4, 2, 1) while the coarsest level keeps ``coarsest`` voxels
    per axis; a count of levels gives powers of two; a sequence is checked and returned."""
    if levels is None:
        smallest = min(shape)
        count = 1
        while count < 3 and smallest // 2**count >= coarsest:
            count += 1
        return [2**k for k in reversed(range(count))]
    if isinstance(levels, bool) or not isinstance(levels, (int, Sequence)):
        raise TypeError(f"`levels` must be a count or a sequence of shrink factors; got {type(levels).__name__}")
    if isinstance(levels, int):
        if levels < 1:
            raise ValueError(f"`levels` must be >= 1; got {levels}")
        return [2**k for k in reversed(range(levels))]
    factors = [int(v) for v in levels]
    if not factors or any(v < 1 for v in factors) or factors != sorted(factors, reverse=True):
        raise ValueError(f"`levels` must be shrink factors >= 1, coarse to fine (e.g. (4, 2, 1)); got {levels!r}")
    return factors


def level_images(
    images: list[Image], shrink: int, dtype: torch.dtype, sigma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed (``sigma`` voxels of the input) and subsampled data ``(B, *shape)`` of same-shaped images, and the
    level grids' index-to-world affines ``(B, d+1, d+1)``. An image given several times (the reference of a
    motion correction, one per volume) is smoothed once."""
    position: dict[int, int] = {}  # id of an image -> its row among the distinct ones
    distinct: list[Image] = []
    for im in images:
        if id(im) not in position:
            position[id(im)] = len(distinct)
            distinct.append(im)
    unique = [position[id(im)] for im in images]
    data = torch.stack([im.data.to(dtype) for im in distinct]).unsqueeze(1)
    if sigma > 0:
        data = gaussian_smooth(data, (sigma,) * (data.dim() - 2), stride=shrink)
    elif shrink > 1:
        index = (slice(None), slice(None), *([slice(None, None, shrink)] * (data.dim() - 2)))
        data = data[index]
    if len(distinct) < len(images):
        data = data[torch.tensor(unique)]
    affines = []
    for im in images:
        a = im.affine.clone()
        a[:-1, :-1] *= shrink
        affines.append(a)
    return data[:, 0], torch.stack(affines)


def draw_samples(
    data: torch.Tensor, budget: int, sampling: str, generator: torch.Generator, whole: bool = False
) -> torch.Tensor:
    """Flat positions (sorted, so that neighbouring samples read neighbouring memory) of the voxels to compare.

    All of them when ``whole`` or when there are no more than ``budget``. ``"gradient"`` draws ``4 budget``
    candidates uniformly, then ``budget`` of them in proportion to the fixed image's gradient there (edges carry the
    information about the alignment); ``"random"`` draws uniformly. Seeded by ``generator``.
    """
    count = data[0].numel()
    if whole or count <= budget:
        return torch.arange(count, device=data.device)
    if sampling == "gradient":
        candidates = torch.randperm(count, generator=generator)[: min(count, 4 * budget)]
        strength = gradient_at(data, candidates.to(data.device)).mean(0).cpu().double()
        weight = strength + 0.05 * strength.mean() + 1e-12
        pick = torch.multinomial(weight, budget, replacement=False, generator=generator)
        chosen = candidates[pick].sort().values
    else:
        chosen = torch.randperm(count, generator=generator)[:budget].sort().values
    return chosen.to(data.device)


def gradient_at(data: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
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


def world_gradient(data: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """World-space gradient ``(B, d, *spatial)`` of ``data (B, *spatial)`` on grids with index->world ``affine``."""
    d = data.dim() - 1
    by_index = torch.gradient(data, dim=tuple(range(1, d + 1)))  # along data axes (z, y, x)
    g_index = torch.stack(list(reversed(by_index)), dim=1)  # (B, d, ...) in index order (i, j, k)
    inv_t = torch.linalg.inv(affine[:, :d, :d]).transpose(-1, -2).to(data.dtype)  # dI/dy = A^-T dI/didx
    return torch.einsum("blk,bk...->bl...", inv_t, g_index)


def patch_offsets(window: int, d: int, points: int = 5) -> torch.Tensor:
    """Index offsets ``(K, d)`` (float64) of a box of ``window`` voxels per axis, every ``ceil(window / points)``-th
    voxel (a 9-voxel box: offsets -4, -2, 0, 2, 4 along each axis, 125 points in 3-D)."""
    step = max(1, -(-window // points))
    along = torch.arange(-(window // 2), window // 2 + 1, step, dtype=_FLOAT)
    return torch.cartesian_prod(*[along] * d).reshape(-1, d)


def corner_indices(image: Image) -> torch.Tensor:
    """The continuous indices (i, j[, k]) of an image's corner voxel centres, ``(2^d, d)`` float64."""
    return torch.cartesian_prod(*[torch.tensor([0.0, n - 1.0], dtype=_FLOAT) for n in image.size]).reshape(
        -1, image.ndim
    )


def ravel(index: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Flat positions in data order ``shape`` (z, y, x) of integer-valued indices (i, j[, k]) ``(n, d)``, clamped
    onto the grid."""
    flat = torch.zeros(index.shape[0], dtype=torch.long, device=index.device)
    for axis, n in enumerate(shape):  # data axis 0 is the last index coordinate
        coordinate = index[:, len(shape) - 1 - axis].round().long().clamp(0, n - 1)
        flat = flat * n + coordinate
    return flat


def unravel(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Continuous indices (i, j[, k]) (float64) of flat positions in data order ``shape`` (z, y, x)."""
    coords = []
    rest = flat
    for n in reversed(shape):
        coords.append(rest % n)
        rest = rest // n
    return torch.stack(coords, dim=-1).to(_FLOAT)
