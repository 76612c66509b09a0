"""A bank of hard nonlinear regression problems with certified least-squares solutions.

Written in the spirit of NIST's StRD nonlinear regression suite (exponential decays, sums of exponentials,
rational functions, Gaussian peaks on a decaying baseline, logistic growth, saturating curves with flat starts, a
sine sum, a high-curvature power law and badly scaled parameters), but with our own data and starting points.

Data
----
Every data set is generated here, deterministically, from the problem's generating parameters ``truth``:

* ``x`` is a fixed grid of short decimals;
* ``y_i = round(f(x_i, truth) + sigma * z_i, decimals)`` (``relative=True``: ``f * (1 + sigma * z_i)``), where
  ``z_i`` is a pseudo-normal deviate: the sum of 12 uniforms minus 6 (Irwin-Hall; mean 0, variance 1), the uniforms
  being the top 53 bits of a 64-bit linear congruential generator (Knuth's MMIX constants) seeded with ``seed``.
  All of that is exact integer arithmetic, so the noise is the same on every platform; the model values use
  Python's ``math`` functions, and rounding to ``decimals`` absorbs their last-bit differences (the test module
  re-checks the certified residual sum of squares against the data, which would expose any change).
* ``sigma = 0`` means no noise beyond the rounding (a Lanczos-style problem).
* ``boxbod_plateau``, ``eckerle_trap`` and ``enso_slow`` repeat a problem with another noise draw (seed 200, 200,
  202). Those seeds were found by refitting six noise draws (seeds 200-205) of every problem with
  ``lossfit.curve_fit``'s defaults: they are draws on which the defaults claimed success with a wrong answer, kept
  so that the bank exposes it.

The model is evaluated in double precision by the solvers; the data they see are the doubles nearest the decimals.

Certified values
----------------
``certified`` and ``certified_rss`` are the least-squares minimiser and its residual sum of squares
``sum((y - f(x, p))**2)`` for the data exactly as stored in double precision (each double converted exactly).
How they were obtained:

1. a double-precision start: the lowest minimum that ``scipy.optimize.least_squares`` (methods "lm" and "trf",
   ``xtol = ftol = gtol = 1e-15``) found from ``start1``, ``start2``, ``truth`` and 30 random perturbations of
   ``truth`` (log-normal, sd 0.3), so that the certified minimum is the best one known, not merely a local one;
2. :func:`certify` from there: Gauss-Newton in mpmath at 60 significant digits, the Jacobian by the complex-step
   derivative (step 1e-60, evaluated at 120 digits: no cancellation), each step solved by Householder QR
   (``mpmath.qr_solve``), iterated until the largest relative step fell below 1e-40;
3. the same iteration at 80 digits from that answer (until the step fell below 1e-55); the two agree to at least
   40 significant digits on every parameter and on the residual sum of squares, and the 80-digit values are stored,
   rounded to 16 significant digits (at least 11 are required).

``python tests/hard_curves.py`` repeats steps 2 and 3 from the stored values rounded to 8 digits and prints the
literals with their agreement. Where a relabelling leaves the model unchanged (see ``equivalent``) the stored
labelling is the natural one: positive widths, rates in increasing order.

``start1`` is far from the solution and ``start2`` near it, as in the StRD suite. ``difficulty`` is our own
rating, on the StRD scale ("lower", "average", "higher").

Every model ``f(x, p, m=torch)`` is written once for a generic math namespace ``m``: with ``torch`` (the default)
it is pure, vmappable torch code (no in-place operations, no ``.item()``); with ``math`` it generates the data,
and with ``mpmath.mp`` it is certified.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Model = Callable[..., Any]

# ---------------------------------------------------------------------------------------------------------------
# Deterministic noise


_LCG_A = 6364136223846793005
_LCG_C = 1442695040888963407
_MASK = (1 << 64) - 1


def pseudo_normal(seed: int, n: int) -> tuple[float, ...]:
    """``n`` deviates with mean 0 and variance 1: Irwin-Hall sums of 12 uniforms minus 6, from a 64-bit LCG."""
    state = seed & _MASK
    out = []
    for _ in range(n):
        total = 0
        for _ in range(12):
            state = (_LCG_A * state + _LCG_C) & _MASK
            total += state >> 11
        out.append(total / 2**53 - 6.0)
    return tuple(out)


# ---------------------------------------------------------------------------------------------------------------
# The problem type


@dataclass(frozen=True)
class HardCurve:
    """One problem: fit ``y ~ f(x, p)`` by least squares.

    Attributes:
        name: a short identifier.
        f: the model ``f(x, p, m=torch)``; ``f(x, p)`` with tensors is pure torch.
        x, y: the data (doubles).
        start1: the far start; start2: the near start.
        certified: the least-squares parameters, as decimal strings (16 significant digits).
        certified_rss: the residual sum of squares at ``certified``.
        difficulty: "lower", "average" or "higher".
        kind: what the problem is like.
        truth, sigma, decimals, seed, relative: how the data were generated (see the module's docstring).
        equivalent: where the model is invariant under relabelling its parameters (swapping two exponential terms
            or two peaks, the sign of a width that enters squared), maps a parameter vector to every vector that
            gives the same model; ``None`` when the labelling is unique.
    """

    name: str
    f: Model
    x: tuple[float, ...]
    y: tuple[float, ...]
    start1: tuple[float, ...]
    start2: tuple[float, ...]
    certified: tuple[str, ...]
    certified_rss: str
    difficulty: str
    kind: str
    truth: tuple[float, ...]
    sigma: float
    decimals: int
    seed: int
    relative: bool = False
    equivalent: Callable[[Sequence[float]], list[list[float]]] | None = None

    @property
    def n(self) -> int:
        """Number of parameters."""
        return len(self.truth)

    @property
    def m(self) -> int:
        """Number of data points."""
        return len(self.x)

    @property
    def starts(self) -> dict[str, tuple[float, ...]]:
        return {"start1": self.start1, "start2": self.start2}

    def cert(self) -> list[float]:
        """The certified parameters as doubles."""
        return [float(v) for v in self.certified]

    def labellings(self, params: Sequence[float]) -> list[list[float]]:
        """``params`` and every parameter vector equivalent to it (the same model, relabelled)."""
        p = [float(v) for v in params]
        return [p] if self.equivalent is None else self.equivalent(p)

    def tensors(self, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` and ``y`` as tensors."""
        return torch.tensor(self.x, dtype=dtype), torch.tensor(self.y, dtype=dtype)


def _problem(
    name: str,
    f: Model,
    x: list[float],
    truth: tuple[float, ...],
    sigma: float,
    decimals: int,
    seed: int,
    start1: tuple[float, ...],
    start2: tuple[float, ...],
    certified: tuple[str, ...],
    certified_rss: str,
    difficulty: str,
    kind: str,
    relative: bool = False,
    equivalent: Callable[[Sequence[float]], list[list[float]]] | None = None,
) -> HardCurve:
    if not (len(truth) == len(start1) == len(start2) == len(certified)):
        raise ValueError(f"{name}: truth, starts and certified values must have the same length")
    z = pseudo_normal(seed, len(x))
    y = []
    for xi, zi in zip(x, z, strict=True):
        value = f(xi, truth, math)
        value = value * (1 + sigma * zi) if relative else value + sigma * zi
        y.append(round(value, decimals))
    return HardCurve(
        name=name,
        f=f,
        x=tuple(float(v) for v in x),
        y=tuple(float(v) for v in y),
        start1=start1,
        start2=start2,
        certified=certified,
        certified_rss=certified_rss,
        difficulty=difficulty,
        kind=kind,
        truth=truth,
        sigma=sigma,
        decimals=decimals,
        seed=seed,
        relative=relative,
        equivalent=equivalent,
    )


def _grid(first: float, step: float, count: int, digits: int = 6) -> list[float]:
    """``count`` points ``first + i * step``, rounded to ``digits`` decimals (short decimals, exact to type)."""
    return [round(first + i * step, digits) for i in range(count)]


# ---------------------------------------------------------------------------------------------------------------
# Models (generic in the math namespace ``m``: torch, math or mpmath.mp)


def saturating_exp(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 (1 - exp(-p1 x))``: Misra1a/BoxBOD-like."""
    return p[0] * (1 - m.exp(-p[1] * x))


def saturating_rational(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 (1 - (1 + p1 x / 2)^-2)``: Misra1b-like."""
    return p[0] * (1 - (1 + p[1] * x / 2) ** -2)


def decay_over_line(x: Any, p: Any, m: Any = torch) -> Any:
    """``exp(-p0 x) / (p1 + p2 x)``: Chwirut-like."""
    return m.exp(-p[0] * x) / (p[1] + p[2] * x)


def power_law(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 x^p1``: DanWood-like."""
    return p[0] * x ** p[1]


def michaelis_menten(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 x / (p1 + x)``."""
    return p[0] * x / (p[1] + x)


def logistic3(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 / (1 + exp(p1 - p2 x))``: Rat42-like."""
    return p[0] / (1 + m.exp(p[1] - p[2] * x))


def richards4(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 / (1 + exp(p1 - p2 x))^(1 / p3)``: Rat43-like."""
    return p[0] / (1 + m.exp(p[1] - p[2] * x)) ** (1 / p[3])


def rational33(x: Any, p: Any, m: Any = torch) -> Any:
    """Cubic over cubic (constant term 1 below): Thurber-like."""
    num = p[0] + p[1] * x + p[2] * x**2 + p[3] * x**3
    den = 1 + p[4] * x + p[5] * x**2 + p[6] * x**3
    return num / den


def rational22(x: Any, p: Any, m: Any = torch) -> Any:
    """Quadratic over quadratic: Kirby2-like, with parameters spanning five decades."""
    return (p[0] + p[1] * x + p[2] * x**2) / (1 + p[3] * x + p[4] * x**2)


def enzyme_rational(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 (x^2 + p1 x) / (x^2 + p2 x + p3)``: MGH09 (Kowalik-Osborne)-like."""
    return p[0] * (x**2 + p[1] * x) / (x**2 + p[2] * x + p[3])


def vapour_pressure(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 exp(p1 / (x + p2))``: MGH10 (Meyer)-like, with p0 ~ 5e-3, p1 ~ 6e3, p2 ~ 3e2."""
    return p[0] * m.exp(p[1] / (x + p[2]))


def shifted_power(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 (p1 + x)^(-1 / p2)``: Bennett5-like (superconductor magnetisation)."""
    return p[0] * (p[1] + x) ** (-1 / p[2])


def gaussian_peak(x: Any, p: Any, m: Any = torch) -> Any:
    """``(p0 / p1) exp(-((x - p2) / p1)^2 / 2)``: Eckerle4-like."""
    return (p[0] / p[1]) * m.exp(-0.5 * ((x - p[2]) / p[1]) ** 2)


def three_exponentials(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 exp(-p1 x) + p2 exp(-p3 x) + p4 exp(-p5 x)``: Lanczos-like."""
    return p[0] * m.exp(-p[1] * x) + p[2] * m.exp(-p[3] * x) + p[4] * m.exp(-p[5] * x)


def two_peaks_on_decay(x: Any, p: Any, m: Any = torch) -> Any:
    """An exponential baseline and two Gaussian peaks: Gauss1-3-like."""
    base = p[0] * m.exp(-p[1] * x)
    return base + p[2] * m.exp(-(((x - p[3]) / p[4]) ** 2)) + p[5] * m.exp(-(((x - p[6]) / p[7]) ** 2))


def sine_sum(x: Any, p: Any, m: Any = torch) -> Any:
    """A constant, an annual cycle and two cycles of fitted period: ENSO-like."""
    w = 2 * m.pi * x
    return (
        p[0]
        + p[1] * m.cos(w / 12)
        + p[2] * m.sin(w / 12)
        + p[4] * m.cos(w / p[3])
        + p[5] * m.sin(w / p[3])
        + p[7] * m.cos(w / p[6])
        + p[8] * m.sin(w / p[6])
    )


def two_exponentials_offset(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 + p1 exp(-p3 x) + p2 exp(-p4 x)``: MGH17 (Osborne 1)-like."""
    return p[0] + p[1] * m.exp(-p[3] * x) + p[2] * m.exp(-p[4] * x)


def line_and_arctan(x: Any, p: Any, m: Any = torch) -> Any:
    """``p0 - p1 x - atan(p2 / (x - p3)) / pi``: Roszman1-like."""
    return p[0] - p[1] * x - m.atan(p[2] / (x - p[3])) / m.pi


# ---------------------------------------------------------------------------------------------------------------
# Relabellings that leave a model unchanged


def _peak_sign(p: Sequence[float]) -> list[list[float]]:
    """Eckerle-like: ``(p0, p1) -> (-p0, -p1)``."""
    return [list(p), [-p[0], -p[1], p[2]]]


def _exponential_terms(p: Sequence[float]) -> list[list[float]]:
    """Lanczos-like: any order of the three (amplitude, rate) pairs."""
    pairs = [(p[0], p[1]), (p[2], p[3]), (p[4], p[5])]
    return [[v for pair in order for v in pair] for order in itertools.permutations(pairs)]


def _two_exponential_terms(p: Sequence[float]) -> list[list[float]]:
    """Osborne-like: swap the two (amplitude, rate) pairs."""
    return [list(p), [p[0], p[2], p[1], p[4], p[3]]]


def _two_peaks(p: Sequence[float]) -> list[list[float]]:
    """Gauss-like: either order of the peaks, either sign of each width."""
    peaks = [(p[2], p[3], p[4]), (p[5], p[6], p[7])]
    out = []
    for first, second in (peaks, peaks[::-1]):
        for s1, s2 in itertools.product((1.0, -1.0), repeat=2):
            out.append([p[0], p[1], first[0], first[1], s1 * first[2], second[0], second[1], s2 * second[2]])
    return out


def _two_cycles(p: Sequence[float]) -> list[list[float]]:
    """ENSO-like: either order of the fitted cycles; ``(period, a, b) -> (-period, a, -b)`` for each."""
    cycles = [(p[3], p[4], p[5]), (p[6], p[7], p[8])]
    out = []
    for first, second in (cycles, cycles[::-1]):
        for s1, s2 in itertools.product((1.0, -1.0), repeat=2):
            c1 = [s1 * first[0], first[1], s1 * first[2]]
            c2 = [s2 * second[0], second[1], s2 * second[2]]
            out.append([p[0], p[1], p[2], *c1, *c2])
    return out


# ---------------------------------------------------------------------------------------------------------------
# Certification (mpmath; run ``python tests/hard_curves.py``)


def certify(
    problem: HardCurve, start: Any = None, dps: int = 60, step_tol: float = 1e-40, max_iter: int = 500
) -> tuple[list[Any], Any, int]:
    """The least-squares minimiser near ``start`` (default: the stored certified values) in mpmath.

    Gauss-Newton at ``dps`` significant digits on the data exactly as stored (each double converted exactly). The
    Jacobian comes from the complex-step derivative ``Im f(x, p + i h e_j) / h`` with ``h = 10**-dps``, evaluated
    at ``2 * dps`` digits (truncation error of order ``h**2``; the extra digits absorb the cancellation inside some
    complex functions); each step solves ``J d = -r`` by Householder QR. Iterates until the largest relative step
    is below ``step_tol``.

    Returns:
        The parameters (mpf), the residual sum of squares (mpf) and the number of iterations.
    """
    import mpmath

    ctx = mpmath.mp
    with ctx.workdps(dps):
        xs = [ctx.mpf(v) for v in problem.x]
        ys = [ctx.mpf(v) for v in problem.y]
        p = [ctx.mpf(v) for v in (problem.certified if start is None else start)]
        h = ctx.mpf(10) ** -dps
        n = len(p)
        iterations, relative = 0, ctx.inf
        while relative >= step_tol:
            if iterations == max_iter:
                raise RuntimeError(f"{problem.name}: Gauss-Newton did not converge in {max_iter} iterations")
            iterations += 1
            r = ctx.matrix([problem.f(xi, p, ctx) - yi for xi, yi in zip(xs, ys, strict=True)])
            jac = ctx.matrix(len(xs), n)
            with ctx.workdps(2 * dps):  # room for the digits some complex functions (atan) lose to cancellation
                for j in range(n):
                    shifted = [ctx.mpc(v, h) if k == j else v for k, v in enumerate(p)]
                    for i, xi in enumerate(xs):
                        jac[i, j] = ctx.im(problem.f(xi, shifted, ctx)) / h
            d, _ = ctx.qr_solve(jac, -r)
            p = [p[j] + d[j] for j in range(n)]
            relative = max(abs(d[j]) / abs(p[j]) for j in range(n))
        rss = ctx.fsum((problem.f(xi, p, ctx) - yi) ** 2 for xi, yi in zip(xs, ys, strict=True))
        return [+v for v in p], +rss, iterations


# ---------------------------------------------------------------------------------------------------------------
# The bank


PROBLEMS: tuple[HardCurve, ...] = (
    _problem(
        "misra_exp",
        saturating_exp,
        _grid(60, 55, 14),
        truth=(245.0, 5.2e-4),
        sigma=0.08,
        decimals=3,
        seed=101,
        start1=(400.0, 2.0e-4),
        start2=(240.0, 5.5e-4),
        certified=("243.4988985334032", "0.0005236569905419652"),
        certified_rss="0.07862080943715197",
        difficulty="lower",
        kind="saturating exponential (Misra1a-like)",
    ),
    _problem(
        "misra_rational",
        saturating_rational,
        _grid(60, 55, 14),
        truth=(340.0, 3.9e-4),
        sigma=0.05,
        decimals=3,
        seed=102,
        start1=(600.0, 1.0e-4),
        start2=(300.0, 3.0e-4),
        certified=("339.9435141021896", "0.0003901502631084852"),
        certified_rss="0.03110329858023029",
        difficulty="lower",
        kind="saturating rational (Misra1b-like)",
    ),
    _problem(
        "chwirut_like",
        decay_over_line,
        _grid(0.5, 0.1, 54, 1),
        truth=(0.19, 0.0061, 0.0105),
        sigma=2.0,
        decimals=3,
        seed=103,
        start1=(0.1, 0.01, 0.02),
        start2=(0.15, 0.008, 0.01),
        certified=("0.215099137860501", "0.006267844634653302", "0.009816356245473036"),
        certified_rss="172.3064308795124",
        difficulty="lower",
        kind="exponential decay over a line (Chwirut-like)",
    ),
    _problem(
        "danwood_like",
        power_law,
        _grid(1.30, 0.06, 6, 2),
        truth=(0.75, 3.9),
        sigma=0.01,
        decimals=3,
        seed=104,
        start1=(1.0, 5.0),
        start2=(0.7, 4.0),
        certified=("0.7463389441479683", "3.914869848949336"),
        certified_rss="0.0003046822287802599",
        difficulty="lower",
        kind="power law (DanWood-like)",
    ),
    _problem(
        "boxbod_like",
        saturating_exp,
        [1.0, 2.0, 3.0, 5.0, 7.0, 10.0],
        truth=(210.0, 0.55),
        sigma=12.0,
        decimals=0,
        seed=105,
        start1=(1.0, 5.0),
        start2=(100.0, 0.75),
        certified=("220.5830960044358", "0.5125395353669622"),
        certified_rss="134.1388245321379",
        difficulty="higher",
        kind="saturating exponential, 6 noisy points, flat start (BoxBOD-like)",
    ),
    _problem(
        "michaelis_flat",
        michaelis_menten,
        [0.02, 0.04, 0.06, 0.08, 0.11, 0.15, 0.22, 0.3, 0.45, 0.7, 1.1, 2.0],
        truth=(2.1, 0.35),
        sigma=0.03,
        decimals=4,
        seed=106,
        start1=(1.0, 100.0),
        start2=(2.0, 0.5),
        certified=("2.107537020304002", "0.3711611044183965"),
        certified_rss="0.006667112242130394",
        difficulty="average",
        kind="Michaelis-Menten from a flat, nearly linear start",
    ),
    _problem(
        "rat42_like",
        logistic3,
        [8.0, 15.0, 22.0, 30.0, 40.0, 52.0, 61.0, 72.0, 80.0],
        truth=(72.5, 2.6, 0.067),
        sigma=0.4,
        decimals=2,
        seed=107,
        start1=(120.0, 1.0, 0.12),
        start2=(70.0, 2.3, 0.06),
        certified=("72.37282204605897", "2.638294806114433", "0.06812109861441997"),
        certified_rss="0.5706199776260698",
        difficulty="higher",
        kind="logistic growth (Rat42-like)",
    ),
    _problem(
        "rat43_like",
        richards4,
        _grid(1, 1, 15, 0),
        truth=(700.0, 5.3, 0.76, 1.28),
        sigma=8.0,
        decimals=1,
        seed=108,
        start1=(100.0, 10.0, 1.0, 1.0),
        start2=(700.0, 5.0, 0.75, 1.3),
        certified=("700.3724762864551", "5.189972425403908", "0.7550452272504446", "1.241104456128243"),
        certified_rss="734.9531902725331",
        difficulty="higher",
        kind="generalised logistic (Rat43-like)",
    ),
    _problem(
        "thurber_like",
        rational33,
        _grid(-3.0, 0.14, 37, 2),
        truth=(1288.1, 1491.1, 583.2, 75.4, 0.966, 0.398, 0.0497),
        sigma=8.0,
        decimals=3,
        seed=109,
        start1=(900.0, 1100.0, 350.0, 30.0, 0.6, 0.25, 0.02),
        start2=(1250.0, 1450.0, 560.0, 70.0, 0.95, 0.38, 0.045),
        certified=(
            "1290.868792660401",
            "1516.240551209967",
            "599.1451853057271",
            "78.23176383022101",
            "0.9816084787412834",
            "0.4047847439530465",
            "0.05361270685987207",
        ),
        certified_rss="1787.320282750658",
        difficulty="higher",
        kind="cubic over cubic rational (Thurber-like)",
    ),
    _problem(
        "kowalik_like",
        enzyme_rational,
        [5.0, 3.0, 1.6, 1.0, 0.6, 0.4, 0.28, 0.2, 0.14, 0.1, 0.07],
        truth=(0.1928, 0.1913, 0.1231, 0.1361),
        sigma=0.004,
        decimals=4,
        seed=110,
        start1=(10.0, 30.0, 20.0, 25.0),
        start2=(0.25, 0.39, 0.415, 0.39),
        certified=("0.1928394849795882", "0.1336303725532425", "0.07484446436321257", "0.1205801282663055"),
        certified_rss="6.056691082886732e-5",
        difficulty="higher",
        kind="enzyme-kinetics rational (MGH09-like)",
    ),
    _problem(
        "mgh10_like",
        vapour_pressure,
        _grid(50, 5, 16, 0),
        truth=(0.0056096, 6181.35, 345.22),
        sigma=2e-4,
        decimals=0,
        seed=111,
        relative=True,
        start1=(1.0, 3.0e5, 2.0e4),
        start2=(0.02, 4000.0, 250.0),
        certified=("0.005589922670176273", "6185.111293546815", "345.3771824295881"),
        certified_rss="94.56748377508484",
        difficulty="higher",
        kind="badly scaled exponential of a reciprocal (MGH10-like)",
    ),
    _problem(
        "bennett_like",
        shifted_power,
        _grid(7.45, 0.028, 154, 3),
        truth=(-2500.0, 46.0, 0.93),
        sigma=0.002,
        decimals=4,
        seed=112,
        start1=(-1800.0, 55.0, 0.75),
        start2=(-2200.0, 44.0, 0.9),
        certified=("-2480.389964814751", "45.90788971660101", "0.9313129449878848"),
        certified_rss="0.0006693940869438892",
        difficulty="higher",
        kind="shifted power law, high curvature (Bennett5-like)",
    ),
    _problem(
        "eckerle_like",
        gaussian_peak,
        _grid(400, 100 / 34, 35, 3),
        truth=(1.554, 4.089, 451.54),
        sigma=0.0005,
        decimals=5,
        seed=113,
        start1=(1.0, 9.0, 495.0),
        start2=(1.5, 5.0, 450.0),
        certified=("1.554625034689079", "4.089769032764422", "451.532911325444"),
        certified_rss="7.518876770021154e-6",
        difficulty="higher",
        kind="one Gaussian peak, far start off the peak (Eckerle4-like)",
        equivalent=_peak_sign,
    ),
    _problem(
        "lanczos_like",
        three_exponentials,
        _grid(0, 0.05, 24, 2),
        truth=(0.12, 1.1, 0.8, 3.1, 1.55, 5.2),
        sigma=0.0,
        decimals=5,
        seed=114,
        start1=(1.0, 0.5, 3.0, 4.0, 5.0, 8.0),
        start2=(0.3, 0.8, 1.0, 3.0, 1.3, 5.5),
        certified=(
            "0.1198657059016887",
            "1.099130957401682",
            "0.8011304688241956",
            "3.100802060568594",
            "1.549004430181878",
            "5.200893848819159",
        ),
        certified_rss="2.121018221389096e-10",
        difficulty="average",
        kind="three nearly degenerate exponentials, data rounded to 5 decimals (Lanczos-like)",
        equivalent=_exponential_terms,
    ),
    _problem(
        "gauss_separated",
        two_peaks_on_decay,
        _grid(1, 1, 250, 0),
        truth=(95.0, 0.011, 105.0, 70.0, 22.0, 75.0, 175.0, 19.0),
        sigma=2.5,
        decimals=4,
        seed=115,
        start1=(90.0, 0.008, 90.0, 75.0, 30.0, 60.0, 165.0, 25.0),
        start2=(95.0, 0.0105, 100.0, 69.0, 22.0, 72.0, 176.0, 19.0),
        certified=(
            "95.02000814641614",
            "0.01110139795215346",
            "105.1121901231189",
            "70.0363020516834",
            "21.9747103153583",
            "74.83990914791115",
            "175.056131626245",
            "19.21764452042498",
        ),
        certified_rss="1464.44637215314",
        difficulty="lower",
        kind="two well separated Gaussian peaks on an exponential baseline (Gauss1-like)",
        equivalent=_two_peaks,
    ),
    _problem(
        "gauss_overlap",
        two_peaks_on_decay,
        _grid(1, 1, 250, 0),
        truth=(97.0, 0.0108, 102.0, 112.0, 23.0, 75.0, 146.0, 20.0),
        sigma=2.5,
        decimals=4,
        seed=116,
        start1=(90.0, 0.009, 90.0, 115.0, 20.0, 70.0, 140.0, 25.0),
        start2=(96.0, 0.0105, 100.0, 111.0, 23.0, 74.0, 147.0, 20.0),
        certified=(
            "96.93542327392513",
            "0.01085086162728036",
            "102.6945789387809",
            "112.2970359741249",
            "23.53455949127363",
            "72.82765059849764",
            "146.5525888890057",
            "19.93091307803571",
        ),
        certified_rss="1575.292429673228",
        difficulty="average",
        kind="two overlapping Gaussian peaks on an exponential baseline (Gauss3-like)",
        equivalent=_two_peaks,
    ),
    _problem(
        "enso_like",
        sine_sum,
        _grid(1, 1, 168, 0),
        truth=(11.0, 3.2, 0.6, 42.0, -1.8, 0.7, 25.5, 0.4, 1.6),
        sigma=2.0,
        decimals=2,
        seed=117,
        start1=(10.0, 3.0, 0.3, 38.0, -1.0, -1.0, 24.0, 0.0, 1.0),
        start2=(11.0, 3.2, 0.6, 42.5, -1.7, 0.6, 25.8, 0.3, 1.5),
        certified=(
            "11.07496563970928",
            "2.828381544731456",
            "0.704727249569528",
            "42.47875270057379",
            "-1.702286156468174",
            "0.9164445718702883",
            "24.88962567093815",
            "-0.3889173459392813",
            "1.107550216357987",
        ),
        certified_rss="556.8755339744855",
        difficulty="average",
        kind="sum of sines with fitted periods (ENSO-like)",
        equivalent=_two_cycles,
    ),
    _problem(
        "kirby_like",
        rational22,
        _grid(10, 790 / 150, 151, 2),
        truth=(1.7, -0.14, 0.0026, -0.0017, 2.2e-5),
        sigma=0.1,
        decimals=3,
        seed=118,
        start1=(2.5, -0.1, 0.004, -0.001, 1.0e-5),
        start2=(1.5, -0.15, 0.0025, -0.0015, 2.0e-5),
        certified=(
            "1.677958588963259",
            "-0.1396395642263863",
            "0.002592734004499498",
            "-0.001707892964086999",
            "2.194972238679985e-5",
        ),
        certified_rss="1.522900846529209",
        difficulty="average",
        kind="quadratic over quadratic, parameters over five decades (Kirby2-like)",
    ),
    _problem(
        "osborne_like",
        two_exponentials_offset,
        _grid(0, 10, 33, 0),
        truth=(0.37, 1.95, -1.46, 0.0125, 0.0225),
        sigma=0.002,
        decimals=4,
        seed=119,
        start1=(40.0, 120.0, -90.0, 0.8, 1.6),
        start2=(0.5, 1.5, -1.0, 0.01, 0.02),
        certified=(
            "0.3674189828410702",
            "1.66212820700916",
            "-1.16941551690683",
            "0.01182045529131099",
            "0.02430525772523689",
        ),
        certified_rss="9.369850408364275e-5",
        difficulty="average",
        kind="offset plus two exponentials of opposite sign (MGH17-like)",
        equivalent=_two_exponential_terms,
    ),
    _problem(
        "roszman_like",
        line_and_arctan,
        _grid(-4800, 180, 25, 0),
        truth=(0.2, -6.0e-6, 1200.0, -180.0),
        sigma=0.002,
        decimals=4,
        seed=120,
        start1=(0.1, -1.0e-5, 1000.0, -100.0),
        start2=(0.2, -5.0e-6, 1200.0, -150.0),
        certified=("0.2129070690243962", "-7.815336049286834e-6", "1132.08123774686", "-157.2630870906816"),
        certified_rss="0.0001288808821594721",
        difficulty="average",
        kind="line plus arctangent, badly scaled slope (Roszman1-like)",
    ),
    _problem(
        "lanczos_exact",
        three_exponentials,
        _grid(0, 0.05, 24, 2),
        truth=(0.12, 1.1, 0.8, 3.1, 1.55, 5.2),
        sigma=0.0,
        decimals=13,
        seed=121,
        start1=(1.0, 0.5, 3.0, 4.0, 5.0, 8.0),
        start2=(0.3, 0.8, 1.0, 3.0, 1.3, 5.5),
        certified=(
            "0.1200000000158739",
            "1.100000000062936",
            "0.8000000000389203",
            "3.100000000108629",
            "1.5499999999452",
            "5.200000000034193",
        ),
        certified_rss="1.463661965054715e-26",
        difficulty="average",
        kind="three nearly degenerate exponentials, data to 13 decimals: a near-zero residual (Lanczos1-like)",
        equivalent=_exponential_terms,
    ),
    _problem(
        "hahn_like",
        rational33,
        _grid(24, 3.65, 236, 2),
        truth=(1.08, -0.123, 4.09e-3, -1.43e-6, -5.76e-3, 2.41e-4, -1.23e-7),
        sigma=0.08,
        decimals=3,
        seed=122,
        start1=(5.0, -0.5, 0.02, -1.0e-5, -0.02, 1.0e-3, -1.0e-6),
        start2=(1.0, -0.1, 0.005, -1.0e-6, -0.005, 2.0e-4, -1.0e-7),
        certified=(
            "1.549120623418065",
            "-0.1548545468155489",
            "0.004631556362079296",
            "-1.775083951123394e-6",
            "-0.005993749643348047",
            "0.000267579006078935",
            "-1.419618302258209e-7",
        ),
        certified_rss="1.512527841292663",
        difficulty="average",
        kind="cubic over cubic, parameters over seven decades, 236 points (Hahn1-like)",
    ),
    _problem(
        "boxbod_plateau",
        saturating_exp,
        [1.0, 2.0, 3.0, 5.0, 7.0, 10.0],
        truth=(210.0, 0.55),
        sigma=12.0,
        decimals=0,
        seed=200,
        start1=(1.0, 5.0),
        start2=(100.0, 0.75),
        certified=("214.191490568462", "0.5610694151028916"),
        certified_rss="835.7850129691703",
        difficulty="higher",
        kind="boxbod_like with another noise draw: from start1 the rate runs off to a plateau at infinity",
    ),
    _problem(
        "eckerle_trap",
        gaussian_peak,
        _grid(400, 100 / 34, 35, 3),
        truth=(1.554, 4.089, 451.54),
        sigma=0.0005,
        decimals=5,
        seed=200,
        start1=(1.0, 9.0, 495.0),
        start2=(1.5, 5.0, 450.0),
        certified=("1.556850242167582", "4.093035357933989", "451.5397427450384"),
        certified_rss="6.202554467433454e-6",
        difficulty="higher",
        kind="eckerle_like with another noise draw: a local minimum (a small dip in the noise) near start1",
        equivalent=_peak_sign,
    ),
    _problem(
        "enso_slow",
        sine_sum,
        _grid(1, 1, 168, 0),
        truth=(11.0, 3.2, 0.6, 42.0, -1.8, 0.7, 25.5, 0.4, 1.6),
        sigma=2.0,
        decimals=2,
        seed=202,
        start1=(10.0, 3.0, 0.3, 38.0, -1.0, -1.0, 24.0, 0.0, 1.0),
        start2=(11.0, 3.2, 0.6, 42.5, -1.7, 0.6, 25.8, 0.3, 1.5),
        certified=(
            "10.57067181222225",
            "2.993876033747734",
            "0.4778723166206442",
            "42.65027059202274",
            "-1.159971928713483",
            "0.7158050396049507",
            "25.8425636709885",
            "0.8500399183349464",
            "1.45412618122483",
        ),
        certified_rss="703.0133822346891",
        difficulty="average",
        kind="enso_like with another noise draw: slow, linear final convergence",
        equivalent=_two_cycles,
    ),
)


def _main() -> None:
    """Re-certify every problem from its stored values rounded to 8 digits, at 60 and at 80 digits."""
    import mpmath

    for problem in PROBLEMS:
        rough = [float(f"{v:.8g}") for v in problem.cert()]
        p60, rss60, it60 = certify(problem, rough, dps=60, step_tol=1e-40)
        p80, rss80, it80 = certify(problem, p60, dps=80, step_tol=1e-55)
        agree = min(
            float(-mpmath.log10(abs(a - b) / abs(b))) if a != b else 80.0
            for a, b in zip([*p60, rss60], [*p80, rss80], strict=True)
        )
        stored = min(
            float(-mpmath.log10(abs(mpmath.mpf(s) - b) / abs(b))) if mpmath.mpf(s) != b else 80.0
            for s, b in zip([*problem.certified, problem.certified_rss], [*p80, rss80], strict=True)
        )
        print(
            f"{problem.name}: {it60} + {it80} iterations; 60 vs 80 digits agree to {agree:.1f}, stored to {stored:.1f}"
        )
        print("    certified=(" + ", ".join(f'"{mpmath.nstr(v, 16)}"' for v in p80) + "),")
        print(f'    certified_rss="{mpmath.nstr(rss80, 16)}",')


if __name__ == "__main__":
    _main()


def lre(estimate: float, certified: float) -> float:
    """Correct significant digits of ``estimate`` (capped at 15: the certified literals carry 16)."""
    if not math.isfinite(estimate):
        return 0.0
    if estimate == certified:
        return 15.0
    return max(0.0, min(15.0, -math.log10(abs(estimate - certified) / abs(certified))))


def correct_digits(problem: HardCurve, params: list[float]) -> float:
    """The smallest LRE over the parameters, for the best relabelling of ``params``."""
    cert = problem.cert()
    return max(min(lre(e, c) for e, c in zip(p, cert, strict=True)) for p in problem.labellings(params))
