"""The solvers, by name. ``resolve`` turns a name (or a Solver object) and options into a solver."""

from __future__ import annotations

from typing import Any

from lossfit.engine.solvers.base import Solver, State, StepInfo
from lossfit.engine.solvers.first_order import Adam, GradientDescent, RMSprop
from lossfit.engine.solvers.gauss_newton import GaussNewton, LevenbergMarquardt
from lossfit.engine.solvers.krylov import KrylovGaussNewton
from lossfit.engine.solvers.lbfgs import LBFGS

SOLVERS: dict[str, type[Solver]] = {
    cls.name: cls for cls in (GradientDescent, Adam, RMSprop, LBFGS, GaussNewton, LevenbergMarquardt, KrylovGaussNewton)
}

DENSE_LIMIT = 400
"""Least-squares problems with at most this many parameters get a dense Jacobian; larger ones go matrix-free."""


def resolve(solver: str | Solver, options: dict[str, Any]) -> Solver:
    """A solver object from a name and options, or the object itself (options then must be empty)."""
    if isinstance(solver, Solver):
        if options:
            raise TypeError("pass solver options either in the Solver object or as keywords, not both")
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"`solver` must be a name or a Solver; got {type(solver).__name__}")
    if solver not in SOLVERS:
        names = ", ".join(repr(n) for n in ["auto", *SOLVERS])
        raise ValueError(f"`solver` must be one of {names}; got {solver!r}")
    cls = SOLVERS[solver]
    known = set(_option_names(cls))
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"solver {solver!r} takes options {sorted(known)}; got unknown {sorted(unknown)}")
    return cls(options=dict(options))


def _option_names(cls: type[Solver]) -> list[str]:
    return list(cls(options={}).options)


def choose(kind: str, num_params: int) -> tuple[str, str]:
    """The solver ``auto`` picks, and why, from the kind of problem and its size."""
    if kind == "scalar":
        return "lbfgs", "a scalar loss: quasi-Newton with a strong Wolfe line search"
    if num_params <= DENSE_LIMIT:
        return "lm", f"least squares with {num_params} parameters: Levenberg-Marquardt on a dense Jacobian"
    return "krylov", f"least squares with {num_params} parameters: matrix-free Gauss-Newton with conjugate gradients"


__all__ = ["SOLVERS", "Solver", "State", "StepInfo", "choose", "resolve"]
