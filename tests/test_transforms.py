"""Transforms: matrices from parameters and back, applying, composing, inverting, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lossfit import transforms as T

F64 = torch.float64
CASES = [(model, d) for model in T.MODELS for d in (2, 3)]


def random_params(model: str, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = T.num_params(model, d)
    p = 0.3 * torch.randn(k, generator=g, dtype=F64)
    if model in ("linear", "affine"):
        p[: d * d] += torch.eye(d, dtype=F64).reshape(-1)
    if model == "projective":
        p += torch.eye(d + 1, dtype=F64).reshape(-1)[:-1]
        p[d * (d + 1) : d * (d + 1) + d] *= 0.1  # a mild perspective row
    return p


@pytest.mark.parametrize(("model", "d"), CASES)
def test_parameters_round_trip_through_the_matrix(model: str, d: int) -> None:
    p = random_params(model, d, 0)
    m = T.matrix(model, p, d)
    assert m.shape == (d + 1, d + 1)
    torch.testing.assert_close(T.matrix(model, T.params(model, m), d), m, rtol=1e-12, atol=1e-12)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.sampled_from(CASES), st.integers(0, 10_000))
def test_apply_then_inverse_is_the_identity(case: tuple[str, int], seed: int) -> None:
    model, d = case
    m = T.matrix(model, random_params(model, d, seed), d)
    points = torch.randn(7, d, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    back = T.apply(T.inverse(m), T.apply(m, points))
    torch.testing.assert_close(back, points, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 5, 7])
def test_apply_is_the_homogeneous_product_in_every_dimension_and_batch_shape(d: int) -> None:
    # Both code paths (entry by entry up to SMALL_D, matrix products above) against [p; 1] -> M [p; 1], divided by w.
    g = torch.Generator().manual_seed(40 + d)
    m = torch.eye(d + 1, dtype=F64) + 0.2 * torch.randn(3, d + 1, d + 1, generator=g, dtype=F64)
    m[:, d, :d] *= 0.1
    m[:, d, d] = 1.0
    points = torch.randn(3, 6, d, generator=g, dtype=F64)
    h = torch.cat([points, torch.ones(3, 6, 1, dtype=F64)], dim=-1) @ m.transpose(-1, -2)
    torch.testing.assert_close(T.apply(m, points), h[..., :d] / h[..., d:], rtol=1e-12, atol=1e-12)
    # One matrix for a batch of point sets broadcasts.
    torch.testing.assert_close(T.apply(m[0], points)[1], T.apply(m[0], points[1]), rtol=1e-12, atol=1e-12)
    # For an affine matrix the division by w = 1 may be skipped: the same points.
    m[:, d, :d] = 0.0
    torch.testing.assert_close(T.apply(m, points, projective=False), T.apply(m, points), rtol=1e-14, atol=1e-14)
    with pytest.raises(ValueError, match="points"):
        T.apply(m, torch.zeros(4, d + 1, dtype=F64))


@pytest.mark.parametrize(("model", "d"), CASES)
def test_compose_applies_the_second_argument_first(model: str, d: int) -> None:
    a = T.matrix(model, random_params(model, d, 1), d)
    b = T.matrix(model, random_params(model, d, 2), d)
    points = torch.randn(5, d, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(T.apply(T.compose(a, b), points), T.apply(a, T.apply(b, points)), rtol=1e-10, atol=1e-10)


def test_rigid_matrices_are_rotations_and_the_2d_angle_is_counter_clockwise() -> None:
    m = T.matrix("rigid", torch.tensor([math.pi / 2, 1.0, 2.0], dtype=F64), 2)
    torch.testing.assert_close(T.apply(m, torch.tensor([[1.0, 0.0]], dtype=F64)), torch.tensor([[1.0, 3.0]], dtype=F64))
    for seed in range(5):
        r = T.matrix("rigid", random_params("rigid", 3, seed) * 5, 3)[:3, :3]
        torch.testing.assert_close(r.T @ r, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)
        assert float(torch.linalg.det(r)) == pytest.approx(1.0)


def test_rotation_log_handles_small_and_half_turn_angles() -> None:
    for w in ([1e-9, 0.0, 0.0], [0.0, 0.0, 0.0], [math.pi - 1e-6, 0.0, 0.0], [0.3, -0.2, 0.9]):
        vec = torch.tensor(w, dtype=F64)
        torch.testing.assert_close(T.rotation(T.rotation_log(T.rotation(vec, 3), 3), 3), T.rotation(vec, 3))


def test_similarity_scale_is_recovered() -> None:
    p = torch.tensor([0.4, 1.0, -1.0, math.log(2.5)], dtype=F64)
    m = T.matrix("similarity", p, 2)
    assert float(torch.linalg.det(m[:2, :2])) == pytest.approx(2.5**2)
    torch.testing.assert_close(T.params("similarity", m), p)


def test_matrix_is_batched() -> None:
    p = torch.stack([random_params("affine", 3, s) for s in range(4)])
    m = T.matrix("affine", p, 3)
    assert m.shape == (4, 4, 4)
    torch.testing.assert_close(m[2], T.matrix("affine", p[2], 3))


@pytest.mark.parametrize(("model", "d"), CASES)
def test_gradients_of_the_parametrisation(model: str, d: int) -> None:
    p = random_params(model, d, 4).requires_grad_(True)
    points = torch.randn(4, d, generator=torch.Generator().manual_seed(5), dtype=F64)
    assert torch.autograd.gradcheck(lambda q: T.apply(T.matrix(model, q, d), points), (p,))


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: T.matrix("shear", torch.zeros(2), 2), "model"),
        (lambda: T.matrix("affine", torch.zeros(5), 2), "6 values"),
        (lambda: T.apply(torch.eye(3), torch.zeros(4, 3)), "coordinates"),
        (lambda: T.Transform("rigid", 1), "dimension"),
    ],
)
def test_bad_input(call: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        call()  # type: ignore[operator]
