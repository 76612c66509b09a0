"""What a deformable :func:`~lossfit.registration.register` returns: a :class:`DeformableRegistration`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import torch

from lossfit.registration.image import Image
from lossfit.registration.resample import resample
from lossfit.registration.result import Registration


@dataclass(frozen=True)
class DeformableRegistration(Registration):
    """A :class:`~lossfit.registration.Registration` whose mapping is a dense field.

    Attributes:
        displacement: ``(*fixed.shape, d)`` float64 (``(B, *fixed.shape, d)`` for a batch): the whole mapping,
            affine stage included, as world displacements (LPS mm, components x, y[, z]) on the fixed grid: the
            fixed world point ``x`` maps to ``x + displacement(x)`` in the moving image's world. The layout of an
            ITK displacement field (``SimpleITK.GetArrayFromImage``).
        inverse_displacement: the inverse mapping on the moving grid (``(*moving.shape, d)``), moving world ->
            fixed world; exact for ``"svf"`` (``exp(-v)``), by fixed-point iteration otherwise. None if it could
            not be formed.
        matrix: the affine stage's matrix (fixed world -> moving world); the field is applied before it.
        affine_stage: the affine stage's own :class:`~lossfit.registration.Registration` (None without one).
        velocity: for ``"svf"``, the stationary velocity field on the fixed grid (``(*fixed.shape, d)``, mm).
        evaluation: per pair, the field's Jacobian determinant statistics (``jacobian_min``, ``jacobian_max``,
            ``folded_fraction``), in the fixed grid's voxels.
    """

    displacement: Any = None
    inverse_displacement: Any = None
    affine_stage: Any = None
    velocity: Any = None
    evaluation: Any = dataclasses.field(default_factory=dict)

    def _field(self, pair: int) -> torch.Tensor:
        if self.displacement is None:
            raise ValueError("this result holds no displacement field")
        fixed = self.fixed[pair] if isinstance(self.fixed, list) else self.fixed
        return self.displacement[pair] if self.displacement.dim() == fixed.ndim + 2 else self.displacement

    def pair(self, index: int) -> DeformableRegistration:
        base = super().pair(index)
        if base is self:
            return self
        out = cast(DeformableRegistration, base)

        def one(value: Any) -> Any:
            return None if value is None else value[index]

        return dataclasses.replace(
            out,
            displacement=one(self.displacement),
            inverse_displacement=one(self.inverse_displacement),
            affine_stage=None if self.affine_stage is None else self.affine_stage.pair(index),
            velocity=one(self.velocity),
            evaluation=self.evaluation[index],
        )

    def local_displacement(self, pair: int = 0) -> torch.Tensor:
        """The field part ``u`` of the mapping alone, without the affine stage: ``(*fixed.shape, d)`` float64 world
        displacements (LPS mm) on the fixed grid, with ``phi(x) = A (x + u(x))`` (``A`` = :attr:`matrix`). Its
        Jacobian determinant is the local volume change beyond the affine one (what :attr:`evaluation` reports)."""
        fixed = self.fixed[pair] if isinstance(self.fixed, list) else self.fixed
        total = self._field(pair).to(torch.float64)
        matrix = self._matrix(pair).to(torch.float64)
        d = fixed.ndim
        x = fixed.world_grid(torch.float64).to(total.device)
        linear, shift = matrix[:d, :d].to(total.device), matrix[:d, d].to(total.device)
        # A^-1 (x + D(x)) - x, solved rather than inverted.
        y = torch.linalg.solve(linear, (x + total - shift).reshape(-1, d).T).T.reshape(x.shape)
        return y - x

    def warp(self, image: Image, interpolation: str = "linear", pair: int = 0) -> Image:
        """``image``, living in the moving image's world space, resampled onto the fixed grid through the field."""
        fixed = self.fixed[pair] if isinstance(self.fixed, list) else self.fixed
        out = resample(image, fixed, interpolation=interpolation, displacement=self._field(pair))
        assert isinstance(out, Image)  # mask=False returns an Image
        return out

    def save_transform(self, path: Any, pair: int = 0) -> None:
        """Write the whole mapping, in the format the suffix names:

        - ``.nii``, ``.nii.gz``, ``.mha``: one ITK displacement field (physical LPS displacements on the fixed
          grid, affine stage included), which SimpleITK reads as a ``DisplacementFieldTransform`` and ANTs as a
          warp;
        - ``.h5``, ``.hdf5``: an ITK ``CompositeTransform`` of the affine stage and the field part
          (:meth:`local_displacement`), which ``SimpleITK.ReadTransform`` reads as one transform.
        """
        from lossfit.registration.fields_io import H5_SUFFIXES, write_composite_h5, write_displacement_field

        fixed = self.fixed[pair] if isinstance(self.fixed, list) else self.fixed
        if str(path).lower().endswith(H5_SUFFIXES):
            write_composite_h5(path, self._matrix(pair), self.local_displacement(pair), fixed)
        else:
            write_displacement_field(path, self._field(pair), fixed)

    def save_inverse_transform(self, path: Any, pair: int = 0) -> None:
        """Write the inverse mapping (moving world -> fixed world) as a displacement field on the moving grid."""
        from lossfit.registration.fields_io import write_displacement_field

        if self.inverse_displacement is None:
            raise ValueError("this result holds no inverse field")
        moving = self.moving[pair] if isinstance(self.moving, list) else self.moving
        field = self.inverse_displacement
        field = field[pair] if field.dim() == moving.ndim + 2 else field
        write_displacement_field(path, field, moving)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["convention"] = (
            "the mapping is x -> x + displacement(x) from the fixed image's world space (LPS, mm) to the moving "
            "image's; matrix is the affine stage (applied after the field); save_transform() writes the whole "
            "mapping as an ITK displacement field"
        )
        out["evaluation"] = self.evaluation
        if self.affine_stage is not None:
            out["affine_stage"] = {"status": self.affine_stage.status.name.lower(), "matrix": out.get("matrix")}
        return out


__all__ = ["DeformableRegistration"]
