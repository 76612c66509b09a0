"""Registration on what users bring: pairs on two different grids made by SimpleITK, real files on other grids,
objectives that cannot win by leaving the image, and the independent check that stops a wrong answer."""

from __future__ import annotations

import importlib
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lossfit.engine.result import Status
from lossfit.registration import Image, displacement, load_image, register, resample, save_image
from lossfit.registration import checks as C

register_module = importlib.import_module("lossfit.registration.register")

sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")
nilearn = pytest.importorskip("nilearn")
pytest.importorskip("skimage")

from registration_pairs import (  # noqa: E402
    centre_of,
    from_sitk,
    random_pair,
    random_truth,
    resample_onto,
    source,
    to_sitk,
)

pytestmark = pytest.mark.usefixtures("one_thread")

MODELS_2D = ("translation", "rigid", "similarity", "affine", "projective")
MODELS_3D = ("translation", "rigid", "similarity", "affine")

# The corpus goal is a tenth of the finer voxel. Measured on these seeds (error / that tenth, worst case): mse 1.2
# (projective), ncc 1.9 (projective) and 1.1 (affine), mi 1.3 (2-D affine; 3-D similarity, affine), lncc 1.9.
# Tighter tolerances and other samplings leave those figures as they are: the metric's own optimum lies there (the
# two images are blurred and sampled differently, as real scans are). These bounds hold them; RESULTS.md has them.
FACTOR = {("mse", "projective"): 1.5, ("ncc", "affine"): 1.5, ("ncc", "projective"): 2.5, "mi": 1.5, "lncc": 2.5}


def allowed(metric: str, model: str) -> float:
    return FACTOR.get((metric, model), FACTOR.get(metric, 1.0))


# ---------------------------------------------------------------------------------------------------------------
# The geometry corpus: random pairs of grids (anisotropic spacing, oblique directions with flips and permuted axes,
# origins, fields of view that cut part of the object off), the true world transform made by SimpleITK.


@pytest.mark.parametrize(("model", "seed"), list(itertools.product(MODELS_2D, range(3))))
@pytest.mark.parametrize("metric", ["mse", "ncc", "mi", "lncc"])
def test_corpus_2d_pairs_on_two_grids(model: str, seed: int, metric: str) -> None:
    pair = random_pair(seed, model, "camera")
    assert pair.fixed.shape != pair.moving.shape and pair.fixed.spacing != pair.moving.spacing
    result = register(pair.fixed, pair.moving, model, metric)
    error = pair.error(result.matrix)
    assert result.success, (result.status, error, result.checks)
    assert error < allowed(metric, model) * pair.tolerance, (error, pair.tolerance)


@pytest.mark.parametrize(
    ("model", "seed"), [("translation", 0), ("rigid", 0), ("rigid", 1), ("similarity", 0), ("affine", 0), ("affine", 1)]
)
@pytest.mark.parametrize("metric", ["mse", "ncc", "mi"])
def test_corpus_3d_pairs_on_two_grids(model: str, seed: int, metric: str) -> None:
    pair = random_pair(seed, model, "mni")
    result = register(pair.fixed, pair.moving, model, metric)
    error = pair.error(result.matrix)
    assert result.success, (result.status, error, result.checks)
    assert error < allowed(metric, model) * pair.tolerance, (error, pair.tolerance)


@pytest.mark.parametrize(("model", "seed"), [("rigid", 0), ("affine", 1)])
def test_corpus_3d_local_ncc_on_sampled_patches(model: str, seed: int) -> None:
    """Local NCC on a volume larger than the sample budget compares boxes around sampled centres."""
    pair = random_pair(seed, model, "mni")
    result = register(pair.fixed, pair.moving, model, "lncc", samples=40_000)
    assert result.levels[-1].samples <= 40_000 < pair.fixed.data.numel()
    assert result.success, (result.status, result.checks)
    assert pair.error(result.matrix) < pair.tolerance


def test_corpus_pairs_are_what_they_claim() -> None:
    """The corpus itself: the moving image is the fixed one under the truth (checked through lossfit's resample,
    which the SimpleITK-made pair does not use), and the grids differ in every respect."""
    pair = random_pair(0, "affine", "mni")
    back, inside = resample(pair.moving, pair.fixed, pair.truth, mask=True)  # type: ignore[misc]
    scale = float(pair.fixed.data.max())
    core = inside & (pair.fixed.data > 0.2 * scale)
    assert int(core.sum()) > 10_000
    assert float((back.data - pair.fixed.data)[core].abs().mean()) < 0.03 * scale
    f, m = pair.fixed, pair.moving
    assert f.shape != m.shape and f.spacing != m.spacing and f.direction != m.direction and f.origin != m.origin


# ---------------------------------------------------------------------------------------------------------------
# Real pairs with no warp at all


@pytest.mark.parametrize("spacing", [2.0, 3.0])
def test_mni_against_itself_resampled_by_simpleitk_registers_to_the_identity(spacing: float) -> None:
    """nilearn's MNI152 (1 mm, read by lossfit from the file) and the same template resampled by SimpleITK onto an
    oblique grid at 2 or 3 mm: the answer is the identity, within a tenth of the finer (1 mm) voxel."""
    path = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    template = load_image(path)
    src = source("mni")
    grid = sitk.Image([int(180 / spacing)] * 3, sitk.sitkFloat32)
    grid.SetSpacing((spacing,) * 3)
    a, b = math.radians(14), math.radians(-9)
    rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    rz = np.array([[math.cos(b), -math.sin(b), 0], [math.sin(b), math.cos(b), 0], [0, 0, 1]])
    direction = rx @ rz
    grid.SetDirection(direction.reshape(-1).tolist())
    centre = np.array(src.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in src.GetSize()]))
    grid.SetOrigin((centre - direction @ np.full(3, spacing * (int(180 / spacing) - 1) / 2)).tolist())
    smooth = sitk.SmoothingRecursiveGaussian(src, spacing / 2)
    oblique = from_sitk(sitk.Resample(smooth, grid, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0))
    for fixed, moving in ((oblique, template), (template, oblique)):
        result = register(fixed, moving, "rigid")
        error = displacement(result.matrix, torch.eye(4, dtype=torch.float64), fixed, fixed.data > 20)
        assert result.success, result.status
        assert error["mean"] < 0.1 and error["max"] < 0.25, error


# ---------------------------------------------------------------------------------------------------------------
# An objective that cannot win by leaving


def test_images_that_do_not_overlap_at_the_start_are_an_error_naming_both_extents() -> None:
    fixed = random_pair(0, "rigid", "camera").fixed
    far = Image(
        fixed.data, spacing=fixed.spacing, origin=(fixed.origin[0] + 500, fixed.origin[1]), direction=fixed.direction
    )
    for metric in ("mse", "ncc", "mi"):
        with pytest.raises(ValueError, match=r"do not overlap at the start.*fixed covers x .*moving covers x "):
            register(fixed, far, "rigid", metric, init="none")
    # Brought together by the images' centres, the same pair registers.
    assert register(fixed, far, "translation").success


@pytest.mark.parametrize("metric", ["mse", "ncc", "mi"])
def test_a_brighter_moving_image_is_never_a_wrong_success(metric: str) -> None:
    pair = random_pair(1, "rigid", "ct")
    brighter = pair.moving.with_data(3 * pair.moving.data)
    result = register(pair.fixed, brighter, "rigid", metric)
    error = pair.error(result.matrix)
    if metric == "mse":  # mean squares cannot match a contrast change: it must say so, not wander off
        assert not result.success and result.status in (Status.POOR_MATCH, Status.NO_OVERLAP, Status.DEGENERATE)
        assert error < 100
    else:
        assert result.success and error < pair.tolerance * 2


@pytest.mark.parametrize("transform", ["rigid", "affine"])
def test_a_one_bright_voxel_image_is_never_a_success(transform: str) -> None:
    fixed = random_pair(0, "rigid", "ct").fixed
    spike = torch.zeros(fixed.shape)
    spike[fixed.shape[0] // 3, fixed.shape[1] // 2] = 1000.0
    result = register(fixed, fixed.with_data(spike), transform)
    assert not result.success
    assert result.status in (Status.NO_OVERLAP, Status.DEGENERATE, Status.POOR_MATCH, Status.WORSE_THAN_START)


def test_a_ct_slice_against_its_own_png_export(tmp_path: Path) -> None:
    """A PNG keeps no geometry (1 mm pixels at the origin): the slice sits elsewhere and at another scale. A
    similarity transform with NCC (the export rescaled the values) finds the known answer; mean squares, which
    cannot match rescaled values, says so instead of claiming success with a wrong answer."""
    ct = load_image(pydicom.data.get_testdata_file("CT_small.dcm"))
    grey = ((ct.data - ct.data.min()) / (ct.data.max() - ct.data.min()) * 255).round()
    save_image(ct.with_data(grey), tmp_path / "ct.png")
    png = load_image(tmp_path / "ct.png")
    # The same pixel (i, j) in both: index -> world of the CT, then world -> index of the PNG.
    truth = png.affine @ torch.linalg.inv(ct.affine)
    good = register(ct, png, "similarity", "ncc")
    assert good.success and displacement(good.matrix, truth, ct)["max"] < 0.1
    for transform in ("rigid", "similarity", "affine"):
        result = register(ct, png, transform, "mse")
        assert not result.success and result.status in (Status.POOR_MATCH, Status.NO_OVERLAP), transform


def test_an_empty_mask_is_an_error() -> None:
    pair = random_pair(0, "rigid", "ct")
    empty = pair.fixed.with_data(torch.zeros(pair.fixed.shape))
    with pytest.raises(ValueError, match="`fixed_mask` selects no voxel"):
        register(pair.fixed, pair.moving, "rigid", fixed_mask=empty)
    with pytest.raises(ValueError, match="`moving_mask` selects no voxel"):
        register(pair.fixed, pair.moving, "rigid", moving_mask=pair.moving.with_data(torch.zeros(pair.moving.shape)))
    # A mask elsewhere in the world selects nothing on the image's grid either.
    away = Image(torch.ones(8, 8), origin=(5000.0, 0.0))
    with pytest.raises(ValueError, match="`fixed_mask` selects no voxel of the image it masks"):
        register(pair.fixed, pair.moving, "rigid", fixed_mask=away)


def test_masks_on_another_grid_restrict_the_comparison() -> None:
    """The moving mask lives on its own (coarser, rotated) grid; a bright block outside it is ignored."""
    pair = random_pair(2, "rigid", "ct")
    spoiled = pair.moving.data.clone()
    rows = spoiled.shape[0]
    spoiled[: rows // 5] = 5 * float(spoiled.max())
    keep_data = torch.ones_like(spoiled)
    keep_data[: rows // 5 + 2] = 0
    mask = resample(pair.moving.with_data(keep_data), random_pair(3, "rigid", "ct").moving, interpolation="nearest")
    assert isinstance(mask, Image) and mask.shape != pair.moving.shape
    masked = register(pair.fixed, pair.moving.with_data(spoiled), "rigid", moving_mask=mask)
    assert masked.success and pair.error(masked.matrix) < 3 * pair.tolerance


# ---------------------------------------------------------------------------------------------------------------
# The independent check


def test_the_check_turns_a_broken_objective_into_a_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reintroduce the grid bug (the moving image's coordinates from the fixed grid's shape) in the objective only:
    the solver converges on it, and the end-of-run check, which looks up the moving image through its own
    geometry, refuses the answer."""
    pair = random_pair(0, "rigid", "camera")
    honest = register(pair.fixed, pair.moving, "rigid")
    assert honest.success and honest.checks["passed"]

    def fixed_shape(image: Image) -> torch.Tensor:
        wrong = Image.from_affine(torch.zeros(tuple(reversed(pair.fixed.shape))), image.affine)
        return C.world_to_normalized(wrong)

    monkeypatch.setattr(register_module, "world_to_normalized", fixed_shape)
    broken = register(pair.fixed, pair.moving, "rigid")
    assert not broken.success and broken.status is Status.CHECK_MISMATCH
    assert not broken.checks["passed"] and broken.checks["failed"] == "check_mismatch"
    assert broken.to_dict()["checks"]["failed"] == "check_mismatch"
    assert pair.error(broken.matrix) > 1.0  # the answer was indeed wrong


def _checks(**changes: float) -> dict:
    base = {
        "overlap_start": 0.8,
        "overlap": 0.78,
        "metric_start": 10.0,
        "metric_answer": 1.0,
        "metric_slack": 0.0,
        "objective": 0.5,
        "objective_independent": 0.5,
        "determinant": 1.0,
        "singular_values": [0.98, 1.02],
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({}, None),
        ({"objective_independent": 0.6}, Status.CHECK_MISMATCH),
        ({"overlap": 0.3}, Status.NO_OVERLAP),
        ({"determinant": -1.0}, Status.DEGENERATE),
        ({"singular_values": [0.1, 1.0]}, Status.DEGENERATE),
        ({"singular_values": [1.0, 6.0]}, Status.DEGENERATE),
        ({"metric_answer": 10.5}, Status.WORSE_THAN_START),
        ({"metric_answer": 10.05}, None),  # within the 1% slack of the start
        ({"metric_constant": 1.9}, Status.POOR_MATCH),
        ({"metric_constant": 2.1}, None),
    ],
)
def test_each_check_has_its_status(changes: dict, status: Status | None) -> None:
    assert C.verdict(_checks(**changes), "mse") is status


def test_checks_are_on_the_result_and_measure_the_answer() -> None:
    pair = random_pair(1, "affine", "camera")
    result = register(pair.fixed, pair.moving, "affine", "ncc")
    checks = result.checks
    assert checks["passed"] and checks["metric_answer"] < checks["metric_start"]
    assert abs(checks["objective"] - checks["objective_independent"]) <= 1e-3 * abs(checks["objective"])
    assert 0 < checks["overlap"] <= 1 and 0 < checks["overlap_start"] <= 1
    det = float(torch.linalg.det(result.matrix[:2, :2]))
    assert checks["determinant"] == pytest.approx(det, rel=1e-9)
    # The overlap counts fixed voxels mapped inside the moving grid, as an independent count from the mask resample
    # gives (nearest-voxel borders aside).
    _, inside = resample(pair.moving, pair.fixed, result.matrix, mask=True)  # type: ignore[misc]
    assert checks["overlap"] == pytest.approx(float(inside.double().mean()), abs=0.02)


def test_a_batch_of_pairs_on_their_own_grids_checks_each_pair() -> None:
    """Two pairs sharing the fixed image, their moving images on another grid (the same one), two truths."""
    pair = random_pair(4, "rigid", "ct")
    src = source("ct")
    truth = random_truth(np.random.default_rng(9), "rigid", 2, centre_of(src))
    grid = to_sitk(pair.moving)
    second = from_sitk(resample_onto(src, grid, np.linalg.inv(truth), 0.5 * max(pair.moving.spacing)))
    many = register([pair.fixed, pair.fixed], [pair.moving, second], "rigid")
    one = [register(pair.fixed, m, "rigid") for m in (pair.moving, second)]
    assert isinstance(many.checks, list) and len(many.checks) == 2
    for i, single in enumerate(one):
        # the same answer to well within the solver's own precision (xtol): 1e-4 mm, 1e-4 in the linear part
        torch.testing.assert_close(many.matrix[i], single.matrix, rtol=0, atol=1e-4)
        assert many.checks[i]["passed"] and single.checks["passed"]
    assert displacement(many.matrix[1], torch.tensor(truth), pair.fixed)["mean"] < 3 * pair.tolerance


def test_a_2d_slice_and_a_one_slice_nifti_of_the_same_plane_register_as_2d(tmp_path: Path) -> None:
    """A 2-D CT slice against the same slice saved as a one-slice NIfTI volume on another grid (as other tools write
    2-D data): one rule makes both 2-D; a coronal one-slice volume is refused with the reason."""
    pair = random_pair(0, "rigid", "ct")
    save_image(pair.moving, tmp_path / "moving.nii.gz")
    volume = load_image(tmp_path / "moving.nii.gz")
    assert volume.ndim == 3 and volume.shape[0] == 1
    result = register(pair.fixed, volume, "rigid")
    assert result.matrix.shape == (3, 3) and result.success
    flat = register(pair.fixed, pair.moving, "rigid")  # the same slice as a 2-D image: the same answer
    torch.testing.assert_close(result.matrix, flat.matrix, rtol=0, atol=1e-4)
    assert pair.error(result.matrix) < 2 * pair.tolerance  # a 42 x 68 fixed slice: precision is limited
    coronal = Image(volume.data, spacing=(1.0, 1.0, 1.0), direction=[[1, 0, 0], [0, 0, 1], [0, -1, 0]])
    with pytest.raises(ValueError, match=r"not in the x-y \(axial\) plane"):
        register(pair.fixed, coronal, "rigid")


@pytest.mark.parametrize("metric", ["mse", "ncc", "mi", "lncc"])
def test_an_image_against_itself_is_the_identity_and_a_success(metric: str) -> None:
    """The objective is near zero at the answer: the check's tolerance follows the metric's scale, not 1e-9."""
    ct = load_image(pydicom.data.get_testdata_file("CT_small.dcm"))
    result = register(ct, ct, "affine", metric)
    assert result.success, (result.status, result.checks)
    assert displacement(result.matrix, torch.eye(3, dtype=torch.float64), ct)["max"] < 0.1 * min(ct.spacing)
