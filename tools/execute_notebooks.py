"""Execute notebooks top to bottom in place and clean them for committing (`make notebooks`).

Outputs are committed so GitHub, Colab and slides show figures (STYLE.md rule 14). After running, this strips what
must not be committed: widget state (`metadata.widgets`, which GitHub cannot render) and per-cell timings. It records
the fingerprint of what produced the outputs (tools/fingerprint.py) in `metadata.ddpm_lite.fingerprint`, checks
that every cell has slide metadata and that each notebook stays under 3 MB, and prints seconds per notebook.

    python -m tools.execute_notebooks notebooks/01_forward_process.ipynb [...]   (from the repository root)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tools.fingerprint import fingerprint

MAX_BYTES = 3 * 1024 * 1024
KERNEL = "python3"


def clean(nb: nbformat.NotebookNode) -> list[str]:
    """Strip widget state and timings in place; return a list of problems that need a human."""
    problems = []
    nb.metadata.pop("widgets", None)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3", "language": "python"}
    for index, cell in enumerate(nb.cells):
        cell.metadata.pop("execution", None)
        cell.metadata.pop("ExecuteTime", None)
        if "slideshow" not in cell.metadata:
            problems.append(f"cell {index} has no slideshow metadata")
    return problems


def execute(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    problems = clean(nb)
    nb.metadata["ddpm_lite"] = {"fingerprint": fingerprint(nb)}
    nbformat.validate(nb)
    nbformat.write(nb, path)
    size = path.stat().st_size
    if size > MAX_BYTES:
        problems.append(f"{size / 1e6:.1f} MB is over the 3 MB limit")
    for problem in problems:
        print(f"{path}: {problem}", file=sys.stderr)
    if problems:
        raise SystemExit(1)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    args = parser.parse_args()
    total = 0.0
    for path in args.notebooks:
        seconds = execute(path, args.timeout)
        total += seconds
        print(f"{path}: {seconds:.1f} s, {path.stat().st_size / 1e6:.2f} MB")
    print(f"total: {total:.1f} s")


if __name__ == "__main__":
    main()
