"""Moré-Garbow-Hillstrom nonlinear least-squares test problems.

A bank of the residual test functions from J. J. Moré, B. S. Garbow and
K. E. Hillstrom, "Testing unconstrained optimization software", ACM
Transactions on Mathematical Software 7(1), 17-41 (1981), written as pure,
functional torch code so that every residual works under ``torch.func.vmap``,
``torch.func.jacfwd`` and ``torch.func.jacrev``.

Conventions
-----------
* ``residual(x)`` maps ``x`` of shape ``(n,)`` to ``r`` of shape ``(m,)``; the
  objective is ``f(x) = sum(r_i(x) ** 2)`` (MGH convention, no factor 1/2).
* ``x0`` is the standard MGH starting point.
* ``f_min`` is the smallest minimum MGH publishes.  MGH print six significant
  figures; the values stored here carry more digits (obtained by minimising
  the residuals below in float64 with a Levenberg-Marquardt solver) and agree
  with the published figures to within one unit in the sixth digit (MGH
  mostly truncate), so tests may use a relative tolerance of about 1e-6.
* ``f_alt`` lists other published (finite) local minima that a correct local
  solver may legitimately reach from ``x0``.
* ``x_min`` is given only where the minimiser is unique and MGH publish it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Problem:
    """One MGH least-squares test problem."""

    name: str
    residual: Callable[[Tensor], Tensor]
    x0: tuple[float, ...]
    f_min: float
    x_min: tuple[float, ...] | None = None
    note: str = ""
    f_alt: tuple[float, ...] = ()

    @property
    def n(self) -> int:
        """Number of variables."""
        return len(self.x0)

    @property
    def m(self) -> int:
        """Number of residuals (evaluated once at ``x0``)."""
        return int(self.residual(self.x0_tensor()).shape[0])

    def x0_tensor(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """The starting point as a tensor."""
        return torch.tensor(self.x0, dtype=dtype, device=device)

    def objective(self, x: Tensor) -> Tensor:
        """``f(x) = sum(r(x) ** 2)``."""
        r = self.residual(x)
        return (r * r).sum(-1)


def _c(values: tuple[float, ...], x: Tensor) -> Tensor:
    """Constant tensor matching the dtype and device of ``x``."""
    return torch.tensor(values, dtype=x.dtype, device=x.device)


def _seq(start: float, stop: float, x: Tensor) -> Tensor:
    """``start, start + 1, ..., stop`` as a tensor like ``x``."""
    return torch.arange(start, stop + 1, dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------------------
# Data tables (MGH 1981).
# ---------------------------------------------------------------------------

_BARD_Y = (0.14, 0.18, 0.22, 0.25, 0.29, 0.32, 0.35, 0.39, 0.37, 0.58, 0.73, 0.96, 1.34, 2.10, 4.39)

_GAUSSIAN_Y = (
    0.0009,
    0.0044,
    0.0175,
    0.0540,
    0.1295,
    0.2420,
    0.3521,
    0.3989,
    0.3521,
    0.2420,
    0.1295,
    0.0540,
    0.0175,
    0.0044,
    0.0009,
)

_MEYER_Y = (
    34780.0,
    28610.0,
    23650.0,
    19630.0,
    16370.0,
    13720.0,
    11540.0,
    9744.0,
    8261.0,
    7030.0,
    6005.0,
    5147.0,
    4427.0,
    3820.0,
    3307.0,
    2872.0,
)

_KOWALIK_Y = (0.1957, 0.1947, 0.1735, 0.1600, 0.0844, 0.0627, 0.0456, 0.0342, 0.0323, 0.0235, 0.0246)
_KOWALIK_U = (4.0, 2.0, 1.0, 0.5, 0.25, 0.167, 0.125, 0.1, 0.0833, 0.0714, 0.0625)

_OSBORNE1_Y = (
    0.844,
    0.908,
    0.932,
    0.936,
    0.925,
    0.908,
    0.881,
    0.850,
    0.818,
    0.784,
    0.751,
    0.718,
    0.685,
    0.658,
    0.628,
    0.603,
    0.580,
    0.558,
    0.538,
    0.522,
    0.506,
    0.490,
    0.478,
    0.467,
    0.457,
    0.448,
    0.438,
    0.431,
    0.424,
    0.420,
    0.414,
    0.411,
    0.406,
)

_OSBORNE2_Y = (
    1.366,
    1.191,
    1.112,
    1.013,
    0.991,
    0.885,
    0.831,
    0.847,
    0.786,
    0.725,
    0.746,
    0.679,
    0.608,
    0.655,
    0.616,
    0.606,
    0.602,
    0.626,
    0.651,
    0.724,
    0.649,
    0.649,
    0.694,
    0.644,
    0.624,
    0.661,
    0.612,
    0.558,
    0.533,
    0.495,
    0.500,
    0.423,
    0.395,
    0.375,
    0.372,
    0.391,
    0.396,
    0.405,
    0.428,
    0.429,
    0.523,
    0.562,
    0.607,
    0.653,
    0.672,
    0.708,
    0.633,
    0.668,
    0.645,
    0.632,
    0.591,
    0.559,
    0.597,
    0.625,
    0.739,
    0.710,
    0.729,
    0.720,
    0.636,
    0.581,
    0.428,
    0.292,
    0.162,
    0.098,
    0.054,
)


# ---------------------------------------------------------------------------
# Residual functions, numbered as in MGH.
# ---------------------------------------------------------------------------


# (1) Rosenbrock, n = m = 2.
def rosenbrock(x: Tensor) -> Tensor:
    return torch.stack([10.0 * (x[1] - x[0] ** 2), 1.0 - x[0]])


# (2) Freudenstein and Roth, n = m = 2.
def freudenstein_roth(x: Tensor) -> Tensor:
    x1, x2 = x[0], x[1]
    return torch.stack(
        [
            -13.0 + x1 + ((5.0 - x2) * x2 - 2.0) * x2,
            -29.0 + x1 + ((x2 + 1.0) * x2 - 14.0) * x2,
        ]
    )


# (3) Powell badly scaled, n = m = 2.
def powell_badly_scaled(x: Tensor) -> Tensor:
    x1, x2 = x[0], x[1]
    return torch.stack(
        [
            1.0e4 * x1 * x2 - 1.0,
            torch.exp(-x1) + torch.exp(-x2) - 1.0001,
        ]
    )


# (4) Brown badly scaled, n = 2, m = 3.
def brown_badly_scaled(x: Tensor) -> Tensor:
    x1, x2 = x[0], x[1]
    return torch.stack([x1 - 1.0e6, x2 - 2.0e-6, x1 * x2 - 2.0])


# (5) Beale, n = 2, m = 3.
def beale(x: Tensor) -> Tensor:
    y = _c((1.5, 2.25, 2.625), x)
    i = _seq(1, 3, x)
    return y - x[0] * (1.0 - x[1] ** i)


# (6) Jennrich and Sampson, n = 2, m = 10.
def jennrich_sampson(x: Tensor) -> Tensor:
    i = _seq(1, 10, x)
    return 2.0 + 2.0 * i - (torch.exp(i * x[0]) + torch.exp(i * x[1]))


# (7) Helical valley, n = m = 3.
def helical_valley(x: Tensor) -> Tensor:
    x1, x2, x3 = x[0], x[1], x[2]
    # MGH: theta = atan(x2/x1)/(2 pi) for x1 > 0 and that + 1/2 for x1 < 0,
    # i.e. the polar angle taken in (-pi/2, 3pi/2] over 2 pi.  The identity
    # atan2(-x1, x2) + pi/2 gives exactly that angle, smooth everywhere off
    # the ray {x1 = 0, x2 < 0} (the same cut as MGH) and defined at x1 = 0.
    theta = torch.atan2(-x1, x2) / (2.0 * math.pi) + 0.25
    return torch.stack(
        [
            10.0 * (x3 - 10.0 * theta),
            10.0 * (torch.sqrt(x1**2 + x2**2) - 1.0),
            x3,
        ]
    )


# (8) Bard, n = 3, m = 15.
def bard(x: Tensor) -> Tensor:
    u = _seq(1, 15, x)
    v = 16.0 - u
    w = torch.minimum(u, v)
    return _c(_BARD_Y, x) - (x[0] + u / (v * x[1] + w * x[2]))


# (9) Gaussian, n = 3, m = 15.
def gaussian(x: Tensor) -> Tensor:
    t = (8.0 - _seq(1, 15, x)) / 2.0
    return x[0] * torch.exp(-x[1] * (t - x[2]) ** 2 / 2.0) - _c(_GAUSSIAN_Y, x)


# (10) Meyer, n = 3, m = 16.
def meyer(x: Tensor) -> Tensor:
    t = 45.0 + 5.0 * _seq(1, 16, x)
    return x[0] * torch.exp(x[1] / (t + x[2])) - _c(_MEYER_Y, x)


# (11) Gulf research and development, n = 3, m = 99 (MGH allow n <= m <= 100).
def gulf(x: Tensor) -> Tensor:
    t = _seq(1, 99, x) / 100.0
    y = 25.0 + (-50.0 * torch.log(t)) ** (2.0 / 3.0)
    return torch.exp(-(torch.abs(y - x[1]) ** x[2]) / x[0]) - t


# (12) Box three-dimensional, n = 3, m = 10.
def box_3d(x: Tensor) -> Tensor:
    t = 0.1 * _seq(1, 10, x)
    return torch.exp(-t * x[0]) - torch.exp(-t * x[1]) - x[2] * (torch.exp(-t) - torch.exp(-10.0 * t))


# (13) Powell singular, n = m = 4.
def powell_singular(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x[0], x[1], x[2], x[3]
    return torch.stack(
        [
            x1 + 10.0 * x2,
            math.sqrt(5.0) * (x3 - x4),
            (x2 - 2.0 * x3) ** 2,
            math.sqrt(10.0) * (x1 - x4) ** 2,
        ]
    )


# (14) Wood, n = 4, m = 6.
def wood(x: Tensor) -> Tensor:
    x1, x2, x3, x4 = x[0], x[1], x[2], x[3]
    return torch.stack(
        [
            10.0 * (x2 - x1**2),
            1.0 - x1,
            math.sqrt(90.0) * (x4 - x3**2),
            1.0 - x3,
            math.sqrt(10.0) * (x2 + x4 - 2.0),
            (x2 - x4) / math.sqrt(10.0),
        ]
    )


# (15) Kowalik and Osborne, n = 4, m = 11.
def kowalik_osborne(x: Tensor) -> Tensor:
    u = _c(_KOWALIK_U, x)
    model = x[0] * (u**2 + u * x[1]) / (u**2 + u * x[2] + x[3])
    return _c(_KOWALIK_Y, x) - model


# (16) Brown and Dennis, n = 4, m = 20.
def brown_dennis(x: Tensor) -> Tensor:
    t = _seq(1, 20, x) / 5.0
    a = x[0] + t * x[1] - torch.exp(t)
    b = x[2] + x[3] * torch.sin(t) - torch.cos(t)
    return a**2 + b**2


# (17) Osborne 1, n = 5, m = 33.
def osborne_1(x: Tensor) -> Tensor:
    t = 10.0 * (_seq(1, 33, x) - 1.0)
    model = x[0] + x[1] * torch.exp(-t * x[3]) + x[2] * torch.exp(-t * x[4])
    return _c(_OSBORNE1_Y, x) - model


# (18) Biggs EXP6, n = 6, m = 13.
def biggs_exp6(x: Tensor) -> Tensor:
    t = 0.1 * _seq(1, 13, x)
    y = torch.exp(-t) - 5.0 * torch.exp(-10.0 * t) + 3.0 * torch.exp(-4.0 * t)
    return x[2] * torch.exp(-t * x[0]) - x[3] * torch.exp(-t * x[1]) + x[5] * torch.exp(-t * x[4]) - y


# (19) Osborne 2, n = 11, m = 65.
def osborne_2(x: Tensor) -> Tensor:
    t = (_seq(1, 65, x) - 1.0) / 10.0
    model = (
        x[0] * torch.exp(-t * x[4])
        + x[1] * torch.exp(-((t - x[8]) ** 2) * x[5])
        + x[2] * torch.exp(-((t - x[9]) ** 2) * x[6])
        + x[3] * torch.exp(-((t - x[10]) ** 2) * x[7])
    )
    return _c(_OSBORNE2_Y, x) - model


# (20) Watson, any 2 <= n <= 31, m = 31.
def watson(x: Tensor) -> Tensor:
    n = x.shape[-1]
    t = _seq(1, 29, x) / 29.0
    k = _seq(0, n - 1, x)
    powers = t[:, None] ** k[None, :]  # (29, n): t_i^(j-1)
    poly = powers @ x  # sum_j x_j t_i^(j-1)
    dpoly = powers[:, : n - 1] @ (k[1:] * x[1:])  # sum_j (j-1) x_j t_i^(j-2)
    head = dpoly - poly**2 - 1.0
    tail = torch.stack([x[0], x[1] - x[0] ** 2 - 1.0])
    return torch.cat([head, tail])


# (21) Extended Rosenbrock, n even, m = n.
def extended_rosenbrock(x: Tensor) -> Tensor:
    odd, even = x[0::2], x[1::2]
    return torch.stack([10.0 * (even - odd**2), 1.0 - odd], dim=-1).reshape(-1)


# (22) Extended Powell singular, n a multiple of 4, m = n.
def extended_powell_singular(x: Tensor) -> Tensor:
    a, b, c, d = x[0::4], x[1::4], x[2::4], x[3::4]
    return torch.stack(
        [
            a + 10.0 * b,
            math.sqrt(5.0) * (c - d),
            (b - 2.0 * c) ** 2,
            math.sqrt(10.0) * (a - d) ** 2,
        ],
        dim=-1,
    ).reshape(-1)


# (23) Penalty function I, any n, m = n + 1.
def penalty_1(x: Tensor) -> Tensor:
    head = math.sqrt(1.0e-5) * (x - 1.0)
    return torch.cat([head, (x**2).sum()[None] - 0.25])


# (24) Penalty function II, any n, m = 2n.
def penalty_2(x: Tensor) -> Tensor:
    n = x.shape[-1]
    sa = math.sqrt(1.0e-5)
    i = _seq(2, n, x)
    y = torch.exp(i / 10.0) + torch.exp((i - 1.0) / 10.0)
    e = torch.exp(x / 10.0)
    weights = _seq(1, n, x).flip(0)  # n - j + 1
    return torch.cat(
        [
            (x[0] - 0.2)[None],
            sa * (e[1:] + e[:-1] - y),
            sa * (e[1:] - math.exp(-0.1)),
            ((weights * x**2).sum() - 1.0)[None],
        ]
    )


# (25) Variably dimensioned, any n, m = n + 2.
def variably_dimensioned(x: Tensor) -> Tensor:
    s = (_seq(1, x.shape[-1], x) * (x - 1.0)).sum()
    return torch.cat([x - 1.0, s[None], (s**2)[None]])


# (26) Trigonometric, any n, m = n.
def trigonometric(x: Tensor) -> Tensor:
    n = x.shape[-1]
    i = _seq(1, n, x)
    cos_x = torch.cos(x)
    return n - cos_x.sum() + i * (1.0 - cos_x) - torch.sin(x)


# (27) Brown almost-linear, any n, m = n.
def brown_almost_linear(x: Tensor) -> Tensor:
    n = x.shape[-1]
    head = x[:-1] + x.sum() - (n + 1.0)
    return torch.cat([head, (torch.prod(x) - 1.0)[None]])


def _grid(x: Tensor) -> tuple[Tensor, float]:
    """Interior grid t_i = i h, h = 1/(n+1), as used by problems 28 and 29."""
    n = x.shape[-1]
    h = 1.0 / (n + 1)
    return _seq(1, n, x) * h, h


def _shift_matrices(x: Tensor) -> tuple[Tensor, Tensor]:
    """(L @ x)_i = x_{i-1} and (U @ x)_i = x_{i+1}, with zero boundary values."""
    n = x.shape[-1]
    eye = torch.eye(n, dtype=x.dtype, device=x.device)
    return eye.roll(-1, dims=1).tril(), eye.roll(1, dims=1).triu()


# (28) Discrete boundary value, any n, m = n.
def discrete_boundary_value(x: Tensor) -> Tensor:
    t, h = _grid(x)
    lower, upper = _shift_matrices(x)
    return 2.0 * x - lower @ x - upper @ x + h**2 * (x + t + 1.0) ** 3 / 2.0


# (29) Discrete integral equation, any n, m = n.
def discrete_integral_equation(x: Tensor) -> Tensor:
    t, h = _grid(x)
    ti, tj = t[:, None], t[None, :]
    kernel = torch.where(tj <= ti, (1.0 - ti) * tj, ti * (1.0 - tj))
    return x + h / 2.0 * (kernel @ (x + t + 1.0) ** 3)


# (30) Broyden tridiagonal, any n, m = n.
def broyden_tridiagonal(x: Tensor) -> Tensor:
    lower, upper = _shift_matrices(x)
    return (3.0 - 2.0 * x) * x - lower @ x - 2.0 * (upper @ x) + 1.0


# (31) Broyden banded (ml = 5, mu = 1), any n, m = n.
def broyden_banded(x: Tensor) -> Tensor:
    n = x.shape[-1]
    idx = torch.arange(n, device=x.device)
    offset = idx[None, :] - idx[:, None]  # j - i
    band = ((offset >= -5) & (offset <= 1) & (offset != 0)).to(x.dtype)
    return x * (2.0 + 5.0 * x**2) + 1.0 - band @ (x * (1.0 + x))


def _linear_m(n: int) -> int:
    """Number of residuals used here for the three linear problems (32-34)."""
    return 2 * n


# (32) Linear function - full rank, n = 5, m = 10.
def linear_full_rank(x: Tensor) -> Tensor:
    n = x.shape[-1]
    m = _linear_m(n)
    s = 2.0 / m * x.sum()
    return torch.cat([x - s - 1.0, (-s - 1.0).expand(m - n)])


# (33) Linear function - rank 1, n = 5, m = 10.
def linear_rank_1(x: Tensor) -> Tensor:
    n = x.shape[-1]
    s = (_seq(1, n, x) * x).sum()
    return _seq(1, _linear_m(n), x) * s - 1.0


# (34) Linear function - rank 1 with zero columns and rows, n = 5, m = 10.
def linear_rank_1_zero(x: Tensor) -> Tensor:
    n = x.shape[-1]
    m = _linear_m(n)
    s = (_seq(2, n - 1, x) * x[1:-1]).sum()
    inner = (_seq(2, m - 1, x) - 1.0) * s - 1.0
    minus_one = -torch.ones_like(s)[None]
    return torch.cat([minus_one, inner, minus_one])


# (35) Chebyquad, any n, m = n here.
def chebyquad(x: Tensor) -> Tensor:
    n = x.shape[-1]
    y = 2.0 * x - 1.0  # shifted to [-1, 1]
    prev, cur = torch.ones_like(y), y
    out = []
    for i in range(1, n + 1):
        # exact integral over [0, 1] of the shifted Chebyshev polynomial T_i
        integral = -1.0 / (i * i - 1.0) if i % 2 == 0 else 0.0
        out.append(cur.mean() - integral)
        prev, cur = cur, 2.0 * y * cur - prev
    return torch.stack(out)


# ---------------------------------------------------------------------------
# The bank.
# ---------------------------------------------------------------------------


def _rep(value: float, n: int) -> tuple[float, ...]:
    return (value,) * n


PROBLEMS: tuple[Problem, ...] = (
    Problem("rosenbrock", rosenbrock, (-1.2, 1.0), 0.0, x_min=(1.0, 1.0)),
    Problem(
        "freudenstein_roth",
        freudenstein_roth,
        (0.5, -2.0),
        0.0,
        x_min=(5.0, 4.0),
        f_alt=(48.98425367924,),
        note="local minimum f = 48.9842... at (11.41..., -0.8968...) is what most local solvers reach from x0",
    ),
    Problem("powell_badly_scaled", powell_badly_scaled, (0.0, 1.0), 0.0, x_min=(1.0981593296998e-05, 9.106146739867)),
    Problem("brown_badly_scaled", brown_badly_scaled, (1.0, 1.0), 0.0, x_min=(1.0e6, 2.0e-6)),
    Problem("beale", beale, (1.0, 1.0), 0.0, x_min=(3.0, 0.5)),
    Problem(
        "jennrich_sampson",
        jennrich_sampson,
        (0.3, 0.4),
        124.3621823556,
        x_min=(0.2578252140, 0.2578252140),
        note="m = 10",
    ),
    Problem(
        "helical_valley",
        helical_valley,
        (-1.0, 0.0, 0.0),
        0.0,
        x_min=(1.0, 0.0, 0.0),
        note="theta = atan2(-x1, x2)/(2 pi) + 1/4, identical to the MGH "
        "piecewise atan definition (cut along x1 = 0, x2 < 0)",
    ),
    Problem("bard", bard, (1.0, 1.0, 1.0), 8.214877306578e-3, note="MGH also list f = 17.4286 at (0.8406, -inf, -inf)"),
    Problem("gaussian", gaussian, (0.4, 1.0, 0.0), 1.127932769619e-8),
    Problem("meyer", meyer, (0.02, 4000.0, 250.0), 87.94585517057),
    Problem(
        "gulf", gulf, (5.0, 2.5, 0.15), 0.0, x_min=(50.0, 25.0, 1.5), note="m = 99 chosen (MGH allow n <= m <= 100)"
    ),
    Problem(
        "box_3d",
        box_3d,
        (0.0, 10.0, 20.0),
        0.0,
        note="m = 10; f = 0 at (1, 10, 1), (10, 1, -1) and wherever x1 = x2, x3 = 0",
    ),
    Problem(
        "powell_singular",
        powell_singular,
        (3.0, -1.0, 0.0, 1.0),
        0.0,
        x_min=(0.0, 0.0, 0.0, 0.0),
        note="singular Jacobian at the solution: only linear convergence",
    ),
    Problem("wood", wood, (-3.0, -1.0, -3.0, -1.0), 0.0, x_min=(1.0, 1.0, 1.0, 1.0)),
    Problem(
        "kowalik_osborne",
        kowalik_osborne,
        (0.25, 0.39, 0.415, 0.39),
        3.075056038492e-4,
        note="MGH also list f = 1.02734e-3 at (+inf, -14.07..., -inf, -inf)",
    ),
    Problem("brown_dennis", brown_dennis, (25.0, 5.0, -5.0, -1.0), 85822.20162636, note="m = 20"),
    Problem("osborne_1", osborne_1, (0.5, 1.5, -1.0, 0.01, 0.02), 5.464894697483e-5),
    Problem(
        "biggs_exp6",
        biggs_exp6,
        (1.0, 2.0, 1.0, 1.0, 1.0, 1.0),
        0.0,
        f_alt=(5.655649925500e-3,),
        note="m = 13; f = 0 at (1, 10, 1, 5, 4, 3) and its mirror (4, 10, 3, 5, 1, 1); MGH also list f = 5.65565e-3",
    ),
    Problem("osborne_2", osborne_2, (1.3, 0.65, 0.65, 0.7, 0.6, 3.0, 5.0, 7.0, 2.0, 4.5, 5.5), 4.013773629355e-2),
    Problem("watson", watson, _rep(0.0, 6), 2.287670053552e-3, note="n = 6"),
    Problem("watson_9", watson, _rep(0.0, 9), 1.399760138091e-6, note="n = 9"),
    Problem("watson_12", watson, _rep(0.0, 12), 4.722381104857e-10, note="n = 12"),
    Problem("extended_rosenbrock", extended_rosenbrock, (-1.2, 1.0) * 5, 0.0, x_min=_rep(1.0, 10), note="n = 10"),
    Problem(
        "extended_powell_singular",
        extended_powell_singular,
        (3.0, -1.0, 0.0, 1.0) * 3,
        0.0,
        x_min=_rep(0.0, 12),
        note="n = 12; singular Jacobian at the solution",
    ),
    Problem("penalty_1", penalty_1, (1.0, 2.0, 3.0, 4.0), 2.249977500900e-5, note="n = 4"),
    Problem("penalty_1_10", penalty_1, tuple(float(j) for j in range(1, 11)), 7.087651467090e-5, note="n = 10"),
    Problem("penalty_2", penalty_2, _rep(0.5, 4), 9.376293007355e-6, note="n = 4"),
    Problem("penalty_2_10", penalty_2, _rep(0.5, 10), 2.936605374567e-4, note="n = 10"),
    Problem(
        "variably_dimensioned",
        variably_dimensioned,
        tuple(1.0 - j / 10 for j in range(1, 11)),
        0.0,
        x_min=_rep(1.0, 10),
        note="n = 10",
    ),
    Problem(
        "trigonometric",
        trigonometric,
        _rep(0.1, 10),
        0.0,
        f_alt=(2.795056121878e-5,),
        note="n = 10; local solvers usually stop at f = 2.79506e-5",
    ),
    Problem(
        "brown_almost_linear",
        brown_almost_linear,
        _rep(0.5, 10),
        0.0,
        f_alt=(1.0,),
        note="n = 10; f = 0 at (a, ..., a, a^(1-n)) with n a^n - (n+1) a^(n-1) + 1 = 0; f = 1 at (0, ..., 0, n+1)",
    ),
    Problem(
        "discrete_boundary_value",
        discrete_boundary_value,
        tuple((j / 11) * (j / 11 - 1.0) for j in range(1, 11)),
        0.0,
        note="n = 10",
    ),
    Problem(
        "discrete_integral_equation",
        discrete_integral_equation,
        tuple((j / 11) * (j / 11 - 1.0) for j in range(1, 11)),
        0.0,
        note="n = 10",
    ),
    Problem("broyden_tridiagonal", broyden_tridiagonal, _rep(-1.0, 10), 0.0, note="n = 10"),
    Problem("broyden_banded", broyden_banded, _rep(-1.0, 10), 0.0, note="n = 10"),
    Problem(
        "linear_full_rank",
        linear_full_rank,
        _rep(1.0, 5),
        5.0,
        x_min=_rep(-1.0, 5),
        note="n = 5, m = 10; f_min = m - n",
    ),
    Problem(
        "linear_rank_1",
        linear_rank_1,
        _rep(1.0, 5),
        15.0 / 7.0,
        note="n = 5, m = 10; f_min = m(m-1)/(2(2m+1)) on the hyperplane sum_j j x_j = 3/(2m+1)",
    ),
    Problem(
        "linear_rank_1_zero",
        linear_rank_1_zero,
        _rep(1.0, 5),
        62.0 / 17.0,
        note="n = 5, m = 10; f_min = (m^2+3m-6)/(2(2m-3)) on the hyperplane sum_{j=2}^{n-1} j x_j = 3/(2m-3)",
    ),
    Problem("chebyquad", chebyquad, tuple(j / 9 for j in range(1, 9)), 3.516873725677e-3, note="n = m = 8"),
    Problem("chebyquad_10", chebyquad, tuple(j / 11 for j in range(1, 11)), 6.503954800882e-3, note="n = m = 10"),
)


_BY_NAME: dict[str, Problem] = {p.name: p for p in PROBLEMS}


def by_name(name: str) -> Problem:
    """Look up a problem by its ``name``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown MGH problem {name!r}; known: {', '.join(_BY_NAME)}") from None
