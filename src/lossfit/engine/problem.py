"""A user's problem seen by the solvers: flat, batched parameter vectors and the evaluations they need.

Users write ``fn(params, *args)`` for one problem, with ``params`` a tensor or a dict of tensors. Solvers see a
``(B, n)`` matrix ``x`` of unconstrained values, one row per problem (``B = 1`` without ``batch=True``), and ask
for losses, gradients, residuals, Jacobians and Jacobian-vector products over the rows still running (``rows``).
Independent problems make ``sum(losses)`` a valid way to get every row's gradient in one backward pass.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch.func import jacfwd, jacrev, vmap

from lossfit.engine.constraints import Constraint, as_constraint
from lossfit.errors import NonFiniteError
from lossfit.losses import Rho, robust_derivatives, robust_value


@functools.cache
def load_forward_ad() -> None:
    """Import torch's forward-mode decompositions once, silencing the deprecation warning their import raises."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import torch._decomp.decompositions_for_jvp  # noqa: F401


@dataclass
class _Leaf:
    name: str | None
    shape: torch.Size  # of the unconstrained values
    numel: int
    constraint: Constraint | None
    aux_shape: torch.Size


class ParamSpec:
    """The structure of the parameters: names, shapes, constraints; flattening and its inverse.

    Args:
        params: a tensor or a dict of tensors (with a leading batch dimension when ``batch``).
        constraints: one constraint for a tensor, or a dict naming constraints per entry.
        batch: whether ``params`` carries a leading batch dimension.
        dtype: the dtype to compute in; integer input is converted to it.
    """

    def __init__(self, params: Any, constraints: Any, batch: bool, dtype: torch.dtype | None) -> None:
        if isinstance(params, Mapping):
            if not params:
                raise ValueError("`params` must not be an empty dict")
            items = list(params.items())
            self.is_dict = True
            if constraints is not None and not isinstance(constraints, Mapping):
                raise TypeError("`constraints` must be a dict keyed like `params` when `params` is a dict")
            cons = dict(constraints or {})
            unknown = set(cons) - set(params)
            if unknown:
                raise ValueError(f"`constraints` names {sorted(unknown)}, which `params` lacks")
        else:
            items = [(None, params)]
            self.is_dict = False
            cons = {None: constraints}
        tensors = [_as_param(v, "params" if k is None else f"params[{k!r}]", dtype) for k, v in items]
        self.dtype = dtype or _common_dtype(tensors)
        self.device = tensors[0].device
        tensors = [t.to(dtype=self.dtype, device=self.device) for t in tensors]
        if batch:
            sizes = {t.shape[0] if t.ndim else None for t in tensors}
            if None in sizes or len(sizes) != 1:
                raise ValueError(
                    "with `batch=True` every parameter needs the same leading batch dimension; got shapes "
                    + ", ".join(str(tuple(t.shape)) for t in tensors)
                )
            self.batch_size = int(tensors[0].shape[0])
            if self.batch_size == 0:
                raise ValueError("with `batch=True` the batch must hold at least one problem; got 0")
        else:
            self.batch_size = 1
            tensors = [t.unsqueeze(0) for t in tensors]
        self.batch = batch
        self.leaves: list[_Leaf] = []
        flats, auxes = [], []
        for (name, _), t in zip(items, tensors, strict=False):
            argument = "params" if name is None else f"params[{name!r}]"
            constraint = as_constraint(cons.get(name), f"constraints for {argument}")
            if constraint is None:
                u, aux = t, t.new_zeros(t.shape[0], 0)
            else:
                constraint.check(t, argument)
                u, aux = vmap(constraint.inverse)(t)
            self.leaves.append(_Leaf(name, u.shape[1:], int(math.prod(u.shape[1:])), constraint, aux.shape[1:]))
            flats.append(u.reshape(self.batch_size, -1))
            auxes.append(aux.reshape(self.batch_size, -1))
        self.numel = sum(leaf.numel for leaf in self.leaves)
        if self.numel == 0:
            raise ValueError("`params` must hold at least one value; got an empty tensor")
        self._x0 = torch.cat(flats, dim=1)
        self._aux = torch.cat(auxes, dim=1)

    def initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The start as a ``(B, n)`` unconstrained matrix, and the ``(B, k)`` fixed data of the constraints."""
        if not bool(torch.isfinite(self._x0).all()):
            raise ValueError("`params` must be finite; the start holds NaN or infinity")
        return self._x0.clone(), self._aux

    def unflatten(self, x: torch.Tensor, aux: torch.Tensor) -> Any:
        """One problem's ``(n,)`` vector (and its constraint data) back to the user's structure, constraints applied."""
        out: dict[Any, torch.Tensor] = {}
        offset = aux_offset = 0
        for leaf in self.leaves:
            value = x[offset : offset + leaf.numel].reshape(leaf.shape)
            offset += leaf.numel
            if leaf.constraint is not None:
                aux_size = int(math.prod(leaf.aux_shape))
                leaf_aux = aux[aux_offset : aux_offset + aux_size].reshape(leaf.aux_shape)
                aux_offset += aux_size
                value = leaf.constraint.forward(value, leaf_aux)
            out[leaf.name] = value
        return out if self.is_dict else out[None]

    def unflatten_batch(self, x: torch.Tensor, aux: torch.Tensor) -> Any:
        """All rows back to the user's structure: with a leading batch dimension if ``batch``, else without."""
        with torch.no_grad():
            structured = vmap(self.unflatten)(x, aux)
        if self.batch:
            return structured
        if self.is_dict:
            return {k: v[0] for k, v in structured.items()}
        return structured[0]


def _as_param(value: Any, argument: str, dtype: torch.dtype | None) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, (int, float, list, tuple)):
        t = torch.as_tensor(value)
    else:
        try:
            import numpy as np

            if isinstance(value, np.ndarray):
                t = torch.from_numpy(value)
            else:
                raise TypeError
        except TypeError:
            raise TypeError(
                f"`{argument}` must be a tensor, an array or a number; got {type(value).__name__}"
            ) from None
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"`{argument}` must be real; got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.to(dtype or torch.float64)
    return t


def _common_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def batch_args(args: tuple, batch_size: int, batch: bool) -> tuple:
    """Check the extra arguments: with ``batch`` each tensor must lead with the batch dimension."""
    out = []
    for i, a in enumerate(args):
        if batch and isinstance(a, torch.Tensor) and (a.ndim == 0 or a.shape[0] != batch_size):
            raise ValueError(
                f"with `batch=True` each tensor in `args` must lead with the batch dimension {batch_size}; "
                f"args[{i}] has shape {tuple(a.shape)}"
            )
        out.append(a)
    return tuple(out)


class Problem(Protocol):
    """What the driver and the solvers ask of a problem: the protocol :class:`Objective` (a user's function) and
    every family's own objective (registration's levels, say) implement.

    ``x`` is ``(B, n)``, one row per running problem, and ``rows`` their indices among all the problems. ``kind``
    is ``"scalar"`` (``value``, ``value_and_grad``) or ``"residual"`` (also ``residual``, ``residual_and_jacobian``
    and the robust terms, with the loss ``cost(r)``). ``parts`` splits a batch for dense solvers; ``keep_final``
    asks the driver to keep the residuals and Jacobians evaluated where problems stop, for the final check;
    ``evals`` counts evaluations; ``counts`` are the residuals each problem counts ``(B,)`` where a mask leaves
    some out (None: all ``num_residuals``).
    """

    kind: str
    evals: int
    num_residuals: int | None
    counts: torch.Tensor | None
    keep_final: bool

    def value(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor: ...

    def value_and_grad(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def residual(self, x: torch.Tensor, rows: torch.Tensor, part: slice | None = None) -> torch.Tensor: ...

    def residual_and_jacobian(
        self, x: torch.Tensor, rows: torch.Tensor, part: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def cost(self, r: torch.Tensor) -> torch.Tensor: ...

    def weights(self, r: torch.Tensor) -> torch.Tensor | None: ...

    def robust_terms(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None: ...

    def parts(self, b: int, per_row: int) -> list[slice]: ...


class WithoutResiduals:
    """The least-squares half of :class:`Problem`, refused: a base for problems that have no residual function (the
    minibatch mode's whole-data loss, a family's own iteration). ``what`` names the problem in the errors."""

    what = "this problem"
    num_residuals: int | None = None
    counts: torch.Tensor | None = None
    keep_final = False

    def residual(self, x: torch.Tensor, rows: torch.Tensor, part: slice | None = None) -> torch.Tensor:
        raise TypeError(f"{self.what} has no residuals")

    def residual_and_jacobian(
        self, x: torch.Tensor, rows: torch.Tensor, part: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError(f"{self.what} has no residuals")

    def cost(self, r: torch.Tensor) -> torch.Tensor:
        raise TypeError(f"{self.what} has no residuals")

    def weights(self, r: torch.Tensor) -> torch.Tensor | None:
        return None

    def robust_terms(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        return None

    def parts(self, b: int, per_row: int) -> list[slice]:
        return [slice(0, b)]


class Objective:
    """Evaluations of a scalar loss or of residuals over the rows of a ``(B, n)`` matrix.

    ``kind`` is ``"scalar"`` (``fn`` returns a loss) or ``"residual"`` (``fn`` returns residuals, and the loss is
    ``0.5 * sum(f_scale**2 * rho((r / f_scale)**2))``). Every method takes ``rows``, the indices of the problems
    still running, to pick their extra arguments. ``evals`` counts calls of the user's function.
    """

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        spec: ParamSpec,
        args: tuple,
        aux: torch.Tensor,
        *,
        kind: str,
        rho: Rho | None = None,
        f_scale: float = 1.0,
    ) -> None:
        self.fn, self.spec, self.kind = fn, spec, kind
        self.args = batch_args(args, spec.batch_size, spec.batch)
        self.aux = aux
        self.rho, self.f_scale = rho, f_scale
        self.group = 1
        self.evals = 0
        self.num_residuals: int | None = None
        # Residuals each problem counts ``(B,)`` where a mask leaves some out (None: all of them).
        self.counts: torch.Tensor | None = None
        self._cache: tuple[torch.Tensor, torch.Tensor, tuple] | None = None
        self.jac: Any = None
        self._jac_rows: tuple[torch.Tensor, torch.Tensor] | None = None
        # The driver keeps what a dense solver evaluated where problems stop, for the final check (not needed for
        # a constant Jacobian, which is at hand anyway).
        self.keep_final = True

    # -- the user's function on one flat row ---------------------------------------------------------------
    def _one(self, x: torch.Tensor, aux: torch.Tensor, *args: Any) -> torch.Tensor:
        out = self.fn(self.spec.unflatten(x, aux), *args)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the {self.kind} function must return a tensor; got {type(out).__name__}")
        if self.kind == "scalar":
            if out.numel() != 1:
                raise ValueError(f"the loss function must return a scalar; got shape {tuple(out.shape)}")
            return out.reshape(())
        return out.reshape(-1)

    def _rows_args(self, rows: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The constraint data and extra arguments of ``rows`` (cached: the driver reuses one ``rows`` per phase)."""
        if not self.spec.batch:
            return self.aux, self.args
        if self._cache is not None and self._cache[0] is rows:
            return self._cache[1], self._cache[2]
        if rows.numel() == self.spec.batch_size and bool((rows == torch.arange(rows.numel())).all()):
            picked = (self.aux, self.args)
        else:
            picked = (self.aux[rows], tuple(a[rows] if isinstance(a, torch.Tensor) else a for a in self.args))
        self._cache = (rows, picked[0], picked[1])
        return picked

    def parts(self, b: int, per_row: int) -> list[slice]:
        """Slices of ``b`` rows holding a bounded amount of numbers each (``per_row`` numbers per row).

        Dense solvers work through a large batch part by part: with the caller's Jacobian, parts of about ``2**19``
        numbers keep each part's temporaries in cache and in memory the allocator reuses (whole-batch temporaries
        of tens of megabytes are fresh pages on every operation, several times slower on a CPU); autodiff has a
        large fixed cost per call, so its parts are 4 times larger (``2**21``: 10,000 ragged curve fits padded to
        200 points took 1.56 s in parts of that size against 2.1 s in one part of ``2**23`` and 1.9 s at ``2**19``;
        100,000 fits of 20 points the same either way).
        """
        budget = 2**19 if self.jac is not None else 2**21
        size = max(1, budget // max(per_row, 1)) if self.spec.batch else b
        return [slice(lo, min(lo + size, b)) for lo in range(0, b, size)] or [slice(0, b)]

    def _map(self, function: Callable[..., Any], x: torch.Tensor, rows: torch.Tensor, part: slice | None = None) -> Any:
        """Apply ``function(x_row, aux_row, *args_row)`` to every row (of ``rows[part]``: ``x`` holds only those)."""
        aux, args = self._rows_args(rows)
        if part is not None and self.spec.batch:
            aux, args = aux[part], tuple(a[part] if isinstance(a, torch.Tensor) else a for a in args)
        if self.spec.batch:
            dims = (0, 0, *tuple(0 if isinstance(a, torch.Tensor) else None for a in args))
            return vmap(function, in_dims=dims)(x, aux, *args)
        result = function(x[0], aux[0], *args)
        return tuple(r.unsqueeze(0) for r in result) if isinstance(result, tuple) else result.unsqueeze(0)

    # -- evaluations ------------------------------------------------------------------------------------------
    def value(self, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The loss of each row, shape ``(B,)``."""
        if self.kind == "scalar":
            self.evals += 1
            return self._map(self._one, x, rows)
        return self.cost(self.residual(x, rows))

    def value_and_grad(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss ``(B,)`` and its gradient ``(B, n)`` for each row."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            f = self.value(xg, rows)
            (g,) = torch.autograd.grad(f.sum(), xg)
        return f.detach(), g

    def residual(self, x: torch.Tensor, rows: torch.Tensor, part: slice | None = None) -> torch.Tensor:
        """The residuals of each row, shape ``(B, m)`` (of ``rows[part]`` where a part is given)."""
        self.evals += part is None or not part.start
        r = self._map(self._one, x, rows, part)
        self.num_residuals = int(r.shape[1])
        return r

    def _lengths(self, r: torch.Tensor) -> torch.Tensor:
        """The residuals the robust loss sees: each entry, or each group's Euclidean length."""
        if self.group == 1:
            return r
        parts = r.reshape(r.shape[0], -1, self.group)
        if self.group > 4:
            return parts.norm(dim=-1)
        total = parts[..., 0] * parts[..., 0]
        for i in range(1, self.group):
            total = total + parts[..., i] * parts[..., i]
        return total.sqrt()

    def cost(self, r: torch.Tensor) -> torch.Tensor:
        """The loss of residuals ``(B, m)``: half the sum of (robust) squares."""
        if self.rho is None:
            return 0.5 * (r * r).sum(dim=1)
        return 0.5 * robust_value(self.rho, self._lengths(r), self.f_scale).sum(dim=1)

    def weights(self, r: torch.Tensor) -> torch.Tensor | None:
        """``rho'`` at each residual (None for plain least squares): the re-weighting of a robust step."""
        if self.rho is None:
            return None
        weight = robust_derivatives(self.rho, self._lengths(r), self.f_scale)[0]
        return weight if self.group == 1 else weight.repeat_interleave(self.group, dim=1)

    def robust_terms(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """The robust cost's Hessian in the residuals (None for plain least squares), for Newton-like steps.

        Per group of residuals ``r_i`` (one residual, or one point's coordinates) the Hessian of
        ``0.5 f^2 rho(|r_i|^2 / f^2)`` is ``rho' I + c u u^T`` with ``u = r_i / |r_i|`` and ``c = 2 rho'' z``; ``c``
        is clamped so that ``rho' + c >= 0`` (redescending losses such as Cauchy's have negative curvature far out;
        scipy's ``least_squares`` clamps the same way). Returns ``rho'`` and ``c`` per group ``(B, m / group)``, and
        ``u`` per residual ``(B, m)`` (0 for a group of zeros).
        """
        if self.rho is None:
            return None
        lengths = self._lengths(r)
        d1, d2, z = robust_derivatives(self.rho, lengths, self.f_scale)
        c = torch.maximum(2 * d2 * z, -d1)
        if self.group == 1:
            return d1, c, torch.sign(r)
        safe = torch.where(lengths > 0, lengths, torch.ones_like(lengths))
        return d1, c, r / safe.repeat_interleave(self.group, dim=1)

    def set_jacobian(self, jac: Any) -> None:
        """Use the caller's Jacobian instead of autodiff: a function ``jac(params, *args) -> (m, n)`` of one
        problem, or a constant ``(m, n)`` tensor (``(B, m, n)`` for a batch) for residuals linear in the parameters.

        Only for one tensor of parameters without constraints (so the Jacobian is the one the solver needs).
        """
        if jac is None:
            self.jac = None
            return
        if not (callable(jac) or isinstance(jac, torch.Tensor)):
            raise TypeError(f"`jac` must be a function, a tensor or None; got {type(jac).__name__}")
        if self.spec.is_dict or self.spec.leaves[0].constraint is not None:
            raise ValueError("`jac` needs `params` as one tensor without constraints or bounds")
        if isinstance(jac, torch.Tensor):
            n, b = self.spec.numel, self.spec.batch_size
            expected = (b, -1, n) if self.spec.batch else (-1, n)
            if jac.ndim != len(expected) or jac.shape[-1] != n or (self.spec.batch and jac.shape[0] != b):
                shape = "(B, m, n)" if self.spec.batch else "(m, n)"
                raise ValueError(f"`jac` as a tensor must have shape {shape} with n = {n}; got {tuple(jac.shape)}")
            jac = jac.detach().to(dtype=self.spec.dtype, device=self.spec.device)
            jac = jac if self.spec.batch else jac.unsqueeze(0)
            self.keep_final = False
        self.jac = jac

    def _jac_one(self, x: torch.Tensor, aux: torch.Tensor, *args: Any) -> torch.Tensor:
        out = self.jac(self.spec.unflatten(x, aux), *args)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"`jac` must return a tensor; got {type(out).__name__}")
        if out.ndim != 2 or out.shape[1] != x.shape[0]:
            raise ValueError(f"`jac` must return the (m, n) Jacobian with n = {x.shape[0]}; got {tuple(out.shape)}")
        return out

    def given_jacobian(self, x: torch.Tensor, rows: torch.Tensor, m: int, part: slice | None = None) -> torch.Tensor:
        """The caller's Jacobian of ``rows`` (``rows[part]``) at ``x``, checked to be ``(B, m, n)``."""
        if callable(self.jac):
            jac = self._map(self._jac_one, x, rows, part)
        else:
            if self._jac_rows is not None and self._jac_rows[0] is rows:
                jac = self._jac_rows[1]
            else:
                whole = rows.numel() == self.jac.shape[0] and bool((rows == torch.arange(rows.numel())).all())
                jac = self.jac if whole or not self.spec.batch else self.jac[rows]
                self._jac_rows = (rows, jac)
            jac = jac if part is None or not self.spec.batch else jac[part]
        if jac.shape[1] != m:
            raise ValueError(f"`jac` must have one row per residual, {m}; got {jac.shape[1]}")
        return jac.to(x.dtype)

    def residual_and_jacobian(
        self, x: torch.Tensor, rows: torch.Tensor, part: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Residuals ``(B, m)`` and the Jacobian ``(B, m, n)`` of each row (of ``rows[part]``), in one pass.

        The caller's Jacobian where one was given (:meth:`set_jacobian`); otherwise forward mode when there are no
        more parameters than residuals, reverse mode otherwise.
        """
        if self.jac is not None:
            r = self.residual(x, rows, part)
            return r, self.given_jacobian(x, rows, r.shape[1], part)
        self.evals += part is None or not part.start

        def both(x1: torch.Tensor, aux: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
            r = self._one(x1, aux, *args)
            return r, r

        transform = self._jacobian_mode(x.shape[1])
        if transform is jacfwd:
            load_forward_ad()

        def one(x1: torch.Tensor, aux: torch.Tensor, *args: Any) -> tuple[torch.Tensor, torch.Tensor]:
            jac, r = transform(lambda v: both(v, aux, *args), has_aux=True)(x1)
            return r, jac

        r, jac = self._map(one, x, rows, part)
        self.num_residuals = int(r.shape[1])
        return r, jac

    def _jacobian_mode(self, n: int) -> Callable[..., Any]:
        """Forward mode for a batch with no more parameters than residuals, reverse mode otherwise.

        One problem with few residuals goes by reverse mode too: without a batch to spread it over, forward mode's
        fixed cost per operation dominates (torch 2.13 gives every input that carries no tangent a zero tangent whose
        shape is worked out in Python: about 0.3-0.5 ms for each product with a constant on a 2-core CPU, against
        0.6 ms for the whole reverse-mode Jacobian of a 40-point curve). Reverse mode's cost grows with the square of
        the number of residuals (it pulls back one basis vector per residual), hence the bound.
        """
        m = self.num_residuals
        if m is None:
            return jacfwd
        if not self.spec.batch and m <= 256:
            return jacrev
        return jacfwd if n <= m else jacrev

    def linearize(self, x: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, Callable, Callable]:
        """Residuals ``(B, m)`` with functions ``v -> J v`` and ``w -> J^T w`` at ``x`` (matrix-free).

        ``J^T w`` is one backward pass over the recorded graph; ``J v`` is the backward pass of the linear map
        ``u -> J^T u`` (the double-backward trick), so neither re-runs the user's function.
        """
        self.evals += 1
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            r = self._map(self._one, xg, rows)
            if not r.requires_grad:
                zeros_r, zeros_x = torch.zeros_like(r), torch.zeros_like(x)
                return r.detach(), lambda v: zeros_r, lambda w: zeros_x
            u = torch.zeros_like(r, requires_grad=True)
            (gu,) = torch.autograd.grad(r, xg, u, create_graph=True)

        def forward(v: torch.Tensor) -> torch.Tensor:
            if not gu.requires_grad:
                return torch.zeros_like(r)
            return torch.autograd.grad(gu, u, v, retain_graph=True)[0]

        def backward(w: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(r, xg, w, retain_graph=True)[0]

        return r.detach(), forward, backward


def check_finite_start(values: torch.Tensor, what: str) -> None:
    """Refuse a start where the loss or residuals are not finite."""
    if not bool(torch.isfinite(values).all()):
        raise NonFiniteError(f"{what} are not finite at the starting point")
