"""``lossfit motion``: a 4-D NIfTI with known motion corrected; the run folder holds what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import registration_pairs as P
from lossfit.cli import app
from lossfit.registration import displacement, load_image, save_image

sitk = pytest.importorskip("SimpleITK")
pytest.importorskip("nilearn")

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def test_motion_corrects_a_4d_nifti_and_writes_the_run_folder(tmp_path: Path) -> None:
    from lossfit.registration.series import Series, save_series

    volumes, truths = P.motion_series(seed=7, n=4)
    series = Series(torch.stack([v.data for v in volumes]), volumes[0], tr=2.0)
    save_series(series, tmp_path / "bold.nii.gz")
    save_image(volumes[0], tmp_path / "one.nii.gz")
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["motion", str(tmp_path / "bold.nii.gz"), "--reference", "0", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] and summary["volumes"] == 4
    names = sorted(p.name for p in out.iterdir())
    assert names == ["corrected.nii.gz", "motion.json", "motion.png", "motion.tsv", "report.html", "transforms"]
    assert "framewise displacement" in (out / "report.html").read_text()
    lines = (out / "motion.tsv").read_text().splitlines()
    assert lines[0].split("\t")[:2] == ["volume", "rot_x_deg"] and len(lines) == 5
    grid = load_image(tmp_path / "bold.nii.gz", volume=0)
    for i, truth in enumerate(truths):
        m = P.sitk_matrix(sitk.ReadTransform(str(out / "transforms" / f"{i:04d}.tfm")))
        assert displacement(torch.from_numpy(m), torch.from_numpy(truth), grid)["mean"] < 0.15
    corrected = load_image(out / "corrected.nii.gz", volume=3)
    assert corrected.shape == grid.shape
    again = runner.invoke(app, ["motion", str(tmp_path / "bold.nii.gz"), "--out", str(out)])
    assert again.exit_code == 2 and "holds the outputs of an earlier run" in again.stderr
    bad = runner.invoke(
        app, ["motion", str(tmp_path / "bold.nii.gz"), "--reference", "9", "--out", str(tmp_path / "o")]
    )
    assert bad.exit_code == 2 and "--reference must index one of the 4 volumes" in bad.stderr
    assert not (tmp_path / "o").exists()
    one = runner.invoke(app, ["motion", str(tmp_path / "one.nii.gz"), "--out", str(tmp_path / "o")])
    assert one.exit_code == 2 and "holds one volume" in one.stderr
    assert not (tmp_path / "o").exists()


def test_motion_writes_a_dicom_series_for_a_dicom_input(tmp_path: Path) -> None:
    """A series read from a DICOM folder is written back as one (corrected/), with the input's study."""
    from lossfit.registration.series import Series, load_series, save_series

    volumes, truths = P.motion_series(seed=8, n=3)
    series = Series(torch.stack([v.data for v in volumes]), volumes[0])
    save_series(series, tmp_path / "bold")
    source = load_series(tmp_path / "bold")
    out = tmp_path / "out"
    result = runner.invoke(app, ["motion", str(tmp_path / "bold"), "--reference", "0", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert (out / "corrected").is_dir() and not (out / "corrected.nii.gz").exists()
    corrected = load_series(out / "corrected")
    assert corrected.shape == source.shape
    assert corrected.grid.header["dicom"]["StudyInstanceUID"] == source.grid.header["dicom"]["StudyInstanceUID"]
    for i, truth in enumerate(truths):
        m = P.sitk_matrix(sitk.ReadTransform(str(out / "transforms" / f"{i:04d}.tfm")))
        assert displacement(torch.from_numpy(m), torch.from_numpy(truth), source.grid)["mean"] < 0.15
    # the corrected volumes match the reference better than the input did
    before = (source.data[1:] - source.data[0]).abs().mean()
    after = (corrected.data[1:] - corrected.data[0]).abs().mean()
    assert after < 0.7 * before
