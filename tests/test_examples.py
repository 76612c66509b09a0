"""The examples in examples/ run and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_inverse_example_runs_and_plots(tmp_path: Path) -> None:
    plot = tmp_path / "inverse-sgd.png"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "inverse_by_optimisation.py"), "--steps", "3000", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "the post's method" in out.stdout and "newton-schulz" in out.stdout
    assert plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_other_examples_run_their_own_checks() -> None:
    for name, expect in (
        ("transforms_from_a_loss.py", "network fit"),
        ("losses_shape_the_fit.py", "softmax regression"),
        ("imaging_tensors_and_autograd.py", "imaging example done"),
    ):
        out = subprocess.run(
            [sys.executable, "-W", "error", str(ROOT / "examples" / name)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        assert expect in out.stdout
