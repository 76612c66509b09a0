"""``lossfit apply`` and ``lossfit invert``: transforms from other tools applied as SimpleITK applies them; label maps
keep their labels; the inverse is SimpleITK's inverse."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossfit.cli import app
from lossfit.registration import Image, load_image, save_image

sitk = pytest.importorskip("SimpleITK")

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


def _to_sitk(image: Image) -> object:
    out = sitk.GetImageFromArray(image.numpy())
    out.SetSpacing(image.spacing)
    out.SetOrigin(image.origin)
    out.SetDirection([v for row in image.direction for v in row])
    return out


def _rotation(rng: np.random.Generator, degrees: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    a = math.radians(degrees)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def _scene(folder: Path, seed: int) -> tuple[Path, Path, Path, Image, Image]:
    """A label map (three ellipsoids, labels 1..3) and a smooth image on one oblique, anisotropic grid, and a
    reference grid of another shape, spacing and direction over the same region."""
    rng = np.random.default_rng(seed)
    shape = (24, 30, 28)  # (z, y, x)
    spacing = (1.5, 1.2, 2.0)
    direction = _rotation(rng, 12)
    centre = np.array([5.0, -8.0, 20.0])
    origin = centre - direction @ (np.array(spacing) * (np.array(shape[::-1]) - 1) / 2)
    grid = Image(torch.zeros(shape), spacing=spacing, origin=tuple(origin), direction=direction)
    world = grid.world_grid(torch.float64)
    labels = torch.zeros(shape)
    blobs = [
        ((-8.0, 0.0, 0.0), (9.0, 7.0, 8.0)),
        ((9.0, 3.0, -2.0), (6.0, 9.0, 7.0)),
        ((0.0, -10.0, 6.0), (7.0, 5.0, 6.0)),
    ]
    for label, (offset, radii) in enumerate(blobs, start=1):
        r = (world - torch.tensor(centre + offset)) / torch.tensor(radii)
        labels[(r**2).sum(-1) <= 1] = float(label)
    smooth = torch.exp(-(((world - torch.tensor(centre)) / 14.0) ** 2).sum(-1)) * 1000
    label_map, image = grid.with_data(labels), grid.with_data(smooth.float())
    ref_direction = _rotation(rng, 8)
    ref_shape, ref_spacing = (20, 26, 32), (1.3, 1.6, 1.9)
    ref_origin = centre - ref_direction @ (np.array(ref_spacing) * (np.array(ref_shape[::-1]) - 1) / 2)
    reference = Image(torch.zeros(ref_shape), spacing=ref_spacing, origin=tuple(ref_origin), direction=ref_direction)
    paths = folder / "labels.nii.gz", folder / "image.nii.gz", folder / "reference.nii.gz"
    save_image(label_map, paths[0])
    save_image(image, paths[1])
    save_image(reference, paths[2])
    return (*paths, label_map, reference)


def _euler(rng: np.random.Generator) -> object:
    t = sitk.Euler3DTransform()
    t.SetCenter(tuple(rng.normal(size=3) * 5 + np.array([5.0, -8.0, 20.0])))
    t.SetRotation(*(rng.normal(size=3) * 0.08))
    t.SetTranslation(tuple(rng.normal(size=3) * 2))
    return t


def test_a_label_map_moves_as_simpleitk_moves_it_and_keeps_its_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels, _, reference, label_map, _ = _scene(tmp_path, 1)
    first, second = _euler(rng), sitk.AffineTransform(3)
    second.SetMatrix(tuple((np.eye(3) + rng.normal(size=(3, 3)) * 0.03).ravel()))
    second.SetTranslation(tuple(rng.normal(size=3)))
    second.SetCenter((4.0, -6.0, 18.0))
    sitk.WriteTransform(first, str(tmp_path / "a.tfm"))
    sitk.WriteTransform(second, str(tmp_path / "b.mat"))
    out = tmp_path / "moved.nii.gz"
    args = ["apply", str(tmp_path / "a.tfm"), str(tmp_path / "b.mat"), str(labels), "--reference", str(reference)]
    result = runner.invoke(app, [*args, "--interpolation", "nearest", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    # the chain as antsApplyTransforms -t a -t b: a takes the reference point first, then b; a SimpleITK composite
    # applies the transform added last first
    chain = sitk.CompositeTransform(3)
    chain.AddTransform(second)
    chain.AddTransform(first)
    expected = sitk.Resample(
        sitk.ReadImage(str(labels)), sitk.ReadImage(str(reference)), chain, sitk.sitkNearestNeighbor, 0.0
    )
    ours = load_image(out).numpy()
    theirs = sitk.GetArrayFromImage(expected)
    assert set(np.unique(ours)) <= {0.0, 1.0, 2.0, 3.0} and set(np.unique(ours)) >= {1.0, 2.0, 3.0}
    agree = float((ours == theirs).mean())
    assert agree > 0.9995, agree  # the rest: points within rounding of a half-voxel boundary
    summary = json.loads(result.stdout)
    assert summary["transforms"] == [str(tmp_path / "a.tfm"), str(tmp_path / "b.mat")]
    assert load_image(out).shape == load_image(reference).shape
    assert label_map.shape != load_image(out).shape  # a grid of its own


def test_linear_and_bspline_agree_with_simpleitk_inside_the_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    _, image, reference, _, _ = _scene(tmp_path, 2)
    t = _euler(rng)
    sitk.WriteTransform(t, str(tmp_path / "t.txt"))
    for mode, itk_mode, tol in (("linear", sitk.sitkLinear, 1e-2), ("bspline", sitk.sitkBSpline, 0.5)):
        out = tmp_path / f"{mode}.nii.gz"
        result = runner.invoke(
            app,
            ["apply", str(tmp_path / "t.txt"), str(image), "--reference", str(reference), "--out", str(out)]
            + ["--interpolation", mode, "--fill", "-1"],
        )
        assert result.exit_code == 0, result.output
        theirs = sitk.GetArrayFromImage(
            sitk.Resample(sitk.ReadImage(str(image)), sitk.ReadImage(str(reference)), t, itk_mode, -1.0)
        )
        ours = load_image(out).numpy()
        inside = (theirs != -1) & (ours != -1)
        assert inside.mean() > 0.5
        err = float(np.abs(ours - theirs)[inside].max())
        assert err < tol, (mode, err)  # values up to 1000; float32 files
        assert (ours == -1).any()  # the fill, outside the image


def test_inverse_and_invert_match_simpleitks_inverse(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    t = _euler(rng)
    sitk.WriteTransform(t, str(tmp_path / "t.tfm"))
    result = runner.invoke(app, ["invert", str(tmp_path / "t.tfm"), "--out", str(tmp_path / "inverse.tfm")])
    assert result.exit_code == 0, result.output
    ours, theirs = sitk.ReadTransform(str(tmp_path / "inverse.tfm")), t.GetInverse()
    for p in rng.normal(size=(5, 3)) * 50:
        assert np.allclose(ours.TransformPoint(tuple(p)), theirs.TransformPoint(tuple(p)), rtol=0, atol=1e-9)
    # apply --inverse of t equals apply of the inverse file
    labels, _, reference, _, _ = _scene(tmp_path, 3)
    outs = []
    for extra, transform in (["--inverse"], "t.tfm"), ([], "inverse.tfm"):
        out = tmp_path / f"moved{len(outs)}.nii.gz"
        args = ["apply", str(tmp_path / transform), str(labels), "--reference", str(reference), "--out", str(out)]
        result = runner.invoke(app, [*args, "--interpolation", "nearest", *extra])
        assert result.exit_code == 0, result.output
        outs.append(load_image(out).numpy())
    assert float((outs[0] == outs[1]).mean()) > 0.999


def test_apply_and_invert_refuse_bad_input_in_one_line_before_writing(tmp_path: Path) -> None:
    labels, _, reference, _, _ = _scene(tmp_path, 4)
    sitk.WriteTransform(sitk.Euler2DTransform(), str(tmp_path / "flat.tfm"))
    sitk.WriteTransform(sitk.Euler3DTransform(), str(tmp_path / "t.tfm"))
    (tmp_path / "exists.nii.gz").write_bytes(b"keep")
    (tmp_path / "bspline.tfm").write_text(
        "#Insight Transform File V1.0\n#Transform 0\nTransform: BSplineTransform_double_3_3\nParameters: 0\n"
        "FixedParameters: 0\n"
    )
    base = ["--reference", str(reference)]
    cases = [
        (["apply", str(tmp_path / "flat.tfm"), str(labels), *base, "--out", str(tmp_path / "o.nii.gz")], "2-D"),
        (["apply", str(tmp_path / "t.tfm"), str(labels), *base, "--out", str(tmp_path / "exists.nii.gz")], "exists"),
        (["apply", str(tmp_path / "t.tfm"), str(labels), *base, "--out", str(labels)], "is an input"),
        (["apply", str(labels), *base, "--out", str(tmp_path / "o.nii.gz")], "at least one TRANSFORM"),
        (["apply", str(labels), str(labels), *base, "--out", str(tmp_path / "o.nii.gz")], "not a vector displacement"),
        (["apply", str(tmp_path / "t.csv"), str(labels), *base, "--out", str(tmp_path / "o.nii")], "must end in .tfm"),
        (["apply", str(tmp_path / "bspline.tfm"), str(labels), *base, "--out", str(tmp_path / "o.nii.gz")], "BSpline"),
        (["apply", str(tmp_path / "t.tfm"), str(labels), *base, "--out", str(tmp_path / "o.png")], "must be 2-D"),
        (["invert", str(tmp_path / "t.tfm"), "--out", str(tmp_path / "o.nii.gz")], "--out must end in"),
        (["invert", str(tmp_path / "t.tfm"), "--out", str(tmp_path / "t.tfm"), "--overwrite"], "is an input"),
    ]
    for args, words in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and words in result.stderr, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1
    assert (tmp_path / "exists.nii.gz").read_bytes() == b"keep"
    assert not (tmp_path / "o.nii.gz").exists() and not (tmp_path / "o.png").exists()


def test_a_bspline_png_is_written_within_the_inputs_range(tmp_path: Path) -> None:
    """Cubic B-splines overshoot at sharp edges (a checkerboard of 0 and 255 rings below 0 and above 255); a PNG,
    checked for 0..65535 before the work, gets the result clipped to the input's range instead of failing after."""
    from lossfit.registration import save_image

    board = ((torch.arange(64)[:, None] // 8 + torch.arange(64)[None, :] // 8) % 2 * 255).float()
    save_image(Image(board), tmp_path / "board.png")
    turn = sitk.Euler2DTransform()
    turn.SetCenter((31.5, 31.5))
    turn.SetAngle(0.3)
    sitk.WriteTransform(turn, str(tmp_path / "turn.tfm"))
    args = [
        "apply",
        str(tmp_path / "turn.tfm"),
        str(tmp_path / "board.png"),
        "--reference",
        str(tmp_path / "board.png"),
    ]
    result = runner.invoke(app, [*args, "--interpolation", "bspline", "--out", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    out = load_image(tmp_path / "out.png").data
    assert float(out.min()) == 0 and float(out.max()) == 255
    from lossfit.registration import apply_transform

    raw = apply_transform(Image(board), tmp_path / "turn.tfm", Image(board), interpolation="bspline").data
    assert float(raw.max()) > 256 and float(raw.min()) < -1  # the overshoot the clipping removed
