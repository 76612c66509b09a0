"""Point alignment: ground truth with noise and outliers, closed forms, independent references, batches, bad input."""

from __future__ import annotations

import pytest
import torch
from scipy.spatial.transform import Rotation

import lossfit
from lossfit import points as P
from lossfit import transforms as T
from lossfit.points import closed_form

F64 = torch.float64
CASES = [(model, d) for model in T.MODELS for d in (2, 3)]


def true_matrix(model: str, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    p = 0.3 * torch.randn(T.num_params(model, d), generator=g, dtype=F64)
    if model in ("linear", "affine"):
        p[: d * d] += torch.eye(d, dtype=F64).reshape(-1)
    if model == "projective":
        p += torch.eye(d + 1, dtype=F64).reshape(-1)[:-1]
        p[d * (d + 1) : d * (d + 1) + d] *= 0.1
    return T.matrix(model, p, d)


def make_points(
    model: str, d: int, seed: int, n: int = 60, noise: float = 0.01, outliers: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 100)
    m = true_matrix(model, d, seed)
    src = 10 * torch.rand(n, d, generator=g, dtype=F64)
    dst = T.apply(m, src) + noise * torch.randn(n, d, generator=g, dtype=F64)
    bad = torch.zeros(n, dtype=torch.bool)
    bad[torch.randperm(n, generator=g)[: int(outliers * n)]] = True
    dst[bad] += 5 * torch.randn(int(bad.sum()), d, generator=g, dtype=F64)
    return src, dst, m, bad


def mean_error(m: torch.Tensor, truth: torch.Tensor, src: torch.Tensor) -> float:
    return float((T.apply(m, src) - T.apply(truth, src)).norm(dim=-1).mean())


@pytest.mark.parametrize(("model", "d"), CASES)
def test_exact_points_give_the_exact_transform(model: str, d: int) -> None:
    src, dst, m, _ = make_points(model, d, 0, noise=0.0)
    fit = lossfit.align(src, dst, model=model)
    assert fit.success, fit.message
    torch.testing.assert_close(fit.matrix, m, rtol=1e-8, atol=1e-8)
    assert fit.matrix.shape == (d + 1, d + 1)


@pytest.mark.parametrize(("model", "d"), CASES)
def test_noisy_points_recover_the_transform_to_the_noise_level(model: str, d: int) -> None:
    src, dst, m, _ = make_points(model, d, 1, noise=0.01)
    fit = lossfit.align(src, dst, model=model)
    assert fit.success and mean_error(fit.matrix, m, src) < 0.01
    assert bool(fit.inliers.all())


@pytest.mark.parametrize("seed", [2, 6])
@pytest.mark.parametrize(("model", "d"), CASES)
@pytest.mark.parametrize("loss", ["cauchy", "huber", "soft_l1", "mae"])
def test_forty_percent_outliers_still_give_the_transform(model: str, d: int, loss: str, seed: int) -> None:
    """Over data seeds 2-9 every case holds (measured); seed 6 is the one whose 3-D projective fits missed the bound
    (0.036-0.108) while the robust start's noise scale came from a minimal sample's fit (27 times the noise)."""
    src, dst, m, bad = make_points(model, d, seed, outliers=0.4)
    fit = lossfit.align(src, dst, model=model, loss=loss)
    plain = lossfit.align(src, dst, model=model)
    assert fit.success, fit.message
    # Cauchy's loss redescends (far outliers lose all influence); the convex ones keep a bounded bias.
    assert mean_error(fit.matrix, m, src) < (0.02 if loss == "cauchy" else 0.05)
    assert mean_error(plain.matrix, m, src) > 0.1  # least squares is pulled away: the robust fit is what helps
    assert bool((fit.inliers == ~bad).all())


@pytest.mark.parametrize(("model", "d"), [c for c in CASES if c[0] != "projective"])
def test_closed_form_is_the_least_squares_optimum(model: str, d: int) -> None:
    src, dst, _, _ = make_points(model, d, 3, noise=0.05)
    fit = lossfit.align(src, dst, model=model)
    # The refinement starts at the closed form and finds nothing to improve.
    assert fit.reference is not None and fit.reference["max_matrix_change_from_closed_form"] < 1e-8
    assert fit.reference["rms_distance"] == pytest.approx(fit.reference["closed_form_rms_distance"], rel=1e-10)


def test_rigid_closed_form_agrees_with_scipy_kabsch() -> None:
    src, dst, _, _ = make_points("rigid", 3, 4, noise=0.05)
    m = closed_form("rigid", src, dst)
    sc, dc = src - src.mean(0), dst - dst.mean(0)
    rotation, _ = Rotation.align_vectors(dc.numpy(), sc.numpy())
    torch.testing.assert_close(m[:3, :3], torch.from_numpy(rotation.as_matrix()), rtol=1e-10, atol=1e-10)


def test_similarity_recovers_scale_and_rigid_keeps_it_one() -> None:
    src, _, _, _ = make_points("rigid", 2, 5)
    scaled = T.apply(T.matrix("similarity", torch.tensor([0.3, 1.0, 2.0, 0.7], dtype=F64), 2), src)
    sim = lossfit.align(src, scaled, model="similarity")
    rig = lossfit.align(src, scaled, model="rigid")
    assert float(torch.linalg.det(sim.matrix[:2, :2])) == pytest.approx(float(torch.exp(torch.tensor(1.4))))
    assert float(torch.linalg.det(rig.matrix[:2, :2])) == pytest.approx(1.0)


def test_zero_weights_equal_dropping_the_points() -> None:
    src, dst, _, bad = make_points("affine", 2, 6, outliers=0.2)
    weighted = lossfit.align(src, dst, model="affine", weights=(~bad).to(F64))
    dropped = lossfit.align(src[~bad], dst[~bad], model="affine")
    torch.testing.assert_close(weighted.matrix, dropped.matrix, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(("model", "loss"), [("affine", "mse"), ("rigid", "cauchy"), ("projective", "huber")])
def test_batch_equals_one_by_one(model: str, loss: str) -> None:
    sets = [make_points(model, 2, 10 + i, outliers=0.2 if loss != "mse" else 0.0) for i in range(3)]
    src = torch.stack([s[0] for s in sets])
    dst = torch.stack([s[1] for s in sets])
    batch = lossfit.align(src, dst, model=model, loss=loss, f_scale=0.05)
    for i in range(3):
        one = lossfit.align(src[i], dst[i], model=model, loss=loss, f_scale=0.05)
        torch.testing.assert_close(batch.matrix[i], one.matrix, rtol=1e-7, atol=1e-7)
    assert batch.matrix.shape == (3, 3, 3) and len(batch.statuses) == 3


def test_same_seed_same_answer() -> None:
    src, dst, _, _ = make_points("affine", 2, 7, outliers=0.3)
    a = lossfit.align(src, dst, loss="cauchy", seed=3)
    b = lossfit.align(src, dst, loss="cauchy", seed=3)
    assert torch.equal(a.matrix, b.matrix)


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda: lossfit.align(torch.zeros(2, 2), torch.zeros(2, 2), model="affine"), ValueError, "at least 3"),
        (lambda: lossfit.align(torch.rand(5, 2), torch.rand(6, 2)), ValueError, "same shape"),
        (lambda: lossfit.align(torch.rand(5, 2), torch.rand(5, 3)), ValueError, "same shape"),
        (lambda: lossfit.align(torch.full((5, 2), float("nan")), torch.rand(5, 2)), ValueError, "finite"),
        (lambda: lossfit.align(torch.rand(5), torch.rand(5)), ValueError, "points"),
        (lambda: lossfit.align([["a", "b"]], [[1, 2]]), TypeError, "real numbers"),
        (lambda: lossfit.align(torch.rand(5, 2), torch.rand(5, 2), model="shear"), ValueError, "model"),
        (lambda: lossfit.align(torch.rand(5, 2), torch.rand(5, 2), loss="l0"), ValueError, "loss"),
        (
            lambda: lossfit.align(torch.rand(5, 2), torch.rand(5, 2), weights=-torch.ones(5)),
            ValueError,
            "weights",
        ),
        (lambda: lossfit.align(torch.rand(5, 1), torch.rand(5, 1), model="rigid"), ValueError, "2 or more"),
    ],
)
def test_bad_input_names_the_argument(call: object, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        call()  # type: ignore[operator]


def test_collinear_points_are_degenerate_for_an_affine_map() -> None:
    t = torch.linspace(0, 1, 10, dtype=F64)
    line = torch.stack([t, 2 * t + 1], dim=1)
    with pytest.raises(ValueError, match="degenerate"):
        lossfit.align(line, line + 1.0, model="affine")
    # ... but they determine a translation.
    assert lossfit.align(line, line + 1.0, model="translation").success


def test_inputs_are_not_modified() -> None:
    src, dst, _, _ = make_points("affine", 2, 8, outliers=0.3)
    before = (src.clone(), dst.clone())
    lossfit.align(src, dst, loss="cauchy")
    assert torch.equal(src, before[0]) and torch.equal(dst, before[1])


def test_exact_inliers_are_reported_as_inliers() -> None:
    """Noise-free inliers (distances at rounding level) must not fall outside a vanishing noise scale."""
    g = torch.Generator().manual_seed(5)
    src = 10 * torch.rand(50, 2, generator=g, dtype=torch.float64)
    truth = lossfit.transforms.matrix("rigid", torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64), 2)
    dst = lossfit.transforms.apply(truth, src)
    dst[:10] += 5 * torch.randn(10, 2, generator=g, dtype=torch.float64)
    fitted = lossfit.align(src, dst, model="rigid", loss="huber")
    clean = torch.arange(50) >= 10
    assert fitted.inliers is not None
    assert bool((fitted.inliers == clean).all())


# -- the robust start and the refinement's parts --------------------------------------------------------------------


@pytest.mark.parametrize(("model", "d"), [c for c in CASES if c[0] != "projective"])
def test_a_known_noise_scale_still_survives_forty_percent_outliers(model: str, d: int) -> None:
    """With ``f_scale`` given, the start stops sampling by RANSAC's rule: sets with many outliers must go on."""
    sets = [make_points(model, d, 40 + i, outliers=0.4) for i in range(8)]
    src, dst = torch.stack([s[0] for s in sets]), torch.stack([s[1] for s in sets])
    fit = lossfit.align(src, dst, model=model, loss="cauchy", f_scale=0.025)
    assert fit.success, fit.message
    for i, (_, _, m, bad) in enumerate(sets):
        assert mean_error(fit.matrix[i], m, src[i]) < 0.02
        assert fit.inliers is not None and bool((fit.inliers[i] == ~bad).all())


def test_robust_start_with_a_known_noise_draws_fewer_samples_on_clean_sets() -> None:
    sets = [make_points("affine", 2, 60 + i, outliers=0.1) for i in range(20)]
    src, dst = torch.stack([s[0] for s in sets]), torch.stack([s[1] for s in sets])
    calls: list[int] = []
    original = P._hypotheses

    def counting(*args: object) -> object:
        calls.append(int(args[5].shape[0]) * int(args[5].shape[1]))  # type: ignore[attr-defined]
        return original(*args)  # type: ignore[arg-type]

    P._hypotheses = counting  # type: ignore[assignment]
    try:
        fixed, _ = P.robust_start("affine", src, dst)
        drawn_fixed = sum(calls)
        calls.clear()
        adaptive, _ = P.robust_start("affine", src, dst, noise=0.01)
        drawn_adaptive = sum(calls)
    finally:
        P._hypotheses = original  # type: ignore[assignment]
    assert drawn_fixed == 20 * P.sample_count(3)
    assert drawn_adaptive < drawn_fixed / 2
    for i, (_, _, m, _) in enumerate(sets):
        assert mean_error(adaptive[i], m, src[i]) < 0.02 and mean_error(fixed[i], m, src[i]) < 0.02


def test_minimal_samples_are_distinct_and_uniform() -> None:
    g = torch.Generator().manual_seed(3)
    picks = P._draw(g, (20000,), 7, 3)
    assert picks.shape == (20000, 3) and int(picks.min()) >= 0 and int(picks.max()) < 7
    assert bool(
        (picks[:, 0] != picks[:, 1]).all() & (picks[:, 0] != picks[:, 2]).all() & (picks[:, 1] != picks[:, 2]).all()
    )
    counts = torch.bincount(picks.reshape(-1), minlength=7).to(F64)
    assert float((counts / counts.mean() - 1).abs().max()) < 0.03
    pairs = torch.bincount(picks[:, 0] * 7 + picks[:, 2], minlength=49).reshape(7, 7).to(F64)
    off = pairs[~torch.eye(7, dtype=torch.bool)]
    assert float((off / off.mean() - 1).abs().max()) < 0.15 and float(pairs.diagonal().sum()) == 0


@pytest.mark.parametrize(("model", "d"), [(m, d) for m in P.LINEAR_MODELS for d in (1, 2, 3)])
def test_minimal_fits_are_exact_and_degenerate_samples_do_not_raise(model: str, d: int) -> None:
    m = true_matrix(model, d, 5)
    k = T.min_points(model, d)
    g = torch.Generator().manual_seed(6)
    s = 10 * torch.rand(50, k, d, generator=g, dtype=F64)
    fitted = P._minimal_fit(model, s, T.apply(m, s))
    torch.testing.assert_close(fitted, m.expand(50, d + 1, d + 1), rtol=1e-9, atol=1e-9)
    if k > 1:
        s[:, -1] = s[:, 0]  # two equal points: no unique transform; a meaningless one (it loses the vote), no error
        assert P._minimal_fit(model, s, T.apply(m, s)).shape == (50, d + 1, d + 1)


def test_median_is_torch_s_lower_median() -> None:
    x = torch.rand(300, 7, 60, dtype=F64)
    x[0, 0, :5] = float("inf")
    torch.testing.assert_close(P._median(x), x.median(dim=-1).values, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("model", P.LINEAR_MODELS)
def test_the_constant_jacobian_is_the_residual_s_derivative(model: str) -> None:
    src, dst, m, _ = make_points(model, 3, 7)
    w = torch.rand(60, dtype=F64, generator=torch.Generator().manual_seed(8))

    def residual(p: torch.Tensor) -> torch.Tensor:
        return ((T.apply(T.matrix(model, p, 3), src) - dst) * w.sqrt().unsqueeze(-1)).reshape(-1)

    expected = torch.func.jacfwd(residual)(T.params(model, m))
    torch.testing.assert_close(P._linear_jacobian(model, src, w.sqrt()), expected, rtol=1e-14, atol=1e-14)
    ones = torch.func.jacfwd(lambda p: (T.apply(T.matrix(model, p, 3), src) - dst).reshape(-1))(T.params(model, m))
    torch.testing.assert_close(P._linear_jacobian(model, src, None), ones, rtol=1e-14, atol=1e-14)


def test_a_batch_spanning_several_parts_equals_one_by_one() -> None:
    """1300 affine sets are refined in three parts (about 2**19 numbers each): the parts must not mix problems."""
    sets = [make_points("affine", 2, 100 + i, n=60, outliers=0.1) for i in range(1300)]
    src, dst = torch.stack([s[0] for s in sets]), torch.stack([s[1] for s in sets])
    batch = lossfit.align(src, dst, model="affine", loss="huber", f_scale=0.02)
    assert batch.success, batch.message
    for i in (0, 623, 624, 1299):
        one = lossfit.align(src[i], dst[i], model="affine", loss="huber", f_scale=0.02)
        torch.testing.assert_close(batch.matrix[i], one.matrix, rtol=1e-7, atol=1e-7)
        assert batch.jacobian is not None and one.jacobian is not None
        torch.testing.assert_close(batch.jacobian[i], one.jacobian)
