"""``lossfit register``: outputs in the input's format, a transform SimpleITK reads, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import registration_pairs as P
from lossfit.cli import app
from lossfit.registration import Image, load_image, read_itk_transform, resample, save_image

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _pair(folder: Path, suffix: str) -> tuple[Path, Path, torch.Tensor]:
    """CT_small and a copy turned 6 degrees and shifted (3, -2) mm, on a grid of its own (turned 15 degrees,
    0.8 x 0.7 mm pixels), except for PNG, which keeps no geometry (both PNG files read back with 1 mm pixels at the
    origin, so they must share a grid); the registration's answer is the inverse of the warp."""
    fixed = P.ct_slice(grey8=suffix == ".png")
    warp = P.turn_about_centre(fixed, 6.0, (3.0, -2.0))
    moving = resample(fixed, fixed if suffix == ".png" else P.own_grid(fixed, 15), warp)
    assert isinstance(moving, Image)
    paths = folder / f"fixed{suffix}", folder / f"moving{suffix}"
    save_image(fixed, paths[0])
    save_image(moving, paths[1])
    return paths[0], paths[1], torch.linalg.inv(warp)


@pytest.mark.parametrize("suffix", [".dcm", ".nii.gz", ".png"])
def test_register_writes_the_warped_image_transform_and_picture(tmp_path: Path, suffix: str) -> None:
    fixed, moving, truth = _pair(tmp_path, suffix)
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["register", str(fixed), str(moving), "--transform", "rigid", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] and summary["transform"] == "rigid"
    matrix = torch.tensor(summary["matrix"], dtype=torch.float64)
    assert float((matrix[:2, :2] - truth[:2, :2]).abs().max()) < 2e-3
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"warped{suffix}", "transform.tfm", "transform.json", "registration.png"]
    )
    torch.testing.assert_close(read_itk_transform(out / "transform.tfm"), matrix, rtol=0, atol=1e-9)
    assert isinstance(sitk.ReadTransform(str(out / "transform.tfm")), sitk.Transform)
    warped = load_image(out / f"warped{suffix}")
    assert warped.shape == load_image(fixed).shape
    assert (out / "registration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["missing.nii.gz", "{moving}"], "missing.nii.gz"),
        (["{fixed}", "{moving}", "--transform", "spline"], "`transform` must be one of"),
        (["{fixed}", "{moving}", "--metric", "ssd"], "`metric` must be one of"),
        (["{fixed}", "{volume}"], "is a single slice (shape (1, 128, 128)) but the other is a volume"),
        (["{fixed}", "{constant}"], "constant"),
        (["{fixed}", "{moving}", "--out", "{fixed}"], "must be a folder"),
        (["{fixed}", "{moving}", "--out", "{nowhere}"], "does not exist"),
    ],
)
def test_register_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    fixed, moving, _ = _pair(tmp_path, ".nii.gz")
    save_image(Image(torch.rand(6, 7, 8)), tmp_path / "volume.nii.gz")
    save_image(Image(torch.ones(128, 128)), tmp_path / "constant.nii.gz")
    names = {
        "fixed": str(fixed),
        "moving": str(moving),
        "volume": str(tmp_path / "volume.nii.gz"),
        "constant": str(tmp_path / "constant.nii.gz"),
        "nowhere": str(tmp_path / "no" / "such" / "dir"),
    }
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = runner.invoke(app, ["register", *[a.format(**names) for a in args]])
    assert result.exit_code == 2, result.output
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # inputs untouched


def test_a_dicom_series_in_gives_a_dicom_series_out(tmp_path: Path) -> None:
    from lossfit.registration.io import save_dicom_series

    z, y, x = torch.meshgrid(torch.arange(20.0), torch.arange(24.0), torch.arange(28.0), indexing="ij")
    blob = torch.exp(-(((x - 13) / 5) ** 2) - ((y - 12) / 4) ** 2 - ((z - 9) / 3) ** 2)  # an off-centre ellipsoid
    fixed = Image(1000 * blob, spacing=(1.0, 1.0, 2.0), origin=(-10.0, -12.0, 5.0))
    warp = torch.eye(4, dtype=torch.float64)
    warp[:3, 3] = torch.tensor([1.5, -1.0, 2.0], dtype=torch.float64)
    moving = resample(fixed, fixed, warp)
    assert isinstance(moving, Image)
    save_dicom_series(fixed, tmp_path / "fixed")
    save_dicom_series(moving, tmp_path / "moving")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "register",
            str(tmp_path / "fixed"),
            str(tmp_path / "moving"),
            "--transform",
            "translation",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    matrix = torch.tensor(json.loads(result.stdout)["matrix"], dtype=torch.float64)
    torch.testing.assert_close(matrix[:3, 3], -warp[:3, 3], rtol=0, atol=0.05)
    warped = load_image(out / "warped")
    assert warped.shape == fixed.shape and warped.spacing == fixed.spacing
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(out / "warped")))
    assert reader.Execute().GetSize() == fixed.size
    # the warped series belongs to the fixed series' study and frame of reference, as a new series
    source = pydicom.dcmread(next((tmp_path / "fixed").iterdir()))
    written = [pydicom.dcmread(f) for f in sorted((out / "warped").iterdir())]
    assert {ds.StudyInstanceUID for ds in written} == {source.StudyInstanceUID}
    assert {ds.FrameOfReferenceUID for ds in written} == {source.FrameOfReferenceUID}
    assert (
        len({ds.SeriesInstanceUID for ds in written}) == 1 and written[0].SeriesInstanceUID != source.SeriesInstanceUID
    )


def test_outputs_never_overwrite_or_hold_an_input(tmp_path: Path) -> None:
    """`--out` (or `--report`) that is an input, holds one or lies inside a DICOM series input: refused before any
    work, inputs untouched; symbolic links are resolved."""
    from lossfit.registration.io import save_dicom_series

    fixed, moving, _ = _pair(tmp_path, ".nii.gz")
    series = tmp_path / "series"
    save_dicom_series(Image(torch.rand(5, 16, 16)), series)
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    cases = [
        ([str(fixed), str(moving), "--out", str(tmp_path)], "holds the input"),
        ([str(fixed), str(moving), "--report", str(tmp_path / "link")], "holds the input"),
        ([str(series), str(series), "--out", str(series / "out")], "lies inside the input"),
        ([str(fixed), str(moving), "--fixed-mask", str(moving), "--out", str(tmp_path / "link")], "holds the input"),
    ]
    for args, words in cases:
        result = runner.invoke(app, ["register", *args])
        assert result.exit_code == 2 and words in result.stderr, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (series / "out").exists()


def test_register_options_reach_the_registration(tmp_path: Path) -> None:
    fixed, moving, truth = _pair(tmp_path, ".nii.gz")
    keep = load_image(fixed)
    save_image(keep.with_data(torch.ones(keep.shape)), tmp_path / "mask.nii.gz")
    args = ["register", str(fixed), str(moving), "--transform", "rigid", "--json", "--loss", "cauchy"]
    args += ["--levels", "2,1", "--smoothing", "0.5", "--seed", "3", "--samples", "5000"]
    args += ["--fixed-mask", str(tmp_path / "mask.nii.gz")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [level["shrink"] for level in summary["levels"]] == [2, 1]
    assert summary["levels"][-1]["sigma_voxels"] == 0.5 and summary["levels"][-1]["samples"] <= 5000
    assert summary["inputs"]["fixed_mask"] == str(tmp_path / "mask.nii.gz")
    assert summary["checks"]["passed"] and "overlap" in summary["checks"]
    assert all(v is not None for v in summary["stderr"])
    matrix = torch.tensor(summary["matrix"], dtype=torch.float64)
    assert float((matrix[:2, :2] - truth[:2, :2]).abs().max()) < 2e-3
    bad = runner.invoke(app, ["register", str(fixed), str(moving), "--levels", "4,x"])
    assert bad.exit_code == 2 and "--levels must be whole shrink factors" in bad.stderr


def test_version_and_a_closed_pipe(tmp_path: Path) -> None:
    import subprocess
    import sys

    assert runner.invoke(app, ["--version"]).stdout.startswith("lossfit 0.")
    m = tmp_path / "m.csv"
    m.write_text("4,1\n2,3\n")
    lossfit = Path(sys.executable).parent / "lossfit"
    # The reader closes the pipe before the command writes: it ends quietly (no message, no traceback).
    proc = subprocess.Popen([str(lossfit), "matrix", "inverse", str(m)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert err == b"" and proc.returncode == 141


def test_a_previous_runs_output_registers_back_to_the_fixed_image(tmp_path: Path) -> None:
    """The warped image a run wrote (NIfTI, on the fixed grid) is the next run's input: it matches the fixed image
    already, so the answer is the identity. Its fill region (the part of the fixed grid the moving slice did not
    cover, zeros) pulls plain mean squares 1.4 mm off; the robust loss ignores it."""
    fixed, moving, _ = _pair(tmp_path, ".nii.gz")
    first = runner.invoke(
        app, ["register", str(fixed), str(moving), "--transform", "rigid", "--out", str(tmp_path / "a")]
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(
        app,
        ["register", str(fixed), str(tmp_path / "a" / "warped.nii.gz"), "--transform", "rigid", "--loss", "cauchy"]
        + ["--json"],
    )
    assert again.exit_code == 0, again.output
    matrix = torch.tensor(json.loads(again.stdout)["matrix"], dtype=torch.float64)
    torch.testing.assert_close(matrix, torch.eye(3, dtype=torch.float64), rtol=0, atol=0.1)
    refused = runner.invoke(
        app, ["register", str(fixed), str(tmp_path / "a" / "warped.nii.gz"), "--out", str(tmp_path / "a")]
    )
    assert refused.exit_code == 2 and "holds the input" in refused.stderr
