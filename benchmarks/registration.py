"""Image registration: lossfit vs SimpleITK vs ANTsPy vs torchreg vs kornia, same images and known warps, one process.

Cases (each warp drawn from ``--seed``): the fixed image is a real image, the moving image is that image resampled
through a known world warp W about the image centre, ``moving(x) = original(W x)`` on the original's grid (linear
interpolation, outside = the image's minimum), so the right answer is T = W^-1, the map from fixed world points to
moving world points (the direction of an ITK transform used for resampling).

- ``ct2d``: pydicom's ``CT_small.dcm`` (128 x 128, 0.66 mm), 2-D affine, mean squares.
- ``camera2d``: scikit-image's ``camera()`` (512 x 512, spacing 1, errors in pixels), 2-D affine, mean squares.
- ``mni2mm``: nilearn's MNI152 2009a T1 averaged over 2 x 2 x 2 blocks (98 x 116 x 94, 2 mm), 3-D affine, mean squares.
- ``mni1mm``: the same at 1 mm (197 x 233 x 189), 3-D affine, mean squares (slow: only with ``--cases``).
- ``ct2d_grids``, ``mni2mm_grids``, ``mni_grids_multimodal``: pairs on two different grids (what users bring): the
  fixed image as read (CT_small; MNI152 at 2 mm), the moving one resampled by SimpleITK from the source (the CT
  slice; the 1 mm template, or its T2-like remap for the multi-modal rigid case) onto a grid of its own, with
  another spacing (0.5-1 mm; 2.5-3.5 mm), an oblique direction with flipped and permuted axes and a field of view of
  75-105% that cuts off part of the object (``tests/registration_pairs.py``), through the known warp.
- ``mni2mm_multimodal``: 3-D rigid, mutual information. Fixed = the 2 mm T1; moving = a T2-like contrast made from the
  T1 by a non-monotonic piecewise-linear remap (background stays 0, CSF becomes bright, grey matter mid, white
  matter dark), then warped by a known rigid transform.

Warps: affine = rotation up to 10 degrees (2-D: an angle; 3-D: a random axis), scale 1 +- 10% per axis, shear up to
0.05, translation up to 10 mm (random direction); rigid = rotation and translation only.

Accuracy: the distance ``||T_est(x) - T(x)||`` over the fixed image's foreground voxels (Otsu threshold), mean and
95th percentile, in mm (pixels for the photograph). Time: only the registration call (median over ``--repeats``,
after ``--warmup`` untimed calls), not the loading or the copies into each tool's image type; before its first timed
call in each dimension, every tool registers a small synthetic pair once, untimed (torch's first call in a process
costs about a second). The last column divides by the time of the fastest peer whose mean error is under one voxel.

Tools and how their answers become a world matrix fixed -> moving (``(d+1) x (d+1)``, LPS mm):

- SimpleITK ``ImageRegistrationMethod``: AffineTransform (Euler3DTransform for rigid), CenteredTransformInitializer
  GEOMETRY, shrink 4/2/1, smoothing 2/1/0 voxels, RegularStepGradientDescent (step 2, min step 1e-4, 200 iterations
  per level) with scales from physical shift, MeanSquares or MattesMutualInformation(50 bins), random sampling of 20%
  (2-D) or 10% (3-D), linear interpolation. Its final transform already maps fixed to moving physical points: the
  matrix is read off by evaluating it at the origin and the unit vectors. (Random sampling with several threads is not
  repeatable: the same seed gives errors that differ by about 20% from run to run.)
- ANTsPy ``ants.registration(type_of_transform="Affine" | "Rigid")`` with its defaults (Mattes, 20% regular sampling,
  shrink 6/4/2/1, centre-of-mass start), ``random_seed`` set through ``ants.config``. Intensities are shifted so that
  the minimum is 0: its centre-of-mass start weighs voxels by intensity, and with CT's negative values it lands far
  off (15 mm error on ct2d otherwise). Images are built with ``ants.from_numpy`` on the transposed array (ANTs
  indexes x first) with the same spacing/origin/direction. ``fwdtransforms[0]`` is an ITK
  affine .mat mapping fixed to moving physical (LPS) points; it is read with ``SimpleITK.ReadTransform`` and
  evaluated like SimpleITK's.
- torchreg ``AffineRegistration`` with its defaults (Adam lr 1e-2, scales 4/2, 500 + 100 steps, MSE; ``verbose``
  off), intensities scaled to [0, 1]. It ignores spacing, origin and direction: its affine maps the fixed tensor's
  normalised coordinates (x, y[, z] in [-1, 1], ``align_corners=True``: u = 2 i / (n - 1) - 1) to the moving
  tensor's; world = ``A_moving N^-1 M N A_fixed^-1`` with A the images' index-to-world affines and N index to
  normalised. It has no rigid model and no mutual information, so the multi-modal case runs its affine with MSE.
- kornia ``ImageRegistrator("similarity")`` with its defaults (Adam lr 1e-3, 5 pyramid levels, 100 steps each, L1
  loss, tolerance 1e-4), 2-D only, intensities scaled to [0, 1]; ``register(moving, fixed)`` returns the map from the
  fixed (dst) to the moving (src) normalised coordinates with ``align_corners=False`` (u = (2 i + 1) / n - 1),
  converted like torchreg's. A similarity model cannot follow an affine warp: the note under each 2-D table gives
  the error of the least-squares best similarity (its floor).
- lossfit ``lossfit.register(fixed, moving, transform=..., metric="mse" | "mi")`` on ``lossfit.registration.Image``;
  ``result.matrix`` is already the world matrix fixed -> moving.

``--check`` also resamples the moving image with each tool's own resampler and with SimpleITK through the converted
matrix, and prints how far apart the two are (in % of the intensity range, inside the image): a wrong conversion
shows there even when the registration itself is poor.

Run: ``python benchmarks/registration.py [--cases ct2d,camera2d,mni2mm,mni1mm,mni2mm_multimodal,ct2d_grids,...]
[--tools sitk,ants,torchreg,kornia,lossfit] [--threads 2] [--repeats 1] [--warmup 0] [--seed 0] [--check]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.ndimage
import SimpleITK as sitk
import torch

import lossfit
from lossfit.registration import Image, load_image

if TYPE_CHECKING:  # imported where used: ants must come after its thread count is set
    import ants

CASES = (
    "ct2d",
    "camera2d",
    "mni2mm",
    "mni1mm",
    "mni2mm_multimodal",
    "ct2d_grids",
    "mni2mm_grids",
    "mni_grids_multimodal",
)
DEFAULT_CASES = (
    "ct2d",
    "camera2d",
    "mni2mm",
    "mni2mm_multimodal",
    "ct2d_grids",
    "mni2mm_grids",
    "mni_grids_multimodal",
)
TOOLS = ("sitk", "ants", "torchreg", "kornia", "lossfit", "lossfit-cauchy")


# --- cases --------------------------------------------------------------------------------------------------------
@dataclass
class Case:
    name: str
    fixed: Image
    moving: Image
    truth: np.ndarray  # (d+1)x(d+1) world matrix fixed -> moving (= W^-1)
    model: str  # "affine" | "rigid"
    metric: str  # "mse" | "mi"
    mask: np.ndarray  # bool, the fixed image's foreground, data order
    unit: str
    warp: str  # the warp in words


def mni_path() -> Path:
    import nilearn

    return Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"


def halve(image: Image) -> Image:
    """Average 2 x 2 x 2 blocks: spacing doubles and voxel (0, 0, 0) moves to the centre of the first block."""
    a = image.numpy()
    nz, ny, nx = (n // 2 * 2 for n in a.shape)
    a = a[:nz, :ny, :nx].reshape(nz // 2, 2, ny // 2, 2, nx // 2, 2).mean(axis=(1, 3, 5))
    half = torch.full((3,), 0.5, dtype=torch.float64)
    origin = image.index_to_world(half)
    spacing = tuple(2 * s for s in image.spacing)
    return Image(torch.from_numpy(np.ascontiguousarray(a)), spacing=spacing, origin=origin, direction=image.direction)


def t2_like(t1: np.ndarray) -> np.ndarray:
    """A T2-like contrast from the MNI T1 (0..255: CSF ~40, grey ~165, white ~220): not monotonic in the T1."""
    return np.interp(t1, [0, 10, 50, 110, 165, 220, 255], [0, 20, 230, 190, 150, 60, 50]).astype(np.float32)


def random_warp(rng: np.random.Generator, d: int, center: np.ndarray, rigid: bool) -> tuple[np.ndarray, str]:
    from scipy.spatial.transform import Rotation

    angle = math.radians(rng.uniform(-10, 10))
    if d == 2:
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, -s], [s, c]])
    else:
        axis = rng.normal(size=3)
        rot = Rotation.from_rotvec(angle * axis / np.linalg.norm(axis)).as_matrix()
    shift = rng.normal(size=d)
    shift *= rng.uniform(0, 10) / np.linalg.norm(shift)
    linear = rot
    words = f"rotation {math.degrees(angle):+.1f} deg, translation {np.linalg.norm(shift):.1f} mm"
    if not rigid:
        scale = 1 + rng.uniform(-0.1, 0.1, size=d)
        shear = np.eye(d) + np.triu(rng.uniform(-0.05, 0.05, size=(d, d)), 1)
        linear = rot @ shear @ np.diag(scale)
        words += ", scale " + "/".join(f"{x:.3f}" for x in scale) + ", shear up to 0.05"
    w = np.eye(d + 1)
    w[:d, :d] = linear
    w[:d, d] = center - linear @ center + shift
    return w, words


def to_sitk(image: Image) -> sitk.Image:
    s = sitk.GetImageFromArray(image.numpy().astype(np.float32))
    s.SetSpacing(image.spacing)
    s.SetOrigin(image.origin)
    s.SetDirection([x for row in image.direction for x in row])
    return s


def sitk_affine(matrix: np.ndarray) -> sitk.AffineTransform:
    d = matrix.shape[0] - 1
    t = sitk.AffineTransform(d)
    t.SetMatrix(matrix[:d, :d].ravel().tolist())
    t.SetTranslation(matrix[:d, d].tolist())
    return t


def resample(image: Image, matrix: np.ndarray, background: float, reference: Image | None = None) -> Image:
    """``out(x) = image(matrix x)`` on ``reference``'s grid (default ``image``'s), linear, outside = background."""
    reference = image if reference is None else reference
    out = sitk.Resample(
        to_sitk(image), to_sitk(reference), sitk_affine(matrix), sitk.sitkLinear, float(background), sitk.sitkFloat32
    )
    return reference.with_data(torch.from_numpy(sitk.GetArrayFromImage(out)))


def make_case(name: str, seed: int) -> Case:
    import pydicom.data
    import skimage.data

    rng = np.random.default_rng([seed, CASES.index(name)])
    if name.endswith(("_grids", "_grids_multimodal")):
        return grids_case(name, rng)
    if name == "ct2d":
        fixed = load_image(pydicom.data.get_testdata_file("CT_small.dcm"))
    elif name == "camera2d":
        fixed = Image(torch.from_numpy(skimage.data.camera().astype(np.float32)))
    else:
        fixed = load_image(mni_path())
        if name != "mni1mm":
            fixed = halve(fixed)
    rigid = name.endswith("multimodal")
    truth_warp, words = random_warp(rng, fixed.ndim, np.array(fixed.center), rigid)
    source = fixed.with_data(torch.from_numpy(t2_like(fixed.numpy()))) if rigid else fixed
    background = float(source.numpy().min())
    moving = resample(source, truth_warp, background)
    return known_case(name, fixed, moving, truth_warp, rigid, "px" if name == "camera2d" else "mm", words)


def grids_case(name: str, rng: np.random.Generator) -> Case:
    """A pair on two grids: the fixed image as a user has it, the moving one resampled by SimpleITK from the same
    source onto a grid of its own (another spacing, an oblique direction with flipped and permuted axes, a field of
    view that cuts off part of the object), through a known warp ``W``: ``moving(y) = source(W y)``."""
    import pydicom.data

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from registration_pairs import centre_of, extent_of, from_sitk, random_grid, resample_onto

    if name == "ct2d_grids":  # CT_small as read, the moving slice on a 0.5-1.0 mm oblique grid
        fixed = load_image(pydicom.data.get_testdata_file("CT_small.dcm"))
        src, spacing = to_sitk(fixed), (0.5, 1.0)
    else:  # MNI152 at 2 mm; the moving volume from the 1 mm template onto a 2.5-3.5 mm oblique grid
        fixed = halve(load_image(mni_path()))
        src, spacing = sitk.ReadImage(str(mni_path()), sitk.sitkFloat32), (2.5, 3.5)
    rigid = name.endswith("multimodal")
    if rigid:
        src = _t2_sitk(src)
    grid = random_grid(rng, fixed.ndim, extent_of(src), centre_of(src), spacing)
    warp, words = random_warp(rng, fixed.ndim, np.array(fixed.center), rigid)
    moving = from_sitk(resample_onto(src, grid, warp, 0.5 * max(grid.GetSpacing())))
    words += f"; moving grid {moving.size} at " + "x".join(f"{v:.2f}" for v in moving.spacing) + " mm, oblique"
    return known_case(name, fixed, moving, warp, rigid, "mm", words)


def known_case(name: str, fixed: Image, moving: Image, warp: np.ndarray, rigid: bool, unit: str, words: str) -> Case:
    """A case whose moving image is the source under ``warp`` (the answer is its inverse); the foreground by Otsu."""
    from skimage.filters import threshold_otsu

    a = fixed.numpy()
    model, metric = ("rigid", "mi") if rigid else ("affine", "mse")
    return Case(name, fixed, moving, np.linalg.inv(warp), model, metric, a > threshold_otsu(a), unit, words)


def _t2_sitk(src: sitk.Image) -> sitk.Image:
    out = sitk.GetImageFromArray(t2_like(sitk.GetArrayFromImage(src)))
    out.CopyInformation(src)
    return out


def blob_case(d: int) -> Case:
    """A small smooth synthetic pair (32 x 32 or 16 x 16 x 16, a shift of one voxel) to warm every tool up once."""
    n = 32 if d == 2 else 16
    axes = np.meshgrid(*[np.linspace(-1, 1, n)] * d, indexing="ij")
    blob = np.exp(-sum((a / 0.5) ** 2 for a in axes) - (axes[-1] / 0.3 - 0.5) ** 2).astype(np.float32)
    fixed = Image(torch.from_numpy(100 * blob))
    w = np.eye(d + 1)
    w[0, d] = 1.0
    moving = resample(fixed, w, 0.0)
    return Case(f"warm-up {d}-D", fixed, moving, np.linalg.inv(w), "affine", "mse", blob > 0.1, "px", "shift 1")


def errors(case: Case, matrix: np.ndarray) -> tuple[float, float]:
    if not np.isfinite(matrix).all():
        return math.inf, math.inf
    points = case.fixed.world_grid(torch.float64).numpy()[case.mask]  # (n, d)
    diff = matrix - case.truth
    d = points.shape[1]
    dist = np.linalg.norm(points @ diff[:d, :d].T + diff[:d, d], axis=1)
    return float(dist.mean()), float(np.percentile(dist, 95))


def similarity_floor(case: Case) -> tuple[float, float]:
    """The error of the least-squares best similarity to the true affine over the foreground (Umeyama)."""
    x = case.fixed.world_grid(torch.float64).numpy()[case.mask]
    d = x.shape[1]
    y = x @ case.truth[:d, :d].T + case.truth[:d, d]
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    u, s, vt = np.linalg.svd(yc.T @ xc / len(x))
    e = np.eye(d)
    e[-1, -1] = np.sign(np.linalg.det(u @ vt))
    rot = u @ e @ vt
    scale = np.trace(np.diag(s) @ e) / (xc**2).sum(1).mean()
    m = np.eye(d + 1)
    m[:d, :d] = scale * rot
    m[:d, d] = my - scale * rot @ mx
    return errors(case, m)


# --- conversions --------------------------------------------------------------------------------------------------
def transform_matrix(transform: sitk.Transform, d: int) -> np.ndarray:
    """The (d+1)x(d+1) matrix of any affine ITK transform, read off at the origin and the unit vectors."""
    m = np.eye(d + 1)
    zero = np.array(transform.TransformPoint([0.0] * d))
    for c in range(d):
        m[:d, c] = np.array(transform.TransformPoint(np.eye(d)[c].tolist())) - zero
    m[:d, d] = zero
    return m


def world_from_normalised(image: Image, align_corners: bool) -> np.ndarray:
    """(d+1)x(d+1): normalised coordinates (x, y[, z] in [-1, 1], torch's grid_sample) to world (LPS, mm)."""
    n = np.array(image.size, dtype=np.float64)
    half = (n - 1) / 2 if align_corners else n / 2  # index = half * (u + 1) - (0 or 1/2)
    norm_to_index = np.eye(len(n) + 1)
    norm_to_index[:-1, :-1] = np.diag(half)
    norm_to_index[:-1, -1] = (n - 1) / 2
    return image.affine.numpy() @ norm_to_index


def from_normalised(case: Case, m: np.ndarray, align_corners: bool) -> np.ndarray:
    d = case.fixed.ndim
    h = np.eye(d + 1)
    h[:d, :] = m[:d, :]
    return (
        world_from_normalised(case.moving, align_corners)
        @ h
        @ np.linalg.inv(world_from_normalised(case.fixed, align_corners))
    )


def ranges(case: Case) -> tuple[tuple[float, float], tuple[float, float]]:
    """The (low, high) that map each image to [0, 1]: the fixed image's for both when the metric is MSE (so that the
    same tissue keeps the same value), each its own for mutual information."""
    f, m = case.fixed.numpy(), case.moving.numpy()
    fixed = (float(f.min()), float(f.max()))
    return fixed, (fixed if case.metric == "mse" else (float(m.min()), float(m.max())))


def unit_tensors(case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed and moving as (1, 1, ...) float32 tensors scaled to [0, 1] (see :func:`ranges`)."""
    (flo, fhi), (mlo, mhi) = ranges(case)
    fixed = (case.fixed.data.float() - flo) / (fhi - flo)
    moving = (case.moving.data.float() - mlo) / (mhi - mlo)
    return fixed[None, None], moving[None, None]


def from_unit(case: Case, moved: torch.Tensor) -> np.ndarray:
    """A moving image in [0, 1] back in the moving image's intensities."""
    lo, hi = ranges(case)[1]
    return moved.detach()[0, 0].double().numpy() * (hi - lo) + lo


# --- tools --------------------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One tool on one case: ``prepare`` (untimed) returns a callable; calling it registers and returns a result;
    ``matrix`` turns that into the world matrix fixed -> moving; ``warped`` resamples the moving image with the
    tool's own resampler (for ``--check``)."""

    settings: str
    prepare: Callable[[], Callable[[], Any]]
    matrix: Callable[[Any], np.ndarray]
    warped: Callable[[Any], np.ndarray] | None = None


def sitk_run(case: Case, seed: int) -> Run:
    d = case.fixed.ndim
    rigid = case.model == "rigid"
    metric = "Mattes MI 50 bins" if case.metric == "mi" else "MeanSquares"
    sampling = 0.2 if d == 2 else 0.1
    settings = (
        f"{'Euler' if rigid else 'Affine'}, {metric}, RegularStep (2, 1e-4, 200/level), scales from physical "
        f"shift, shrink 4/2/1, smooth 2/1/0 vox, {sampling:.0%} random, GEOMETRY init"
    )

    def prepare() -> Callable[[], Any]:
        fixed, moving = to_sitk(case.fixed), to_sitk(case.moving)

        def call() -> Any:
            model: sitk.Transform = sitk.AffineTransform(d)
            if rigid:
                model = sitk.Euler3DTransform() if d == 3 else sitk.Euler2DTransform()
            start = sitk.CenteredTransformInitializer(
                fixed, moving, model, sitk.CenteredTransformInitializerFilter.GEOMETRY
            )
            reg = sitk.ImageRegistrationMethod()
            if case.metric == "mi":
                reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
            else:
                reg.SetMetricAsMeanSquares()
            reg.SetMetricSamplingStrategy(reg.RANDOM)
            reg.SetMetricSamplingPercentage(sampling, seed)
            reg.SetInterpolator(sitk.sitkLinear)
            reg.SetOptimizerAsRegularStepGradientDescent(
                learningRate=2.0,
                minStep=1e-4,
                numberOfIterations=200,
                relaxationFactor=0.5,
                gradientMagnitudeTolerance=1e-8,
            )
            reg.SetOptimizerScalesFromPhysicalShift()
            reg.SetShrinkFactorsPerLevel([4, 2, 1])
            reg.SetSmoothingSigmasPerLevel([2, 1, 0])
            reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
            reg.SetInitialTransform(start, inPlace=False)
            return reg.Execute(fixed, moving)

        return call

    def warped(result: Any) -> np.ndarray:
        fixed, moving = to_sitk(case.fixed), to_sitk(case.moving)
        out = sitk.Resample(moving, fixed, result, sitk.sitkLinear, float(case.moving.numpy().min()), sitk.sitkFloat32)
        return sitk.GetArrayFromImage(out)

    return Run(settings, prepare, lambda r: transform_matrix(r, d), warped)


def to_ants(image: Image) -> ants.ANTsImage:
    import ants

    return ants.from_numpy(
        np.ascontiguousarray(image.numpy().T.astype(np.float32)),
        origin=list(image.origin),
        spacing=list(image.spacing),
        direction=np.array(image.direction),
    )


def ants_run(case: Case, seed: int) -> Run:
    import ants

    kind = "Rigid" if case.model == "rigid" else "Affine"
    settings = f'type_of_transform="{kind}", defaults (Mattes, 20% regular, shrink 6/4/2/1); intensities - min'

    def prepare() -> Callable[[], Any]:
        # ANTs starts from the images' centres of mass, weighted by intensity: with CT's negative values that start
        # is far off and the affine stage does not recover (15 mm on ct2d); shifted to start at 0 it is fine
        fixed = to_ants(case.fixed.with_data(case.fixed.data - case.fixed.data.min()))
        moving = to_ants(case.moving.with_data(case.moving.data - case.moving.data.min()))
        ants.config._random_seed = seed  # what ants.set_ants_deterministic sets, without forcing one thread

        def call() -> Any:
            return ants.registration(fixed=fixed, moving=moving, type_of_transform=kind)

        return call

    def matrix(result: Any) -> np.ndarray:
        m = transform_matrix(sitk.ReadTransform(result["fwdtransforms"][0]), case.fixed.ndim)
        for f in set(result["fwdtransforms"] + result["invtransforms"]):
            with contextlib.suppress(OSError):
                os.remove(f)
        return m

    def warped(result: Any) -> np.ndarray:
        return result["warpedmovout"].numpy().T + case.moving.numpy().min()

    return Run(settings, prepare, matrix, warped)


def torchreg_run(case: Case, seed: int) -> Run:
    import torchreg

    d = case.fixed.ndim
    extra = ", so an affine with MSE (it has no rigid model and no MI)" if case.model == "rigid" else ""
    settings = f"AffineRegistration defaults (Adam 1e-2, scales 4/2, 500+100 steps){extra}; ignores spacing"

    def prepare() -> Callable[[], Any]:
        torch.manual_seed(seed)
        fixed, moving = unit_tensors(case)

        def call() -> Any:
            reg = torchreg.AffineRegistration(is_3d=d == 3, verbose=False)
            moved = reg(moving, fixed)
            return reg, moved

        return call

    def matrix(result: Any) -> np.ndarray:
        reg, _ = result
        return from_normalised(case, reg.get_affine()[0].double().numpy(), align_corners=True)

    def warped(result: Any) -> np.ndarray:
        _, moved = result
        return from_unit(case, moved)

    return Run(settings, prepare, matrix, warped)


def kornia_run(case: Case, seed: int) -> Run:
    from kornia.geometry import ImageRegistrator

    settings = 'ImageRegistrator("similarity") defaults (Adam 1e-3, 5 levels, 100 steps, L1); ignores spacing'

    def prepare() -> Callable[[], Any]:
        if case.fixed.ndim != 2:
            raise NotImplementedError("2-D only")
        torch.manual_seed(seed)
        fixed, moving = unit_tensors(case)

        def call() -> Any:
            reg = ImageRegistrator("similarity")
            m = reg.register(moving, fixed)
            return reg, m, moving

        return call

    def matrix(result: Any) -> np.ndarray:
        _, m, _ = result
        return from_normalised(case, m[0].detach().double().numpy(), align_corners=False)

    def warped(result: Any) -> np.ndarray:
        reg, _, moving = result
        with torch.no_grad():
            return from_unit(case, reg.warp_src_into_dst(moving))

    return Run(settings, prepare, matrix, warped)


def lossfit_run(case: Case, seed: int, **options: Any) -> Run:
    extra = "".join(f", {k}={v!r}" for k, v in options.items())
    settings = f'register(transform="{case.model}", metric="{case.metric}"{extra})' + ("" if options else ", defaults")

    def prepare() -> Callable[[], Any]:
        if not hasattr(lossfit, "register"):
            raise NotImplementedError("not built yet")
        torch.manual_seed(seed)

        def call() -> Any:
            return lossfit.register(case.fixed, case.moving, transform=case.model, metric=case.metric, **options)

        return call

    def matrix(result: Any) -> np.ndarray:
        return result.matrix.detach().cpu().double().numpy()

    def warped(result: Any) -> np.ndarray:
        return result.warp(case.moving).numpy()

    return Run(settings, prepare, matrix, warped)


def lossfit_robust_run(case: Case, seed: int) -> Run:
    """lossfit with the Cauchy loss (mean squares only; the same as the defaults for other metrics)."""
    return lossfit_run(case, seed, **({"loss": "cauchy"} if case.metric == "mse" else {}))


RUNS = {
    "sitk": sitk_run,
    "ants": ants_run,
    "torchreg": torchreg_run,
    "kornia": kornia_run,
    "lossfit": lossfit_run,
    "lossfit-cauchy": lossfit_robust_run,
}
NAMES = {
    "sitk": "SimpleITK",
    "ants": "ANTsPy",
    "torchreg": "torchreg",
    "kornia": "kornia",
    "lossfit": "lossfit",
    "lossfit-cauchy": "lossfit (loss=cauchy)",
}


# --- measuring ----------------------------------------------------------------------------------------------------
@dataclass
class Row:
    tool: str
    settings: str
    seconds: float | None = None
    mean: float | None = None
    p95: float | None = None
    note: str = ""  # "failed: ..." or "skipped: ..."
    check: str = ""


def one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def conversion_check(case: Case, run: Run, result: Any, matrix: np.ndarray) -> str:
    """How far the tool's own warped image is from SimpleITK resampling through the converted matrix."""
    if run.warped is None:
        return ""
    ours = resample(case.moving, matrix, float(case.moving.numpy().min()), reference=case.fixed).numpy()
    theirs = np.asarray(run.warped(result), dtype=np.float64)
    # compare away from the border, where tools differ in what they put outside the image
    ones = resample(case.moving.with_data(torch.ones(case.moving.shape)), matrix, 0.0, reference=case.fixed).numpy()
    inside = scipy.ndimage.binary_erosion(ones > 0.999, iterations=2)  # 2 voxels in from the moving image's edge
    span = float(case.moving.numpy().max() - case.moving.numpy().min())
    if not inside.any():
        return "check: no overlap"
    diff = np.abs(ours - theirs)[inside] / span
    mean, p99 = 100 * diff.mean(), 100 * np.percentile(diff, 99)
    return f"check: warped image differs by {mean:.2g}% mean, {p99:.2g}% p99 of the intensity range"


def measure(case: Case, tool: str, args: argparse.Namespace, warmed: set[str]) -> Row:
    try:
        run = RUNS[tool](case, args.seed)
    except Exception as exc:  # an import that fails
        return Row(NAMES[tool], "", note=f"failed: {one_line(exc)}")
    row = Row(NAMES[tool], run.settings)
    try:
        call = run.prepare()
    except NotImplementedError as exc:
        row.note = f"skipped: {exc}"
        return row
    except Exception as exc:
        row.note = f"failed: {one_line(exc)}"
        return row
    if f"{tool}, {case.fixed.ndim}" not in warmed:
        warmed.add(f"{tool}, {case.fixed.ndim}")
        with contextlib.suppress(Exception), contextlib.redirect_stdout(io.StringIO()):
            warm = RUNS[tool](blob_case(case.fixed.ndim), args.seed)
            warm.matrix(warm.prepare()())
    times: list[float] = []
    result: Any = None
    matrix = np.full((case.fixed.ndim + 1,) * 2, np.nan)
    try:
        for i in range(args.warmup + args.repeats):
            sink = io.StringIO()
            with contextlib.redirect_stdout(sink):
                t0 = time.perf_counter()
                result = call()
                elapsed = time.perf_counter() - t0
            if i >= args.warmup:
                times.append(elapsed)
            matrix = run.matrix(result)  # also cleans up ANTs' files after every call
    except Exception as exc:
        row.note = f"failed: {one_line(exc)}"
        return row
    row.seconds = statistics.median(times)
    row.mean, row.p95 = errors(case, matrix)
    if args.check:
        try:
            row.check = conversion_check(case, run, result, matrix)
        except Exception as exc:
            row.check = f"check failed: {one_line(exc)}"
    return row


def table(case: Case, rows: list[Row]) -> list[str]:
    """The Markdown table; the time ratio is against the fastest peer that registered (mean error under a voxel)."""
    voxel = min(case.fixed.spacing)
    registered = {
        r.tool: r.seconds
        for r in rows
        if not r.tool.startswith("lossfit") and r.seconds is not None and r.mean is not None and r.mean < voxel
    }
    fastest = min(registered, key=registered.__getitem__) if registered else None
    out = [
        f"| tool | settings | time (s) | mean error ({case.unit}) | p95 error ({case.unit}) | time / fastest peer |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.seconds is None or r.mean is None or r.p95 is None:
            out.append(f"| {r.tool} | {r.settings} | {r.note} | | | |")
            continue
        ratio = f"{r.seconds / registered[fastest]:.2f}x" if fastest else ""
        if ratio and not r.mean < voxel:
            ratio += " (error over 1 voxel)"
        out.append(f"| {r.tool} | {r.settings} | {r.seconds:.3g} | {r.mean:.3g} | {r.p95:.3g} | {ratio} |")
    out.append("")
    out.append(f"Fastest peer with a mean error under one voxel ({voxel:.3g} {case.unit}): {fastest or 'none'}.")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES), help=f"comma-separated subset of {CASES}")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated subset of {TOOLS}")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0, help="untimed calls of each tool before the timed ones")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="compare each tool's own warped image with ours")
    args = parser.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    tools = [t for t in args.tools.split(",") if t]
    for name, given, known in (("--cases", cases, CASES), ("--tools", tools, TOOLS)):
        unknown = sorted(set(given) - set(known))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be at least 1, --warmup at least 0")

    # ANTs reads the variable when its ITK starts: before the first import of ants
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)

    versions = [f"torch {torch.__version__}", f"SimpleITK {sitk.Version.VersionString()}"]
    for module, label in (("ants", "ANTsPy"), ("kornia", "kornia")):
        with contextlib.suppress(Exception):
            versions.append(f"{label} {__import__(module).__version__}")
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        versions.append(f"torchreg {version('torchreg')}")
    print(
        f"# image registration, {args.threads} threads, {platform.machine()}, Python {platform.python_version()}, "
        + ", ".join(versions)
    )
    print(f"seed {args.seed}, repeats {args.repeats} (median), warm-up calls {args.warmup}")
    if "lossfit" in tools and not hasattr(lossfit, "register"):
        print("lossfit: not built yet")
    warmed: set[str] = set()  # "tool, d": each tool registers a small synthetic pair once before it is timed
    for name in cases:
        case = make_case(name, args.seed)
        print()
        print(f"## {name}: {case.model}, metric {case.metric}; fixed {case.fixed}")
        print(f"known warp: {case.warp}; foreground {int(case.mask.sum())} voxels (Otsu)")
        identity = errors(case, np.eye(case.fixed.ndim + 1))
        print(f"error before registration (identity): mean {identity[0]:.3g} {case.unit}, p95 {identity[1]:.3g}")
        print()
        rows = []
        for tool in tools:
            rows.append(measure(case, tool, args, warmed))
            sys.stdout.flush()
        for line in table(case, rows):
            print(line)
        if "kornia" in tools and case.fixed.ndim == 2 and case.model == "affine":
            floor = similarity_floor(case)
            print()
            print(
                f"kornia's similarity model cannot do better than mean {floor[0]:.3g}, p95 {floor[1]:.3g} "
                f"{case.unit} (the least-squares best similarity to the true affine over the foreground)."
            )
        checks = [f"- {r.tool}: {r.check}" for r in rows if r.check]
        if checks:
            print()
            print("\n".join(checks))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
