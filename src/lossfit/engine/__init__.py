"""The engine: :func:`minimize`, :func:`least_squares`, solvers, constraints and :class:`FitResult`."""

from lossfit.engine.api import least_squares, minimize
from lossfit.engine.constraints import SPD, Bounds, Constraint, Orthogonal, Positive, Symmetric
from lossfit.engine.gradcheck import GradientCheck, check_gradient
from lossfit.engine.result import FitResult, History, SolverInfo, Status
from lossfit.engine.solvers import SOLVERS, Solver

__all__ = [
    "SOLVERS",
    "SPD",
    "Bounds",
    "Constraint",
    "FitResult",
    "GradientCheck",
    "History",
    "Orthogonal",
    "Positive",
    "Solver",
    "SolverInfo",
    "Status",
    "Symmetric",
    "check_gradient",
    "least_squares",
    "minimize",
]
