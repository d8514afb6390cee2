"""Committed notebook outputs are what the committed code produces: each notebook's stored fingerprint (written by
`make notebooks`) equals today's, or the test names the notebook and what changed since it was executed."""

from __future__ import annotations

import copy
from pathlib import Path

import nbformat
import pytest

from tools.fingerprint import fingerprint, stale_parts

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_come_from_the_committed_code(path):
    changed = stale_parts(nbformat.read(path, as_version=4))
    assert not changed, (f"{path.name} was executed before changes to: {', '.join(changed)}; "
                         f"re-execute it with `make notebooks` (on a quiet machine)")


def test_a_changed_code_cell_or_read_file_is_noticed(tmp_path):
    """The check can fail: edit one code cell of a fresh notebook, or name another committed file in it."""
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.metadata["ddpm_lite"] = {"fingerprint": fingerprint(nb)}
    assert stale_parts(nb) == []
    edited = copy.deepcopy(nb)
    next(cell for cell in edited.cells if cell.cell_type == "code").source += "\nprint('changed')"
    assert stale_parts(edited) == ["its code cells"]
    reads = copy.deepcopy(nb)
    reads.cells.append(nbformat.v4.new_code_cell('path = "../checkpoints/mnist.pt"'))
    assert stale_parts(reads) == ["checkpoints/mnist.pt", "its code cells"]
    forked = copy.deepcopy(nb)
    for cell in forked.cells:
        if cell.cell_type == "code":
            cell.source = cell.source.replace("github.com/ddpm-lite/ddpm-lite", "github.com/someone/fork")
    assert stale_parts(forked) == []
