"""Ragged batches: many data sets of different sizes in one call (``curve_fit`` with lists, ``least_squares`` with a
``mask``), each fit equal to its one-by-one result and to scipy's, with its own degrees of freedom."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.optimize
import torch

import lossfit

F64 = torch.float64


def decay(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p[0] * torch.exp(-p[1] * x) + p[2]


def decay_sets(lengths: list[int], seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for m in lengths:
        x = torch.sort(5 * torch.rand(m, generator=g, dtype=F64)).values
        a, b = 1 + torch.rand(2, generator=g, dtype=F64)
        xs.append(x)
        ys.append(a * torch.exp(-b * x) + 0.3 + 0.02 * torch.randn(m, generator=g, dtype=F64))
    return xs, ys


def test_ragged_curve_fits_equal_one_by_one_with_their_own_statistics() -> None:
    lengths = [5, 9, 60, 17, 33, 4, 48]
    xs, ys = decay_sets(lengths, seed=3)
    p0 = torch.tensor([1.0, 1.0, 0.0], dtype=F64).expand(len(xs), 3).clone()
    fits = lossfit.curve_fit(decay, xs, ys, p0, batch=True)
    assert isinstance(fits.dof, torch.Tensor)
    assert fits.dof.tolist() == [m - 3 for m in lengths]
    assert fits.extras["num_residuals"].tolist() == lengths
    intervals = fits.confidence_interval(0.9)
    solved = 0
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        one = lossfit.curve_fit(decay, x, y, p0[i], restarts=0)
        assert fits.statuses[i] is one.status
        assert int(fits.steps[i]) == one.num_steps
        if not one.success:  # four points for three parameters may not pin them down: both say so alike
            continue
        solved += 1
        # The batch takes its Jacobians by forward mode, one problem by reverse mode: equal to rounding, and the
        # answers to what the stopping rules allow.
        torch.testing.assert_close(fits.params[i], one.params, rtol=1e-8, atol=1e-10)
        assert fits.stderr is not None and one.stderr is not None
        torch.testing.assert_close(fits.stderr[i], one.stderr, rtol=1e-6, atol=0)
        torch.testing.assert_close(intervals[i], one.confidence_interval(0.9), rtol=1e-6, atol=1e-9)
        assert fits.residuals is not None and one.residuals is not None
        torch.testing.assert_close(fits.residuals[i, : lengths[i]], one.residuals, rtol=1e-6, atol=1e-9)
        assert bool((fits.residuals[i, lengths[i] :] == 0).all())  # the padding counts for nothing
    assert solved >= 5


def test_ragged_curve_fits_agree_with_scipy_covariance() -> None:
    xs, ys = decay_sets([12, 70, 25], seed=8)
    p0 = torch.ones(3, 3, dtype=F64)
    fits = lossfit.curve_fit(decay, xs, ys, p0, batch=True)
    assert fits.covariance is not None
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        popt, pcov = scipy.optimize.curve_fit(
            lambda t, a, b, c: a * np.exp(-b * t) + c, x.numpy(), y.numpy(), p0=[1, 1, 1], xtol=1e-15, ftol=1e-15
        )
        np.testing.assert_allclose(fits.params[i].numpy(), popt, rtol=1e-7)
        # scipy's covariance comes from its finite-difference Jacobian: agreement to about 1e-6.
        np.testing.assert_allclose(fits.covariance[i].numpy(), pcov, rtol=1e-5, atol=1e-12)


def test_ragged_fits_with_sigma_points_of_two_coordinates_and_a_robust_loss() -> None:
    g = torch.Generator().manual_seed(5)
    lengths = [8, 30, 15]
    xs, ys, sigmas = [], [], []
    for m in lengths:
        x = torch.rand(m, 2, generator=g, dtype=F64)
        y = 2 * x[:, 0] - x[:, 1] + 0.5 + 0.05 * torch.randn(m, generator=g, dtype=F64)
        y[0] += 3.0  # one outlier in each set
        xs.append(x)
        ys.append(y)
        sigmas.append(0.05 + torch.rand(m, generator=g, dtype=F64))

    def plane(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return p[0] * x[:, 0] + p[1] * x[:, 1] + p[2]

    p0 = torch.zeros(3, 3, dtype=F64)
    fits = lossfit.curve_fit(plane, xs, ys, p0, batch=True, sigma=sigmas, loss="soft_l1", f_scale=2.0)
    for i in range(3):
        one = lossfit.curve_fit(plane, xs[i], ys[i], p0[i], sigma=sigmas[i], loss="soft_l1", f_scale=2.0, restarts=0)
        assert fits.statuses[i] is one.status and one.success
        torch.testing.assert_close(fits.params[i], one.params, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(fits.loss[i], one.loss, rtol=1e-10, atol=0)


def test_a_set_with_fewer_points_than_parameters_is_not_a_success_and_spares_the_others() -> None:
    xs, ys = decay_sets([2, 20, 30], seed=1)
    fits = lossfit.curve_fit(decay, xs, ys, torch.ones(3, 3, dtype=F64), batch=True)
    assert not fits.statuses[0].success
    assert fits.statuses[1].success and fits.statuses[2].success
    assert fits.dof.tolist() == [-1, 17, 27]
    with pytest.raises(ValueError, match="degrees of freedom"):
        fits.confidence_interval()


def test_mask_equals_the_truncated_problem() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.linspace(0, 4, 50, dtype=F64)
    y = 3.0 * torch.exp(-0.8 * x) + 0.02 * torch.randn(50, generator=g, dtype=F64)
    garbage = y.clone()
    garbage[30:] = 1e6  # finite but absurd: the mask must make it count for nothing

    def residual(p: torch.Tensor, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return p[0] * torch.exp(-p[1] * xx) - yy

    p0 = torch.ones(2, dtype=F64)
    short = lossfit.least_squares(residual, p0, args=(x[:30], y[:30]))
    masked = lossfit.least_squares(residual, p0, args=(x, garbage), mask=torch.arange(50) < 30)
    assert masked.success and masked.extras["num_residuals"] == 30
    torch.testing.assert_close(masked.params, short.params, rtol=1e-12, atol=0)
    assert masked.covariance is not None and short.covariance is not None
    torch.testing.assert_close(masked.covariance, short.covariance, rtol=1e-10, atol=0)
    # A batch, each problem with its own mask, under a robust loss.
    xb, yb = x.expand(3, 50).contiguous(), garbage.expand(3, 50).contiguous()
    keep = torch.arange(50).unsqueeze(0) < torch.tensor([[30], [12], [25]])
    batch = lossfit.least_squares(residual, p0.expand(3, 2).clone(), args=(xb, yb), mask=keep, batch=True, loss="huber")
    for i, m in enumerate((30, 12, 25)):
        one = lossfit.least_squares(residual, p0, args=(x[:m], y[:m]), loss="huber")
        assert batch.statuses[i] is one.status
        torch.testing.assert_close(batch.params[i], one.params, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda xs, ys: lossfit.curve_fit(decay, xs, ys, torch.ones(3)), ValueError, "need `batch=True`"),
        (lambda xs, ys: lossfit.curve_fit(decay, xs, ys[0], torch.ones(2, 3), batch=True), TypeError, "both as lists"),
        (
            lambda xs, ys: lossfit.curve_fit(decay, xs, ys[:1], torch.ones(2, 3), batch=True),
            ValueError,
            "same non-zero",
        ),
        (
            lambda xs, ys: lossfit.curve_fit(decay, [xs[0], xs[1][:-1]], ys, torch.ones(2, 3), batch=True),
            ValueError,
            r"data set 1: `x\[1\]` and `y\[1\]`",
        ),
        (
            lambda xs, ys: lossfit.curve_fit(decay, xs, [ys[0], ys[1] * float("nan")], torch.ones(2, 3), batch=True),
            ValueError,
            r"`y\[1\]` must be finite",
        ),
        (
            lambda xs, ys: lossfit.curve_fit(decay, xs, ys, torch.ones(2, 3), batch=True, sigma=[torch.ones(1)]),
            ValueError,
            "`sigma` must be a list of 2",
        ),
        (
            lambda xs, ys: lossfit.curve_fit(decay, xs, ys, torch.ones(2, 3), batch=True, sigma=[1.0, -1.0]),
            ValueError,
            "`sigma` must be positive",
        ),
        (
            lambda xs, ys: lossfit.least_squares(lambda p: p - 1, torch.ones(3), mask=torch.ones(3)),
            TypeError,
            "`mask` must be a boolean tensor",
        ),
        (
            lambda xs, ys: lossfit.least_squares(lambda p: p - 1, torch.ones(3), mask=torch.ones(4, dtype=torch.bool)),
            ValueError,
            "`mask` must have the residuals' shape",
        ),
        (
            lambda xs, ys: lossfit.least_squares(
                lambda p: p - 1, torch.ones(3), mask=torch.ones(3, dtype=torch.bool), jac=torch.eye(3)
            ),
            ValueError,
            "`jac` or `mask`",
        ),
    ],
)
def test_ragged_bad_input_is_refused_by_name(call: Any, error: type[Exception], message: str) -> None:
    xs, ys = decay_sets([6, 9], seed=0)
    with pytest.raises(error, match=message):
        call(xs, ys)
