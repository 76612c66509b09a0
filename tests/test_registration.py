"""Image registration: resampling, metrics, register() on real images warped by known transforms, ITK export."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lossfit.registration import (
    Image,
    displacement,
    load_image,
    read_itk_transform,
    register,
    resample,
    target_registration_error,
    write_itk_transform,
)
from lossfit.registration import metrics as M
from lossfit.transforms import apply as map_points

sitk = pytest.importorskip("SimpleITK")
pydicom = pytest.importorskip("pydicom")
nilearn = pytest.importorskip("nilearn")

pytestmark = pytest.mark.usefixtures("one_thread")

from registration_pairs import centre_of, extent_of, from_sitk, random_grid, resample_onto, to_sitk  # noqa: E402

DATA = Path(nilearn.__file__).parent / "datasets" / "data"


@functools.cache
def ct() -> Image:
    return load_image(pydicom.data.get_testdata_file("CT_small.dcm"))


@functools.cache
def mni(name: str = "t1", shrink: int = 4) -> Image:
    """nilearn's MNI152 maps (1 mm), smoothed and subsampled by ``shrink`` with the right geometry."""
    files = {"t1": "mni_icbm152_t1", "gm": "mni_icbm152_gm", "wm": "mni_icbm152_wm"}
    image = load_image(DATA / f"{files[name]}_tal_nlin_sym_09a_converted.nii.gz")
    data = image.data[::shrink, ::shrink, ::shrink].contiguous()
    affine = image.affine.clone()
    affine[:3, :3] *= shrink
    return Image.from_affine(data, affine)


def about_centre(image: Image, linear: torch.Tensor, shift: tuple[float, ...]) -> torch.Tensor:
    """A world matrix ``y = A (x - c) + c + t`` turning about the image centre ``c``."""
    d = image.ndim
    c = torch.tensor(image.center, dtype=torch.float64)
    m = torch.eye(d + 1, dtype=torch.float64)
    m[:d, :d] = linear
    m[:d, d] = c - linear @ c + torch.tensor(shift, dtype=torch.float64)
    return m


def rotation(degrees: float, axis: int = 2) -> torch.Tensor:
    a = math.radians(degrees)
    c, s = math.cos(a), math.sin(a)
    r = torch.eye(3, dtype=torch.float64)
    i, j = [k for k in range(3) if k != axis]
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def warp_known(image: Image, warp: torch.Tensor) -> tuple[Image, torch.Tensor]:
    """``moving(x) = image(warp x)`` on the image's own grid; the registration answer is ``warp^-1``."""
    moving = resample(image, image, warp)
    assert isinstance(moving, Image)
    return moving, torch.linalg.inv(warp)


def safely_inside(image: Image, reference: Image, matrix: torch.Tensor) -> np.ndarray:
    """Reference voxels whose sample lies more than a voxel inside ``image`` (ITK and torch differ at the border),
    decided from the mapped continuous indices (not from interpolated values, whose last bits vary by CPU)."""
    points = reference.world_grid(torch.float64).reshape(-1, reference.ndim)
    index = image.world_to_index(map_points(matrix.to(torch.float64), points))
    last = torch.tensor(image.size, dtype=torch.float64) - 1
    inside = ((index >= 1) & (index <= last - 1)).all(dim=-1)
    return inside.reshape(reference.shape).numpy()


def warp_elsewhere(image: Image, warp: torch.Tensor, seed: int = 0) -> tuple[Image, torch.Tensor]:
    """The twin of :func:`warp_known` on another grid: ``moving(y) = image(warp y)`` for ``y`` on a grid of its own
    (spacing 0.8-1.4 times the image's, rotated up to 25 degrees, axes flipped and permuted, shifted), resampled by
    SimpleITK; the answer is ``warp^-1`` as before."""
    rng = np.random.default_rng(seed)
    src = to_sitk(image)
    spacing = min(image.spacing)
    grid = random_grid(rng, image.ndim, extent_of(src), centre_of(src), (0.8 * spacing, 1.4 * spacing))
    moving = from_sitk(resample_onto(src, grid, warp.numpy(), 0.0))
    assert moving.shape != image.shape
    return moving, torch.linalg.inv(warp)


def error_mm(image: Image, got: torch.Tensor, truth: torch.Tensor) -> float:
    foreground = image.data > image.data.min() + 0.1 * (image.data.max() - image.data.min())
    return displacement(got, truth, image, foreground)["mean"]


WARPS = {"same": warp_known, "other": warp_elsewhere}  # every known-warp test also runs on another grid
CT_WARP = torch.tensor([[1.05, -0.12], [0.12, 0.97]], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------------------
# Resampling


def test_resampling_with_the_identity_returns_the_image() -> None:
    image = ct()
    out = resample(image, image)
    assert isinstance(out, Image)
    torch.testing.assert_close(out.data, image.data, rtol=0, atol=1e-5 * float(image.data.abs().max()))


def test_resampling_agrees_with_simpleitk_on_an_oblique_anisotropic_grid() -> None:
    g = torch.Generator().manual_seed(0)
    data = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 28, 32, generator=g), 3, 1, 1)[0, 0]
    direction = rotation(20, axis=0) @ rotation(-10, axis=2)
    image = Image(data, spacing=(1.0, 1.5, 2.5), origin=(-10.0, 5.0, 30.0), direction=direction)
    warp = about_centre(image, rotation(6, axis=1) * 1.03, (2.0, -1.0, 0.5))
    ours = resample(image, image, warp)
    assert isinstance(ours, Image)

    s_image = sitk.GetImageFromArray(data.numpy())
    s_image.SetSpacing(image.spacing)
    s_image.SetOrigin(image.origin)
    s_image.SetDirection(tuple(direction.reshape(-1).tolist()))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tuple(warp[:3, :3].reshape(-1).tolist()))
    affine.SetTranslation(tuple(warp[:3, 3].tolist()))
    theirs = sitk.GetArrayFromImage(sitk.Resample(s_image, s_image, affine, sitk.sitkLinear, 0.0))
    inner = safely_inside(image, image, warp)  # the two treat points within a voxel of the border differently
    assert int(inner.sum()) > 0.5 * inner.size
    np.testing.assert_allclose(ours.data.numpy()[inner], theirs[inner], rtol=0, atol=1e-4)


def test_nearest_resampling_keeps_labels() -> None:
    labels = Image(torch.arange(20.0).reshape(4, 5).repeat_interleave(4, 0).repeat_interleave(4, 1))
    shifted = resample(
        labels,
        labels,
        about_centre(labels, torch.eye(2, dtype=torch.float64) * 0.9, (0.3, 0.2)),
        interpolation="nearest",
    )
    assert isinstance(shifted, Image)
    assert set(shifted.data.unique().tolist()) <= set(range(20))


def test_resampling_is_differentiable_in_the_matrix() -> None:
    g = torch.Generator().manual_seed(1)
    image = Image(torch.rand(9, 11, generator=g, dtype=torch.float64), spacing=(0.7, 1.3))
    # Samples stay inside the image: at its border torch's zero padding makes the interpolant non-smooth.
    start = about_centre(image, torch.tensor([[0.92, 0.05], [-0.03, 0.9]], dtype=torch.float64), (0.1, -0.05))

    bottom = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)

    def f(top: torch.Tensor) -> torch.Tensor:
        out = resample(image, image, torch.cat([top, bottom]))
        assert isinstance(out, Image)
        return out.data

    assert torch.autograd.gradcheck(f, (start[:2].clone().requires_grad_(True),), eps=1e-6, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# Metrics


@pytest.mark.parametrize("name", ["mse", "ncc", "mi"])
def test_metric_gradients(name: str) -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 300, generator=g, dtype=torch.float64)
    b = (a**2 + 0.1 * torch.rand(2, 300, generator=g, dtype=torch.float64)).requires_grad_(True)
    w = (torch.rand(2, 300, generator=g, dtype=torch.float64) > 0.2).double()
    ranges = (torch.zeros(2).double(), torch.ones(2).double(), torch.zeros(2).double(), 1.2 * torch.ones(2).double())
    fn = {"mse": lambda b: M.mse(a, b, w), "ncc": lambda b: M.ncc(a, b, w), "mi": lambda b: M.mi(a, b, w, 16, ranges)}
    assert torch.autograd.gradcheck(fn[name], (b,), eps=1e-6, atol=1e-6)


def test_lncc_gradient() -> None:
    g = torch.Generator().manual_seed(3)
    a = torch.rand(1, 8, 9, generator=g, dtype=torch.float64)
    b = (a + 0.2 * torch.rand(1, 8, 9, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda b: M.lncc(a, b, None, 3), (b,), eps=1e-6, atol=1e-6)


def test_patch_lncc_gradient_and_agreement_with_the_whole_grid() -> None:
    g = torch.Generator().manual_seed(8)
    a = torch.rand(2, 6, 27, generator=g, dtype=torch.float64)
    b = (a + 0.3 * torch.rand(2, 6, 27, generator=g, dtype=torch.float64)).requires_grad_(True)
    w = (torch.rand(2, 6, 27, generator=g, dtype=torch.float64) > 0.1).double()
    assert torch.autograd.gradcheck(lambda b: M.patch_lncc(a, b, w), (b,), eps=1e-6, atol=1e-6)
    # One patch covering a whole 3 x 3 x 3 grid: the whole-grid metric's centre box is the same correlation.
    same = M.patch_lncc(a[:1, :1], 2 * a[:1, :1] + 1)
    assert float(same) == pytest.approx(0.0, abs=1e-3)  # a perfect (linear) match, up to the variance guard


def test_metrics_are_best_at_a_match_and_ncc_mi_ignore_intensity_changes() -> None:
    g = torch.Generator().manual_seed(4)
    a = torch.rand(1, 2000, generator=g, dtype=torch.float64)
    other = torch.rand(1, 2000, generator=g, dtype=torch.float64)
    assert float(M.mse(a, a)) == 0 and float(M.mse(a, other)) > 0
    assert float(M.ncc(a, 3 * a + 7)) == pytest.approx(0, abs=1e-12)
    assert float(M.ncc(a, other)) > 0.9
    # MI: a monotonic remap keeps the information; an independent image has almost none.
    assert float(M.mi(a, torch.exp(3 * a))) < float(M.mi(a, other)) - 1.0


# ---------------------------------------------------------------------------------------------------------------
# register: known warps recovered


@pytest.mark.parametrize("metric", ["mse", "ncc", "mi", "lncc"])
@pytest.mark.parametrize("grid", ["same", "other"])
def test_ct_slice_affine_warp_is_recovered(metric: str, grid: str) -> None:
    image = ct()
    moving, truth = WARPS[grid](image, about_centre(image, CT_WARP, (4.0, -3.0)))
    result = register(image, moving, "affine", metric)
    assert result.success, result.status
    assert error_mm(image, result.matrix, truth) < 0.15  # a quarter of a pixel (0.66 mm)
    assert len(result.levels) >= 2 and all(level.steps > 0 for level in result.levels)


@pytest.mark.parametrize(
    ("model", "linear"),
    [
        ("translation", torch.eye(2, dtype=torch.float64)),
        ("rigid", rotation(8)[:2, :2]),
        ("similarity", 1.06 * rotation(-5)[:2, :2]),
    ],
)
@pytest.mark.parametrize("grid", ["same", "other"])
def test_each_2d_model_recovers_its_own_kind_of_warp(model: str, linear: torch.Tensor, grid: str) -> None:
    image = ct()
    moving, truth = WARPS[grid](image, about_centre(image, linear, (3.0, 2.0)))
    result = register(image, moving, model)
    assert result.success and error_mm(image, result.matrix, truth) < 0.1


@pytest.mark.parametrize("source", ["MR_small.dcm", "anatomical.nii"])
@pytest.mark.parametrize("grid", ["same", "other"])
def test_other_real_images_rigid(source: str, grid: str) -> None:
    """pydicom's MR slice (2-D) and nibabel's anatomical volume (3-D, 2 mm, a flipped axis) under rigid warps."""
    if source.endswith(".dcm"):
        image = load_image(str(pydicom.data.get_testdata_file(source)))
        linear = rotation(6)[:2, :2]
    else:
        nibabel = pytest.importorskip("nibabel")
        image = load_image(Path(nibabel.__file__).parent / "tests" / "data" / source)
        linear = rotation(5, 0) @ rotation(-4, 2)
    moving, truth = WARPS[grid](image, about_centre(image, linear, (2.0,) * image.ndim))
    result = register(image, moving, "rigid")
    assert result.success
    assert error_mm(image, result.matrix, truth) < 0.15 * min(image.spacing)  # under 0.15 voxel


@pytest.mark.parametrize("grid", ["same", "other"])
def test_projective_warp_of_a_photograph_is_recovered(grid: str) -> None:
    skimage = pytest.importorskip("skimage")
    photo = Image(torch.tensor(skimage.data.camera()[::2, ::2], dtype=torch.float32))
    warp = about_centre(photo, 0.97 * rotation(4)[:2, :2], (3.0, -2.0))
    warp[2, :2] = torch.tensor([2e-4, -1e-4], dtype=torch.float64)
    moving, truth = WARPS[grid](photo, warp)
    result = register(photo, moving, "projective")
    assert result.success
    assert error_mm(photo, result.matrix, truth) < 0.15


@pytest.mark.parametrize("grid", ["same", "other"])
def test_3d_affine_on_an_oblique_anisotropic_grid(grid: str) -> None:
    t1 = mni("t1", 4)
    oblique = rotation(12, axis=0) @ rotation(-7, axis=2)
    affine = torch.eye(4, dtype=torch.float64)
    affine[:3, :3] = oblique @ torch.diag(torch.tensor([4.0, 4.0, 5.0], dtype=torch.float64))
    affine[:3, 3] = torch.tensor([-90.0, 120.0, -60.0], dtype=torch.float64)
    image = Image.from_affine(t1.data, affine)
    linear = rotation(6, axis=1) @ rotation(-4, axis=2) @ torch.diag(torch.tensor([1.05, 0.96, 1.02]).double())
    moving, truth = WARPS[grid](image, about_centre(image, linear, (5.0, -4.0, 3.0)))
    result = register(image, moving, "affine")
    assert result.success
    assert error_mm(image, result.matrix, truth) < 0.3  # under a tenth of a 4 mm voxel


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("grid", ["same", "other"])
def test_multimodal_3d_rigid_with_mutual_information(grid: str, seed: int) -> None:
    """It holds for any seed of the sampling (measured over seeds 0-5: 0.083-0.110 mm, all successes)."""
    t1 = mni("t1", 4)
    contrast = t1.with_data(120 * mni("gm", 4).data + 40 * mni("wm", 4).data)  # grey brighter than white: T2-like
    moving, truth = WARPS[grid](contrast, about_centre(contrast, rotation(7, 1) @ rotation(-5, 0), (6.0, -3.0, 4.0)))
    result = register(t1, moving, "rigid", "mi", seed=seed)
    assert result.success
    assert error_mm(t1, result.matrix, truth) < 0.5


@pytest.mark.parametrize("grid", ["same", "other"])
def test_a_batch_equals_one_by_one(grid: str) -> None:
    image = ct()
    pairs = [WARPS[grid](image, about_centre(image, rotation(a)[:2, :2], (a / 2, -1.0))) for a in (3.0, -6.0)]
    one = [register(image, moving, "rigid") for moving, _ in pairs]
    many = register([image, image], [moving for moving, _ in pairs], "rigid")
    assert many.matrix is not None and many.matrix.shape == (2, 3, 3)
    for i, single in enumerate(one):
        # the same answer to well within the solver's own precision (xtol): 1e-4 mm, 1e-4 in the linear part
        torch.testing.assert_close(many.matrix[i], single.matrix, rtol=0, atol=1e-4)
    assert len(many.statuses) == 2 and isinstance(many.warped, list)


@pytest.mark.parametrize("grid", ["same", "other"])
def test_same_inputs_give_the_same_result(grid: str) -> None:
    image = ct()
    moving, _ = WARPS[grid](image, about_centre(image, CT_WARP, (1.0, 1.0)))
    a = register(image, moving, "affine", "ncc", seed=3)
    b = register(image, moving, "affine", "ncc", seed=3)
    assert torch.equal(a.matrix, b.matrix)


@pytest.mark.parametrize("init", ["geometry", "mass", "moments"])
@pytest.mark.parametrize("grid", ["same", "other"])
def test_initialisations_bring_a_far_shift_in_range(init: str, grid: str) -> None:
    # The CT slice on a larger empty canvas, so that the shifted copy keeps all of it (moments see the same body).
    canvas = torch.zeros(256, 256)
    canvas[64:192, 64:192] = ct().data - ct().data.min()
    image = Image(canvas, spacing=ct().spacing)
    moving, truth = WARPS[grid](image, about_centre(image, rotation(10)[:2, :2], (25.0, -20.0)))
    result = register(image, moving, "rigid", init=init)
    assert error_mm(image, result.matrix, truth) < 0.2


@pytest.mark.parametrize("grid", ["same", "other"])
def test_a_robust_loss_ignores_content_the_fixed_image_lacks(grid: str) -> None:
    image = ct()
    moving, truth = WARPS[grid](image, about_centre(image, rotation(5)[:2, :2], (2.0, 1.0)))
    spoiled = moving.with_data(moving.data.clone())
    ny, nx = moving.shape
    # a bright block (a tube, a lesion) that the fixed image does not have
    spoiled.data[ny * 5 // 16 : ny * 15 // 32, nx * 15 // 64 : nx * 45 // 64] = 3000.0
    plain = register(image, spoiled, "rigid")
    robust = register(image, spoiled, "rigid", loss="cauchy")
    assert robust.success
    assert error_mm(image, robust.matrix, truth) < 0.1 < error_mm(image, plain.matrix, truth)


@pytest.mark.parametrize("grid", ["same", "other"])
def test_masks_restrict_the_comparison(grid: str) -> None:
    image = ct()
    moving, truth = WARPS[grid](image, about_centre(image, rotation(5)[:2, :2], (2.0, 1.0)))
    spoiled = moving.with_data(moving.data.clone())
    ny, nx = moving.shape
    band = ny * 5 // 32
    spoiled.data[:band, :] = 3000.0  # a bright band the fixed image does not have
    keep = moving.with_data((torch.arange(ny)[:, None] >= band + 4).float().expand(ny, nx).contiguous())
    masked = register(image, spoiled, "rigid", moving_mask=keep)
    assert error_mm(image, masked.matrix, truth) < 0.2


# ---------------------------------------------------------------------------------------------------------------
# What the result offers


@pytest.mark.parametrize("grid", ["same", "other"])
def test_warp_inverse_and_landmarks(grid: str) -> None:
    image = ct()
    moving, truth = WARPS[grid](image, about_centre(image, CT_WARP, (4.0, -3.0)))
    result = register(image, moving, "affine")
    warped = result.warp(moving)
    assert torch.equal(warped.data, result.warped.data)
    torch.testing.assert_close(result.inverse() @ result.matrix, torch.eye(3, dtype=torch.float64))
    landmarks = torch.tensor([[-120.0, -140.0], [-100.0, -120.0], [-130.0, -100.0]], dtype=torch.float64)
    located = landmarks @ truth[:2, :2].T + truth[:2, 2]
    assert float(target_registration_error(result.matrix, landmarks, located).max()) < 0.2
    summary = result.to_dict()
    assert "fixed image's world space" in summary["convention"] and len(summary["matrix"]) == 3
    assert result.num_evals >= sum(level.steps for level in result.levels) > 0


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("grid", ["same", "other"])
def test_exported_itk_transform_resamples_the_same_in_simpleitk(tmp_path: Path, d: int, grid: str) -> None:
    image = ct() if d == 2 else mni("t1", 4)
    linear = CT_WARP if d == 2 else rotation(5, 1) @ torch.diag(torch.tensor([1.03, 0.98, 1.0]).double())
    moving, _ = WARPS[grid](image, about_centre(image, linear, (3.0,) * d))
    result = register(image, moving, "affine")
    path = tmp_path / "t.tfm"
    result.save_transform(path)
    torch.testing.assert_close(read_itk_transform(path), result.matrix, rtol=0, atol=1e-12)

    def to_sitk(im: Image) -> object:
        s = sitk.GetImageFromArray(im.numpy())
        s.SetSpacing(im.spacing)
        s.SetOrigin(im.origin)
        s.SetDirection(tuple(v for row in im.direction for v in row))
        return s

    transform = sitk.ReadTransform(str(path))
    theirs = sitk.GetArrayFromImage(sitk.Resample(to_sitk(moving), to_sitk(image), transform, sitk.sitkLinear, 0.0))
    inner = safely_inside(moving, image, result.matrix)
    scale = float(image.data.max() - image.data.min())
    assert np.abs(result.warped.numpy()[inner] - theirs[inner]).max() <= 1e-4 * scale


def test_projective_transforms_are_not_written_as_itk(tmp_path: Path) -> None:
    m = torch.eye(3, dtype=torch.float64)
    m[2, 0] = 1e-3
    with pytest.raises(ValueError, match="projective"):
        write_itk_transform(tmp_path / "p.tfm", m)
    assert not (tmp_path / "p.tfm").exists()


# ---------------------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    ("fixed", "moving", "kwargs", "error", "words"),
    [
        (lambda: ct(), lambda: mni(), {}, ValueError, "is 3-D but `fixed` is 2-D"),
        (lambda: ct(), lambda: ct().with_data(torch.zeros(128, 128)), {}, ValueError, "constant"),
        (lambda: ct(), lambda: ct().with_data(torch.full((128, 128), math.nan)), {}, ValueError, "NaN"),
        (lambda: ct(), lambda: ct(), {"transform": "spline"}, ValueError, "`transform` must be one of"),
        (lambda: ct(), lambda: ct(), {"metric": "ssd"}, ValueError, "`metric` must be one of"),
        (lambda: mni(), lambda: mni(), {"transform": "projective"}, ValueError, "2-D images"),
        (lambda: ct(), lambda: np.zeros((5, 5)), {}, TypeError, "`moving` must be a lossfit.registration.Image"),
        (lambda: ct(), lambda: ct(), {"levels": (1, 2)}, ValueError, "coarse to fine"),
        (lambda: ct(), lambda: ct(), {"loss": "cauchy", "metric": "ncc"}, ValueError, "metric='mse' only"),
        (lambda: ct(), lambda: ct(), {"samples": 10}, ValueError, "`samples` must be"),
    ],
)
def test_bad_input_names_the_problem(fixed, moving, kwargs, error, words) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=words):
        register(fixed(), moving(), **kwargs)


def test_gaussian_smoothing_matches_scipy() -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    from lossfit.registration.resample import gaussian_smooth

    g = torch.Generator().manual_seed(6)
    volume = torch.rand(1, 1, 12, 13, 14, generator=g, dtype=torch.float64)
    ours = gaussian_smooth(volume, (1.0, 0.0, 2.0))[0, 0].numpy()
    theirs = ndimage.gaussian_filter(volume[0, 0].numpy(), (1.0, 0.0, 2.0), mode="nearest", truncate=3.0)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)


def test_strided_smoothing_is_smoothing_then_subsampling() -> None:
    from lossfit.registration.resample import gaussian_smooth

    g = torch.Generator().manual_seed(7)
    volume = torch.rand(2, 1, 11, 12, 13, generator=g, dtype=torch.float64)
    for sigmas, stride in (((1.0, 1.0, 1.0), 2), ((1.0, 0.0, 2.0), 3)):
        whole = gaussian_smooth(volume, sigmas)[:, :, ::stride, ::stride, ::stride]
        # smoothing at every voxel, then every stride-th: the same values
        torch.testing.assert_close(gaussian_smooth(volume, sigmas, stride=stride), whole, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_resample_onto_its_own_grid_returns_the_voxels_as_interpolation_does(interpolation: str) -> None:
    # The identity onto the same grid returns the data itself (every voxel centre is one of the image's); a map
    # just above the shortcut's 1e-12 goes through the interpolation, which must give the same voxels and mask.
    generator = torch.Generator().manual_seed(5)
    t = math.radians(25)
    image = Image(
        torch.rand(9, 11, 7, generator=generator),
        spacing=(0.7, 1.3, 2.1),
        origin=(4.0, -3.0, 12.0),
        direction=((math.cos(t), -math.sin(t), 0.0), (0.0, 0.0, -1.0), (math.sin(t), math.cos(t), 0.0)),
    )
    same, same_mask = resample(image, image, interpolation=interpolation, mask=True)
    assert torch.equal(same.data, image.data) and bool(same_mask.all())
    assert same.data.data_ptr() != image.data.data_ptr()  # a copy: the output never aliases the input
    nudged = torch.eye(4, dtype=torch.float64)
    nudged[0, 3] = 1e-9  # a nanometre
    moved, moved_mask = resample(image, image, nudged, interpolation=interpolation, mask=True)
    assert torch.allclose(moved.data, image.data, rtol=0, atol=1e-5)
    interior = moved_mask.clone()
    assert interior[1:-1, 1:-1, 1:-1].all()  # inside but for the border voxels the nanometre may push out
