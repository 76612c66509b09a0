"""Parameter maps: known parameters recovered, scipy's minima agreed with, batch equal to voxel by voxel, the Rician
likelihood, statuses that flag every failure, and bad input refused before any fitting."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from lossfit import Status
from lossfit.engine.solvers.voxelwise import cholesky_solve
from lossfit.maps import NOT_FITTED, fit_map
from lossfit.maps.fit import estimate_sigma, polarity_patterns
from lossfit.maps.models import BUILT_IN, forward_columns, log_linear
from lossfit.maps.objective import Rician, bessel_ratio, log_bessel_i0
from lossfit.registration.image import Image
from lossfit.registration.series import Series

F64 = torch.float64
TE = torch.tensor([10.0, 20, 30, 40, 50, 60, 70, 80], dtype=F64)
TI = torch.tensor([50.0, 150, 400, 800, 1600, 3200, 5000], dtype=F64)
B = torch.tensor([0.0, 10, 20, 50, 100, 200, 400, 600, 800, 1000], dtype=F64)


def decays(n: int, seed: int, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    s0 = 800 + 400 * torch.rand(n, generator=gen, dtype=F64)
    t2 = 30 + 120 * torch.rand(n, generator=gen, dtype=F64)
    y = s0[:, None] * torch.exp(-TE / t2[:, None]) + noise * torch.randn(n, 8, generator=gen, dtype=F64)
    return y, s0, t2


def test_noise_free_decay_is_recovered_exactly() -> None:
    y, s0, t2 = decays(500, 0)
    result = fit_map(y, TE, "t2")
    assert result.success, result.counts
    assert torch.allclose(result.maps["S0"], s0, rtol=1e-9)
    assert torch.allclose(result.maps["T2"], t2, rtol=1e-9)
    assert result.parameters == ("S0", "T2") and result.fitted == 500


def test_the_log_linear_start_is_exact_on_noise_free_data() -> None:
    y, s0, t2 = decays(50, 1)
    start_s0, start_t2 = log_linear(TE[:, None], y.T)
    assert torch.allclose(start_s0, s0, rtol=1e-10) and torch.allclose(start_t2, t2, rtol=1e-10)


@pytest.mark.parametrize("model", ["t2", "t2-offset"])
def test_noisy_fits_reach_scipys_minimum(model: str) -> None:
    """Each voxel's answer has no higher a cost than scipy's curve_fit run to tight tolerances, and the parameters
    agree where the minimum is well determined (the 2-parameter decay). With an offset and T2 near the echo train's
    length, some noisy voxels have no minimum (the cost keeps falling as T2 and S0 grow and C falls: the decay
    becomes a line); those must be flagged, never reported converged."""
    y, s0, t2 = decays(60, 2, noise=15.0)
    if model == "t2-offset":
        y = y + 25.0
    result = fit_map(y, TE, model)
    if model == "t2":
        assert result.success, result.counts
    failed = [i for i in range(60) if not Status(int(result.status[i])).success]
    for i in failed:  # still running at the budget, or run so far that the Jacobian is singular there
        assert Status(int(result.status[i])) in (Status.MAX_STEPS, Status.SINGULAR)
        assert float(result.maps["T2"][i]) > 10 * float(TE.max())  # running off along the line
    names = result.parameters
    f = (lambda x, a, b: a * np.exp(-x / b)) if model == "t2" else (lambda x, a, b, c: a * np.exp(-x / b) + c)
    for i in range(60):
        start = [float(s0[i]), float(t2[i])] + ([25.0] if model == "t2-offset" else [])
        popt, pcov = scipy.optimize.curve_fit(
            f, TE.numpy(), y[i].numpy(), p0=start, ftol=1e-14, xtol=1e-14, gtol=1e-14, maxfev=20000
        )
        ours = np.array([float(result.maps[n][i]) for n in names])
        cost_ours = ((f(TE.numpy(), *ours) - y[i].numpy()) ** 2).sum()
        cost_scipy = ((f(TE.numpy(), *popt) - y[i].numpy()) ** 2).sum()
        assert cost_ours <= cost_scipy * (1 + 1e-9)
        if model == "t2":
            assert np.allclose(ours, popt, rtol=1e-7)
            stderr = np.array([float(result.stderr[n][i]) for n in names])
            assert np.allclose(stderr, np.sqrt(np.diag(pcov)), rtol=1e-5)


def test_a_batch_equals_voxel_by_voxel() -> None:
    y, _, _ = decays(40, 3, noise=10.0)
    batch = fit_map(y, TE, "t2-offset")
    for i in range(0, 40, 7):
        alone = fit_map(y[i : i + 1], TE, "t2-offset")
        for n in batch.parameters:
            assert float(alone.maps[n][0]) == pytest.approx(float(batch.maps[n][i]), rel=1e-10, abs=1e-10)
        assert int(alone.status[0]) == int(batch.status[i])


def test_a_formula_and_a_callable_give_the_built_ins_answer() -> None:
    y, _, _ = decays(30, 4, noise=5.0)
    built_in = fit_map(y, TE, "t2")
    start = {"a": 1000.0, "b": 60.0}
    formula = fit_map(y, TE, "a*exp(-x/b)", start=start)

    def decay(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return p[:, :1] * torch.exp(-x / p[:, 1:2])

    called = fit_map(y, TE, decay, start=start)
    assert formula.parameters == ("a", "b") and called.parameters == ("a", "b")
    for other in (formula, called):
        assert other.success
        assert torch.allclose(other.maps["a"], built_in.maps["S0"], rtol=1e-7)
        assert torch.allclose(other.maps["b"], built_in.maps["T2"], rtol=1e-7)


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_the_written_out_jacobians_match_forward_mode_autodiff(name: str) -> None:
    model = BUILT_IN[name]
    gen = torch.Generator().manual_seed(5)
    k = len(model.parameters)
    p = torch.tensor([900.0, 0.2, 0.001, 0.02][:k] if name == "ivim" else [900.0, 500.0, 60.0][:k], dtype=F64)
    p = p[:, None] * (1 + 0.1 * torch.rand(k, 12, generator=gen, dtype=F64))
    x = (B if name == "ivim" else TI if name == "t1-ir" else TE)[:, None]
    value, columns = model.evaluate(x, p)
    auto_value, auto_columns = forward_columns(model.signal, x, p)
    assert torch.allclose(value, auto_value, rtol=1e-13)
    for ours, auto in zip(columns, auto_columns, strict=True):
        assert torch.allclose(ours.expand_as(auto), auto, rtol=1e-10, atol=1e-12)


def test_the_bessel_terms_are_right_and_their_derivative_is_the_ratio() -> None:
    """log I0 against scipy's i0e, and d/dz log I0 = I1/I0 by gradcheck-style comparison with autograd (float64)."""
    from scipy.special import i0e

    z = torch.tensor([0.0, 1e-3, 0.5, 3.0, 40.0, 700.0, 1e5], dtype=F64)
    assert torch.allclose(log_bessel_i0(z), torch.tensor(np.log(i0e(z.numpy())) + z.numpy()), rtol=1e-12)
    zz = z[1:].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_bessel_i0(zz).sum(), zz)
    assert torch.allclose(grad, bessel_ratio(z[1:]), rtol=1e-10)
    assert torch.autograd.gradcheck(log_bessel_i0, (torch.tensor([0.3, 2.0, 9.0], dtype=F64, requires_grad=True),))


def test_the_rician_gradient_is_the_gradient_of_its_cost() -> None:
    model = BUILT_IN["t2"]
    objective = Rician(model, TE[:, None])
    gen = torch.Generator().manual_seed(6)
    y = (100 * torch.exp(-TE / 50))[:, None] + 5 * torch.randn(8, 4, generator=gen, dtype=F64).abs()
    sigma = torch.full((4,), 5.0, dtype=F64)
    p = torch.tensor([[90.0, 95, 110, 100], [45.0, 55, 60, 40]], dtype=F64)
    _, g, _, _ = objective.terms(p, y, sigma)
    pp = p.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(objective.cost(pp, y, sigma).sum(), pp)
    assert torch.allclose(g, auto, rtol=1e-9)


def test_the_rician_likelihood_removes_the_noise_floor_bias() -> None:
    """At low SNR, least squares on magnitude data overestimates T2 (the late echoes sit on the Rician floor); the
    likelihood recovers it. 2,000 voxels with one true T2, sigma known."""
    gen = torch.Generator().manual_seed(7)
    n, sigma, t2 = 2000, 20.0, 40.0
    te = torch.tensor([10.0, 25, 40, 55, 70, 85, 100, 115, 130, 145], dtype=F64)
    clean = 200 * torch.exp(-te / t2)
    real = clean + sigma * torch.randn(n, 10, generator=gen, dtype=F64)
    imag = sigma * torch.randn(n, 10, generator=gen, dtype=F64)
    magnitude = torch.sqrt(real * real + imag * imag)
    plain = fit_map(magnitude, te, "t2")
    rician = fit_map(magnitude, te, "t2", noise="rician", sigma=sigma)
    bias_plain = float(plain.maps["T2"].median()) - t2
    bias_rician = float(rician.maps["T2"].median()) - t2
    assert bias_plain > 3.0  # the floor pulls least squares up by several ms here
    assert abs(bias_rician) < bias_plain / 4
    assert rician.sigma == sigma


def test_sigma_is_estimated_from_the_background() -> None:
    gen = torch.Generator().manual_seed(8)
    noise = 7.0
    bg = torch.sqrt(
        (noise * torch.randn(8, 20000, generator=gen, dtype=F64)) ** 2
        + (noise * torch.randn(8, 20000, generator=gen, dtype=F64)) ** 2
    )
    assert estimate_sigma(bg, torch.ones(20000, dtype=torch.bool)) == pytest.approx(noise, rel=0.02)


def inversion_recovery(n: int, seed: int, noise: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    t1 = 300 + 3700 * torch.rand(n, generator=gen, dtype=F64)
    a = 500 + 500 * torch.rand(n, generator=gen, dtype=F64)
    signed = a[:, None] * (1 - 1.9 * torch.exp(-TI / t1[:, None]))
    y = (signed + noise * torch.randn(n, TI.numel(), generator=gen, dtype=F64)).abs()
    return y, t1


def test_inversion_recovery_restores_the_polarity() -> None:
    """Magnitude data whose null falls anywhere in the inversion times: T1 recovered exactly from noise-free data."""
    y, t1 = inversion_recovery(300, 9)
    result = fit_map(y, TI, "t1-ir")
    assert result.success, result.counts
    assert torch.allclose(result.maps["T1"], t1, rtol=1e-8)
    assert float(result.rms.max()) < 1e-8


def test_inversion_recovery_with_noise_matches_the_best_sign_pattern_by_scipy() -> None:
    y, _ = inversion_recovery(40, 10, noise=8.0)
    result = fit_map(y, TI, "t1-ir")

    def signed(x: np.ndarray, a: float, b: float, t1: float) -> np.ndarray:
        return a - b * np.exp(-x / t1)

    for i in range(40):
        best = math.inf
        for pattern in polarity_patterns(y[i][:, None]):
            start = [float(y[i].max()), 2 * float(y[i].max()), 1000.0]
            try:
                popt, _ = scipy.optimize.curve_fit(
                    signed, TI.numpy(), pattern[:, 0].numpy(), p0=start, ftol=1e-14, xtol=1e-14, maxfev=20000
                )
            except RuntimeError:
                continue
            best = min(best, float(((np.abs(signed(TI.numpy(), *popt)) - y[i].numpy()) ** 2).sum()))
        ours = float(result.rms[i]) ** 2 * TI.numel()
        assert ours <= best * (1 + 1e-8)


def test_ivim_is_recovered_from_noise_free_data() -> None:
    gen = torch.Generator().manual_seed(11)
    n = 200
    f = 0.05 + 0.25 * torch.rand(n, generator=gen, dtype=F64)
    d = 0.0005 + 0.0015 * torch.rand(n, generator=gen, dtype=F64)
    dstar = 0.01 + 0.04 * torch.rand(n, generator=gen, dtype=F64)
    y = 1000 * (f[:, None] * torch.exp(-B * dstar[:, None]) + (1 - f[:, None]) * torch.exp(-B * d[:, None]))
    result = fit_map(y, B, "ivim")
    assert result.success, result.counts
    assert torch.allclose(result.maps["f"], f, rtol=1e-6)
    assert torch.allclose(result.maps["D"], d, rtol=1e-6)
    assert torch.allclose(result.maps["Dstar"], dstar, rtol=1e-5)


def test_cholesky_solve_matches_torch() -> None:
    gen = torch.Generator().manual_seed(12)
    for k in (1, 2, 3, 4, 6, 8):
        a = torch.randn(50, k, k, generator=gen, dtype=F64)
        h = a @ a.transpose(1, 2) + 0.1 * torch.eye(k, dtype=F64)
        rhs = torch.randn(50, k, generator=gen, dtype=F64)
        x, ok = cholesky_solve(h.permute(1, 2, 0), rhs.T)
        assert bool(ok.all())
        assert torch.allclose(x.T, torch.linalg.solve(h, rhs), rtol=1e-9, atol=1e-12)
    singular = torch.zeros(2, 2, 3, dtype=F64)
    _, ok = cholesky_solve(singular, torch.ones(2, 3, dtype=F64))
    assert not bool(ok.any())


def test_every_voxel_has_a_status_and_a_nan_only_with_one() -> None:
    y, _, _ = decays(20, 13, noise=5.0)
    y[3] = math.nan  # unreadable data
    y[5] = 0.0  # no signal: S0 = 0, T2 undetermined
    y[7, :4] = torch.tensor([100.0, 1e-9, 1e9, 3.0], dtype=F64)  # nonsense
    mask = torch.ones(20, dtype=torch.bool)
    mask[[0, 1]] = False
    result = fit_map(y, TE, "t2", mask=mask)
    status = result.status
    assert int(status[0]) == NOT_FITTED and int(status[1]) == NOT_FITTED
    assert int(status[3]) == Status.NONFINITE
    assert not Status(int(status[5])).success
    assert not result.success and result.fitted == 18
    for name in result.parameters:
        nan = torch.isnan(result.maps[name])
        allowed = (status == NOT_FITTED) | (status == Status.NONFINITE)
        assert bool((~nan | allowed).all())
    assert sum(result.counts.values()) == 18


def test_a_series_gives_images_on_its_grid_and_saves_them(tmp_path) -> None:
    import nibabel as nib

    y, _, t2 = decays(4 * 5 * 6, 14)
    grid = Image(torch.zeros(4, 5, 6), spacing=(1.0, 2.0, 3.0), origin=(5.0, -3.0, 7.0))
    data = y.T.reshape(8, 4, 5, 6).to(torch.float32)
    series = Series(data, grid)
    result = fit_map(series, TE, "t2")
    t2_map = result.maps["T2"]
    assert isinstance(t2_map, Image) and t2_map.shape == (4, 5, 6) and t2_map.spacing == grid.spacing
    assert torch.allclose(t2_map.data.reshape(-1), t2, rtol=1e-5)
    written = result.save(tmp_path / "maps")
    names = {p.name for p in written}
    assert {"S0.nii.gz", "T2.nii.gz", "T2_stderr.nii.gz", "status.nii.gz", "rms.nii.gz", "summary.json"} <= names
    img = nib.load(str(tmp_path / "maps" / "T2.nii.gz"))
    assert np.allclose(np.asarray(img.dataobj).transpose(2, 1, 0).reshape(-1), t2.numpy(), rtol=1e-5)


def test_a_mask_on_another_grid_is_resampled_onto_the_series() -> None:
    y, _, _ = decays(4 * 4 * 4, 15)
    grid = Image(torch.zeros(4, 4, 4), spacing=(2.0, 2.0, 2.0))
    series = Series(y.T.reshape(8, 4, 4, 4).to(torch.float32), grid)
    fine = torch.zeros(8, 8, 8)
    fine[:4] = 1  # the lower half in z (world z < 7 mm on a 1 mm grid)
    mask = Image(fine, spacing=(1.0, 1.0, 1.0))
    result = fit_map(series, TE, "t2", mask=mask)
    fitted = result.status.data != NOT_FITTED
    assert bool(fitted[:2].all()) and not bool(fitted[2:].any())


ONES = torch.ones(3, 8)
BAD = [
    ("last axis", lambda: fit_map(torch.ones(3, 7), TE, "t2"), ValueError, "`x`"),
    ("x not finite", lambda: fit_map(torch.ones(3, 8), TE * math.nan, "t2"), ValueError, "`x` must be finite"),
    ("x not increasing", lambda: fit_map(torch.ones(3, 7), TI.flip(0), "t1-ir"), ValueError, "increasing"),
    ("unknown model", lambda: fit_map(torch.ones(3, 8), TE, "t3"), ValueError, "`model` must be one of"),
    ("unsafe formula", lambda: fit_map(torch.ones(3, 8), TE, "__import__('os')", start={}), ValueError, "formula"),
    ("mask shape", lambda: fit_map(ONES, TE, "t2", mask=torch.ones(4, dtype=torch.bool)), ValueError, "`mask`"),
    ("mask empty", lambda: fit_map(ONES, TE, "t2", mask=torch.zeros(3, dtype=torch.bool)), ValueError, "no voxel"),
    ("rician no sigma", lambda: fit_map(torch.ones(3, 8), TE, "t2", noise="rician"), ValueError, "sigma"),
    ("noise name", lambda: fit_map(torch.ones(3, 8), TE, "t2", noise="poisson"), ValueError, "`noise`"),
    ("loss name", lambda: fit_map(torch.ones(3, 8), TE, "t2", loss="l3"), ValueError, "`loss`"),
    ("formula no start", lambda: fit_map(torch.ones(3, 8), TE, "a*exp(-x/b)"), ValueError, "`start`"),
    ("start names", lambda: fit_map(torch.ones(3, 8), TE, "a*exp(-x/b)", start={"a": 1}), ValueError, "missing: b"),
    ("bounds size", lambda: fit_map(torch.ones(3, 8), TE, "t2", bounds=([0], [1])), ValueError, "`bounds`"),
    ("series type", lambda: fit_map([[1.0] * 8], TE, "t2"), TypeError, "`series`"),
    ("max_steps", lambda: fit_map(ONES, TE, "t2", max_steps=0), ValueError, "`max_steps`"),
    ("ftol", lambda: fit_map(ONES, TE, "t2", ftol=-1.0), ValueError, "`ftol`"),
    ("dtype", lambda: fit_map(ONES, TE, "t2", dtype=torch.int32), TypeError, "`dtype`"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "error", "match"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_a_clear_error(name: str, call, error: type, match: str) -> None:
    with pytest.raises(error, match=match.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_the_spread_of_the_estimates_is_the_cramer_rao_bound() -> None:
    """With Gaussian noise the least-squares estimate is efficient at high SNR: across 4,000 noise draws of one
    voxel, the standard deviation of T2 is the Cramér-Rao bound sqrt((J^T J)^-1 sigma^2) at the truth (within the
    sampling error of a standard deviation from 4,000 draws, about 1.1%, and a margin)."""
    gen = torch.Generator().manual_seed(16)
    n, sigma, s0, t2 = 4000, 10.0, 1000.0, 60.0
    clean = s0 * torch.exp(-TE / t2)
    y = clean + sigma * torch.randn(n, 8, generator=gen, dtype=F64)
    result = fit_map(y, TE, "t2")
    assert result.success
    e = torch.exp(-TE / t2)
    j = torch.stack([e, s0 * e * TE / t2**2], dim=1)
    bound = torch.sqrt(torch.diag(torch.linalg.inv(j.T @ j)) * sigma**2)
    spread = torch.stack([result.maps["S0"].std(), result.maps["T2"].std()])
    assert torch.allclose(spread, bound, rtol=0.05)
    # The reported standard errors estimate the same bound voxel by voxel.
    assert float(result.stderr["T2"].median()) == pytest.approx(float(bound[1]), rel=0.05)


def test_the_mni_phantom_maps_are_recovered_per_tissue() -> None:
    """nilearn's MNI152 tissues at 4 mm with literature T2 values and Rician noise at SNR 100: the fitted T2 in
    each tissue's voxels (the most probable tissue above 0.9) is within a few percent of the truth."""
    from lossfit.maps.phantom import ACQUISITIONS, mni_phantom

    series, truth, labels, sigma = mni_phantom("t2", snr=100, resolution=4, seed=3)
    inside = ~torch.isnan(truth["T2"].data)
    result = fit_map(series, ACQUISITIONS["t2"], "t2", mask=inside)
    assert sigma == pytest.approx(8.0)
    assert result.maps["T2"].spacing == (4.0, 4.0, 4.0)
    error = (result.maps["T2"].data - truth["T2"].data).abs() / truth["T2"].data
    for label, tolerance in ((1, 0.03), (2, 0.03)):
        chosen = inside & (labels.data == label) & torch.isfinite(error)
        assert int(chosen.sum()) > 100
        assert float(error[chosen].median()) < tolerance


def test_voxels_on_a_bound_are_counted() -> None:
    """IVIM voxels whose D* the data cannot resolve end on the bound at 0.004 mm^2/s: a constrained minimum, and
    the result says how many."""
    gen = torch.Generator().manual_seed(17)
    n = 300
    y = 1000 * torch.exp(-B * 0.001) + 30 * torch.randn(n, B.numel(), generator=gen, dtype=F64)  # no perfusion at all
    result = fit_map(y.abs(), B, "ivim")
    lower = (result.maps["Dstar"] == 0.004) | (result.maps["f"] == 0.0)
    assert result.at_bound and sum(result.at_bound.values()) >= int(lower.sum()) > 0
    assert "on a bound" in result.summary()


@pytest.mark.parametrize("name", ["t2", "t2-offset", "t1-ir"])
def test_the_projected_gradient_is_the_gradient_of_the_projected_cost(name: str) -> None:
    """Variable projection's gradient (Kaufman's Jacobian times the residual) is exact: autograd of the cost with
    the linear parameters solved at every theta gives the same."""
    from lossfit.maps.objective import Projected

    model = BUILT_IN[name]
    assert model.separable is not None
    gen = torch.Generator().manual_seed(18)
    truths = {"t2": [1000.0, 70.0], "t2-offset": [1000.0, 70.0, 20.0], "t1-ir": [1000.0, 1900.0, 1100.0]}
    thetas = {"t2": [60.0, 90.0, 45.0], "t2-offset": [60.0, 90.0, 45.0], "t1-ir": [900.0, 1500.0, 600.0]}
    x = (TI if name == "t1-ir" else TE)[:, None]
    truth = model.signal(x, torch.tensor(truths[name], dtype=F64)[:, None].expand(-1, 3))
    y = truth + 5 * torch.randn(truth.shape, generator=gen, dtype=F64)
    theta = torch.tensor([thetas[name]], dtype=F64)
    projected = Projected(model, x)
    _, g, _, _ = projected.terms(theta, y)
    t = theta.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(projected.cost(t, y).sum(), t)
    assert torch.allclose(g, auto, rtol=1e-7)


def test_variable_projection_reaches_the_full_problems_minimum() -> None:
    """The built-in start goes through variable projection; a given start goes through Levenberg-Marquardt on all
    parameters: the same answers (the 2-parameter decay, well determined)."""
    y, _, _ = decays(200, 19, noise=8.0)
    projected = fit_map(y, TE, "t2")
    full = fit_map(y, TE, "t2", start={"S0": 1000.0, "T2": 80.0})
    assert projected.success and full.success
    assert torch.allclose(projected.maps["T2"], full.maps["T2"], rtol=1e-8)
    assert torch.allclose(projected.maps["S0"], full.maps["S0"], rtol=1e-8)
    assert torch.allclose(projected.stderr["T2"], full.stderr["T2"], rtol=1e-6)


def test_gaussian_noise_is_least_squares_with_its_standard_errors() -> None:
    y, _, _ = decays(30, 20, noise=10.0)
    plain = fit_map(y, TE, "t2")
    named = fit_map(y, TE, "t2", noise="gaussian")
    assert torch.equal(plain.maps["T2"], named.maps["T2"])
    assert torch.allclose(plain.stderr["T2"], named.stderr["T2"])
