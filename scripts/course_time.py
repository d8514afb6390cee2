"""How long the course takes to run: every notebook executed top to bottom as CI does, one after another.

    python scripts/course_time.py [--threads 2] [--out FILE.csv] [--slowest N] [notebooks/*.ipynb]

CI runs the notebooks through nbval (`make test`), in the kernel of the current environment with the notebook's folder
as working directory; this does the same through nbclient, without writing anything back, and prints a markdown table
of seconds per notebook and the total against the course's budget (BUDGET_SECONDS below). Run it on a quiet machine: other
processes on the same cores slow every notebook down. OMP_NUM_THREADS is set to `--threads` for the kernels.
`--slowest N` adds a table of the N slowest cells of the course, to show where the time goes.

Machines of the same kind differ in speed, so before the notebooks it measures two fixed workloads on `--threads`
threads and prints them with the table: the float32 matrix-product peak (`quality_per_minute.matmul_peak_gflops`) and
the `mnist` preset's UNet in sampling calls (batch 32, `tune_mnist.sampling_images_per_second`). Two records compare
through them.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path

import nbformat
import torch
from nbclient import NotebookClient
from quality_per_minute import matmul_peak_gflops
from tune_mnist import sampling_images_per_second

from ddpm_lite.configs import CONFIGS
from ddpm_lite.evaluate import machine_line, script_parser, write_rows
from ddpm_lite.models import make_model

# The course's budget: every notebook, top to bottom, in 10 minutes on a 2-core laptop CPU 2.5 times slower than the
# 2-core machine of the record (results/benchmarks.md), which is 240 s there.
BUDGET_SECONDS = 240


def run(path: Path, timeout: int) -> tuple[float, list[tuple[float, int, str]]]:
    """Seconds for the whole notebook, and (seconds, index, first line) for each code cell."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    cells = []
    for index, cell in enumerate(nb.cells):
        timing = cell.metadata.get("execution", {})
        if cell.cell_type == "code" and "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            began, ended = (datetime.fromisoformat(timing[key].replace("Z", "+00:00"))
                            for key in ("iopub.execute_input", "shell.execute_reply"))
            first_line = next((line for line in cell.source.splitlines() if line.strip()), "")
            cells.append(((ended - began).total_seconds(), index, first_line[:70].replace("|", "\\|")))
    return seconds, cells


def machine_speed(threads: int) -> str:
    """The two calibration workloads on `threads` threads, as one line."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    unet = make_model(CONFIGS["mnist"].model).eval()
    return (f"machine speed on {threads} threads: float32 matmul peak {matmul_peak_gflops():.1f} GFLOP/s; the `mnist` "
            f"preset's UNet {sampling_images_per_second(unet, 'inference_mode'):.0f} images/s in sampling calls "
            "(batch 32, best of 3)")


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("notebooks", nargs="*", type=Path)
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    parser.add_argument("--slowest", type=int, default=0, help="also list the N slowest cells (default 0: none)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the kernels nbclient starts
    notebooks = args.notebooks or sorted(Path(__file__).resolve().parent.parent.glob("notebooks/[0-9]*.ipynb"))
    print(f"{machine_line(args.threads)} (OMP_NUM_THREADS for the kernels)")
    print(f"{machine_speed(args.threads)}\n")
    print("| notebook | seconds |\n|---|---|")
    rows, cells = [], []
    for path in notebooks:
        seconds, timed_cells = run(path, args.timeout)
        rows.append(dict(notebook=path.stem, seconds=round(seconds, 1)))
        cells += [(cell_seconds, path.stem, index, line) for cell_seconds, index, line in timed_cells]
        print(f"| {path.stem} | {rows[-1]['seconds']:.1f} |", flush=True)
    total = sum(row["seconds"] for row in rows)
    print(f"| **total** | **{total:.1f}** ({total / 60:.1f} min; budget {BUDGET_SECONDS} s on a 2-core machine like the "
          "record's, 10 min on one 2.5x slower) |")
    if args.slowest:
        print(f"\nThe {args.slowest} slowest cells:\n\n| seconds | notebook | cell | first line |\n|---|---|---|---|")
        for cell_seconds, stem, index, line in sorted(cells, reverse=True)[:args.slowest]:
            print(f"| {cell_seconds:.1f} | {stem} | {index} | `{line}` |")
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")
    print(f"total_seconds={total:.1f} within_budget={total < BUDGET_SECONDS}")


if __name__ == "__main__":
    main()
