"""``lossfit fit-map``: a multi-echo NIfTI written by nibabel mapped voxel by voxel; the run folder holds what it
promises, in the input's geometry; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from lossfit.cli import app

runner = CliRunner()
TE = "10,20,30,40,50,60,70,80"


def echoes(tmp_path: Path, seed: int = 0) -> tuple[Path, np.ndarray, np.ndarray]:
    """A (x, y, z, echo) NIfTI with a known T2 per voxel, a background plane at z = 0, and a mask file."""
    gen = np.random.default_rng(seed)
    shape = (7, 6, 5)
    t2 = gen.uniform(40, 120, size=shape)
    te = np.array([float(v) for v in TE.split(",")])
    data = 1000 * np.exp(-te / t2[..., None]) + gen.normal(0, 2, size=(*shape, 8))
    data[:, :, 0] = np.abs(gen.normal(0, 2, size=(7, 6, 8)))
    affine = np.array([[-1.5, 0, 0, 10], [0, 2.0, 0, -5], [0, 0, 2.5, 3], [0, 0, 0, 1]])
    path = tmp_path / "echoes.nii.gz"
    nib.Nifti1Image(data.astype(np.float32), affine).to_filename(str(path))
    mask = np.ones(shape, dtype=np.uint8)
    mask[:, :, 0] = 0
    nib.Nifti1Image(mask, affine).to_filename(str(tmp_path / "mask.nii.gz"))
    labels = np.where(t2 > 80, 2, 1).astype(np.uint8) * mask
    nib.Nifti1Image(labels, affine).to_filename(str(tmp_path / "labels.nii.gz"))
    return path, t2, affine


def test_fit_map_writes_the_maps_in_the_inputs_geometry(tmp_path: Path) -> None:
    path, t2, affine = echoes(tmp_path)
    out = tmp_path / "maps"
    args = ["fit-map", str(path), "--x", TE, "--model", "t2", "--mask", str(tmp_path / "mask.nii.gz"),
            "--labels", str(tmp_path / "labels.nii.gz"), "--out", str(out), "--json"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] and summary["fitted_voxels"] == 7 * 6 * 4
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["S0.nii.gz", "T2.nii.gz", "S0_stderr.nii.gz", "T2_stderr.nii.gz", "status.nii.gz", "rms.nii.gz",
         "fit_map.json", "report.html"]
    )  # fmt: skip
    written = nib.load(str(out / "T2.nii.gz"))
    assert np.allclose(written.affine, affine)
    fitted = np.asarray(written.dataobj)
    assert np.allclose(fitted[:, :, 1:], t2[:, :, 1:], rtol=0.02)
    assert np.isnan(fitted[:, :, 0]).all()
    report = (out / "report.html").read_text()
    assert "T2: histograms" in report and "label 2" in report
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "holds the outputs of an earlier run" in again.stderr
    replaced = runner.invoke(app, [*args[:-1], "--overwrite"])
    assert replaced.exit_code == 0, replaced.output


def test_fit_map_in_chunks_on_a_local_cluster(tmp_path: Path) -> None:
    path, t2, _ = echoes(tmp_path, seed=1)
    out = tmp_path / "maps"
    mask = str(tmp_path / "mask.nii.gz")
    args = ["fit-map", str(path), "--x", TE, "--model", "t2", "--mask", mask, "--chunks", "2", "--workers", "1"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    fitted = np.asarray(nib.load(str(out / "T2.nii")).dataobj)
    assert np.allclose(fitted[:, :, 1:], t2[:, :, 1:], rtol=0.02)
    assert (out / "report.html").exists() and (out / "summary.json").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--x": "10,20,30"}, "--x gives 3 values"),
        ({"--x": "10,abc"}, "--x must be numbers"),
        ({"--model": "t7"}, "`model` must be one of"),
        ({"--model": "a*exp(-x/b)"}, "`start` is needed"),
        ({"--noise": "poisson"}, "--noise must be rician"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, change: dict[str, str], message: str) -> None:
    path, _, _ = echoes(tmp_path)
    options = {"--x": TE, "--model": "t2", "--out": str(tmp_path / "maps"), **change}
    result = runner.invoke(app, ["fit-map", str(path), *[item for pair in options.items() for item in pair]])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "maps").exists()


def test_an_output_inside_the_input_is_refused(tmp_path: Path) -> None:
    path, _, _ = echoes(tmp_path)
    result = runner.invoke(app, ["fit-map", str(path), "--x", TE, "--model", "t2", "--out", str(path)])
    assert result.exit_code == 2


def test_a_dicom_series_gives_dicom_maps(tmp_path: Path) -> None:
    """Echoes as one DICOM folder (volumes numbered by TemporalPositionIdentifier): the maps come back as DICOM series
    on the same grid, NaN and infinity written as 0 (the status map says which voxels those are)."""
    import torch

    from lossfit.registration import Image, load_image
    from lossfit.registration.series import Series
    from test_series import dicom_series_folder

    gen = np.random.default_rng(5)
    t2 = gen.uniform(40, 120, size=(3, 4, 5))
    te = np.array([float(v) for v in TE.split(",")])
    data = 1000 * np.exp(-te[:, None, None, None] / t2[None]) + gen.normal(0, 2, size=(8, 3, 4, 5))
    grid = Image(torch.zeros(3, 4, 5), spacing=(0.9, 0.9, 3.0), origin=(-20.0, 10.0, 4.0))
    folder, _ = dicom_series_folder(tmp_path, Series(torch.from_numpy(data).float(), grid),
                                    keyword="TemporalPositionIdentifier")  # fmt: skip
    out = tmp_path / "maps"
    result = runner.invoke(app, ["fit-map", str(folder), "--x", TE, "--model", "t2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "T2").is_dir() and (out / "status").is_dir()
    back = load_image(out / "T2")
    assert back.shape == (3, 4, 5) and np.allclose(back.spacing, grid.spacing) and np.allclose(back.origin, grid.origin)
    assert np.allclose(back.data.numpy(), t2, rtol=0.02)
