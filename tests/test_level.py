"""The mean-squares level objective's residuals and Jacobian, on real pairs on two grids (SimpleITK made the moving
images): evaluated in groups of pairs or all at once, through the affine shortcut or the general projective
formula; and against finite differences of its own residuals on smooth images on two grids."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from lossfit.registration import Image, register

register_module = importlib.import_module("lossfit.registration.register")
level_module = importlib.import_module("lossfit.registration.level")

pytest.importorskip("SimpleITK")
pytest.importorskip("nilearn")
pytest.importorskip("skimage")

from registration_pairs import random_pair  # noqa: E402


def _levels(monkeypatch: pytest.MonkeyPatch, fixed, moving, **options) -> list:  # type: ignore[no-untyped-def]
    """The level problems ``register(fixed, moving, **options)`` builds, one per level, coarsest first."""
    made = []
    original = register_module._level_problem

    def keep(*args, **kwargs):  # type: ignore[no-untyped-def]
        problem, n = original(*args, **kwargs)
        made.append(problem)
        return problem, n

    monkeypatch.setattr(register_module, "_level_problem", keep)
    register(fixed, moving, **options)
    monkeypatch.undo()
    return made


def _problems(monkeypatch: pytest.MonkeyPatch, name: str, model: str, seed: int, b: int) -> list:
    """The level problems for a batch of ``b`` pairs on two grids (one step per level): one random pair's grids,
    the images made distinct per pair (the fixed rolled, the moving rescaled)."""
    pair = random_pair(seed, model, name)
    fixed = [pair.fixed.with_data(pair.fixed.data.roll(k, 0)) for k in range(b)]
    moving = [pair.moving.with_data(pair.moving.data * (1 + 0.2 * k)) for k in range(b)]
    return _levels(monkeypatch, fixed, moving, transform=model, samples=3000, max_steps=1)


def _start(problem, seed: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Parameters near the identity (millimetres of shift), as a solver visits them."""
    b, n = problem.values.shape[0], problem.model_matrix.__self__.p_id.numel()
    generator = torch.Generator().manual_seed(seed)
    q = 0.5 * torch.randn(b, n, generator=generator, dtype=torch.float64)
    return q, torch.arange(b)


@pytest.mark.parametrize(("name", "model"), [("camera", "affine"), ("mni", "rigid"), ("mni", "affine")])
def test_groups_and_shortcut_equal_the_whole_batch_and_the_general_formula(
    monkeypatch: pytest.MonkeyPatch, name: str, model: str
) -> None:
    problem = _problems(monkeypatch, name, model, 0, 3)[-1]
    q, rows = _start(problem, 0)
    monkeypatch.setattr(level_module, "GROUP_SAMPLES", 1 << 30)  # all pairs in one evaluation
    r_whole, j_whole = problem.residual_and_jacobian(q, rows)
    scale_whole = problem._latest_scale.clone()
    monkeypatch.setattr(level_module, "GROUP_SAMPLES", 1)  # one pair at a time
    r_groups, j_groups = problem.residual_and_jacobian(q, rows)
    # The same operations per pair; only a product's blocking may differ: rounding of the largest entry.
    tol = 64 * torch.finfo(torch.float64).eps
    assert torch.allclose(problem._latest_scale, scale_whole, rtol=tol, atol=0)
    assert torch.allclose(problem.residual(q, rows), r_groups, rtol=0, atol=tol * r_groups.abs().max())
    assert torch.allclose(r_groups, r_whole, rtol=0, atol=tol * r_whole.abs().max())
    assert torch.allclose(j_groups, j_whole, rtol=0, atol=tol * j_whole.abs().max())
    # Rows not in order and not all of them (the driver drops finished pairs): the same pairs' values.
    sub = torch.tensor([2, 0])
    r_sub, j_sub = problem.residual_and_jacobian(q[sub], sub)
    assert torch.allclose(r_sub, r_whole[sub], rtol=0, atol=tol * r_whole.abs().max())
    assert torch.allclose(j_sub, j_whole[sub], rtol=0, atol=tol * j_whole.abs().max())
    # The affine shortcut (w = 1, T's last row constant) against the general formula with the weight's terms.
    assert not problem.projective
    problem.projective = True
    r_general, j_general = problem.residual_and_jacobian(q, rows)
    problem.projective = False
    assert torch.allclose(r_general, r_whole, rtol=0, atol=tol * r_whole.abs().max())
    assert torch.allclose(j_general, j_whole, rtol=0, atol=1e3 * tol * j_whole.abs().max())


def _blobs(image: Image) -> Image:
    """Two smooth Gaussian blobs (8 and 5 mm wide) in world coordinates, sampled on ``image``'s grid."""
    world = _world(image)
    other = torch.tensor([6.0, -4.0, 3.0][: image.ndim], dtype=torch.float64)
    values = torch.exp(-world.pow(2).sum(-1) / 128) + 0.6 * torch.exp(-(world - other).pow(2).sum(-1) / 50)
    return image.with_data(values.reshape(image.shape).float())


def _ramp(image: Image) -> Image:
    """A linear function of the world point, sampled on ``image``'s grid: its interpolation and its central
    differences are both exact, so the Jacobian must equal the residuals' own derivative."""
    slope = torch.tensor([0.03, -0.05, 0.02][: image.ndim], dtype=torch.float64)
    return image.with_data((1 + _world(image) @ slope).reshape(image.shape).float())


def _world(image: Image) -> torch.Tensor:
    axes = [torch.arange(n, dtype=torch.float64) for n in image.shape]
    index = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1).reshape(-1, image.ndim)
    return image.index_to_world(index)


def _grids(d: int) -> tuple[Image, Image]:
    """A fixed grid and a moving grid of its own (oblique, anisotropic, a flipped axis) over the same 40 mm box."""
    t = math.radians(17)
    if d == 2:
        fixed = Image(torch.zeros(80, 80), spacing=(0.5, 0.5), origin=(-19.75, -19.75))
        turn = ((math.cos(t), -math.sin(t)), (math.sin(t), math.cos(t)))
        moving = Image(torch.zeros(66, 61), spacing=(0.6, 0.55), origin=(-12.0, -21.0), direction=turn)
        return fixed, moving
    fixed = Image(torch.zeros(40, 40, 40), spacing=(1.0, 1.0, 1.0), origin=(-19.5, -19.5, -19.5))
    turn = ((math.cos(t), 0.0, -math.sin(t)), (math.sin(t), 0.0, math.cos(t)), (0.0, -1.0, 0.0))
    moving = Image(torch.zeros(36, 42, 38), spacing=(1.1, 0.9, 1.05), origin=(-14.0, 19.0, -23.0), direction=turn)
    return fixed, moving


@pytest.mark.parametrize(("d", "model"), [(2, "affine"), (2, "projective"), (3, "rigid"), (3, "affine")])
def test_jacobian_matches_finite_differences_of_the_residuals(
    monkeypatch: pytest.MonkeyPatch, d: int, model: str
) -> None:
    # The Jacobian samples the level's world gradient image (central differences) where the residuals interpolate
    # the values linearly; on a linear moving image both are exact, so a wrong sign, axis, direction, matrix entry
    # or weight shows as an error of the derivative's own size. Tolerance: the float32 image's rounding over the
    # step (values near 1, ulp 6e-8, over shifts of 1e-3 x 0.05 per mm) is about 1e-3 of the derivative, and
    # grows as the step shrinks.
    fixed_grid, moving_grid = _grids(d)
    options = {"transform": model, "samples": 4000, "levels": [1], "max_steps": 1}
    problem = _levels(monkeypatch, _blobs(fixed_grid), _ramp(moving_grid), **options)[-1]
    q, rows = _start(problem, 1)
    _, jac = problem.residual_and_jacobian(q, rows)
    # Within a voxel of the moving grid's border the interpolation mixes in the zero padding, which the gradient
    # image does not see (and a sample there may stop counting within the step): compare the samples inside.
    normalized = problem._warp(q, rows)[2]
    size = torch.tensor(problem.moving.shape[2:][::-1], dtype=torch.float64)  # voxels along x, y[, z]
    same = (normalized.abs() <= 1 - 2 / (size - 1)).all(dim=-1) & (problem._sampled(q, rows)[1] > 0)
    assert bool((same.sum(1) > 0.5 * same.shape[1]).all())
    count = problem._sampled(q, rows)[1].sum(1)
    for k in range(q.shape[1]):
        v = torch.zeros_like(q)
        v[:, k] = 1
        # A sample that starts or stops counting within the step changes every residual's normalisation: take a
        # step (in millimetres of shift, far below a voxel) over which the samples that count stay the same.
        for h in (1e-3, 3e-4, 1e-4):
            counts = [problem._sampled(q + t * v, rows)[1].sum(1) for t in (h, -h)]
            if all(torch.equal(c, count) for c in counts):
                break
        else:
            pytest.fail(f"parameter {k}: no step keeps the samples that count")
        difference = (problem.residual(q + h * v, rows) - problem.residual(q - h * v, rows)) / (2 * h) * same
        error = (jac[:, :, k] * same - difference).norm(dim=1) / difference.norm(dim=1)
        assert bool((error < 2e-2 * 1e-3 / h).all()), (k, h, error)
