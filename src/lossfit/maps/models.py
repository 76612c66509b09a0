"""Signal models for parameter maps: the built-ins (with their Jacobians and closed-form starts), formulas, callables.

Convention (voxels last, as in :mod:`lossfit.engine.solvers.voxelwise`): a model maps the acquisition values
``x (m, 1)`` (echo times, inversion times, b-values) and parameters ``p (k, V)`` to signals ``(m, V)``, one column
per voxel; its Jacobian is a list of ``k`` tensors ``(m, V)``, one per parameter (kept apart: the normal equations are
sums of their products). A user's callable is written the other way round, ``f(x (m,), p (V, k)) -> (V, m)``, and
wrapped. Units are the user's: echo
and inversion times in ms give T2 and T1 in ms, b-values in s/mm^2 give diffusivities in mm^2/s.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from lossfit.models.formula import Formula, parse

Signal = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Columns = list[torch.Tensor]
Evaluate = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, Columns]]
Start = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

IVIM_SPLIT = 0.004
"""mm^2/s: the bound between the tissue diffusivity D (below) and the pseudo-diffusivity D* (above), which keeps the
two exponentials of IVIM from swapping."""
IVIM_HIGH_B = 200.0
"""s/mm^2: b-values from here up carry (almost) no perfusion signal; the start fits D on them alone."""


@dataclass(frozen=True)
class Separable:
    """A model whose signal is linear in some parameters: ``signal = sum_l c_l phi_l(x; theta)``.

    ``basis(x, theta)`` gives the ``l`` functions ``phi_l (m, V)`` (None for the constant 1) and, per nonlinear
    parameter ``theta_k``, the derivatives ``d phi_l / d theta_k`` (None where zero); ``nonlinear`` and ``linear``
    are the positions of ``theta`` and ``c`` in the model's parameter vector. Variable projection (Golub and Pereyra
    1973) then solves for ``c`` in closed form at every ``theta`` and iterates on ``theta`` alone."""

    nonlinear: tuple[int, ...]
    linear: tuple[int, ...]
    basis: Callable[[torch.Tensor, torch.Tensor], tuple[list[torch.Tensor | None], list[list[torch.Tensor | None]]]]


@dataclass(frozen=True)
class MapModel:
    """A signal model: its parameter names, the signal, the signal with its Jacobian columns (None: forward-mode
    autodiff), a start per voxel from the data (None: the caller gives one), bounds, and what ``x`` must be."""

    name: str
    parameters: tuple[str, ...]
    signal: Signal
    evaluate_fn: Evaluate | None = None
    start: Start | None = None
    lower: tuple[float, ...] | None = None
    upper: tuple[float, ...] | None = None
    increasing_x: bool = False
    description: str = ""
    polarity: bool = False  # magnitude inversion recovery: fitted twice around the signal's null (see fit_map)
    separable: Separable | None = None

    def evaluate(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, Columns]:
        """The signal ``(V, m)`` and its Jacobian columns at ``p``: written out for the built-ins, by forward mode
        otherwise."""
        if self.evaluate_fn is not None:
            return self.evaluate_fn(x, p)
        return forward_columns(self.signal, x, p)


def forward_columns(signal: Signal, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, Columns]:
    """The signal and ``d signal / d p_j`` by one forward-mode product per parameter over the whole batch (voxels
    are independent, so one product gives every voxel's column)."""
    from lossfit.engine.problem import load_forward_ad

    load_forward_ad()
    columns = []
    value = signal(x, p)
    for j in range(p.shape[0]):
        direction = torch.zeros_like(p)
        direction[j] = 1
        tangent = torch.func.jvp(lambda q: signal(x, q), (p,), (direction,))[1]
        columns.append(tangent.expand_as(value))
    return value, columns


# -- mono-exponential decay: S0 exp(-x / T) -------------------------------------------------------------------------


def _decay(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p[0:1] * torch.exp(-x / p[1:2])


def _decay_eval(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, Columns]:
    inv = 1 / p[1:2]
    e = torch.exp(-x * inv)
    value = p[0:1] * e
    return value, [e, value * x * (inv * inv)]


def log_linear(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form fit of ``log y = log S0 - x / T`` (``x (m, 1)``, ``y (m, V)``), weighted by ``y**2`` (the
    weights that make the log's residuals match the signal's to first order); returns ``S0`` and ``T`` per voxel,
    ``T`` infinite where the data do not decay. Signals at or below zero get no weight."""
    positive = y > 0
    w = torch.where(positive, y * y, torch.zeros_like(y))
    logs = torch.where(positive, torch.log(y.clamp_min(torch.finfo(y.dtype).tiny)), torch.zeros_like(y))
    sw = w.sum(0).clamp_min(torch.finfo(y.dtype).tiny)
    mx = (w * x).sum(0) / sw
    my = (w * logs).sum(0) / sw
    sxx = (w * (x - mx) ** 2).sum(0)
    sxy = (w * (x - mx) * (logs - my)).sum(0)
    slope = sxy / sxx.clamp_min(torch.finfo(y.dtype).tiny)
    decay = torch.where(slope < 0, -1 / slope.clamp_max(-torch.finfo(y.dtype).tiny), torch.full_like(slope, math.inf))
    s0 = torch.exp(my - slope * mx)
    return s0, decay


def _decay_start(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    s0, decay = log_linear(x, y)
    return torch.stack([s0, _finite_decay(decay, x)])


def _finite_decay(decay: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A decay constant that LM can start from: where the log-linear fit found no decay, ten times the span of x."""
    span = float(x.max() - x.min()) or 1.0
    return torch.where(torch.isfinite(decay), decay, torch.full_like(decay, 10 * span)).clamp(span * 1e-3, span * 1e3)


def _decay_basis(x: torch.Tensor, theta: torch.Tensor) -> tuple[list[Any], list[list[Any]]]:
    inv = 1 / theta[0:1]
    e = torch.exp(-x * inv)
    return [e], [[e * (x * (inv * inv))]]


# -- decay with a constant offset: S0 exp(-x / T) + C ----------------------------------------------------------------


def _offset(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return p[0:1] * torch.exp(-x / p[1:2]) + p[2:3]


def _offset_eval(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, Columns]:
    inv = 1 / p[1:2]
    e = torch.exp(-x * inv)
    decay = p[0:1] * e
    return decay + p[2:3], [e, decay * x * (inv * inv), torch.ones_like(e)]


def _offset_start(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The offset from the flattening of the last three samples, the rest from the log-linear fit of the signal
    minus it."""
    tail = y[-3:] if y.shape[0] >= 3 else y
    offset = (tail.amin(dim=0) - (tail[0] - tail[-1]).clamp_min(0)).clamp_min(0)
    s0, decay = log_linear(x, y - offset)
    return torch.stack([s0, _finite_decay(decay, x), offset])


def _offset_basis(x: torch.Tensor, theta: torch.Tensor) -> tuple[list[Any], list[list[Any]]]:
    inv = 1 / theta[0:1]
    e = torch.exp(-x * inv)
    return [e, None], [[e * (x * (inv * inv)), None]]


# -- inversion recovery (magnitude): |A - B exp(-x / T1)| ------------------------------------------------------------


def _recovery(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The signed signal ``A - B exp(-x / T1)``; the magnitude's sign is restored on the data (see fit_map)."""
    return p[0:1] - p[1:2] * torch.exp(-x / p[2:3])


def _recovery_eval(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, Columns]:
    inv = 1 / p[2:3]
    e = torch.exp(-x * inv)
    recovered = p[1:2] * e
    return p[0:1] - recovered, [torch.ones_like(e), -e, -recovered * x * (inv * inv)]


def _recovery_start(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """From signed data: A the last sample (the recovered signal), B = A - first sample over its recovery factor,
    T1 from the null, which lies at T1 ln 2 for B = 2A (the sign change of the data)."""
    xs = x.reshape(-1)
    a = y.abs().amax(dim=0)
    sign_change = (y[:-1] <= 0) & (y[1:] > 0)
    changes = sign_change.any(0)
    index = torch.where(changes, sign_change.int().argmax(0), torch.zeros_like(a, dtype=torch.long))
    after = (index + 1).clamp_max(xs.numel() - 1)
    x0, x1 = xs[index], xs[after]
    y0, y1 = y.gather(0, index[None])[0], y.gather(0, after[None])[0]
    weight = (y0.abs() / (y0.abs() + y1.abs()).clamp_min(torch.finfo(y.dtype).tiny)).nan_to_num(0.5)
    null = x0 + weight * (x1 - x0)
    t1 = torch.where(changes, null / math.log(2.0), torch.full_like(a, float(xs.median())))
    t1 = t1.clamp_min(float(xs[xs > 0].min()) * 0.1 if bool((xs > 0).any()) else 1.0)
    return torch.stack([a, 2 * a, t1])


def _recovery_basis(x: torch.Tensor, theta: torch.Tensor) -> tuple[list[Any], list[list[Any]]]:
    inv = 1 / theta[0:1]
    e = torch.exp(-x * inv)
    return [None, -e], [[None, -e * (x * (inv * inv))]]


# -- IVIM: S0 (f exp(-b D*) + (1 - f) exp(-b D)) ---------------------------------------------------------------------


def _ivim(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    s0, f, d, dstar = p[0:1], p[1:2], p[2:3], p[3:4]
    return s0 * (f * torch.exp(-x * dstar) + (1 - f) * torch.exp(-x * d))


def _ivim_eval(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, Columns]:
    s0, f, d, dstar = p[0:1], p[1:2], p[2:3], p[3:4]
    fast, slow = torch.exp(-x * dstar), torch.exp(-x * d)
    shape = f * fast + (1 - f) * slow
    return s0 * shape, [shape, s0 * (fast - slow), -s0 * (1 - f) * x * slow, -s0 * f * x * fast]


def _ivim_start(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Segmented: D and the tissue intercept from the log-linear fit on b >= 200 s/mm^2; S0 the signal at the
    lowest b; f from the intercept's shortfall; D* ten times D (within its bounds)."""
    high = x.reshape(-1) >= IVIM_HIGH_B
    intercept, decay = log_linear(x[high], y[high])
    d = torch.where(torch.isfinite(decay), 1 / decay, torch.full_like(decay, 1e-3)).clamp(1e-5, IVIM_SPLIT * 0.9)
    s0 = y[int(torch.argmin(x))].clamp_min(torch.finfo(y.dtype).tiny)
    f = (1 - intercept / s0).clamp(0.02, 0.5)
    dstar = (10 * d).clamp(IVIM_SPLIT * 1.5, 0.5)
    return torch.stack([s0, f, d, dstar])


BUILT_IN: dict[str, MapModel] = {
    "t2": MapModel(
        "t2", ("S0", "T2"), _decay, _decay_eval, _decay_start, (0.0, 0.0), (math.inf, math.inf),
        description="mono-exponential decay S0 exp(-TE / T2) (T2 or T2*)",
        separable=Separable((1,), (0,), _decay_basis),
    ),
    "t2-offset": MapModel(
        "t2-offset", ("S0", "T2", "C"), _offset, _offset_eval, _offset_start, (0.0, 0.0, -math.inf),
        (math.inf, math.inf, math.inf), description="decay with a constant offset S0 exp(-TE / T2) + C",
        separable=Separable((1,), (0, 2), _offset_basis),
    ),
    "t1-ir": MapModel(
        "t1-ir", ("A", "B", "T1"), _recovery, _recovery_eval, _recovery_start, (0.0, 0.0, 0.0),
        (math.inf, math.inf, math.inf), increasing_x=True, polarity=True,
        description="inversion recovery |A - B exp(-TI / T1)| on magnitude data (polarity restored)",
        separable=Separable((2,), (0, 1), _recovery_basis),
    ),
    "ivim": MapModel(
        "ivim", ("S0", "f", "D", "Dstar"), _ivim, _ivim_eval, _ivim_start, (0.0, 0.0, 0.0, IVIM_SPLIT),
        (math.inf, 1.0, IVIM_SPLIT, 1.0),
        description="bi-exponential IVIM S0 (f exp(-b D*) + (1 - f) exp(-b D)), D < 0.004 < D* mm^2/s",
    ),
}  # fmt: skip
ALIASES = {"t2star": "t2", "t2*": "t2", "exp": "t2", "t1": "t1-ir", "exp-offset": "t2-offset"}


def resolve(model: Any, variable: str = "x") -> MapModel:
    """A :class:`MapModel` from a built-in name, a formula string (parsed by the safe parser; ``variable`` is the
    acquisition variable, every other name a parameter), a callable ``f(x (m,), p (V, k)) -> (V, m)`` (voxels
    independent), or a MapModel.

    Raises:
        ValueError: an unknown name that is not a valid formula, or a formula without the variable or parameters.
        TypeError: anything else.
    """
    if isinstance(model, MapModel):
        return model
    if isinstance(model, str):
        key = model.strip().lower()
        key = ALIASES.get(key, key)
        if key in BUILT_IN:
            return BUILT_IN[key]
        if model.strip().replace("-", "").replace("_", "").isalnum() and variable not in model:
            names = ", ".join(sorted([*BUILT_IN, *ALIASES]))
            raise ValueError(f"`model` must be one of {names}, or a formula in {variable!r}; got {model!r}")
        return formula_model(parse(model), variable)
    if callable(model):
        user = model

        def signal(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
            return user(x.reshape(-1), p.T).T

        return MapModel(getattr(model, "__name__", "callable"), (), signal)
    raise TypeError(f"`model` must be a model name, a formula string or a callable f(x, p); got {type(model).__name__}")


def formula_model(formula: Formula, variable: str) -> MapModel:
    """A model from a parsed formula: ``variable`` is the acquisition value, the other names the parameters."""
    if variable not in formula.names:
        raise ValueError(f"`model` formula {formula.text!r} must use the acquisition variable {variable!r}")
    names = tuple(n for n in formula.names if n != variable)
    if not names:
        raise ValueError(f"`model` formula {formula.text!r} has no parameter to fit")

    def signal(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        values: dict[str, torch.Tensor | float] = {variable: x}
        values.update({name: p[j : j + 1] for j, name in enumerate(names)})
        return formula(values).expand(x.shape[0], p.shape[1])

    return MapModel(formula.text, names, signal)
