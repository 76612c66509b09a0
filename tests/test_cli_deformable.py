"""``lossfit register --transform deformable`` and ``lossfit apply`` with displacement fields: the run folder holds
the whole mapping as ITK fields that SimpleITK applies as lossfit does; bad input is one line, exit 2, nothing
written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deformable_pairs import warped_pair
from lossfit.cli import app
from lossfit.registration import load_image, save_image
from registration_pairs import from_sitk, source, to_sitk

sitk = pytest.importorskip("SimpleITK")
pytestmark = pytest.mark.usefixtures("one_thread")  # small images: one thread is faster, and the same anywhere
runner = CliRunner()


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    folder = tmp_path_factory.mktemp("pair")
    pair = warped_pair(from_sitk(source("ct")), seed=4, lattice=12.0, sigma=5.0, longest=2.5, noise=0.005)
    fixed, moving = folder / "fixed.nii.gz", folder / "moving.nii.gz"
    save_image(pair.fixed, fixed)
    save_image(pair.moving, moving)
    return fixed, moving, pair


def test_register_deformable_writes_fields_that_simpleitk_and_apply_use_alike(tmp_path: Path, pair_files) -> None:  # type: ignore[no-untyped-def]
    fixed, moving, pair = pair_files
    out = tmp_path / "run"
    result = runner.invoke(app, ["register", str(fixed), str(moving), "--transform", "deformable", "--out", str(out),
                                 "--report", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["status"] == "converged_ftol" and summary["evaluation"]["folded_fraction"] == 0
    names = sorted(p.name for p in out.iterdir())
    assert {"warp.nii.gz", "transform.h5", "inverse_warp.nii.gz", "affine.tfm", "transform.json", "registration.png",
            "deformation.png", "report.html"} <= set(names)  # fmt: skip
    assert "The field beyond the affine stage: its Jacobian determinant" in (out / "report.html").read_text()
    # the composite (affine stage + field part) maps points as the whole field does
    composite = sitk.ReadTransform(str(out / "transform.h5"))
    whole = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out / "warp.nii.gz")),
                                                      sitk.sitkVectorFloat64))  # fmt: skip
    reference = to_sitk(pair.fixed)
    for index in [(10, 12), (40, 70), (64, 64), (100, 30)]:
        point = reference.TransformContinuousIndexToPhysicalPoint(index)
        assert np.allclose(composite.TransformPoint(point), whole.TransformPoint(point), atol=1e-4)
    # the written field, read back, recovers the known warp
    field = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warp.nii.gz")))
    error = np.linalg.norm(field - pair.truth.numpy(), axis=-1)[pair.mask.numpy()].mean()
    assert error < 0.4 * pair.initial
    # lossfit apply through the field equals the run's warped image and SimpleITK's resampling through the file
    moved = tmp_path / "moved.nii.gz"
    applied = runner.invoke(app, ["apply", str(out / "warp.nii.gz"), str(moving), "--reference", str(fixed),
                                  "--out", str(moved)])  # fmt: skip
    assert applied.exit_code == 0, applied.output
    ours = load_image(moved).data.numpy()[0]
    warped = next(p for p in out.iterdir() if p.name.startswith("warped"))
    assert np.allclose(ours, load_image(warped).data.numpy()[0], atol=1e-3 * float(ours.max()))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(out / "warp.nii.gz")),
                                                          sitk.sitkVectorFloat64))  # fmt: skip
    by_itk = sitk.GetArrayFromImage(sitk.Resample(to_sitk(pair.moving), to_sitk(pair.fixed), transform,
                                                  sitk.sitkLinear, 0.0, sitk.sitkFloat32))  # fmt: skip
    inner = (slice(3, -3), slice(3, -3))
    assert float(np.median(np.abs(by_itk - ours)[inner])) < 1e-4 * float(ours.max())


def test_register_passes_the_model_options(tmp_path: Path, pair_files) -> None:  # type: ignore[no-untyped-def]
    """--affine none --diffusion 2 reach the library: the same field as the library's call with those options."""
    from lossfit.registration import register

    fixed, moving, _ = pair_files
    out = tmp_path / "run"
    result = runner.invoke(app, ["register", str(fixed), str(moving), "--transform", "svf", "--affine", "none",
                                 "--diffusion", "2", "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    field = torch.from_numpy(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warp.nii.gz"))).astype(np.float64))
    direct = register(load_image(fixed), load_image(moving), transform="svf", affine="none", diffusion=2.0)
    assert direct.affine_stage is None
    assert float((field - direct.displacement).abs().max()) < 1e-4  # the file holds float32


def test_register_symmetric_recovers_the_warp(tmp_path: Path, pair_files) -> None:  # type: ignore[no-untyped-def]
    fixed, moving, pair = pair_files
    out = tmp_path / "run"
    result = runner.invoke(app, ["register", str(fixed), str(moving), "--transform", "deformable", "--symmetric",
                                 "--out", str(out), "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["status"] == "converged_ftol"
    field = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "warp.nii.gz")))
    error = np.linalg.norm(field - pair.truth.numpy(), axis=-1)[pair.mask.numpy()].mean()
    assert error < 0.4 * pair.initial


def test_apply_takes_an_ants_style_chain_of_field_then_affine(tmp_path: Path, pair_files) -> None:  # type: ignore[no-untyped-def]
    """-t warp -t affine as ANTs writes its outputs: the field first, then the matrix."""
    fixed, moving, pair = pair_files
    field = torch.zeros(*pair.fixed.shape, 2, dtype=torch.float64)
    field[..., 0] = 1.5
    from lossfit.registration import write_displacement_field, write_itk_transform

    write_displacement_field(tmp_path / "w.nii.gz", field, pair.fixed)
    shift = torch.eye(3, dtype=torch.float64)
    shift[1, 2] = -2.0
    write_itk_transform(tmp_path / "a.tfm", shift)
    chained, direct = tmp_path / "chained.nii.gz", tmp_path / "direct.nii.gz"
    both = torch.eye(3, dtype=torch.float64)
    both[0, 2], both[1, 2] = 1.5, -2.0
    write_itk_transform(tmp_path / "both.tfm", both)
    for names, target in (([tmp_path / "w.nii.gz", tmp_path / "a.tfm"], chained), ([tmp_path / "both.tfm"], direct)):
        r = runner.invoke(
            app, ["apply", *map(str, names), str(moving), "--reference", str(fixed), "--out", str(target)]
        )
        assert r.exit_code == 0, r.output
    assert np.allclose(load_image(chained).data.numpy(), load_image(direct).data.numpy(), atol=1e-2)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--transform", "warp"], "transform"),
        (["--transform", "rigid", "--symmetric"], "symmetric"),
        (["--transform", "bspline", "--symmetric"], "symmetric"),
    ],
)
def test_register_deformable_bad_options_are_one_line(tmp_path: Path, pair_files, extra: list[str], words: str) -> None:  # type: ignore[no-untyped-def]
    fixed, moving, _ = pair_files
    out = tmp_path / "run"
    r = runner.invoke(app, ["register", str(fixed), str(moving), "--out", str(out), *extra])
    assert r.exit_code == 2 and words in r.output and len(r.output.strip().splitlines()) == 1
    assert not out.exists()


def test_apply_refuses_a_bad_field_file_and_writes_nothing(tmp_path: Path, pair_files) -> None:  # type: ignore[no-untyped-def]
    fixed, moving, _ = pair_files
    bad = tmp_path / "notafield.nii.gz"
    save_image(load_image(fixed), bad)  # a scalar image, not a vector field
    out = tmp_path / "moved.nii.gz"
    r = runner.invoke(app, ["apply", str(bad), str(moving), "--reference", str(fixed), "--out", str(out)])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert not out.exists()
    field3 = tmp_path / "f3.nii.gz"
    from lossfit.registration import Image, write_displacement_field

    grid = Image(torch.zeros(6, 7, 8), spacing=2.0)
    write_displacement_field(field3, torch.zeros(6, 7, 8, 3), grid)
    r = runner.invoke(app, ["apply", str(field3), str(moving), "--reference", str(fixed), "--out", str(out)])
    assert r.exit_code == 2 and "holds none" in r.output and len(r.output.strip().splitlines()) == 1, r.output
    r = runner.invoke(app, ["apply", str(field3), str(moving), "--reference", str(fixed), "--out", str(out),
                            "--inverse"])  # fmt: skip
    assert r.exit_code == 2 and "inverse" in r.output
    assert not out.exists()
