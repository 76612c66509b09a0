"""Fitting models to data: curves (``curve_fit``), regression and classification (``fit``), formula models parsed
from text (``fit_formula``), and the statistics of a fit (:class:`Regression`).

Each states a loss over the data, solves it with the engine and returns a :class:`Regression`, a
:class:`~lossfit.FitResult` with the statistics that apply: standard errors, covariance, correlations and
confidence intervals for least squares.
"""

from lossfit.models.curves import curve_fit
from lossfit.models.formula import Formula, fit_formula, parse
from lossfit.models.regression import DATA_LOSSES, fit
from lossfit.models.statistics import Regression, runs_z, t_quantile

__all__ = ["DATA_LOSSES", "Formula", "Regression", "curve_fit", "fit", "fit_formula", "parse", "runs_z", "t_quantile"]
