"""The contract of lossfit.matrices: agreement with torch.linalg, honest statuses, batches, engine solvers, bad input.

Ground truth is built, not trusted: matrices get prescribed singular values (or eigenvalues) from random orthogonal
factors, so the condition number of every problem is known and every tolerance scales with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

import lossfit
from lossfit import Status
from lossfit import matrices as lm
from lossfit.engine.constraints import SPD, Bounds, Orthogonal, Positive, Symmetric
from lossfit.experiments import SEED, compare_inverse_solvers, inverse_matrices

F64 = torch.float64
EPS = torch.finfo(F64).eps

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# Stop at the first counterexample instead of shrinking it (these tests pin once-found bugs).
BUG_SETTINGS = settings(SETTINGS, phases=[Phase.explicit, Phase.generate])

sizes = st.integers(min_value=1, max_value=40)
log_conds = st.floats(min_value=0.0, max_value=8.0)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


pytestmark = pytest.mark.usefixtures("one_thread")


# -- building matrices with a known spectrum --------------------------------------------------------------------------


def orthogonal(n: int, gen: torch.Generator) -> torch.Tensor:
    """A random orthogonal matrix: QR of a Gaussian one, signs fixed so the distribution is Haar."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(F64)
    return q * signs


def spectrum(n: int, log_cond: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` values from 1 down to ``10**-log_cond`` (both ends included, the rest log-uniform), descending."""
    if n == 1:
        return torch.ones(1, dtype=F64)
    inner = torch.rand(n - 2, generator=gen, dtype=F64) * log_cond
    logs = torch.cat([torch.zeros(1, dtype=F64), inner, torch.full((1,), log_cond, dtype=F64)])
    return torch.sort(10.0 ** (-logs), descending=True).values


def with_singular_values(rows: int, cols: int, sv: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``U diag(sv) V^T`` with random orthonormal ``U`` (rows x r) and ``V`` (cols x r), r = len(sv)."""
    u = orthogonal(rows, gen)[:, : len(sv)]
    v = orthogonal(cols, gen)[:, : len(sv)]
    return (u * sv) @ v.T


def symmetric_with_eigenvalues(w: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    q = orthogonal(len(w), gen)
    a = (q * w) @ q.T
    return (a + a.T) / 2


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius distance (absolute when ``ref`` is zero)."""
    scale = float(ref.norm())
    return float((x - ref).norm()) / (scale if scale > 0 else 1.0)


def orth_error(q: torch.Tensor) -> float:
    return float((q.T @ q - torch.eye(q.shape[-1], dtype=q.dtype)).norm())


def square_problem(n: int, log_cond: float, seed: int) -> tuple[torch.Tensor, float]:
    gen = torch.Generator().manual_seed(seed)
    sv = spectrum(n, log_cond, gen)
    return with_singular_values(n, n, sv, gen), float(sv[0] / sv[-1])


# -- inverse and pinv (Newton-Schulz) ---------------------------------------------------------------------------------


@SETTINGS
@given(n=sizes, log_cond=log_conds, seed=seeds)
def test_inverse_matches_torch(n: int, log_cond: float, seed: int) -> None:
    m, cond = square_problem(n, log_cond, seed)
    result = lm.inverse(m)
    x = result.params
    eye = torch.eye(n, dtype=F64)
    tol = 1e3 * n * EPS * cond
    assert result.success, result.message
    assert result.status.success and result.statuses == (result.status,)
    assert x.shape == (n, n) and x.dtype == F64
    residual = float((x @ m - eye).norm()) / math.sqrt(n)
    assert residual <= tol
    assert rel(x, torch.linalg.inv(m)) <= tol
    # The reference record is what it says it is.
    ref = result.reference
    assert ref is not None
    assert ref["relative_residual"] == pytest.approx(residual, rel=1e-9, abs=1e-300)
    assert ref["error_vs_torch"] <= tol
    assert ref["torch_relative_residual"] <= tol
    assert ref["rank"] == n
    assert ref["condition_number"] == pytest.approx(cond, rel=1e-4)
    assert ref["smallest_singular_value"] == pytest.approx(float(torch.linalg.svdvals(m)[-1]), rel=1e-6)
    assert result.extras["smallest_singular_value"] == ref["smallest_singular_value"]
    # The loss is the seed's MSE of X M - I at the answer, to the rounding of X M (which differs between matrix
    # product kernels: each entry by up to n eps (|X| |M|)_ij).
    mse = float(((x @ m - eye) ** 2).mean())
    rounding = n * EPS * float((x.abs() @ m.abs()).max())
    assert float(result.loss) == pytest.approx(mse, rel=1e-6, abs=rounding**2 + 2 * rounding * math.sqrt(mse))


def full_rank_pinv_case(rows: int, cols: int, log_cond: float, seed: int) -> tuple[torch.Tensor, float, float]:
    gen = torch.Generator().manual_seed(seed)
    sv = spectrum(min(rows, cols), log_cond, gen)
    cond = float(sv[0] / sv[-1])
    return with_singular_values(rows, cols, sv, gen), cond, 1e3 * max(rows, cols) * EPS * cond


@SETTINGS
@given(cols=sizes, extra=st.integers(0, 10), log_cond=log_conds, seed=seeds)
def test_pinv_of_full_rank_tall_matrices_matches_torch(cols: int, extra: int, log_cond: float, seed: int) -> None:
    rows = min(cols + extra, 40)
    m, _, tol = full_rank_pinv_case(rows, cols, log_cond, seed)
    result = lm.pinv(m)
    x = result.params
    assert result.success, result.message
    assert x.shape == (cols, rows)
    assert rel(x, torch.linalg.pinv(m)) <= tol
    # Penrose conditions.
    assert rel(m @ x @ m, m) <= tol
    assert rel(x @ m @ x, x) <= tol
    ref = result.reference
    assert ref is not None and ref["rank"] == cols
    assert ref["error_vs_torch"] <= tol
    residual = float((x @ m - torch.eye(cols, dtype=F64)).norm()) / math.sqrt(cols)
    assert ref["relative_residual"] == pytest.approx(residual, rel=1e-9, abs=1e-300)


@SETTINGS
@given(rows=st.integers(1, 39), extra=st.integers(1, 10), log_cond=log_conds, seed=seeds)
def test_pinv_of_full_rank_wide_matrices_succeeds(rows: int, extra: int, log_cond: float, seed: int) -> None:
    cols = min(rows + extra, 40)
    m, _, _ = full_rank_pinv_case(rows, cols, log_cond, seed)
    result = lm.pinv(m)
    assert result.success, result.message
    assert result.params.shape == (cols, rows)
    assert result.reference is not None and result.reference["rank"] == rows
    assert rel(result.params, torch.linalg.pinv(m)) <= 1e-5


@BUG_SETTINGS
@given(rows=st.integers(1, 39), extra=st.integers(1, 10), log_cond=log_conds, seed=seeds)
@example(rows=1, extra=3, log_cond=2.0, seed=0)
def test_pinv_of_full_rank_wide_matrices_is_as_accurate_as_torch(
    rows: int, extra: int, log_cond: float, seed: int
) -> None:
    cols = min(rows + extra, 40)
    m, _, tol = full_rank_pinv_case(rows, cols, log_cond, seed)
    assert rel(lm.pinv(m).params, torch.linalg.pinv(m)) <= tol


def test_pinv_of_a_row_vector_succeeds() -> None:
    m = torch.tensor([[3.0, 4.0, 12.0]], dtype=F64)  # pinv = m.T / 169
    result = lm.pinv(m)
    assert result.success
    assert rel(result.params, m.T / 169.0) <= 1e-9


def test_pinv_of_a_row_vector_is_exact_to_rounding() -> None:
    m = torch.tensor([[3.0, 4.0, 12.0]], dtype=F64)
    assert rel(lm.pinv(m).params, m.T / 169.0) <= 1e3 * 3 * EPS


def test_newton_schulz_directly() -> None:
    m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=F64)
    result = lm.newton_schulz(m)
    assert result.success and result.status is Status.CONVERGED_XTOL
    assert torch.allclose(result.params, torch.linalg.inv(m), rtol=0, atol=1e-15)
    assert result.solver.name == "newton-schulz"
    # History row 0 is the start X0 = M^T / (||M||_1 ||M||_inf); the loss falls from there.
    x0 = m.T / (float(m.abs().sum(0).max()) * float(m.abs().sum(1).max()))
    start_loss = float(((x0 @ m - torch.eye(2, dtype=F64)) ** 2).mean())
    assert result.history is not None and len(result.history) == result.num_steps + 1
    assert float(result.history.loss[0]) == pytest.approx(start_loss, rel=1e-12)
    assert float(result.history.loss[-1]) < 1e-30
    short = lm.newton_schulz(m, max_steps=2)
    assert short.status is Status.MAX_STEPS and not short.success and short.num_steps == 2


def test_newton_schulz_runs_on_the_driver_each_matrix_of_a_batch_stopping_on_its_own() -> None:
    # A well- and an ill-conditioned matrix: the second needs more steps; each stops at its own rounding floor and
    # keeps its own step count, and each answer is the inverse torch computes.
    easy, easy_cond = square_problem(6, 0.0, 3)
    hard, hard_cond = square_problem(6, 7.0, 4)
    m = torch.stack([easy, hard])
    result = lm.newton_schulz(m)
    assert result.statuses == (Status.CONVERGED_XTOL, Status.CONVERGED_XTOL) and result.success
    assert int(result.steps[0]) < int(result.steps[1]) == result.num_steps
    for i, cond in enumerate((easy_cond, hard_cond)):
        assert rel(result.params[i], torch.linalg.inv(m[i])) <= 100 * cond * EPS
        one = lm.newton_schulz(m[i])
        assert one.num_steps == int(result.steps[i])
        torch.testing.assert_close(result.params[i], one.params, rtol=1e-12, atol=1e-15)
    # The history has a column per matrix; the easy one's column is NaN once it has stopped.
    assert result.history is not None and result.history.loss.shape == (result.num_steps + 1, 2)
    assert bool(result.history.loss[int(result.steps[0]) + 1 :, 0].isnan().all())


def test_jacobi_on_a_diagonal_matrix_needs_no_sweep_and_iteration_solvers_are_not_general() -> None:
    import lossfit
    from lossfit.engine.solvers.iteration import Jacobi, NewtonSchulz

    a = torch.diag(torch.tensor([3.0, -1.0, 2.0, 0.5], dtype=F64))
    result = lossfit.matrices.eigh(a)
    assert result.success and result.num_steps == 0 and result.status is Status.CONVERGED_GTOL
    torch.testing.assert_close(result.params["eigenvalues"], torch.tensor([-1.0, 0.5, 2.0, 3.0], dtype=F64))
    for solver in (NewtonSchulz(), Jacobi()):
        with pytest.raises(ValueError, match="own iteration"):
            lossfit.minimize(lambda p: (p * p).sum(), torch.ones(2, dtype=F64), solver=solver)
        with pytest.raises(ValueError, match="own iteration"):
            lossfit.least_squares(lambda p: p, torch.ones(2, dtype=F64), solver=solver)


# -- solve and lstsq --------------------------------------------------------------------------------------------------


def solve_problem(n: int, log_cond: float, seed: int, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    m, cond = square_problem(n, log_cond, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    b = torch.randn(n, k, generator=gen, dtype=F64)
    return m, b, cond


@SETTINGS
@given(n=sizes, log_cond=st.floats(min_value=0.0, max_value=6.0), seed=seeds, k=st.integers(1, 3))
def test_solve_is_accurate(n: int, log_cond: float, seed: int, k: int) -> None:
    """The answer of solve() is as accurate as torch's, up to cond 1e6."""
    a, b, cond = solve_problem(n, log_cond, seed, k)
    result = lm.solve(a, b)
    x = result.params
    tol = 1e3 * n * EPS * cond
    assert x.shape == (n, k)
    residual = float((a @ x - b).norm() / b.norm())
    assert residual <= tol
    assert rel(x, torch.linalg.solve(a, b)) <= tol
    ref = result.reference
    assert ref is not None
    assert ref["relative_residual"] == pytest.approx(residual, rel=1e-9, abs=1e-300)
    assert ref["error_vs_torch"] <= tol and ref["rank"] == n


@BUG_SETTINGS
@given(n=sizes, log_cond=log_conds, seed=seeds, k=st.integers(1, 3))
@example(n=2, log_cond=2.0, seed=1, k=1)  # cond 100: STALLED although X is exact to 1e-16
@example(n=5, log_cond=8.0, seed=0, k=1)  # cond 1e8: MAX_STEPS, X off by 6e-4
def test_solve_succeeds_on_every_well_posed_system(n: int, log_cond: float, seed: int, k: int) -> None:
    a, b, cond = solve_problem(n, log_cond, seed, k)
    result = lm.solve(a, b)
    assert result.success, (result.status, result.message)
    assert rel(result.params, torch.linalg.solve(a, b)) <= 1e3 * n * EPS * cond


def test_solve_vector_right_side_and_integers() -> None:
    result = lm.solve([[2, 0], [0, 4]], [2, 4])
    assert result.success, result.message
    assert result.params.dtype == F64 and result.params.shape == (2,)
    assert torch.allclose(result.params, torch.ones(2, dtype=F64), rtol=0, atol=1e-14)


@SETTINGS
@given(
    n=st.integers(1, 35),
    extra=st.integers(0, 5),
    log_cond=st.floats(min_value=0.0, max_value=6.0),
    seed=seeds,
)
def test_lstsq_matches_gelsd(n: int, extra: int, log_cond: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rows = n + extra
    sv = spectrum(n, log_cond, gen)
    cond = float(sv[0] / sv[-1])
    a = with_singular_values(rows, n, sv, gen)
    b = torch.randn(rows, 2, generator=gen, dtype=F64)
    result = lm.lstsq(a, b)
    exact = torch.linalg.lstsq(a, b, driver="gelsd").solution
    # Gauss-Newton solves the normal equations, whose accuracy is eps * cond**2 (a backward-stable solver such as
    # gelsd reaches eps * (cond + cond**2 * ||r|| / (||A|| ||x||)), which can be much smaller).
    tol = 1e2 * rows * EPS * cond**2
    assert result.success, (result.status, result.message)
    assert result.params.shape == (n, 2)
    assert rel(result.params, exact) <= tol
    ref = result.reference
    assert ref is not None and ref["rank"] == n
    residual = float((a @ result.params - b).norm() / b.norm())
    assert ref["relative_residual"] == pytest.approx(residual, rel=1e-9)


@BUG_SETTINGS
@given(n=st.integers(1, 35), extra=st.integers(0, 5), log_cond=log_conds, seed=seeds)
@example(n=2, extra=0, log_cond=8.0, seed=0)
def test_lstsq_succeeds_on_consistent_systems_up_to_cond_1e8(n: int, extra: int, log_cond: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    rows = n + extra
    sv = spectrum(n, log_cond, gen)
    cond = float(sv[0] / sv[-1])
    a = with_singular_values(rows, n, sv, gen)
    b = a @ torch.randn(n, 2, generator=gen, dtype=F64)  # consistent: the answer is determined to cond * eps
    result = lm.lstsq(a, b)
    assert result.success, (result.status, result.message)
    assert rel(result.params, torch.linalg.lstsq(a, b, driver="gelsd").solution) <= 1e3 * rows * EPS * cond


# -- svd, eigh, polar -------------------------------------------------------------------------------------------------


@SETTINGS
@given(rows=sizes, cols=sizes, log_cond=log_conds, seed=seeds)
def test_svd_matches_torch(rows: int, cols: int, log_cond: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    r = min(rows, cols)
    sv = spectrum(r, log_cond, gen)
    m = with_singular_values(rows, cols, sv, gen)
    result = lm.svd(m)
    u, s, vh = result.params["U"], result.params["S"], result.params["Vh"]
    tol = 1e3 * max(rows, cols) * EPS
    assert result.success, result.message
    assert u.shape == (rows, r) and s.shape == (r,) and vh.shape == (r, cols)
    assert bool((s[:-1] >= s[1:]).all()), "S must be descending"
    exact = torch.linalg.svdvals(m)
    assert float((s - exact).abs().max()) <= tol * float(exact[0])
    assert orth_error(u) <= tol and orth_error(vh.T) <= tol
    assert rel((u * s) @ vh, m) <= tol
    ref = result.reference
    assert ref is not None
    assert ref["singular_value_error"] == pytest.approx(float((s - exact).abs().max() / exact[0]), rel=1e-6, abs=1e-18)
    assert ref["reconstruction_error"] <= tol and ref["orthogonality_error"] <= tol


@SETTINGS
@given(rows=sizes, cols=sizes, log_cond=st.floats(0.5, 8.0), seed=seeds, data=st.data())
def test_svd_top_k_is_the_best_rank_k_approximation(
    rows: int, cols: int, log_cond: float, seed: int, data: st.DataObject
) -> None:
    gen = torch.Generator().manual_seed(seed)
    r = min(rows, cols)
    # Distinct singular values (evenly spaced in log) so the top k are unique.
    sv = torch.logspace(0, -log_cond, r, dtype=F64) if r > 1 else torch.ones(1, dtype=F64)
    m = with_singular_values(rows, cols, sv, gen)
    k = data.draw(st.integers(1, r), label="k")
    result = lm.svd(m, k)
    u, s, vh = result.params["U"], result.params["S"], result.params["Vh"]
    assert result.success, result.message
    assert u.shape == (rows, k) and s.shape == (k,) and vh.shape == (k, cols)
    tol = 1e3 * max(rows, cols) * EPS
    assert float((s - sv[:k]).abs().max()) <= tol
    t = torch.linalg.svd(m, full_matrices=False)
    best = (t.U[:, :k] * t.S[:k]) @ t.Vh[:k]
    gap = float(sv[k - 1] - sv[k]) if k < r else 1.0
    assert rel((u * s) @ vh, best) <= tol / gap
    assert orth_error(u) <= tol and orth_error(vh.T) <= tol
    assert result.reference is not None and result.reference["reconstruction_error"] <= tol / gap


@SETTINGS
@given(n=sizes, log_cond=log_conds, seed=seeds)
def test_eigh_matches_torch(n: int, log_cond: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    magnitudes = spectrum(n, log_cond, gen)
    signs = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    a = symmetric_with_eigenvalues(magnitudes * signs, gen)
    result = lm.eigh(a)
    w, v = result.params["eigenvalues"], result.params["eigenvectors"]
    tol = 1e3 * n * EPS
    assert result.success, result.message
    assert w.shape == (n,) and v.shape == (n, n)
    assert bool((w[:-1] <= w[1:]).all()), "eigenvalues must be ascending"
    exact = torch.linalg.eigvalsh(a)
    scale = float(a.abs().max())
    assert float((w - exact).abs().max()) <= tol * scale
    assert orth_error(v) <= tol
    assert rel((v * w) @ v.T, a) <= tol
    ref = result.reference
    assert ref is not None
    assert ref["eigenvalue_error"] == pytest.approx(float((w - exact).abs().max()) / scale, rel=1e-6, abs=1e-18)
    assert ref["reconstruction_error"] <= tol and ref["orthogonality_error"] <= tol


@SETTINGS
@given(n=sizes, log_cond=log_conds, seed=seeds)
def test_polar_matches_torch(n: int, log_cond: float, seed: int) -> None:
    m, cond = square_problem(n, log_cond, seed)
    result = lm.polar(m)
    u, p = result.params["U"], result.params["P"]
    tol = 1e3 * n * EPS
    assert result.success, result.message
    assert orth_error(u) <= tol
    assert torch.equal(p, p.T)
    assert float(torch.linalg.eigvalsh(p).min()) >= -tol
    assert rel(u @ p, m) <= tol
    w, _, vh = torch.linalg.svd(m)
    assert rel(u, w @ vh) <= tol * cond
    ref = result.reference
    assert ref is not None
    assert ref["error_vs_torch"] == pytest.approx(rel(u, w @ vh), rel=1e-6, abs=1e-18)


# -- sqrtm and low_rank -----------------------------------------------------------------------------------------------


# n <= 20 keeps to the dense Levenberg-Marquardt path (n (n + 1) / 2 <= 400 unknowns; the matrix-free path above is
# tested once below, as it needs seconds per problem); cond >= 2 leaves out the identity.
@SETTINGS
@given(n=st.integers(1, 20), log_cond=st.floats(0.3, 8.0), seed=seeds)
def test_sqrtm_matches_the_eigen_root(n: int, log_cond: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    w = spectrum(n, log_cond, gen)
    cond = float(w[0] / w[-1])
    a = symmetric_with_eigenvalues(w, gen)
    result = lm.sqrtm(a)
    x = result.params
    assert result.success, (result.status, result.message)
    assert torch.allclose(x, x.T, rtol=0, atol=1e3 * n * EPS)
    ew, ev = torch.linalg.eigh(a)
    exact = (ev * ew.sqrt()) @ ev.T
    assert rel(x @ x, a) <= 1e3 * n * EPS * cond
    assert rel(x, exact) <= 1e3 * n * EPS * math.sqrt(cond)
    ref = result.reference
    assert ref is not None
    assert ref["relative_residual"] == pytest.approx(rel(x @ x, (a + a.T) / 2), rel=1e-6, abs=1e-18)
    assert ref["smallest_eigenvalue"] == pytest.approx(math.sqrt(float(w[-1])), rel=1e-6)


def test_sqrtm_krylov_path_above_the_dense_limit() -> None:
    gen = torch.Generator().manual_seed(32)
    a = symmetric_with_eigenvalues(spectrum(32, 2.0, gen), gen)
    result = lm.sqrtm(a)
    assert result.success, result.message
    assert result.solver.name == "krylov"
    ew, ev = torch.linalg.eigh(a)
    assert rel(result.params, (ev * ew.sqrt()) @ ev.T) <= 1e-10


@pytest.mark.parametrize("n", [2, 5])
def test_sqrtm_of_a_rotated_identity(n: int) -> None:
    q = orthogonal(n, torch.Generator().manual_seed(n))
    a = q @ q.T  # the identity, up to rounding
    result = lm.sqrtm(a)
    assert rel(result.params, torch.eye(n, dtype=F64)) <= 1e-14
    assert result.success, (result.status, result.message)


@settings(SETTINGS, max_examples=15)
@given(rows=st.integers(2, 16), cols=st.integers(2, 16), log_cond=st.floats(0.5, 6.0), seed=seeds, data=st.data())
def test_low_rank_reaches_the_eckart_young_optimum(
    rows: int, cols: int, log_cond: float, seed: int, data: st.DataObject
) -> None:
    gen = torch.Generator().manual_seed(seed)
    r = min(rows, cols)
    sv = torch.logspace(0, -log_cond, r, dtype=F64)
    m = with_singular_values(rows, cols, sv, gen)
    k = data.draw(st.integers(1, r), label="k")
    result = lm.low_rank(m, k)
    a, b = result.params["A"], result.params["B"]
    assert result.success, (result.status, result.message)
    assert a.shape == (rows, k) and b.shape == (cols, k)
    approx = a @ b.T
    assert torch.allclose(result.extras["approximation"], approx, rtol=0, atol=1e-15)
    optimal = float((sv[k:] ** 2).sum().sqrt() / m.norm())
    got = float((approx - m).norm() / m.norm())
    assert got - optimal <= 1e-8 * max(optimal, 1e-8) + 1e-12
    ref = result.reference
    assert ref is not None
    assert ref["relative_error"] == pytest.approx(got, rel=1e-9, abs=1e-18)
    assert ref["optimal_relative_error"] == pytest.approx(optimal, rel=1e-6, abs=1e-15)
    assert ref["excess"] <= 1e-8 * max(optimal, 1e-8) + 1e-12


# -- rank-deficient and singular input --------------------------------------------------------------------------------


def rank_deficient(n: int, rank: int, log_cond: float, seed: int, rows: int | None = None) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sv = torch.cat([spectrum(rank, log_cond, gen), torch.zeros(n - rank, dtype=F64)])
    return with_singular_values(rows or n, n, sv, gen)


@st.composite
def deficient_problems(draw: Callable[..., Any]) -> tuple[int, int, float, int]:
    n = draw(st.integers(2, 20))
    rank = draw(st.integers(1, n - 1))
    log_cond = draw(st.floats(0.0, 4.0))
    return n, rank, log_cond, draw(seeds)


@SETTINGS
@given(problem=deficient_problems())
def test_inverse_of_a_singular_matrix_is_rank_deficient_and_the_pseudo_inverse(
    problem: tuple[int, int, float, int],
) -> None:
    n, rank, log_cond, seed = problem
    m = rank_deficient(n, rank, log_cond, seed)
    result = lm.inverse(m)
    assert result.status is Status.RANK_DEFICIENT
    assert not result.success and not result.status.success
    assert result.statuses == (Status.RANK_DEFICIENT,)
    assert not bool(torch.isnan(result.params).any()) and bool(torch.isfinite(result.params).all())
    smallest = result.extras["smallest_singular_value"]
    assert abs(smallest - float(torch.linalg.svdvals(m)[-1])) <= 1e3 * n * EPS
    assert smallest <= 1e3 * n * EPS
    assert result.reference is not None and result.reference["rank"] == rank
    assert "rank deficient" in result.message
    # The minimum-norm answer.
    assert rel(result.params, torch.linalg.pinv(m)) <= 1e-6


@SETTINGS
@given(problem=deficient_problems(), extra=st.integers(0, 4))
def test_pinv_of_a_rank_deficient_matrix_succeeds(problem: tuple[int, int, float, int], extra: int) -> None:
    n, rank, log_cond, seed = problem
    m = rank_deficient(n, rank, log_cond, seed, rows=n + extra)
    result = lm.pinv(m)
    assert result.success, result.message
    assert result.reference is not None and result.reference["rank"] == rank
    assert rel(result.params, torch.linalg.pinv(m)) <= 1e-6


@BUG_SETTINGS
@given(problem=deficient_problems())
@example(problem=(6, 1, 0.0, 0))  # rank one, cond 1: 2e-8 off (torch: 1e-16)
def test_pseudo_inverse_of_rank_deficient_input_is_as_accurate_as_torch(problem: tuple[int, int, float, int]) -> None:
    n, rank, log_cond, seed = problem
    m = rank_deficient(n, rank, log_cond, seed)
    exact = torch.linalg.pinv(m)
    tol = 1e3 * n * EPS * 10**log_cond
    assert rel(lm.pinv(m).params, exact) <= tol
    assert rel(lm.inverse(m).params, exact) <= tol


@pytest.mark.parametrize(
    "m",
    [
        [[1.0, 2.0], [2.0, 4.0]],
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]],
        [[0.0, 0.0], [0.0, 0.0]],
        [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]],
    ],
    ids=["rank1-2x2", "ones-3x3", "zeros", "diag-with-zero"],
)
def test_inverse_of_simple_singular_matrices(m: list[list[float]]) -> None:
    t = torch.tensor(m, dtype=F64)
    result = lm.inverse(t)
    assert result.status is Status.RANK_DEFICIENT and not result.success
    assert bool(torch.isfinite(result.params).all())
    assert rel(result.params, torch.linalg.pinv(t)) <= 1e-6
    assert result.extras["smallest_singular_value"] == pytest.approx(0.0, abs=1e-14)
    assert result.reference is not None and result.reference["rank"] == int(torch.linalg.matrix_rank(t))
    assert lm.pinv(t).success


def test_inverse_of_a_singular_diagonal_matrix_is_exact_to_rounding() -> None:
    t = torch.diag(torch.tensor([1.0, 2.0, 0.0], dtype=F64))
    result = lm.inverse(t)
    assert torch.allclose(result.params, torch.diag(torch.tensor([1.0, 0.5, 0.0], dtype=F64)), rtol=0, atol=1e-14)


def test_lstsq_of_a_rank_deficient_matrix_is_the_minimum_norm_answer_reproduction() -> None:
    a = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=F64)
    b = torch.tensor([1.0, 2.0], dtype=F64)
    result = lm.lstsq(a, b)
    assert result.success, (result.status, result.message)
    assert torch.allclose(result.params, torch.tensor([0.2, 0.4], dtype=F64), rtol=1e-10, atol=1e-12)


@BUG_SETTINGS
@given(problem=deficient_problems(), extra=st.integers(0, 4))
@example(problem=(3, 1, 0.0, 0), extra=0)
def test_lstsq_of_rank_deficient_input_matches_gelsd(problem: tuple[int, int, float, int], extra: int) -> None:
    n, rank, log_cond, seed = problem
    a = rank_deficient(n, rank, log_cond, seed, rows=n + extra)
    b = torch.randn(n + extra, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    result = lm.lstsq(a, b)
    assert result.success, (result.status, result.message)
    exact = torch.linalg.lstsq(a, b, driver="gelsd").solution
    assert rel(result.params, exact) <= 1e3 * (n + extra) * EPS * 10 ** (2 * log_cond)


def test_solve_of_a_singular_matrix_does_not_claim_success() -> None:
    a = torch.tensor([[1.0, 2.0], [2.0, 4.0]], dtype=F64)
    result = lm.solve(a, [1.0, 2.0])
    assert not result.success
    assert bool(torch.isfinite(result.params).all())


# -- repeated singular values and eigenvalues -------------------------------------------------------------------------


def repeated_cases() -> list[Any]:
    """(name, matrix, eigh fails) for identity, ones, zeros and block-repeated spectra."""
    gen = torch.Generator().manual_seed(11)
    cases: list[tuple[str, torch.Tensor, bool]] = []
    for n in (1, 2, 5, 6, 9, 17, 40):
        cases.append((f"identity-{n}", torch.eye(n, dtype=F64), False))
        cases.append((f"ones-{n}", torch.ones(n, n, dtype=F64), n >= 7))
    cases.append(("zeros-4", torch.zeros(4, 4, dtype=F64), False))
    cases.append(("scaled-identity-6", -3.0 * torch.eye(6, dtype=F64), False))
    blocks = torch.tensor([3.0, 3.0, 3.0, -1.0, -1.0, 2.0, 2.0, 2.0, 2.0, 0.5], dtype=F64)
    cases.append(("block-repeated-10", symmetric_with_eigenvalues(blocks, gen), False))
    blocks = torch.tensor([5.0] * 12 + [-2.0] * 12 + [1e-3] * 6, dtype=F64)
    cases.append(("block-repeated-30", symmetric_with_eigenvalues(blocks, gen), True))
    zeros = torch.tensor([0.0] * 4 + [1.0] * 3, dtype=F64)
    cases.append(("repeated-zero-eigenvalue-7", symmetric_with_eigenvalues(zeros, gen), False))
    return cases


REPEATED = repeated_cases()


@pytest.mark.parametrize("a", [pytest.param(m, id=name) for name, m, _ in REPEATED])
def test_eigh_with_repeated_eigenvalues(a: torch.Tensor) -> None:
    n = a.shape[0]
    result = lm.eigh(a)
    w, v = result.params["eigenvalues"], result.params["eigenvectors"]
    tol = 1e3 * n * EPS
    scale = max(float(a.abs().max()), 1.0)
    assert float((w - torch.linalg.eigvalsh(a)).abs().max()) <= tol * scale
    assert orth_error(v) <= tol
    assert float(((v * w) @ v.T - a).norm()) <= tol * scale
    assert result.success, result.message


@pytest.mark.parametrize("a", [pytest.param(m, id=name) for name, m, _ in REPEATED])
def test_svd_with_repeated_singular_values(a: torch.Tensor) -> None:
    n = a.shape[0]
    result = lm.svd(a)
    u, s, vh = result.params["U"], result.params["S"], result.params["Vh"]
    tol = 1e3 * n * EPS
    scale = max(float(a.abs().max()), 1.0)
    assert result.success, result.message
    assert float((s - torch.linalg.svdvals(a)).abs().max()) <= tol * scale
    assert orth_error(u) <= tol and orth_error(vh.T) <= tol
    assert float(((u * s) @ vh - a).norm()) <= tol * scale


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (9, 1), (1, 9)])
def test_svd_of_rectangular_matrices_with_repeated_and_zero_singular_values(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    r = min(shape)
    sv = torch.tensor([2.0, 2.0, 0.0, 0.0][:r] if r > 1 else [2.0], dtype=F64)
    m = with_singular_values(*shape, sv, gen)
    result = lm.svd(m)
    u, s, vh = result.params["U"], result.params["S"], result.params["Vh"]
    assert result.success, result.message
    assert torch.allclose(s, torch.linalg.svdvals(m), rtol=0, atol=1e-13)
    assert orth_error(u) <= 1e-13 and orth_error(vh.T) <= 1e-13
    assert rel((u * s) @ vh, m) <= 1e-13


# -- batches equal one-by-one -----------------------------------------------------------------------------------------


def batch_of(b: int, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([with_singular_values(n, n, spectrum(n, 1.0 + i, gen), gen) for i in range(b)])


@pytest.mark.parametrize("n", [1, 3, 8])
def test_batched_inverse_equals_one_by_one(n: int) -> None:
    ms = batch_of(4, n, seed=n)
    batch = lm.inverse(ms)
    assert batch.success and len(batch.statuses) == 4
    assert batch.params.shape == (4, n, n)
    assert batch.steps.shape == (4,) and batch.loss.shape == (4,)
    for i in range(4):
        single = lm.inverse(ms[i])
        assert single.success
        assert rel(batch.params[i], single.params) <= 1e-12


@pytest.mark.parametrize("n", [1, 4, 7])
def test_batched_eigh_equals_one_by_one(n: int) -> None:
    ms = batch_of(3, n, seed=10 + n)
    sym = ms + ms.transpose(-1, -2)
    batch = lm.eigh(sym)
    assert batch.success and len(batch.statuses) == 3
    for i in range(3):
        single = lm.eigh(sym[i])
        for key in ("eigenvalues", "eigenvectors"):
            assert rel(batch.params[key][i], single.params[key]) <= 1e-12


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (6, 6)])
def test_batched_svd_equals_one_by_one(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    ms = torch.randn(3, *shape, generator=gen, dtype=F64)
    batch = lm.svd(ms)
    assert batch.success and len(batch.statuses) == 3
    for i in range(3):
        single = lm.svd(ms[i])
        for key in ("U", "S", "Vh"):
            assert rel(batch.params[key][i], single.params[key]) <= 1e-12


def test_batched_inverse_reports_each_problem_own_status() -> None:
    ms = torch.stack([2.0 * torch.eye(3, dtype=F64), torch.ones(3, 3, dtype=F64)])
    result = lm.inverse(ms)
    assert not result.success
    assert result.statuses[1] is Status.RANK_DEFICIENT
    assert result.statuses[0].success


def test_engine_solvers_take_one_matrix_at_a_time_for_spectral_functions() -> None:
    ms = torch.eye(3, dtype=F64).expand(2, 3, 3)
    with pytest.raises(ValueError, match="one matrix at a time"):
        lm.eigh(ms, solver="lm")
    with pytest.raises(ValueError, match="one matrix at a time"):
        lm.svd(ms, solver="lbfgs")


# -- engine solvers on the same losses --------------------------------------------------------------------------------


def seed_matrix() -> torch.Tensor:
    return inverse_matrices(F64)["random 4x4"]


def relative_residual_history(result: lossfit.FitResult, n: int) -> torch.Tensor:
    """||X M - I||_F / ||I||_F per history row, from the loss (the MSE of X M - I)."""
    assert result.history is not None
    return (n * result.history.loss).clamp_min(0).sqrt()


def test_inverse_by_the_posts_gradient_descent_reaches_1e_6() -> None:
    m = seed_matrix()
    result = lm.inverse(m, solver="gd", lr=0.9, momentum=0.9, init="random", seed=SEED)
    assert result.success, result.message
    assert result.solver.name == "gd"
    history = relative_residual_history(result, 4)
    assert len(history) == result.num_steps + 1
    # Row 0 is the seed's random start.
    x0 = torch.rand(4, 4, generator=torch.Generator().manual_seed(SEED), dtype=F64)
    assert float(result.history.loss[0]) == pytest.approx(float(((x0 @ m - torch.eye(4, dtype=F64)) ** 2).mean()))
    reached = (history <= 1e-6).nonzero()
    assert reached.numel() > 0, f"best relative residual {float(history.min()):.3g}"
    final = float((result.params @ m - torch.eye(4, dtype=F64)).norm() / 2.0)
    assert final == pytest.approx(float(history[-1]), rel=1e-6)
    assert final <= 1e-6
    assert rel(result.params, torch.linalg.inv(m)) <= 1e-5


@pytest.mark.parametrize("solver", ["lm", "gauss-newton", "lbfgs"])
def test_inverse_by_engine_solvers(solver: str) -> None:
    m = seed_matrix()
    result = lm.inverse(m, solver=solver)
    assert result.success, result.message
    assert result.solver.name == solver
    assert result.reference is not None and result.reference["relative_residual"] <= 1e-8
    assert rel(result.params, torch.linalg.inv(m)) <= 1e-7
    assert float(relative_residual_history(result, 4)[-1]) <= 1e-8


def test_eigh_by_levenberg_marquardt() -> None:
    gen = torch.Generator().manual_seed(5)
    a = torch.randn(5, 5, generator=gen, dtype=F64)
    a = a + a.T
    result = lm.eigh(a, solver="lm")
    w, v = result.params["eigenvalues"], result.params["eigenvectors"]
    assert result.success, result.message
    assert result.solver.name == "lm"
    assert torch.allclose(w, torch.linalg.eigvalsh(a), rtol=0, atol=1e-10)
    assert orth_error(v) <= 1e-12
    assert rel((v * w) @ v.T, a) <= 1e-10


def test_svd_by_lbfgs() -> None:
    gen = torch.Generator().manual_seed(6)
    m = torch.randn(5, 4, generator=gen, dtype=F64)
    result = lm.svd(m, solver="lbfgs")
    u, s, vh = result.params["U"], result.params["S"], result.params["Vh"]
    assert result.success, result.message
    assert result.solver.name == "lbfgs"
    assert torch.allclose(s, torch.linalg.svdvals(m), rtol=0, atol=1e-10)
    assert orth_error(vh.T) <= 1e-12
    assert orth_error(u) <= 1e-8
    assert rel((u * s) @ vh, m) <= 1e-8


@pytest.mark.parametrize("negative_determinant", [False, True])
def test_polar_by_levenberg_marquardt(negative_determinant: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    m = torch.randn(4, 4, generator=gen, dtype=F64)
    if (float(torch.linalg.det(m)) < 0) != negative_determinant:
        m[0] = -m[0]
    result = lm.polar(m, solver="lm")
    u, p = result.params["U"], result.params["P"]
    w, _, vh = torch.linalg.svd(m)
    assert result.success, result.message
    assert result.solver.name == "lm"
    assert orth_error(u) <= 1e-12
    # The loss ||U - M||^2 does not vanish, so ftol=1e-12 leaves U good to about sqrt(1e-12).
    assert rel(u, w @ vh) <= 1e-5
    assert rel(u @ p, m) <= 1e-5
    assert float(torch.linalg.eigvalsh(p).min()) >= -1e-10


# -- the post's experiment ---------------------------------------------------------------------------------------------


def test_the_posts_experiment_is_reproduced_and_auto_is_far_faster() -> None:
    runs = compare_inverse_solvers(("gd",), 10_000, F64)
    assert [r.matrix for r in runs] == ["random 4x4", "diag(1,2,3,4)"]
    for run in runs:
        steps = run.steps_to[1e-6]
        assert steps is not None and 200 <= steps <= 1000, (run.matrix, steps)
        assert float(run.relative_residual[steps]) <= 1e-6 < float(run.relative_residual[steps - 1])
        assert run.seconds_to[1e-6] is not None
    fast = compare_inverse_solvers(("auto",), 10_000, F64)
    for run in fast:
        steps = run.steps_to[1e-6]
        assert steps is not None and steps < 30, (run.matrix, steps)
        assert run.result.success


# -- bad input --------------------------------------------------------------------------------------------------------

EYE = torch.eye(3, dtype=F64)
NAN = torch.tensor([[1.0, float("nan")], [0.0, 1.0]], dtype=F64)
INF = np.array([[1.0, np.inf], [0.0, 1.0]])
STRINGS = np.array([["a", "b"], ["c", "d"]])
OBJECTS = np.array([[1.0, None], [2.0, 3.0]], dtype=object)

BAD_INPUT: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("inverse-non-square", lambda: lm.inverse(torch.ones(2, 3)), ValueError, "`m`"),
    ("inverse-nan", lambda: lm.inverse(NAN), ValueError, "`m`"),
    ("inverse-inf", lambda: lm.inverse(INF), ValueError, "`m`"),
    ("inverse-empty", lambda: lm.inverse(torch.zeros(0, 0)), ValueError, "`m`"),
    ("inverse-empty-list", lambda: lm.inverse([]), ValueError, "`m`"),
    ("inverse-1d", lambda: lm.inverse(torch.ones(3)), ValueError, "`m`"),
    ("inverse-4d", lambda: lm.inverse(torch.ones(1, 1, 2, 2)), ValueError, "`m`"),
    ("inverse-string", lambda: lm.inverse("abc"), TypeError, "`m`"),
    ("inverse-string-array", lambda: lm.inverse(STRINGS), TypeError, "`m`"),
    ("inverse-object-array", lambda: lm.inverse(OBJECTS), TypeError, "`m`"),
    ("inverse-none", lambda: lm.inverse(None), TypeError, "`m`"),
    ("inverse-ragged", lambda: lm.inverse([[1.0, 2.0], [3.0]]), TypeError, "`m`"),
    ("inverse-complex", lambda: lm.inverse(torch.eye(2, dtype=torch.complex128)), TypeError, "`m`"),
    ("pinv-1d", lambda: lm.pinv([1.0, 2.0]), ValueError, "`m`"),
    ("pinv-nan", lambda: lm.pinv([[1.0, float("nan")]]), ValueError, "`m`"),
    ("pinv-empty", lambda: lm.pinv(torch.zeros(3, 0)), ValueError, "`m`"),
    ("svd-nan", lambda: lm.svd(NAN), ValueError, "`m`"),
    ("svd-string", lambda: lm.svd(STRINGS), TypeError, "`m`"),
    ("polar-non-square", lambda: lm.polar(torch.ones(2, 3)), ValueError, "`m`"),
    ("low-rank-inf", lambda: lm.low_rank(INF, 1), ValueError, "`m`"),
    ("solve-non-square", lambda: lm.solve(torch.ones(2, 3), torch.ones(2)), ValueError, "`a`"),
    ("solve-a-string", lambda: lm.solve(STRINGS, [1.0, 2.0]), TypeError, "`a`"),
    ("solve-a-nan", lambda: lm.solve(NAN, [1.0, 2.0]), ValueError, "`a`"),
    ("solve-mismatched-vector", lambda: lm.solve(EYE, torch.ones(2)), ValueError, "`b`"),
    ("solve-mismatched-matrix", lambda: lm.solve(EYE, torch.ones(4, 2)), ValueError, "`b`"),
    ("solve-b-nan", lambda: lm.solve(torch.eye(2), [1.0, float("nan")]), ValueError, "`b`"),
    ("solve-b-empty", lambda: lm.solve(torch.eye(2), []), ValueError, "`b`"),
    ("solve-b-scalar", lambda: lm.solve(torch.eye(2), 3.0), ValueError, "`b`"),
    ("lstsq-mismatched", lambda: lm.lstsq(torch.ones(4, 2), torch.ones(3)), ValueError, "`b`"),
    ("lstsq-a-1d", lambda: lm.lstsq(torch.ones(4), torch.ones(4)), ValueError, "`a`"),
    ("eigh-non-symmetric", lambda: lm.eigh(torch.tensor([[1.0, 2.0], [0.0, 1.0]])), ValueError, "`a`"),
    ("eigh-non-square", lambda: lm.eigh(torch.ones(2, 3)), ValueError, "`a`"),
    ("eigh-nan", lambda: lm.eigh(NAN), ValueError, "`a`"),
    ("sqrtm-non-symmetric", lambda: lm.sqrtm(torch.tensor([[1.0, 2.0], [0.0, 1.0]])), ValueError, "`a`"),
    ("sqrtm-indefinite", lambda: lm.sqrtm(torch.tensor([[1.0, 2.0], [2.0, 1.0]])), ValueError, "`a`"),
    ("sqrtm-singular", lambda: lm.sqrtm(torch.ones(2, 2)), ValueError, "`a`"),
    ("svd-k-zero", lambda: lm.svd(torch.ones(3, 2), k=0), ValueError, "`k`"),
    ("svd-k-too-big", lambda: lm.svd(torch.ones(3, 2), k=3), ValueError, "`k`"),
    ("svd-k-float", lambda: lm.svd(torch.ones(3, 2), k=1.0), ValueError, "`k`"),
    ("svd-k-bool", lambda: lm.svd(torch.ones(3, 2), k=True), ValueError, "`k`"),
    ("low-rank-k-zero", lambda: lm.low_rank(torch.ones(3, 2), 0), ValueError, "`k`"),
    ("low-rank-k-too-big", lambda: lm.low_rank(torch.ones(3, 2), 3), ValueError, "`k`"),
    ("low-rank-k-string", lambda: lm.low_rank(torch.ones(3, 2), "2"), ValueError, "`k`"),
    ("init-unknown", lambda: lm.inverse(EYE, solver="gd", init="bogus"), ValueError, "`init`"),
    ("init-wrong-shape", lambda: lm.inverse(EYE, solver="gd", init=torch.zeros(2, 2)), ValueError, "`init`"),
]


@pytest.mark.parametrize(("call", "error", "name"), [c[1:] for c in BAD_INPUT], ids=[c[0] for c in BAD_INPUT])
def test_bad_input_raises_naming_the_argument(call: Callable[[], Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error) as info:
        call()
    assert name in str(info.value)


UNKNOWN_SOLVER: list[tuple[str, Callable[[], Any]]] = [
    ("inverse", lambda: lm.inverse(EYE, solver="nonsense")),
    ("pinv", lambda: lm.pinv(EYE, solver="nonsense")),
    ("solve", lambda: lm.solve(EYE, torch.ones(3), solver="nonsense")),
    ("lstsq", lambda: lm.lstsq(EYE, torch.ones(3), solver="nonsense")),
    ("svd", lambda: lm.svd(EYE, solver="nonsense")),
    ("eigh", lambda: lm.eigh(EYE, solver="nonsense")),
    ("polar", lambda: lm.polar(EYE, solver="nonsense")),
    ("sqrtm", lambda: lm.sqrtm(EYE, solver="nonsense")),
    ("low_rank", lambda: lm.low_rank(EYE, 1, solver="nonsense")),
]


@pytest.mark.parametrize("call", [c[1] for c in UNKNOWN_SOLVER], ids=[c[0] for c in UNKNOWN_SOLVER])
def test_unknown_solver_is_a_value_error_naming_solver(call: Callable[[], Any]) -> None:
    with pytest.raises(ValueError, match=r"`solver`.*'nonsense'"):
        call()


@pytest.mark.parametrize(
    "b", [["a", "b"], np.array([1.0, None], dtype=object), None], ids=["strings", "objects", "none"]
)
@pytest.mark.parametrize("function", [lm.solve, lm.lstsq], ids=["solve", "lstsq"])
def test_non_numeric_right_side_is_a_type_error_naming_b(function: Callable[..., Any], b: Any) -> None:
    with pytest.raises(TypeError, match="`b`"):
        function(torch.eye(2, dtype=F64), b)


@pytest.mark.parametrize(
    "m",
    [[[2, 0], [0, 4]], np.array([[2, 0], [0, 4]], dtype=np.int32), torch.tensor([[2, 0], [0, 4]])],
    ids=["list", "numpy-int32", "torch-int64"],
)
def test_integer_input_is_converted_to_float64(m: Any) -> None:
    result = lm.inverse(m)
    assert result.success
    assert result.params.dtype == F64
    assert torch.allclose(result.params, torch.tensor([[0.5, 0.0], [0.0, 0.25]], dtype=F64), rtol=0, atol=1e-15)
    assert lm.eigh([[2, 1], [1, 2]]).params["eigenvalues"].dtype == F64


def test_inputs_are_not_modified() -> None:
    m = torch.tensor([[4.0, 1.0], [2.0, 3.0]], dtype=F64)
    before = m.clone()
    lm.inverse(m)
    lm.svd(m)
    lm.polar(m)
    lm.eigh(m + m.T)
    assert torch.equal(m, before)


# -- gradients of the constraint transforms ---------------------------------------------------------------------------

CONSTRAINTS: list[tuple[str, Any, Callable[[torch.Generator], torch.Tensor]]] = [
    ("bounds-two-sided", Bounds(-1.0, 2.0), lambda g: -1.0 + 3.0 * torch.rand(6, generator=g, dtype=F64)),
    ("bounds-lower", Bounds(0.5, None), lambda g: 0.5 + 3.0 * torch.rand(6, generator=g, dtype=F64)),
    ("bounds-upper", Bounds(None, 3.0), lambda g: 3.0 - 3.0 * torch.rand(6, generator=g, dtype=F64)),
    (
        "bounds-mixed",
        Bounds(torch.tensor([-1.0, 0.0, -math.inf], dtype=F64), torch.tensor([1.0, math.inf, 5.0], dtype=F64)),
        lambda g: torch.tensor([0.3, 2.0, -7.0], dtype=F64),
    ),
    ("positive", Positive(), lambda g: 0.1 + torch.rand(5, generator=g, dtype=F64)),
    ("symmetric", Symmetric(), lambda g: (lambda a: a + a.T)(torch.randn(4, 4, generator=g, dtype=F64))),
    (
        "spd",
        SPD(),
        lambda g: (lambda a: a @ a.T + 4 * torch.eye(4, dtype=F64))(torch.randn(4, 4, generator=g, dtype=F64)),
    ),
    ("orthogonal", Orthogonal(), lambda g: orthogonal(4, g)),
]


@pytest.mark.parametrize(("constraint", "feasible"), [c[1:] for c in CONSTRAINTS], ids=[c[0] for c in CONSTRAINTS])
def test_constraint_forward_maps_pass_gradcheck(constraint: Any, feasible: Callable[[torch.Generator], Any]) -> None:
    gen = torch.Generator().manual_seed(3)
    p = feasible(gen)
    u, aux = constraint.inverse(p)
    # Away from the start too: a random unconstrained point of the same size.
    for point in (u, u + 0.3 * torch.randn(u.shape, generator=gen, dtype=F64)):
        x = point.detach().clone().requires_grad_(True)
        assert torch.autograd.gradcheck(lambda v: constraint.forward(v, aux), (x,), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize(("constraint", "feasible"), [c[1:] for c in CONSTRAINTS], ids=[c[0] for c in CONSTRAINTS])
def test_constraint_round_trip_forward_of_inverse_is_identity(
    constraint: Any, feasible: Callable[[torch.Generator], Any]
) -> None:
    for seed in range(3):
        p = feasible(torch.Generator().manual_seed(seed))
        constraint.check(p, "p")  # feasible starts pass the check
        u, aux = constraint.inverse(p)
        back = constraint.forward(u, aux)
        assert back.shape == p.shape
        assert torch.allclose(back, p, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("constraint", "u"),
    [
        (Bounds(-1.0, 2.0), torch.linspace(-1.5, 1.5, 7, dtype=F64)),  # inside asin's principal range
        (Bounds(0.5, None), torch.linspace(0.0, 4.0, 7, dtype=F64)),
        (Bounds(None, 3.0), torch.linspace(0.0, 4.0, 7, dtype=F64)),
        (Positive(), torch.linspace(-3.0, 3.0, 7, dtype=F64)),
    ],
    ids=["bounds-two-sided", "bounds-lower", "bounds-upper", "positive"],
)
def test_constraint_round_trip_inverse_of_forward_is_identity(constraint: Any, u: torch.Tensor) -> None:
    aux = u.new_zeros(0)
    p = constraint.forward(u, aux)
    back, _ = constraint.inverse(p)
    assert torch.allclose(back, u, rtol=1e-9, atol=1e-9)


def test_constraint_forward_values_are_feasible() -> None:
    u = torch.linspace(-50.0, 50.0, 101, dtype=F64)
    none = u.new_zeros(0)
    two = Bounds(-1.0, 2.0).forward(u, none)
    assert bool(((two >= -1.0) & (two <= 2.0)).all())
    assert bool((Bounds(0.5, None).forward(u, none) >= 0.5).all())
    assert bool((Bounds(None, 3.0).forward(u, none) <= 3.0).all())
    assert bool((Positive().forward(u, none) > 0).all())
    gen = torch.Generator().manual_seed(0)
    aux = torch.zeros(4, dtype=F64)
    s = Symmetric().forward(torch.randn(10, generator=gen, dtype=F64), aux)
    assert torch.equal(s, s.T)
    spd = SPD().forward(torch.randn(10, generator=gen, dtype=F64), aux)
    assert torch.allclose(spd, spd.T) and float(torch.linalg.eigvalsh(spd).min()) > 0
    q0 = orthogonal(4, gen)
    q = Orthogonal().forward(torch.randn(6, generator=gen, dtype=F64), q0)
    assert orth_error(q) <= 1e-13
    assert float(torch.linalg.det(q)) == pytest.approx(float(torch.linalg.det(q0)), rel=1e-12)


@pytest.mark.parametrize(
    ("constraint", "p"),
    [
        (Bounds(2.0, 1.0), torch.tensor([1.5], dtype=F64)),
        (Bounds(0.0, 1.0), torch.tensor([1.5], dtype=F64)),
        (Positive(), torch.tensor([1.0, 0.0], dtype=F64)),
        (SPD(), torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)),
        (Symmetric(), torch.ones(2, 3, dtype=F64)),
        (Orthogonal(), torch.ones(3, dtype=F64)),
    ],
    ids=["bounds-crossed", "bounds-outside", "positive-zero", "spd-indefinite", "symmetric-non-square", "orth-1d"],
)
def test_constraint_check_rejects_infeasible_starts_naming_the_argument(constraint: Any, p: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="`start`"):
        constraint.check(p, "start")
