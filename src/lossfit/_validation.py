"""Checking user input at the boundary: one conversion to a real tensor, with errors that name the argument."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_real_tensor(value: Any, argument: str) -> torch.Tensor:
    """Convert ``value`` (tensor, array, nested lists, number) to a real, finite, non-empty tensor.

    Float data keep their dtype; integer data become float64; the input is never modified (arrays are copied).
    Raises ``TypeError`` for anything that is not real numbers (text, objects, ragged lists, complex, bool) and
    ``ValueError`` for an empty value or NaN/infinity, each naming ``argument``.
    """
    if isinstance(value, torch.Tensor):
        t = value.detach()
    else:
        try:
            array = np.asarray(value)
        except Exception:
            raise TypeError(
                f"`{argument}` must hold real numbers (a tensor, an array or nested lists); got {type(value).__name__}"
            ) from None
        if array.dtype.kind not in "iuf":
            raise TypeError(f"`{argument}` must hold real numbers; got an array of {array.dtype}")
        t = torch.from_numpy(array.astype(np.float64) if array.dtype.kind in "iu" else array.copy())
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"`{argument}` must hold real numbers; got {t.dtype}")
    if not t.is_floating_point():
        t = t.to(torch.float64)
    if t.numel() == 0:
        raise ValueError(f"`{argument}` must not be empty; got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{argument}` must be finite; it holds NaN or infinity")
    return t
