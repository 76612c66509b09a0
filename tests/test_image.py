"""lossfit.registration: Image geometry (LPS, data in (nz, ny, nx) order) and image files, checked against
SimpleITK and nibabel reading the same files."""

from __future__ import annotations

import gzip
import math
import os
import pickle
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from PIL import Image as PILImage

from lossfit.errors import InputFileError
from lossfit.registration import Image, load_image, save_image

F64 = torch.float64
SITE = Path(np.__file__).parent.parent
NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"
NILEARN_DATA = SITE / "nilearn" / "datasets" / "data"  # the files nilearn's MNI templates are built from
SKIMAGE_DATA = SITE / "skimage" / "data"
DICOMDIR = Path(pydicom.data.get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892003"
CT_SMALL = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
MR_SMALL = Path(pydicom.data.get_testdata_file("MR_small.dcm"))
SAGITTAL_SERIES = "1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481"  # one sagittal slice in dicomdirtests/MR2


@pytest.fixture(autouse=True)
def _one_thread(one_thread: None) -> Iterator[None]:
    yield


def rotation(a: float, b: float, c: float) -> np.ndarray:
    """Rotation about x by a, then y by b, then z by c."""
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_image(seed: int = 0) -> Image:
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(5, 6, 7, generator=g) * 100 - 20
    return Image(data, spacing=(0.7, 1.3, 2.5), origin=(10.5, -20.25, 33.0), direction=rotation(0.3, -0.2, 0.5))


def sample_indices(size: tuple[int, ...]) -> np.ndarray:
    """Corners, the middle and a non-integer index (0 along a single slice), (m, d) in index order."""
    d = len(size)
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in size], indexing="ij")).reshape(d, -1).T
    extra = np.array([[(n - 1) / 2 for n in size], [0.25 * n + 0.3 if n > 1 else 0 for n in size]])
    return np.concatenate([corners, extra]).astype(np.float64)


def assert_matches_sitk(image: Image, reference: sitk.Image, atol: float = 1e-4) -> None:
    """World points of sample indices and the voxel values agree with SimpleITK's reading of the same file(s)."""
    extra = [0.0] * (reference.GetDimension() - image.ndim)
    for index in sample_indices(image.size):
        expected = reference.TransformContinuousIndexToPhysicalPoint([*index.tolist(), *extra])[: image.ndim]
        ours = image.index_to_world(torch.from_numpy(index))
        np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=atol, err_msg=f"index {index}")
    values = sitk.GetArrayFromImage(reference).astype(np.float64)
    assert values.size == image.data.numel()
    np.testing.assert_allclose(image.numpy().astype(np.float64), values.reshape(image.shape), rtol=1e-6, atol=1e-4)


# -- NIfTI against SimpleITK and nibabel ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oblique_nifti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first volume of nibabel's example4d.nii.gz (oblique: 0.3 rad about x; 2 x 2 x 2.2 mm), as a 3-D file."""
    source = nib.load(NIBABEL_DATA / "example4d.nii.gz")
    volume = nib.Nifti1Image(np.asarray(source.dataobj[..., 0]), source.affine, source.header)
    path = tmp_path_factory.mktemp("nifti") / "example3d.nii.gz"
    nib.save(volume, path)
    return path


NIFTI_FILES = [
    NIBABEL_DATA / "anatomical.nii",  # big-endian int16, x flipped in RAS
    NIBABEL_DATA / "standard.nii.gz",  # uint8, anisotropic 1 x 3 x 2, sform only
    NIBABEL_DATA / "reoriented_anat_moved.nii",  # float32, non-integer origin
    NILEARN_DATA / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",  # MNI152 2009a, 1 mm, RAS+
    NILEARN_DATA / "image_10426.nii.gz",  # float32 statistical map, 3 mm
]


@pytest.mark.parametrize("path", [*NIFTI_FILES, "oblique"], ids=lambda p: getattr(p, "name", p))
def test_nifti_geometry_and_values_agree_with_simpleitk_and_nibabel(path: Path | str, oblique_nifti: Path) -> None:
    path = oblique_nifti if path == "oblique" else path
    image = load_image(path)
    reference = nib.load(path)
    assert image.ndim == 3 and image.size == reference.shape[:3] and image.dtype == torch.float32
    assert_matches_sitk(image, sitk.ReadImage(str(path)))
    # nibabel: world_ras = affine @ (i, j, k, 1); LPS flips x and y.
    index = sample_indices(image.size)
    ras = (reference.affine @ np.c_[index, np.ones(len(index))].T).T[:, :3]
    np.testing.assert_allclose(image.index_to_world(torch.from_numpy(index)).numpy(), ras * [-1, -1, 1], atol=1e-6)
    np.testing.assert_allclose(image.affine.numpy(), np.diag([-1, -1, 1, 1]) @ reference.affine, atol=1e-6)
    np.testing.assert_allclose(image.numpy(), np.asarray(reference.get_fdata()).transpose(2, 1, 0), atol=1e-5)


def test_shipped_oblique_volume_geometry(oblique_nifti: Path) -> None:
    image = load_image(oblique_nifti)
    np.testing.assert_allclose(image.spacing, (2.0, 2.0, 2.2), atol=1e-5)
    c, s = math.cos(0.16231), math.sin(0.16231)  # tilted 9.3 degrees about x; j runs anterior (-y in LPS)
    np.testing.assert_allclose(image.direction, [[1, 0, 0], [0, -c, s], [0, s, c]], atol=1e-4)


def test_four_d_nifti_is_refused_but_a_singleton_fourth_dimension_is_dropped(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"example4d\.nii\.gz: holds a 4-D image of shape \(128, 96, 24, 2\)"):
        load_image(NIBABEL_DATA / "example4d.nii.gz")
    path = tmp_path / "single.nii"
    nib.save(nib.Nifti1Image(np.arange(24, dtype=np.float32).reshape(2, 3, 4, 1), np.eye(4)), path)
    image = load_image(path)
    assert image.shape == (4, 3, 2)
    assert image.data[3, 2, 1] == 1 * 12 + 2 * 4 + 3  # data[k, j, i] is the file's [i, j, k]


def test_two_d_nifti_loads_with_one_slice_and_scaling_is_applied(tmp_path: Path) -> None:
    nifti = nib.Nifti1Image(np.arange(6, dtype=np.int16).reshape(2, 3), np.diag([2.0, 3.0, 4.0, 1.0]))
    nifti.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / "flat.nii"
    nib.save(nifti, path)
    image = load_image(path)
    assert image.shape == (1, 3, 2) and image.spacing == (2.0, 3.0, 4.0)
    assert torch.equal(image.data[0], torch.tensor([[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]) * 0.5 + 10.0)


def test_dtype_keyword() -> None:
    image = load_image(NIBABEL_DATA / "anatomical.nii", dtype=torch.float64)
    assert image.dtype == F64
    with pytest.raises(TypeError, match="`dtype` must be a floating"):
        load_image(NIBABEL_DATA / "anatomical.nii", dtype=torch.int32)


# -- DICOM ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CT_SMALL, MR_SMALL], ids=lambda p: p.name)
def test_single_axial_dicom_slice_is_2d_and_agrees_with_simpleitk(path: Path) -> None:
    image = load_image(path)
    ds = pydicom.dcmread(path)
    assert image.ndim == 2 and image.shape == (ds.Rows, ds.Columns)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    assert image.spacing == (dx, dy)
    assert image.origin == tuple(float(v) for v in ds.ImagePositionPatient[:2])
    assert_matches_sitk(image, sitk.ReadImage(str(path)))  # SimpleITK keeps one slice; the x, y parts agree
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    assert torch.equal(image.data, torch.from_numpy(ds.pixel_array * slope + intercept).float())


def test_ct_small_geometry() -> None:
    image = load_image(CT_SMALL)
    assert image.spacing == (0.661468, 0.661468)
    assert image.origin == (-158.135803, -179.035797)
    assert image.direction == ((1.0, 0.0), (0.0, 1.0))
    assert float(image.data.min()) == pydicom.dcmread(CT_SMALL).pixel_array.min() - 1024.0  # RescaleIntercept


def test_single_sagittal_slice_stays_3d_and_agrees_with_simpleitk() -> None:
    folder = DICOMDIR / "MR2"
    image = load_image(folder, series=SAGITTAL_SERIES)
    assert image.shape == (1, 16, 16)
    assert image.direction == ((0.0, 0.0, -1.0), (1.0, 0.0, 0.0), (0.0, -1.0, 0.0))
    assert_matches_sitk(image, sitk.ReadImage(str(folder / "15970")))


def write_series(folder: Path, positions: list[float], orientation: np.ndarray, *, uid: str = "1.2.3.4") -> None:
    """Copies of CT_small as one series at ``positions`` (mm) along the normal of ``orientation`` (row, column
    cosines as rows of a 2 x 3 array), in shuffled file names; slice k's stored values are CT_small's + 10 k."""
    folder.mkdir(exist_ok=True)
    normal = np.cross(orientation[0], orientation[1])
    corner = np.array([-158.1, -179.0, -75.7])
    names = np.random.default_rng(1).permutation(len(positions))  # file names not in spatial order either
    for k in range(len(positions)):
        ds = pydicom.dcmread(CT_SMALL)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = f"{uid}.{k + 1}"
        ds.InstanceNumber = int(len(positions) - k)  # deliberately not in spatial order
        ds.ImageOrientationPatient = [f"{v:.9f}" for v in orientation.ravel()]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in corner + positions[k] * normal]
        ds.SliceLocation = f"{positions[k]:.6f}"
        ds.PixelData = (ds.pixel_array + 10 * k).astype(ds.pixel_array.dtype).tobytes()
        ds.save_as(folder / f"{uid}-{names[k]:03d}.dcm")


OBLIQUE_ORIENTATION = rotation(0.2, 0.1, -0.3)[:, :2].T


@pytest.mark.parametrize("orientation", [np.eye(3)[:2], OBLIQUE_ORIENTATION], ids=["axial", "oblique"])
def test_built_dicom_series_agrees_with_simpleitk(tmp_path: Path, orientation: np.ndarray) -> None:
    folder = tmp_path / "series"
    write_series(folder, [0.0, 2.5, 5.0, 7.5, 10.0], orientation)
    (folder / "README.txt").write_text("not DICOM")
    image = load_image(folder)
    assert image.shape == (5, 128, 128)
    np.testing.assert_allclose(image.spacing, (0.661468, 0.661468, 2.5), atol=1e-6)
    np.testing.assert_allclose(np.array(image.direction)[:, 2], np.cross(*orientation), atol=1e-6)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    assert_matches_sitk(image, reader.Execute())
    ct = pydicom.dcmread(CT_SMALL).pixel_array - 1024.0
    for k in range(5):  # sorted along the normal, not by file name or InstanceNumber
        assert torch.equal(image.data[k], torch.from_numpy(ct + 10 * k).float())


def test_tilted_series_keeps_each_slice_at_its_position(tmp_path: Path) -> None:
    """nibabel's 0.dcm and 1.dcm step 3 mm along z while their normal is tilted 0.3 degrees: the third direction
    column follows the positions (SimpleITK uses the normal, and is 0.016 mm off at the second slice)."""
    for name in ("0.dcm", "1.dcm"):
        shutil.copy(NIBABEL_DATA / name, tmp_path / name)
    image = load_image(tmp_path)
    assert image.shape == (2, 256, 256)
    for k, name in enumerate(("0.dcm", "1.dcm")):
        position = [float(v) for v in pydicom.dcmread(tmp_path / name).ImagePositionPatient]
        np.testing.assert_allclose(image.index_to_world(torch.tensor([0.0, 0.0, k], dtype=F64)), position, atol=1e-9)


def test_dicom_folder_with_several_series(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"MR2: holds 3 DICOM series: .*choose one with series="):
        load_image(DICOMDIR / "MR2")
    with pytest.raises(InputFileError, match=r"MR2: holds no series '9\.9'"):
        load_image(DICOMDIR / "MR2", series="9.9")
    write_series(tmp_path / "mixed", [0.0, 2.0], np.eye(3)[:2], uid="1.2.3")
    write_series(tmp_path / "mixed", [0.0, 2.0, 4.0], np.eye(3)[:2], uid="1.2.4")
    with pytest.raises(InputFileError, match=r"mixed: holds 2 DICOM series: '1\.2\.3' \(2 files\), '1\.2\.4' \(3"):
        load_image(tmp_path / "mixed")
    assert load_image(tmp_path / "mixed", series="1.2.4").shape == (3, 128, 128)


def test_dicom_series_that_cannot_be_stacked(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"MR700: its slices have different orientations"):
        load_image(DICOMDIR / "MR700")  # a three-plane localizer sharing one series
    write_series(tmp_path / "gap", [0.0, 2.0, 4.0, 8.0], np.eye(3)[:2])
    with pytest.raises(InputFileError, match=r"gap: its slices are not evenly spaced \(2 to 4 mm"):
        load_image(tmp_path / "gap")
    write_series(tmp_path / "twice", [0.0, 2.0, 2.0, 4.0], np.eye(3)[:2])
    with pytest.raises(InputFileError, match=r"twice: 2 slices share a position"):
        load_image(tmp_path / "twice")
    with pytest.raises(InputFileError, match=r"98892003: holds no DICOM images"):
        load_image(DICOMDIR)


# -- saving and loading again -----------------------------------------------------------------------------------------


def assert_same_geometry(a: Image, b: Image, atol: float = 1e-5) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


@pytest.mark.parametrize("name", ["oblique.nii.gz", "oblique.NII"])
def test_nifti_round_trip_of_an_oblique_anisotropic_image(tmp_path: Path, name: str) -> None:
    image = oblique_image()
    path = tmp_path / name
    save_image(image, path)
    back = load_image(path)
    assert torch.equal(back.data, image.data)
    assert_same_geometry(back, image)
    reference = sitk.ReadImage(str(path), imageIO="NiftiImageIO")
    np.testing.assert_allclose(reference.GetOrigin(), image.origin, atol=1e-5)
    np.testing.assert_allclose(reference.GetSpacing(), image.spacing, atol=1e-5)
    np.testing.assert_allclose(reference.GetDirection(), np.ravel(image.direction), atol=1e-5)
    header = nib.load(path).header
    assert header["sform_code"] == 1 and header["qform_code"] == 1
    if name.endswith(".gz"):
        assert gzip.decompress(path.read_bytes())[344:348] == b"n+1\x00"  # a single-file NIfTI-1 inside


def test_2d_image_saved_as_nifti_gains_one_slice(tmp_path: Path) -> None:
    image = Image(torch.arange(12.0).reshape(3, 4), spacing=(0.5, 2.0), origin=(1.0, -2.0))
    save_image(image, tmp_path / "flat.nii.gz")
    back = load_image(tmp_path / "flat.nii.gz")
    assert back.shape == (1, 3, 4) and torch.equal(back.data[0], image.data)
    assert back.spacing[:2] == (0.5, 2.0) and back.origin == (1.0, -2.0, 0.0)


def test_png_round_trip_8_and_16_bit(tmp_path: Path) -> None:
    small = Image(torch.tensor([[0.0, 1.4, 254.6], [7.0, 8.0, 9.0]]))
    save_image(small, tmp_path / "small.png")
    with PILImage.open(tmp_path / "small.png") as im:
        assert im.mode == "L"
    assert torch.equal(load_image(tmp_path / "small.png").data, torch.round(small.data))
    big = Image(torch.tensor([[0.0, 300.0], [65535.0, 12.0]]))
    save_image(big, tmp_path / "big.png")
    with PILImage.open(tmp_path / "big.png") as im:
        assert im.mode.startswith("I")
    assert torch.equal(load_image(tmp_path / "big.png").data, big.data)


def test_tiff_round_trip_2d_and_3d(tmp_path: Path) -> None:
    image = oblique_image()
    save_image(image, tmp_path / "volume.tif")
    back = load_image(tmp_path / "volume.tif")
    assert torch.equal(back.data, image.data)  # float32 kept; geometry is not stored
    assert back.spacing == (1.0, 1.0, 1.0) and back.origin == (0.0, 0.0, 0.0)
    save_image(Image(image.data[2]), tmp_path / "plane.TIFF")
    assert torch.equal(load_image(tmp_path / "plane.TIFF").data, image.data[2])


def test_npy_round_trip_and_geometry_from_keywords(tmp_path: Path) -> None:
    image = oblique_image()
    save_image(image, tmp_path / "volume.npy")
    assert np.array_equal(np.load(tmp_path / "volume.npy"), image.numpy())
    back = load_image(tmp_path / "volume.npy", spacing=image.spacing, origin=image.origin, direction=image.direction)
    assert torch.equal(back.data, image.data)
    assert_same_geometry(back, image, atol=0)


def test_dicom_round_trip(tmp_path: Path) -> None:
    angle = 0.4
    direction = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    g = torch.Generator().manual_seed(2)
    image = Image(
        torch.rand(9, 11, generator=g) * 1000 - 300, spacing=(0.5, 0.8), origin=(-5.0, 7.0), direction=direction
    )
    path = tmp_path / "slice.dcm"
    save_image(image, path)
    back = load_image(path)
    ds = pydicom.dcmread(path)
    step = float(ds.RescaleSlope)
    assert step <= 1300 / 65534 * 1.001
    assert float((back.data - image.data).abs().max()) <= step
    assert_same_geometry(back, image, atol=1e-9)
    assert [float(v) for v in ds.PixelSpacing] == [0.8, 0.5]  # [row spacing dy, column spacing dx]
    values = ds.pixel_array * step + float(ds.RescaleIntercept)
    assert np.abs(values - image.numpy()).max() <= step
    reference = sitk.ReadImage(str(path))
    assert_matches_sitk(back, reference, atol=1e-6)
    whole = Image(torch.randint(-1000, 3000, (4, 5), generator=g).float())
    save_image(whole, tmp_path / "whole.dcm")
    assert torch.equal(load_image(tmp_path / "whole.dcm").data, whole.data)  # whole numbers in int16: exact


# -- colour and other raster files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_becomes_luminance(tmp_path: Path, mode: str) -> None:
    rgb = np.random.default_rng(3).integers(0, 256, (6, 7, len(mode)), dtype=np.uint8)
    PILImage.fromarray(rgb, mode=mode).save(tmp_path / "colour.png")
    image = load_image(tmp_path / "colour.png")
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert image.shape == (6, 7)
    np.testing.assert_allclose(image.numpy(), expected, atol=1e-4)


def test_jpeg_and_bmp_load_as_greyscale(tmp_path: Path) -> None:
    grey = np.random.default_rng(4).integers(0, 256, (8, 9), dtype=np.uint8)
    PILImage.fromarray(grey).save(tmp_path / "grey.bmp")
    assert torch.equal(load_image(tmp_path / "grey.bmp").data, torch.from_numpy(grey).float())
    PILImage.fromarray(grey).convert("RGB").save(tmp_path / "grey.JPG")
    with PILImage.open(tmp_path / "grey.JPG") as im:
        decoded = np.asarray(im).astype(np.float64) @ [0.299, 0.587, 0.114]
    np.testing.assert_allclose(load_image(tmp_path / "grey.JPG").numpy(), decoded, atol=1e-4)


def test_multipage_tiffs_load_as_3d(monkeypatch: pytest.MonkeyPatch) -> None:
    import tifffile

    grey = load_image(SKIMAGE_DATA / "multipage.tif")
    assert grey.shape == (2, 15, 10) and grey.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(grey.numpy(), tifffile.imread(SKIMAGE_DATA / "multipage.tif"))
    colour = load_image(SKIMAGE_DATA / "multipage_rgb.tif")  # float64, planar RGB: beyond Pillow
    planes = tifffile.imread(SKIMAGE_DATA / "multipage_rgb.tif")  # (2, 3, 10, 10)
    np.testing.assert_allclose(colour.numpy(), np.einsum("zcyx,c->zyx", planes, [0.299, 0.587, 0.114]), atol=1e-5)
    monkeypatch.setitem(sys.modules, "tifffile", None)  # without tifffile, Pillow reads the pages
    assert torch.equal(load_image(SKIMAGE_DATA / "multipage.tif").data, grey.data)


# -- Image: geometry and validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
def test_index_world_round_trip_and_affine(seed: int) -> None:
    rng = np.random.default_rng(seed)
    d = 2 + seed % 2
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    shear = np.eye(d) + (0.2 * np.triu(rng.normal(size=(d, d)), 1) if seed == 3 else 0)
    direction = q @ shear / np.linalg.norm(q @ shear, axis=0)
    image = Image(
        torch.zeros((4, 5, 6)[-d:]),
        spacing=rng.uniform(0.2, 3, d),
        origin=rng.normal(0, 100, d),
        direction=direction,
    )
    index = torch.from_numpy(rng.uniform(-5, 10, (7, 3, d)))
    world = image.index_to_world(index)
    assert world.shape == index.shape and world.dtype == F64
    torch.testing.assert_close(image.world_to_index(world), index, rtol=0, atol=1e-10)
    expected = index @ image.affine[:d, :d].T + image.affine[:d, d]
    torch.testing.assert_close(world, expected)
    manual = (
        torch.tensor(image.origin, dtype=F64)
        + index * torch.tensor(image.spacing, dtype=F64) @ torch.tensor(image.direction, dtype=F64).T
    )
    torch.testing.assert_close(world, manual)
    torch.testing.assert_close(Image.from_affine(image.data, image.affine).affine, image.affine)
    assert image.index_to_world(index.float()).dtype == torch.float32
    assert image.index_to_world(torch.zeros(d, dtype=torch.int64)).tolist() == list(image.origin)


def test_world_grid_and_center() -> None:
    image = oblique_image()
    grid = image.world_grid()
    assert grid.shape == (5, 6, 7, 3) and grid.dtype == torch.float32
    k, j, i = 4, 1, 5
    expected = image.index_to_world(torch.tensor([i, j, k], dtype=F64))
    torch.testing.assert_close(grid[k, j, i].double(), expected, rtol=0, atol=1e-4)
    grid64 = image.world_grid(F64)
    index = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=F64) for n in image.shape], indexing="ij")[::-1], -1)
    torch.testing.assert_close(grid64, image.index_to_world(index))
    middle = (grid64[0, 0, 0] + grid64[-1, -1, -1]) / 2
    torch.testing.assert_close(torch.tensor(image.center, dtype=F64), middle)


def test_attributes_are_read_only_and_repr_is_short() -> None:
    image = Image(torch.zeros(200, 300, 400), spacing=2.0)
    assert image.spacing == (2.0, 2.0, 2.0) and image.size == (400, 300, 200) and image.ndim == 3
    assert image.direction == ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    text = repr(image)
    assert text == "Image(size=(400, 300, 200), spacing=(2, 2, 2), origin=(0, 0, 0), dtype=float32)"
    assert "direction=((0.860089" in repr(oblique_image())
    with pytest.raises(AttributeError):
        image.spacing = (1.0, 1.0, 1.0)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        image.data = torch.ones(2, 2)  # type: ignore[misc]


def test_with_data_to_numpy_and_pickle() -> None:
    image = oblique_image()
    other = image.with_data(torch.ones(5, 6, 7, dtype=F64))
    assert other.dtype == F64 and other.spacing == image.spacing and other.direction == image.direction
    with pytest.raises(ValueError, match=r"`data` must be a tensor of shape \(5, 6, 7\); got .*\(6, 5, 7\)"):
        image.with_data(torch.ones(6, 5, 7))
    half = image.to(torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.numpy().dtype == np.float32
    with pytest.raises(TypeError, match="`dtype` must be a floating dtype"):
        image.to(torch.int64)
    array = image.numpy()
    array[:] = 0  # a copy: the image is untouched
    assert float(image.data.abs().sum()) > 0
    again = pickle.loads(pickle.dumps(image))
    assert torch.equal(again.data, image.data) and again.affine.equal(image.affine)


def test_data_is_kept_and_integer_data_become_float() -> None:
    data = torch.rand(3, 4, dtype=F64)
    assert Image(data).data is data
    ints = torch.arange(12, dtype=torch.int32).reshape(3, 4)
    image = Image(ints)
    assert image.dtype == torch.float32 and ints.dtype == torch.int32
    assert torch.equal(image.data, ints.float())
    with_nan = Image(torch.tensor([[float("nan"), 1.0]]))
    assert torch.isnan(with_nan.data[0, 0])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"data": np.zeros((3, 4))}, TypeError, r"`data` must be a torch\.Tensor .*got ndarray"),
        ({"data": torch.zeros(3, 4, dtype=torch.complex64)}, TypeError, r"must hold real numbers; got .*complex"),
        ({"data": torch.zeros(3, 4, dtype=torch.bool)}, TypeError, r"`data` must hold real numbers; got torch\.bool"),
        ({"data": torch.zeros(5)}, ValueError, r"`data` must be 2-D \(ny, nx\) or 3-D \(nz, ny, nx\); got .*\(5,\)"),
        ({"data": torch.zeros(2, 3, 4, 5)}, ValueError, r"`data` must be 2-D .*got shape \(2, 3, 4, 5\)"),
        ({"data": torch.zeros(0, 3)}, ValueError, r"`data` must not be empty; got shape \(0, 3\)"),
        ({"spacing": (1.0, 0.0)}, ValueError, r"`spacing` must hold positive finite numbers; got \(1\.0, 0\.0\)"),
        ({"spacing": (1.0, -2.0)}, ValueError, r"`spacing` must hold positive finite numbers; got \(1\.0, -2\.0\)"),
        ({"spacing": (1.0, float("nan"))}, ValueError, r"`spacing` must hold positive finite numbers; got \(1\.0, nan"),
        ({"spacing": (1.0, 1.0, 1.0)}, ValueError, r"`spacing` must hold 2 numbers in index order \(x, y\[, z\]\)"),
        ({"spacing": "1,1"}, TypeError, r"`spacing` must hold real numbers; got str"),
        ({"origin": (0.0, float("inf"))}, ValueError, r"`origin` must hold finite numbers; got \(0\.0, inf\)"),
        ({"direction": [[2.0, 0.0], [0.0, 1.0]]}, ValueError, r"`direction` must have unit columns.*\(2\.0, 1\.0\)"),
        ({"direction": [[1.0, 1.0], [0.0, 1e-9]]}, ValueError, r"`direction` must not be singular.*determinant 1e-09"),
        ({"direction": np.eye(3)}, ValueError, r"`direction` must be a 2x2 matrix .*got shape \(3, 3\)"),
        ({"direction": [[1.0, float("nan")], [0.0, 1.0]]}, ValueError, r"`direction` must be finite"),
    ],
)
def test_bad_image_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    arguments: dict[str, Any] = {"data": torch.zeros(3, 4), **kwargs}
    with pytest.raises(error, match=message):
        Image(**arguments)


def test_flat_direction_as_simpleitk_gives_it_and_from_affine_checks() -> None:
    flat = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    flat.SetDirection(np.ravel(rotation(0.1, 0.2, 0.3)).tolist())
    image = Image(torch.zeros(6, 5, 4), direction=flat.GetDirection())
    np.testing.assert_allclose(image.direction, rotation(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match=r"`affine` must be 3x3 for 2-D data; got shape \(4, 4\)"):
        Image.from_affine(torch.zeros(3, 4), np.eye(4))
    with pytest.raises(ValueError, match=r"`affine` must end in the row \(0\.0, 0\.0, 1\.0\)"):
        Image.from_affine(torch.zeros(3, 4), [[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    with pytest.raises(ValueError, match=r"`affine` must not have a zero column"):
        Image.from_affine(torch.zeros(3, 4), [[1, 0, 0], [0, 0, 0], [0, 0, 1]])
    with pytest.raises(ValueError, match=r"`affine` does not describe a grid: `direction` must not be singular"):
        Image.from_affine(torch.zeros(3, 4), [[1, 2, 0], [1, 2, 0], [0, 0, 1]])


# -- bad files --------------------------------------------------------------------------------------------------------


def one_line_error(path: Path, message: str, **kwargs: Any) -> None:
    with pytest.raises(InputFileError, match=message) as info:
        load_image(path, **kwargs)
    text = str(info.value)
    assert "\n" not in text and text.startswith(str(path))


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    one_line_error(tmp_path / "nothing.nii.gz", "no such file or folder")
    (tmp_path / "image.xyz").write_text("1 2 3")
    one_line_error(tmp_path / "image.xyz", r"unsupported file type '\.xyz'; lossfit reads \.nii, \.nii\.gz, \.dcm")


def test_truncated_and_fake_files(tmp_path: Path) -> None:
    whole = (NIBABEL_DATA / "standard.nii.gz").read_bytes()
    (tmp_path / "half.nii.gz").write_bytes(whole[: len(whole) // 2])
    one_line_error(tmp_path / "half.nii.gz", "cannot be read as NIfTI")
    (tmp_path / "text.png").write_text("this is not a picture\n")
    one_line_error(tmp_path / "text.png", "cannot be read as an image")
    (tmp_path / "text.dcm").write_text("this is not DICOM\n")
    one_line_error(tmp_path / "text.dcm", "cannot be read as DICOM|holds no image")
    (tmp_path / "text.nii").write_text("this is not NIfTI\n")
    one_line_error(tmp_path / "text.nii", "cannot be read as NIfTI")
    one_line_error(Path(pydicom.data.get_testdata_file("MR_truncated.dcm")), "cannot be read as DICOM pixel data")
    png = (SKIMAGE_DATA / "camera.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    one_line_error(tmp_path / "cut.png", "cannot be read as an image")


def test_npy_content_checks(tmp_path: Path) -> None:
    np.save(tmp_path / "complex.npy", np.ones((3, 4), dtype=np.complex128))
    one_line_error(tmp_path / "complex.npy", "holds complex128 data, not real numbers")
    np.save(tmp_path / "words.npy", np.array([["a", "b"], ["c", "d"]]))
    one_line_error(tmp_path / "words.npy", "holds <U1 data, not real numbers")
    np.save(tmp_path / "line.npy", np.ones(5))
    one_line_error(tmp_path / "line.npy", r"holds an array of shape \(5,\); expected \(ny, nx\) or \(nz, ny, nx\)")
    np.save(tmp_path / "objects.npy", np.array([[{}, 1]], dtype=object), allow_pickle=True)
    one_line_error(tmp_path / "objects.npy", "cannot be read as NumPy")
    np.save(tmp_path / "ints.npy", np.arange(6, dtype=np.int16).reshape(2, 3))
    assert load_image(tmp_path / "ints.npy").dtype == torch.float32


def test_keywords_override_and_are_validated(tmp_path: Path) -> None:
    image = load_image(NIBABEL_DATA / "standard.nii.gz", spacing=(0.5, 0.5, 0.5), origin=(1, 2, 3))
    assert image.spacing == (0.5, 0.5, 0.5) and image.origin == (1.0, 2.0, 3.0)
    assert image.direction[0][0] == -1.0  # not overridden: the file's
    with pytest.raises(ValueError, match=r"`spacing` must hold positive finite numbers; got \(0\.0, 1\.0, 1\.0\)"):
        load_image(NIBABEL_DATA / "does-not-matter.nii", spacing=(0, 1, 1))  # checked before the file
    with pytest.raises(ValueError, match=r"`spacing` must hold 3 numbers"):
        load_image(NIBABEL_DATA / "standard.nii.gz", spacing=(1, 1))
    with pytest.raises(ValueError, match=r"`direction` must not be singular"):
        load_image(CT_SMALL, direction=[[1, 1], [0, 0]])
    with pytest.raises(ValueError, match=r"`series` applies to DICOM files and folders"):
        load_image(NIBABEL_DATA / "standard.nii.gz", series="1.2")


def test_loading_does_not_touch_the_file(tmp_path: Path) -> None:
    path = tmp_path / "copy.nii.gz"
    shutil.copy(NIBABEL_DATA / "standard.nii.gz", path)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    load_image(path).data.add_(1)  # the image's data are its own
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert load_image(path).data.equal(torch.from_numpy(nib.load(path).get_fdata().T).float())


# -- failed saves -----------------------------------------------------------------------------------------------------


def test_bad_saves_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "keep.png").write_bytes(b"old")
    (tmp_path / "keep.dcm").write_bytes(b"old")
    with pytest.raises(ValueError, match=r"`path` must end in one of \.nii, \.nii\.gz, .*; got '.*image\.jpg'"):
        save_image(oblique_image(), tmp_path / "image.jpg")
    with pytest.raises(ValueError, match=r"PNG|\.png; they span -1 to 70000"):
        save_image(Image(torch.tensor([[-1.0, 70000.0]])), tmp_path / "keep.png")
    with pytest.raises(ValueError, match=r"`image` must be 2-D to save as \.png"):
        save_image(oblique_image(), tmp_path / "keep.png")
    with pytest.raises(ValueError, match=r"`image` must be 2-D to save as \.dcm; got a 3-D image"):
        save_image(oblique_image(), tmp_path / "keep.dcm")
    with pytest.raises(ValueError, match=r"`image` holds NaN or infinity, which DICOM cannot store"):
        save_image(Image(torch.tensor([[float("nan"), 1.0]])), tmp_path / "keep.dcm")
    sheared = Image(torch.zeros(2, 2), direction=[[1.0, 0.6], [0.0, 0.8]])
    with pytest.raises(ValueError, match=r"orthonormal direction to save as \.dcm"):
        save_image(sheared, tmp_path / "keep.dcm")
    assert sorted(os.listdir(tmp_path)) == ["keep.dcm", "keep.png"]
    assert (tmp_path / "keep.png").read_bytes() == b"old" and (tmp_path / "keep.dcm").read_bytes() == b"old"


def test_save_failing_while_writing_leaves_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "volume.nii.gz"
    target.write_bytes(b"old")

    def refuse(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        save_image(oblique_image(), target)
    assert os.listdir(tmp_path) == ["volume.nii.gz"] and target.read_bytes() == b"old"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_data_stay_on_the_gpu() -> None:
    image = oblique_image().to(device="cuda")
    assert image.data.is_cuda and image.world_grid().is_cuda
    points = image.index_to_world(torch.zeros(4, 3, device="cuda"))
    assert points.is_cuda and points.dtype == torch.float32
    torch.testing.assert_close(image.world_grid().cpu(), oblique_image().world_grid(), rtol=0, atol=1e-5)


def test_nifti_whose_sform_and_qform_disagree_warns_and_uses_the_sform(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    from lossfit import GeometryWarning

    sform = np.diag([2.0, 2.0, 3.0, 1.0])
    sform[:3, 3] = (-40.0, -50.0, 10.0)
    qform = sform.copy()
    qform[:3, 3] += (5.0, 0.0, 0.0)  # the qform places the grid 5 mm to the right
    volume = nib.Nifti1Image(np.arange(60, dtype=np.float32).reshape(3, 4, 5), sform)
    volume.set_sform(sform, code=2)
    volume.set_qform(qform, code=1)
    path = tmp_path / "forms.nii.gz"
    nib.save(volume, path)
    with pytest.warns(GeometryWarning, match=r"sform \(code 2\) and qform \(code 1\) disagree.*5 mm.*uses the sform"):
        image = load_image(path)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ sform
    np.testing.assert_allclose(image.affine.numpy(), lps, rtol=0, atol=1e-9)
    assert image.origin == pytest.approx(tuple(nib.load(path).affine[:3, 3] * [-1, -1, 1]))
    # Agreeing forms (every file lossfit writes) load silently.
    save_image(image, tmp_path / "again.nii.gz")
    load_image(tmp_path / "again.nii.gz")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_header_claiming_more_data_than_the_file_holds_is_refused_before_reading(tmp_path: Path, suffix: str) -> None:
    """A small file whose header claims 1200^3 float32 voxels (7 GB), or 10^12: one clear error, no allocation."""
    nib = pytest.importorskip("nibabel")
    from lossfit.errors import InputFileError

    for shape in ((1200, 1200, 1200), (10_000, 10_000, 10_000)):
        small = nib.Nifti1Image(np.zeros((4, 4, 4), dtype=np.float32), np.eye(4))
        small.header.set_data_shape(shape)
        raw = small.header.binaryblock + b"\0" * 4 + np.zeros(64, dtype=np.float32).tobytes()
        path = tmp_path / f"liar{suffix}"
        path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
        with pytest.raises(InputFileError, match=r"header claims .* voxels"):
            load_image(path)
    # A truncated file: the header is right, the data stop early.
    whole = nib.Nifti1Image(np.ones((8, 8, 8), dtype=np.float32), np.eye(4))
    raw = whole.to_bytes()[:-100]
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    with pytest.raises(InputFileError, match=r"truncated or the header is wrong|Expected 2048 bytes, got 1948"):
        load_image(path)  # (nibabel itself refuses a short .nii; lossfit refuses a short .nii.gz before reading)


def test_a_2d_dicom_keeps_its_slice_position_through_registration_and_saving(tmp_path: Path) -> None:
    """CT_small is an axial slice at z = ImagePositionPatient[2]: it loads as 2-D with that slice_z, and the warped
    image and every file written from it (DICOM, NIfTI) put the slice back at that z, as SimpleITK reads them."""
    pydicom = pytest.importorskip("pydicom")
    sitk = pytest.importorskip("SimpleITK")
    from lossfit.registration import register, resample

    path = pydicom.data.get_testdata_file("CT_small.dcm")
    z = float(pydicom.dcmread(path).ImagePositionPatient[2])
    ct = load_image(path)
    assert ct.ndim == 2 and ct.slice_z == pytest.approx(z) and z != 0
    shifted = resample(ct, ct, torch.tensor([[1.0, 0, 2.0], [0, 1.0, -1.0], [0, 0, 1.0]], dtype=torch.float64))
    result = register(ct, shifted, "translation")
    assert result.warped.slice_z == pytest.approx(z)
    for suffix in (".dcm", ".nii.gz"):
        out = tmp_path / f"warped{suffix}"
        save_image(result.warped, out)
        back = load_image(out)
        assert (back.slice_z if back.ndim == 2 else back.origin[2]) == pytest.approx(z, abs=1e-4)
        assert sitk.ReadImage(str(out)).GetOrigin()[2] == pytest.approx(z, abs=1e-4)
    with pytest.raises(ValueError, match="`slice_z` places a 2-D image"):
        Image(torch.zeros(3, 4, 5), slice_z=1.0)


def test_written_nifti_keeps_the_source_codes(tmp_path: Path) -> None:
    """A template in MNI space (sform code 4, qform code 2), resampled and registered onto its own grid and written:
    the output keeps those codes (what tells FSL and others which space the grid is in)."""
    nib = pytest.importorskip("nibabel")
    from lossfit.registration import resample

    affine = np.diag([-2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (90.0, -126.0, -72.0)
    source = nib.Nifti1Image(np.random.default_rng(0).random((12, 14, 10), dtype=np.float32), affine)
    source.set_sform(affine, code=4)
    source.set_qform(affine, code=2)
    nib.save(source, tmp_path / "template.nii.gz")
    template = load_image(tmp_path / "template.nii.gz")
    assert dict(template.header) == {"sform_code": 4, "qform_code": 2}
    other = Image(torch.rand(9, 9, 9), spacing=2.5, origin=(-10.0, 100.0, -60.0))
    moved = resample(other, template)  # onto the template's grid: its header comes along
    assert isinstance(moved, Image)
    save_image(moved, tmp_path / "out.nii.gz")
    written = nib.load(tmp_path / "out.nii.gz")
    assert int(written.header["sform_code"]) == 4 and int(written.header["qform_code"]) == 2
    np.testing.assert_allclose(written.affine, affine, atol=1e-6)
    # An image with no source file is written as scanner space (code 1), as before.
    save_image(other, tmp_path / "plain.nii.gz")
    assert int(nib.load(tmp_path / "plain.nii.gz").header["sform_code"]) == 1
    with pytest.raises(TypeError, match="`header` must be a mapping"):
        Image(torch.zeros(2, 2), header=[1, 2])  # type: ignore[arg-type]
