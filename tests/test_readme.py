"""Every ```python block in README.md runs as written (the blocks carry their own asserts)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in BLOCK.finditer(text)]


BLOCKS = python_blocks()


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 4
    assert all("import lossfit" in code for _, code in BLOCKS)


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{line}" for line, _ in BLOCKS])
def test_readme_block_runs(line: int, code: str, capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {"__name__": f"readme_block_{line}"}
    exec(compile(code, f"{README}:{line}", "exec"), namespace)
    # Every block prints what it shows; the output must not be empty.
    assert capsys.readouterr().out.strip() != "" or "print(" not in code
