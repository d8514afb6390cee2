"""Where a few-step grid starts: DPM-Solver++ 2M, 10 steps, on a grid up to the schedule's sigma_max or up to a cap.

    python scripts/sigma_max_check.py checkpoints/mnist_tuned.pt checkpoints/mnist.pt [--n 200] [--cap 80] [--threads 1]
        [--out FILE.csv]

With cosine betas (clipped at 0.999, Nichol & Dhariwal 2021, eq. 17) the last timestep's alpha_bar is about 2e-9, so
sigma_max = sqrt((1 - alpha_bar) / alpha_bar) is about 20,000, against 157 for DDPM's linear betas. Karras' grid
(rho = 7) then spends half of its levels above sigma = 600, where the signal is nothing, and the first data-prediction
step multiplies the network's error in eps by sigma_max. EDM uses sigma_max = 80 (Karras et al. 2022, Table 1). For
each checkpoint this prints the grid's first two levels and the offline digit metrics of n samples (the same starting
noise, seed 10; Frechet distance in the course classifier's features, NOT Inception-FID, with its bootstrap standard
error over 100 resamplings) for three grids: Karras' up to the schedule's sigma_max, Karras' up to `--cap`, and the
trailing timestep spacing.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ddpm_lite.checkpoints import load_for_sampling
from ddpm_lite.data import load_mnist
from ddpm_lite.digits import digit_metrics, load_digit_classifier
from ddpm_lite.evaluate import machine_line, script_parser, write_rows
from ddpm_lite.solvers import eps_at_sigma, sigma_schedule, solve

STEPS = 10


def main() -> None:
    parser = script_parser(__doc__, threads=1)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    parser.add_argument("--n", type=int, default=200, help="samples per grid (default 200)")
    parser.add_argument("--cap", type=float, default=80.0, help="the capped grid's sigma_max (default 80, EDM's)")
    args = parser.parse_args()
    if args.n < 2:
        parser.error(f"--n must be at least 2, got {args.n}")
    if not args.cap > 0:
        parser.error(f"--cap must be positive, got {args.cap}")
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    rows = []
    reference, classifier = load_mnist(train=True)[0].tensors[0], load_digit_classifier()
    print("| model | grid | sigma_0 | sigma_1 | n | Frechet distance (not FID) +- bootstrap SE | confident share |\n"
          "|---|---|---|---|---|---|---|")
    for checkpoint in args.checkpoints:
        model, schedule, _ = load_for_sampling(checkpoint, "cpu")
        x_T = torch.randn((args.n, 1, 28, 28), generator=torch.Generator().manual_seed(10))
        grids = {"karras, the schedule's sigma_max": sigma_schedule(schedule, STEPS, "karras"),
                 f"karras, sigma_max {args.cap:g}": sigma_schedule(schedule, STEPS, "karras", sigma_max=args.cap),
                 "trailing": sigma_schedule(schedule, STEPS, "trailing")}
        for name, sigmas in grids.items():
            x_0 = solve(eps_at_sigma(model, schedule), sigmas, x_T * math.sqrt(1 + sigmas[0].item() ** 2), "dpmpp-2m",
                        progress=False)
            m = digit_metrics(x_0.clamp(-1, 1), reference, classifier, resamples=100)
            rows.append(dict(model=checkpoint.stem, grid=name, sigma_0=round(sigmas[0].item(), 1),
                             sigma_1=round(sigmas[1].item(), 1), n=args.n,
                             frechet_distance=round(m.frechet_distance, 3), frechet_se=round(m.frechet_se, 3),
                             confident_share=round(m.confident_share, 4)))
            print(f"| {checkpoint.stem} | {name} | {sigmas[0].item():.1f} | {sigmas[1].item():.1f} | {args.n} | "
                  f"{m.frechet_distance:.2f} +- {m.frechet_se:.2f} | {m.confident_share:.1%} |", flush=True)
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
