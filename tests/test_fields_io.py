"""Displacement field files: lossfit's round trip, SimpleITK and ANTs reading lossfit's files (points and resampled
images), lossfit reading SimpleITK's and ANTs' files, the HDF5 composite, bad input."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lossfit.errors import InputFileError
from lossfit.registration import Image, resample, save_image
from lossfit.registration.fields_io import read_displacement_field, write_composite_h5, write_displacement_field

F32 = 2.0**-24  # float32 unit roundoff: NIfTI stores its sform (the grid) in float32
F64 = 2.0**-52  # float64 unit roundoff


@pytest.fixture
def sitk() -> Any:
    return pytest.importorskip("SimpleITK")


@pytest.fixture
def ants() -> Any:
    return pytest.importorskip("ants")


# --- grids, fields and images -------------------------------------------------------------------------------------
def _rotation(gen: torch.Generator, d: int, angle: float) -> torch.Tensor:
    """A rotation by up to ``angle`` radians about a random axis (2-D: in the plane)."""
    if d == 2:
        a = angle * (2 * torch.rand((), generator=gen, dtype=torch.float64) - 1)
        return torch.stack([torch.stack([a.cos(), -a.sin()]), torch.stack([a.sin(), a.cos()])])
    axis = torch.randn(3, generator=gen, dtype=torch.float64)
    axis = axis / axis.norm() * angle
    k = torch.zeros(3, 3, dtype=torch.float64)
    k[0, 1], k[0, 2], k[1, 2] = -axis[2], axis[1], -axis[0]
    return torch.linalg.matrix_exp(k - k.T)


def _grid(gen: torch.Generator, shape: tuple[int, ...], slice_z: float = 0.0) -> Image:
    """An oblique, anisotropic grid: a signed permutation of the axes (flips, swaps) tilted by up to 0.4 rad."""
    d = len(shape)
    permutation = torch.randperm(d, generator=gen)
    signs = torch.where(torch.rand(d, generator=gen) < 0.5, -1.0, 1.0).double()
    flips = torch.eye(d, dtype=torch.float64)[:, permutation] * signs
    return Image(
        torch.zeros(shape),
        spacing=0.5 + 2.5 * torch.rand(d, generator=gen, dtype=torch.float64),
        origin=60 * (2 * torch.rand(d, generator=gen, dtype=torch.float64) - 1),
        direction=_rotation(gen, d, 0.4) @ flips,
        slice_z=slice_z,
    )


def _smooth_field(gen: torch.Generator, grid: Image, amplitude: float = 2.0) -> torch.Tensor:
    """``(*grid.shape, d)`` float64: a sum of two waves of the world point per component, up to 2 * amplitude mm."""
    x = grid.world_grid(torch.float64)
    d = grid.ndim
    u = torch.zeros(*grid.shape, d, dtype=torch.float64)
    for c in range(d):
        for _ in range(2):
            k = torch.randn(d, generator=gen, dtype=torch.float64) * 0.15  # wavelengths of about 25 mm
            phase = 6.3 * torch.rand((), generator=gen, dtype=torch.float64)
            u[..., c] += amplitude * torch.sin(x @ k + phase)
    return u


def _lipschitz(values: torch.Tensor, spacing: tuple[float, ...]) -> float:
    """The largest change of ``values`` (data order, optional trailing components) per mm between neighbours."""
    d = len(spacing)
    steps = [values.diff(dim=axis).abs().max() / spacing[d - 1 - axis] for axis in range(d)]
    return float(torch.stack(steps).max())


def _float32_shift(grid: Image) -> float:
    """How far (mm) a voxel centre may move when the grid is stored in float32 (a NIfTI sform): every entry of the
    affine and the origin rounds by at most F32 of itself, so a point moves by at most F32 times the sum of the
    magnitudes that make it up."""
    extent = sum(s * (n - 1) for s, n in zip(grid.spacing, grid.size, strict=True))
    return F32 * (max(abs(v) for v in grid.origin) + extent)


def _to_sitk(sitk: Any, image: Image, vectors: np.ndarray | None = None) -> Any:
    """``image`` (or ``vectors`` on its grid) as a SimpleITK image with the exact geometry."""
    data = image.data.double().numpy() if vectors is None else vectors
    out = sitk.GetImageFromArray(data, isVector=vectors is not None)
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection([v for row in image.direction for v in row])
    return out


def _moving(gen: torch.Generator, d: int) -> Image:
    """A smooth float64 image on an axis-aligned grid that covers every grid :func:`_grid` makes, and more."""
    n = (60,) * d
    grid = Image(torch.zeros(n), spacing=(3.0,) * d, origin=(-90.0,) * d)
    k = torch.randn(3, d, generator=gen, dtype=torch.float64) * 0.08
    x = grid.world_grid(torch.float64)
    return grid.with_data(torch.cos(x @ k.T).sum(-1) + 0.01 * x[..., 0])


def _interior(grid: Image, moving: Image, u: torch.Tensor) -> torch.Tensor:
    """Voxels of ``grid`` off its border whose mapped point lies a voxel or more inside ``moving``."""
    index = moving.world_to_index(grid.world_grid(torch.float64) + u)
    size = torch.tensor(moving.size, dtype=torch.float64)
    inside = ((index >= 1) & (index <= size - 2)).all(-1)
    border = torch.zeros_like(inside)
    for axis in range(grid.ndim):
        border.index_fill_(axis, torch.tensor([0, grid.shape[axis] - 1]), True)
    return inside & ~border


def _voxels(gen: torch.Generator, grid: Image, n: int = 5) -> list[tuple[int, ...]]:
    """``n`` random voxels as data-order indices."""
    return [tuple(int(torch.randint(s, (), generator=gen)) for s in grid.shape) for _ in range(n)]


def _world(grid: Image, voxel: tuple[int, ...]) -> torch.Tensor:
    """The world point of a voxel given in data order."""
    return grid.index_to_world(torch.tensor(voxel[::-1], dtype=torch.float64))


# --- lossfit's round trip -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".mha"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(9, 11, 13), (17, 19)])
def test_round_trip(tmp_path: Path, suffix: str, dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    slice_z = -12.5 if len(shape) == 2 and suffix != ".mha" else 0.0  # a 2-D MetaImage has no z
    grid = _grid(gen, shape, slice_z)
    u = _smooth_field(gen, grid).to(dtype)
    path = tmp_path / f"field{suffix}"
    write_displacement_field(path, u, grid)
    back, field_grid = read_displacement_field(path)
    assert back.dtype == torch.float64 and back.shape == u.shape
    assert torch.equal(back, u.double())  # stored in its own precision: no rounding
    assert field_grid.shape == grid.shape and field_grid.slice_z == pytest.approx(slice_z, abs=F32 * 12.5)
    # MetaImage keeps the geometry as decimal text that reads back exactly; NIfTI rounds it to float32.
    # Spacing and direction come from the norms of the stored columns: a few roundoffs of the entries.
    rel = 4 * (F32 if suffix != ".mha" else F64)
    np.testing.assert_allclose(field_grid.spacing, grid.spacing, rtol=rel, atol=0)
    np.testing.assert_allclose(field_grid.direction, grid.direction, rtol=0, atol=rel)
    np.testing.assert_allclose(field_grid.origin, grid.origin, rtol=rel, atol=0)


# --- SimpleITK reads lossfit's files ------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
@pytest.mark.parametrize("shape", [(12, 14, 16), (30, 34)])
def test_simpleitk_maps_and_resamples_like_lossfit(sitk: Any, tmp_path: Path, suffix: str, shape: tuple) -> None:
    gen = torch.Generator().manual_seed(2)
    grid = _grid(gen, shape)
    u = _smooth_field(gen, grid)
    path = tmp_path / f"field{suffix}"
    write_displacement_field(path, u, grid)
    field = sitk.ReadImage(str(path))
    assert field.GetDimension() == grid.ndim and field.GetNumberOfComponentsPerPixel() == grid.ndim
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))

    # SimpleITK looks the field up at x in the grid it read: the float32 NIfTI grid may sit `shift` mm away from
    # lossfit's, which moves the looked-up displacement by up to shift * (largest gradient of u).
    shift = _float32_shift(grid) if suffix != ".mha" else 0.0
    scale = max(abs(v) for v in grid.origin) + max(grid.spacing) * max(grid.size) + float(u.abs().max())
    lip_u = _lipschitz(u, grid.spacing)
    point_tol = 4 * shift * lip_u + 16 * F64 * scale
    for voxel in _voxels(gen, grid):
        x = _world(grid, voxel)
        mapped = np.array(transform.TransformPoint(tuple(x.tolist())))
        np.testing.assert_allclose(mapped, (x + u[voxel]).numpy(), rtol=0, atol=point_tol)

    moving = _moving(gen, grid.ndim)
    theirs = sitk.Resample(_to_sitk(sitk, moving), _to_sitk(sitk, grid), transform, sitk.sitkLinear, 0.0)
    ours = resample(moving, grid, displacement=u)
    assert isinstance(ours, Image)
    keep = _interior(grid, moving, u)
    assert keep.sum() > 0.5 * keep.numel()
    # Both interpolate the same moving image linearly at points at most `point_tol` apart.
    tol = 2 * _lipschitz(moving.data, moving.spacing) * point_tol + 64 * F64 * float(moving.data.abs().max())
    difference = (torch.from_numpy(sitk.GetArrayFromImage(theirs)) - ours.data)[keep]
    assert float(difference.abs().max()) <= tol


# --- lossfit reads SimpleITK's files ------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".nii.gz", ".mha", "compressed.mha"])
@pytest.mark.parametrize("shape", [(5, 6, 7), (8, 9)])
def test_lossfit_reads_simpleitk_field(sitk: Any, tmp_path: Path, suffix: str, shape: tuple) -> None:
    gen = torch.Generator().manual_seed(3)
    grid = _grid(gen, shape)
    vectors = torch.randn(*shape, len(shape), generator=gen, dtype=torch.float64).numpy()
    path = tmp_path / f"sitk{suffix}"
    sitk.WriteImage(_to_sitk(sitk, grid, vectors), str(path), suffix.startswith("compressed"))
    u, field_grid = read_displacement_field(path)
    assert torch.equal(u, torch.from_numpy(vectors))  # the components as SimpleITK holds them, nothing flipped
    rel = 4 * (F32 if suffix == ".nii.gz" else F64)
    np.testing.assert_allclose(field_grid.spacing, grid.spacing, rtol=rel, atol=0)
    np.testing.assert_allclose(field_grid.direction, grid.direction, rtol=0, atol=rel)
    np.testing.assert_allclose(field_grid.origin, grid.origin, rtol=rel, atol=0)


@pytest.mark.parametrize("d", [2, 3])
def test_dispvect_intent_is_read_as_simpleitk_reads_it(sitk: Any, tmp_path: Path, d: int) -> None:
    """A NIfTI with intent 1006 (displacement vectors) holds RAS components: x and y are flipped to LPS, as ITK 5.4
    reads a 3-D field. (ITK 5.4 misreads a 2-D one: it flips the first two of every three stored numbers.)"""
    import nibabel as nib

    gen = torch.Generator().manual_seed(4)
    stored = torch.randn(7, 6, 5 if d == 3 else 1, 1, d, generator=gen, dtype=torch.float64).numpy()
    ras = np.diag([-1.5, -1.0, 2.0, 1.0])
    nifti = nib.Nifti1Image(stored, ras)
    nifti.header.set_intent(1006)
    path = tmp_path / "dispvect.nii"
    nib.save(nifti, path)
    u, _ = read_displacement_field(path)
    if d == 3:
        assert torch.equal(u, torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))))
    flip = torch.tensor([-1.0, -1.0, 1.0][:d], dtype=torch.float64)  # RAS to LPS: x and y change sign
    expected = stored[:, :, :, 0].transpose(2, 1, 0, 3) if d == 3 else stored[:, :, 0, 0].transpose(1, 0, 2)
    assert torch.equal(u, torch.from_numpy(expected.copy()) * flip)


# --- ANTs ---------------------------------------------------------------------------------------------------------
def _blob(grid: Image, centre: tuple[float, ...], widths: tuple[float, ...]) -> torch.Tensor:
    x = grid.world_grid(torch.float64) - torch.tensor(centre, dtype=torch.float64)
    return 100 * torch.exp(-((x / torch.tensor(widths, dtype=torch.float64)) ** 2).sum(-1))


def _to_ants(ants: Any, image: Image) -> Any:
    return ants.from_numpy(
        image.data.numpy().astype(np.float32).transpose(2, 1, 0),  # ANTs' arrays are in index order (i, j, k)
        origin=image.origin,
        spacing=image.spacing,
        direction=np.array(image.direction),
    )


def test_ants_syn_warp(ants: Any, sitk: Any, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    geometry = _grid(gen, (24, 24, 24))
    fixed = geometry.with_data(_blob(geometry, geometry.center, (9.0, 7.0, 8.0)).float())
    moved_centre = tuple(c + s for c, s in zip(geometry.center, (2.0, -1.5, 1.0), strict=True))
    moving = geometry.with_data(_blob(geometry, moved_centre, (8.0, 8.0, 7.0)).float())
    result = ants.registration(
        _to_ants(ants, fixed),
        _to_ants(ants, moving),
        "SyNOnly",
        reg_iterations=(8, 4),
        outprefix=str(tmp_path / "syn_"),
    )
    warp = next(p for p in result["fwdtransforms"] if p.endswith("Warp.nii.gz"))

    u, grid = read_displacement_field(warp)
    assert torch.equal(u, torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(warp)).astype(np.float64)))
    assert float(u.abs().max()) > 0.1  # the registration moved something
    np.testing.assert_allclose(grid.spacing, geometry.spacing, rtol=4 * F32, atol=0)
    np.testing.assert_allclose(grid.direction, geometry.direction, rtol=0, atol=4 * F32)
    np.testing.assert_allclose(grid.origin, geometry.origin, rtol=4 * F32, atol=0)

    copy = tmp_path / "copy.nii.gz"
    write_displacement_field(copy, u, grid)
    f, m = _to_ants(ants, fixed), _to_ants(ants, moving)
    theirs = torch.from_numpy(ants.apply_transforms(f, m, transformlist=[warp]).numpy().transpose(2, 1, 0).copy())
    again = torch.from_numpy(ants.apply_transforms(f, m, transformlist=[str(copy)]).numpy().transpose(2, 1, 0).copy())
    # The copy holds the same values on a grid re-stored in float32 (at most one float32 rounding apart); ANTs
    # returns float32 images.
    shift = _float32_shift(grid)
    lip = _lipschitz(moving.data.double(), moving.spacing)
    tol = 4 * lip * shift * (1 + _lipschitz(u, grid.spacing)) + 4 * F32 * float(moving.data.abs().max())
    assert float((again - theirs).abs().max()) <= tol

    # lossfit resamples through the field it read as ANTs does through its file.
    ours = resample(moving.to(torch.float64), grid, displacement=u)
    assert isinstance(ours, Image)
    keep = _interior(grid, moving, u)
    assert keep.sum() > 0.3 * keep.numel()
    assert float((ours.data - theirs)[keep].abs().max()) <= tol


# --- the HDF5 composite -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 7, 8), (9, 10)])
def test_composite_h5_maps_like_simpleitk(sitk: Any, tmp_path: Path, shape: tuple) -> None:
    import h5py  # noqa: F401  (a dev dependency: the test fails, not skips, without it)

    gen = torch.Generator().manual_seed(6)
    grid = _grid(gen, shape)
    u = _smooth_field(gen, grid)
    d = grid.ndim
    matrix = torch.eye(d + 1, dtype=torch.float64)
    matrix[:d, :d] = _rotation(gen, d, 0.3) * torch.tensor([1.1, 0.9, 1.05][:d], dtype=torch.float64)
    matrix[:d, d] = torch.tensor([4.0, -3.0, 2.5][:d], dtype=torch.float64)
    path = tmp_path / "composite.h5"
    write_composite_h5(path, matrix, u.float(), grid)
    transform = sitk.ReadTransform(str(path))
    assert transform.GetName() == "CompositeTransform"
    # Every number is stored in float64: only the arithmetic of mapping a point (sizes up to `scale`) differs.
    scale = max(abs(v) for v in grid.origin) + max(grid.spacing) * max(grid.size) + 10.0
    for voxel in _voxels(gen, grid):
        x = _world(grid, voxel)
        expected = matrix[:d, :d] @ (x + u.float().double()[voxel]) + matrix[:d, d]  # the field first, then the matrix
        mapped = np.array(transform.TransformPoint(tuple(x.tolist())))
        np.testing.assert_allclose(mapped, expected.numpy(), rtol=0, atol=64 * F64 * scale)
        other_order = matrix[:d, :d] @ x + matrix[:d, d]
        other_order = other_order + u.float().double()[voxel]
        assert np.abs(mapped - other_order.numpy()).max() > 1e-3  # the order is tested, not a coincidence


# --- bad input ----------------------------------------------------------------------------------------------------
def _bad_writes(grid: Image, good: torch.Tensor) -> list[tuple[dict[str, Any], type[Exception], str]]:
    nan = good.clone()
    nan[0, 0, 0, 1] = math.nan
    inf = good.clone()
    inf[1, 2, 3, 0] = math.inf
    return [
        (
            {"displacement": good[..., :2]},
            ValueError,
            r"`displacement` must have shape .*\(4, 5, 6, 3\).*\(4, 5, 6, 2\)",
        ),
        ({"displacement": good.permute(2, 1, 0, 3)}, ValueError, r"`displacement` must have shape"),
        ({"displacement": nan}, ValueError, r"`displacement` must be finite"),
        ({"displacement": inf}, ValueError, r"`displacement` must be finite"),
        ({"displacement": "zeros"}, TypeError, r"`displacement` must hold real numbers"),
        ({"grid": good}, TypeError, r"`grid` must be a lossfit.registration.Image; got Tensor"),
        ({"name": "field.nrrd"}, ValueError, r"`path` must end in one of .nii, .nii.gz, .mha; got .*field.nrrd"),
    ]


def test_bad_writes_raise_and_leave_no_file(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(7)
    grid = _grid(gen, (4, 5, 6))
    good = _smooth_field(gen, grid)
    for change, error, message in _bad_writes(grid, good):
        args = {"displacement": good, "grid": grid, "name": "field.nii.gz"} | change
        with pytest.raises(error, match=message):
            write_displacement_field(tmp_path / args["name"], args["displacement"], args["grid"])
        assert list(tmp_path.iterdir()) == []
    with pytest.raises(TypeError, match=r"`path` must be a str or os\.PathLike; got int"):
        write_displacement_field(3, good, grid)  # type: ignore[arg-type]
    with pytest.raises(InputFileError, match="does not exist"):
        write_displacement_field(tmp_path / "missing" / "field.nii", good, grid)
    # A refused write leaves an existing file as it was.
    path = tmp_path / "field.mha"
    write_displacement_field(path, good, grid)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="finite"):
        write_displacement_field(path, _bad_writes(grid, good)[2][0]["displacement"], grid)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["field.mha"]


def test_bad_composites_raise_and_leave_no_file(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(8)
    grid = _grid(gen, (4, 5, 6))
    good = _smooth_field(gen, grid)
    projective = torch.eye(4, dtype=torch.float64)
    projective[3, 0] = 0.01
    path = tmp_path / "composite.h5"
    cases = [
        (torch.eye(3), ValueError, r"`matrix` must be \(4, 4\) for a 3-D grid; got shape \(3, 3\)"),
        (projective, ValueError, r"`matrix` must be affine .*projective"),
        (torch.full((4, 4), math.nan), ValueError, r"`matrix` must be finite"),
    ]
    for matrix, error, message in cases:
        with pytest.raises(error, match=message):
            write_composite_h5(path, matrix, good, grid)
    with pytest.raises(ValueError, match=r"`path` must end in one of .h5, .hdf5"):
        write_composite_h5(tmp_path / "composite.tfm", torch.eye(4), good, grid)
    with pytest.raises(ValueError, match="`displacement` must have shape"):
        write_composite_h5(path, torch.eye(4), good[0], grid)
    assert list(tmp_path.iterdir()) == []


def _nifti(path: Path, array: np.ndarray, intent: int) -> Path:
    import nibabel as nib

    nifti = nib.Nifti1Image(array, np.diag([-1.0, -1.0, 1.0, 1.0]))
    nifti.header.set_intent(intent)
    nib.save(nifti, path)
    return path


def test_bad_files_raise_input_file_error_naming_the_file(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(9)
    grid = _grid(gen, (4, 5, 6))
    field = tmp_path / "field.mha"
    write_displacement_field(field, _smooth_field(gen, grid).float(), grid)
    header_end = field.read_bytes().index(b"LOCAL\n") + len(b"LOCAL\n")
    (tmp_path / "truncated.mha").write_bytes(field.read_bytes()[: header_end + 100])
    (tmp_path / "one_channel.mha").write_bytes(field.read_bytes().replace(b"Channels = 3", b"Channels = 1"))
    (tmp_path / "garbage.nii.gz").write_bytes(b"\x1f\x8b not a gzip stream" * 10)
    (tmp_path / "garbage.mha").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "field.txt").write_text("1 2 3")
    save_image(Image(torch.zeros(4, 5, 6)), tmp_path / "scalar.nii.gz")
    with_nan = np.zeros((6, 5, 4, 1, 3))
    with_nan[1, 2, 3, 0, 1] = math.nan
    cases = [
        (tmp_path / "missing.nii.gz", "no such file"),
        (tmp_path / "truncated.mha", "it is truncated"),
        (tmp_path / "one_channel.mha", "holds 1 component"),
        (tmp_path / "garbage.nii.gz", "cannot be read as NIfTI"),
        (tmp_path / "garbage.mha", "is not a MetaImage"),
        (tmp_path / "field.txt", "unsupported file type"),
        (tmp_path / "scalar.nii.gz", r"is not a vector displacement field: .*shape \(6, 5, 4\)"),
        (_nifti(tmp_path / "no_intent.nii", np.zeros((6, 5, 4, 1, 3)), 0), "intent code 0"),
        (_nifti(tmp_path / "four.nii", np.zeros((6, 5, 4, 1, 4)), 1007), "holds 4 components per voxel"),
        (_nifti(tmp_path / "two_in_3d.nii", np.zeros((6, 5, 4, 1, 2)), 1007), "holds 2 components per voxel"),
        (_nifti(tmp_path / "nan.nii", with_nan, 1007), "NaN or infinity"),
    ]
    for path, message in cases:
        with pytest.raises(InputFileError, match=re.escape(str(path)) + ".*" + message):
            read_displacement_field(path)
