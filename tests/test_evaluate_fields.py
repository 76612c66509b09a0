"""Dense displacement fields evaluated: Jacobian determinant (closed form, SimpleITK, gradients), folding, end-point
error, inverse consistency, Dice and label warping.

Fields follow the module's convention: ``(*grid.shape, d)``, world components (x, y[, z]) in LPS mm, and
``phi(x) = x + u(x)`` at the voxel centres of the grid.
"""

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from lossfit.registration import Image
from lossfit.registration.evaluate import (
    dice,
    displacement,
    end_point_error,
    folded_fraction,
    inverse_consistency,
    jacobian_determinant,
    warp_labels,
)

F64 = torch.float64


def _rotation_2d(angle: float) -> list[list[float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [[c, -s], [s, c]]


def _rotation_3d(a: float, b: float, c: float) -> np.ndarray:
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rz @ ry @ rx


def _sheared_3d() -> np.ndarray:
    columns = np.array([[1.0, 0.3, -0.2], [0.1, 1.0, 0.4], [0.0, -0.25, 1.0]]).T
    return columns / np.linalg.norm(columns, axis=0)  # unit, not orthogonal: M^-1 is not M^T / s^2


GRIDS = {
    "2d-oblique-anisotropic": dict(shape=(5, 6), spacing=(0.7, 1.9), direction=_rotation_2d(0.4)),
    "2d-flipped": dict(shape=(4, 7), spacing=(1.2, 0.5), direction=[[-1.0, 0.0], [0.0, 1.0]]),
    "2d-permuted": dict(shape=(6, 5), spacing=(2.0, 0.8), direction=[[0.0, 1.0], [1.0, 0.0]]),
    "3d-oblique-anisotropic": dict(shape=(4, 5, 6), spacing=(0.8, 1.3, 2.5), direction=_rotation_3d(0.3, -0.5, 0.9)),
    "3d-flipped": dict(shape=(3, 4, 5), spacing=(1.0, 1.5, 3.0), direction=np.diag([1.0, -1.0, -1.0])),
    "3d-permuted": dict(
        shape=(4, 3, 5), spacing=(0.6, 2.2, 1.1), direction=[[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    ),
    "3d-sheared": dict(shape=(4, 4, 5), spacing=(0.9, 1.4, 2.0), direction=_sheared_3d()),
}


def _grid(shape, spacing, direction, origin=None) -> Image:
    d = len(shape)
    return Image(torch.zeros(shape, dtype=F64), spacing=spacing, direction=direction, origin=origin or (3.0,) * d)


def _centred(shape, spacing, direction, centre: torch.Tensor) -> Image:
    """A grid whose centre is the world point ``centre``."""
    middle = torch.tensor([(n - 1) / 2 for n in reversed(shape)], dtype=F64)
    scaled = torch.tensor(np.asarray(direction), dtype=F64) * torch.tensor(spacing, dtype=F64)
    return _grid(shape, spacing, direction, origin=tuple((centre - scaled @ middle).tolist()))


def _smooth_field(grid: Image, gen: torch.Generator, amplitude: float) -> torch.Tensor:
    """A smooth random field: a sum of a few sine waves per component (wavelengths of several voxels)."""
    x = grid.world_grid(F64)
    d = grid.ndim
    u = torch.zeros_like(x)
    extent = max(grid.spacing) * max(grid.shape)
    for c in range(d):
        for _ in range(3):
            k = torch.randn(d, generator=gen, dtype=F64) * (2 * math.pi / extent)
            phase = float(torch.rand(1, generator=gen, dtype=F64)) * 2 * math.pi
            u[..., c] += amplitude * torch.sin(x @ k + phase)
    return u


# --- jacobian_determinant --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(GRIDS))
def test_affine_field_gives_det_of_i_plus_a_everywhere(name):
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    grid = _grid(**GRIDS[name])
    d = grid.ndim
    a = 0.3 * torch.randn(d, d, generator=gen, dtype=F64)
    t = torch.randn(d, generator=gen, dtype=F64)
    u = grid.world_grid(F64) @ a.T + t
    det = jacobian_determinant(u, grid)
    assert det.shape == grid.shape and det.dtype == F64
    expected = float(torch.linalg.det(torch.eye(d, dtype=F64) + a))
    # Differences of an affine field are exact up to rounding: eps * |u| (~10 mm) / spacing, well under 1e-12.
    torch.testing.assert_close(det, torch.full_like(det, expected), rtol=0, atol=1e-12)


def test_unit_axis_contributes_no_derivative():
    gen = torch.Generator().manual_seed(1)
    grid = _grid((1, 5, 6), (0.8, 1.3, 2.5), np.eye(3))
    a = 0.3 * torch.randn(3, 3, generator=gen, dtype=F64)
    det = jacobian_determinant(grid.world_grid(F64) @ a.T, grid)
    a_in_plane = a.clone()
    a_in_plane[:, 2] = 0  # one slice: the field is taken as constant along z
    expected = float(torch.linalg.det(torch.eye(3, dtype=F64) + a_in_plane))
    torch.testing.assert_close(det, torch.full_like(det, expected), rtol=0, atol=1e-12)


def test_batch_equals_one_by_one():
    gen = torch.Generator().manual_seed(2)
    grid = _grid(**GRIDS["3d-oblique-anisotropic"])
    fields = torch.stack([_smooth_field(grid, gen, 0.8) for _ in range(3)])
    batch = jacobian_determinant(fields, grid)
    assert batch.shape == (3, *grid.shape)
    single = torch.stack([jacobian_determinant(u, grid) for u in fields])
    torch.testing.assert_close(batch, single, rtol=1e-14, atol=1e-14)


def test_float32_field_keeps_its_dtype():
    grid = _grid(**GRIDS["2d-oblique-anisotropic"])
    u = (0.1 * grid.world_grid(F64)).float()
    det = jacobian_determinant(u, grid)
    assert det.dtype == torch.float32
    torch.testing.assert_close(det, torch.full_like(det, 1.21), rtol=1e-5, atol=0)  # float32 rounding of ~1e-7


def _to_sitk(values: torch.Tensor, grid: Image) -> sitk.Image:
    """``values`` (``grid.shape``, or ``(*grid.shape, d)`` for a field) as a SimpleITK image on ``grid``."""
    image = sitk.GetImageFromArray(values.numpy(), isVector=values.dim() > grid.ndim)
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin)
    image.SetDirection(np.asarray(grid.direction).ravel().tolist())
    return image


def _sitk_determinant(u: torch.Tensor, grid: Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(_to_sitk(u, grid)))


def test_agrees_with_simpleitk_on_an_axis_aligned_anisotropic_grid():
    gen = torch.Generator().manual_seed(3)
    grid = _grid((9, 10, 11), (0.8, 1.3, 2.1), np.eye(3), origin=(-4.0, 2.0, 7.0))
    u = _smooth_field(grid, gen, 2.0)
    ours = jacobian_determinant(u, grid).numpy()
    theirs = _sitk_determinant(u, grid)
    inner = (slice(1, -1),) * 3  # ITK's border uses a zero-flux (replicated) neighbour: half our one-sided difference
    assert np.ptp(ours[inner]) > 0.1  # a field that is not nearly affine
    np.testing.assert_allclose(ours[inner], theirs[inner], rtol=0, atol=1e-12)  # the same central differences
    assert np.abs(ours - theirs).max() > 1e-3  # ... and not at the border


def test_simpleitk_ignores_the_direction():
    """ITK's filter takes ``du / d index * 1 / spacing``, as though the components were along the index axes. Since
    ``det(I + G S^-1 D^-1) = det(I + D^-1 G S^-1)``, ours on a rotated grid is ITK's on the field rotated into the
    index frame (``D^-1 u``), and differs from ITK's on the field itself."""
    gen = torch.Generator().manual_seed(4)
    grid = _grid((8, 9, 10), (0.9, 1.2, 1.7), _rotation_3d(0.5, 0.3, -0.7))
    u = _smooth_field(grid, gen, 2.0)
    ours = jacobian_determinant(u, grid).numpy()
    d_inverse = torch.linalg.inv(torch.tensor(grid.direction, dtype=F64))
    inner = (slice(1, -1),) * 3
    in_index_frame = _sitk_determinant(u @ d_inverse.T, grid)
    np.testing.assert_allclose(ours[inner], in_index_frame[inner], rtol=0, atol=1e-12)
    assert np.abs(ours[inner] - _sitk_determinant(u, grid)[inner]).max() > 1e-2


@pytest.mark.parametrize("name", ["2d-oblique-anisotropic", "3d-sheared"])
def test_gradcheck(name):
    gen = torch.Generator().manual_seed(5)
    spec = dict(GRIDS[name])
    spec["shape"] = tuple(
        min(n, 6 - len(spec["shape"])) for n in spec["shape"]
    )  # 4 x 4 or 3 x 3 x 3: border and inside
    grid = _grid(**spec)
    u = (0.3 * torch.randn(*grid.shape, grid.ndim, generator=gen, dtype=F64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda field: jacobian_determinant(field, grid), (u,))


# --- folded_fraction -------------------------------------------------------------------------------------------------
def _compression(grid: Image, strength: float, sigma: float) -> torch.Tensor:
    """``u_x = -strength (x - c_x) g(r)``, ``g = exp(-r^2 / 2 sigma^2)`` about the grid's centre; ``u_y = 0``. Its
    central-difference Jacobian at the centre voxel is ``1 - strength * g(h)`` (h the x spacing), which folds when
    ``strength > 1 / g(h)``."""
    x = grid.world_grid(F64)
    r = x - torch.tensor(grid.center, dtype=F64)
    g = torch.exp(-(r**2).sum(-1) / (2 * sigma**2))
    u = torch.zeros_like(x)
    u[..., 0] = -strength * r[..., 0] * g
    return u


def test_a_local_compression_folds_and_a_small_one_does_not():
    grid = _grid((33, 33), (1.0, 1.0), np.eye(2), origin=(0.0, 0.0))
    strong = _compression(grid, 2.5, 4.0)
    det = jacobian_determinant(strong, grid)
    torch.testing.assert_close(det[16, 16].item(), 1 - 2.5 * math.exp(-1 / 32), rtol=0, atol=1e-12)
    fraction = folded_fraction(strong, grid)
    assert 0 < fraction < 0.2
    assert fraction == pytest.approx(float((det <= 0).sum()) / det.numel(), rel=1e-12)
    assert folded_fraction(_compression(grid, 0.5, 4.0), grid) == 0.0
    far = torch.ones(grid.shape, dtype=torch.bool)
    far[8:25, 8:25] = False  # the fold lies within 1.2 sigma of the centre
    assert folded_fraction(strong, grid, mask=far) == 0.0
    assert folded_fraction(strong, grid, mask=grid.with_data((~far).double())) > fraction


# --- end_point_error -------------------------------------------------------------------------------------------------
def test_end_point_error_matches_numpy_statistics():
    gen = torch.Generator().manual_seed(6)
    grid = _grid(**GRIDS["3d-oblique-anisotropic"])
    u = torch.randn(*grid.shape, 3, generator=gen, dtype=F64)
    lengths = torch.rand(grid.shape, generator=gen, dtype=F64) * 3
    directions = torch.randn(*grid.shape, 3, generator=gen, dtype=F64)
    truth = u + lengths[..., None] * directions / directions.norm(dim=-1, keepdim=True)
    got = end_point_error(u, truth, grid)
    e = lengths.numpy().ravel()
    expected = {"mean": e.mean(), "median": np.median(e), "p95": np.percentile(e, 95), "max": e.max()}
    assert got == pytest.approx(expected, rel=1e-12)
    mask = lengths > 1.5
    masked = end_point_error(u.float(), truth, grid, mask=grid.with_data(mask.double()))
    assert masked["mean"] == pytest.approx(e[mask.numpy().ravel()].mean(), rel=1e-6)  # the float32 field's rounding


# --- inverse_consistency -------------------------------------------------------------------------------------------
def test_translation_and_its_negation_are_consistent_and_outside_is_counted():
    grid = _grid((6, 8), (1.5, 2.0), np.eye(2), origin=(0.0, 0.0))
    shift = torch.zeros(*grid.shape, 2, dtype=F64)
    shift[..., 0] = 2.5 * 1.5  # 2.5 voxels along x: columns i = 5, 6, 7 land beyond the last voxel
    got = inverse_consistency(shift, grid, -shift, grid)
    assert got["outside"] == pytest.approx(3 / 8, rel=1e-12)
    assert got["max"] < 1e-12
    inside = torch.zeros(grid.shape, dtype=torch.bool)
    inside[:, :5] = True
    assert inverse_consistency(shift, grid, -shift, grid, mask=inside)["outside"] == 0.0
    shift[..., 0] = 100.0
    assert inverse_consistency(shift, grid, -shift, grid) == pytest.approx(
        {"mean": math.nan, "p95": math.nan, "max": math.nan, "outside": 1.0}, nan_ok=True
    )


def test_rotation_about_the_centre_and_its_inverse_field():
    """Both fields are affine, which linear interpolation reproduces exactly: the residual is rounding."""
    fixed = _grid((6, 7, 8), (1.1, 0.9, 1.6), _rotation_3d(0.2, 0.1, -0.3), origin=(-5.0, -3.0, -6.0))
    rotation = torch.tensor(_rotation_3d(0.25, -0.15, 0.1), dtype=F64)
    c = torch.tensor(fixed.center, dtype=F64)
    x = fixed.world_grid(F64)
    forward = (x - c) @ rotation.T + c - x
    moving = _centred((14, 15, 16), (1.3, 1.2, 1.4), _rotation_3d(-0.4, 0.2, 0.3), c)  # covers every y
    y = moving.world_grid(F64)
    inverse = (y - c) @ rotation + c - y  # R^T (y - c) + c - y
    got = inverse_consistency(forward, fixed, inverse, moving)
    assert got["outside"] == 0.0
    assert got["max"] < 1e-10  # rounding of world coordinates of ~20 mm
    wrong = inverse_consistency(forward, fixed, -inverse, moving)
    assert wrong["mean"] > 1.0


def _sine_field(points: torch.Tensor) -> torch.Tensor:
    """``u(x) = 0.8 sin(k_c . x)`` per component: smooth, |du/dx| < 0.3 so that x + u is invertible."""
    k = torch.tensor([[0.21, 0.08], [-0.06, 0.17]], dtype=F64)
    return 0.8 * torch.sin(points @ k.T + torch.tensor([0.3, 1.1], dtype=F64))


def _numerical_inverse(grid: Image) -> torch.Tensor:
    """``v`` on ``grid`` with ``y + v(y) + u(y + v(y)) = y``: the fixed point ``v = -u(y + v)`` (a contraction)."""
    y = grid.world_grid(F64)
    v = torch.zeros_like(y)
    for _ in range(60):  # contraction factor < 0.3: 60 steps is far below rounding
        v = -_sine_field(y + v)
    return v


def test_a_smooth_field_and_its_numerical_inverse_agree_to_second_order():
    """Linear interpolation of the inverse field errs by O(h^2): halving the inverse grid's spacing divides the
    residual by about 4."""
    fixed = _grid((20, 20), (1.0, 1.0), _rotation_2d(0.3), origin=(0.0, 0.0))
    forward = _sine_field(fixed.world_grid(F64))
    errors = []
    for n, h in ((21, 2.0), (41, 1.0)):
        moving = _grid((n, n), (h, h), np.eye(2), origin=(-15.0, -5.0))  # covers the fixed grid and its image
        errors.append(inverse_consistency(forward, fixed, _numerical_inverse(moving), moving))
    assert errors[0]["outside"] == errors[1]["outside"] == 0.0
    assert 0 < errors[1]["max"] < errors[0]["max"] < 0.1
    assert 3.0 < errors[0]["mean"] / errors[1]["mean"] < 5.0


# --- dice and warp_labels --------------------------------------------------------------------------------------------
def test_dice_of_identical_labels_is_one():
    gen = torch.Generator().manual_seed(7)
    labels = Image(torch.randint(0, 4, (6, 7, 8), generator=gen), spacing=(1.0, 2.0, 3.0))
    assert dice(labels, labels) == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0}, rel=1e-15)


@pytest.mark.parametrize(("shape", "box", "shift"), [((12, 16), (6, 8), (0, 3)), ((10, 11, 12), (4, 5, 6), (1, 2, 3))])
def test_dice_of_a_shifted_box_is_the_analytic_overlap(shape, box, shift):
    a, b = torch.zeros(shape), torch.zeros(shape)
    a[tuple(slice(2, 2 + w) for w in box)] = 5
    b[tuple(slice(2 + s, 2 + s + w) for w, s in zip(box, shift, strict=True))] = 5
    expected = math.prod((w - s) / w for w, s in zip(box, shift, strict=True))  # 2|A∩B| / (|A| + |B|), |A| = |B|
    assert dice(Image(a), Image(b)) == pytest.approx({5: expected}, rel=1e-12)


def test_dice_of_chosen_labels():
    a = Image(torch.tensor([[0, 1, 1, 2, 2, 2]]))
    b = Image(torch.tensor([[0, 1, 2, 2, 2, 7]]))
    got = dice(a, b, labels=[2, 9, 1])
    assert list(got) == [2, 9, 1]
    assert got[2] == pytest.approx(2 * 2 / 6, rel=1e-12) and got[1] == pytest.approx(2 / 3, rel=1e-12)
    assert math.isnan(got[9])
    assert list(dice(a, b)) == [1, 2, 7]


def test_warp_labels_by_whole_voxels_shifts_them():
    gen = torch.Generator().manual_seed(8)
    labels = Image(torch.randint(0, 5, (6, 9), generator=gen), spacing=(1.5, 2.0))
    u = torch.zeros(*labels.shape, 2, dtype=F64)
    u[..., 0] = 2 * 1.5  # each output voxel takes the label two voxels along x
    out = warp_labels(labels, labels, u)
    expected = torch.zeros_like(labels.data)
    expected[:, :-2] = labels.data[:, 2:]
    assert torch.equal(out.data, expected)


def test_warp_labels_keeps_integer_labels_and_agrees_with_simpleitk():
    gen = torch.Generator().manual_seed(9)
    moving = Image(
        torch.randint(0, 6, (10, 11, 12), generator=gen).double(),
        spacing=(1.1, 0.9, 1.3),
        direction=_rotation_3d(0.2, -0.3, 0.1),
    )
    reference = _grid((8, 9, 10), (1.2, 1.0, 1.4), _rotation_3d(0.1, 0.1, 0.2), origin=(1.5, 1.0, 2.0))
    u = _smooth_field(reference, gen, 1.5)
    out = warp_labels(moving, reference, u)
    assert out.shape == reference.shape and out.spacing == reference.spacing
    assert set(out.data.unique().tolist()) <= set(moving.data.unique().tolist())
    assert torch.equal(out.data, out.data.round())

    transform = sitk.DisplacementFieldTransform(_to_sitk(u, reference))  # takes the field's image: pass a fresh one
    nearest = sitk.sitkNearestNeighbor
    theirs = sitk.Resample(_to_sitk(moving.data, moving), _to_sitk(reference.data, reference), transform, nearest)
    theirs = sitk.GetArrayFromImage(theirs)
    index = moving.world_to_index(reference.world_grid(F64) + u)  # ITK also takes the half voxel beyond the last
    well_inside = ((index >= 0.5) & (index <= torch.tensor(moving.size, dtype=F64) - 1.5)).all(-1)
    assert well_inside.float().mean() > 0.3
    np.testing.assert_array_equal(out.data.numpy()[well_inside.numpy()], theirs[well_inside.numpy()])


# --- bad input -------------------------------------------------------------------------------------------------------
def test_bad_input_is_rejected_naming_the_argument():
    grid = _grid(**GRIDS["2d-oblique-anisotropic"])
    u = torch.zeros(*grid.shape, 2, dtype=F64)
    with pytest.raises(TypeError, match=r"`grid` must be a lossfit\.registration\.Image"):
        jacobian_determinant(u, grid.data)
    with pytest.raises(TypeError, match=r"`displacement` must be a floating torch\.Tensor"):
        jacobian_determinant(u.long(), grid)
    with pytest.raises(TypeError, match=r"`displacement` must be a floating torch\.Tensor"):
        jacobian_determinant(u.numpy(), grid)
    with pytest.raises(ValueError, match=r"`displacement` must have shape \(5, 6, 2\).*got \(5, 6, 3\)"):
        jacobian_determinant(torch.zeros(5, 6, 3), grid)
    with pytest.raises(ValueError, match=r"`displacement` must have shape \(5, 6, 2\) \(.*; got \(2, 5, 6, 2\)"):
        folded_fraction(torch.zeros(2, 5, 6, 2), grid)
    with pytest.raises(ValueError, match="`displacement` must be finite"):
        folded_fraction(torch.full_like(u, math.nan), grid)
    with pytest.raises(ValueError, match="`mask` selects no voxel"):
        folded_fraction(u, grid, mask=torch.zeros(grid.shape, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"`mask` must have the image's shape \(5, 6\); got \(6, 5\)"):
        end_point_error(u, u, grid, mask=torch.ones(6, 5))
    with pytest.raises(ValueError, match="`mask` must lie on the grid it masks; their spacings differ"):
        end_point_error(u, u, grid, mask=Image(torch.ones(5, 6)))
    with pytest.raises(ValueError, match="`truth` must have shape"):
        end_point_error(u, u[:-1], grid)
    with pytest.raises(ValueError, match="`inverse` must be finite"):
        inverse_consistency(u, grid, u + math.inf, grid)
    with pytest.raises(ValueError, match="`forward_grid` and `inverse_grid` must have the same dimension"):
        inverse_consistency(u, grid, torch.zeros(2, 2, 2, 3), Image(torch.zeros(2, 2, 2)))
    labels = Image(torch.ones(5, 6))
    with pytest.raises(ValueError, match="`a` and `b` must be on the same grid; got shapes"):
        dice(labels, Image(torch.ones(6, 5)))
    with pytest.raises(ValueError, match="`a` and `b` must be on the same grid; their origins differ"):
        dice(labels, Image(torch.ones(5, 6), origin=(0.0, 0.5)))
    with pytest.raises(ValueError, match="`b` must hold integer labels"):
        dice(labels, labels.with_data(torch.full((5, 6), 0.5)))
    with pytest.raises(TypeError, match="`labels` must hold integers"):
        dice(labels, labels, labels=[1.0])
    with pytest.raises(TypeError, match=r"`b` must be a lossfit\.registration\.Image"):
        dice(labels, labels.data)
    with pytest.raises(ValueError, match="`labels` must hold integer labels"):
        warp_labels(labels.with_data(torch.full((5, 6), 0.5)), labels, None)
    with pytest.raises(ValueError, match="`displacement` must have shape"):
        warp_labels(labels, labels, torch.zeros(4, 6, 2))


def test_displacement_between_transforms_keeps_its_mask_rules():
    image = Image(torch.arange(12.0).reshape(3, 4))
    shift = torch.eye(3, dtype=F64)
    shift[0, 2] = 2.0
    assert displacement(shift, torch.eye(3, dtype=F64), image, image.data > 5)["max"] == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="`mask` selects no voxel"):
        displacement(shift, shift, image, image.data > 100)
