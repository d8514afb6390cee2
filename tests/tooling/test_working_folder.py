"""A notebook finds the repository's files from any working folder, not only from notebooks/.

VS Code and `jupyter lab` started at the repository root run notebooks with the root as working folder; the
notebooks name committed files by their repository URL (`ddpm_lite.checkpoints.repository_file`), which resolves to
this checkout wherever the kernel runs. nbval runs every notebook from notebooks/; this runs one that reads
checkpoints and results files from the root, and checks that it leaves nothing behind there.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "07_ddim.ipynb"  # reads two checkpoints and results/ddim_grid.csv


def test_a_notebook_runs_with_the_repository_root_as_working_folder():
    before = sorted(os.listdir(ROOT))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    errors = [output for cell in nb.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors
    assert sorted(os.listdir(ROOT)) == before, "the notebook wrote into the repository root"
