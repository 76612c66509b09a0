"""Formula models such as ``"a*exp(-b*x)+c"``, parsed by a whitelist into torch operations (never ``eval``).

Allowed: numbers, names (variables and parameters), ``+ - * / **``, unary minus, parentheses, and the functions in
:data:`FUNCTIONS`. Anything else (attributes, subscripts, other calls, keywords, comparisons) is refused with a
``ValueError`` that says what and where.
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lossfit.models.statistics import Regression

FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.exp,
    "log": torch.log,
    "log10": torch.log10,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
    "sin": torch.sin,
    "cos": torch.cos,
    "tan": torch.tan,
    "arctan": torch.atan,
    "atan": torch.atan,
    "tanh": torch.tanh,
    "sinh": torch.sinh,
    "cosh": torch.cosh,
    "sigmoid": torch.sigmoid,
    "erf": torch.erf,
}
CONSTANTS = {"pi": torch.pi, "e": torch.e}
_BINARY = {ast.Add: torch.add, ast.Sub: torch.sub, ast.Mult: torch.mul, ast.Div: torch.div, ast.Pow: torch.pow}


@dataclass(frozen=True)
class Formula:
    """A parsed formula. ``names`` are the free names (variables and parameters), in order of appearance."""

    text: str
    tree: ast.Expression
    names: tuple[str, ...]

    def __call__(self, values: Mapping[str, torch.Tensor | float]) -> torch.Tensor:
        """Evaluate with a value (tensor or number) for every name."""
        missing = [n for n in self.names if n not in values]
        if missing:
            raise ValueError(f"formula {self.text!r} needs values for {', '.join(missing)}")
        result = _evaluate(self.tree.body, values)
        return result if isinstance(result, torch.Tensor) else torch.as_tensor(result)


def parse(text: str) -> Formula:
    """Parse and check a formula; raises ``ValueError`` for a syntax error or anything outside the whitelist."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the formula must be a non-empty string")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"formula {text!r} is not valid: {exc.msg} at column {exc.offset}") from None
    names: list[str] = []
    for node in ast.walk(tree):
        _check(node, text, names)
    # Names in the order they appear in the text (ast.walk goes breadth first).
    positions = {n.id: (n.col_offset) for n in reversed(list(ast.walk(tree))) if isinstance(n, ast.Name)}
    ordered = sorted(dict.fromkeys(names), key=lambda name: positions[name])
    return Formula(text, tree, tuple(ordered))


def _check(node: ast.AST, text: str, names: list[str]) -> None:
    where = f" at column {getattr(node, 'col_offset', 0) + 1}"
    if isinstance(node, (ast.Expression, ast.Load, ast.operator, ast.unaryop)):
        if isinstance(node, ast.operator) and type(node) not in _BINARY:
            raise ValueError(f"formula {text!r}: the operator {type(node).__name__} is not allowed{where}")
        if isinstance(node, ast.unaryop) and not isinstance(node, (ast.USub, ast.UAdd)):
            raise ValueError(f"formula {text!r}: the operator {type(node).__name__} is not allowed{where}")
        return
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
            raise ValueError(f"formula {text!r}: only numbers are allowed as constants{where}")
        return
    if isinstance(node, (ast.BinOp, ast.UnaryOp)):
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
            called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            allowed = ", ".join(sorted(FUNCTIONS))
            raise ValueError(f"formula {text!r}: unknown function {called!r}{where}; allowed: {allowed}")
        if len(node.args) != 1 or node.keywords:
            raise ValueError(f"formula {text!r}: {node.func.id}() takes exactly one argument{where}")
        return
    if isinstance(node, ast.Name):
        if node.id in FUNCTIONS:
            return  # checked as the callee of its Call
        if node.id.startswith("_"):
            raise ValueError(f"formula {text!r}: the name {node.id!r} is not allowed{where}")
        if node.id not in CONSTANTS:
            names.append(node.id)
        return
    raise ValueError(f"formula {text!r}: {type(node).__name__} is not allowed{where} ({ast.unparse(node)!r})")


def _evaluate(node: ast.AST, values: Mapping[str, torch.Tensor | float]) -> torch.Tensor | float:
    if isinstance(node, ast.Constant):
        return float(node.value)  # type: ignore[arg-type]  # checked numeric by parse()
    if isinstance(node, ast.Name):
        return CONSTANTS[node.id] if node.id in CONSTANTS else values[node.id]
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left, right = _evaluate(node.left, values), _evaluate(node.right, values)
        operation: Callable[..., torch.Tensor] = _BINARY[type(node.op)]  # type: ignore[assignment]
        if not isinstance(left, torch.Tensor) and not isinstance(right, torch.Tensor):
            return float(operation(torch.tensor(left), torch.tensor(right)))
        return operation(left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        argument = _evaluate(node.args[0], values)
        return FUNCTIONS[node.func.id](torch.as_tensor(argument))
    raise ValueError(f"cannot evaluate {ast.unparse(node)!r}")  # unreachable after parse()


def fit_formula(
    text: str,
    table: Mapping[str, torch.Tensor],
    start: Mapping[str, float],
    *,
    target: str = "y",
    loss: str | None = None,
    **options: Any,
) -> Regression:
    """Fit a formula such as ``"a*exp(-b*x)+c"`` to the columns of a table by (robust) least squares.

    The formula's names that are columns of ``table`` are data; the others are parameters, each with a value in
    ``start``. ``target`` names the column predicted; ``loss`` is ``"mse"`` (default), ``"mae"`` or ``"huber"``.
    Returns the :class:`Regression` of :func:`~lossfit.curve_fit`, with ``names`` the parameters in the formula's
    order and ``extras["columns"]`` the columns it used.
    """
    from lossfit.losses import robust_for
    from lossfit.models.curves import curve_fit

    formula = parse(text)
    if target not in table:
        raise ValueError(f"`target`: no column {target!r} to predict (columns: {', '.join(table)})")
    if target in formula.names:
        raise ValueError(f"the formula {text!r} must not use the target column {target!r}")
    unknown = [name for name in start if name not in formula.names]
    if unknown:
        raise ValueError(f"`start` names {', '.join(unknown)}, which the formula {text!r} does not use")
    params = [name for name in formula.names if name not in table]
    missing = [name for name in params if name not in start]
    if missing:
        raise ValueError(
            f"the formula uses {', '.join(missing)}: not a column of the table and without a value in `start`"
        )
    if loss not in (None, "mse", "mae", "huber"):
        raise ValueError(f"`loss` for a formula must be 'mse', 'mae' or 'huber'; got {loss!r}")
    y = table[target]
    columns = {name: table[name] for name in formula.names if name in table}

    def predict(_: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.broadcast_to(formula({**columns, **p}), y.shape)

    p0 = {name: torch.tensor(float(start[name]), dtype=y.dtype) for name in params}
    result = curve_fit(predict, y, y, p0, loss=robust_for(loss), **options)
    extras = {**result.extras, "columns": tuple(columns)}
    return dataclasses.replace(result, names=tuple(params), extras=extras)
