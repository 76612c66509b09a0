"""``lossfit register``: outputs in the input's format, a transform SimpleITK reads, one-line errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lossfit.cli import app
from lossfit.registration import Image, load_image, read_itk_transform, resample

pydicom = pytest.importorskip("pydicom")
sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _pair(folder: Path, suffix: str) -> tuple[Path, Path, torch.Tensor]:
    fixed = load_image(str(pydicom.data.get_testdata_file("CT_small.dcm")))
    if suffix == ".png":  # 8-bit grey values for a PNG
        fixed = fixed.with_data(((fixed.data - fixed.data.min()) / (fixed.data.max() - fixed.data.min()) * 255).round())
    c = torch.tensor(fixed.center, dtype=torch.float64)
    a = math.radians(6)
    linear = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    warp = torch.eye(3, dtype=torch.float64)
    warp[:2, :2] = linear
    warp[:2, 2] = c - linear @ c + torch.tensor([3.0, -2.0], dtype=torch.float64)
    moving = resample(fixed, fixed, warp)
    assert isinstance(moving, Image)
    paths = folder / f"fixed{suffix}", folder / f"moving{suffix}"
    fixed.save(paths[0])
    moving.save(paths[1])
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
        (["{fixed}", "{moving}", "--transform", "bspline"], "`transform` must be one of"),
        (["{fixed}", "{moving}", "--metric", "ssd"], "`metric` must be one of"),
        (["{fixed}", "{volume}"], "is a single slice (shape (1, 128, 128)) but the other is a volume"),
        (["{fixed}", "{constant}"], "constant"),
        (["{fixed}", "{moving}", "--out", "{fixed}"], "must be a folder"),
        (["{fixed}", "{moving}", "--out", "{nowhere}"], "does not exist"),
    ],
)
def test_register_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    fixed, moving, _ = _pair(tmp_path, ".nii.gz")
    Image(torch.rand(6, 7, 8)).save(tmp_path / "volume.nii.gz")
    Image(torch.ones(128, 128)).save(tmp_path / "constant.nii.gz")
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
