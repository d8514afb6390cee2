"""The repository's Markdown renders as written: every table has a header, a separator row and rows of its width,
with no blank line splitting it (GitHub would show the rows after the blank as raw text), and README's notebook table
lists every notebook."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MARKDOWN = sorted(ROOT / name for name in subprocess.run(["git", "ls-files", "*.md"], cwd=ROOT, capture_output=True,
                                                         text=True, check=True).stdout.split())
SEPARATOR = re.compile(r"^\|(\s*:?-{3,}:?\s*\|)+$")


def cells(row: str) -> int:
    """Cells of a table row as GitHub splits it: at every pipe that is not escaped."""
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


def tables(text: str) -> list[list[str]]:
    blocks, block, fence = [], [], False
    for line in text.splitlines() + [""]:
        if line.startswith("```"):
            fence = not fence
        if not fence and line.startswith("|"):
            block.append(line)
        elif block:
            blocks.append(block)
            block = []
    return blocks


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_table_has_a_header_a_separator_and_rows_of_its_width(path):
    for block in tables(path.read_text(encoding="utf-8")):
        assert len(block) >= 2 and SEPARATOR.match(block[1].strip()), f"{path.name}: no header row above {block[0][:60]}"
        width = cells(block[0])
        for row in block[2:]:
            assert cells(row) == width, f"{path.name}: {cells(row)} cells where the header has {width}: {row[:60]}"


def test_readme_notebook_table_lists_every_notebook():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = next(block for block in tables(readme) if block[0].startswith("| notebook "))
    listed = re.findall(r"\(notebooks/(\d\d_\w+)\.ipynb\)", "\n".join(table))
    assert listed == sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
