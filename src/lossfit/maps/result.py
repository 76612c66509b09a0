"""The result of a parameter map: one map per parameter, its standard errors, a status per voxel, and saving."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lossfit.engine.result import Status
from lossfit.io import atomic_path
from lossfit.registration.image import Image

NOT_FITTED = 0
"""The status code of a voxel outside the mask (``Status.RUNNING``'s value: no solver ran there)."""

Map = Image | torch.Tensor


def converged(codes: torch.Tensor) -> torch.Tensor:
    """Per voxel, whether its Status code (a tensor of codes, any shape) is a verified success."""
    table = torch.tensor([Status(c).success for c in range(max(Status) + 1)], device=codes.device)
    return table[codes.long()]


@dataclass(frozen=True)
class MapResult:
    """Parameter maps and what is known of each voxel's fit.

    Attributes:
        model: the model's name (a built-in's, or the formula's text).
        parameters: the parameter names, in order.
        maps: name -> map (an Image on the series' grid, or a tensor of the input's leading shape); NaN outside the
            mask.
        stderr: name -> map of standard errors (infinite where the parameter is not determined).
        status: a map of :class:`~lossfit.engine.Status` codes (int16); ``NOT_FITTED`` (0) outside the mask.
        rms: a map of the residual RMS, ``sqrt(mean((model - y)^2))`` (the magnitude's, for ``t1-ir``).
        counts: status name -> number of fitted voxels with it.
        sigma: the noise level the Rician likelihood used (None for least squares).
        steps: the solver's steps summed over voxels; ``seconds`` the wall time of the call.
        at_bound: parameter name -> number of fitted voxels whose value lies on one of its bounds (a constrained
            minimum: the data would go further, e.g. an IVIM D* the data cannot tell from the split at 0.004).
    """

    model: str
    parameters: tuple[str, ...]
    maps: dict[str, Map]
    stderr: dict[str, Map]
    status: Map
    rms: Map
    counts: dict[str, int]
    sigma: float | None
    steps: int
    seconds: float
    at_bound: dict[str, int] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        """True when every fitted voxel converged to a verified minimum."""
        return all(Status[name.upper()].success for name in self.counts)

    @property
    def fitted(self) -> int:
        """The number of voxels fitted (inside the mask)."""
        return sum(self.counts.values())

    @classmethod
    def assemble(
        cls,
        *,
        model: str,
        parameters: tuple[str, ...],
        values: torch.Tensor,
        stderr: torch.Tensor,
        status: torch.Tensor,
        rms: torch.Tensor,
        index: torch.Tensor | None,
        spatial: tuple[int, ...],
        grid: Image | None,
        sigma: float | None,
        steps: torch.Tensor,
        seconds: float,
        bounds: tuple[torch.Tensor | None, torch.Tensor | None] = (None, None),
    ) -> MapResult:
        """Scatter per-voxel results ``(V, ...)`` (voxels ``index`` of the flattened grid, all when None) into maps."""
        total = math.prod(spatial)

        def scatter(column: torch.Tensor, fill: float, dtype: torch.dtype) -> Map:
            out = torch.full((total,), fill, dtype=dtype)
            out[slice(None) if index is None else index] = column.to(dtype)
            shaped = out.reshape(spatial)
            return grid.with_data(shaped) if grid is not None else shaped

        dtype = values.dtype
        codes = Counter(int(c) for c in torch.bincount(status.long(), minlength=1).nonzero().reshape(-1))
        counts = {Status(c).name.lower(): int((status == c).sum()) for c in sorted(codes) if int((status == c).sum())}
        at_bound: dict[str, int] = {}
        for j, name in enumerate(parameters):
            on = torch.zeros(values.shape[0], dtype=torch.bool)
            for limit in bounds:
                if limit is not None and math.isfinite(float(limit[j])):
                    on |= values[:, j] == limit[j]
            if int(on.sum()):
                at_bound[name] = int(on.sum())
        return cls(
            model=model,
            parameters=parameters,
            maps={n: scatter(values[:, j], math.nan, dtype) for j, n in enumerate(parameters)},
            stderr={n: scatter(stderr[:, j], math.nan, dtype) for j, n in enumerate(parameters)},
            status=scatter(status, NOT_FITTED, torch.int16),
            rms=scatter(rms, math.nan, dtype),
            counts=counts,
            sigma=sigma,
            steps=int(steps.sum()),
            seconds=seconds,
            at_bound=at_bound,
        )

    def summary(self) -> str:
        """One paragraph: the model, voxels fitted, statuses and the median of each map."""
        lines = [f"{self.model}: {self.fitted} voxels in {self.seconds:.3g} s; " + _counts_text(self.counts)]
        if self.at_bound:
            lines.append("  on a bound: " + ", ".join(f"{n} {c}" for n, c in self.at_bound.items()))
        for name in self.parameters:
            data = _data(self.maps[name])
            fitted = data[torch.isfinite(data)]
            median = float(fitted.median()) if fitted.numel() else math.nan
            lines.append(f"  {name}: median {median:.6g}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the model, parameters, counts, sigma, steps, time and per-map medians and quartiles."""
        stats = {}
        for name in self.parameters:
            data = _data(self.maps[name])
            fitted = data[torch.isfinite(data)].double()
            q = fitted.quantile(torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)) if fitted.numel() else None
            stats[name] = None if q is None else {"q25": float(q[0]), "median": float(q[1]), "q75": float(q[2])}
        return {
            "model": self.model,
            "parameters": list(self.parameters),
            "fitted_voxels": self.fitted,
            "success": self.success,
            "counts": self.counts,
            "at_bound": self.at_bound,
            "sigma": self.sigma,
            "steps": self.steps,
            "seconds": self.seconds,
            "maps": stats,
        }

    def save(self, folder: str | os.PathLike[str], suffix: str = ".nii.gz") -> list[Path]:
        """Write every map to ``folder`` (created if missing): ``NAME{suffix}``, ``NAME_stderr{suffix}``,
        ``status{suffix}``, ``rms{suffix}`` and ``summary.json``; each file written whole or not at all. Tensor
        maps (no grid) are written as ``.npy``. Returns the paths written."""
        from lossfit.registration.io import save_image

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        items: list[tuple[str, Map]] = [(n, self.maps[n]) for n in self.parameters]
        items += [(f"{n}_stderr", self.stderr[n]) for n in self.parameters]
        items += [("status", self.status), ("rms", self.rms)]
        for name, value in items:
            if isinstance(value, Image):
                path = out / f"{name}{suffix}"
                save_image(value.to(torch.float32) if name != "status" else value, path)
            else:
                import numpy as np

                path = out / f"{name}.npy"
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.save(fh, value.numpy())
            written.append(path)
        path = out / "summary.json"
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        written.append(path)
        return written


def _data(value: Map) -> torch.Tensor:
    return value.data if isinstance(value, Image) else value


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {c}" for n, c in sorted(counts.items(), key=lambda item: -item[1]))
