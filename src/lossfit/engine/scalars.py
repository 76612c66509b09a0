"""Per-problem numbers that are either ``(B,)`` tensors or, for one problem on the CPU, Python scalars.

A tensor operation on a one-element CPU tensor costs several microseconds whatever it computes, and a driver step's
bookkeeping (the stopping rules, an iteration's progress test) is a dozen of them: for a single small problem that is
more than the step itself. ``item()`` costs a fraction of a microsecond, so for one problem on the CPU the driver
and the iteration solvers read each number once and run the same rules on Python scalars. The rules are written
once, with operators that mean the same on both (``&``, ``|``, comparisons, ``abs``) and the helpers below for the
rest.
"""

from __future__ import annotations

from typing import Any

import torch


def on_host(t: torch.Tensor) -> bool:
    """Whether the rows of ``t`` are one problem on the CPU: its bookkeeping is then cheaper in Python scalars."""
    return t.shape[0] == 1 and t.device.type == "cpu"


def select(condition: Any, value: Any, otherwise: Any) -> Any:
    """``torch.where(condition, value, otherwise)`` for a tensor condition, ``value if condition else otherwise``
    for a Python one."""
    if isinstance(condition, torch.Tensor):
        return torch.where(condition, value, otherwise)
    return value if condition else otherwise


def smaller(a: Any, b: Any) -> Any:
    """The elementwise minimum of two tensors, or of two Python numbers."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.minimum(torch.as_tensor(a), torch.as_tensor(b))
    return b if b < a else a


def negate(a: Any) -> Any:
    """Logical not of a boolean tensor or a Python bool (``~True`` is -2 in Python)."""
    return a.logical_not() if isinstance(a, torch.Tensor) else not a


def finite(t: Any) -> Any:
    """Whether ``t`` is finite, in two cheap operations on a tensor (``inf - inf`` and ``nan - nan`` are NaN; any
    finite ``t - t`` is exactly 0; ``torch.isfinite`` costs about three on a small tensor), also for a float."""
    return (t - t) == 0
