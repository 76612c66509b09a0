"""Deformable registration: known smooth warps of real images recovered (same and different grids, 2-D and 3-D),
the fields' arithmetic checked against closed forms and gradcheck, exported fields read back by SimpleITK, batch
equal to one by one, and every bad input refused."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from deformable_pairs import warped_pair
from lossfit.engine.result import Status
from lossfit.registration import Image, register, resample
from lossfit.registration.deformable import DeformableRegistration
from lossfit.registration.deformable import driver as D
from lossfit.registration.deformable import fields as FL
from lossfit.registration.deformable import regularizers as R
from lossfit.registration.deformable.bspline import Lattice, basis
from lossfit.registration.evaluate import inverse_consistency
from registration_pairs import source, to_sitk

sitk = pytest.importorskip("SimpleITK")
pytestmark = pytest.mark.usefixtures("one_thread")  # small images: one thread is faster, and the same anywhere


@functools.cache
def ct() -> Image:
    from registration_pairs import from_sitk

    return from_sitk(source("ct"))


@functools.cache
def ct_pair(seed: int = 0):  # type: ignore[no-untyped-def]
    return warped_pair(ct(), seed=seed, lattice=12.0, sigma=5.0, longest=3.0, noise=0.005)


@functools.cache
def mni4() -> Image:
    """nilearn's MNI152 T1 averaged to 4 mm (45 x 54 x 45): a small real volume."""
    from registration_pairs import from_sitk

    return from_sitk(sitk.BinShrink(source("mni"), [4, 4, 4]))


def _oblique(image: Image, spacing: tuple[float, ...], turn: float, shift: float) -> Image:
    """An empty grid over ``image``'s object: its own spacing, turned by ``turn`` radians, shifted."""
    d = image.ndim
    c, s = math.cos(turn), math.sin(turn)
    direction = np.eye(d)
    direction[:2, :2] = [[c, -s], [s, c]]
    extent = np.array(image.spacing) * (np.array(image.size) - 1) * 0.92
    size = [int(v) for v in np.round(extent / np.array(spacing)) + 1]
    centre = np.array(image.center) + shift
    origin = centre - direction @ (np.array(spacing) * (np.array(size) - 1) / 2)
    return Image(torch.zeros(*reversed(size)), spacing=spacing, origin=origin, direction=direction)


# --- recovery of known warps ----------------------------------------------------------------------------------
@pytest.mark.parametrize("transform", ["svf", "field", "bspline"])
def test_known_warp_of_a_ct_slice_is_recovered(transform: str) -> None:
    pair = ct_pair()
    r = register(pair.fixed, pair.moving, transform=transform, affine="none")
    assert isinstance(r, DeformableRegistration)
    assert r.success, (r.status, r.checks)
    assert r.displacement.shape == (*pair.fixed.shape, 2)
    assert pair.error(r.displacement) < 0.4 * pair.initial
    assert r.evaluation["folded_fraction"] == 0
    assert r.checks["metric_answer"] < 0.2 * r.checks["metric_start"]


def test_the_recipe_on_two_different_grids_with_a_rigid_turn() -> None:
    """The fixed image lies on another grid (spacing, a turn, a shift, a cut field of view) and a rigid turn is
    composed with the warp: the affine stage and the field together recover the whole mapping."""
    image = ct()
    grid = _oblique(image, (0.8, 0.55), 0.12, 3.0)
    turn = np.eye(3)
    a = 0.06
    turn[:2, :2] = [[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]
    c = np.array(image.center)
    turn[:2, 2] = c - turn[:2, :2] @ c + np.array([2.0, -1.5])
    pair = warped_pair(image, seed=1, lattice=12.0, sigma=5.0, longest=2.5, grid=grid, matrix=turn, noise=0.005)
    r = register(pair.fixed, pair.moving, transform="deformable")
    assert r.success, (r.status, r.checks)
    assert r.affine_stage is not None and r.affine_stage.success
    assert pair.initial > 2.0
    assert pair.error(r.displacement) < 0.15 * pair.initial
    assert pair.error(r.displacement) < 0.5 * pair.error(_affine_only(r, pair.fixed))


def _affine_only(r: DeformableRegistration, fixed: Image) -> torch.Tensor:
    x = fixed.world_grid(torch.float64)
    m = r.matrix
    d = fixed.ndim
    return x @ m[:d, :d].T + m[:d, d] - x


@pytest.mark.parametrize("symmetric", [False, True])
def test_known_warp_of_a_volume_on_another_grid(symmetric: bool) -> None:
    """3-D: MNI152 at 4 mm against a warped copy sampled on an anisotropic, turned grid (the symmetric model too:
    its check recomputes the half-way objective through the exported half fields)."""
    image = mni4()
    grid = _oblique(image, (4.5, 4.0, 5.0), 0.08, 2.0)
    pair = warped_pair(image, seed=2, lattice=24.0, sigma=10.0, longest=6.0, grid=grid, noise=0.005)
    r = register(pair.fixed, pair.moving, transform="svf", affine="none", symmetric=symmetric)
    assert r.success, (r.status, r.checks)
    assert r.displacement.shape == (*pair.fixed.shape, 3)
    assert pair.error(r.displacement) < 0.5 * pair.initial
    assert r.evaluation["folded_fraction"] == 0


@pytest.mark.parametrize(("metric", "change"), [("lncc", "gamma"), ("mi", "inverted")])
def test_other_metrics_recover_a_warp_under_a_contrast_change(metric: str, change: str) -> None:
    """Local correlation under a monotone change of intensity; mutual information under an inverted contrast
    (which no correlation-based metric is meant to match)."""
    pair = ct_pair()
    data = pair.moving.data
    scaled = data / float(data.max())
    changed = pair.moving.with_data(1000 * scaled.sqrt() if change == "gamma" else float(data.max()) - data)
    r = register(pair.fixed, changed, transform="svf", metric=metric, affine="none")
    assert r.success, (r.status, r.checks)
    assert pair.error(r.displacement) < 0.75 * pair.initial


def test_symmetric_model_gives_the_negated_velocity_when_the_images_swap() -> None:
    """Pulled half-way, neither image is the reference: with mean squares, registering B to A gives minus the
    velocity of A to B (to the damping floor, which follows the image called fixed: 0.4% measured), where the
    one-sided model differs by 13%. (Local NCC's gradient steps are not this exact: 10% against 15% measured.)"""
    metric = "mse"
    pair = ct_pair()

    def asymmetry(symmetric: bool) -> float:
        ab = register(pair.fixed, pair.moving, transform="svf", metric=metric, affine="none", symmetric=symmetric)
        ba = register(pair.moving, pair.fixed, transform="svf", metric=metric, affine="none", symmetric=symmetric)
        assert ab.success and ba.success, (ab.status, ba.status)
        if symmetric:
            assert pair.error(ab.displacement) < 0.4 * pair.initial
        return float((ab.velocity + ba.velocity).norm(dim=-1).mean() / ab.velocity.norm(dim=-1).mean())

    symmetric = asymmetry(True)
    assert symmetric < 0.03
    assert asymmetry(False) > 3 * symmetric


@functools.cache
def bspline_default() -> DeformableRegistration:
    pair = ct_pair()
    r = register(pair.fixed, pair.moving, transform="bspline", affine="none")
    assert isinstance(r, DeformableRegistration)
    return r


@pytest.mark.parametrize("regularizer", ["diffusion", "elastic"])
def test_bspline_takes_each_regularizer(regularizer: str) -> None:
    """The B-spline model with the diffusion or the elastic energy in place of bending: the warp is recovered, and
    the energy is really the one asked for (the field differs from the bending one's)."""
    pair = ct_pair()
    r = register(pair.fixed, pair.moving, transform="bspline", affine="none", regularizer=regularizer)
    bent = bspline_default()
    assert r.success and bent.success, (r.status, bent.status)
    assert pair.error(r.displacement) < 0.4 * pair.initial and r.evaluation["folded_fraction"] == 0
    assert float((r.displacement - bent.displacement).norm(dim=-1).mean()) > 1e-3


def test_bspline_fold_barrier_is_optional_and_a_fold_is_never_a_success() -> None:
    """Without the barrier (``folding=0``) the B-spline field of this pair folds (det down to about -0.04 measured)
    and says so; with it (the default) every determinant stays positive."""
    pair = ct_pair()
    guarded = bspline_default()
    free = register(pair.fixed, pair.moving, transform="bspline", affine="none", folding=0.0)
    assert guarded.success and guarded.evaluation["jacobian_min"] > 0.1
    assert free.evaluation["jacobian_min"] < guarded.evaluation["jacobian_min"]
    assert (free.status == Status.FOLDED) == (free.evaluation["folded_fraction"] > 0)
    assert free.success == (free.evaluation["folded_fraction"] == 0)


def test_symmetric_must_be_a_bool() -> None:
    pair = ct_pair()
    with pytest.raises(TypeError, match="`symmetric` must be True or False"):
        register(pair.fixed, pair.moving, transform="svf", affine="none", symmetric="yes")  # type: ignore[arg-type]


# --- the result: inverse, warp, export ---------------------------------------------------------------------------
def test_inverse_field_undoes_the_mapping() -> None:
    pair = ct_pair()
    r = register(pair.fixed, pair.moving, transform="svf", affine="none")
    assert r.inverse_displacement.shape == (*pair.moving.shape, 2)
    consistency = inverse_consistency(r.displacement, pair.fixed, r.inverse_displacement, pair.moving, pair.mask)
    assert consistency["mean"] < 0.05 * pair.initial
    assert r.velocity is not None


def test_warp_reproduces_the_warped_image_and_the_exported_field_reads_back_in_simpleitk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    pair = ct_pair()
    r = register(pair.fixed, pair.moving, transform="deformable")
    again = r.warp(pair.moving)
    inner = (slice(4, -4), slice(4, -4))
    assert torch.allclose(again.data[inner], r.warped.data[inner], atol=1e-3 * float(pair.moving.data.max()))
    path = tmp_path / "warp.nii.gz"
    r.save_transform(path)
    field = sitk.ReadImage(str(path))
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    by_itk = sitk.GetArrayFromImage(
        sitk.Resample(to_sitk(pair.moving), to_sitk(pair.fixed), transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    scale = float(pair.moving.data.max())
    diff = np.abs(by_itk - again.data.numpy())[inner]
    assert float(np.median(diff)) < 1e-4 * scale
    assert float(diff.max()) < 2e-2 * scale  # float32 geometry in NIfTI moves a few sample points by ~1e-5 mm
    inverse_path = tmp_path / "inverse.nii.gz"
    r.save_inverse_transform(inverse_path)
    assert sitk.ReadImage(str(inverse_path)).GetSize() == to_sitk(pair.moving).GetSize()


def test_to_dict_is_json_safe() -> None:
    import json

    pair = ct_pair()
    r = register(pair.fixed, pair.moving, transform="field", affine="none", max_steps=5)
    text = json.dumps(r.to_dict())
    assert "displacement" in text and "folded_fraction" in text


# --- batches ------------------------------------------------------------------------------------------------------
def test_batch_equals_one_by_one() -> None:
    """In float64 (float32 rounding differs in the last bit between batched and single convolutions, and a
    registration's iterations amplify it to ~0.01 mm: well within its accuracy, but not a test of equality)."""
    pairs = [ct_pair(0), ct_pair(3)]
    fixed = [p.fixed.to(torch.float64) for p in pairs]
    moving = [p.moving.to(torch.float64) for p in pairs]
    both = register(fixed, moving, transform="svf", affine="none")
    for i in range(2):
        alone = register(fixed[i], moving[i], transform="svf", affine="none")
        one = both.pair(i)
        assert one.status == alone.status and one.success
        assert torch.allclose(one.displacement, alone.displacement, atol=1e-6)
        assert int(one.steps) == int(alone.steps)


# --- the fields' arithmetic ---------------------------------------------------------------------------------------
def _grid(d: int, dtype: torch.dtype = torch.float64) -> FL.Grid:
    shape = (9, 10, 11)[:d] if d == 3 else (12, 13)
    direction = np.eye(d)
    c, s = math.cos(0.3), math.sin(0.3)
    direction[:2, :2] = [[c, -s], [s, c]]
    direction[:, 0] *= -1
    image = Image(torch.zeros(shape, dtype=dtype), spacing=(1.2, 0.8, 2.0)[:d], origin=(3, -2, 5)[:d],
                  direction=direction)  # fmt: skip
    return FL.Grid.of_image(image, dtype)


@pytest.mark.parametrize("d", [2, 3])
def test_matvec_equals_einsum(d: int) -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(2, d, *(5, 6, 7)[:d], generator=g, dtype=torch.float64)
    m = torch.randn(2, d, d, generator=g, dtype=torch.float64)
    o = torch.randn(2, d, generator=g, dtype=torch.float64)
    expected = torch.einsum("bij,bj...->bi...", m, u) + o.reshape(2, d, *([1] * d))
    assert torch.allclose(FL.matvec(m, u, o), expected, atol=1e-12)
    shared = torch.einsum("ij,bj...->b...i", m[0], u) + o[0]
    assert torch.allclose(FL.matvec(m[0], u, o[0], last=True), shared, atol=1e-12)


@pytest.mark.parametrize("shape", [(9, 10), (8, 11), (10, 12, 7), (7, 8, 9)])
def test_upsample_twice_equals_resampling_from_the_coarser_grid(shape: tuple[int, ...]) -> None:
    """Odd and even counts on an oblique, anisotropic grid: the fast path of the exponential's coarse squarings is
    the world-coordinate resampling it replaces (to rounding), and its gradient passes gradcheck."""
    d = len(shape)
    g = torch.Generator().manual_seed(3)
    affine = torch.eye(d + 1, dtype=torch.float64)
    affine[:d, :d] = torch.eye(d, dtype=torch.float64) * torch.tensor([0.9, 1.3, 2.0][:d], dtype=torch.float64)
    affine[:d, :d] += 0.1 * torch.randn(d, d, generator=g, dtype=torch.float64)
    grid = FL.Grid.of(affine, shape, torch.float64, torch.device("cpu"))
    coarse = FL.coarser(grid)
    field = torch.randn(2, d, *coarse.shape, generator=g, dtype=torch.float64)
    assert torch.allclose(FL.upsample_twice(field, shape), FL.resample_field(field, coarse, grid), atol=1e-12)
    small = field[(slice(0, 1), slice(None), *([slice(0, 3)] * d))].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f: FL.upsample_twice(f, (6, 5, 6)[:d]), (small,))


def test_exponential_of_a_constant_velocity_is_a_translation_and_its_negation_the_inverse() -> None:
    grid = _grid(2)
    v = torch.zeros(1, 2, *grid.shape, dtype=torch.float64)
    v[:, 0], v[:, 1] = 1.7, -0.6
    u = FL.exponential(grid, v)
    assert torch.allclose(u, v, atol=1e-12)
    g = torch.Generator().manual_seed(1)
    smooth = FL.smooth(grid, torch.randn(1, 2, *grid.shape, generator=g, dtype=torch.float64), 3.0)
    forward, backward = FL.exponential(grid, smooth), FL.exponential(grid, -smooth)
    there_and_back = FL.compose(grid, backward, forward)
    inner = (slice(None), slice(None), slice(3, -3), slice(3, -3))
    assert float(there_and_back[inner].abs().max()) < 0.05 * float(smooth.abs().max())


def test_invert_a_smooth_displacement() -> None:
    grid = _grid(3)
    g = torch.Generator().manual_seed(2)
    u = 0.5 * FL.smooth(grid, torch.randn(1, 3, *grid.shape, generator=g, dtype=torch.float64), 3.0)
    w = FL.invert(grid, u, iterations=50, tolerance_voxels=1e-8)
    back = FL.compose(grid, u, w)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert float(back[inner].abs().max()) < 0.02 * float(u.abs().max())


def test_new_operations_pass_gradcheck() -> None:
    grid = _grid(2)
    g = torch.Generator().manual_seed(3)
    v = (0.3 * torch.randn(1, 2, *grid.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: FL.exponential(grid, x), (v,), eps=1e-6, atol=1e-5)
    for name in R.REGULARIZERS:
        assert torch.autograd.gradcheck(lambda x, n=name: R.energy(n, grid, x), (v,), eps=1e-6, atol=1e-6)
    lattice = Lattice.on(grid, 3.0, torch.float64, torch.device("cpu"))
    c = torch.randn(1, 2, *lattice.shape, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lattice.field, (c,), eps=1e-6, atol=1e-6)
    assert torch.autograd.gradcheck(lambda x: FL.smooth(grid, x, 1.5), (v,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("d", [2, 3])
def test_regularizers_of_a_linear_field_on_an_oblique_anisotropic_grid(d: int) -> None:
    """u(x) = A x: diffusion |A|_F^2, bending 0, elastic mu |sym A|^2 + lam/2 tr(A)^2, whatever the grid."""
    grid = _grid(d)
    g = torch.Generator().manual_seed(4)
    a = 0.1 * torch.randn(d, d, generator=g, dtype=torch.float64)
    u = FL.matvec(a, grid.world.to(torch.float64))
    assert torch.allclose(R.diffusion(grid, u), (a**2).sum().reshape(1), rtol=1e-10)
    assert float(R.bending(grid, u).abs().max()) < 1e-20
    sym = 0.5 * (a + a.T)
    expected = (sym**2).sum() + 0.5 * torch.trace(a) ** 2
    assert torch.allclose(R.elastic(grid, u), expected.reshape(1), rtol=1e-10)


def test_bspline_basis_is_a_partition_of_unity_and_fits_a_smooth_field() -> None:
    b = basis(50, 4.5, torch.float64, torch.device("cpu"))
    assert torch.allclose(b.sum(1), torch.ones(50, dtype=torch.float64), atol=1e-12)
    grid = _grid(2)
    lattice = Lattice.on(grid, 2.0, torch.float64, torch.device("cpu"))
    linear = FL.matvec(torch.tensor([[0.1, 0.0], [0.05, -0.1]], dtype=torch.float64), grid.world)
    assert torch.allclose(lattice.field(lattice.fit(linear)), linear, atol=1e-9)  # splines reproduce lines


def test_smoothing_is_isotropic_in_millimetres() -> None:
    """A point smoothed on a grid of 1 x 2 mm voxels spreads as far in mm along both axes."""
    image = Image(torch.zeros(41, 81, dtype=torch.float64), spacing=(1.0, 2.0))
    grid = FL.Grid.of_image(image, torch.float64)
    spike = torch.zeros(1, 1, 41, 81, dtype=torch.float64)
    spike[0, 0, 20, 40] = 1.0
    out = FL.smooth(grid, spike, 3.0)[0, 0]
    along_x = (out[20] * (torch.arange(81) - 40.0) ** 2).sum() / out[20].sum()  # mm^2: index * 1 mm
    along_y = (out[:, 40] * ((torch.arange(41) - 20.0) * 2.0) ** 2).sum() / out[:, 40].sum()
    assert abs(float(along_x.sqrt()) - 3.0) < 0.1
    assert abs(float(along_y.sqrt()) - 3.0) < 0.35  # 1.5 voxels: the discrete kernel is a little wider


def test_resample_with_a_displacement_equals_resample_with_a_shift() -> None:
    g = torch.Generator().manual_seed(5)
    image = Image(torch.rand(20, 30, generator=g, dtype=torch.float64), spacing=(0.7, 1.3), origin=(3, 4))
    reference = Image(torch.zeros(15, 25, dtype=torch.float64), spacing=(1.0, 1.1), origin=(2, 5))
    shift = torch.eye(3, dtype=torch.float64)
    shift[:2, 2] = torch.tensor([1.5, -0.5], dtype=torch.float64)
    u = torch.zeros(15, 25, 2, dtype=torch.float64)
    u[..., 0], u[..., 1] = 1.5, -0.5
    a, b = resample(image, reference, shift), resample(image, reference, displacement=u)
    assert torch.allclose(a.data, b.data, atol=1e-12)
    with pytest.raises(ValueError, match="displacement"):
        resample(image, reference, displacement=u[:-1])


# --- checks and bad input ---------------------------------------------------------------------------------------
def _check(**changes: float) -> dict[str, float]:
    check = {"objective": 1.0, "objective_independent": 1.0, "metric_slack": 0.0, "overlap": 0.9,
             "overlap_start": 0.9, "folded_fraction": 0.0, "metric_start": 2.0, "metric_answer": 1.0}  # fmt: skip
    check.update(changes)
    return check


def test_verdict_refuses_folds_worse_answers_mismatches_and_lost_overlap() -> None:
    assert D._verdict(_check()) is None
    assert D._verdict(_check(folded_fraction=1e-4)) == Status.FOLDED
    assert D._verdict(_check(metric_answer=2.5, objective=2.5, objective_independent=2.5)) == Status.WORSE_THAN_START
    assert D._verdict(_check(objective_independent=1.5)) == Status.CHECK_MISMATCH
    assert D._verdict(_check(overlap=0.1)) == Status.NO_OVERLAP
    assert not Status.FOLDED.success and "fold" in Status.FOLDED.message


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"transform": "bspline", "control_spacing": 0.1}, "control_spacing"),
        ({"transform": "svf", "diffusion": -1.0}, "diffusion"),
        ({"transform": "svf", "fluid": float("nan")}, "fluid"),
        ({"transform": "bspline", "bending": -0.5}, "bending"),
        ({"transform": "svf", "levels": (4, 2)}, "levels"),
        ({"transform": "svf", "affine": "spline"}, "affine"),
        ({"transform": "svf", "metric": "cc"}, "metric"),
        ({"transform": "svf", "max_steps": 0}, "max_steps"),
        ({"transform": "warp"}, "transform"),
        ({"transform": "bspline", "symmetric": True}, "symmetric"),
        ({"transform": "field", "symmetric": True}, "symmetric"),
        ({"transform": "svf", "regularizer": "bending"}, "regularizer"),
        ({"transform": "bspline", "regularizer": "tv"}, "regularizer"),
        ({"transform": "bspline", "folding": -1.0}, "folding"),
        ({"transform": "deformable", "folding": 1.0}, "folding"),
        ({"transform": "svf", "bending": 0.1}, "`bending` applies to transform 'bspline'"),
        ({"transform": "field", "control_spacing": 10.0}, "control_spacing"),
        ({"transform": "bspline", "fluid": 1.0}, "`fluid` applies to the dense models"),
        ({"transform": "bspline", "diffusion": 1.0}, "diffusion"),
    ],
)
def test_bad_options_are_refused_by_name(options: dict, match: str) -> None:  # type: ignore[type-arg]
    pair = ct_pair()
    with pytest.raises(ValueError, match=match):
        register(pair.fixed, pair.moving, **{"affine": "none", **options})
