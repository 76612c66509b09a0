"""Resampling in world coordinates, differentiable in the transform and the image.

A transform here is a ``(d+1, d+1)`` homogeneous matrix that maps points of the *output* grid's world space to the
*input* image's world space (the direction resampling needs: each output voxel looks up where it comes from).
Projective matrices (a last row other than ``(0, ..., 0, 1)``) divide by the homogeneous coordinate.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from lossfit.registration.image import Image

INTERPOLATIONS = ("linear", "nearest")


def index_to_normalized(image_shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The ``(d+1, d+1)`` matrix taking a continuous index (i, j[, k]) to ``grid_sample``'s normalised coordinates
    (``align_corners=True``: -1 and 1 at the centres of the first and last voxels)."""
    size = list(reversed(image_shape))  # (nx, ny[, nz])
    d = len(size)
    m = torch.eye(d + 1, dtype=dtype)
    for axis, n in enumerate(size):
        m[axis, axis] = 2.0 / max(n - 1, 1)
        m[axis, d] = -1.0 if n > 1 else 0.0
    return m


def world_to_normalized(image: Image) -> torch.Tensor:
    """The ``(d+1, d+1)`` float64 matrix taking world points (LPS, mm) to ``image``'s normalised coordinates."""
    return index_to_normalized(image.shape, torch.float64) @ torch.linalg.inv(image.affine)


def apply_homogeneous(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """``matrix (..., d+1, d+1)`` applied to points ``(..., N, d)``, dividing by the last coordinate when projective."""
    d = points.shape[-1]
    out = points @ matrix[..., :d, :d].transpose(-1, -2) + matrix[..., None, :d, d]
    bottom = matrix[..., d, :]
    if bool((bottom[..., :d] != 0).any()) or bool((bottom[..., d] != 1).any()):
        w = points @ bottom[..., :d].unsqueeze(-1) + bottom[..., None, d : d + 1]
        out = out / w
    return out


def sample(
    volume: torch.Tensor, normalized: torch.Tensor, interpolation: str = "linear", padding: str = "zeros"
) -> torch.Tensor:
    """Values of ``volume (B, C, *spatial)`` at normalised points ``(B, N, d)``: ``(B, C, N)``.

    Outside the image the value is 0 (``padding="zeros"``) or the nearest edge value (``"border"``).
    """
    b, n, d = normalized.shape
    grid = normalized.reshape(b, n, *([1] * (d - 1)), d)
    mode = "bilinear" if interpolation == "linear" else "nearest"
    out = F.grid_sample(volume, grid.to(volume.dtype), mode=mode, padding_mode=padding, align_corners=True)
    return out.reshape(b, volume.shape[1], n)


def inside(normalized: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Whether normalised points ``(..., d)`` fall within the image (``margin`` in normalised units shrinks it)."""
    return (normalized.abs() <= 1 - margin).all(dim=-1)


def resample(
    image: Image,
    reference: Image,
    matrix: Any = None,
    *,
    interpolation: str = "linear",
    default: float = 0.0,
    mask: bool = False,
) -> Image | tuple[Image, torch.Tensor]:
    """``image`` resampled onto ``reference``'s grid: the output at a reference voxel with world point ``x`` is
    ``image`` at ``matrix @ x`` (``matrix`` maps reference world to image world; the identity when None).

    Differentiable in ``image.data`` and ``matrix`` (linear interpolation). ``nearest`` is for label images.
    Points outside ``image`` get ``default``; with ``mask=True`` the boolean mask of points inside comes back too.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"`interpolation` must be one of {INTERPOLATIONS}; got {interpolation!r}")
    if not isinstance(image, Image) or not isinstance(reference, Image):
        raise TypeError("`image` and `reference` must be lossfit.registration.Image objects")
    if image.ndim != reference.ndim:
        raise ValueError(f"`image` is {image.ndim}-D but `reference` is {reference.ndim}-D")
    d = reference.ndim
    dtype = image.dtype
    m = torch.eye(d + 1, dtype=torch.float64) if matrix is None else torch.as_tensor(matrix)
    if m.shape != (d + 1, d + 1):
        raise ValueError(f"`matrix` must be {d + 1}x{d + 1}; got shape {tuple(m.shape)}")
    # reference normalised coordinates -> reference world -> image world -> image normalised coordinates
    to_world = reference.affine @ torch.linalg.inv(index_to_normalized(reference.shape, torch.float64))
    total = world_to_normalized(image).to(m.dtype) @ m @ to_world.to(m.dtype)
    volume = image.data.reshape(1, 1, *image.shape)
    projective = not torch.equal(total[d, :d].detach(), torch.zeros(d, dtype=total.dtype))
    if projective:
        points = _normalized_grid(reference.shape, total.dtype)
        grid = apply_homogeneous(total, points).reshape(1, *reference.shape, d)
    else:
        theta = total[:d, :].unsqueeze(0).to(dtype)
        size = [1, 1, *reference.shape]
        grid = F.affine_grid(theta, size, align_corners=True)
    mode = "bilinear" if interpolation == "linear" else "nearest"
    out = F.grid_sample(volume, grid.to(dtype), mode=mode, padding_mode="zeros", align_corners=True)
    values = out.reshape(reference.shape)
    valid = (grid.abs() <= 1 + 1e-6).all(dim=-1).reshape(reference.shape)
    if default != 0.0:
        values = torch.where(valid, values, torch.full_like(values, default))
    result = reference.with_data(values)
    return (result, valid) if mask else result


def _normalized_grid(shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    axes = [torch.linspace(-1, 1, n, dtype=dtype) if n > 1 else torch.zeros(1, dtype=dtype) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")  # in data order (z, y, x)
    return torch.stack(list(reversed(mesh)), dim=-1).reshape(1, -1, len(shape))


def gaussian_smooth(data: torch.Tensor, sigmas: tuple[float, ...], stride: int = 1) -> torch.Tensor:
    """Separable Gaussian smoothing of ``(B, C, *spatial)`` with a standard deviation per spatial axis, in voxels
    (axes in data order); edges replicate. A sigma of 0 leaves that axis alone. With ``stride`` > 1 only every
    ``stride``-th voxel along each axis is computed and returned (starting with the first): ``smooth(x)[::stride]``."""
    d = len(sigmas)
    conv = F.conv2d if d == 2 else F.conv3d
    b, c = data.shape[:2]
    out = data.reshape(b * c, 1, *data.shape[2:])
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            if stride > 1:
                out = out[(slice(None),) * (2 + axis) + (slice(None, None, stride),)]
            continue
        radius = max(1, math.ceil(3 * sigma))
        x = torch.arange(-radius, radius + 1, dtype=data.dtype, device=data.device)
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        shape = [1, 1] + [1] * d
        shape[2 + axis] = kernel.numel()
        pad = [0, 0] * d
        pad[2 * (d - 1 - axis)] = pad[2 * (d - 1 - axis) + 1] = radius  # F.pad lists the last axis first
        steps = [1] * d
        steps[axis] = stride
        out = conv(F.pad(out, pad, mode="replicate"), kernel.reshape(shape), stride=steps)
    return out.reshape(b, c, *out.shape[2:])
