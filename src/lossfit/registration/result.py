"""What :func:`~lossfit.registration.register` returns: a :class:`Registration`, with a :class:`Level` per level."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from lossfit.engine.result import FitResult, Status
from lossfit.registration.image import Image
from lossfit.registration.resample import resample


@dataclass(frozen=True)
class Level:
    """One pyramid level: its shrink factor, smoothing (voxels of the input), samples and how it ended."""

    shrink: int
    sigma: float
    samples: int
    steps: int
    status: tuple[Status, ...]
    loss: torch.Tensor  # per step (rows) and pair (columns)
    time: float


@dataclass(frozen=True)
class Registration(FitResult):
    """The result of :func:`register`: a :class:`~lossfit.FitResult` plus the world transform and the images.

    Attributes:
        matrix: ``(d+1, d+1)`` float64 (``(B, d+1, d+1)`` for a batch): maps points of the fixed image's world space
            (LPS, mm) to the moving image's world space.
        transform, metric: what was fitted and compared.
        levels: a :class:`Level` per pyramid level, coarse to fine.
        fixed, moving: the input images (lists for a batch).
        warped: the moving image resampled onto the fixed grid (a list for a batch).
        checks: the independent end-of-run check (a dict of floats; a list of them for a batch), see
            :mod:`lossfit.registration.checks`: the metric over the whole fixed grid at the start and at the
            answer, the objective's own value and its independent recomputation, the overlap, the determinant
            and singular values of the linear part. ``success`` needs every check to pass.
        world: the matrix in world terms about the fixed image's centre (a dict; a list for a batch), see
            :mod:`lossfit.registration.world`: ``translation_mm``, ``rotation_deg`` (and the rotation's angle and
            axis in 3-D), ``scales`` for similarity and affine, with ``*_stderr`` for mean squares.
    """

    matrix: torch.Tensor | None = None
    transform: str = ""
    metric: str = ""
    levels: tuple[Level, ...] = ()
    fixed: Any = None
    moving: Any = None
    warped: Any = None
    checks: Any = field(default_factory=dict)
    world: Any = field(default_factory=dict)

    def _matrix(self, pair: int) -> torch.Tensor:
        if self.matrix is None:
            raise ValueError("this result holds no matrix")
        return self.matrix[pair] if self.matrix.dim() == 3 else self.matrix

    def pair(self, index: int) -> Registration:
        """Pair ``index`` of a batched result, as the result of registering that pair alone (its own status,
        matrix, images, checks and history column); a single pair's result returns itself for index 0."""
        import dataclasses

        from lossfit.engine.result import History

        if self.matrix is None or self.matrix.dim() == 2:
            if index not in (0, -1):
                raise IndexError(f"`index` must be 0 for a single pair's result; got {index}")
            return self
        count = self.matrix.shape[0]
        if not -count <= index < count:
            raise IndexError(f"`index` must be in {-count}..{count - 1} for a batch of {count} pairs; got {index}")
        i = index % count
        status = self.statuses[i]
        h = self.history
        history = None if h is None else History(h.loss[:, i], h.grad_norm[:, i], h.step_norm[:, i], h.time)

        def one(value: Any) -> Any:
            return None if value is None else value[i]

        return dataclasses.replace(
            self,
            params=self.params[i],
            loss=self.loss[i],
            success=status.success,
            status=status,
            statuses=(status,),
            steps=self.steps[i],
            num_steps=int(self.steps[i]),
            history=history,
            residuals=one(self.residuals),
            jacobian=one(self.jacobian),
            covariance=one(self.covariance),
            matrix=self.matrix[i],
            fixed=self.fixed[i],
            moving=self.moving[i],
            warped=self.warped[i],
            checks=self.checks[i],
            world=self.world[i],
        )

    def inverse(self) -> torch.Tensor:
        """The matrix that maps the moving image's world space back to the fixed image's."""
        if self.matrix is None:
            raise ValueError("this result holds no matrix")
        return torch.linalg.inv(self.matrix)

    def warp(self, image: Image, interpolation: str = "linear", pair: int = 0) -> Image:
        """``image``, living in the moving image's world space, resampled onto the fixed image's grid."""
        fixed = self.fixed[pair] if isinstance(self.fixed, list) else self.fixed
        out = resample(image, fixed, self._matrix(pair), interpolation=interpolation)
        assert isinstance(out, Image)  # mask=False returns an Image
        return out

    def save_transform(self, path: Any, pair: int = 0) -> None:
        """Write the transform as an ITK transform file (.tfm/.txt), readable by SimpleITK and ANTs."""
        from lossfit.registration.transform_files import write_itk_transform

        write_itk_transform(path, self._matrix(pair))

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.matrix is not None:
            out["matrix"] = self.matrix.tolist()
        out["convention"] = (
            "matrix maps homogeneous points of the fixed image's world space (LPS, mm) to the moving image's "
            "world space; inverse() maps back"
        )
        out["transform"], out["metric"] = self.transform, self.metric
        out["parameters"] = self.world
        out["params_note"] = (
            "params are the solver's internal coordinates; parameters gives the transform in world terms"
        )
        out["metric_per_sample"] = _per_sample(self.checks)
        out["checks"] = self.checks
        out["levels"] = [
            {
                "shrink": lv.shrink,
                "sigma_voxels": lv.sigma,
                "samples": lv.samples,
                "steps": lv.steps,
                "status": [s.name.lower() for s in lv.status],
                "time_s": lv.time,
            }
            for lv in self.levels
        ]
        return out


def _per_sample(checks: Any) -> Any:
    """The metric at the answer over the whole fixed grid (normalised per sample), from the checks."""
    if isinstance(checks, list):
        return [_per_sample(c) for c in checks]
    return checks.get("metric_answer") if isinstance(checks, dict) else None


__all__ = ["Level", "Registration"]
