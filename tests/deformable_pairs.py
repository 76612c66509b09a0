"""Known smooth warps of real images, made by SimpleITK alone (an independent resampler), for the deformable tests.

A random displacement ``u`` on the fixed grid (normal vectors on a coarse lattice, interpolated and smoothed by
SimpleITK, scaled to a given longest vector), the fixed image ``source(phi(x))`` with ``phi = [A o] (id + u)``
resampled by SimpleITK through a ``DisplacementFieldTransform``; the truth is ``phi - id`` on the fixed grid.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from lossfit.registration import Image
from registration_pairs import from_sitk, to_sitk


@dataclasses.dataclass
class Warped:
    fixed: Image
    moving: Image
    truth: torch.Tensor  # (*fixed.shape, d) float64, LPS mm: fixed world -> moving world minus identity
    mask: torch.Tensor  # the object on the fixed grid

    def error(self, displacement: torch.Tensor) -> float:
        """Mean end-point error (mm) over the object."""
        return float((displacement.to(torch.float64) - self.truth).norm(dim=-1)[self.mask].mean())

    @property
    def initial(self) -> float:
        return float(self.truth.norm(dim=-1)[self.mask].mean())


def smooth_field(grid, rng: np.random.Generator, lattice: float, sigma: float, longest: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    """``(*grid array shape, d)``: a smooth random world displacement on a SimpleITK grid."""
    import SimpleITK as sitk

    d = grid.GetDimension()
    extent = np.array(grid.GetSpacing()) * (np.array(grid.GetSize()) - 1)
    size = np.ceil(extent / lattice).astype(int) + 3
    direction = np.array(grid.GetDirection()).reshape(d, d)
    coarse = sitk.GetImageFromArray(rng.normal(size=(*size[::-1], d)), isVector=True)
    coarse.SetSpacing([lattice] * d)
    coarse.SetDirection(direction.ravel().tolist())
    coarse.SetOrigin((np.array(grid.GetOrigin()) - direction @ np.full(d, lattice)).tolist())
    reference = sitk.Image(grid.GetSize(), sitk.sitkVectorFloat64, d)
    reference.CopyInformation(grid)
    identity = sitk.Transform(d, sitk.sitkIdentity)
    fine = sitk.Resample(coarse, reference, identity, sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    u = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(fine, sigma)).astype(np.float64)
    return u * (longest / np.linalg.norm(u, axis=-1).max())


def warped_pair(
    source: Image,
    *,
    seed: int,
    lattice: float,
    sigma: float,
    longest: float,
    grid: Image | None = None,
    matrix: np.ndarray | None = None,
    noise: float = 0.0,
) -> Warped:
    """``source`` as the moving image; the fixed image on ``grid`` (default the source's) made by SimpleITK through
    ``x -> matrix (x + u(x))``."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    src = to_sitk(source)
    target = to_sitk(grid if grid is not None else source)
    d = source.ndim
    u = smooth_field(target, rng, lattice, sigma, longest)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in reversed(u.shape[:-1])], indexing="ij"), -1)
    index = np.moveaxis(index, list(range(d)), list(reversed(range(d))))  # data order, index (i, j[, k]) last
    affine = (grid if grid is not None else source).affine.numpy()
    x = index @ affine[:d, :d].T + affine[:d, d]
    total = x + u
    if matrix is not None:
        total = total @ matrix[:d, :d].T + matrix[:d, d]
    truth = total - x
    field = sitk.GetImageFromArray(truth, isVector=True)
    field.CopyInformation(target)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    fixed_s = sitk.Resample(src, target, transform, sitk.sitkBSpline, 0.0, sitk.sitkFloat32)
    fixed = from_sitk(fixed_s)
    clean = fixed.data.clone()
    if noise > 0:
        g = torch.Generator().manual_seed(seed)
        fixed = fixed.with_data(fixed.data + noise * float(clean.max() - clean.min()) * torch.randn(
            fixed.shape, generator=g))  # fmt: skip
    mask = clean > 0.15 * float(clean.max())
    return Warped(fixed, source, torch.from_numpy(truth), mask)
