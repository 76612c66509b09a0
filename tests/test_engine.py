"""The engine's contract: closed forms agreed with, batches equal to one-by-one, constraints, stopping, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.optimize
import torch

import lossfit
from lossfit import Status

F64 = torch.float64


def exp_curve(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return p[0] * (1 - torch.exp(-p[1] * x)) - y


def curve_batch(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 3, 20, dtype=F64).expand(b, 20).contiguous()
    a = 1 + torch.rand(b, 1, generator=g, dtype=F64)
    k = 0.5 + 2 * torch.rand(b, 1, generator=g, dtype=F64)
    y = a * (1 - torch.exp(-k * x)) + 0.01 * torch.randn(b, 20, generator=g, dtype=F64)
    return x, y, torch.cat([a, k], dim=1)


# -- closed forms -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["lm", "gauss-newton", "krylov", "lbfgs"])
def test_linear_least_squares_matches_the_normal_equations(solver: str) -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(30, 4, generator=g, dtype=F64)
    y = torch.randn(30, generator=g, dtype=F64)
    result = lossfit.least_squares(lambda p: a @ p - y, torch.zeros(4, dtype=F64), solver=solver)
    exact = torch.linalg.solve(a.T @ a, a.T @ y)
    assert result.success, result.message
    # L-BFGS stops on a relative loss change of 1e-12, which leaves the parameters good to about sqrt(1e-12).
    rtol = 1e-6 if solver == "lbfgs" else 1e-8
    assert torch.allclose(result.params, exact, rtol=rtol, atol=rtol * 1e-2)


def test_covariance_and_standard_errors_match_the_closed_form() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.randn(50, 3, generator=g, dtype=F64)
    y = a @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.1 * torch.randn(50, generator=g, dtype=F64)
    result = lossfit.least_squares(lambda p: a @ p - y, torch.zeros(3, dtype=F64))
    residual = a @ result.params - y
    s2 = float(residual @ residual) / (50 - 3)
    expected = s2 * torch.linalg.inv(a.T @ a)
    assert result.covariance is not None and result.stderr is not None
    assert torch.allclose(result.covariance, expected, rtol=1e-8)
    assert torch.allclose(result.stderr, expected.diagonal().sqrt(), rtol=1e-8)


def test_nonlinear_fit_agrees_with_scipy() -> None:
    """Both against the polished minimum (Gauss-Newton steps with the written Jacobian from scipy's answer until
    they stop moving), not against each other's stopping point: scipy's ``lm`` stops 1.3e-9 (relative) short of it
    on this problem even with every tolerance at 1e-15 (scipy 1.15), lossfit's default 1.2e-10."""
    x, y, _ = curve_batch(1, seed=3)
    x, y = x[0].numpy(), y[0].numpy()

    def residual(p: np.ndarray) -> np.ndarray:
        return p[0] * (1 - np.exp(-p[1] * x)) - y

    def jacobian(p: np.ndarray) -> np.ndarray:
        return np.stack([1 - np.exp(-p[1] * x), p[0] * x * np.exp(-p[1] * x)], axis=1)

    ours = lossfit.least_squares(exp_curve, torch.ones(2, dtype=F64), args=(torch.from_numpy(x), torch.from_numpy(y)))
    theirs = scipy.optimize.least_squares(residual, np.ones(2), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15)
    best = theirs.x.copy()
    for _ in range(5):
        best = best + np.linalg.lstsq(jacobian(best), -residual(best), rcond=None)[0]
    assert ours.success and theirs.success
    np.testing.assert_allclose(ours.params.numpy(), best, rtol=1e-9)
    np.testing.assert_allclose(theirs.x, best, rtol=1e-8)


@pytest.mark.parametrize("loss", ["huber", "soft_l1", "cauchy", "arctan"])
def test_robust_losses_agree_with_scipy(loss: str) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.linspace(0, 1, 40, dtype=F64)
    y = 2 * x + 1 + 0.05 * torch.randn(40, generator=g, dtype=F64)
    y[::7] += 5.0  # outliers
    ours = lossfit.least_squares(
        lambda p: p[0] * x + p[1] - y, torch.zeros(2, dtype=F64), loss=loss, f_scale=0.1, solver="lm"
    )
    theirs = scipy.optimize.least_squares(
        lambda p: p[0] * x.numpy() + p[1] - y.numpy(),
        np.zeros(2),
        loss=loss,
        f_scale=0.1,
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    assert ours.success, ours.message
    np.testing.assert_allclose(ours.params.numpy(), theirs.x, rtol=1e-6, atol=1e-8)
    assert float(ours.loss) == pytest.approx(theirs.cost, rel=1e-8)


def test_robust_loss_recovers_the_line_that_plain_least_squares_misses() -> None:
    x = torch.linspace(0, 1, 30, dtype=F64)
    y = 3 * x - 1
    y[[3, 11, 19, 27]] += torch.tensor([8.0, -6.0, 7.0, 9.0], dtype=F64)
    plain = lossfit.least_squares(lambda p: p[0] * x + p[1] - y, torch.zeros(2, dtype=F64))
    robust = lossfit.least_squares(lambda p: p[0] * x + p[1] - y, torch.zeros(2, dtype=F64), loss="cauchy", f_scale=0.1)
    truth = torch.tensor([3.0, -1.0], dtype=F64)
    assert (robust.params - truth).abs().max() < 1e-3
    assert (plain.params - truth).abs().max() > 0.5


# -- batches ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["lm", "gauss-newton", "krylov", "lbfgs", "adam"])
def test_batch_equals_one_by_one(solver: str) -> None:
    x, y, _ = curve_batch(6, seed=5)
    options = {"lr": 0.05, "max_steps": 400} if solver == "adam" else {}
    start = torch.ones(6, 2, dtype=F64)
    batch = lossfit.least_squares(exp_curve, start, args=(x, y), batch=True, solver=solver, **options)
    for i in range(6):
        single = lossfit.least_squares(exp_curve, start[i], args=(x[i], y[i]), solver=solver, **options)
        assert batch.statuses[i] is single.status
        assert int(batch.steps[i]) == single.num_steps
        # The dense solvers take a single problem's Jacobian by reverse mode and a batch's by forward mode: the two
        # differ in their last bits, and the answers by what the stopping rules allow (ftol 1e-12 on the loss puts
        # the parameters within about 1e-6 of the minimiser; here they agree to a few 1e-9).
        rtol = 1e-7 if solver in ("lm", "gauss-newton") else 1e-10
        torch.testing.assert_close(batch.params[i], single.params, rtol=rtol, atol=1e-12)
        torch.testing.assert_close(batch.loss[i], single.loss, rtol=1e-10, atol=1e-20)


def test_batch_problems_stop_on_their_own() -> None:
    x, y, truth = curve_batch(200, seed=6)
    start = torch.ones(200, 2, dtype=F64)
    start[0] = truth[0]  # one problem starts next to its answer
    result = lossfit.least_squares(exp_curve, start, args=(x, y), batch=True)
    assert result.success
    assert int(result.steps.min()) < int(result.steps.max())
    assert result.history is not None and result.history.loss.shape == (result.num_steps + 1, 200)
    assert torch.isnan(result.history.loss[-1, int(result.steps.argmin())])
    assert (result.params - truth).abs().max() < 0.1


def test_batched_minimize_with_dict_parameters() -> None:
    centres = torch.tensor([[1.0, 2.0], [-3.0, 0.5], [0.0, 0.0]], dtype=F64)

    def loss(p: dict[str, torch.Tensor], c: torch.Tensor) -> torch.Tensor:
        return ((p["w"] - c) ** 2).sum() + (p["s"] - 2.0) ** 2

    result = lossfit.minimize(
        loss, {"w": torch.zeros(3, 2, dtype=F64), "s": torch.ones(3, dtype=F64)}, args=(centres,), batch=True
    )
    assert result.success and len(result.statuses) == 3
    torch.testing.assert_close(result.params["w"], centres)
    torch.testing.assert_close(result.params["s"], torch.full((3,), 2.0, dtype=F64))


def test_solver_states_keep_and_choose_rows_in_every_field() -> None:
    # The driver drops finished problems with State.take; dense solvers keep accepted trials with State.where. Both
    # must act on every per-problem tensor, also those inside tuple and dict fields.
    from lossfit.engine.solvers.first_order import FirstOrderState
    from lossfit.engine.solvers.iteration import IterationState

    g = torch.Generator().manual_seed(5)
    f, gm = torch.rand(4, generator=g, dtype=F64), torch.rand(4, generator=g, dtype=F64)
    grad, moment = torch.rand(4, 3, generator=g, dtype=F64), torch.rand(4, 3, generator=g, dtype=F64)
    state = FirstOrderState(f=f, gm=gm, g=grad, f0=f + 1, moments=(moment,))
    keep = torch.tensor([True, False, True, True])
    kept = state.take(keep)
    torch.testing.assert_close(kept.moments[0], moment[keep], rtol=0, atol=0)
    torch.testing.assert_close(kept.f0, (f + 1)[keep], rtol=0, atol=0)
    carried = IterationState(f=f, gm=gm, carry={"residual": grad}).take(torch.tensor([3, 0]))
    torch.testing.assert_close(carried.carry["residual"], grad[[3, 0]], rtol=0, atol=0)
    assert carried.current is None
    trial = FirstOrderState(f=-f, gm=-gm, g=-grad, f0=f + 1, moments=())
    chosen = state.where(keep, trial)
    torch.testing.assert_close(chosen.f, torch.where(keep, -f, f), rtol=0, atol=0)
    torch.testing.assert_close(chosen.g, torch.where(keep[:, None], -grad, grad), rtol=0, atol=0)
    assert chosen.moments[0] is moment  # a field the trial does not carry stays as it was


# -- constraints ------------------------------------------------------------------------------------------------------


def test_bounds_hold_and_the_bounded_optimum_is_found() -> None:
    result = lossfit.least_squares(lambda p: p - 3.0, torch.tensor([0.5, 0.5], dtype=F64), bounds=(0.0, 1.0))
    torch.testing.assert_close(result.params, torch.ones(2, dtype=F64), atol=1e-6, rtol=0)
    assert bool(((result.params >= 0) & (result.params <= 1)).all())


def test_positive_constraint() -> None:
    result = lossfit.minimize(lambda p: (p - 2.0) ** 2 + 1 / p, torch.tensor(5.0, dtype=F64), constraints="positive")
    assert result.success and float(result.params) > 0
    # d/dp: 2(p - 2) - 1/p^2 = 0
    p = float(result.params)
    assert 2 * (p - 2) - 1 / p**2 == pytest.approx(0.0, abs=1e-7)


def test_orthogonal_constraint_solves_procrustes() -> None:
    g = torch.Generator().manual_seed(7)
    target, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=F64))
    if torch.linalg.det(target) < 0:
        target[:, 0] = -target[:, 0]
    noisy = target + 0.01 * torch.randn(3, 3, generator=g, dtype=F64)
    result = lossfit.least_squares(lambda q: q - noisy, torch.eye(3, dtype=F64), constraints="orthogonal")
    u, _, vh = torch.linalg.svd(noisy)
    assert result.success
    torch.testing.assert_close(result.params, u @ vh, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(result.params.T @ result.params, torch.eye(3, dtype=F64), rtol=0, atol=1e-12)


def test_spd_and_symmetric_constraints() -> None:
    target = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    spd = lossfit.least_squares(lambda s: s - target, torch.eye(2, dtype=F64), constraints="spd")
    sym = lossfit.least_squares(lambda s: s - target, torch.zeros(2, 2, dtype=F64), constraints="symmetric")
    assert spd.success and sym.success
    torch.testing.assert_close(spd.params, target)
    torch.testing.assert_close(sym.params, target)


def test_constraints_per_entry_of_a_dict() -> None:
    result = lossfit.minimize(
        lambda p: (p["a"] - 2) ** 2 + (p["b"] + 1) ** 2,
        {"a": torch.tensor(1.0, dtype=F64), "b": torch.tensor(0.0, dtype=F64)},
        constraints={"a": "positive", "b": (0.0, 5.0)},
    )
    assert float(result.params["a"]) == pytest.approx(2.0, abs=1e-6)
    assert float(result.params["b"]) == pytest.approx(0.0, abs=1e-6)


# -- stopping, statuses, results --------------------------------------------------------------------------------------


def test_max_steps_and_max_time_are_reported_as_failures() -> None:
    rosen = lambda p: (1 - p[0]) ** 2 + 100 * (p[1] - p[0] ** 2) ** 2  # noqa: E731
    start = torch.tensor([-1.2, 1.0], dtype=F64)
    steps = lossfit.minimize(rosen, start, solver="gd", lr=1e-4, max_steps=5)
    assert steps.status is Status.MAX_STEPS and not steps.success and steps.num_steps == 5
    timed = lossfit.minimize(rosen, start, solver="gd", lr=1e-4, max_steps=10**9, max_time=0.05)
    assert timed.status is Status.MAX_TIME and not timed.success


def test_a_solver_that_diverges_says_so() -> None:
    result = lossfit.minimize(lambda p: (p**2).sum(), torch.ones(2, dtype=F64), solver="gd", lr=10.0, max_steps=2000)
    assert result.status is Status.NONFINITE and not result.success


def test_a_stopped_solver_far_from_a_minimum_is_not_a_success() -> None:
    # A huge ftol stops gradient descent at once; the check after convergence must catch the large gradient.
    result = lossfit.minimize(
        lambda p: ((p - 5) ** 2).sum(), torch.zeros(2, dtype=F64), solver="lbfgs", ftol=0.9, max_steps=1
    )
    assert not result.success


def test_singular_jacobian_at_the_answer_is_a_warning() -> None:
    x = torch.linspace(0, 1, 10, dtype=F64)
    # p[0] and p[1] only enter as their sum: not identifiable.
    result = lossfit.least_squares(lambda p: (p[0] + p[1]) * x - 2 * x, torch.zeros(2, dtype=F64))
    assert result.status is Status.SINGULAR and not result.success
    assert float(result.loss) < 1e-20


def test_results_are_json_safe_and_summarised() -> None:
    result = lossfit.least_squares(lambda p: p - torch.tensor([1.0, 2.0], dtype=F64), torch.zeros(2, dtype=F64))
    text = json.dumps(result.to_dict())
    data = json.loads(text)
    assert data["success"] is True and data["params"] == pytest.approx([1.0, 2.0])
    assert "converged" in result.summary()
    assert result.solver.name == "lm" and "Levenberg" in result.solver.reason


def test_history_starts_at_the_start_and_is_monotone_for_lm() -> None:
    x, y, _ = curve_batch(1, seed=8)
    result = lossfit.least_squares(exp_curve, torch.ones(2, dtype=F64), args=(x[0], y[0]))
    assert result.history is not None
    loss = result.history.loss
    assert len(result.history) == result.num_steps + 1
    assert float(loss[0]) == pytest.approx(float(0.5 * (exp_curve(torch.ones(2, dtype=F64), x[0], y[0]) ** 2).sum()))
    assert bool((loss[1:] <= loss[:-1]).all())


def test_same_inputs_give_the_same_result() -> None:
    x, y, _ = curve_batch(50, seed=9)
    first = lossfit.least_squares(exp_curve, torch.ones(50, 2, dtype=F64), args=(x, y), batch=True)
    second = lossfit.least_squares(exp_curve, torch.ones(50, 2, dtype=F64), args=(x, y), batch=True)
    assert torch.equal(first.params, second.params)


def test_inputs_are_not_modified() -> None:
    start = torch.ones(2, dtype=F64)
    lossfit.least_squares(lambda p: p - 3.0, start)
    assert torch.equal(start, torch.ones(2, dtype=F64))


def test_float32_data_stay_float32_and_float64_data_promote() -> None:
    single = lossfit.least_squares(lambda p: p - torch.tensor([1.0, 2.0]), torch.zeros(2))
    assert single.params.dtype == torch.float32 and single.success
    mixed = lossfit.least_squares(lambda p: p - torch.tensor([1.0, 2.0], dtype=F64), torch.zeros(2))
    assert mixed.params.dtype == F64


# -- gradients ---------------------------------------------------------------------------------------------------------


def test_check_gradient_accepts_autograd_and_catches_a_wrong_gradient() -> None:
    good = lossfit.check_gradient(lambda w: (torch.sin(w) * w**2).sum(), torch.tensor([0.3, -1.2]))
    assert good.ok and good.max_rel_error < 1e-7

    class WrongSquare(torch.autograd.Function):
        @staticmethod
        def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
            return x**2

        @staticmethod
        def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
            return grad * 3.0  # wrong on purpose

    bad = lossfit.check_gradient(lambda w: WrongSquare.apply(w).sum(), torch.tensor([1.0, 2.0]))
    assert not bad.ok and bad.max_abs_error > 0.5


def test_seed_002_gradient_by_hand() -> None:
    # w = 2, x = 3, target 1: loss = (w x - 1)^2, d/dw = 2 (w x - 1) x = 30.
    check = lossfit.check_gradient(lambda w: ((w * 3.0 - 1.0) ** 2).mean(), torch.tensor([2.0]))
    assert float(check.autograd[0]) == pytest.approx(30.0) and float(check.numeric[0]) == pytest.approx(30.0)


def test_robust_loss_weights_gradcheck() -> None:
    from lossfit.losses import ROBUST

    for name, rho in ROBUST.items():
        z = torch.tensor([0.3, 0.9, 2.5, 7.0], dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(rho, (z,)), name
        small = torch.tensor([1e-6], dtype=F64)
        assert float(rho(small)) == pytest.approx(1e-6, rel=1e-5), name


# -- a Jacobian given by the caller ------------------------------------------------------------------------------------


def exp_curve_jacobian(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    e = torch.exp(-p[1] * x)
    return torch.stack([1 - e, p[0] * x * e], dim=-1)


def test_a_jacobian_function_gives_the_autodiff_answer() -> None:
    x, y, _ = curve_batch(5, seed=11)
    start = torch.ones(5, 2, dtype=F64)
    auto = lossfit.least_squares(exp_curve, start, args=(x, y), batch=True)
    given = lossfit.least_squares(exp_curve, start, args=(x, y), batch=True, jac=exp_curve_jacobian)
    assert given.success, given.message
    assert given.statuses == auto.statuses and torch.equal(given.steps, auto.steps)
    torch.testing.assert_close(given.params, auto.params, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(given.covariance, auto.covariance, rtol=1e-9, atol=0.0)
    single = lossfit.least_squares(exp_curve, start[0], args=(x[0], y[0]), jac=exp_curve_jacobian)
    torch.testing.assert_close(single.params, auto.params[0], rtol=1e-12, atol=1e-14)


def test_a_constant_jacobian_for_linear_residuals() -> None:
    g = torch.Generator().manual_seed(12)
    a = torch.randn(4, 30, 3, generator=g, dtype=F64)
    y = torch.randn(4, 30, generator=g, dtype=F64)

    def residual(p: torch.Tensor, a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return a @ p - y

    start = torch.zeros(4, 3, dtype=F64)
    for loss in ("linear", "cauchy"):
        auto = lossfit.least_squares(residual, start, args=(a, y), batch=True, loss=loss)
        given = lossfit.least_squares(residual, start, args=(a, y), batch=True, loss=loss, jac=a)
        assert given.success, given.message
        torch.testing.assert_close(given.params, auto.params, rtol=1e-10, atol=1e-12)
        assert given.jacobian is not None and torch.equal(given.jacobian, a)
        if loss == "linear":
            exact = torch.linalg.solve(a.transpose(1, 2) @ a, a.transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
            torch.testing.assert_close(given.params, exact, rtol=1e-8, atol=1e-10)


def test_a_wrong_jacobian_is_refused_at_the_start() -> None:
    x, y, _ = curve_batch(1, seed=13)

    def wrong(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return 2 * exp_curve_jacobian(p, x, y)

    with pytest.raises(ValueError, match="`jac` disagrees"):
        lossfit.least_squares(exp_curve, torch.ones(2, dtype=F64), args=(x[0], y[0]), jac=wrong)
    # A constant claims linear residuals: the curve is not linear, so its Jacobian at the start is refused too.
    constant = exp_curve_jacobian(torch.ones(2, dtype=F64), x[0], y[0])
    with pytest.raises(ValueError, match="`jac` disagrees"):
        lossfit.least_squares(exp_curve, torch.ones(2, dtype=F64), args=(x[0], y[0]), jac=constant)


def test_a_jacobian_right_only_at_the_start_is_never_a_verified_answer() -> None:
    x, y, _ = curve_batch(1, seed=14)
    start = torch.ones(2, dtype=F64)
    frozen = exp_curve_jacobian(start, x[0], y[0])

    def stale(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return frozen  # the derivative at the start, returned everywhere

    result = lossfit.least_squares(exp_curve, start, args=(x[0], y[0]), jac=stale, max_steps=50)
    assert not result.success
    assert result.status in (Status.SUSPECT_GRADIENT, Status.MAX_STEPS, Status.STALLED)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"jac": "exact"}, TypeError, "jac"),
        ({"jac": torch.zeros(20, 3, dtype=F64)}, ValueError, "n = 2"),
        ({"jac": lambda p, x, y: torch.zeros(20, 3, dtype=F64)}, ValueError, "n = 2"),
        ({"jac": exp_curve_jacobian, "bounds": (0.0, 5.0)}, ValueError, "without constraints"),
    ],
)
def test_bad_jacobians_name_the_argument(kwargs: dict, error: type[Exception], words: str) -> None:
    x, y, _ = curve_batch(1, seed=15)
    with pytest.raises(error, match=words):
        lossfit.least_squares(exp_curve, torch.ones(2, dtype=F64), args=(x[0], y[0]), **kwargs)


def test_a_jacobian_needs_a_single_tensor_of_parameters() -> None:
    with pytest.raises(ValueError, match="one tensor"):
        lossfit.least_squares(
            lambda p: p["a"] - 1.0, {"a": torch.zeros(2, dtype=F64)}, jac=lambda p: torch.eye(2, dtype=F64)
        )


# -- robust steps, the answer's check ------------------------------------------------------------------------------


def test_written_robust_derivatives_equal_autograd() -> None:
    from lossfit.losses import ROBUST, robust_derivatives

    r = torch.tensor([0.0, 0.05, 0.3, 0.9, 1.5, 4.0, 30.0], dtype=F64)
    for name, rho in ROBUST.items():
        d1, d2, z = robust_derivatives(rho, r, 0.7)
        auto1, auto2, _ = robust_derivatives(lambda t, rho=rho: rho(t) * 1.0, r, 0.7)  # a callable: autograd
        torch.testing.assert_close(d1, auto1, rtol=1e-14, atol=0.0, msg=name)
        torch.testing.assert_close(d2, auto2, rtol=1e-12, atol=1e-300, msg=name)
        torch.testing.assert_close(z, (r / 0.7) ** 2)


def test_grouped_robust_fit_reaches_the_minimum_of_its_loss() -> None:
    """Newton-like robust steps (the loss's own curvature, clamped) converge to the robust cost's minimum."""
    g = torch.Generator().manual_seed(16)
    src = 10 * torch.rand(50, 2, generator=g, dtype=F64)
    shift = torch.tensor([1.5, -0.5], dtype=F64)
    dst = src + shift + 0.02 * torch.randn(50, 2, generator=g, dtype=F64)
    dst[:15] += 4 * torch.randn(15, 2, generator=g, dtype=F64)

    def residual(p: torch.Tensor) -> torch.Tensor:
        return (src + p - dst).reshape(-1)

    fit = lossfit.least_squares(
        residual, dst.median(0).values - src.median(0).values, loss="cauchy", f_scale=0.05, group=2
    )
    assert fit.success, fit.message

    def cost(p: torch.Tensor) -> torch.Tensor:
        length2 = ((src + p - dst) ** 2).sum(-1)
        return 0.5 * 0.05**2 * torch.log1p(length2 / 0.05**2).sum()

    # Polish with exact Newton steps on the cost itself: the fit must already sit at that minimum.
    polished = fit.params.clone()
    for _ in range(5):
        grad = torch.func.grad(cost)(polished)
        polished = polished - torch.linalg.solve(torch.func.hessian(cost)(polished), grad)
    torch.testing.assert_close(fit.params, polished, rtol=0.0, atol=1e-8)
    assert (fit.params - shift).abs().max() < 0.02


@pytest.mark.parametrize("cond", [10.0, 1e7])
def test_covariance_of_many_parameters_matches_the_closed_form(cond: float) -> None:
    """Well conditioned Jacobians take the Gram matrix's Cholesky factor, the others the SVD: both agree with it."""
    g = torch.Generator().manual_seed(17)
    q1, _ = torch.linalg.qr(torch.randn(60, 5, generator=g, dtype=F64))
    q2, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=F64))
    a = q1 @ torch.diag(torch.logspace(0, math.log10(cond), 5, dtype=F64)) @ q2
    y = a @ torch.arange(1.0, 6.0, dtype=F64) + 0.01 * torch.randn(60, generator=g, dtype=F64)
    result = lossfit.least_squares(lambda p: a @ p - y, torch.zeros(5, dtype=F64))
    residual = a @ result.params - y
    _, sv, vh = torch.linalg.svd(a, full_matrices=False)
    expected = float(residual @ residual) / 55 * (vh.T / sv**2) @ vh
    assert result.success and result.covariance is not None
    torch.testing.assert_close(result.covariance, expected, rtol=1e-7 * cond, atol=0.0)


def test_a_singular_jacobian_with_many_parameters_is_reported() -> None:
    g = torch.Generator().manual_seed(18)
    a = torch.randn(40, 4, generator=g, dtype=F64)
    a[:, 3] = a[:, 0] - 2 * a[:, 1]
    y = torch.randn(40, generator=g, dtype=F64)
    result = lossfit.least_squares(lambda p: a @ p - y, torch.zeros(4, dtype=F64), solver="lm")
    assert result.status is Status.SINGULAR
    assert result.covariance is not None and bool(torch.isnan(result.covariance).all())


def test_the_answer_s_jacobian_is_the_jacobian_at_the_answer() -> None:
    """The check reuses what the solver evaluated where each problem stopped: it must be the answer's own."""
    x, y, _ = curve_batch(40, seed=19)
    start = torch.ones(40, 2, dtype=F64)
    start[0] = torch.tensor([5.0, 0.1], dtype=F64)  # a long way round: problems stop at different steps
    result = lossfit.least_squares(exp_curve, start, args=(x, y), batch=True)
    assert result.success and int(result.steps.min()) < int(result.steps.max())
    exact = torch.stack([exp_curve_jacobian(p, xi, yi) for p, xi, yi in zip(result.params, x, y, strict=True)])
    torch.testing.assert_close(result.jacobian, exact, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(result.residuals, exp_curve(result.params.T, x.T, y.T).T, rtol=1e-12, atol=1e-14)


# -- bad input ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: lossfit.minimize("not callable", torch.zeros(2)), TypeError, "loss_fn"),
        (lambda: lossfit.least_squares(lambda p: p, "text"), TypeError, "params"),
        (lambda: lossfit.least_squares(lambda p: p, torch.tensor([1.0, math.nan])), ValueError, "finite"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(0)), ValueError, "params"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(2), solver="newton"), ValueError, "solver"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(2), loss="l3"), ValueError, "loss"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(2), f_scale=0), ValueError, "f_scale"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(2), ftol=-1), ValueError, "ftol"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(2), max_steps=1.5), ValueError, "max_steps"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(2), solver="lm", lr=0.1), TypeError, "options"),
        (lambda: lossfit.minimize(lambda p: p.sum(), torch.zeros(2), solver="lm"), ValueError, "least_squares"),
        (lambda: lossfit.minimize(lambda p: p, torch.zeros(2)), ValueError, "scalar"),
        (lambda: lossfit.least_squares(lambda p: p, torch.tensor(1.0), batch=True), ValueError, "batch"),
        (lambda: lossfit.least_squares(lambda p: p, torch.zeros(2), bounds=(1.0, 2.0)), ValueError, "bounds"),
        (lambda: lossfit.minimize(lambda p: p.sum(), torch.ones(2), constraints="round"), ValueError, "constraints"),
        (
            lambda: lossfit.least_squares(lambda p, a: p - a, torch.zeros(2, 1), args=(torch.zeros(3, 1),), batch=True),
            ValueError,
            "args",
        ),
    ],
)
def test_bad_input_names_the_argument(call: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        call()  # type: ignore[operator]


def test_non_finite_start_is_refused() -> None:
    with pytest.raises(lossfit.NonFiniteError, match="not finite at the starting point"):
        lossfit.least_squares(lambda p: torch.log(p), torch.tensor([-1.0], dtype=F64))


def test_the_stopping_rules_give_the_same_codes_on_python_scalars_as_on_tensors() -> None:
    """One problem on the CPU runs the driver's rules on Python numbers (lossfit.engine.scalars); every rule, with
    values drawn around its thresholds and the non-finite cases, gives the code the tensor path gives."""
    from lossfit.engine.loop import Stopping, _Measures, _slide, _stopping_codes

    g = torch.Generator().manual_seed(41)
    stop = Stopping(ftol=1e-8, xtol=1e-8, gtol=1e-10, max_steps=50, max_time=10.0)
    eps = torch.finfo(F64).eps
    specials = torch.tensor([0.0, 1e-8, 1e-10, 1.0, float("nan"), float("inf")], dtype=F64)
    seen = set()
    for _ in range(400):

        def draw() -> torch.Tensor:
            if bool(torch.rand(1, generator=g) < 0.3):
                return specials[torch.randint(len(specials), (1,), generator=g)]
            return 10 ** (torch.rand(1, generator=g, dtype=F64) * 20 - 16)

        f, gm, step_norm, x_norm, moved, predicted, actual = (draw() for _ in range(7))
        oldest = f * (1 + (torch.rand(1, generator=g, dtype=F64) - 0.5) * 4e-8)
        flags = [torch.rand(1, generator=g) < 0.5 for _ in range(3)]
        count = int(torch.randint(45, 55, (1,), generator=g))
        elapsed = float(torch.rand(1, generator=g)) * 20
        floor = (f * float(torch.rand(1, generator=g)) * 2, f / eps * float(torch.rand(1, generator=g)))
        tensors = _Measures(f, gm, flags[0], step_norm, flags[1], predicted, actual, flags[2], 2, x_norm, moved, oldest)
        scalars = _Measures(*(v.item() if isinstance(v, torch.Tensor) else v for v in vars(tensors).values()))
        on_tensors = _stopping_codes(stop, tensors, count, 3, elapsed, floor, eps)
        on_scalars = _stopping_codes(stop, scalars, count, 3, elapsed, (floor[0].item(), floor[1].item()), eps)
        assert isinstance(on_scalars, int)
        assert int(on_tensors) == on_scalars
        seen.add(on_scalars)
        window = [1.0, 2.0, 3.0]
        assert _slide(window, 4.0, False)[1] == [2.0, 3.0, 3.0]
        past = torch.tensor([window], dtype=F64)
        assert _slide(past, torch.tensor([4.0], dtype=F64), torch.tensor([True]))[1].tolist() == [[2.0, 3.0, 4.0]]
    assert len(seen) >= 6  # the draws reach most rules, not only one


def test_an_iteration_solver_result_is_an_ordinary_tensor() -> None:
    """Newton-Schulz runs in torch.inference_mode; what it returns can be changed in place and used with autograd."""
    g = torch.Generator().manual_seed(42)
    m = torch.randn(5, 5, generator=g, dtype=F64) + 5 * torch.eye(5, dtype=F64)
    result = lossfit.matrices.inverse(m)
    assert result.success
    assert not result.params.is_inference()
    assert result.history is not None and not result.history.loss.is_inference()
    w = torch.ones(5, 5, dtype=F64, requires_grad=True)
    (w * result.params).sum().backward()  # would refuse to save an inference tensor for backward
    torch.testing.assert_close(w.grad, result.params)
    result.params.add_(0.0)
    batch = lossfit.matrices.inverse(torch.stack([m, 2 * m]))
    torch.testing.assert_close(batch.params[0], result.params, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(batch.params[1], result.params / 2, rtol=1e-12, atol=1e-14)
