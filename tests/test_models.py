"""Model and curve fitting: references (scikit-learn, scipy), seed 001's lesson, statistics, bad input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch
from sklearn.linear_model import LinearRegression, LogisticRegression

import lossfit
from lossfit.models import t_quantile

F64 = torch.float64


def test_linear_regression_agrees_with_scikit_learn_and_the_normal_equations() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g, dtype=F64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=F64) + 0.3 + 0.1 * torch.randn(200, generator=g, dtype=F64)
    fit = lossfit.fit("linear", x, y)
    sk = LinearRegression().fit(x.numpy(), y.numpy())
    assert fit.success
    np.testing.assert_allclose(fit.params["weight"].numpy(), sk.coef_, rtol=1e-9)
    assert float(fit.params["bias"]) == pytest.approx(sk.intercept_, rel=1e-9)
    # Standard errors from the normal equations: s^2 (X1^T X1)^-1 with X1 = [x, 1].
    x1 = torch.cat([x, torch.ones(200, 1, dtype=F64)], dim=1)
    r = x1 @ torch.cat([fit.params["weight"], fit.params["bias"].reshape(1)]) - y
    cov = float(r @ r) / (200 - 4) * torch.linalg.inv(x1.T @ x1)
    assert fit.stderr is not None
    torch.testing.assert_close(fit.stderr, cov.diagonal().sqrt(), rtol=1e-8, atol=0)


def test_logistic_and_softmax_agree_with_scikit_learn() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(300, 3, generator=g, dtype=F64)
    logits = x @ torch.tensor([2.0, -1.0, 0.5], dtype=F64)
    yb = (torch.rand(300, generator=g, dtype=F64) < torch.sigmoid(logits)).to(F64)
    fit = lossfit.fit("logistic", x, yb)
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x.numpy(), yb.numpy())
    assert fit.success
    np.testing.assert_allclose(fit.params["weight"].numpy(), sk.coef_[0], rtol=1e-6, atol=1e-7)

    classes = torch.argmax(
        x @ torch.randn(3, 4, generator=g, dtype=F64) + torch.randn(300, 4, generator=g, dtype=F64), 1
    )
    soft = lossfit.fit("softmax", x, classes)
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x.numpy(), classes.numpy())
    ours = torch.softmax(x @ soft.params["weight"] + soft.params["bias"], 1).numpy()
    assert soft.success
    np.testing.assert_allclose(ours, sk.predict_proba(x.numpy()), atol=1e-5)


def test_seed_001_lesson_mae_and_huber_recover_the_line_mse_does_not() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.linspace(0, 1, 50, dtype=F64).unsqueeze(1)
    y = 2 * x[:, 0] + 1 + 0.02 * torch.randn(50, generator=g, dtype=F64)
    y[::5] += 3.0  # a fifth of the points are outliers
    slope = {
        loss: float(lossfit.fit("linear", x, y, loss=loss).params["weight"][0]) for loss in ("mse", "mae", "huber")
    }
    assert abs(slope["mse"] - 2) > 0.2
    assert abs(slope["mae"] - 2) < 0.05
    assert abs(slope["huber"] - 2) < 0.05


def test_sample_weights_equal_repeated_samples() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(20, 2, generator=g, dtype=F64)
    y = x @ torch.tensor([1.0, 2.0], dtype=F64) + torch.randn(20, generator=g, dtype=F64)
    weights = torch.ones(20, dtype=F64)
    weights[:5] = 2.0
    weighted = lossfit.fit("linear", x, y, weights=weights)
    repeated = lossfit.fit("linear", torch.cat([x, x[:5]]), torch.cat([y, y[:5]]))
    torch.testing.assert_close(weighted.params["weight"], repeated.params["weight"], rtol=1e-9, atol=1e-12)


def test_seed_000_network_transform_is_fitted_and_the_module_is_untouched() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    src = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 4.0]], dtype=F64)
    dst = torch.tensor([[4.0, 5.0], [6.0, 3.0], [5.0, 7.0]], dtype=F64)
    fit = lossfit.fit(net, src, dst)
    assert fit.success, fit.message
    assert float(fit.loss) < 1e-16
    out = torch.func.functional_call(net, fit.params, (src,))
    torch.testing.assert_close(out, dst, rtol=1e-7, atol=1e-7)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_curve_fit_agrees_with_scipy_including_standard_errors() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.linspace(0, 4, 30, dtype=F64)
    y = 3 * torch.exp(-0.7 * x) + 0.5 + 0.05 * torch.randn(30, generator=g, dtype=F64)
    fit = lossfit.curve_fit(lambda x, p: p[0] * torch.exp(-p[1] * x) + p[2], x, y, torch.ones(3))
    popt, pcov = scipy.optimize.curve_fit(
        lambda x, a, b, c: a * np.exp(-b * x) + c, x.numpy(), y.numpy(), p0=[1, 1, 1], xtol=1e-15, ftol=1e-15
    )
    assert fit.success and fit.dof == 27
    # lossfit stops at a relative loss change of 1e-12 (parameters good to about 1e-8 here); scipy ran to 1e-15.
    np.testing.assert_allclose(fit.params.numpy(), popt, rtol=1e-7)
    np.testing.assert_allclose(fit.covariance.numpy(), pcov, rtol=1e-5)
    ci = fit.confidence_interval(0.95)
    q = scipy.stats.t.ppf(0.975, 27)
    np.testing.assert_allclose(ci[:, 1].numpy(), popt + q * np.sqrt(np.diag(pcov)), rtol=1e-6)
    assert fit.correlation is not None and torch.allclose(fit.correlation.diagonal(), torch.ones(3, dtype=F64))


def test_curve_fit_with_sigma_and_bounds() -> None:
    x = torch.linspace(0, 1, 20, dtype=F64)
    y = 2.0 * x + 1.0
    fit = lossfit.curve_fit(lambda x, p: p[0] * x + p[1], x, y, torch.tensor([0.5, 0.5]), sigma=0.1, bounds=(0.0, 1.5))
    assert float(fit.params[1]) <= 1.5 + 1e-12
    assert float(fit.params[0]) == pytest.approx(1.5, abs=1e-6)  # the bound is active


def test_batched_curve_fits_equal_one_by_one() -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.linspace(0, 3, 15, dtype=F64).expand(4, 15)
    y = (1 + torch.rand(4, 1, generator=g, dtype=F64)) * (1 - torch.exp(-x)) + 0.01 * torch.randn(4, 15, generator=g)
    f = lambda x, p: p[0] * (1 - torch.exp(-p[1] * x))  # noqa: E731
    batch = lossfit.curve_fit(f, x, y, torch.ones(4, 2, dtype=F64), batch=True)
    for i in range(4):
        one = lossfit.curve_fit(f, x[i], y[i], torch.ones(2, dtype=F64))
        torch.testing.assert_close(batch.params[i], one.params, rtol=1e-10, atol=1e-12)


def test_student_t_quantiles_agree_with_scipy() -> None:
    for p in (0.01, 0.6, 0.9, 0.975, 0.995):
        for df in (1, 2, 3, 7.5, 30, 1000):
            assert t_quantile(p, df) == pytest.approx(scipy.stats.t.ppf(p, df), rel=1e-9, abs=1e-10)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: lossfit.fit("quadratic", torch.zeros(3, 1), torch.zeros(3)), ValueError, "model"),
        (lambda: lossfit.fit("linear", torch.zeros(3, 1), torch.zeros(4)), ValueError, "same number"),
        (lambda: lossfit.fit("linear", torch.zeros(3, 1), torch.zeros(3), loss="l7"), ValueError, "loss"),
        (lambda: lossfit.fit("logistic", torch.zeros(3, 1), torch.tensor([0.0, 2.0, 1.0])), ValueError, "0 or 1"),
        (lambda: lossfit.fit("softmax", torch.zeros(3, 1), torch.tensor([0.5, 1.0, 0.0])), ValueError, "class"),
        (lambda: lossfit.fit("linear", torch.full((3, 1), float("nan")), torch.zeros(3)), ValueError, "finite"),
        (lambda: lossfit.fit("linear", [["a"], ["b"]], [1, 2]), TypeError, "numbers"),
        (lambda: lossfit.fit(3, torch.zeros(3, 1), torch.zeros(3)), TypeError, "model"),
        (lambda: lossfit.curve_fit("f", torch.zeros(3), torch.zeros(3), torch.ones(1)), TypeError, "callable"),
        (
            lambda: lossfit.curve_fit(lambda x, p: p * x, torch.ones(3), torch.ones(3), torch.ones(1), sigma=0.0),
            ValueError,
            "sigma",
        ),
        (
            lambda: lossfit.curve_fit(lambda x, p: p[0] * x[:2], torch.ones(3), torch.ones(3), torch.ones(1)),
            ValueError,
            "shape",
        ),
    ],
)
def test_bad_input_names_the_argument(call: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        call()  # type: ignore[operator]


# ---------------------------------------------------------------------------------------------------------------
# Restarts from a suspected local minimum


def test_runs_z_is_near_zero_for_random_signs_and_very_negative_for_long_runs() -> None:
    from lossfit.models import runs_z

    g = torch.Generator().manual_seed(3)
    assert abs(runs_z(torch.randn(400, generator=g, dtype=torch.float64))) < 3
    blocks = torch.cat([torch.ones(100), -torch.ones(100), torch.ones(100)])
    assert runs_z(blocks) < -10
    assert runs_z(torch.ones(50)) == 0.0  # one sign only: nothing to say
    assert runs_z(torch.randn(10, generator=g)) == 0.0  # too few values


def _peak_problem() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A narrow Gaussian peak (the hard-curve bank's eckerle_trap) seen from a start whose own peak sits beside it:
    from there plain LM settles on a tiny dip fitted to the noise (a genuine local minimum, worse than a flat line)."""
    from hard_curves import PROBLEMS

    problem = next(p for p in PROBLEMS if p.name == "eckerle_trap")
    x, y = problem.tensors()
    return x, y, torch.tensor(problem.start1, dtype=torch.float64)


def _gauss(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p[0] / p[1] * torch.exp(-0.5 * ((x - p[2]) / p[1]) ** 2)


def test_a_fit_worse_than_a_constant_is_restarted_and_reaches_the_global_minimum() -> None:
    x, y, p0 = _peak_problem()
    stuck = lossfit.curve_fit(_gauss, x, y, p0, restarts=0)
    fitted = lossfit.curve_fit(_gauss, x, y, p0)
    # The normal equations at the answer hold, and its loss is far below the local minimum's.
    assert fitted.success
    assert float(fitted.loss) < 1e-3 * float(stuck.loss)
    assert abs(float(fitted.params[2]) - 451.54) < 0.5
    note = fitted.extras["restarts"]
    # 8 perturbed starts, and the decade scans: 4 scales of each of the 3 parameters and of all of them together.
    assert note["improved"] and 8 < note["tried"] <= 8 + 4 * (3 + 1) and "constant" in note["reason"]
    jac = torch.func.jacrev(lambda p: _gauss(x, p))(fitted.params)
    grad = jac.T @ (_gauss(x, fitted.params) - y)
    assert float(grad.abs().max()) < 1e-8 * float(jac.abs().max())


def test_a_good_fit_is_not_restarted() -> None:
    x = torch.linspace(0, 4, 50, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    y = 3.0 * torch.exp(-0.7 * x) + 0.5 + 0.01 * torch.randn(50, generator=g, dtype=torch.float64)
    fitted = lossfit.curve_fit(
        lambda x, p: p[0] * torch.exp(-p[1] * x) + p[2], x, y, torch.ones(3, dtype=torch.float64)
    )
    assert fitted.success and "restarts" not in fitted.extras


# ---------------------------------------------------------------------------------------------------------------
# Minibatches through a DataLoader (seed 002)


def _loader(x: torch.Tensor, y: torch.Tensor, size: int, seed: int = 1) -> torch.utils.data.DataLoader:
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(
        data, batch_size=size, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )


def _line_data(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = (
        x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
        + 0.3
        + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    )
    return x, y


def test_one_minibatch_holding_all_the_data_is_the_full_batch_method_step_for_step() -> None:
    from lossfit.engine.minibatch import minimize_minibatches

    x, y = _line_data(200)
    loss = lambda p, xx, yy: ((xx @ p[:3] + p[3] - yy) ** 2).mean()  # noqa: E731
    p0 = torch.zeros(4, dtype=torch.float64)
    full = lossfit.minimize(loss, p0, args=(x, y), solver="gd", lr=0.1, max_steps=30, ftol=0, gtol=0, xtol=0)
    mini = minimize_minibatches(loss, p0, [(x, y)], solver="gd", lr=0.1, epochs=30, ftol=0)
    assert mini.num_steps == full.num_steps == 30
    torch.testing.assert_close(mini.params, full.params, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(mini.loss, full.loss, rtol=1e-12, atol=0)


def test_linear_fit_over_minibatches_reaches_the_least_squares_answer() -> None:
    x, y = _line_data()
    fitted = lossfit.fit("linear", _loader(x, y, 50), lr=0.02)
    design = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    exact = torch.linalg.lstsq(design, y.unsqueeze(1)).solution.reshape(-1)
    assert fitted.success and fitted.status == lossfit.Status.CONVERGED_FTOL
    got = torch.cat([fitted.params["weight"], fitted.params["bias"].reshape(1)])
    assert float((got - exact).abs().max()) < 2e-3
    assert fitted.extras["lr_halvings"] > 0  # the step shrank to reach the minibatch noise floor
    assert fitted.history is not None and len(fitted.history) == fitted.extras["epochs"] + 1


def test_minibatch_fits_are_deterministic_and_match_the_full_data_logistic_fit() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(600, 2, generator=g, dtype=torch.float64)
    y = (
        torch.rand(600, generator=g, dtype=torch.float64) < torch.sigmoid(x @ torch.tensor([2.0, -1.0]).double())
    ).double()
    a = lossfit.fit("logistic", _loader(x, y, 60), lr=0.05)
    b = lossfit.fit("logistic", _loader(x, y, 60), lr=0.05)
    torch.testing.assert_close(a.params, b.params, rtol=0, atol=0)
    full = lossfit.fit("logistic", x, y)
    assert float((a.params["weight"] - full.params["weight"]).abs().max()) < 1e-2
    assert abs(float(a.loss) - float(full.loss)) < 1e-5


def test_minibatch_mode_reports_what_stopped_it_never_a_false_success() -> None:
    from lossfit.engine.minibatch import minimize_minibatches

    x, y = _line_data(400)
    loss = lambda p, xx, yy: ((xx @ p[:3] + p[3] - yy) ** 2).mean()  # noqa: E731
    p0 = torch.zeros(4, dtype=torch.float64)
    # Steps too small to reach the minimum settle the loss (to a loose ftol) with the gradient still large.
    crawl = minimize_minibatches(loss, p0, _loader(x, y, 100), solver="gd", lr=1e-7, ftol=1e-3, epochs=20)
    assert crawl.status == lossfit.Status.SUSPECT_GRADIENT and not crawl.success
    assert crawl.extras["gradient_inf_norm"] > 1.0
    # Too few epochs: MAX_STEPS, with one history row per epoch after the start and four minibatch steps each.
    short = minimize_minibatches(loss, p0, _loader(x, y, 100), solver="adam", lr=0.01, epochs=3)
    assert short.status == lossfit.Status.MAX_STEPS and short.extras["epochs"] == 3 and short.num_steps == 12
    assert short.history is not None and len(short.history) == 4
    # A step that overflows: NONFINITE.
    wild = minimize_minibatches(loss, p0, _loader(x, y, 100), solver="gd", lr=1e60, epochs=50)
    assert wild.status == lossfit.Status.NONFINITE and not wild.success
    # A solver object given by the caller is not changed by the mode's learning-rate halvings.
    from lossfit.engine.solvers.first_order import GradientDescent

    given = GradientDescent(options={"lr": 0.3})
    halved = minimize_minibatches(loss, p0, _loader(x, y, 100), solver=given, epochs=40)
    assert halved.extras["lr_halvings"] > 0 and given.options["lr"] == 0.3
    with pytest.raises(ValueError, match="at the start"):  # a finite start where the loss is not finite
        minimize_minibatches(lambda p, xx, yy: loss(p, xx, yy) / 0.0, p0, _loader(x, y, 100))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: lossfit.fit("linear", d, torch.zeros(10)), "must be None"),
        (lambda d: lossfit.fit("linear", d, solver="lbfgs"), "for minibatches"),
        (lambda d: lossfit.fit("linear", d, loss="huber"), "f_scale"),
        (lambda d: lossfit.fit("linear", d, epochs=0), "epochs"),
    ],
)
def test_minibatch_bad_input(call: Any, message: str) -> None:
    x, y = _line_data(40)
    with pytest.raises(ValueError, match=message):
        call(_loader(x, y, 10))
