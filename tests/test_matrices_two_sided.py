"""Two-sided accuracy of the inverse, the accurate residual it is refined with, and backward errors of solve.

Matrices are built from their singular values, so each problem's condition number is known. The bar is the issue's:
an inverse within ten times torch.linalg's residual on both sides, up to condition 1e8 in float64 and 1e4 in float32,
and an answer that is not reported as a success where it is not.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from lossfit import Status
from lossfit import matrices as lm
from lossfit.matrices import accurate
from lossfit.matrices.linear import ACCURACY_FACTOR, backward_error

pytestmark = pytest.mark.usefixtures("one_thread")


def conditioned(n: int, cond: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``U diag(s) V^T``: random orthogonal factors, singular values log-spaced from 1 to ``1/cond``."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    s = torch.logspace(0.0, -math.log10(cond), n, dtype=torch.float64)
    return ((u * s) @ v.T).to(dtype)


def sides(x: torch.Tensor, m: torch.Tensor) -> tuple[float, float]:
    """Left and right relative residuals, measured accurately (independently of the library: in exact rationals
    would be too slow at n = 40, so in float64 with the error-free product checked below)."""
    size = math.sqrt(m.shape[-1])
    return float(accurate.residual(x, m).norm()) / size, float(accurate.residual(m, x).norm()) / size


CASES = [(torch.float64, 1e8), (torch.float64, 1e4), (torch.float32, 1e4), (torch.float32, 1e2)]


@pytest.mark.parametrize(("dtype", "cond"), CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_inverse_is_accurate_on_both_sides(dtype: torch.dtype, cond: float, seed: int) -> None:
    m = conditioned(40, cond, dtype, seed)
    result = lm.inverse(m)
    left, right = sides(result.params, m)
    torch_left, torch_right = sides(torch.linalg.inv(m), m)
    floor = 40 * torch.finfo(dtype).eps
    assert result.success, result.message
    assert left <= ACCURACY_FACTOR * max(torch_left, floor)
    assert right <= ACCURACY_FACTOR * max(torch_right, floor)
    ref = result.reference
    assert ref is not None
    assert ref["left_residual"] == pytest.approx(left, rel=1e-6)
    assert ref["right_residual"] == pytest.approx(right, rel=1e-6)
    assert ref["torch_right_residual"] == pytest.approx(torch_right, rel=1e-6)


def test_a_batch_of_inverses_is_accurate_on_both_sides_problem_by_problem() -> None:
    ms = torch.stack([conditioned(20, c, torch.float64, i) for i, c in enumerate([10.0, 1e4, 1e8])])
    result = lm.inverse(ms)
    assert result.success and len(result.statuses) == 3
    for i in range(3):
        left, right = sides(result.params[i], ms[i])
        torch_left, torch_right = sides(torch.linalg.inv(ms[i]), ms[i])
        assert left <= ACCURACY_FACTOR * max(torch_left, 20 * 2.2e-16)
        assert right <= ACCURACY_FACTOR * max(torch_right, 20 * 2.2e-16)


def test_newton_schulz_without_the_accurate_step_is_one_sided() -> None:
    """Without the accurate right step the left-refined iterate is far worse on the right than torch: the defect the
    step removes, so the test above can fail."""
    m = conditioned(40, 1e8, torch.float64, 0)
    left, right = sides(lm.newton_schulz(m, polish_steps=0).params, m)
    torch_left, torch_right = sides(torch.linalg.inv(m), m)
    assert left <= ACCURACY_FACTOR * torch_left
    assert right > 1000 * torch_right


def test_a_one_sided_answer_is_reported_inaccurate_not_a_success() -> None:
    """Gauss-Newton on the seed's left residual converges, but its right residual is far above torch's: that is
    INACCURATE, not a success (before, it said success)."""
    m = conditioned(40, 1e8, torch.float64, 0)
    result = lm.inverse(m, solver="gauss-newton")
    assert not result.success
    assert result.status is Status.INACCURATE
    ref = result.reference
    assert ref is not None
    assert ref["right_residual"] > ACCURACY_FACTOR * ref["torch_right_residual"]


def test_in_a_batch_only_the_inaccurate_problem_fails() -> None:
    ms = torch.stack([conditioned(12, 10.0, torch.float64, 0), conditioned(12, 1e9, torch.float64, 1)])
    result = lm.inverse(ms, solver="gauss-newton")
    assert result.statuses[0].success
    assert result.statuses[1] is Status.INACCURATE


def exact_residual(a: torch.Tensor, b: torch.Tensor) -> list[list[Fraction]]:
    """``I - a b`` in exact rational arithmetic (every float is a rational)."""
    rows, inner, cols = a.shape[0], a.shape[1], b.shape[1]
    fa = [[Fraction(float(a[i, k])) for k in range(inner)] for i in range(rows)]
    fb = [[Fraction(float(b[k, j])) for j in range(cols)] for k in range(inner)]
    return [
        [(1 if i == j else 0) - sum(fa[i][k] * fb[k][j] for k in range(inner)) for j in range(cols)]
        for i in range(rows)
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_accurate_residual_matches_exact_arithmetic(dtype: torch.dtype) -> None:
    m = conditioned(10, 1e7 if dtype == torch.float64 else 1e3, dtype, 3)
    x = torch.linalg.inv(m)
    exact = exact_residual(m, x)
    ours = accurate.residual(m, x)
    plain = torch.eye(10, dtype=dtype) - m @ x
    eps = torch.finfo(dtype).eps
    # The exact entries rounded once to the dtype: the accurate residual is within a few of their ulps, while the
    # plain product is off by about eps * |m| |x| (so this test can fail, and the comparison means something).
    scale = float((m.abs() @ x.abs()).max())
    worst_ours = max(abs(float(Fraction(float(ours[i, j])) - exact[i][j])) for i in range(10) for j in range(10))
    worst_plain = max(abs(float(Fraction(float(plain[i, j])) - exact[i][j])) for i in range(10) for j in range(10))
    size = max(abs(float(v)) for row in exact for v in row)
    assert worst_ours <= 4 * eps * size
    assert worst_plain > 10 * worst_ours
    assert worst_plain <= 10 * 10 * eps * scale


def test_the_accurate_residual_with_a_target_and_batches() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(3, 6, 6, generator=gen, dtype=torch.float64)
    x = torch.randn(3, 6, 2, generator=gen, dtype=torch.float64)
    b = a @ x
    r = accurate.residual(a, x, b)
    assert r.shape == (3, 6, 2)
    exact = torch.tensor(
        [
            [
                [
                    float(
                        Fraction(float(b[p, i, j]))
                        - sum(Fraction(float(a[p, i, k])) * Fraction(float(x[p, k, j])) for k in range(6))
                    )
                    for j in range(2)
                ]
                for i in range(6)
            ]
            for p in range(3)
        ],
        dtype=torch.float64,
    )
    assert torch.allclose(r, exact, rtol=1e-6, atol=1e-30)


def test_huge_entries_fall_back_to_the_plain_product() -> None:
    a = torch.full((2, 2), 1e300, dtype=torch.float64)
    b = torch.full((2, 2), 1e-300, dtype=torch.float64)
    assert torch.allclose(accurate.residual(a, b), torch.eye(2, dtype=torch.float64) - a @ b)


@pytest.mark.parametrize(("dtype", "cond"), CASES)
def test_solve_reports_its_backward_error_within_ten_times_torchs(dtype: torch.dtype, cond: float) -> None:
    a = conditioned(30, cond, dtype, 4)
    gen = torch.Generator().manual_seed(6)
    b = torch.randn(30, 3, generator=gen, dtype=torch.float64).to(dtype)
    result = lm.solve(a, b)
    ref = result.reference
    assert result.success, result.message
    assert ref is not None
    ours = float(backward_error(a, result.params, b))
    assert ref["backward_error"] == pytest.approx(ours, rel=1e-6)
    assert ours <= ACCURACY_FACTOR * max(ref["torch_backward_error"], 30 * torch.finfo(dtype).eps)


def test_backward_error_is_what_lapack_defines() -> None:
    """berr = max_i |b - A x|_i / (|A| |x| + |b|)_i, on a case worked by hand: A = I, x = (1, 2), b = (1, 2.5)."""
    a = torch.eye(2, dtype=torch.float64)
    x = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    b = torch.tensor([[1.0], [2.5]], dtype=torch.float64)
    assert float(backward_error(a, x, b)) == pytest.approx(0.5 / 4.5, rel=1e-12)


def test_an_inverse_loose_on_both_sides_is_held_to_its_tolerances_not_torchs() -> None:
    """Gradient descent stopped by its tolerances is as loose on the right as on the left: no INACCURATE."""
    m = conditioned(4, 20.0, torch.float64, 8)
    result = lm.inverse(m, solver="gd", lr=0.5, momentum=0.9, ftol=1e-10)
    ref = result.reference
    assert ref is not None
    assert ref["right_residual"] > 100 * ref["torch_right_residual"]
    assert result.status is not Status.INACCURATE
