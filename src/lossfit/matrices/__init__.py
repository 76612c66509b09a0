"""Matrices derived by optimisation, each checked against ``torch.linalg``.

Every function states a loss whose minimiser is the answer, solves it with the solver you name (or a good default),
and returns a :class:`~lossfit.FitResult` whose ``reference`` compares the answer with the closed form.
"""

from lossfit.matrices.linear import inverse, lstsq, newton_schulz, pinv, solve
from lossfit.matrices.nonlinear import low_rank, sqrtm
from lossfit.matrices.spectral import eigh, polar, svd

__all__ = ["eigh", "inverse", "low_rank", "lstsq", "newton_schulz", "pinv", "polar", "solve", "sqrtm", "svd"]
