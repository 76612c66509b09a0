"""lossfit: derive the parameters of a transformation from a loss function, and prove the answer."""

from lossfit import matrices, transforms
from lossfit.engine import (
    SOLVERS,
    SPD,
    Bounds,
    Constraint,
    FitResult,
    GradientCheck,
    History,
    Orthogonal,
    Positive,
    Solver,
    SolverInfo,
    Status,
    Symmetric,
    check_gradient,
    least_squares,
    minimize,
)
from lossfit.errors import InputFileError, LossfitError, NonFiniteError
from lossfit.models import Regression, curve_fit, fit
from lossfit.points import Alignment, align

__version__ = "0.1.0"

__all__ = [
    "SOLVERS",
    "SPD",
    "Alignment",
    "Bounds",
    "Constraint",
    "FitResult",
    "GradientCheck",
    "History",
    "InputFileError",
    "LossfitError",
    "NonFiniteError",
    "Orthogonal",
    "Positive",
    "Regression",
    "Solver",
    "SolverInfo",
    "Status",
    "Symmetric",
    "__version__",
    "align",
    "check_gradient",
    "curve_fit",
    "fit",
    "least_squares",
    "matrices",
    "minimize",
    "transforms",
]
