"""``register(fixed, moving, transform="svf" | "field" | "bspline" | "deformable")``: a dense mapping.

How it works, step by step:

1. **The affine stage** (:func:`lossfit.registration.register` with ``affine``, unless ``initial`` gives the matrix):
   ``A``, fixed world -> moving world. ``"deformable"`` is the recommended recipe: an affine stage, then ``"svf"``.
2. **The pyramid in mm** (:mod:`lossfit.registration.pyramid`): levels coarse to fine, each on its own grid; the field
   of a level, in mm, starts the next (:func:`.fields.resample_field`).
3. **Each level** is solved with the problem's structure (:mod:`.greedy` for ``"svf"`` and ``"field"``: per-voxel
   Gauss-Newton steps for mean squares; :mod:`.bspline` for ``"bspline"``: L-BFGS on the control points through the
   engine's driver), each pair stopping on its own.
4. **The independent check** at the end, on the whole fixed grid at full resolution: the moving image resampled
   through the exported field (:func:`~lossfit.registration.resample` with ``displacement=``, not the solver's
   path), its metric against the affine stage's, the objective recomputed, the overlap, and the Jacobian
   determinant of the deformation (a fold is not a success).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from lossfit.engine.result import SolverInfo, Status, build_result
from lossfit.registration import checks as C
from lossfit.registration import pyramid as P
from lossfit.registration.deformable import bspline as B
from lossfit.registration.deformable import regularizers as R
from lossfit.registration.deformable.fields import (
    Grid,
    channels_last,
    exponential,
    invert,
    matvec,
    resample_field,
    sample_field,
)
from lossfit.registration.deformable.greedy import (
    GreedyOptions,
    GreedyOutcome,
    displacement_of,
    half_way,
    solve_level,
    squaring_grid,
)
from lossfit.registration.deformable.level import MARGIN, LevelPair, metric_value
from lossfit.registration.deformable.result import DeformableRegistration
from lossfit.registration.evaluate import jacobian_determinant
from lossfit.registration.image import Image
from lossfit.registration.resample import resample, world_to_normalized
from lossfit.registration.result import Level

DEFORMABLE = ("svf", "field", "bspline", "deformable")
METRICS = ("mse", "lncc", "mi", "ncc")
AFFINE_STAGES = ("affine", "rigid", "similarity", "translation", "none")
_FLOAT = torch.float64
_EDGE = 1e-3  # voxels: points this close to the moving grid's border may fall either side in float32
FLUID = 0.0  # default step smoothing, in voxels of each level (the width in mm follows the level's spacing)
DIFFUSION = 1.0  # default field smoothing, in voxels of each level
CONTROL_SPACING = 4  # default B-spline control spacing at the finest level, in voxels
BENDING = 0.01  # default bending-energy weight for "bspline"


def register_deformable(
    fixed: Any,
    moving: Any,
    transform: str,
    metric: str,
    *,
    pairs: tuple[list[Image], list[Image]],
    masks: tuple[torch.Tensor | None, torch.Tensor | None],
    levels: Any,
    affine: str,
    initial: Any,
    fixed_mask: Image | None,
    moving_mask: Image | None,
    fluid: float | None,
    diffusion: float | None,
    control_spacing: float | None,
    bending: float | None,
    symmetric: bool,
    regularizer: str | None,
    folding: float | None,
    max_steps: int,
    ftol: float,
    bins: int,
    window: int,
    seed: int,
    progress: Any,
) -> DeformableRegistration:
    """The deformable registration behind :func:`lossfit.registration.register` (which checks the images, the
    masks and the common options first, and documents the arguments)."""
    from lossfit.registration.register import register

    began = time.perf_counter()
    batch = isinstance(fixed, (list, tuple))
    fixed_list, moving_list = pairs
    d = fixed_list[0].ndim
    model = "svf" if transform == "deformable" else transform
    _check_options(affine, metric, fluid, diffusion, control_spacing, bending, max_steps, ftol)
    given = {"regularizer": regularizer, "folding": folding, "bending": bending, "control_spacing": control_spacing,
             "fluid": fluid, "diffusion": diffusion}  # fmt: skip
    _check_model_options(model, given)
    _check_spline_options(regularizer, folding)
    if not isinstance(symmetric, bool):
        raise TypeError(f"`symmetric` must be True or False; got {symmetric!r}")
    if symmetric and model != "svf":
        raise ValueError(
            f"`symmetric` needs a velocity field (transform 'svf' or 'deformable'); got transform {transform!r}"
        )
    factors = P.shrink_factors(fixed_list[0].shape, levels, coarsest=8)  # a field needs its coarse start
    if factors[-1] != 1:
        raise ValueError(
            f"`levels` must end at the full resolution (a shrink factor of 1) for {transform!r}; got {factors}"
        )

    stage = None
    if initial is not None:
        matrix = torch.as_tensor(initial, dtype=_FLOAT)
        matrix = matrix.expand(len(fixed_list), d + 1, d + 1) if matrix.dim() == 2 else matrix
        if matrix.shape != (len(fixed_list), d + 1, d + 1):
            raise ValueError(f"`initial` must be a {d + 1}x{d + 1} matrix (or one per pair); got {tuple(matrix.shape)}")
    elif affine == "none":
        matrix = torch.eye(d + 1, dtype=_FLOAT).expand(len(fixed_list), d + 1, d + 1)
    else:
        stage = register(
            fixed, moving, affine, "ncc" if metric == "lncc" else metric, levels=levels,
            fixed_mask=fixed_mask, moving_mask=moving_mask, bins=bins, seed=seed,
        )  # fmt: skip
        assert stage.matrix is not None
        matrix = stage.matrix if batch else stage.matrix.unsqueeze(0)
    matrix = matrix.to(_FLOAT).cpu().contiguous()

    field: torch.Tensor | None = None
    previous: Grid | None = None
    done: list[Level] = []
    level: LevelPair | None = None
    outcome_best = outcome_steps = outcome_converged = None
    history: list[torch.Tensor] = []
    outcome: B.SplineOutcome | GreedyOutcome
    for index, shrink in enumerate(factors):
        if progress is not None:
            progress(index, len(factors))
        level_began = time.perf_counter()
        sigma = shrink / 2 if shrink > 1 else 0.0
        level = LevelPair.build(
            fixed_list, moving_list, matrix, shrink, sigma, metric,
            fixed_mask=masks[0], moving_mask=masks[1], bins=bins, window=window,
            dtype=_FLOAT if model == "bspline" else None,  # L-BFGS needs a smooth objective: float32 is too coarse
        )  # fmt: skip
        voxel = math.prod(level.grid.spacing) ** (1 / d)
        if model == "bspline":
            spacing_mm = (control_spacing if control_spacing is not None else CONTROL_SPACING * voxel / shrink) * shrink
            penalty = B.Penalty(
                regularizer or "bending",
                BENDING if bending is None else float(bending),
                B.FOLD_WEIGHT if folding is None else float(folding),
            )
            outcome = B.solve_level(level, field, previous, spacing_mm, penalty, max_steps, ftol)
        else:
            start = _start_field(level, field, previous)
            options = GreedyOptions(
                model,
                (FLUID if fluid is None else fluid) * voxel,
                (DIFFUSION if diffusion is None else diffusion) * voxel,
                max_steps,
                ftol,
                symmetric=symmetric,
            )
            outcome = solve_level(level, start, options)
        field, previous = outcome.field, level.grid
        history.extend(outcome.history)
        outcome_best, outcome_steps, outcome_converged = outcome.best, outcome.steps, outcome.converged
        statuses = tuple(Status.CONVERGED_FTOL if c else Status.MAX_STEPS for c in outcome.converged.tolist())
        loss_rows = torch.stack(outcome.history)
        done.append(Level(shrink, sigma, level.fixed[0].numel(), int(outcome.steps.max()), statuses, loss_rows,
                          time.perf_counter() - level_began))  # fmt: skip
    assert level is not None and field is not None and outcome_best is not None
    assert outcome_steps is not None and outcome_converged is not None

    full = Grid.of_image(fixed_list[0], _FLOAT)
    if previous is not None and previous.shape != full.shape:
        field = resample_field(field.to(_FLOAT), previous, full)
    field = field.to(_FLOAT)
    coarse = squaring_grid(full, model)
    u = displacement_of(full, field, model, coarse)
    velocity = field if model == "svf" else None
    total = _through_affine(full, u, matrix)
    inverse = _inverse(full, field, u, model, matrix, moving_list[0], coarse)
    halves = None
    if symmetric:  # the solver compared the two images half-way: the check recomputes that objective
        forward, back = half_way(full, field, coarse)
        halves = (channels_last(back), channels_last(_through_affine(full, forward, matrix)))

    evaluation, pair_checks, warped = [], [], []
    for i in range(len(fixed_list)):
        det = jacobian_determinant(channels_last(u[i : i + 1])[0], fixed_list[i])
        folded = float((det <= 0).double().mean())
        evaluation.append({"jacobian_min": float(det.min()), "jacobian_max": float(det.max()),
                           "folded_fraction": folded})  # fmt: skip
        check, image = _check(
            fixed_list[i], moving_list[i], matrix[i], channels_last(total[i : i + 1])[0], metric, masks,
            float(outcome_best[i]), level.ranges and tuple(r[i : i + 1] for r in level.ranges), bins, window, folded,
            None if halves is None else (halves[0][i], halves[1][i]),
        )  # fmt: skip
        pair_checks.append(check)
        warped.append(image)
    finest = done[-1].status
    statuses = tuple(
        _pair_status(s, c, None if stage is None else stage.statuses[i])
        for i, (s, c) in enumerate(zip(finest, pair_checks, strict=True))
    )

    def pick(values: Any) -> Any:
        return values if batch else values[0]

    total_last = channels_last(total)
    return build_result(
        result_type=DeformableRegistration,
        params=pick(list(total_last)),
        loss=outcome_best.to(_FLOAT),
        statuses=statuses,
        steps=outcome_steps,
        batch=batch,
        num_steps=sum(lv.steps for lv in done),
        num_evals=sum(lv.steps + 1 for lv in done),
        history=None,
        solver=SolverInfo(
            "demons" if model != "bspline" and metric == "mse" else ("lbfgs" if model == "bspline" else "gradient"),
            {"model": model, "levels": factors},
            f"deformable ({model}, {metric})",
        ),
        time=time.perf_counter() - began,
        matrix=pick(matrix),
        transform=transform,
        metric=metric,
        levels=tuple(done),
        fixed=pick(fixed_list),
        moving=pick(moving_list),
        warped=pick(warped),
        checks=pick(pair_checks),
        world=pick([{} for _ in fixed_list] if stage is None else _stage_world(stage, batch)),
        displacement=pick(total_last),
        inverse_displacement=None if inverse is None else pick(channels_last(inverse)),
        affine_stage=stage,
        velocity=None if velocity is None else pick(channels_last(velocity)),
        evaluation=pick(evaluation),
        extras={"level_times_s": [lv.time for lv in done], "converged": outcome_converged.tolist()},
    )


def _stage_world(stage: Any, batch: bool) -> list[dict[str, Any]]:
    return list(stage.world) if batch else [stage.world]


def _start_field(level: LevelPair, field: torch.Tensor | None, previous: Grid | None) -> torch.Tensor:
    d = level.grid.ndim
    if field is None or previous is None:
        return torch.zeros(level.batch, d, *level.grid.shape, dtype=level.fixed.dtype, device=level.fixed.device)
    return resample_field(field, previous, level.grid).to(level.fixed.dtype)


def _through_affine(grid: Grid, u: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """The displacement of ``x -> A (x + u(x)) (B, d, *shape)`` on ``grid``."""
    d = grid.ndim
    m = matrix.to(u.device, u.dtype)
    points = grid.world.to(u.dtype) + u
    mapped = matvec(m[:, :d, :d], points, m[:, :d, d])
    return mapped - grid.world.to(u.dtype)


def _inverse(
    grid: Grid,
    field: torch.Tensor,
    u: torch.Tensor,
    model: str,
    matrix: torch.Tensor,
    moving: Image,
    coarse: Grid | None,
) -> torch.Tensor | None:
    """The inverse mapping on the moving grid: ``y -> z + w(z)`` with ``z = A^-1 y`` and ``w`` the inverse of the
    deformation (``exp(-v)`` for a velocity, a fixed point otherwise)."""
    d = grid.ndim
    w = exponential(grid, -field, coarse=coarse) if model == "svf" else invert(grid, u)
    target = Grid.of_image(moving, _FLOAT)
    inv = torch.linalg.inv(matrix).to(w.dtype)
    y = target.world.to(w.dtype)
    z = matvec(inv[:, :d, :d], y.expand(len(inv), *y.shape[1:]), inv[:, :d, d])
    to_fixed = world_to_normalized(Image.from_affine(torch.zeros(grid.shape), grid.affine)).to(w.dtype)
    normalized = matvec(to_fixed[:d, :d], z, to_fixed[:d, d], last=True)
    back = z + sample_field(w, normalized)
    return back - y


def _check(
    fixed: Image,
    moving: Image,
    matrix: torch.Tensor,
    total: torch.Tensor,
    metric: str,
    masks: tuple[torch.Tensor | None, torch.Tensor | None],
    objective: float,
    ranges: Any,
    bins: int,
    window: int,
    folded: float,
    halves: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[dict[str, Any], Image]:
    """One pair's independent check on the whole fixed grid (see the module docstring). ``halves``: for the
    symmetric model, the displacements that pull the fixed and the moving image half-way, whose metric the solver
    minimised (it is recomputed from them; the metric at the answer stays fixed against warped moving)."""
    data = fixed.data.to(_FLOAT)
    moving64 = moving.to(_FLOAT)

    def counted(valid: torch.Tensor) -> torch.Tensor:
        weight = valid & masks[0] if masks[0] is not None else valid
        if masks[1] is not None:
            mask_image = moving.with_data(masks[1].to(moving.dtype))
            on = resample(mask_image, fixed, matrix, interpolation="nearest")
            assert isinstance(on, Image)
            weight = weight & (on.data > 0.5)
        return weight

    def measure(warped: Image, weight: torch.Tensor) -> float:
        w = weight.to(_FLOAT).unsqueeze(0)
        value = metric_value(metric, data.unsqueeze(0), warped.data.unsqueeze(0), w, bins, window, ranges)
        return float(value[0])

    # The voxels that count: those the affine stage maps inside the moving image (and the masks), as the solver's.
    start_image, _ = resample(moving64, fixed, matrix, mask=True)  # type: ignore[misc]
    affine_only = _through_affine(Grid.of_image(fixed, _FLOAT), torch.zeros(1, fixed.ndim, *fixed.shape,
                                  dtype=_FLOAT), matrix.unsqueeze(0))  # fmt: skip
    start_valid = _inside_margin(fixed, moving, channels_last(affine_only)[0])
    weight = counted(start_valid)
    metric_start = measure(start_image, weight)
    answer_image, answer_valid = resample(moving64, fixed, displacement=total, mask=True)  # type: ignore[misc]
    metric_answer = measure(answer_image, weight)
    overlap_start, overlap = float(weight.double().mean()), float((weight & answer_valid).double().mean())
    # Points that the affine stage puts on the moving image's border within rounding may count in one path and not
    # in the other: the solver's objective must lie between the metric without them and with them.
    edge = _on_border(fixed, moving, channels_last(affine_only)[0])
    objective_image, objective_fixed = answer_image, data
    if halves is not None:
        back = resample(fixed.to(_FLOAT), fixed, displacement=halves[0], padding="border")
        half, _ = resample(moving64, fixed, displacement=halves[1], mask=True)  # type: ignore[misc]
        assert isinstance(back, Image)
        objective_image, objective_fixed = half, back.data

    def objective_of(w: torch.Tensor) -> float:
        value = metric_value(metric, objective_fixed.unsqueeze(0), objective_image.data.unsqueeze(0),
                             w.to(_FLOAT).unsqueeze(0), bins, window, ranges)  # fmt: skip
        return float(value[0])

    again = objective_of(weight)
    bounds = [again]
    if bool(edge.any()):
        bounds += [objective_of(weight & ~edge), objective_of(weight | counted(edge))]
    slack = C.metric_slack(metric, data)
    check: dict[str, Any] = {
        "metric": metric,
        "metric_start": metric_start,
        "metric_answer": metric_answer,
        "metric_slack": slack,
        "objective": objective,
        "objective_independent": again,
        "objective_independent_range": [min(bounds), max(bounds)],
        "overlap_start": overlap_start,
        "overlap": overlap,
        "folded_fraction": folded,
    }
    failed = _verdict(check)
    check["passed"] = failed is None
    check["failed"] = None if failed is None else failed.name.lower()
    return check, answer_image.to(fixed.dtype)


def _inside_margin(fixed: Image, moving: Image, total: torch.Tensor, slack: float = 0.0) -> torch.Tensor:
    """The fixed voxels mapped at least ``MARGIN - slack`` voxels inside the moving grid (the solver's rule)."""
    index = moving.world_to_index(fixed.world_grid(_FLOAT) + total.to(_FLOAT))
    size = torch.tensor(moving.size, dtype=_FLOAT)
    low = MARGIN - slack
    return ((index >= low) & (index <= size - 1 - low)).all(-1)


def _on_border(fixed: Image, moving: Image, total: torch.Tensor) -> torch.Tensor:
    """The fixed voxels mapped within ``_EDGE`` voxels of the border of the counted region (either side)."""
    return _inside_margin(fixed, moving, total, _EDGE) & ~_inside_margin(fixed, moving, total, -_EDGE)


def _verdict(check: dict[str, Any]) -> Status | None:
    own, again = check["objective"], check["objective_independent"]
    low, high = check.get("objective_independent_range", (again, again))
    tolerance = 1e-3 * max(abs(own), abs(again)) + check["metric_slack"] + 1e-12
    if not (math.isfinite(own) and math.isfinite(again)) or not low - tolerance <= own <= high + tolerance:
        return Status.CHECK_MISMATCH
    if check["overlap"] < C.OVERLAP_FLOOR * check["overlap_start"]:
        return Status.NO_OVERLAP
    if check["folded_fraction"] > 0:
        return Status.FOLDED
    start, answer = check["metric_start"], check["metric_answer"]
    if not math.isfinite(answer) or answer > start + 0.01 * abs(start) + check["metric_slack"]:
        return Status.WORSE_THAN_START
    return None


def _pair_status(level: Status, check: dict[str, Any], stage: Status | None) -> Status:
    if stage is not None and not stage.success:
        return stage
    if check["failed"]:
        return Status[check["failed"].upper()]
    return level


def _check_model_options(model: str, given: dict[str, Any]) -> None:
    """Options of one model given to another are refused (rather than ignored)."""
    for name, value in given.items():
        if value is None:
            continue
        if model != "bspline" and name in ("regularizer", "folding", "bending", "control_spacing"):
            raise ValueError(
                f"`{name}` applies to transform 'bspline' (the dense models are regularised by their Gaussians, "
                f"`fluid` and `diffusion`); got transform {model!r}"
            )
        if model == "bspline" and name in ("fluid", "diffusion"):
            raise ValueError(
                f"`{name}` applies to the dense models ('svf', 'field', 'deformable'); the B-spline model is "
                f"regularised by `bending` (the weight) and `regularizer`; got transform 'bspline'"
            )


def _check_spline_options(regularizer: str | None, folding: float | None) -> None:
    if regularizer is not None and regularizer not in R.REGULARIZERS:
        raise ValueError(f"`regularizer` must be one of {', '.join(map(repr, R.REGULARIZERS))}; got {regularizer!r}")
    if folding is not None and (
        isinstance(folding, bool) or not isinstance(folding, (int, float)) or not math.isfinite(folding) or folding < 0
    ):
        raise ValueError(f"`folding` must be a finite number >= 0 (the fold barrier's weight; 0: off); got {folding!r}")


def _check_options(
    affine: str,
    metric: str,
    fluid: float | None,
    diffusion: float | None,
    control_spacing: float | None,
    bending: float | None,
    max_steps: int,
    ftol: float,
) -> None:
    if affine not in AFFINE_STAGES:
        raise ValueError(f"`affine` must be one of {', '.join(map(repr, AFFINE_STAGES))}; got {affine!r}")
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {', '.join(map(repr, METRICS))}; got {metric!r}")
    for name, value in (("fluid", fluid), ("diffusion", diffusion), ("bending", bending)):
        if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0):
            raise ValueError(f"`{name}` must be a finite number >= 0 (a regulariser weight); got {value!r}")
    if control_spacing is not None and (not isinstance(control_spacing, (int, float)) or not control_spacing > 0):
        raise ValueError(f"`control_spacing` must be a positive length in mm; got {control_spacing!r}")
    if not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"`max_steps` must be a positive integer; got {max_steps!r}")
    if not ftol > 0:
        raise ValueError(f"`ftol` must be positive; got {ftol!r}")


__all__ = ["DEFORMABLE", "register_deformable"]
