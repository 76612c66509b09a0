"""Exceptions raised by lossfit.

Wrong types raise :class:`TypeError` and bad values or shapes :class:`ValueError`, each naming the argument, what was
expected and what came. Failures that belong to the problem domain (a file that cannot be read, a system with no
solution) raise a :class:`LossfitError`.
"""

from __future__ import annotations


class LossfitError(Exception):
    """Base class of lossfit's domain errors."""


class InputFileError(LossfitError):
    """A data file is missing, unreadable or holds something other than numbers."""


class OutputError(LossfitError):
    """An output cannot be written where asked (a folder in the way, no room, a failed write)."""


class DiskFullError(OutputError):
    """The device ran out of space while writing a file (nothing half-written is left)."""


class NonFiniteError(LossfitError, ValueError):
    """The loss or residuals are NaN or infinite at the starting point."""


class GeometryWarning(UserWarning):
    """A file's geometry is ambiguous (a NIfTI whose sform and qform disagree, say): lossfit says which it used."""
