"""Every ```python block in README.md runs as written (the blocks carry their own asserts), and so does every
```sh tour block: the command-line tour, run by bash in an empty folder with the venv's commands on PATH."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
SHELL_BLOCK = re.compile(r"^```sh[ \t]+tour[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def blocks(pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    """(line number, code) of every block the pattern matches."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in pattern.finditer(text)]


BLOCKS = blocks(BLOCK)
SHELL_BLOCKS = blocks(SHELL_BLOCK)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 4
    assert all("import lossfit" in code for _, code in BLOCKS)
    assert any("register(" in code for _, code in BLOCKS), "the tour has a registration example"


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": f"readme_block_{line}"}
    exec(compile(code, f"{README}:{line}", "exec"), namespace)
    # Every block prints what it shows; the output must not be empty.
    assert capsys.readouterr().out.strip() != "" or "print(" not in code


def test_the_readme_has_a_command_line_tour() -> None:
    assert len(SHELL_BLOCKS) >= 1
    assert any("--report" in code and "--json" in code for _, code in SHELL_BLOCKS)


@pytest.mark.parametrize(("line", "code"), SHELL_BLOCKS, ids=[f"README.md:{line}" for line, _ in SHELL_BLOCKS])
def test_readme_shell_tour_runs(line: int, code: str, tmp_path: Path) -> None:
    """The tour runs under ``set -eu -o pipefail``; the exit statuses it shows are the ones it claims."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        ["bash", "-eu", "-o", "pipefail", "-c", code],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"README.md:{line}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    assert "Traceback" not in done.stdout + done.stderr
    claimed = re.findall(r'echo "exit status \$\?"\s*#\s*(\d)', code)
    shown = re.findall(r"^exit status (\d)$", done.stdout, re.MULTILINE)
    assert shown == claimed, (shown, claimed, done.stdout)
