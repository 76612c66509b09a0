"""``register(fixed, moving)``: the world transform that maps the fixed image onto the moving one.

How it works, step by step (each step has its module):

1. **Check the inputs** (here): images, options, masks, and that the images overlap at the start.
2. **The start** (:mod:`~lossfit.registration.start`): ``T = L M(p) R`` in world coordinates (LPS, mm), where ``M``
   is the model's matrix (:func:`lossfit.transforms.matrix`; rotations by the exponential map), ``R`` moves the
   fixed centre to the origin and ``L`` holds the initialisation; parameters scaled to millimetres of shift.
3. **The pyramid** (:mod:`~lossfit.registration.pyramid`): levels coarse to fine, each with its own smoothed,
   subsampled images (each on its own grid) and a seeded draw of fixed samples weighted towards edges.
4. **Each level's objective** (:mod:`~lossfit.registration.level`) is solved by the engine's driver: mean squares
   by Levenberg-Marquardt with the exact image Jacobian, the other metrics by L-BFGS; each level stops on
   convergence. Every metric is normalised over the overlap, and trial points that leave the image are refused.
5. **The independent check** (:mod:`~lossfit.registration.checks`): overlap, whole-grid metric at the start and
   the answer, the objective recomputed, the transform's linear part. ``success`` needs the finest level to have
   converged and every check to pass.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import torch

from lossfit import transforms as T
from lossfit.engine.loop import Outcome, Stopping, run
from lossfit.engine.result import History, SolverInfo, Status, build_result
from lossfit.engine.solvers import resolve
from lossfit.engine.verify import check_least_squares
from lossfit.losses import robust_loss
from lossfit.registration import checks as C
from lossfit.registration import metrics as M
from lossfit.registration import pyramid as P
from lossfit.registration import world as W
from lossfit.registration.deformable.driver import DEFORMABLE, register_deformable
from lossfit.registration.image import Image
from lossfit.registration.level import LevelProblem
from lossfit.registration.resample import resample, world_to_normalized
from lossfit.registration.result import Level, Registration
from lossfit.registration.start import INITS, identity_params, physical_scales, starts

TRANSFORMS = ("translation", "rigid", "similarity", "affine", "projective")
LOSSES = ("linear", "huber", "cauchy")
_FLOAT = torch.float64
_MIN_START_OVERLAP = 0.01  # below this fraction of the fixed voxels overlapping at the start: an error
_PRECISION_VOXELS = 0.02  # a stall after steps this short (in voxels) is convergence to the metric's precision


@dataclasses.dataclass(frozen=True)
class _Model:
    """The transform model with its scaled parameters: ``p = p_id + scale * q``."""

    name: str
    d: int
    p_id: torch.Tensor
    scale: torch.Tensor

    def matrix(self, q: torch.Tensor) -> torch.Tensor:
        return T.matrix(self.name, self.p_id + q * self.scale, self.d)

    def params(self, q: torch.Tensor) -> torch.Tensor:
        return self.p_id.cpu() + q.cpu() * self.scale.cpu()


def register(
    fixed: Image | Sequence[Image],
    moving: Image | Sequence[Image],
    transform: str = "affine",
    metric: str = "mse",
    *,
    levels: int | Sequence[int] | None = None,
    samples: int = 100_000,
    smoothing: float = 0.0,
    sampling: str = "gradient",
    loss: str = "linear",
    init: str = "geometry",
    initial: Any = None,
    fixed_mask: Image | None = None,
    moving_mask: Image | None = None,
    solver: str = "auto",
    bins: int = 32,
    window: int = 9,
    ftol: float | None = None,
    xtol: float = 1e-5,
    gtol: float = 1e-8,
    max_steps: int | None = None,
    seed: int = 0,
    progress: Any = None,
    affine: str = "affine",
    fluid: float | None = None,
    diffusion: float | None = None,
    control_spacing: float | None = None,
    bending: float | None = None,
    symmetric: bool = False,
    regularizer: str | None = None,
    folding: float | None = None,
) -> Registration:
    """Register ``moving`` to ``fixed``: find the world transform ``T`` with ``moving(T x) ~ fixed(x)``.

    The two images may lie on any grids (shape, spacing, direction and origin of their own): they are compared in
    world coordinates (LPS, mm).

    Args:
        fixed, moving: :class:`Image` objects of the same dimension (2-D or 3-D), or two lists of them (a batch of
            pairs, same shape within each list, each pair stopping on its own). When every image is a one-slice
            volume in the x-y plane (as 2-D NIfTI files load), they are registered as 2-D images (3x3 matrix).
        transform: ``"translation"``, ``"rigid"``, ``"similarity"``, ``"affine"`` or ``"projective"`` (2-D); or a
            deformable mapping (:mod:`lossfit.registration.deformable`): ``"deformable"`` (the recommended recipe:
            an affine stage, then a diffeomorphic stationary velocity field), ``"svf"`` (a stationary velocity
            field, integrated by scaling and squaring: diffeomorphic, its inverse exact), ``"field"`` (a dense
            displacement field) or ``"bspline"`` (a cubic B-spline free-form deformation). A deformable result is a
            :class:`~lossfit.registration.deformable.DeformableRegistration` with the whole mapping as a
            ``displacement`` field on the fixed grid.
        metric: ``"mse"`` (same modality), ``"ncc"`` (linear intensity change), ``"lncc"`` (local correlation,
            on boxes of ``window`` voxels around sampled centres; whole grids when small) or ``"mi"`` (mutual
            information: different modalities).
        levels: pyramid shrink factors, coarse to fine (default: up to (4, 2, 1), while the coarsest level keeps 24
            voxels per axis), or a count of levels.
        samples: the most fixed voxels compared at the finest level (a seeded draw; all voxels when fewer);
            a level shrunk by ``s`` compares at most ``samples / s``.
        smoothing: Gaussian smoothing (voxels) of both images at the finest level (coarser levels smooth by half
            their shrink factor).
        sampling: ``"gradient"`` draws the compared voxels with probability growing with the fixed image's gradient
            (edges carry the information about the alignment), ``"random"`` uniformly. Both are seeded.
        loss: for ``metric="mse"``, ``"linear"`` (plain least squares), ``"huber"`` or ``"cauchy"``: a robust loss
            whose scale follows the residuals' robust spread at the start of each level, for content that one image
            has and the other lacks (a field of view cut off, a fill value, a lesion).
        init: ``"geometry"`` (image centres), ``"mass"`` (intensity centres of mass), ``"moments"`` (centres of mass
            and principal axes) or ``"none"`` (the identity); ignored when ``initial`` (a world matrix, fixed to
            moving) is given.
        fixed_mask, moving_mask: images (any grid; brought onto the fixed / moving grid by nearest neighbour); only
            voxels where they are non-zero count. A mask that selects no voxel is an error.
        solver: ``"auto"`` (Levenberg-Marquardt for mse, L-BFGS otherwise) or any engine solver name.
        bins: histogram bins for ``mi``; ``window``: box size (voxels) for ``lncc``.
        ftol, xtol, gtol, max_steps: stopping at each level (engine semantics, on scaled parameters; defaults 1e-7
            and 200). Deformable: each level stops when its metric has improved by less than ``ftol`` (default
            5e-3) of all the level has gained, over 10 iterations, or after ``max_steps`` (default 100 for mean
            squares, 200 for the other metrics, whose gradient steps are shorter) iterations.
        affine: deformable only: the stage found first, ``"affine"`` (default), ``"rigid"``, ``"similarity"``,
            ``"translation"`` or ``"none"`` (the images are already aligned); ignored when ``initial`` is given.
        fluid, diffusion: ``"svf"`` and ``"field"``: the Gaussian smoothing of each step and of the field, in voxels
            of each pyramid level (isotropic in mm: per axis the width follows the spacing); defaults 0 and 1.
        control_spacing, bending: ``"bspline"``: the control-point spacing at the finest level (mm; default 4
            voxels, halving with the pyramid) and the regulariser's weight (default 0.01).
        regularizer, folding: ``"bspline"``: the energy weighted by ``bending``, ``"bending"`` (default; thin-plate,
            mm^-2), ``"diffusion"`` (squared first derivatives) or ``"elastic"`` (linear elasticity), all in world
            units; and the weight of the barrier against Jacobian determinants below 0.2 (default 100; 0 turns it
            off, and a run that folds is then reported as ``FOLDED``).
        symmetric: ``"svf"`` and ``"deformable"``: pull both images half-way (the fixed one through ``exp(-v/2)``,
            the moving one through ``A exp(v/2)``) and compare them there, SyN-style, so that neither image is the
            reference; the mapping is still ``A exp(v)``. About twice the work per iteration.
        seed: seeds the sample choice (same inputs and seed give the same result on CPU).
        progress: called as ``progress(level_index, level_count)`` before each level (for progress bars).

    Returns:
        A :class:`Registration`: ``matrix`` (fixed world -> moving world, float64), ``warped``, ``levels``,
        ``checks``, ``inverse()``, ``warp()``, ``save_transform()``, ``to_dict()``. ``success`` when the finest
        level converged and the independent checks confirm the answer (see :mod:`lossfit.registration.checks`):
        otherwise ``status`` says which check failed (``NO_OVERLAP``, ``DEGENERATE``, ``WORSE_THAN_START``,
        ``CHECK_MISMATCH``) and what to try.

    Raises:
        TypeError, ValueError: bad images or options, a mask that selects nothing, or images that do not overlap
            at the start (the message gives both world extents).
    """
    began = time.perf_counter()
    batch = isinstance(fixed, (list, tuple))
    fixed_list, moving_list = _pairs(fixed, moving)
    d = fixed_list[0].ndim
    if symmetric is not False and transform not in DEFORMABLE:
        raise ValueError(f"`symmetric` needs a velocity field (transform 'svf' or 'deformable'); got transform "
                         f"{transform!r}")  # fmt: skip
    if transform in DEFORMABLE:
        return register_deformable(
            fixed, moving, transform, metric, pairs=(fixed_list, moving_list),
            masks=(_mask_on(fixed_mask, fixed_list[0], "fixed_mask"),
                   _mask_on(moving_mask, moving_list[0], "moving_mask")),
            levels=levels, affine=affine, initial=initial, fixed_mask=fixed_mask, moving_mask=moving_mask,
            fluid=fluid, diffusion=diffusion, control_spacing=control_spacing, bending=bending, symmetric=symmetric,
            regularizer=regularizer, folding=folding,
            max_steps=(100 if metric == "mse" else 200) if max_steps is None else max_steps,
            ftol=5e-3 if ftol is None else ftol,
            bins=bins, window=window, seed=seed, progress=progress,
        )  # fmt: skip
    ftol = 1e-7 if ftol is None else ftol
    max_steps = 200 if max_steps is None else max_steps
    _check_options(transform, metric, init, sampling, loss, smoothing, samples, d)
    factors = P.shrink_factors(fixed_list[0].shape, levels)
    masks = (_mask_on(fixed_mask, fixed_list[0], "fixed_mask"), _mask_on(moving_mask, moving_list[0], "moving_mask"))
    left, right = starts(fixed_list, moving_list, init, transform, initial)
    device = fixed_list[0].device
    left, right = left.to(device), right.to(device)
    p_id = identity_params(transform, d)
    model = _Model(
        transform, d, p_id.to(device), physical_scales(transform, d, fixed_list[0], right[0].cpu()).to(device)
    )
    q = torch.zeros(len(fixed_list), p_id.numel(), dtype=_FLOAT, device=device)
    start_matrices = (left @ model.matrix(q) @ right).detach().cpu()
    start_overlap = _start_overlap(fixed_list, moving_list, start_matrices, masks, batch)

    chosen_name = ("lm" if metric == "mse" else "lbfgs") if solver == "auto" else solver
    generator = torch.Generator().manual_seed(seed)
    done_levels: list[Level] = []
    evaluations = 0
    problem: LevelProblem | None = None
    outcome: Outcome | None = None
    for index, shrink in enumerate(factors):
        if progress is not None:
            progress(index, len(factors))
        level_began = time.perf_counter()
        finest = index == len(factors) - 1
        sigma = shrink / 2 if shrink > 1 else smoothing
        problem, n = _level_problem(
            fixed_list, moving_list, masks, shrink, sigma, metric, samples, sampling, generator, bins, window,
            model, left, right, torch.tensor(start_overlap, dtype=_FLOAT, device=device),
        )  # fmt: skip
        engine_solver = resolve(chosen_name, {})
        if loss != "linear":
            problem.set_robust_scale(q, loss)
        if engine_solver.needs == "gradient":
            problem.scale_loss(q)
        # Coarse levels hand over a start to the next: a loose tolerance; the finest level gets the requested one.
        stop = Stopping(ftol if finest else max(ftol, 1e-5), xtol if finest else max(xtol, 1e-3), gtol, max_steps, None)
        outcome = run(problem, engine_solver, q, stop, record=True)
        evaluations += problem.evals
        q = outcome.x
        statuses = tuple(Status(c) for c in outcome.status.tolist())
        if finest:
            statuses = _precision_rule(statuses, outcome.history, model, min(min(f.spacing) for f in fixed_list))
        loss_rows = outcome.history.loss if outcome.history is not None else torch.empty(0)
        steps = int(outcome.steps.max())
        done_levels.append(Level(shrink, sigma, n, steps, statuses, loss_rows, time.perf_counter() - level_began))
    assert outcome is not None and problem is not None  # there is at least one level

    final = (left @ model.matrix(q) @ right).detach().to("cpu", _FLOAT)
    pair_checks, warped = _check_answers(
        problem, q, final, start_matrices, start_overlap, fixed_list, moving_list, masks, moving_mask, metric, loss,
        bins, window, factors[-1], done_levels[-1].sigma,
    )  # fmt: skip
    # A converged pair whose independent check fails takes the check's status.
    statuses = tuple(
        Status[c["failed"].upper()] if s.success and c["failed"] else s
        for s, c in zip(done_levels[-1].status, pair_checks, strict=True)
    )
    covariance = _covariance(problem, q, model) if metric == "mse" else None
    params = model.params(q)
    world = _world(final, params, covariance, left.cpu(), right.cpu(), model, fixed_list)

    def pick(values: Any) -> Any:  # a batch keeps its lists, a single pair its one item
        return values if batch else values[0]

    return build_result(
        result_type=Registration,
        params=pick(params),
        loss=outcome.f.cpu(),
        statuses=statuses,
        steps=outcome.steps,
        batch=batch,
        num_steps=sum(level.steps for level in done_levels),
        num_evals=evaluations,
        history=outcome.history,
        solver=SolverInfo(chosen_name, {}, f"{'least squares' if metric == 'mse' else 'scalar loss'} ({metric})"),
        time=time.perf_counter() - began,
        covariance=covariance,
        matrix=pick(final),
        transform=transform,
        metric=metric,
        levels=tuple(done_levels),
        fixed=pick(fixed_list),
        moving=pick(moving_list),
        warped=pick(warped),
        checks=pick(pair_checks),
        world=pick(world),
        extras={"level_times_s": [lv.time for lv in done_levels]},
    )


def _world(
    final: torch.Tensor,
    params: torch.Tensor,
    covariance: torch.Tensor | None,
    left: torch.Tensor,
    right: torch.Tensor,
    model: _Model,
    fixed: list[Image],
) -> list[dict[str, Any]]:
    """Each pair's matrix in world terms about its fixed image's centre, with standard errors propagated from the
    parameters' covariance (mean squares) through the Jacobian of the world quantities."""
    out = []
    for b, (matrix, image) in enumerate(zip(final, fixed, strict=True)):
        centre = torch.tensor(image.center, dtype=_FLOAT)
        jacobian = cov = None
        if covariance is not None and model.name != "projective" and bool(torch.isfinite(covariance[b]).all()):

            def world_of(p: torch.Tensor, b: int = b, centre: torch.Tensor = centre) -> torch.Tensor:
                m = left[b].to(_FLOAT) @ T.matrix(model.name, p[None], model.d)[0] @ right[b].to(_FLOAT)
                return W.flatten(m, centre)

            jacobian = torch.autograd.functional.jacobian(world_of, params[b].to(_FLOAT), vectorize=True)
            cov = covariance[b].to(_FLOAT)
        out.append(W.world_parameters(matrix, centre, model.name, cov, jacobian))
    return out


def _start_overlap(
    fixed: list[Image],
    moving: list[Image],
    matrices: torch.Tensor,
    masks: tuple[torch.Tensor | None, torch.Tensor | None],
    batch: bool,
) -> list[float]:
    """Each pair's overlap at the start; an error naming both world extents where the images hardly overlap."""
    shares = [C.overlap(f, m, t, masks[0], masks[1]) for f, m, t in zip(fixed, moving, matrices, strict=True)]
    for i, share in enumerate(shares):
        if share < _MIN_START_OVERLAP:
            where = f"[{i}]" if batch else ""
            raise ValueError(
                f"`fixed`{where} and `moving`{where} do not overlap at the start ({100 * share:.2g}% of the fixed "
                f"voxels map inside the moving image): fixed covers {C.world_extent(fixed[i])}; moving covers "
                f"{C.world_extent(moving[i])}; check their geometry, or give `initial` or another `init`"
            )
    return shares


# ---------------------------------------------------------------------------------------------------------------
# One level


def _level_problem(
    fixed: list[Image],
    moving: list[Image],
    masks: tuple[torch.Tensor | None, torch.Tensor | None],
    shrink: int,
    sigma: float,
    metric: str,
    samples: int,
    sampling: str,
    generator: torch.Generator,
    bins: int,
    window: int,
    model: _Model,
    left: torch.Tensor,
    right: torch.Tensor,
    start_overlap: torch.Tensor,
) -> tuple[LevelProblem, int]:
    """The level's objective over its fixed samples, and their number."""
    d, device = fixed[0].ndim, fixed[0].device
    dtype = torch.float32 if fixed[0].dtype != torch.float64 else torch.float64
    f_data, f_aff = P.level_images(fixed, shrink, dtype, sigma)
    m_data, m_aff = P.level_images(moving, shrink, dtype, sigma)
    f_shape, m_shape = tuple(f_data.shape[1:]), tuple(m_data.shape[1:])
    budget = max(64, samples // shrink)  # coarse levels only need to get close: fewer samples
    count = f_data[0].numel()
    # Local NCC compares boxes: the whole grid when it is small, else boxes of points around sampled centres.
    whole = metric == "lncc" and count <= budget
    patch = None
    if metric == "lncc" and not whole:
        offsets = P.patch_offsets(window, d).to(device)
        patch = offsets.shape[0]
        centres = P.unravel(P.draw_samples(f_data, max(64, budget // patch), sampling, generator), f_shape)
        idx = (centres.unsqueeze(1) + offsets.unsqueeze(0)).reshape(-1, d)
        in_grid = ((idx >= 0) & (idx <= torch.tensor(f_shape[::-1], dtype=_FLOAT, device=device) - 1)).all(-1)
        chosen = P.ravel(idx, f_shape)  # clamped onto the grid; points off it do not count
    else:
        chosen = P.draw_samples(f_data, budget, sampling, generator, whole)
        idx = P.unravel(chosen, f_shape)  # (n, d) in index order, float64
        in_grid = torch.ones(chosen.numel(), dtype=torch.bool, device=device)
    n = chosen.numel()
    f_aff = f_aff.to(device)
    points = torch.cat([idx, torch.ones(n, 1, dtype=_FLOAT, device=device)], dim=1) @ f_aff.transpose(-1, -2)
    fixed_ok = in_grid.unsqueeze(0).expand(len(fixed), n).clone()
    if masks[0] is not None:
        fixed_ok = fixed_ok & masks[0][(slice(None, None, shrink),) * d].reshape(1, -1)[:, chosen]
    channels = [m_data.unsqueeze(1)]
    if metric == "mse":
        channels.append(P.world_gradient(m_data, m_aff.to(device)))
    if masks[1] is not None:
        level_mask = masks[1][(slice(None, None, shrink),) * d]
        channels.append(level_mask.to(m_data.dtype).expand(len(moving), *m_shape).unsqueeze(1))
    # Moving world -> the normalised coordinates of the *moving* level grid (its own shape, its own affine).
    to_normalized = torch.stack(
        [world_to_normalized(Image.from_affine(m_data[i], m_aff[i].cpu())) for i in range(len(moving))]
    ).to(device)
    min_count = C.OVERLAP_BARRIER * start_overlap * fixed_ok.sum(-1)
    problem = LevelProblem(
        points=points[..., :d].to(_FLOAT),
        values=f_data.reshape(len(fixed), -1)[:, chosen],
        fixed_ok=fixed_ok,
        moving=torch.cat(channels, dim=1),
        has_mask=masks[1] is not None,
        to_normalized=to_normalized,
        model_matrix=model.matrix,
        left=left,
        right=right,
        metric=metric,
        bins=bins,
        window=window,
        grid_shape=f_shape if whole else None,
        patch=patch,
        linear_model=model.name in ("translation", "affine", "projective"),
        projective=model.name == "projective",
        min_count=min_count.clamp_min(1.0),
    )
    return problem, n


def _precision_rule(
    statuses: tuple[Status, ...], history: History | None, model: _Model, spacing: float
) -> tuple[Status, ...]:
    """A pair that stalled at the finest level after steps shorter than ``_PRECISION_VOXELS`` of a voxel has
    converged as far as the sampled metric can tell (its precision, not the gradient, ends the run)."""
    if history is None or Status.STALLED not in statuses:
        return statuses
    steps = history.step_norm if history.step_norm.dim() == 2 else history.step_norm.unsqueeze(1)
    limit = _PRECISION_VOXELS * spacing / math.sqrt(model.p_id.numel())  # a unit of q moves a corner 1 mm at most
    out = []
    for pair, status in enumerate(statuses):
        taken = steps[1:, pair]
        taken = taken[torch.isfinite(taken) & (taken > 0)]
        last = float(taken[-1]) if taken.numel() else 0.0
        out.append(Status.CONVERGED_PRECISION if status is Status.STALLED and last <= limit else status)
    return tuple(out)


def _covariance(problem: LevelProblem, q: torch.Tensor, model: _Model) -> torch.Tensor:
    """The parameters' covariance ``(B, n, n)`` from the finest level's Jacobian (the engine's least-squares check),
    in the model's own parameters ``p = p_id + scale q``; NaN where the Jacobian is singular. It treats the samples
    as independent, which interpolation and smoothing make them not quite: the standard errors are optimistic."""
    rows = torch.arange(q.shape[0], device=q.device)
    g0 = torch.ones(q.shape[0], dtype=q.dtype, device=q.device)
    cov_q = check_least_squares(problem, q, rows, g0).covariance  # type: ignore[arg-type]
    scale = model.scale.to(cov_q)
    return (cov_q * scale.unsqueeze(0).unsqueeze(-1) * scale.unsqueeze(0).unsqueeze(-2)).cpu()


# ---------------------------------------------------------------------------------------------------------------
# The end-of-run check


def _check_answers(
    problem: LevelProblem,
    q: torch.Tensor,
    final: torch.Tensor,
    start_matrices: torch.Tensor,
    start_overlap: list[float],
    fixed: list[Image],
    moving: list[Image],
    masks: tuple[torch.Tensor | None, torch.Tensor | None],
    moving_mask: Image | None,
    metric: str,
    loss: str,
    bins: int,
    window: int,
    shrink: int,
    sigma: float,
) -> tuple[list[dict[str, Any]], list[Image]]:
    """Each pair's independent check (see :mod:`lossfit.registration.checks`), as a dict of plain numbers, and the
    moving image resampled onto the fixed grid by the answer (the check's own resampling, kept for the result)."""
    rows = torch.arange(q.shape[0], device=q.device)
    own = problem.own_value(q, rows).cpu()
    dtype = problem.moving.dtype
    m_data, m_aff = P.level_images(moving, shrink, dtype, sigma)
    level_mask = None
    if masks[1] is not None:
        level_mask = masks[1][(slice(None, None, shrink),) * moving[0].ndim].to(dtype)
    values, inside = [], []
    for i in range(len(moving)):
        level = Image.from_affine(m_data[i], m_aff[i])
        mask_image = None if level_mask is None else level.with_data(level_mask)
        v, ok = C.resampled_samples(problem.world_points[i], final[i].to(q.device), level, mask_image)
        values.append(v)
        inside.append(ok & problem.fixed_ok[i])
    again = problem.objective(torch.stack(values), torch.stack(inside).to(_FLOAT), rows).cpu()
    rho = robust_loss(loss) if loss != "linear" else None
    out, warped = [], []
    for i in range(len(fixed)):
        answer = resample(moving[i], fixed[i], final[i].to(torch.float64).cpu(), mask=True)
        assert isinstance(answer, tuple)  # mask=True returns the image and its inside mask
        warped.append(answer[0])
        grid: dict[str, Any] = {"fixed_mask": masks[0], "moving_mask": moving_mask, "bins": bins, "window": window}
        if rho is not None:
            grid.update(robust_loss=rho, f_scale=float(problem.f_scale[i]))
        check = {
            "overlap_start": start_overlap[i],
            "overlap": C.overlap(fixed[i], moving[i], final[i], masks[0], masks[1]),
            "metric": metric,
            "metric_start": C.metric_on_grid(fixed[i], moving[i], start_matrices[i], metric, **grid),
            "metric_answer": C.metric_on_grid(fixed[i], moving[i], final[i], metric, resampled=answer, **grid),
            "metric_slack": C.metric_slack(metric, problem.values[i]),
            "metric_constant": C.metric_constant(
                fixed[i], metric, masks[0], grid.get("robust_loss"), grid.get("f_scale", 1.0)
            ),
            "objective": float(own[i]),
            "objective_independent": float(again[i]),
            **C.linear_part(final[i]),
        }
        failed = C.verdict(check, metric)
        check["passed"] = failed is None
        check["failed"] = None if failed is None else failed.name.lower()
        out.append(check)
    return out, warped


# ---------------------------------------------------------------------------------------------------------------
# Input checks


def _check_options(
    transform: str, metric: str, init: str, sampling: str, loss: str, smoothing: float, samples: int, d: int
) -> None:
    def one_of(name: str, value: Any, allowed: Sequence[str]) -> None:
        if value not in allowed:
            raise ValueError(f"`{name}` must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}")

    one_of("transform", transform, TRANSFORMS + DEFORMABLE)
    if transform == "projective" and d != 2:
        raise ValueError("`transform='projective'` is for 2-D images")
    one_of("metric", metric, M.METRICS)
    one_of("init", init, INITS)
    one_of("sampling", sampling, ("gradient", "random"))
    one_of("loss", loss, LOSSES)
    if loss != "linear" and metric != "mse":
        raise ValueError(f"`loss={loss!r}` applies to metric='mse' only; got metric={metric!r}")
    if isinstance(smoothing, bool) or not (isinstance(smoothing, (int, float)) and smoothing >= 0):
        raise ValueError(f"`smoothing` must be a number of voxels >= 0; got {smoothing!r}")
    if isinstance(samples, bool) or not (isinstance(samples, int) and samples >= 64):
        raise ValueError(f"`samples` must be an integer >= 64; got {samples!r}")


def _mask_on(mask: Image | None, grid: Image, argument: str) -> torch.Tensor | None:
    """A mask brought onto ``grid`` (nearest neighbour) as a bool tensor; an error if it selects nothing there."""
    if mask is None:
        return None
    if not isinstance(mask, Image):
        raise TypeError(f"`{argument}` must be a lossfit.registration.Image or None; got {type(mask).__name__}")
    if mask.ndim == 3 and grid.ndim == 2:  # the slice rule of the images holds for their masks
        mask = single_slice(mask) or mask
    if mask.ndim != grid.ndim:
        raise ValueError(f"`{argument}` is {mask.ndim}-D but the images are {grid.ndim}-D")
    on_grid = resample(mask, grid, interpolation="nearest")
    assert isinstance(on_grid, Image)  # mask=False returns an Image
    keep = on_grid.data > 0.5
    if not bool(keep.any()):
        raise ValueError(
            f"`{argument}` selects no voxel of the image it masks ({int((mask.data > 0.5).sum())} voxels non-zero "
            f"on its own grid, none of them on the image's grid): nothing would be compared"
        )
    return keep


def _pairs(fixed: Any, moving: Any) -> tuple[list[Image], list[Image]]:
    """The images as lists, with one rule for slices: when every 3-D image is a one-slice volume (a 2-D NIfTI file,
    a single DICOM slice read as a volume) and the others are 2-D, all register as 2-D images in the x-y plane;
    a slice in another plane (coronal, sagittal, oblique) is refused with a message that says so."""
    fixed_list, moving_list = _as_list(fixed, "fixed"), _as_list(moving, "moving")
    images = fixed_list + moving_list
    slices = [im.ndim == 3 and im.shape[0] == 1 for im in images]
    if all(im.ndim == 2 or one for im, one in zip(images, slices, strict=True)) and any(slices):
        for argument, group in (("fixed", fixed_list), ("moving", moving_list)):
            for i, im in enumerate(group):
                if im.ndim == 3 and single_slice(im) is None:
                    where = f"`{argument}`" + (f"[{i}]" if len(group) > 1 else "")
                    normal = tuple(round(v, 3) for v in (row[2] for row in im.direction))
                    raise ValueError(
                        f"{where} is a one-slice volume whose slice is not in the x-y (axial) plane (its normal is "
                        f"{normal}); slices register as 2-D images in the x-y plane only: reslice it, or register "
                        f"it as a volume against a volume"
                    )
        fixed_list = [single_slice(im) or im for im in fixed_list]
        moving_list = [single_slice(im) or im for im in moving_list]
    _check_pairs(fixed_list, moving_list)
    return fixed_list, moving_list


def _as_list(images: Any, argument: str) -> list[Image]:
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    for item in items:
        if not isinstance(item, Image):
            raise TypeError(f"`{argument}` must be a lossfit.registration.Image (or a list); got {type(item).__name__}")
    if not items:
        raise ValueError(f"`{argument}` must not be empty")
    return items


def _check_pairs(fixed: list[Image], moving: list[Image]) -> None:
    if len(fixed) != len(moving):
        raise ValueError(f"`fixed` and `moving` must hold as many images; got {len(fixed)} and {len(moving)}")
    for argument, images in (("fixed", fixed), ("moving", moving)):
        for i, image in enumerate(images):
            where = f"`{argument}`" + (f"[{i}]" if len(images) > 1 else "")
            if image.ndim != fixed[0].ndim:
                raise ValueError(f"{where} is {image.ndim}-D but `fixed` is {fixed[0].ndim}-D: both must match")
            if image.shape != images[0].shape:
                raise ValueError(f"{where} has shape {tuple(image.shape)}; a batch needs the same shape throughout")
            data = image.data
            if not bool(torch.isfinite(data).all()):
                raise ValueError(f"{where} holds NaN or infinite voxels; replace them (or mask them) first")
            if float(data.max() - data.min()) == 0:
                raise ValueError(f"{where} is constant: there is no gradient to follow")
            if image.ndim == 3 and image.shape[0] == 1:
                raise ValueError(f"{where} is a single slice (shape {tuple(image.shape)}) but the other is a volume")
            if min(image.shape) < 4:
                raise ValueError(f"{where} has shape {tuple(image.shape)}; each axis needs at least 4 voxels")


def single_slice(image: Image) -> Image | None:
    """A one-slice volume whose slice lies in the x-y plane (a 2-D NIfTI file, say) as a 2-D image; else None."""
    if image.ndim != 3 or image.shape[0] != 1:
        return None
    direction = torch.tensor(image.direction, dtype=_FLOAT)
    if float(direction[:2, 2].abs().max()) > 1e-9 or float(direction[2, :2].abs().max()) > 1e-9:
        return None
    # the slice's position and header travel with it (written back by save_image)
    return Image(
        image.data[0],
        spacing=image.spacing[:2],
        origin=image.origin[:2],
        direction=direction[:2, :2],
        slice_z=image.origin[2],
        header=image.header,
    )


__all__ = ["Level", "Registration", "register"]
