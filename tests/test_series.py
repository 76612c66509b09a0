"""lossfit.registration.series: a 4-D series on one grid; NIfTI (nibabel's example4d, round trips checked with
SimpleITK and nibabel) and DICOM folders of several volumes."""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from nibabel.testing import data_path

from lossfit.errors import InputFileError
from lossfit.registration import Image, load_image, save_dicom_series, save_image
from lossfit.registration.series import Series, load_series, save_series

EXAMPLE4D = Path(data_path) / "example4d.nii.gz"
GEOMETRY_TOL = 1e-5  # mm: a float32 sform holds a position of ~100 mm to ~1e-5 mm


def oblique_grid(shape: tuple[int, int, int], header: dict[str, int] | None = None) -> Image:
    """A 3-D grid with anisotropic spacing, an origin off zero and a rotated direction."""
    a, b = math.radians(20.0), math.radians(-35.0)
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    return Image(
        torch.zeros(shape),
        spacing=(0.9, 1.25, 2.5),
        origin=(-101.5, 33.25, 12.0),
        direction=rz @ rx,
        header=header,
    )


def assert_same_geometry(a: Image, b: Image) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, rtol=0, atol=GEOMETRY_TOL)
    np.testing.assert_allclose(a.origin, b.origin, rtol=0, atol=GEOMETRY_TOL)
    np.testing.assert_allclose(np.array(a.direction), np.array(b.direction), rtol=0, atol=GEOMETRY_TOL)


# -- nibabel's example4d -------------------------------------------------------------------------------------


def test_example4d_shape_tr_grid_and_volumes() -> None:
    s = load_series(EXAMPLE4D)
    reference = nib.load(EXAMPLE4D)
    nx, ny, nz, nt = reference.shape
    assert s.shape == (nt, nz, ny, nx) and len(s) == nt and s.dtype == torch.float32
    step, unit = float(reference.header.get_zooms()[3]), reference.header.get_xyzt_units()[1]
    assert unit == "sec" and s.tr == step  # nibabel's own reading: 2000 "seconds" as the file says
    first = load_image(EXAMPLE4D, volume=0)
    assert_same_geometry(s.grid, first)
    assert dict(s.grid.header) == dict(first.header) == {"sform_code": 1, "qform_code": 1}
    for i in (0, 1, -1):
        assert torch.equal(s.volume(i).data, load_image(EXAMPLE4D, volume=i % nt).data)
        assert_same_geometry(s.volume(i), first)
    assert [v.shape for v in s.volumes()] == [first.shape] * nt


def test_example4d_in_float64_matches_nibabel() -> None:
    s = load_series(EXAMPLE4D, dtype=torch.float64)
    expected = np.asarray(nib.load(EXAMPLE4D).get_fdata(dtype=np.float64)).transpose(3, 2, 1, 0)
    assert s.dtype == torch.float64 and s.grid.dtype == torch.float64
    assert torch.equal(s.data, torch.from_numpy(np.ascontiguousarray(expected)))


# -- round trips ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run.nii", "run.nii.gz", "RUN.NII.GZ"])
def test_round_trip_keeps_data_geometry_and_tr(tmp_path: Path, name: str) -> None:
    gen = torch.Generator().manual_seed(11)
    grid = oblique_grid((5, 6, 7))
    s = Series(torch.randn(4, 5, 6, 7, generator=gen), grid, tr=0.8)
    path = tmp_path / name
    save_series(s, path)
    back = load_series(path)
    assert torch.equal(back.data, s.data)  # float32 data are stored as float32: exact
    assert_same_geometry(back.grid, grid)
    assert back.tr == pytest.approx(0.8, rel=float(np.finfo(np.float32).eps))  # pixdim is float32
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary file left

    written = nib.load(path)
    assert written.shape == (7, 6, 5, 4) and written.header.get_xyzt_units() == ("mm", "sec")
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine.numpy()
    np.testing.assert_allclose(written.affine, ras, rtol=0, atol=GEOMETRY_TOL)

    sitk = pytest.importorskip("SimpleITK")
    image = sitk.ReadImage(str(path))
    assert image.GetDimension() == 4 and image.GetSize() == (7, 6, 5, 4)
    np.testing.assert_allclose(image.GetSpacing()[:3], grid.spacing, rtol=0, atol=GEOMETRY_TOL)
    np.testing.assert_allclose(image.GetOrigin()[:3], grid.origin, rtol=0, atol=GEOMETRY_TOL)
    direction = np.array(image.GetDirection()).reshape(4, 4)[:3, :3]
    np.testing.assert_allclose(direction, np.array(grid.direction), rtol=0, atol=GEOMETRY_TOL)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), s.data.numpy())


def test_round_trip_keeps_the_sources_codes_and_an_unknown_tr(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(12)
    s = Series(torch.rand(2, 3, 4, 5, generator=gen), oblique_grid((3, 4, 5), {"sform_code": 4, "qform_code": 2}))
    save_series(s, tmp_path / "codes.nii")
    header = nib.load(tmp_path / "codes.nii").header
    assert (int(header["sform_code"]), int(header["qform_code"])) == (4, 2)
    back = load_series(tmp_path / "codes.nii")
    assert dict(back.grid.header) == {"sform_code": 4, "qform_code": 2} and back.tr is None
    assert_same_geometry(back.grid, s.grid)


def test_example4d_written_back_reads_the_same(tmp_path: Path) -> None:
    s = load_series(EXAMPLE4D)
    save_series(s, tmp_path / "copy.nii.gz")
    back = load_series(tmp_path / "copy.nii.gz")
    assert torch.equal(back.data, s.data) and back.tr == s.tr
    assert_same_geometry(back.grid, s.grid)
    assert dict(back.grid.header) == dict(s.grid.header)


@pytest.mark.parametrize(("unit", "step", "tr"), [("msec", 1500.0, 1.5), ("usec", 2.5e6, 2.5), ("hz", 3.0, None)])
def test_tr_follows_the_time_unit(tmp_path: Path, unit: str, step: float, tr: float | None) -> None:
    rng = np.random.default_rng(13)
    nifti = nib.Nifti1Image(rng.random((4, 3, 2, 3), dtype=np.float32), np.eye(4))
    nifti.header.set_xyzt_units("mm", unit)
    nifti.header["pixdim"][4] = step
    nib.save(nifti, tmp_path / "t.nii")
    got = load_series(tmp_path / "t.nii").tr
    assert got == (None if tr is None else pytest.approx(tr, rel=1e-7))


def test_scl_slope_is_applied(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    raw = rng.integers(-1000, 1000, size=(4, 3, 2, 3), dtype=np.int16)
    nifti = nib.Nifti1Image(raw, np.eye(4))
    nifti.header.set_slope_inter(0.5, -3.0)
    nib.save(nifti, tmp_path / "scaled.nii")
    s = load_series(tmp_path / "scaled.nii")
    expected = raw.astype(np.float64).transpose(3, 2, 1, 0) * 0.5 - 3.0  # exact in float32: halves below 2**23
    assert torch.equal(s.data, torch.from_numpy(expected.astype(np.float32)))


def test_a_3d_file_is_one_volume(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(15)
    image = oblique_grid((3, 4, 5)).with_data(torch.randn(3, 4, 5, generator=gen))
    save_image(image, tmp_path / "one.nii.gz")
    s = load_series(tmp_path / "one.nii.gz")
    assert len(s) == 1 and s.shape == (1, 3, 4, 5)
    assert torch.equal(s.volume(0).data, load_image(tmp_path / "one.nii.gz").data)
    assert_same_geometry(s.grid, image)


# -- the type ------------------------------------------------------------------------------------------------


def test_mean_with_data_and_repr() -> None:
    gen = torch.Generator().manual_seed(16)
    data = torch.randn(6, 3, 4, 5, generator=gen)
    s = Series(data, oblique_grid((3, 4, 5)), tr=2)
    assert isinstance(s.tr, float) and s.tr == 2.0
    assert torch.equal(s.mean().data, data.mean(dim=0))
    assert_same_geometry(s.mean(), s.grid)
    fewer = s.with_data(data[:2].double())
    assert len(fewer) == 2 and fewer.tr == 2.0 and fewer.dtype == torch.float64
    assert_same_geometry(fewer.grid, s.grid)
    assert repr(s).startswith("Series(volumes=6, tr=2, grid=Image(size=(5, 4, 3)")
    assert Series(torch.ones(1, 2, 2, 2, dtype=torch.int16), Image(torch.zeros(2, 2, 2))).dtype == torch.float32


def test_volumes_are_views_and_the_grid_keeps_its_header() -> None:
    s = Series(torch.zeros(2, 2, 3, 4), oblique_grid((2, 3, 4), {"sform_code": 2, "qform_code": 1}))
    assert s.volume(1).data.data_ptr() == s.data[1].data_ptr()
    assert dict(s.volume(1).header) == {"sform_code": 2, "qform_code": 1}


@pytest.mark.parametrize(
    ("data", "grid", "tr", "error", "words"),
    [
        (torch.zeros(3, 4, 5), Image(torch.zeros(3, 4, 5)), None, ValueError, "`data` must be 4-D"),
        (torch.zeros(0, 3, 4, 5), Image(torch.zeros(3, 4, 5)), None, ValueError, "at least one volume"),
        (torch.zeros(2, 3, 4, 6), Image(torch.zeros(3, 4, 5)), None, ValueError, "grid's shape (3, 4, 5)"),
        (np.zeros((2, 3, 4, 5)), Image(torch.zeros(3, 4, 5)), None, TypeError, "`data` must be a torch.Tensor"),
        (torch.zeros(2, 3, 4, 5, dtype=torch.bool), Image(torch.zeros(3, 4, 5)), None, TypeError, "real numbers"),
        (torch.zeros(2, 3, 4, 5), torch.zeros(3, 4, 5), None, TypeError, "`grid` must be an Image"),
        (torch.zeros(2, 4, 5), Image(torch.zeros(4, 5)), None, ValueError, "`data` must be 4-D"),
        (torch.zeros(2, 1, 4, 5), Image(torch.zeros(4, 5)), None, ValueError, "`grid` must be a 3-D Image"),
        (torch.zeros(2, 3, 4, 5), Image(torch.zeros(3, 4, 5)), 0.0, ValueError, "`tr` must be a finite positive"),
        (torch.zeros(2, 3, 4, 5), Image(torch.zeros(3, 4, 5)), math.nan, ValueError, "`tr` must be a finite"),
        (torch.zeros(2, 3, 4, 5), Image(torch.zeros(3, 4, 5)), "2", TypeError, "`tr` must be a number"),
        (torch.zeros(2, 3, 4, 5), Image(torch.zeros(3, 4, 5)), True, TypeError, "`tr` must be a number"),
    ],
)
def test_bad_arguments_are_named(data: object, grid: object, tr: object, error: type, words: str) -> None:
    with pytest.raises(error, match=re.escape(words)):
        Series(data, grid, tr=tr)  # type: ignore[arg-type]


def test_a_volume_index_out_of_range() -> None:
    s = Series(torch.zeros(3, 2, 2, 2), Image(torch.zeros(2, 2, 2)))
    assert torch.equal(s.volume(-3).data, s.data[0])
    for index in (3, -4):
        with pytest.raises(IndexError, match=r"`index` must be in -3\.\.2 for a series of 3 volumes; got"):
            s.volume(index)
    with pytest.raises(TypeError, match="whole number"):
        s.volume(1.0)  # type: ignore[arg-type]


# -- bad files -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["short.nii", "short.nii.gz"])
def test_a_header_claiming_more_data_than_the_file_holds(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(17)
    raw = bytearray(nib.Nifti1Image(rng.random((8, 8, 8, 4), dtype=np.float32), np.eye(4)).to_bytes())
    raw[48:50] = (40).to_bytes(2, "little")  # dim[4]: 40 volumes claimed, 4 held
    (tmp_path / name).write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    with pytest.raises(InputFileError, match=re.escape(f"{name}: its header claims 8x8x8x40 voxels")) as info:
        load_series(tmp_path / name)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_a_truncated_file_is_one_clear_error(tmp_path: Path, name: str) -> None:
    rng = np.random.default_rng(18)
    nifti = nib.Nifti1Image(rng.random((8, 8, 8, 4), dtype=np.float32), np.eye(4))
    whole = tmp_path / ("whole" + name[3:])
    nib.save(nifti, whole)
    payload = whole.read_bytes()
    (tmp_path / name).write_bytes(payload[: len(payload) // 2])
    # a .nii is refused by its size; a cut .nii.gz ends in stray bytes where gzip keeps its length, so it may be
    # refused by its size or when its data run out
    expected = re.escape(name) + r": (its header claims 8x8x8x4 voxels|cannot be read)"
    with pytest.raises(InputFileError, match=expected) as info:
        load_series(tmp_path / name)
    assert "\n" not in str(info.value)


def test_other_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"missing\.nii: no such file"):
        load_series(tmp_path / "missing.nii")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(InputFileError, match=r"unsupported file type '\.png'"):
        load_series(tmp_path / "a.png")
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2, 2, 2), np.float32), np.eye(4)), tmp_path / "five.nii")
    with pytest.raises(InputFileError, match=r"five\.nii: holds a 5-D image"):
        load_series(tmp_path / "five.nii")
    (tmp_path / "junk.nii").write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(InputFileError, match=r"junk\.nii: cannot be read as NIfTI"):
        load_series(tmp_path / "junk.nii")
    with pytest.raises(TypeError, match="`dtype`"):
        load_series(EXAMPLE4D, dtype=torch.int32)
    s = Series(torch.zeros(1, 2, 2, 2), Image(torch.zeros(2, 2, 2)))
    with pytest.raises(ValueError, match=r"`path` must end in \.nii or \.nii\.gz"):
        save_series(s, tmp_path / "s.png")
    with pytest.raises(TypeError, match="`series` must be a Series"):
        save_series(Image(torch.zeros(2, 2, 2)), tmp_path / "s.nii")  # type: ignore[arg-type]
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "s.nii").exists()


# -- DICOM ---------------------------------------------------------------------------------------------------


def dicom_series_folder(
    tmp_path: Path, series: Series, *, keyword: str | None, shift_last: float = 0.0
) -> tuple[Path, list[Path]]:
    """``series`` as one DICOM folder: each volume written by save_dicom_series, then given one SeriesInstanceUID,
    InstanceNumbers running through the volumes and, when ``keyword`` is set, that tag numbering the volumes. The
    files are named so that their order in the folder is not the volumes' order."""
    folder = tmp_path / "dicom"
    folder.mkdir()
    uid = pydicom.uid.generate_uid()
    files = []
    for t, image in enumerate(series.volumes()):
        if shift_last and t == len(series) - 1:
            image = Image(image.data, spacing=image.spacing, origin=np.add(image.origin, shift_last))
        one = tmp_path / f"volume{t}"
        save_dicom_series(image, one)
        for k, f in enumerate(sorted(one.iterdir())):
            ds = pydicom.dcmread(f)
            ds.SeriesInstanceUID = uid
            ds.InstanceNumber = t * image.shape[0] + k + 1
            if keyword is not None:
                setattr(ds, keyword, len(series) - t if keyword == "AcquisitionNumber" else t + 1)
            target = folder / f"{(k * 7 + t * 3) % 97:03d}-{t}-{k}.dcm"
            ds.save_as(target)
            files.append(target)
        shutil.rmtree(one)
    return folder, files


@pytest.mark.parametrize("keyword", ["TemporalPositionIdentifier", None])
def test_a_dicom_folder_of_volumes(tmp_path: Path, keyword: str | None) -> None:
    gen = torch.Generator().manual_seed(20)
    grid = Image(torch.zeros(4, 5, 6), spacing=(0.8, 0.9, 2.0), origin=(-10.0, 20.0, 5.0))
    s = Series(torch.randint(-500, 500, (3, 4, 5, 6), generator=gen).float(), grid)  # whole numbers: exact in DICOM
    folder, _ = dicom_series_folder(tmp_path, s, keyword=keyword)
    back = load_series(folder)
    assert back.shape == s.shape and back.tr is None
    assert torch.equal(back.data, s.data)
    assert_same_geometry(back.grid, grid)
    assert "StudyInstanceUID" in back.grid.header["dicom"]


def test_a_dicom_folder_grouped_by_acquisition_number(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(19)
    grid = Image(torch.zeros(3, 4, 5), spacing=(1.0, 1.0, 3.0))
    s = Series(torch.randint(0, 100, (2, 3, 4, 5), generator=gen).float(), grid)
    folder, _ = dicom_series_folder(tmp_path, s, keyword="AcquisitionNumber")  # numbered backwards
    assert torch.equal(load_series(folder).data, s.data.flip(0))


def test_dicom_volumes_on_different_grids_are_refused(tmp_path: Path) -> None:
    s = Series(torch.zeros(2, 3, 4, 5), Image(torch.zeros(3, 4, 5), spacing=(1.0, 1.0, 3.0)))
    folder, _ = dicom_series_folder(tmp_path, s, keyword="TemporalPositionIdentifier", shift_last=1.5)
    with pytest.raises(InputFileError, match=r"dicom: volume 1 of 2 .* does not lie on volume 0's grid"):
        load_series(folder)


def test_a_dicom_volume_missing_a_slice_is_refused(tmp_path: Path) -> None:
    s = Series(torch.zeros(2, 3, 4, 5), Image(torch.zeros(3, 4, 5), spacing=(1.0, 1.0, 3.0)))
    folder, files = dicom_series_folder(tmp_path, s, keyword="TemporalPositionIdentifier")
    files[-1].unlink()
    with pytest.raises(InputFileError, match=r"volume 1 of 2 \(2 slices\) does not lie on volume 0's grid"):
        load_series(folder)
    with pytest.raises(InputFileError, match="is one DICOM file; load_series reads a folder"):
        load_series(files[0])


def test_a_dicom_folder_of_one_volume_is_a_series_of_one(tmp_path: Path) -> None:
    image = Image(torch.arange(60.0).reshape(3, 4, 5), spacing=(0.5, 0.5, 2.0), origin=(1.0, 2.0, 3.0))
    save_dicom_series(image, tmp_path / "one")
    s = load_series(tmp_path / "one")
    assert len(s) == 1 and torch.equal(s.volume(0).data, image.data)
    assert_same_geometry(s.grid, image)


def _oblique_grid() -> Image:
    c, s = math.cos(0.3), math.sin(0.3)
    direction = ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))
    return Image(torch.zeros(4, 5, 6), spacing=(0.8, 0.9, 2.5), origin=(-10.0, 20.0, 5.0), direction=direction)


def test_save_series_writes_a_dicom_folder_that_reads_back(tmp_path: Path) -> None:
    """A folder path (no suffix): one file per slice of every volume, grouped back into volumes by their
    TemporalPositionIdentifier; whole numbers exactly, others to the shared int16 rescale's step."""
    gen = torch.Generator().manual_seed(21)
    grid = _oblique_grid()
    whole = Series(torch.randint(-900, 900, (3, 4, 5, 6), generator=gen).float(), grid)
    save_series(whole, tmp_path / "whole")
    assert len(list((tmp_path / "whole").iterdir())) == 3 * 4
    back = load_series(tmp_path / "whole")
    assert back.shape == whole.shape and torch.equal(back.data, whole.data)
    assert_same_geometry(back.grid, grid)
    assert pydicom.dcmread(sorted((tmp_path / "whole").iterdir())[-1]).TemporalPositionIdentifier == 3

    real = Series(torch.rand(2, 4, 5, 6, generator=gen, dtype=torch.float64) * 3.0 - 1.0, grid)
    save_series(real, tmp_path / "real")
    step = 4.0 / 65534  # the range over int16's
    assert float((load_series(tmp_path / "real", dtype=torch.float64).data - real.data).abs().max()) <= step


def test_a_dicom_series_keeps_the_inputs_study_when_written_again(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(22)
    s = Series(torch.randint(0, 300, (2, 4, 5, 6), generator=gen).float(), _oblique_grid())
    folder, _ = dicom_series_folder(tmp_path, s, keyword="TemporalPositionIdentifier")
    source = load_series(folder)
    save_series(source, tmp_path / "again")
    again = load_series(tmp_path / "again")
    assert torch.equal(again.data, source.data)
    study = source.grid.header["dicom"]
    assert again.grid.header["dicom"]["StudyInstanceUID"] == study["StudyInstanceUID"]


def test_save_series_refuses_an_existing_folder_and_a_sheared_grid(tmp_path: Path) -> None:
    s = Series(torch.zeros(2, 2, 2, 2), Image(torch.zeros(2, 2, 2)))
    (tmp_path / "there").mkdir()
    with pytest.raises(ValueError, match="exists; a DICOM series is written into a new folder"):
        save_series(s, tmp_path / "there")
    r = 1 / math.sqrt(1.09)
    skew = ((1.0, 0.3 * r, 0.0), (0.0, r, 0.0), (0.0, 0.0, 1.0))  # unit columns, not orthogonal
    sheared = Series(torch.zeros(2, 2, 2, 2), Image(torch.zeros(2, 2, 2), direction=skew))
    with pytest.raises(ValueError, match="sheared"):
        save_series(sheared, tmp_path / "sheared")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["there"]
