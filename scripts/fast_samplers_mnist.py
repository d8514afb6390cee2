"""Digit quality against network evaluations (NFE) for DDIM, Heun and DPM-Solver++ 2M on the MNIST checkpoints.

    python scripts/fast_samplers_mnist.py checkpoints/mnist.pt [MORE.pt ...] [--n 500] [--nfe 3 5 10 20 50]
        [--spacing karras trailing] [--sigma-max SIGMA] [--no-ddpm] [--threads 2] [--out FILE.csv]

For each checkpoint, each NFE budget and each sampler (DDIM with eta = 0 on its uniform spacing; Heun and
DPM-Solver++ 2M of ddpm_lite.solvers on each grid of --spacing, with the most steps the budget allows: Heun's N
steps cost 2N - 1 evaluations; for a flow checkpoint also --samplers flow-euler flow-heun, its own ODE with steps
uniform in tau, Heun's N steps costing 2N): the offline digit metrics of n samples (`evaluate.fast_sampler_mnist_rows`; Frechet
distance in the course classifier's features, NOT Inception-FID, with its bootstrap standard error), beside DDPM with
all T steps. --sigma-max caps the karras and log-snr grids, as EDM's 80, where the schedule's top level is far higher
(20,291 for cosine betas; math/fast_sampling.tex eq:sigma-max-cap). Then, per checkpoint, the best sampler at 10 NFE
and its Frechet distance over DDPM-T's (issue 17's goal: at most 1.5; DPM-Solver++ reported 4.70 at 10 NFE against
DDPM's 3.17 on CIFAR-10, 1.48).
"""

from __future__ import annotations

import math
from typing import get_args

import torch

from ddpm_lite.evaluate import (
    FAST_SAMPLERS, FLOW_SAMPLERS, NFE_BUDGETS, fast_sampler_mnist_rows, machine_line, markdown_table, script_parser,
    write_rows,
)
from ddpm_lite.solvers import SigmaSpacing, TimestepSpacing

COLUMNS = {"model": "model", "sampler": "sampler", "spacing": "spacing", "sigma_0": "sigma_max", "NFE budget": "budget", "steps": "steps",
           "NFE": "nfe", "n": "n", "Frechet distance (not FID)": "frechet_distance:.2f",
           "SE": "frechet_se:.2f",
           "confident share": "confident_share:.1%", "classes": "classes_covered", "seconds": "seconds:.0f"}


def ratio_lines(rows: list[dict], budget: int = 10) -> list[str]:
    """Per model: the best sampler within `budget` NFE and its Frechet distance over DDPM-T's, with the ratio's
    standard error by the delta method from the two bootstrap SEs (treated as independent)."""
    lines = []
    for model in dict.fromkeys(row["model"] for row in rows):
        mine = [row for row in rows if row["model"] == model]
        ddpm = [row for row in mine if row["sampler"] == "ddpm"]
        fast = [row for row in mine if row["sampler"] != "ddpm" and row["budget"] == budget]
        if not ddpm or not fast:
            continue
        best = min(fast, key=lambda row: row["frechet_distance"])
        ratio = best["frechet_distance"] / ddpm[0]["frechet_distance"]
        ratio_se = ratio * math.hypot(best["frechet_se"] / best["frechet_distance"],
                                      ddpm[0]["frechet_se"] / ddpm[0]["frechet_distance"])
        grid = best["spacing"] + (f", sigma_0 {best['sigma_max']}" if best.get("sigma_max") not in (None, "") else "")
        lines.append(f"{model}: best at {budget} NFE is {best['sampler']} ({best['nfe']} NFE, {grid}), "
                     f"Frechet {best['frechet_distance']:.2f} +- {best['frechet_se']:.2f} "
                     f"against DDPM-{ddpm[0]['steps']} "
                     f"{ddpm[0]['frechet_distance']:.2f} +- {ddpm[0]['frechet_se']:.2f}: ratio {ratio:.2f} +- "
                     f"{ratio_se:.2f} (goal <= 1.5)")
    return lines


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--n", type=int, default=500, help="samples per cell (default 500)")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFE_BUDGETS), help="NFE budgets")
    parser.add_argument("--samplers", nargs="+", default=list(FAST_SAMPLERS), choices=FAST_SAMPLERS + FLOW_SAMPLERS,
                        help="flow-euler and flow-heun: a flow checkpoint's own ODE, uniform in tau")
    parser.add_argument("--spacing", nargs="+", default=["karras", "trailing"],
                        help="grids of the solvers (ddpm_lite.solvers.SigmaSpacing); DDIM and DDPM-T run once")
    parser.add_argument("--sigma-max", type=float, help="top level of the karras and log-snr grids (default: the "
                                                             "schedule's; EDM's is 80)")
    parser.add_argument("--batch", type=int, default=50, help="samples per sampling batch")
    parser.add_argument("--no-ddpm", action="store_true", help="leave out the DDPM-T reference row")
    args = parser.parse_args()
    if args.n < 2 or min(args.nfe) < 1:
        parser.error(f"--n must be at least 2 and every --nfe at least 1, got --n {args.n}, --nfe {args.nfe}")
    unknown = [spacing for spacing in args.spacing if spacing not in get_args(SigmaSpacing)]
    if unknown:
        parser.error(f"--spacing must be among {get_args(SigmaSpacing)}, got {unknown}")
    fixed = [spacing for spacing in args.spacing if spacing in get_args(TimestepSpacing)]
    if args.sigma_max is not None and fixed:
        parser.error(f"--sigma-max caps the karras and log-snr grids; the timestep spacings {fixed} keep the "
                     "schedule's own levels (run them without --sigma-max)")
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    rows = []
    for checkpoint in args.checkpoints:
        for index, spacing in enumerate(args.spacing):
            samplers = [s for s in args.samplers  # DDIM and the flow samplers have their own (uniform) grids
                        if (s != "ddim" and s not in FLOW_SAMPLERS) or index == 0]
            rows += fast_sampler_mnist_rows(checkpoint, args.n, args.nfe, samplers, spacing, args.batch,
                                            ddpm=not args.no_ddpm and index == 0, progress=True,
                                            sigma_max=args.sigma_max)
    print(markdown_table(rows, COLUMNS))
    print("\n".join(ratio_lines(rows)))
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
