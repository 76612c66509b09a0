"""The examples in examples/ run and print what they promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_seed003_example_runs_and_plots(tmp_path: Path) -> None:
    plot = tmp_path / "seed003.png"
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "seed003_inverse.py"), "--steps", "3000", "--plot", str(plot)],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "seed's method" in out.stdout and "newton-schulz" in out.stdout
    assert plot.stat().st_size > 10_000
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_seed000_001_002_examples_run_their_own_checks() -> None:
    for name, expect in (
        ("seed000_transforms.py", "network fit"),
        ("seed001_losses.py", "softmax regression"),
        ("seed002_imaging.py", "seed 002 done"),
    ):
        out = subprocess.run(
            [sys.executable, "-W", "error", str(ROOT / "examples" / name)],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        assert expect in out.stdout
