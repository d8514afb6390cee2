"""The DDIM paper's Table 1 at CPU scale: sample quality for S steps x eta, on 2-D data and on MNIST.

    python scripts/ddim_grid.py --out results/ddim_grid.csv [--checkpoint checkpoints/mnist.pt] [--n-digits 100]
        [--parts mixture,mnist] [--device cuda --batch 500]

Rows (one per dataset, S, eta):
- "mixture": the course's 2-D Gaussian mixture with the exact noise predictor (`ddpm_lite.mixture`), so every error
  is the sampler's. Metric: sliced Wasserstein distance of 20,000 samples to 20,000 data points (lower is better),
  mean and standard error over 3 trials, and the data-vs-data floor at that size.
- "mnist": the committed checkpoint, plus one DDPM-1000 row (sampler "ddpm") as the reference. Metrics: the offline digit metrics (Frechet distance in a small MNIST
  classifier's features, NOT Inception-FID; confident share) against the 4,500 training digits.
Deterministic: fixed seeds per cell, the same starting noise for every (S, eta) of a dataset. The protocols are
`ddpm_lite.evaluate.ddim_mixture_rows` and `ddim_mnist_rows` (notebook 07 recomputes the S = 10 mixture row with the
first); the record is results/ddim_grid.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from ddpm_lite.evaluate import STEPS, ddim_mixture_rows, ddim_mnist_rows, write_rows

FIELDS = ["dataset", "model", "device", "sampler", "steps", "eta", "n", "repeats", "sliced_wasserstein",
          "sliced_wasserstein_se", "sliced_wasserstein_floor", "floor_sd", "frechet_distance", "confident_share",
          "classes_covered", "seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/ddim_grid.csv", help="CSV to write, one row per cell")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--checkpoint", default="checkpoints/mnist.pt")
    parser.add_argument("--n-digits", type=int, default=100)
    parser.add_argument("--parts", default="mixture,mnist", help="comma-separated: mixture, mnist")
    parser.add_argument("--device", default="cpu", help="for the MNIST part")
    parser.add_argument("--batch", type=int, default=50, help="MNIST images per sampler call (50 suits a CPU)")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="comma-separated S values")
    parser.add_argument("--no-ddpm", action="store_true", help="MNIST: skip the DDPM-1000 reference row")
    parser.add_argument("--n-points", type=int, default=20_000, help="mixture: samples per trial")
    parser.add_argument("--repeats", type=int, default=3, help="mixture: trials per cell")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    parts = args.parts.split(",")
    steps_list = tuple(int(v) for v in args.steps.split(","))
    rows = (ddim_mixture_rows(args.n_points, args.repeats, steps_list, progress=True) if "mixture" in parts else []) + (
        ddim_mnist_rows(args.checkpoint, args.n_digits, args.device, args.batch, steps_list, not args.no_ddpm,
                        progress=True) if "mnist" in parts else [])
    for row in rows:
        print(row)
    write_rows(rows, args.out, FIELDS)
    print(f"wrote {args.out}: {len(rows)} rows in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
