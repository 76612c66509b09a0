"""Registration pairs on two different grids, made by SimpleITK (an independent resampler) from real images.

A pair is a fixed image and a moving image, each on a grid of its own (shape, anisotropic spacing, an oblique
direction that may flip and permute the axes, an origin, a field of view that may cut off part of the object), both
resampled by SimpleITK from one smoothed source, with a known world transform ``truth`` (fixed world -> moving
world, LPS mm): ``moving(truth x) = fixed(x)``. Used by the tests and by ``benchmarks/registration.py``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lossfit.registration import Image


@dataclass(frozen=True)
class Pair:
    fixed: Image
    moving: Image
    truth: torch.Tensor  # (d+1, d+1) float64, fixed world -> moving world
    tolerance: float  # a tenth of the finer voxel (mm)
    name: str

    def error(self, matrix: torch.Tensor) -> float:
        """Mean distance (mm) between ``matrix`` and ``truth`` over the fixed image's foreground voxels."""
        from lossfit.registration import displacement

        data = self.fixed.data
        foreground = data > data.min() + 0.1 * (data.max() - data.min())
        return displacement(matrix, self.truth, self.fixed, foreground)["mean"]


def _sitk():  # type: ignore[no-untyped-def]
    import SimpleITK as sitk

    return sitk


@functools.cache
def source(name: str):  # type: ignore[no-untyped-def]
    """A real image as a SimpleITK image (float32): ``"ct"`` (pydicom's CT_small), ``"camera"`` (scikit-image,
    0.4 mm pixels), ``"mni"`` (nilearn's MNI152 T1 at 1 mm) or ``"mni-gm"``/``"mni-wm"`` (its tissue maps)."""
    sitk = _sitk()
    if name == "ct":
        import pydicom

        from lossfit.registration import load_image

        image = load_image(pydicom.data.get_testdata_file("CT_small.dcm"))
        return to_sitk(image.with_data(image.data - image.data.min()))
    if name == "camera":
        import skimage

        return to_sitk(Image(torch.tensor(skimage.data.camera(), dtype=torch.float32), spacing=0.4))
    import nilearn

    data = Path(nilearn.__file__).parent / "datasets" / "data"
    files = {"mni": "t1", "mni-gm": "gm", "mni-wm": "wm"}
    return sitk.ReadImage(str(data / f"mni_icbm152_{files[name]}_tal_nlin_sym_09a_converted.nii.gz"), sitk.sitkFloat32)


def to_sitk(image: Image):  # type: ignore[no-untyped-def]
    sitk = _sitk()
    s = sitk.GetImageFromArray(image.numpy())
    s.SetSpacing(image.spacing)
    s.SetOrigin(image.origin)
    s.SetDirection(tuple(v for row in image.direction for v in row))
    return s


def from_sitk(s) -> Image:  # type: ignore[no-untyped-def]
    d = s.GetDimension()
    return Image(
        torch.from_numpy(_sitk().GetArrayFromImage(s).astype(np.float32)),
        spacing=s.GetSpacing(),
        origin=s.GetOrigin(),
        direction=np.array(s.GetDirection()).reshape(d, d),
    )


def centre_of(s) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array(s.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in s.GetSize()]))


def extent_of(s) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array(s.GetSpacing()) * (np.array(s.GetSize()) - 1)


def rotation(angles: np.ndarray) -> np.ndarray:
    """A rotation from one angle (2-D) or three (3-D, about x, y, z in turn), in radians."""
    if len(angles) == 1:
        c, s = math.cos(angles[0]), math.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    r = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = math.cos(a), math.sin(a)
        m = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
        r = m @ r
    return r


def random_grid(rng: np.random.Generator, d: int, extent: np.ndarray, centre: np.ndarray, spacing: tuple[float, float]):  # type: ignore[no-untyped-def]
    """An empty SimpleITK grid: spacing per axis in ``spacing`` (mm), an oblique direction (up to 25 degrees) with
    random axis flips and a random permutation, a field of view of 75-105% of ``extent`` (so part of the object may
    be cut off), centred within 8 mm of ``centre``."""
    sitk = _sitk()
    step = rng.uniform(*spacing, size=d)
    oblique = rotation(rng.uniform(-0.44, 0.44, size=1 if d == 2 else 3))
    perm = np.eye(d)[rng.permutation(d)]
    flips = np.diag(rng.choice([-1.0, 1.0], size=d))
    direction = oblique @ perm @ flips
    fov = np.abs(perm.T @ extent) * rng.uniform(0.75, 1.05, size=d)  # along each grid axis
    size = np.maximum(np.round(fov / step).astype(int) + 1, 8)
    grid = sitk.Image([int(v) for v in size], sitk.sitkFloat32)
    grid.SetSpacing(step.tolist())
    grid.SetDirection(direction.reshape(-1).tolist())
    middle = centre + rng.uniform(-8, 8, size=d)
    grid.SetOrigin((middle - direction @ (step * (size - 1) / 2)).tolist())
    return grid


def random_truth(rng: np.random.Generator, model: str, d: int, centre: np.ndarray) -> np.ndarray:
    """A world transform of the model's kind, turning about ``centre``: rotations up to 6 degrees, shifts up to
    6 mm, scales within 5%, shears within 4%, perspective up to 1e-4 / mm (2-D)."""
    linear = np.eye(d)
    if model != "translation":
        linear = rotation(rng.uniform(-0.1, 0.1, size=1 if d == 2 else 3))
    if model == "similarity":
        linear = linear * rng.uniform(0.95, 1.05)
    if model in ("affine", "projective"):
        linear = linear @ (np.eye(d) + rng.uniform(-0.04, 0.04, size=(d, d)))
    m = np.eye(d + 1)
    m[:d, :d] = linear
    m[:d, d] = centre - linear @ centre + rng.uniform(-6, 6, size=d)
    if model == "projective":
        m[d, :d] = rng.uniform(-1e-4, 1e-4, size=d)
        m[d, d] = 1 - m[d, :d] @ centre  # the centre keeps its weight of 1
    return m


def resample_onto(src, grid, matrix: np.ndarray | None, sigma: float):  # type: ignore[no-untyped-def]
    """SimpleITK resamples the source, smoothed by ``sigma`` mm, onto ``grid``; output point y takes the source at
    ``matrix @ y`` (the identity when None). Projective matrices go through a displacement field."""
    sitk = _sitk()
    smooth = sitk.SmoothingRecursiveGaussian(src, sigma) if sigma > 0 else src
    d = src.GetDimension()
    if matrix is None:
        transform = sitk.Transform(d, sitk.sitkIdentity)
    elif np.allclose(matrix[d, :d], 0):
        transform = sitk.AffineTransform(d)
        transform.SetMatrix((matrix[:d, :d] / matrix[d, d]).reshape(-1).tolist())
        transform.SetTranslation((matrix[:d, d] / matrix[d, d]).tolist())
    else:
        points = np.stack(
            np.meshgrid(*[np.arange(n) for n in reversed(grid.GetSize())], indexing="ij")[::-1], axis=-1
        ).reshape(-1, d)
        image = from_sitk(grid)
        world = image.index_to_world(torch.from_numpy(points.astype(np.float64))).numpy()
        h = np.concatenate([world, np.ones((len(world), 1))], axis=1) @ matrix.T
        shift = h[:, :d] / h[:, d:] - world
        field = sitk.GetImageFromArray(shift.reshape(*reversed(grid.GetSize()), d), isVector=True)
        field.CopyInformation(grid)
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    return sitk.Resample(smooth, grid, transform, sitk.sitkLinear, 0.0)


def random_pair(
    seed: int, model: str, name: str = "mni", spacing: tuple[float, float] | None = None, same_grid: bool = False
) -> Pair:
    """A seeded pair on two random grids (``same_grid`` puts the moving image on the fixed grid), each image
    smoothed by half its largest spacing before SimpleITK samples it (as a scanner integrates over a voxel)."""
    rng = np.random.default_rng(seed)
    src = source(name)
    d = src.GetDimension()
    spacing = spacing or ((0.5, 3.0) if d == 2 else (1.5, 3.5))
    centre, extent = centre_of(src), extent_of(src)
    fixed_grid = random_grid(rng, d, extent, centre, spacing)
    moving_grid = fixed_grid if same_grid else random_grid(rng, d, extent, centre, spacing)
    truth = random_truth(rng, model, d, centre)
    fixed = resample_onto(src, fixed_grid, None, 0.5 * max(fixed_grid.GetSpacing()))
    moving = resample_onto(src, moving_grid, np.linalg.inv(truth), 0.5 * max(moving_grid.GetSpacing()))

    def voxel(s) -> float:  # type: ignore[no-untyped-def]
        return float(np.prod(s.GetSpacing()) ** (1 / d))

    tolerance = 0.1 * min(voxel(fixed_grid), voxel(moving_grid))
    return Pair(from_sitk(fixed), from_sitk(moving), torch.tensor(truth), tolerance, f"{name}-{model}-{seed}")


def motion_series(seed: int, n: int) -> tuple[list[Image], list[np.ndarray]]:
    """A series with known head motion: ``n`` volumes of MNI152 on one 3.5 mm grid, volume 0 still, the others
    moved by seeded rigid motions of up to 3 degrees and 3 mm, with noise (1% of the maximum); and each volume's
    truth, the map from the reference's (volume 0's) world points to that volume's."""
    sitk = _sitk()
    rng = np.random.default_rng(seed)
    src = source("mni")
    centre = centre_of(src)
    grid = sitk.Image([46, 54, 46], sitk.sitkFloat32)
    grid.SetSpacing((3.5, 3.5, 3.5))
    grid.SetOrigin(tuple(centre - 3.5 * (np.array([46, 54, 46]) - 1) / 2))
    volumes, truths = [], []
    for i in range(n):
        m = np.eye(4)
        if i:
            r = rotation(np.radians(rng.uniform(-3, 3, size=3)))
            m[:3, :3] = r
            m[:3, 3] = centre - r @ centre + rng.uniform(-3, 3, size=3)
        moved = from_sitk(resample_onto(src, grid, m, sigma=1.0))
        noise = torch.from_numpy(rng.normal(0, 0.01 * float(moved.data.max()), size=tuple(moved.shape)))
        volumes.append(moved.with_data(moved.data + noise.float()))
        truths.append(np.linalg.inv(m))  # volume(y) = source(m y): reference -> volume is m^-1
    return volumes, truths


# --- CT_small pairs for the command-line and cohort tests --------------------------------------------------------
def turn_about_centre(image: Image, degrees: float, shift: tuple[float, float]) -> torch.Tensor:
    """A 2-D world warp: a rotation about ``image``'s centre and a shift (mm); the moving image of a pair is the
    fixed one seen through it (``moving(y) = fixed(warp y)``), so the registration's answer is its inverse."""
    c = torch.tensor(image.center, dtype=torch.float64)
    a = math.radians(degrees)
    linear = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    warp = torch.eye(3, dtype=torch.float64)
    warp[:2, :2] = linear
    warp[:2, 2] = c - linear @ c + torch.tensor(shift, dtype=torch.float64)
    return warp


def own_grid(image: Image, degrees: float) -> Image:
    """An empty 2-D grid of its own over ``image``'s centre: 113 x 115 pixels of 0.8 x 0.7 mm, turned ``degrees``."""
    c, t = image.center, math.radians(degrees)
    direction = [[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]]
    origin = (c[0] - 45 * math.cos(t) + 40 * math.sin(t), c[1] - 45 * math.sin(t) - 40 * math.cos(t))
    return Image(torch.zeros(115, 113), spacing=(0.8, 0.7), origin=origin, direction=direction)


def ct_slice(grey8: bool = False) -> Image:
    """pydicom's CT_small.dcm (128 x 128, 0.66 mm); ``grey8``: its values scaled to whole numbers in 0..255."""
    import pydicom

    from lossfit.registration import load_image

    fixed = load_image(str(pydicom.data.get_testdata_file("CT_small.dcm")))
    if grey8:
        fixed = fixed.with_data(((fixed.data - fixed.data.min()) / (fixed.data.max() - fixed.data.min()) * 255).round())
    return fixed


def ct_cohort(
    folder: Path, warps: list[tuple[float, tuple[float, float]]]
) -> tuple[list[tuple[str, Path, Path]], dict[str, torch.Tensor]]:
    """CT_small (``folder/fixed.nii.gz``) and copies seen through ``warps`` (degrees, shift), each on a grid of its
    own turned 10 degrees; the pairs ``(id, fixed, moving)`` and each pair's answer by id."""
    from lossfit.registration import resample, save_image

    folder.mkdir(exist_ok=True)
    fixed = ct_slice()
    save_image(fixed, folder / "fixed.nii.gz")
    grid = own_grid(fixed, 10)
    pairs, truth = [], {}
    for i, (degrees, shift) in enumerate(warps):
        warp = turn_about_centre(fixed, degrees, shift)
        save_image(resample(fixed, grid, warp), folder / f"moving{i}.nii.gz")  # type: ignore[arg-type]
        pairs.append((f"s{i}", folder / "fixed.nii.gz", folder / f"moving{i}.nii.gz"))
        truth[f"s{i}"] = torch.linalg.inv(warp)
    return pairs, truth


def sitk_matrix(transform) -> np.ndarray:  # type: ignore[no-untyped-def]
    """A 3-D SimpleITK transform as a 4x4 matrix, read off by evaluating it at the origin and the unit vectors
    (exact for the affine family; independent of lossfit's own reader)."""
    m = np.eye(4)
    m[:3, 3] = transform.TransformPoint((0.0, 0.0, 0.0))
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 1.0
        m[:3, axis] = np.array(transform.TransformPoint(tuple(unit))) - m[:3, 3]
    return m
