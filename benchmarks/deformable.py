"""Deformable registration: lossfit vs SimpleITK vs ANTsPy vs torchreg vs FireANTs on known smooth warps, one process.

Every case is a real image and a known smooth warp of it, made with SimpleITK and numpy only (nothing from lossfit):
a random displacement field ``u`` on the fixed grid (seeded by ``--seed``: normal vectors on a coarse lattice, 10 mm
apart in 2-D and 20 mm in 3-D, interpolated and smoothed by a Gaussian of 4 / 8 mm; its longest vector over the
object is 4 pixels in 2-D, 6 mm in 3-D, and ``det(I + grad u) > 0.2`` everywhere), the fixed image
``fixed(x) = source(phi(x))`` resampled by SimpleITK (cubic B-spline; linear from the 1 mm template) through
``phi = id + u`` (for ``mni2mm_rigid``: ``phi = R o (id + u)`` with a rigid ``R``), the moving image the source as it
is; both get Gaussian noise of 1% of the source's range. The answer is ``phi - id`` on the fixed grid.

- ``ct2d``: pydicom's ``CT_small.dcm`` read by SimpleITK (128 x 128, 0.66 mm); errors in mm and pixels.
- ``mni2mm``: nilearn's MNI152 2009a T1 (the 1 mm file shipped inside nilearn) averaged over 2 x 2 x 2 blocks by
  SimpleITK's ``BinShrink`` (98 x 116 x 94, 2 mm).
- ``mni2mm_rigid``: the same, with a rigid misalignment composed after the warp (5 degrees about a random axis
  through the centre, 6 mm in a random direction).
- ``mni_grids``: the moving image on the 2 mm grid, the fixed one sampled from the 1 mm template (smoothed by
  0.4 of its spacing) on a grid of its own: 2.5 x 2 x 3 mm, turned by a few degrees about each axis, a field of view
  of 86-94% of the head's, off centre by up to 5 mm.

The contract for a displacement field (every tool's answer is converted to it): an array of shape
``(*fixed array shape, d)`` (the layout of ``SimpleITK.GetArrayFromImage`` of a displacement field on the fixed
grid), components in world order (x, y[, z]), LPS mm, mapping the fixed world point ``x`` to the moving world point
``x + u(x)`` (ITK's ``DisplacementFieldTransform``): the total mapping, including any affine stage.

Metrics over the mask (the fixed image's object: Otsu threshold of the noise-free fixed image, holes filled, only
points whose true image lies inside the moving grid): mean and 95th percentile of the end-point error
``|u_est(x) - u_true(x)|``; the same for ``u_est = 0`` (before registration); the fraction of mask voxels where the
estimated map folds (``det(I + du/dx) <= 0``, derivatives by central differences through spacing and direction);
for tools that return an inverse map (lossfit), the inverse consistency: the mean of ``|u(x) + w(x + u(x))|`` over
the mask, ``w`` the inverse field on the moving grid interpolated by SimpleITK;
wall time of the registration call alone (median of ``--repeat``; the conversion of its answer to a dense field is
not timed); the peak resident memory above the level before the call (psutil, polled every 50 ms from another
process). Before its first timed call in each dimension, every tool registers a small synthetic pair once, untimed
(torch's first call in a process costs about a second). The last column divides by the time of the fastest peer
(any tool but lossfit) whose mean error is under half the error before registration.

Tools (their answers become dense fields on the fixed grid with SimpleITK's ``TransformToDisplacementFieldFilter``):

- ``demons`` / ``symdemons``: SimpleITK ``DiffeomorphicDemonsRegistrationFilter`` /
  ``FastSymmetricForcesDemonsRegistrationFilter`` in a 3-level pyramid (shrink 4/2/1 after Gaussian smoothing of
  2/1/0 voxels; 50/40/20 iterations; the field smoothed by 1.5 voxels after each update; the coarse field resampled
  onto the next level as its start). Demons compare the images voxel by voxel on one grid: the moving image is first
  resampled onto the fixed grid (through the rigid stage's answer where the case has a rigid misalignment).
- ``bspline``: SimpleITK ``ImageRegistrationMethod`` with ``BSplineTransformInitializer`` (a cubic mesh refined
  1/2/4 times to about 10 mm (2-D) / 20 mm (3-D) between control points at the finest level), mean squares on random
  samples (2-D: 50% at every level; 3-D: 10/3/1%), LBFGS2 (50 / 30 iterations per level), shrink 4/2/1, smoothing
  2/1/0 voxels; the rigid stage as its moving initial transform where the case has a rigid misalignment. (LBFGSB
  cannot follow the mesh refinement, and with a fixed 15 mm mesh it took over 15 minutes on ``mni2mm``: each sample
  costs in proportion to the number of control points.)
- the rigid stage (SimpleITK, for ``demons``, ``symdemons``, ``bspline`` on ``mni2mm_rigid``; timed with them):
  ``Euler3DTransform`` centred by geometry, mean squares on 10% random samples, RegularStepGradientDescent (step 2 to
  1e-4, 200 iterations) with physical-shift scales, shrink 4/2/1, smoothing 2/1/0 voxels.
- ``ants-syn`` / ``ants-syncc``: ANTsPy ``ants.registration(type_of_transform="SyN" | "SyNCC")`` with its defaults
  (both include an affine stage; SyN: Mattes, 40/20/0 iterations; SyNCC: rigid + affine + SyN with CC radius 4
  and up to 2100/1200/1200/20 iterations, which did not finish in 15 minutes on ``mni2mm``: skipped on 3-D cases
  unless ``--slow``),
  ``random_seed`` set through ``ants.config``, intensities shifted so that the minimum is 0 (its centre-of-mass
  start weighs voxels by intensity). ``fwdtransforms`` = [warp, affine]: the total map is
  ``x -> A(x + w(x))``, read with SimpleITK as a composite transform.
- ``torchreg``: torchreg ``SyNRegistration`` with its defaults (scales 4/2/1, 30/30/10 Adam steps, MSE, linear
  elasticity), intensities scaled to [0, 1], 3-D only (its smoothing is a 3-D convolution). It ignores spacing: the
  moving image is resampled onto the fixed grid, and for the rigid case torchreg's own ``AffineRegistration`` (its
  defaults) runs first. Its flow maps the fixed grid's normalised coordinates (``align_corners=True``) to the moving
  ones, converted to world through the fixed grid's geometry.
- ``fireants``: FireANTs (CPU, ``device="cpu"``, no fused CUDA ops) with the settings of its quickstart for a 2 mm
  brain pair: ``AffineRegistration`` (scales 4/2/1, 200/100/50 Adam steps, lr 3e-3, CC kernel 5) then
  ``GreedyRegistration`` (scales 4/2/1, 200/100/25 steps, CC kernel 5, compositive, ``smooth_grad_sigma=1``, Adam
  lr 0.5, started from the affine). ``get_warped_coordinates`` gives the moving image's normalised coordinates at
  every fixed voxel, converted to world through the moving image's ``torch2phy``.
- ``lossfit``: ``lossfit.registration.register(fixed, moving, transform="deformable")`` on
  ``lossfit.registration.Image`` (converted with ``tests/registration_pairs.py::from_sitk``); ``result.displacement``
  is a tensor of the contract's shape on the fixed grid, the total map fixed world -> moving world. Where that API
  is not there yet (ImportError, TypeError, AttributeError, or "deformable" refused as a transform), the row says
  "lossfit: not available". ``lossfit-sym``: the same with ``symmetric=True`` (both images pulled half-way).

Run: ``python benchmarks/deformable.py [--cases ct2d,mni2mm,mni2mm_rigid,mni_grids]
[--tools demons,symdemons,bspline,ants-syn,ants-syncc,torchreg,fireants,lossfit,lossfit-sym] [--threads 2] [--repeat 1]
[--seed 0] [--json PATH] [--slow]``. A full run of the peers takes about 15-20 minutes on 2 busy cores (FireANTs on the
CPU and torchreg take minutes per 3-D case).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

CASES = ("ct2d", "mni2mm", "mni2mm_rigid", "mni_grids")
TOOLS = ("demons", "symdemons", "bspline", "ants-syn", "ants-syncc", "torchreg", "fireants", "lossfit", "lossfit-sym")
SLOW = False  # --slow: also ANTs SyNCC on 3-D cases
NAMES = {
    "demons": "SimpleITK diffeomorphic demons",
    "symdemons": "SimpleITK fast symmetric forces demons",
    "bspline": "SimpleITK B-spline",
    "ants-syn": "ANTsPy SyN",
    "ants-syncc": "ANTsPy SyNCC",
    "torchreg": "torchreg SyN",
    "fireants": "FireANTs (CPU)",
    "lossfit": "lossfit",
    "lossfit-sym": "lossfit, symmetric",
}


# --- geometry helpers (numpy and SimpleITK only) -------------------------------------------------------------------
def index_to_world_matrix(image: sitk.Image) -> np.ndarray:
    d = image.GetDimension()
    return np.array(image.GetDirection()).reshape(d, d) * np.array(image.GetSpacing())


def world_points(image: sitk.Image) -> np.ndarray:
    """The world point of every voxel, ``(*array shape, d)``, components x, y[, z]."""
    shape = image.GetSize()[::-1]
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")[::-1], axis=-1)
    return index @ index_to_world_matrix(image).T + np.array(image.GetOrigin())


def inside(image: sitk.Image, points: np.ndarray) -> np.ndarray:
    """Whether world points lie within the image's grid (between its first and last voxel centres)."""
    index = (points - np.array(image.GetOrigin())) @ np.linalg.inv(index_to_world_matrix(image)).T
    size = np.array(image.GetSize(), dtype=np.float64)
    return np.all((index >= 0) & (index <= size - 1), axis=-1)


def field_image(field: np.ndarray, grid: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(field, dtype=np.float64), isVector=True)
    image.CopyInformation(grid)
    return image


def field_transform(field: np.ndarray, grid: sitk.Image) -> sitk.DisplacementFieldTransform:
    return sitk.DisplacementFieldTransform(field_image(field, grid))


def dense_field(transform: sitk.Transform, grid: sitk.Image) -> np.ndarray:
    """``T(x) - x`` at every voxel of ``grid``, in the contract's layout."""
    f = sitk.TransformToDisplacementFieldFilter()
    f.SetReferenceImage(grid)
    f.SetOutputPixelType(sitk.sitkVectorFloat64)
    return sitk.GetArrayFromImage(f.Execute(transform)).astype(np.float64)


def jacobian_determinant(field: np.ndarray, spacing: tuple[float, ...], direction: tuple[float, ...]) -> np.ndarray:
    """``det(I + du/dx)`` at every voxel: central differences along the array axes, turned into world derivatives
    through the grid's spacing and direction (``x = origin + D S i``, so ``di/dx = (D S)^-1``)."""
    d = field.shape[-1]
    per_axis = [np.gradient(field[..., c], axis=tuple(range(d))) for c in range(d)]  # [c][array axis]
    # derivative of component c along index axis a (index axis a is array axis d - 1 - a)
    g = np.stack([np.stack([per_axis[c][d - 1 - a] for a in range(d)], axis=-1) for c in range(d)], axis=-2)
    m = np.array(direction).reshape(d, d) * np.array(spacing)
    jac = np.eye(d) + g @ np.linalg.inv(m)
    return np.linalg.det(jac)


def grid_determinant(field: np.ndarray, grid: sitk.Image) -> np.ndarray:
    return jacobian_determinant(field, grid.GetSpacing(), grid.GetDirection())


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(degrees)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def resample(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform, order: int = 1) -> sitk.Image:
    """``out(x) = image(T(x))`` on ``grid``; outside = the image's minimum."""
    low = float(sitk.GetArrayViewFromImage(image).min())
    interp = sitk.sitkBSpline if order == 3 else sitk.sitkLinear
    return sitk.Resample(image, grid, transform, interp, low, sitk.sitkFloat32)


def identity(d: int) -> sitk.Transform:
    return sitk.Transform(d, sitk.sitkIdentity)


# --- cases ---------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    fixed: sitk.Image
    moving: sitk.Image
    mask: np.ndarray  # bool, fixed array order
    truth: np.ndarray  # (*fixed array shape, d), fixed world -> moving world displacement, mm
    rigid: bool  # a rigid misalignment: tools with a separate linear stage run it first
    words: str

    @property
    def ndim(self) -> int:
        return self.fixed.GetDimension()

    @property
    def pixel(self) -> float | None:
        """The pixel size (mm) of a 2-D case, for errors in pixels."""
        return float(min(self.fixed.GetSpacing())) if self.ndim == 2 else None


def mni_path() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def random_field(
    rng: np.random.Generator, grid: sitk.Image, where: np.ndarray, longest: float, lattice: float, smooth: float
) -> np.ndarray:
    """A smooth random displacement field on ``grid``: independent normal vectors on a coarse lattice (``lattice`` mm
    apart, aligned with the grid, one knot beyond it on every side), linearly interpolated onto the grid by
    SimpleITK, smoothed by a Gaussian of ``smooth`` mm, scaled so that its longest vector over ``where`` (the object)
    is ``longest`` mm; shrunk until ``det(I + grad u) > 0.2`` over the whole grid (never needed with these sizes)."""
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
    fine = sitk.Resample(coarse, reference, identity(d), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
    u = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(fine, smooth)).astype(np.float64)
    u *= longest / np.linalg.norm(u[where], axis=-1).max()
    while grid_determinant(u, grid).min() <= 0.2:
        u *= 0.8
    return u


def object_mask(image: sitk.Image) -> np.ndarray:
    otsu = sitk.OtsuThreshold(image, 0, 1)
    filled = sitk.BinaryFillhole(otsu) if image.GetDimension() == 2 else otsu
    return sitk.GetArrayFromImage(filled).astype(bool)


def noisy(image: sitk.Image, rng: np.random.Generator, sigma: float) -> sitk.Image:
    a = sitk.GetArrayFromImage(image).astype(np.float32)
    out = sitk.GetImageFromArray(a + rng.normal(0, sigma, size=a.shape).astype(np.float32))
    out.CopyInformation(image)
    return out


def make_case(name: str, seed: int) -> Case:
    import pydicom.data

    rng = np.random.default_rng([seed, CASES.index(name)])
    if name == "ct2d":
        source = sitk.ReadImage(pydicom.data.get_testdata_file("CT_small.dcm"), sitk.sitkFloat32)[:, :, 0]
        longest, lattice, smooth = 4 * source.GetSpacing()[0], 10.0, 4.0
    else:
        source = sitk.BinShrink(sitk.ReadImage(str(mni_path()), sitk.sitkFloat32), [2, 2, 2])
        longest, lattice, smooth = 6.0, 20.0, 8.0
    src = sitk.GetArrayViewFromImage(source)
    noise = 0.01 * float(src.max() - src.min())
    rigid = name == "mni2mm_rigid"
    words = f"random vectors {lattice:g} mm apart, smoothed by {smooth:g} mm"
    if name == "mni_grids":
        fine = sitk.ReadImage(str(mni_path()), sitk.sitkFloat32)
        grid, grid_words = oblique_grid(rng, source)
        words += "; " + grid_words
        # the object on the new grid, before the warp: where the field's longest vector is measured
        where = object_mask(resample(fine, grid, identity(3)))
        u = random_field(rng, grid, where, longest, lattice, smooth)
        smooth = sitk.SmoothingRecursiveGaussian(fine, [0.4 * s for s in grid.GetSpacing()])
        clean = resample(smooth, grid, field_transform(u, grid), order=1)
        truth = u
    else:
        grid = source
        u = random_field(rng, grid, object_mask(source), longest, lattice, smooth)
        truth = u
        if rigid:
            centre = np.array(source.TransformContinuousIndexToPhysicalPoint([(k - 1) / 2 for k in source.GetSize()]))
            axis = rng.normal(size=3)
            r = rotation(axis, 5.0)
            shift = rng.normal(size=3)
            shift *= 6.0 / np.linalg.norm(shift)
            x = world_points(grid)
            truth = (x + u - centre) @ r.T + centre + shift - x
            words += (
                f"; then a rigid turn of 5 deg about ({', '.join(f'{v:.2f}' for v in axis / np.linalg.norm(axis))})"
            )
            words += f" through the centre and a shift of 6 mm ({', '.join(f'{v:.2f}' for v in shift)})"
        clean = resample(source, grid, field_transform(truth, grid), order=3)
    words += f"; longest |u| over the object {longest:.3g} mm"
    mask = object_mask(clean) & inside(source, world_points(grid) + truth)
    fixed = noisy(clean, rng, noise)
    moving = noisy(source, rng, noise)
    return Case(name, fixed, moving, mask, truth, rigid, words)


def oblique_grid(rng: np.random.Generator, source: sitk.Image) -> tuple[sitk.Image, str]:
    """2.5 x 2 x 3 mm, turned by 3-6 degrees about each axis, 86-94% of the source's field of view, off centre."""
    spacing = np.array([2.5, 2.0, 3.0])
    angles = rng.uniform(3, 6, size=3) * rng.choice([-1, 1], size=3)
    direction = np.eye(3)
    for axis, a in enumerate(angles):
        unit = np.zeros(3)
        unit[axis] = 1
        direction = rotation(unit, a) @ direction
    extent = np.array(source.GetSpacing()) * (np.array(source.GetSize()) - 1)
    fov = extent * rng.uniform(0.86, 0.94, size=3)
    size = np.round(fov / spacing).astype(int) + 1
    centre = np.array(source.TransformContinuousIndexToPhysicalPoint([(k - 1) / 2 for k in source.GetSize()]))
    middle = centre + rng.uniform(-5, 5, size=3)
    src_dir = np.array(source.GetDirection()).reshape(3, 3)
    direction = src_dir @ direction  # turned from the source's own axes
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((middle - direction @ (spacing * (size - 1) / 2)).tolist())
    words = (
        f"fixed grid {tuple(int(v) for v in size)} at 2.5 x 2 x 3 mm, turned "
        + "/".join(f"{a:+.1f}" for a in angles)
        + " deg about x/y/z, field of view "
        + "/".join(f"{100 * f / e:.0f}" for f, e in zip(fov, extent, strict=True))
        + "% of the source's"
    )
    return grid, words


def blob_case(d: int) -> Case:
    """A small smooth synthetic pair (32 x 32 or 24 x 24 x 24 at 2 mm, a shift of one voxel): the warm-up."""
    n = 32 if d == 2 else 24
    axes = np.meshgrid(*[np.linspace(-1, 1, n)] * d, indexing="ij")
    blob = (100 * np.exp(-sum((a / 0.5) ** 2 for a in axes))).astype(np.float32)
    fixed = sitk.GetImageFromArray(blob)
    fixed.SetSpacing([2.0] * d)
    truth = np.zeros((*blob.shape, d))
    truth[..., 0] = 2.0
    moving = resample(fixed, fixed, field_transform(-truth, fixed))
    return Case(f"warm-up {d}-D", fixed, moving, blob > 10, truth, False, "shift")


# --- tools ---------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    settings: str
    prepare: Callable[[], Callable[[], Any]]  # untimed set-up; returns the timed call
    field: Callable[[Any], np.ndarray]  # the call's answer as a displacement field (contract), untimed
    # the inverse map as a displacement field on the moving grid (moving world -> fixed world), where the tool gives
    # one; untimed
    inverse: Callable[[Any], np.ndarray | None] = lambda result: None


class NotAvailable(Exception):
    pass


def rigid_stage(fixed: sitk.Image, moving: sitk.Image, seed: int) -> sitk.Transform:
    start = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMeanSquares()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(0.1, seed)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-4, numberOfIterations=200, relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8
    )
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([4, 2, 1])
    reg.SetSmoothingSigmasPerLevel([2, 1, 0])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(start, inPlace=False)
    return reg.Execute(fixed, moving)


def shrink(image: sitk.Image, factor: int, sigma_voxels: float) -> sitk.Image:
    if sigma_voxels > 0:
        image = sitk.SmoothingRecursiveGaussian(image, [sigma_voxels * s for s in image.GetSpacing()])
    return sitk.Shrink(image, [factor] * image.GetDimension()) if factor > 1 else image


def onto(field: sitk.Image, grid: sitk.Image) -> sitk.Image:
    """A displacement field resampled onto another grid (linear; the nearest value outside)."""
    f = sitk.ResampleImageFilter()
    f.SetReferenceImage(grid)
    f.SetInterpolator(sitk.sitkLinear)
    f.SetOutputPixelType(sitk.sitkVectorFloat64)
    f.SetUseNearestNeighborExtrapolator(True)
    return f.Execute(field)


DEMONS_SHRINK, DEMONS_SIGMA, DEMONS_ITERATIONS, DEMONS_STD = (4, 2, 1), (2.0, 1.0, 0.0), (50, 40, 20), 1.5


def demons_run(case: Case, seed: int, kind: str) -> Run:
    factory = {
        "demons": sitk.DiffeomorphicDemonsRegistrationFilter,
        "symdemons": sitk.FastSymmetricForcesDemonsRegistrationFilter,
    }[kind]
    settings = (
        f"{factory.__name__}, shrink {'/'.join(map(str, DEMONS_SHRINK))}, "
        f"{'/'.join(map(str, DEMONS_ITERATIONS))} iterations, field smoothed by {DEMONS_STD} voxels"
        + ("; rigid stage first" if case.rigid else "")
    )

    def prepare() -> Callable[[], Any]:
        fixed, moving = case.fixed, case.moving

        def call() -> Any:
            start = rigid_stage(fixed, moving, seed) if case.rigid else identity(case.ndim)
            on_fixed = resample(moving, fixed, start)
            field = None
            for factor, sigma, iterations in zip(DEMONS_SHRINK, DEMONS_SIGMA, DEMONS_ITERATIONS, strict=True):
                f, m = shrink(fixed, factor, sigma), shrink(on_fixed, factor, sigma)
                if field is None:
                    field = sitk.Image(f.GetSize(), sitk.sitkVectorFloat64, case.ndim)
                    field.CopyInformation(f)
                else:
                    field = onto(field, f)
                demons = factory()
                demons.SetNumberOfIterations(iterations)
                demons.SetSmoothDisplacementField(True)
                demons.SetStandardDeviations(DEMONS_STD)
                field = demons.Execute(f, m, field)
            assert field is not None
            return start, field

        return call

    def to_field(result: Any) -> np.ndarray:
        start, field = result
        total = sitk.CompositeTransform([start, sitk.DisplacementFieldTransform(field)])  # x -> start(x + w(x))
        return dense_field(total, case.fixed)

    return Run(settings, prepare, to_field)


BSPLINE_SPACING = {2: 10.0, 3: 20.0}  # mm between control points at the finest level
BSPLINE_SAMPLING = {2: (0.5, 0.5, 0.5), 3: (0.1, 0.03, 0.01)}  # per level (shrink 4, 2, 1)
BSPLINE_ITERATIONS = {2: 50, 3: 30}


def bspline_run(case: Case, seed: int) -> Run:
    d = case.ndim
    sampling = BSPLINE_SAMPLING[d]
    settings = (
        f"BSplineTransformInitializer, mesh x1/x2/x4 to ~{BSPLINE_SPACING[d]:g} mm, mean squares "
        f"{'/'.join(f'{100 * v:g}' for v in sampling)}% random, LBFGS2 {BSPLINE_ITERATIONS[d]} its/level, "
        "shrink 4/2/1" + ("; rigid stage first" if case.rigid else "")
    )

    def prepare() -> Callable[[], Any]:
        fixed, moving = case.fixed, case.moving
        extent = np.array(fixed.GetSpacing()) * (np.array(fixed.GetSize()) - 1)
        mesh = [max(1, round(e / BSPLINE_SPACING[d] / 4)) for e in extent]  # refined 4 times by the last level

        def call() -> Any:
            start = rigid_stage(fixed, moving, seed) if case.rigid else identity(d)
            initial = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
            reg = sitk.ImageRegistrationMethod()
            reg.SetMetricAsMeanSquares()
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentagePerLevel(list(sampling), seed)
            reg.SetInterpolator(sitk.sitkLinear)
            # LBFGSB cannot follow the mesh refinement between levels (ITK: "Size of scales must equal number of
            # local parameters"); LBFGS2 can
            reg.SetOptimizerAsLBFGS2(
                solutionAccuracy=1e-5, numberOfIterations=BSPLINE_ITERATIONS[d], deltaConvergenceTolerance=1e-6
            )
            reg.SetShrinkFactorsPerLevel([4, 2, 1])
            reg.SetSmoothingSigmasPerLevel([2, 1, 0])
            reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
            reg.SetMovingInitialTransform(start)
            reg.SetInitialTransformAsBSpline(initial, inPlace=True, scaleFactors=[1, 2, 4])
            out = reg.Execute(fixed, moving)
            return start, out

        return call

    def to_field(result: Any) -> np.ndarray:
        start, bspline = result
        return dense_field(sitk.CompositeTransform([start, bspline]), case.fixed)  # x -> start(B(x))

    return Run(settings, prepare, to_field)


def to_ants(image: sitk.Image) -> Any:
    import ants

    a = sitk.GetArrayFromImage(image).astype(np.float32)
    d = image.GetDimension()
    return ants.from_numpy(
        np.ascontiguousarray((a - a.min()).T),  # ANTs indexes x first
        origin=list(image.GetOrigin()),
        spacing=list(image.GetSpacing()),
        direction=np.array(image.GetDirection()).reshape(d, d),
    )


def ants_run(case: Case, seed: int, kind: str) -> Run:
    import ants

    settings = f'ants.registration(type_of_transform="{kind}"), defaults; intensities - min'

    def prepare() -> Callable[[], Any]:
        if kind == "SyNCC" and case.ndim == 3 and not SLOW:
            raise NotAvailable("3-D takes over 15 min per case with its defaults here (--slow runs it)")
        fixed, moving = to_ants(case.fixed), to_ants(case.moving)
        ants.config._random_seed = seed  # what ants.set_ants_deterministic sets, without forcing one thread

        def call() -> Any:
            return ants.registration(fixed=fixed, moving=moving, type_of_transform=kind)

        return call

    def to_field(result: Any) -> np.ndarray:
        files = result["fwdtransforms"]
        try:
            warps = [f for f in files if f.endswith((".nii.gz", ".nii"))]
            mats = [f for f in files if f.endswith(".mat")]
            assert len(warps) == 1 and len(mats) == 1 and files.index(warps[0]) < files.index(mats[0]), files
            affine = sitk.ReadTransform(mats[0])
            warp = sitk.DisplacementFieldTransform(sitk.ReadImage(warps[0], sitk.sitkVectorFloat64))
            return dense_field(sitk.CompositeTransform([affine, warp]), case.fixed)  # x -> A(x + w(x))
        finally:
            for f in set(result["fwdtransforms"] + result["invtransforms"]):
                with contextlib.suppress(OSError):
                    os.remove(f)

    return Run(settings, prepare, to_field)


def unit_tensor(image: sitk.Image) -> Any:
    import torch

    a = sitk.GetArrayFromImage(image).astype(np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    return torch.from_numpy(a)[None, None]


def normalised_to_world(grid: sitk.Image, coords: np.ndarray) -> np.ndarray:
    """grid_sample coordinates (x, y[, z] in [-1, 1], ``align_corners=True``) of ``grid`` -> world points."""
    size = np.array(grid.GetSize(), dtype=np.float64)
    index = (coords + 1) / 2 * (size - 1)
    return index @ index_to_world_matrix(grid).T + np.array(grid.GetOrigin())


def torchreg_run(case: Case, seed: int) -> Run:
    import torch
    import torchreg

    settings = "SyNRegistration defaults (scales 4/2/1, 30/30/10 Adam steps, MSE); ignores spacing" + (
        "; its AffineRegistration (defaults) first" if case.rigid else ""
    )

    def prepare() -> Callable[[], Any]:
        if case.ndim != 3:
            raise NotAvailable("3-D only")
        torch.manual_seed(seed)
        fixed = unit_tensor(case.fixed)
        moving = unit_tensor(resample(case.moving, case.fixed, identity(3)))  # onto the fixed grid

        def call() -> Any:
            affine = None
            start = moving
            if case.rigid:
                lin = torchreg.AffineRegistration(is_3d=True, verbose=False)
                start = lin(moving, fixed)
                affine = lin.get_affine()[0].detach()
            syn = torchreg.SyNRegistration(verbose=False)
            _, _, flow, _ = syn(start, fixed)
            return affine, flow.detach(), syn._grid.detach()

        return call

    def to_field(result: Any) -> np.ndarray:
        affine, flow, grid = result
        q = (grid + flow)[0].double().numpy()  # the start image's (= the fixed grid's) normalised coordinates
        if affine is not None:
            a = affine.double().numpy()
            q = q @ a[:, :3].T + a[:, 3]
        return normalised_to_world(case.fixed, q) - world_points(case.fixed)

    return Run(settings, prepare, to_field)


def fireants_run(case: Case, seed: int) -> Run:
    import torch

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fireants.io import BatchedImages, Image
        from fireants.registration.affine import AffineRegistration
        from fireants.registration.greedy import GreedyRegistration
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("fireants"):
            logging.getLogger(name).setLevel(logging.ERROR)

    settings = (
        "quickstart: AffineRegistration (4/2/1, 200/100/50, Adam 3e-3, CC 5) + GreedyRegistration "
        "(4/2/1, 200/100/25, CC 5, compositive, smooth_grad_sigma 1, Adam 0.5); device cpu"
    )

    def prepare() -> Callable[[], Any]:
        torch.manual_seed(seed)
        fixed = BatchedImages([Image(case.fixed, device="cpu")])
        moving = BatchedImages([Image(case.moving, device="cpu")])

        def call() -> Any:
            lin = AffineRegistration(
                [4, 2, 1], [200, 100, 50], fixed, moving, optimizer="Adam", optimizer_lr=3e-3, cc_kernel_size=5,
                progress_bar=False,
            )  # fmt: skip
            lin.optimize()
            reg = GreedyRegistration(
                scales=[4, 2, 1], iterations=[200, 100, 25], fixed_images=fixed, moving_images=moving,
                cc_kernel_size=5, deformation_type="compositive", smooth_grad_sigma=1, optimizer="adam",
                optimizer_lr=0.5, init_affine=lin.get_affine_matrix().detach(), progress_bar=False,
            )  # fmt: skip
            reg.optimize()
            with torch.no_grad():
                coords = reg.get_warped_coordinates(fixed, moving)
            return coords.detach(), moving.get_torch2phy()[0].detach()

        return call

    def to_field(result: Any) -> np.ndarray:
        coords, t2p = result
        c = coords[0].double().numpy()
        m = t2p.double().numpy()
        d = case.ndim
        world = c @ m[:d, :d].T + m[:d, d]
        return world - world_points(case.fixed)

    return Run(settings, prepare, to_field)


def lossfit_run(case: Case, seed: int, symmetric: bool = False) -> Run:
    settings = 'register(fixed, moving, transform="deformable"), defaults'
    if symmetric:
        settings = 'register(fixed, moving, transform="deformable", symmetric=True)'

    def prepare() -> Callable[[], Any]:
        import torch

        try:
            from lossfit.registration import register

            sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
            from registration_pairs import from_sitk
        except ImportError as exc:
            raise NotAvailable(f"lossfit: not available ({exc})") from exc
        torch.manual_seed(seed)
        fixed, moving = from_sitk(case.fixed), from_sitk(case.moving)

        def call() -> Any:
            try:
                if symmetric:
                    return register(fixed, moving, transform="deformable", symmetric=True)
                return register(fixed, moving, transform="deformable")
            except (TypeError, AttributeError) as exc:
                raise NotAvailable(f"lossfit: not available ({type(exc).__name__}: {exc})") from exc
            except ValueError as exc:
                if "deformable" in str(exc) and "transform" in str(exc):
                    raise NotAvailable("lossfit: not available (transform='deformable' refused)") from exc
                raise

        return call

    def to_field(result: Any) -> np.ndarray:
        try:
            u = result.displacement
        except AttributeError as exc:
            raise NotAvailable("lossfit: not available (no `displacement` on the result)") from exc
        out = u.detach().cpu().double().numpy() if hasattr(u, "detach") else np.asarray(u, dtype=np.float64)
        expected = (*case.truth.shape[:-1], case.ndim)
        if out.shape != expected:
            raise ValueError(f"displacement has shape {out.shape}, the contract wants {expected}")
        return out

    def to_inverse(result: Any) -> np.ndarray | None:
        w = getattr(result, "inverse_displacement", None)
        return None if w is None else w.detach().cpu().double().numpy()

    return Run(settings, prepare, to_field, to_inverse)


RUNS: dict[str, Callable[[Case, int], Run]] = {
    "demons": lambda c, s: demons_run(c, s, "demons"),
    "symdemons": lambda c, s: demons_run(c, s, "symdemons"),
    "bspline": bspline_run,
    "ants-syn": lambda c, s: ants_run(c, s, "SyN"),
    "ants-syncc": lambda c, s: ants_run(c, s, "SyNCC"),
    "torchreg": torchreg_run,
    "fireants": fireants_run,
    "lossfit": lossfit_run,
    "lossfit-sym": lambda case, seed: lossfit_run(case, seed, symmetric=True),
}


# --- measuring -----------------------------------------------------------------------------------------------------
@dataclass
class Row:
    tool: str
    name: str
    settings: str
    seconds: float | None = None
    mean: float | None = None  # end-point error over the mask, mm
    p95: float | None = None
    folded: float | None = None  # fraction of mask voxels with det <= 0
    min_det: float | None = None
    inverse_consistency: float | None = None  # mean |phi^-1(phi(x)) - x| over the mask, mm (tools with an inverse)
    peak_mib: float | None = None
    note: str = ""
    times: list[float] = field(default_factory=list)


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def _poll_memory(pid: int, connection: Any) -> None:
    """In a process of its own: the largest RSS of ``pid`` until told to stop (a thread in the measured process
    would take the GIL every few milliseconds and slow a Python-heavy tool down several times)."""
    import psutil

    process = psutil.Process(pid)
    peak = process.memory_info().rss
    connection.send("ready")
    while not connection.poll(0.05):
        peak = max(peak, process.memory_info().rss)
    connection.send(peak)


class PeakMemory:
    """The largest resident set size above the level at the start, polled every 50 ms by another process (a thread
    here would take the GIL; a tighter loop takes a share of the 2 cores and stalls torch's threads)."""

    def __init__(self) -> None:
        import multiprocessing

        import psutil

        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        context = multiprocessing.get_context("spawn")
        self.mine, theirs = context.Pipe()
        self.poller = context.Process(target=_poll_memory, args=(os.getpid(), theirs), daemon=True)
        self.poller.start()
        self.mine.recv()  # the poller is ready

    def __enter__(self) -> PeakMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.mine.send("stop")
        self.peak = max(self.peak, self.mine.recv(), self.process.memory_info().rss)
        self.poller.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def errors(case: Case, u: np.ndarray) -> tuple[float, float]:
    if not np.isfinite(u[case.mask]).all():
        return math.inf, math.inf
    dist = np.linalg.norm(u[case.mask] - case.truth[case.mask], axis=-1)
    return float(dist.mean()), float(np.percentile(dist, 95))


def quiet() -> contextlib.ExitStack:
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def warm_up(tool: str, d: int, seed: int) -> None:
    with contextlib.suppress(Exception), quiet():
        case = blob_case(d)
        run = RUNS[tool](case, seed)
        run.field(run.prepare()())


def measure(case: Case, tool: str, args: argparse.Namespace, warmed: set[str]) -> Row:
    try:
        with quiet():
            run = RUNS[tool](case, args.seed)
    except Exception as exc:  # an import that fails
        return Row(tool, NAMES[tool], "", note=f"failed: {one_line(exc)}")
    row = Row(tool, NAMES[tool], run.settings)
    try:
        with quiet():
            call = run.prepare()
    except NotAvailable as exc:
        row.note = str(exc) if str(exc).startswith("lossfit") else f"skipped: {exc}"
        return row
    except Exception as exc:
        row.note = f"failed: {one_line(exc)}"
        return row
    if f"{tool}, {case.ndim}" not in warmed:
        warmed.add(f"{tool}, {case.ndim}")
        warm_up(tool, case.ndim, args.seed)
    u = None
    try:
        for _ in range(args.repeat):
            with quiet(), PeakMemory() as memory:
                t0 = time.perf_counter()
                result = call()
                elapsed = time.perf_counter() - t0
            row.times.append(elapsed)
            row.peak_mib = max(row.peak_mib or 0.0, memory.mib)
            with quiet():
                u = run.field(result)  # also removes ANTs' files after every call
    except NotAvailable as exc:
        row.note = str(exc)
        return row
    except Exception as exc:
        row.note = f"failed: {one_line(exc)}"
        return row
    assert u is not None
    row.seconds = statistics.median(row.times)
    row.mean, row.p95 = errors(case, u)
    det = grid_determinant(u, case.fixed)[case.mask]
    row.folded = float((det <= 0).mean())
    row.min_det = float(det.min())
    with quiet():
        w = run.inverse(result)
    if w is not None:
        row.inverse_consistency = inverse_consistency(case, u, w)
    return row


def inverse_consistency(case: Case, u: np.ndarray, w: np.ndarray) -> float:
    """Mean ``|u(x) + w(x + u(x))|`` over the mask points that ``x + u(x)`` keeps inside the moving grid, with ``w``
    (on the moving grid) interpolated linearly by SimpleITK: how far the inverse's image of ``phi(x)`` is from ``x``."""
    through = field_transform(u, case.fixed)
    pulled = [
        sitk.GetArrayFromImage(
            sitk.Resample(sitk.VectorIndexSelectionCast(field_image(w, case.moving), c), case.fixed, through,
                          sitk.sitkLinear, 0.0, sitk.sitkFloat64)
        )
        for c in range(case.ndim)
    ]  # fmt: skip
    gap = np.linalg.norm(u + np.stack(pulled, axis=-1), axis=-1)
    keep = case.mask & inside(case.moving, world_points(case.fixed) + u)
    return float(gap[keep].mean())


def fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def table(case: Case, rows: list[Row], initial: float) -> tuple[list[str], str | None]:
    registered = {
        r.name: r.seconds
        for r in rows
        if not r.tool.startswith("lossfit") and r.seconds is not None and r.mean is not None and r.mean < 0.5 * initial
    }
    fastest = min(registered, key=registered.__getitem__) if registered else None
    px = case.pixel
    head = "| tool | settings | time (s) | mean error (mm) | p95 error (mm) |"
    rule = "|---|---|---|---|---|"
    if px:
        head += " mean error (px) | p95 error (px) |"
        rule += "---|---|"
    head += " folded (% of mask) | min det | inverse consistency (mm) | peak RSS (MiB) | time / fastest peer |"
    rule += "---|---|---|---|---|"
    out = [head, rule]
    for r in rows:
        if r.seconds is None or r.mean is None:
            empty = 7 if px else 5
            out.append(f"| {r.name} | {r.settings} | {r.note} |" + " |" * (empty + 2))
            continue
        ratio = ""
        if fastest:
            ratio = f"{r.seconds / registered[fastest]:.2f}x"
            if not r.mean < 0.5 * initial:
                ratio += " (error over half the initial)"
        cells = [r.name, r.settings, f"{r.seconds:.3g}", fmt(r.mean), fmt(r.p95)]
        if px:
            cells += [fmt(r.mean / px), fmt((r.p95 or 0) / px)]
        folded = r.folded if r.folded is not None else math.nan
        cells += [f"{100 * folded:.3g}", fmt(r.min_det), fmt(r.inverse_consistency),
                  f"{r.peak_mib:.0f}" if r.peak_mib is not None else "", ratio]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out, fastest


def describe(image: sitk.Image) -> str:
    size = "x".join(str(v) for v in image.GetSize())
    spacing = "x".join(f"{v:.3g}" for v in image.GetSpacing())
    d = image.GetDimension()
    turned = not np.allclose(np.abs(np.array(image.GetDirection()).reshape(d, d)), np.eye(d))
    return f"{size} at {spacing} mm" + (", oblique" if turned else "")


def versions() -> list[str]:
    import torch

    out = [f"torch {torch.__version__}", f"SimpleITK {sitk.Version.VersionString()}"]
    from importlib.metadata import version

    for package in ("antspyx", "torchreg", "fireants"):
        with contextlib.suppress(Exception):
            out.append(f"{package} {version(package)}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {CASES}")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {TOOLS}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1, help="timed calls of each tool (the median is shown)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--slow", action="store_true", help="also run ANTs SyNCC on the 3-D cases (very slow)")
    args = parser.parse_args()
    global SLOW
    SLOW = args.slow
    cases = [c for c in args.cases.split(",") if c]
    tools = [t for t in args.tools.split(",") if t]
    for flag, given, known in (("--cases", cases, CASES), ("--tools", tools, TOOLS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.threads < 1 or args.repeat < 1:
        parser.error("--threads and --repeat must be at least 1")

    # ANTs reads the variable when its ITK starts: before the first import of ants
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    print(
        f"# deformable registration, {args.threads} threads, {platform.machine()}, "
        f"Python {platform.python_version()}, " + ", ".join(versions())
    )
    print(f"seed {args.seed}, repeat {args.repeat} (median)")
    report: dict[str, Any] = {"threads": args.threads, "seed": args.seed, "repeat": args.repeat, "cases": []}
    report["versions"] = versions()
    warmed: set[str] = set()
    for name in cases:
        case = make_case(name, args.seed)
        true_len = np.linalg.norm(case.truth[case.mask], axis=-1)
        initial_mean, initial_p95 = float(true_len.mean()), float(np.percentile(true_len, 95))
        truth_det = grid_determinant(case.truth, case.fixed)
        print()
        print(f"## {name}: fixed {describe(case.fixed)}; moving {describe(case.moving)}")
        print(f"warp: {case.words}")
        unit = f" ({initial_mean / case.pixel:.3g} px)" if case.pixel else ""
        print(
            f"true displacement over the mask ({int(case.mask.sum())} voxels): max {true_len.max():.3g} mm, "
            f"mean {initial_mean:.3g} mm{unit}, p95 {initial_p95:.3g} mm; min det(I + grad u) "
            f"{truth_det.min():.3g} over the grid"
        )
        print()
        rows = []
        for tool in tools:
            began = time.perf_counter()
            rows.append(measure(case, tool, args, warmed))
            print(f"[{name}] {tool}: {time.perf_counter() - began:.1f} s in all", file=sys.stderr, flush=True)
        lines, fastest = table(case, rows, initial_mean)
        print("\n".join(lines))
        print()
        print(f"Fastest peer under half the initial mean error ({0.5 * initial_mean:.3g} mm): {fastest or 'none'}.")
        sys.stdout.flush()
        report["cases"].append(
            {
                "name": name,
                "fixed": describe(case.fixed),
                "moving": describe(case.moving),
                "warp": case.words,
                "mask_voxels": int(case.mask.sum()),
                "true_max_mm": float(true_len.max()),
                "true_mean_mm": initial_mean,
                "initial_p95_mm": initial_p95,
                "pixel_mm": case.pixel,
                "truth_min_det": float(truth_det.min()),
                "fastest_peer": fastest,
                "rows": [asdict(r) for r in rows],
            }
        )
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
