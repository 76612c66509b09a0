"""``lossfit register``'s outputs: checked before the work, never mixed with an earlier run, never half-written,
in the format asked for, and DICOM that belongs to the fixed image's study."""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import registration_pairs as P
from lossfit.cli import app
from lossfit.registration import Image, load_image, resample, save_image

pydicom = pytest.importorskip("pydicom")

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()
CT = Path(str(pydicom.data.get_testdata_file("CT_small.dcm")))


def _pair(folder: Path, suffix: str = ".nii.gz", *, grey8: bool = False) -> tuple[Path, Path, torch.Tensor]:
    """CT_small and a copy turned 6 degrees and shifted (3, -2) mm, on a grid of its own (turned 15 degrees,
    0.8 x 0.7 mm); the registration's answer is the inverse of the warp."""
    fixed = P.ct_slice(grey8)
    warp = P.turn_about_centre(fixed, 6.0, (3.0, -2.0))
    moving = resample(fixed, P.own_grid(fixed, 15), warp)
    assert isinstance(moving, Image)
    paths = folder / f"fixed{suffix}", folder / f"moving{suffix}"
    save_image(fixed, paths[0])
    save_image(moving, paths[1])
    return paths[0], paths[1], torch.linalg.inv(warp)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _no_leftovers(folder: Path) -> None:
    hidden = [p.name for p in folder.rglob(".*")]
    assert hidden == [], f"temporary files left behind: {hidden}"


def test_an_earlier_run_is_refused_then_replaced_as_a_whole(tmp_path: Path) -> None:
    fixed, moving, _ = _pair(tmp_path)
    out = tmp_path / "out"
    first = runner.invoke(app, ["register", str(fixed), str(moving), "--transform", "rigid", "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert sorted(p.name for p in out.iterdir()) == [
        "registration.png",
        "transform.json",
        "transform.tfm",
        "warped.nii.gz",
    ]
    kept = _snapshot(out)
    again = runner.invoke(app, ["register", str(fixed), str(moving), "--out", str(out)])
    assert again.exit_code == 2 and "holds the outputs of an earlier run" in again.stderr
    assert "--overwrite" in again.stderr and len(again.stderr.strip().splitlines()) == 1
    assert _snapshot(out) == kept
    # A projective run replaces the folder as a whole: no affine transform.tfm is left beside its JSON.
    projective = runner.invoke(
        app,
        ["register", str(fixed), str(moving), "--transform", "projective", "--out", str(out), "--overwrite"]
        + ["--format", "tiff", "--report", str(out)],
    )
    assert projective.exit_code in (0, 1), projective.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["registration.png", "report.html", "transform.json", "warped.tif"]
    assert json.loads((out / "transform.json").read_text())["transform"] == "projective"
    _no_leftovers(tmp_path)


def test_a_folder_holding_other_files_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    fixed, moving, _ = _pair(tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    for extra in ([], ["--overwrite"]):
        result = runner.invoke(app, ["register", str(fixed), str(moving), "--out", str(mine), *extra])
        assert result.exit_code == 2 and "holds files lossfit did not write (notes.txt)" in result.stderr
    assert _snapshot(mine) == {"notes.txt": b"my notes"}
    empty = tmp_path / "empty"
    empty.mkdir()
    ok = runner.invoke(app, ["register", str(fixed), str(moving), "--transform", "rigid", "--out", str(empty)])
    assert ok.exit_code == 0, ok.output
    assert (empty / "warped.nii.gz").is_file()


def _never_registers(monkeypatch: pytest.MonkeyPatch) -> None:
    import lossfit.registration

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the registration ran although an output could not be written")

    monkeypatch.setattr(lossfit.registration, "register", refuse)


@pytest.mark.filterwarnings("ignore::lossfit.errors.GeometryWarning")  # the sheared file's qform cannot hold it
def test_an_output_format_that_cannot_hold_the_result_fails_before_the_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed, moving, _ = _pair(tmp_path)  # CT values: -1000 and below 0 for air, which PNG cannot hold
    z = torch.linspace(0, 1, 6)[:, None, None] * torch.ones(6, 20, 20)
    sheared = Image(z, direction=[[1, 0, 0], [0, 1, 0.6], [0, 0, 0.8]])  # a gantry tilt: not orthonormal
    save_image(sheared, tmp_path / "tilted.nii.gz")
    save_image(Image(z), tmp_path / "volume.nii.gz")
    _never_registers(monkeypatch)
    cases = [
        ([str(fixed), str(moving), "--format", "png"], "values must round to whole numbers in 0..65535"),
        ([str(tmp_path / "tilted.nii.gz"), str(tmp_path / "volume.nii.gz"), "--format", "dicom"], "orthonormal"),
        ([str(tmp_path / "volume.nii.gz"), str(tmp_path / "volume.nii.gz"), "--format", "png"], "must be 2-D"),
        ([str(fixed), str(moving), "--format", "jpeg"], "'jpeg' is not one of"),
    ]
    for args, words in cases:
        result = runner.invoke(app, ["register", *args, "--out", str(tmp_path / "out")])
        assert result.exit_code == 2 and words in result.stderr, (args, result.output)
        assert not (tmp_path / "out").exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("nifti", "warped.nii.gz"), ("tiff", "warped.tif"), ("npy", "warped.npy"), ("dicom", "warped.dcm")]
    + [("png", "warped.png")],
)
def test_the_warped_image_in_the_format_asked_for(tmp_path: Path, fmt: str, name: str) -> None:
    fixed, moving, _ = _pair(tmp_path, grey8=True)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["register", str(fixed), str(moving), "--transform", "rigid", "--out", str(out), "--format", fmt]
    )
    assert result.exit_code == 0, result.output
    warped = load_image(out / name)
    assert warped.shape[-2:] == (128, 128)
    if fmt in ("nifti", "dicom"):  # formats that keep the geometry (a 2-D NIfTI file loads as one slice)
        grid = load_image(out / name)
        assert grid.spacing[:2] == pytest.approx(load_image(CT).spacing)
        assert grid.origin[:2] == pytest.approx(load_image(CT).origin, abs=1e-4)


def test_a_full_disk_names_the_file_keeps_the_transform_and_leaves_nothing_half_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed, moving, _ = _pair(tmp_path)
    real = os.replace

    def replace(src: str, dst: str) -> None:
        if "warped" in os.fspath(dst):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "out"
    result = runner.invoke(app, ["register", str(fixed), str(moving), "--transform", "rigid", "--out", str(out)])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert f"{out / 'warped.nii.gz'}: no space left on the device" in line
    assert "kept in" in line and "transform.tfm, transform.json" in line
    assert sorted(p.name for p in out.iterdir()) == ["transform.json", "transform.tfm"]
    _no_leftovers(tmp_path)


def test_a_warped_dicom_belongs_to_the_fixed_images_study(tmp_path: Path) -> None:
    _, moving, _ = _pair(tmp_path, ".dcm")
    out = tmp_path / "out"
    result = runner.invoke(app, ["register", str(CT), str(moving), "--transform", "rigid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    source, written = pydicom.dcmread(CT), pydicom.dcmread(out / "warped.dcm")
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "FrameOfReferenceUID"):
        assert written.get(keyword) == source.get(keyword), keyword
    assert written.SeriesInstanceUID != source.SeriesInstanceUID
    assert written.SOPInstanceUID != source.SOPInstanceUID
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        torch.testing.assert_close(
            torch.tensor([float(v) for v in written.get(keyword)], dtype=torch.float64),
            torch.tensor([float(v) for v in source.get(keyword)], dtype=torch.float64),
            rtol=0,
            atol=1e-6,
        )


def test_the_json_gives_world_parameters_inputs_and_geometry(tmp_path: Path) -> None:
    fixed, moving, truth = _pair(tmp_path)
    result = runner.invoke(app, ["register", str(fixed), str(moving), "--transform", "rigid", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    world = summary["parameters"]
    centre = torch.tensor(load_image(CT).center, dtype=torch.float64)  # the file holds CT_small's slice
    assert world["centre_mm"] == pytest.approx(centre.tolist())
    # the answer undoes the warp: a rotation of -6 degrees, and the centre moves where the inverse takes it
    assert world["rotation_deg"] == pytest.approx([-6.0], abs=0.05)
    expected = truth[:2, :2] @ centre + truth[:2, 2] - centre
    assert world["translation_mm"] == pytest.approx(expected.tolist(), abs=0.1)
    assert all(0 < e < 0.1 for e in world["translation_mm_stderr"] + world["rotation_deg_stderr"])
    assert summary["metric_per_sample"] == summary["checks"]["metric_answer"]
    assert summary["inputs"]["fixed"] == str(fixed) and summary["inputs"]["moving"] == str(moving)
    geometry = summary["geometry"]["moving"]
    assert geometry["size"] == [113, 115] and geometry["spacing_mm"] == pytest.approx([0.8, 0.7])
    assert "mm (LPS)" in geometry["extent"]


def test_a_volume_of_a_4d_file_and_the_fill_and_interpolation_of_the_warped_image(tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    z, y, x = torch.meshgrid(torch.arange(16.0), torch.arange(20.0), torch.arange(24.0), indexing="ij")
    frames = [
        100 * torch.exp(-(((x - 11 - s) / 5) ** 2) - ((y - 10) / 4) ** 2 - ((z - 8) / 3) ** 2).round()
        for s in (0.0, 1.0, 2.0)
    ]  # an ellipsoid that moves 1 mm along x per volume (whole numbers: the nearest warp keeps them)
    series = np.stack([f.permute(2, 1, 0).numpy() for f in frames], axis=-1)  # (x, y, z, t)
    nib.save(nib.Nifti1Image(series.astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0])), tmp_path / "series.nii.gz")
    out = tmp_path / "out"
    args = ["register", str(tmp_path / "series.nii.gz"), str(tmp_path / "series.nii.gz"), "--fixed-volume", "0"]
    args += ["--moving-volume", "2", "--transform", "translation", "--interpolation", "nearest", "--fill", "-5"]
    result = runner.invoke(app, [*args, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    matrix = torch.tensor(json.loads(result.stdout)["matrix"], dtype=torch.float64)
    assert float(matrix[0, 3]) == pytest.approx(2.0, abs=0.05)  # the fixed point x is at x + 2 in volume 2
    warped = load_image(out / "warped.nii.gz")
    values = set(warped.data.unique().tolist())
    assert -5.0 in values  # the fill, where x + 2 leaves the moving volume
    assert values - {-5.0} <= set(frames[2].unique().tolist())  # nearest neighbour: no new values
    bad = runner.invoke(app, ["register", str(tmp_path / "series.nii.gz"), str(tmp_path / "series.nii.gz")])
    assert bad.exit_code == 2 and "choose one" in bad.stderr
    beyond = runner.invoke(app, [*args[:5], "--moving-volume", "3"])
    assert beyond.exit_code == 2 and "holds 3 volumes (0..2)" in beyond.stderr


def test_initial_starts_from_a_transform_file_written_by_simpleitk(tmp_path: Path) -> None:
    sitk = pytest.importorskip("SimpleITK")
    fixed, moving, truth = _pair(tmp_path)
    start = sitk.Euler2DTransform()
    start.SetCenter(tuple(load_image(CT).center))
    start.SetAngle(math.radians(-5.0))  # near the answer (-6 degrees), as a coarse manual alignment would be
    sitk.WriteTransform(start, str(tmp_path / "start.tfm"))
    args = ["register", str(fixed), str(moving), "--transform", "rigid", "--init", "none", "--levels", "1"]
    result = runner.invoke(app, [*args, "--initial", str(tmp_path / "start.tfm"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["inputs"]["initial"] == str(tmp_path / "start.tfm")
    matrix = torch.tensor(summary["matrix"], dtype=torch.float64)
    assert float((matrix[:2, :2] - truth[:2, :2]).abs().max()) < 2e-3
    bad = runner.invoke(app, [*args, "--initial", str(moving)])
    assert bad.exit_code == 2 and "moving.nii.gz" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
