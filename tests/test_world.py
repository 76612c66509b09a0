"""A registration's matrix in world terms: angles, translation about the centre, scales, standard errors."""

from __future__ import annotations

import math

import torch

from lossfit.registration import world as W


def _rot(axis: int, angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = torch.eye(3, dtype=torch.float64)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _affine(linear: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    d = linear.shape[0]
    m = torch.eye(d + 1, dtype=torch.float64)
    m[:d, :d], m[:d, d] = linear, t
    return m


def test_angles_translation_and_scales_come_back_from_a_built_matrix() -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        angles = (torch.rand(3, generator=g, dtype=torch.float64) - 0.5) * 1.2  # within +-34 degrees
        r = _rot(2, float(angles[2])) @ _rot(1, float(angles[1])) @ _rot(0, float(angles[0]))
        q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
        stretch = q @ torch.diag(torch.tensor([0.8, 1.0, 1.3], dtype=torch.float64)) @ q.T
        centre = torch.randn(3, generator=g, dtype=torch.float64) * 50
        shift = torch.randn(3, generator=g, dtype=torch.float64) * 5
        a = r @ stretch
        m = _affine(a, centre + shift - a @ centre)  # the centre moves by `shift`
        out = W.world_parameters(m, centre, "affine")
        torch.testing.assert_close(
            torch.tensor(out["rotation_deg"], dtype=torch.float64), torch.rad2deg(angles), rtol=0, atol=1e-9
        )
        torch.testing.assert_close(torch.tensor(out["translation_mm"], dtype=torch.float64), shift, rtol=0, atol=1e-9)
        torch.testing.assert_close(
            torch.tensor(out["scales"], dtype=torch.float64),
            torch.tensor([0.8, 1.0, 1.3], dtype=torch.float64),
            rtol=0,
            atol=1e-9,
        )
        # the angle-axis form describes the same rotation (Rodrigues)
        axis = torch.tensor(out["rotation_axis"], dtype=torch.float64)
        theta = math.radians(out["rotation_angle_deg"])
        k = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rodrigues = torch.eye(3, dtype=torch.float64) + math.sin(theta) * k + (1 - math.cos(theta)) * k @ k
        torch.testing.assert_close(rodrigues, r, rtol=0, atol=1e-9)


def test_the_polar_rotation_agrees_with_the_svd_and_a_2d_angle_is_counter_clockwise() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.eye(3, dtype=torch.float64) + 0.3 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    u, _, vh = torch.linalg.svd(a)
    torch.testing.assert_close(W.polar_rotation(a), u @ vh, rtol=0, atol=1e-12)
    t = math.radians(25)
    r2 = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]], dtype=torch.float64)
    out = W.world_parameters(_affine(2 * r2, torch.zeros(2, dtype=torch.float64)), torch.zeros(2), "similarity")
    assert math.isclose(out["rotation_deg"][0], 25.0, abs_tol=1e-9)
    assert math.isclose(out["scale"], 2.0, rel_tol=1e-12)


def test_a_reflection_has_no_angles_and_a_projective_matrix_keeps_its_perspective_row() -> None:
    flip = _affine(torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)), torch.zeros(3))
    assert W.world_parameters(flip, torch.zeros(3), "affine")["rotation_deg"] is None
    h = torch.eye(3, dtype=torch.float64)
    h[2, :2] = torch.tensor([1e-3, -2e-3], dtype=torch.float64)
    out = W.world_parameters(h, torch.zeros(2), "projective")
    assert out["perspective"] == [1e-3, -2e-3]
    assert math.isclose(out["rotation_deg"][0], 0.0, abs_tol=1e-12)


def test_the_world_quantities_have_correct_gradients_even_at_a_rigid_matrix() -> None:
    g = torch.Generator().manual_seed(3)
    centre = torch.randn(3, generator=g, dtype=torch.float64)
    rigid = _rot(0, 0.2) @ _rot(2, -0.4)  # repeated singular values: the SVD's gradient is undefined here
    m = _affine(rigid, torch.randn(3, generator=g, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: W.flatten(x, centre), (m,))
    a = torch.eye(3, dtype=torch.float64) + 0.2 * torch.randn(3, 3, generator=g, dtype=torch.float64)
    m2 = _affine(a, torch.zeros(3, dtype=torch.float64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: W.flatten(x, centre), (m2,))


def test_standard_errors_follow_the_jacobian() -> None:
    # translation parameters with covariance diag(4, 9): the centre's translation has stderr 2 and 3 mm
    jacobian = torch.zeros(3, 3, dtype=torch.float64)
    jacobian[0, 0] = jacobian[1, 1] = 1.0
    jacobian[2, 2] = 180 / math.pi  # an angle parameter in radians
    cov = torch.diag(torch.tensor([4.0, 9.0, 1e-4], dtype=torch.float64))
    out = W.world_parameters(torch.eye(3, dtype=torch.float64), torch.zeros(2), "rigid", cov, jacobian)
    assert out["translation_mm_stderr"] == [2.0, 3.0]
    assert math.isclose(out["rotation_deg_stderr"][0], math.degrees(1e-2), rel_tol=1e-12)
