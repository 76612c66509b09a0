"""Formula models: a whitelist parser that never evaluates Python, and the `lossfit fit` / `lossfit align` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lossfit import transforms as T
from lossfit.cli import app
from lossfit.models import fit_formula
from lossfit.models.formula import parse

runner = CliRunner()


def test_formula_evaluates_with_torch_and_lists_its_names_in_order() -> None:
    formula = parse("a*exp(-b*x) + c / sqrt(x + 1) - pi")
    assert formula.names == ("a", "b", "x", "c")
    x = torch.tensor([0.0, 1.0], dtype=torch.float64)
    value = formula({"a": 2.0, "b": 0.5, "c": 1.0, "x": x})
    expected = 2 * torch.exp(-0.5 * x) + 1 / torch.sqrt(x + 1) - torch.pi
    torch.testing.assert_close(value, expected)


def test_formula_gradients_flow() -> None:
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: parse("a**2 * sin(a)")({"a": a}), (a,))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("__import__('os').system('true')", "unknown function"),
        ("a.real", "Attribute"),
        ("a[0]", "Subscript"),
        ("exp(x, 2)", "exactly one argument"),
        ("open('f')", "unknown function"),
        ("a if b else c", "IfExp"),
        ("a < b", "Compare"),
        ("lambda: 1", "Lambda"),
        ("'text'", "numbers"),
        ("a // b", "FloorDiv"),
        ("a*exp(-b*x", "not valid"),
        ("", "non-empty"),
        ("_secret * 2", "not allowed"),
    ],
)
def test_anything_outside_the_whitelist_is_refused(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse(text)


def write_curve(tmp_path: Path, text_cell: bool = False) -> Path:
    x = np.linspace(0, 4, 25)
    y = 3.0 * np.exp(-0.7 * x) + 0.5
    lines = ["x,y"] + [f"{a:.17g},{b:.17g}" for a, b in zip(x, y, strict=True)]
    if text_cell:
        lines[5] = "1.0,abc"
    path = tmp_path / "curve.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_fit_formula_linear_in_its_parameters_matches_the_normal_equations() -> None:
    # y = a*x + b*sin(u) + c is linear in (a, b, c): the least-squares answer solves the normal equations.
    g = torch.Generator().manual_seed(7)
    x, u = torch.rand(50, generator=g, dtype=torch.float64), torch.rand(50, generator=g, dtype=torch.float64) * 3
    y = 1.5 * x - 0.4 * torch.sin(u) + 2.0 + 0.01 * torch.randn(50, generator=g, dtype=torch.float64)
    fit = fit_formula("a*x + b*sin(u) + c", {"x": x, "u": u, "y": y}, {"a": 0.0, "b": 0.0, "c": 0.0})
    design = torch.stack([x, torch.sin(u), torch.ones_like(x)], dim=1)
    expected = torch.linalg.solve(design.T @ design, design.T @ y)
    assert fit.success and fit.names == ("a", "b", "c") and fit.extras["columns"] == ("x", "u")
    got = torch.stack([fit.params[name] for name in fit.names])
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10)
    assert fit.dof == 47


def test_fit_formula_recovers_a_decay_and_names_each_bad_argument() -> None:
    x = torch.linspace(0, 4, 30, dtype=torch.float64)
    table = {"x": x, "signal": 3.0 * torch.exp(-0.7 * x) + 0.5}
    fit = fit_formula("a*exp(-b*x)+c", table, {"a": 1, "b": 0.1, "c": 0}, target="signal")
    assert fit.success
    assert [round(float(fit.params[k]), 8) for k in ("a", "b", "c")] == [3.0, 0.7, 0.5]
    with pytest.raises(ValueError, match="`start` names d"):
        fit_formula("a*exp(-b*x)+c", table, {"a": 1, "b": 0.1, "c": 0, "d": 1}, target="signal")
    with pytest.raises(ValueError, match="uses c: not a column"):
        fit_formula("a*exp(-b*x)+c", table, {"a": 1, "b": 0.1}, target="signal")
    with pytest.raises(ValueError, match="target column 'signal'"):
        fit_formula("a*signal", table, {"a": 1}, target="signal")
    with pytest.raises(ValueError, match="`target`: no column 'y'"):
        fit_formula("a*x", table, {"a": 1})
    with pytest.raises(ValueError, match="`loss`"):
        fit_formula("a*x", table, {"a": 1}, target="signal", loss="bce")


def test_fit_command_fits_a_formula(tmp_path: Path) -> None:
    out = tmp_path / "params.npz"
    result = runner.invoke(
        app,
        [
            "fit",
            str(write_curve(tmp_path)),
            "--model",
            "a*exp(-b*x)+c",
            "--start",
            "a=1,b=0.1,c=0",
            "--json",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["success"] and summary["params"]["a"] == pytest.approx(3.0, rel=1e-8)
    with np.load(out) as saved:
        assert float(saved["b"]) == pytest.approx(0.7, rel=1e-8)


def test_fit_command_fits_a_linear_model_on_named_columns(tmp_path: Path) -> None:
    path = tmp_path / "table.csv"
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=40), rng.normal(size=40)
    rows = ["u,v,target"] + [f"{a},{b},{2 * a - b + 1}" for a, b in zip(u, v, strict=True)]
    path.write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["fit", str(path), "--model", "linear", "--target", "target", "--json"])
    assert result.exit_code == 0, result.output
    params = json.loads(result.stdout)["params"]
    assert params["weight"] == pytest.approx([2.0, -1.0]) and params["bias"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--model", "a*exp(-b*x)+c", "--start", "a=1,b=0.1,c=0,d=1"], "does not use"),
        (["--model", "a*exp(-b*x)+c", "--start", "a=1,b=0.1"], "not a column"),
        (["--model", "a*exp(-b*x)+c"], "--start"),
        (["--model", "a*exp(-b*x)+__import__('os')", "--start", "a=1,b=1"], "unknown function"),
        (["--model", "a*exp(-b*x", "--start", "a=1,b=1"], "not valid"),
        (["--model", "a*x", "--start", "a=one"], "not a number"),
        (["--model", "linear", "--target", "z"], "no column"),
    ],
)
def test_fit_command_bad_input_is_one_line_and_exit_2(tmp_path: Path, args: list[str], words: str) -> None:
    out = tmp_path / "never.npz"
    result = runner.invoke(app, ["fit", str(write_curve(tmp_path)), *args, "--out", str(out)])
    assert result.exit_code == 2
    assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not out.exists()


def test_fit_command_refuses_text_in_a_number_column(tmp_path: Path) -> None:
    result = runner.invoke(app, ["fit", str(write_curve(tmp_path, text_cell=True)), "--model", "a*x", "--start", "a=1"])
    assert result.exit_code == 2 and "'abc' is not a number" in result.stderr and "line 6" in result.stderr


def test_align_command_writes_the_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 10, size=(30, 2))
    m = T.matrix("rigid", torch.tensor([0.4, 1.0, -2.0], dtype=torch.float64), 2)
    dst = T.apply(m, torch.from_numpy(src)).numpy()
    dst[:8] += rng.normal(scale=5, size=(8, 2))  # outliers
    np.savetxt(tmp_path / "src.csv", src, delimiter=",")
    np.savetxt(tmp_path / "dst.csv", dst, delimiter=",")
    out = tmp_path / "m.npy"
    result = runner.invoke(
        app,
        [
            "align",
            str(tmp_path / "src.csv"),
            str(tmp_path / "dst.csv"),
            "--model",
            "rigid",
            "--loss",
            "cauchy",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(out), m.numpy(), atol=1e-6)
    np.testing.assert_allclose(np.array(json.loads(result.stdout)["matrix"]), m.numpy(), atol=1e-6)


def test_align_command_bad_input(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "a.csv", np.zeros((5, 2)), delimiter=",")
    np.savetxt(tmp_path / "b.csv", np.zeros((4, 2)), delimiter=",")
    result = runner.invoke(app, ["align", str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert result.exit_code == 2 and "same shape" in result.stderr
    result = runner.invoke(app, ["align", str(tmp_path / "a.csv"), str(tmp_path / "missing.csv")])
    assert result.exit_code == 2 and "no such file" in result.stderr


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.parametrize("model", ["formula", "linear", "logistic"])
def test_fit_plot_shows_the_data_beside_the_convergence(tmp_path: Path, model: str) -> None:
    plot = tmp_path / "fit.png"
    if model == "formula":
        args = [str(write_curve(tmp_path)), "--model", "a*exp(-b*x)+c", "--start", "a=1,b=0.1,c=0"]
    else:
        rng = np.random.default_rng(2)
        u = rng.normal(size=60)
        label = (u + 0.5 * rng.normal(size=60) > 0).astype(int) if model == "logistic" else 2 * u + 1
        (tmp_path / "t.csv").write_text("u,y\n" + "\n".join(f"{a},{b}" for a, b in zip(u, label, strict=True)) + "\n")
        args = [str(tmp_path / "t.csv"), "--model", model]
    result = runner.invoke(app, ["fit", *args, "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    width, height = _png_size(plot)
    assert width > 2 * height  # two panels side by side: the data with the fit, and the convergence


def test_align_plot_shows_the_points_beside_the_convergence(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 10, (30, 2))
    np.save(tmp_path / "a.npy", src)
    np.save(tmp_path / "b.npy", src + [1.0, 2.0])
    plot = tmp_path / "align.png"
    result = runner.invoke(app, ["align", str(tmp_path / "a.npy"), str(tmp_path / "b.npy"), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    width, height = _png_size(plot)
    assert width > 2 * height
