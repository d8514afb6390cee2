"""How long the course takes to run: every notebook executed top to bottom as CI does, one after another.

    python scripts/course_time.py [--threads 2] [--out FILE.csv] [notebooks/*.ipynb]

CI runs the notebooks through nbval (`make test`), in the kernel of the current environment with the notebook's folder
as working directory; this does the same through nbclient, without writing anything back, and prints a markdown table
of seconds per notebook and the total against the course's budget of 10 minutes. Run it on a quiet machine: other
processes on the same cores slow every notebook down. OMP_NUM_THREADS is set to `--threads` for the kernels.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from ddpm_lite.evaluate import machine_line, script_parser, write_rows

BUDGET_SECONDS = 600  # the course's budget: every notebook, top to bottom, on a 2-core laptop CPU


def run(path: Path, timeout: int) -> float:
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - start


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the kernels nbclient starts
    notebooks = args.notebooks or sorted(Path(__file__).resolve().parent.parent.glob("notebooks/[0-9]*.ipynb"))
    print(f"{machine_line(args.threads)} (OMP_NUM_THREADS for the kernels)\n")
    print("| notebook | seconds |\n|---|---|")
    rows = []
    for path in notebooks:
        rows.append(dict(notebook=path.stem, seconds=round(run(path, args.timeout), 1)))
        print(f"| {path.stem} | {rows[-1]['seconds']:.1f} |", flush=True)
    total = sum(row["seconds"] for row in rows)
    print(f"| **total** | **{total:.1f}** ({total / 60:.1f} min; budget {BUDGET_SECONDS / 60:.0f} min) |")
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")
    print(f"total_seconds={total:.1f} within_budget={total < BUDGET_SECONDS}")


if __name__ == "__main__":
    main()
