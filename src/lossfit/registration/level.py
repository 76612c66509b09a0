"""The objective of one pyramid level, as the engine's solvers see it (:class:`lossfit.engine.problem.Problem`).

For a batch of pairs, the fixed image is compared with the moving one at fixed sample points ``x`` (world, LPS mm)
through the transform ``T = L M(p_id + s q) R`` (see :mod:`lossfit.registration.register`), over the parameters
``q`` (scaled to millimetres of shift). Every metric is normalised over the samples that count: those inside the
fixed mask whose mapped point ``T x`` falls inside the moving image (and its mask). So a transform cannot lower the
loss by moving the image away. A trial point that keeps fewer than ``min_count`` such samples is refused (its loss
is infinite, and every solver here rejects a non-finite trial), as ITK refuses when too many samples map outside.

- **Mean squares** (``metric="mse"``) is a least-squares problem with residuals ``(I_m(T x_i) - I_f(x_i)) / sqrt(n)``
  over the ``n`` samples that count (so the loss is half their mean square), the exact Jacobian from the moving
  image's world gradient, and optionally a robust loss whose scale is set per level from the residuals' spread.
- **NCC, local NCC and mutual information** are scalar losses with gradients by autograd through the resampling.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lossfit.losses import MAD_TO_SIGMA, Rho, robust_derivatives, robust_loss, robust_tuning, robust_value
from lossfit.registration import metrics as M
from lossfit.registration.resample import sample

_FLOAT = torch.float64
Rows = torch.Tensor | slice  # the pairs evaluated: indices, or a run of them
INSIDE_MARGIN = 1e-5  # in grid_sample's normalised units (-1 and 1 at the first and last voxel centres)
GROUP_SAMPLES = 1 << 16  # mean squares is evaluated over groups of pairs of about this many samples in all


class LevelProblem:
    """Residuals (mean squares) or a scalar loss over the fixed samples of one level, for a batch of pairs.

    Args:
        points: ``(B, N, d)`` fixed world points (float64).
        values: ``(B, N)`` fixed values there; ``fixed_ok``: ``(B, N)`` whether each lies in the fixed mask.
        moving: ``(B, C, *shape)`` the moving level's values, then (mean squares) its world gradient (``d``
            channels), then (with a moving mask) the mask: ``has_mask`` says whether the last channel is one.
        to_normalized: ``(B, d+1, d+1)`` moving world -> ``grid_sample``'s coordinates *of the moving grid*.
        model_matrix: ``q (B, n) -> M (B, d+1, d+1)``; ``left``, ``right``: ``(B, d+1, d+1)`` with ``T = L M R``.
        linear_model: whether ``M`` is linear in ``q`` (its Jacobian is then computed once); ``projective``:
            whether ``T``'s last row varies (otherwise it is ``(0, ..., 0, 1)`` and the mapped points' weight is 1).
        min_count: ``(B,)`` the fewest samples that must count for a trial point to be evaluated.
        grid_shape: for local NCC on the whole grid, the fixed level's shape (the samples are the grid, in order).
        patch: for local NCC on patches, the points per patch ``K`` (the samples are ``P`` patches of ``K``).
    """

    keep_final = False  # the final check here is the registration's own (lossfit.registration.checks)
    jac = None  # no caller's Jacobian: the engine's least-squares check evaluates ours
    counts: torch.Tensor | None = None  # every sample counts (those outside the overlap are weighted out)

    def __init__(
        self,
        *,
        points: torch.Tensor,
        values: torch.Tensor,
        fixed_ok: torch.Tensor,
        moving: torch.Tensor,
        has_mask: bool,
        to_normalized: torch.Tensor,
        model_matrix: Callable[[torch.Tensor], torch.Tensor],
        left: torch.Tensor,
        right: torch.Tensor,
        metric: str,
        bins: int,
        window: int,
        grid_shape: tuple[int, ...] | None,
        linear_model: bool,
        projective: bool = False,
        patch: int | None = None,
        min_count: torch.Tensor,
    ) -> None:
        self.world_points = points
        self.points = torch.cat([points, torch.ones_like(points[..., :1])], dim=-1)  # homogeneous
        self.points_t = self.points.transpose(1, 2).contiguous()  # (B, d+1, N)
        self.values, self.fixed_ok, self.moving, self.has_mask = values, fixed_ok, moving, has_mask
        self.to_normalized, self.model_matrix, self.left, self.right = to_normalized, model_matrix, left, right
        self.metric, self.bins, self.window, self.grid_shape = metric, bins, window, grid_shape
        self.linear_model, self.min_count, self.patch = linear_model, min_count, patch
        self.kind = "residual" if metric == "mse" else "scalar"
        self.d = points.shape[-1]
        # A start matrix given by the user may be projective even for an affine model: the shortcut needs both ends'
        # last rows to be exactly (0, ..., 0, 1).
        last = torch.zeros(self.d + 1, dtype=left.dtype, device=left.device)
        last[self.d] = 1
        self.projective = projective or not all(bool((t[:, self.d] == last).all()) for t in (left, right))
        self.evals = 0
        self.num_residuals: int | None = values.shape[1]
        b = values.shape[0]
        self.loss_scale = torch.ones(b, dtype=_FLOAT, device=values.device)
        self.rho: Rho | None = None
        self.f_scale = torch.ones(b, dtype=_FLOAT, device=values.device)  # robust scale, in image intensities
        # The robust scale of the latest residual evaluation, per evaluated row, relative to its normalised
        # residuals: cost, weights and robust_terms refer to the residuals evaluated last (as the solvers use them).
        self._latest_scale: torch.Tensor | None = None
        self._dt: torch.Tensor | None = None  # dT/dq of every pair, for the models linear in q
        if metric == "mi":
            self.ranges = (*M.intensity_range(values, fixed_ok), *_volume_range(moving[:, 0]))
            self.fixed_weights = M.parzen_weights(values, self.ranges[0], self.ranges[1], bins)

    # -- geometry -----------------------------------------------------------------------------------------------
    def matrix(self, q: torch.Tensor, rows: Rows) -> torch.Tensor:
        """The world transforms ``T (B, d+1, d+1)`` of the rows ``rows`` at ``q``."""
        return _take(self.left, rows) @ self.model_matrix(q) @ _take(self.right, rows)

    def _warp(
        self, q: torch.Tensor, rows: Rows, matrix: torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """World points in moving space ``Y (B, N, d)``, their homogeneous weight ``w (B, N)`` and normalised
        coordinates on the moving grid ``(B, N, d)``; ``Y`` and ``w`` only for a projective ``T`` (None otherwise:
        the weight is 1 and the normalised coordinates come from the points in one product). ``matrix``: ``T`` at
        ``q`` where the caller has it."""
        a = _take(self.to_normalized, rows)
        points = _take(self.points, rows)
        matrix = self.matrix(q, rows) if matrix is None else matrix
        if not self.projective:
            c = (a @ matrix)[:, : self.d]  # fixed world -> normalised moving coordinates
            linear = c[..., : self.d].transpose(1, 2)
            return None, None, torch.baddbmm(c[:, None, :, self.d], points[..., : self.d], linear)
        h = points @ matrix.transpose(-1, -2)
        w = h[..., self.d]
        y = h[..., : self.d] / w.unsqueeze(-1)
        normalized = y @ a[:, : self.d, : self.d].transpose(-1, -2) + a[:, None, : self.d, self.d]
        return y, w, normalized

    def _sampled(
        self, q: torch.Tensor, rows: Rows, matrix: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The moving channels at the mapped samples ``(B, C, N)`` (float64: losses sum many samples), which
        samples count ``(B, N)`` (float), and ``y``, ``w`` of :meth:`_warp`."""
        y, w, normalized = self._warp(q, rows, matrix)
        out = sample(_take(self.moving, rows), normalized).to(_FLOAT)
        # Inside the moving grid's voxel-centre box, with a rounding margin (1e-5 of the half-width): a sample on
        # the border of a grid it shares with the fixed image counts the same way on every path.
        inside = (normalized.detach().abs() <= 1 + INSIDE_MARGIN).all(dim=-1)
        ok = _take(self.fixed_ok, rows) & inside
        if w is not None:
            ok = ok & (w.detach() > 0)
        if self.has_mask:
            ok = ok & (out[:, -1].detach() > 0.5)
        self.evals += 1
        return out, ok.to(out.dtype), y, w

    def _refused(self, ok: torch.Tensor, rows: Rows) -> torch.Tensor:
        """Rows whose samples that count fall below the floor ``(B,)``."""
        return ok.sum(-1) < _take(self.min_count, rows)

    # -- least squares (mse) --------------------------------------------------------------------------------------
    def _normalised(
        self, out: torch.Tensor, ok: torch.Tensor, rows: Rows
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residuals over the samples that count, divided by the root of their number; the per-row factor; and
        the rows refused (their residuals are infinite)."""
        count = ok.sum(-1, keepdim=True)
        factor = count.clamp_min(1).rsqrt()
        r = (out[:, 0] - _take(self.values, rows)) * ok * factor
        refused = self._refused(ok, rows)
        r = torch.where(refused.unsqueeze(1), torch.full_like(r, math.inf), r)
        self._latest_scale = _take(self.f_scale, rows).unsqueeze(1) * factor
        return r, factor, refused

    def residual(self, q: torch.Tensor, rows: torch.Tensor, part: slice | None = None) -> torch.Tensor:
        return self._in_groups(q, rows, jacobian=False)[0]

    def residual_and_jacobian(
        self, q: torch.Tensor, rows: torch.Tensor, part: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        r, jac = self._in_groups(q, rows, jacobian=True)
        assert jac is not None
        return r, jac

    def _in_groups(
        self, q: torch.Tensor, rows: torch.Tensor, jacobian: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Residuals ``(B, m)`` and (``jacobian``) Jacobians ``(B, m, n)`` over groups of pairs of about
        ``GROUP_SAMPLES`` samples in all, into one output; the Jacobians a transposed view of ``(B, n, m)`` as they
        are computed. The transforms and their derivatives are computed once for the whole batch.

        Measured on motion correction (60 pairs of 20,000 samples): the whole batch at once spent half its time
        in first touches of fresh temporaries of 50-150 MB (each a new memory mapping); in groups they stay small,
        are reused by the allocator and stay in cache: 1.7x faster, the same numbers to rounding.
        """
        b, m = q.shape[0], self.values.shape[1]
        matrices = self.matrix(q, rows)
        dt = self._matrix_jacobian(q, rows) if jacobian else None
        per = max(1, GROUP_SAMPLES // max(m, 1))
        run = _run(rows)
        r = q.new_empty((b, m)) if b > per else None
        jt: torch.Tensor | None = None
        scales = []
        for first in range(0, b, per):
            group = slice(first, min(first + per, b))
            selected: Rows = rows[group] if run is None else slice(run + group.start, run + group.stop)
            out, ok, y, w = self._sampled(q[group], selected, matrices[group])
            r_group, factor, refused = self._normalised(out, ok, selected)
            jt_group = None if dt is None else self._jacobian_t(out, ok, factor, refused, y, w, dt[group], selected)
            if r is None:  # one group: no copies
                return r_group.to(q.dtype), None if jt_group is None else jt_group.to(q.dtype).transpose(1, 2)
            r[group] = r_group
            if jt_group is not None:
                if jt is None:
                    jt = q.new_empty((b, jt_group.shape[1], m))
                jt[group] = jt_group
            assert self._latest_scale is not None
            scales.append(self._latest_scale)
        self._latest_scale = torch.cat(scales)
        assert r is not None
        return r, None if jt is None else jt.transpose(1, 2)

    def _jacobian_t(
        self,
        out: torch.Tensor,
        ok: torch.Tensor,
        factor: torch.Tensor,
        refused: torch.Tensor,
        y: torch.Tensor | None,
        w: torch.Tensor | None,
        dt: torch.Tensor,
        rows: Rows,
    ) -> torch.Tensor:
        """The transposed Jacobian ``(B, n, N)`` of the residuals of :meth:`_normalised` (samples last: every
        product below runs along contiguous samples), from the sampled channels and ``dT/dq`` ``(B, (d+1)^2, n)``."""
        d = self.d
        # (B, d, N): the world gradient of the moving image at y, weighted as the residual is (0 outside the overlap)
        grad = out[:, 1 : d + 1] * (ok * factor * ~refused.unsqueeze(1)).unsqueeze(1)
        if self.projective:
            assert y is not None and w is not None
            inv_w = (1 / w).unsqueeze(1)
            # d y_i / d T_lj = (delta_il - y_i delta_dl) x_j / w: the effective gradient over the matrix rows l
            eff = torch.cat([grad * inv_w, -(grad * y.transpose(1, 2)).sum(1, keepdim=True) * inv_w], dim=1)
        else:
            eff, dt = grad, dt[:, : d * (d + 1)]  # w = 1 and T's last row is constant: d y / d T_lj = delta x_j
        outer = (eff.unsqueeze(2) * _take(self.points_t, rows).unsqueeze(1)).flatten(1, 2)  # (B, rows x (d+1), N)
        return dt.transpose(1, 2) @ outer

    def _matrix_jacobian(self, q: torch.Tensor, rows: Rows) -> torch.Tensor:
        """``dT/dq`` as ``(B, (d+1)^2, n)``; for the models linear in their parameters, computed once for all pairs."""
        if not self.linear_model:
            return self._differentiated(q, rows)
        if self._dt is None:
            every = torch.arange(self.values.shape[0], device=q.device)
            self._dt = self._differentiated(torch.zeros(len(every), q.shape[1], dtype=q.dtype, device=q.device), every)
        return _take(self._dt, rows)

    def _differentiated(self, q: torch.Tensor, rows: Rows) -> torch.Tensor:
        k = (self.d + 1) ** 2
        # Central differences of the closed-form model matrix, all parameters and pairs in one call (errors near
        # 1e-10 relative: ample for a Gauss-Newton step; the residuals themselves are exact).
        b, n = q.shape
        h = 1e-5
        steps = h * torch.eye(n, dtype=q.dtype, device=q.device)
        shifted = torch.cat([q.unsqueeze(1) + steps, q.unsqueeze(1) - steps], dim=1).reshape(b * 2 * n, n)
        m = self.model_matrix(shifted).reshape(b, 2, n, k)
        dm = ((m[:, 0] - m[:, 1]) / (2 * h)).transpose(1, 2)  # (B, k, n)
        dm = dm.reshape(b, self.d + 1, self.d + 1, -1).permute(0, 3, 1, 2)  # (B, n, d+1, d+1)
        dt = (_take(self.left, rows).unsqueeze(1) @ dm @ _take(self.right, rows).unsqueeze(1)).reshape(b, -1, k)
        return dt.transpose(1, 2)

    def _scale_for(self, r: torch.Tensor) -> torch.Tensor:
        scale = self._latest_scale
        if scale is None or scale.shape[0] != r.shape[0]:
            raise RuntimeError("the robust scale belongs to the residuals evaluated last; evaluate them first")
        return scale

    def cost(self, r: torch.Tensor) -> torch.Tensor:
        """Half the sum of (robust) squares of the normalised residuals: half their (robust) mean square."""
        if self.rho is None:
            return 0.5 * (r * r).sum(-1)
        return 0.5 * robust_value(self.rho, r, self._scale_for(r)).sum(-1)  # type: ignore[arg-type]

    def weights(self, r: torch.Tensor) -> torch.Tensor | None:
        if self.rho is None:
            return None
        return robust_derivatives(self.rho, r, self._scale_for(r))[0]  # type: ignore[arg-type]

    def robust_terms(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``rho'``, the clamped curvature ``c`` and ``sign(r)`` per residual (see ``Objective.robust_terms``)."""
        if self.rho is None:
            return None
        d1, d2, z = robust_derivatives(self.rho, r, self._scale_for(r))  # type: ignore[arg-type]
        return d1, torch.maximum(2 * d2 * z, -d1), torch.sign(r)

    def parts(self, b: int, per_row: int) -> list[slice]:
        """One part: the samples per level are bounded, so the whole batch is evaluated at once."""
        return [slice(0, b)]

    def set_robust_scale(self, q: torch.Tensor, loss: str) -> None:
        """The robust loss's scale per pair: a multiple of the residuals' robust standard deviation at the level's
        start (the median absolute residual over the samples that count, times the normal-consistency factor; then
        the loss's own tuning constant)."""
        self.rho = robust_loss(loss)
        rows = torch.arange(q.shape[0], device=q.device)
        out, ok, _, _ = self._sampled(q, rows)
        e = (out[:, 0] - self.values) * ok
        scales = []
        for row in range(e.shape[0]):
            inside = e[row][ok[row] > 0].abs()
            inside = inside[inside > 0]  # empty background against empty background says nothing about the noise
            mad = float(inside.median()) if inside.numel() else 1.0
            scales.append(max(MAD_TO_SIGMA * mad, 1e-12) * robust_tuning(loss))
        self.f_scale = torch.tensor(scales, dtype=_FLOAT, device=q.device)

    # -- scalar losses ----------------------------------------------------------------------------------------------
    def objective(self, moving_values: torch.Tensor, ok: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The loss the solver minimises ``(B,)`` (before :meth:`scale_loss`), from the moving values at the
        samples ``(B, N)`` and which samples count ``(B, N)``: the end-of-run check feeds it values sampled by
        an independent path."""
        if self.kind == "residual":
            out = moving_values.unsqueeze(1)
            return self.cost(self._normalised(out, ok, rows)[0])
        a = _take(self.values, rows)
        if self.metric == "ncc":
            f = M.ncc(a, moving_values, ok)
        elif self.metric == "mi":
            lo_a, hi_a, lo_b, hi_b = (_take(v, rows) for v in self.ranges)
            first, weights = self.fixed_weights
            fixed = (_take(first, rows), _take(weights, rows))
            f = M.mi(a, moving_values, ok, self.bins, (lo_a, hi_a, lo_b, hi_b), fixed)
        elif self.patch is not None:
            boxes = (len(rows), -1, self.patch)
            f = M.patch_lncc(a.reshape(boxes), moving_values.reshape(boxes), ok.reshape(boxes))
        else:
            assert self.grid_shape is not None  # local NCC on the whole grid
            shape = (len(rows), *self.grid_shape)
            f = M.lncc(a.reshape(shape), moving_values.reshape(shape), ok.reshape(shape), self.window)
        return torch.where(self._refused(ok, rows), torch.full_like(f, math.inf), f)

    def own_value(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The loss at ``q`` through the solver's own path (before :meth:`scale_loss`)."""
        with torch.no_grad():
            out, ok, _, _ = self._sampled(q, rows)
            return self.objective(out[:, 0], ok, rows)

    def _loss(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        out, ok, _, _ = self._sampled(q, rows)
        return self.objective(out[:, 0], ok, rows) * _take(self.loss_scale, rows)

    def value(self, q: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        if self.kind == "residual":
            return self.cost(self.residual(q, rows))
        with torch.no_grad():
            return self._loss(q, rows).to(q.dtype)

    def value_and_grad(self, q: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            qq = q.detach().requires_grad_(True)
            f = self._loss(qq, rows)
            (g,) = torch.autograd.grad(torch.where(torch.isfinite(f), f, torch.zeros_like(f)).sum(), qq)
        return f.detach().to(q.dtype), g.to(q.dtype)

    def scale_loss(self, q: torch.Tensor) -> None:
        """Scale each pair's loss so that its largest gradient entry at ``q`` is 1: a first quasi-Newton step then
        moves the image by about a millimetre (the parameters are in millimetres of shift), whatever the metric."""
        rows = torch.arange(q.shape[0], device=q.device)
        self.loss_scale = torch.ones(q.shape[0], dtype=_FLOAT, device=q.device)
        _, g = self.value_and_grad(q, rows)
        self.loss_scale = 1 / g.abs().amax(dim=1).clamp_min(1e-12)


def _take(t: torch.Tensor, rows: Rows) -> torch.Tensor:
    """``t[rows]``, without copying when ``rows`` is a slice or a run of consecutive rows."""
    if isinstance(rows, slice):
        return t[rows]
    first = _run(rows)
    return t[rows] if first is None else t[first : first + rows.numel()]


def _run(rows: torch.Tensor) -> int | None:
    """The first row if ``rows`` are consecutive rows in order (every row, or a group of them), else None."""
    k = rows.numel()
    if not k:
        return None
    first = int(rows[0])
    if int(rows[-1]) - first == k - 1 and (k == 1 or bool((rows[1:] > rows[:-1]).all())):
        return first
    return None


def _volume_range(volume: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    flat = volume.reshape(volume.shape[0], -1)
    step = max(1, flat.shape[1] // 200_000)
    return M.intensity_range(flat[:, ::step])


__all__ = ["LevelProblem"]
