"""lossfit: derive the parameters of a transformation from a loss function, and prove the answer."""

from lossfit import matrices, registration, transforms
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
from lossfit.errors import GeometryWarning, InputFileError, LossfitError, NonFiniteError
from lossfit.models import Regression, curve_fit, fit
from lossfit.points import Alignment, align
from lossfit.registration import Image, Registration, load_image, register

__version__ = "0.1.0"

__all__ = [
    "SOLVERS",
    "SPD",
    "Alignment",
    "Bounds",
    "Constraint",
    "FitResult",
    "GeometryWarning",
    "GradientCheck",
    "History",
    "Image",
    "InputFileError",
    "LossfitError",
    "NonFiniteError",
    "Orthogonal",
    "Positive",
    "Registration",
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
    "load_image",
    "matrices",
    "minimize",
    "register",
    "registration",
    "transforms",
]
