"""The DDIM paper's Table 1 at CPU scale: sample quality for S steps x eta, on 2-D data and on MNIST.

    python scripts/ddim_grid.py --out results/ddim_grid.csv [--checkpoint checkpoints/mnist.pt] [--n-digits 100]
        [--parts mixture,mnist] [--device cuda --batch 500]

Rows (one per dataset, S, eta):
- "mixture": the course's 2-D Gaussian mixture with the exact noise predictor (`ddpm_lite.exact`), so every error
  is the sampler's. Metric: sliced Wasserstein distance of 20,000 samples to 20,000 data points (lower is better),
  mean and standard error over 3 trials, and the data-vs-data floor at that size.
- "mnist": the committed checkpoint, plus one DDPM-1000 row (sampler "ddpm") as the reference. Metrics: the offline digit metrics (Frechet distance in a small MNIST
  classifier's features, NOT Inception-FID; confident share) against the 4,500 training digits.
Deterministic: fixed seeds per cell, the same starting noise for every (S, eta) of a dataset.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from ddpm_lite.data import gaussian_mixture, load_mnist
from ddpm_lite.exact import MixtureEpsModel
from ddpm_lite.metrics import digit_metrics, load_digit_classifier, sliced_wasserstein, sliced_wasserstein_floor
from ddpm_lite.samplers import ddim_sample, ddpm_sample
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import load_ema_model

STEPS = (10, 20, 50, 100, 1000)
ETAS = (0.0, 0.2, 0.5, 1.0)


def mixture_rows(n: int = 20_000, repeats: int = 3, steps_list: tuple[int, ...] = STEPS) -> list[dict]:
    """Each cell: mean and standard error over `repeats` trials (fresh starting noise and fresh reference data per
    trial, shared by all etas of a trial, so differences between etas are paired)."""
    schedule = NoiseSchedule.named("linear", 1000)
    _, mixture = gaussian_mixture(1)
    model = MixtureEpsModel(mixture, schedule)
    floor, floor_sd = sliced_wasserstein_floor(lambda k, g: mixture.sample(k, g), n, repeats=max(repeats, 5),
                                               generator=torch.Generator().manual_seed(1))
    rows = []
    for steps in steps_list:
        for eta in ETAS:
            start, distances = time.perf_counter(), []
            for trial in range(repeats):
                reference = mixture.sample(n, torch.Generator().manual_seed(100 + trial))
                x = ddim_sample(model, schedule, (n, 2), steps=steps, eta=eta, progress=False,
                                generator=torch.Generator().manual_seed(200 + trial))
                distances.append(sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(300 + trial)))
            mean = sum(distances) / repeats
            se = (sum((d - mean) ** 2 for d in distances) / (repeats - 1) / repeats) ** 0.5
            rows.append(dict(dataset="mixture", model="exact", device="cpu", sampler="ddim", steps=steps, eta=eta,
                             n=n, repeats=repeats, sliced_wasserstein=round(mean, 5), sliced_wasserstein_se=round(se, 5),
                             sliced_wasserstein_floor=round(floor, 5), floor_sd=round(floor_sd, 5),
                             seconds=round(time.perf_counter() - start, 1)))
            print(rows[-1], flush=True)
    return rows


def mnist_rows(checkpoint: str, n: int, device: str = "cpu", batch: int = 50, steps_list: tuple[int, ...] = STEPS,
               ddpm: bool = True) -> list[dict]:
    model, config = load_ema_model(checkpoint, device)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    reference = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier()
    cells = [("ddpm", config.T, 1.0)] * ddpm + [("ddim", steps, eta) for steps in steps_list for eta in ETAS]
    rows = []
    for sampler, steps, eta in cells:
        start = time.perf_counter()
        x = torch.cat([  # batches of 50 run faster per image on a CPU; seeds fixed per batch
            (ddpm_sample(model, schedule, (min(batch, n - i), 1, 28, 28), generator=torch.Generator().manual_seed(10 + i),
                         device=device, progress=False) if sampler == "ddpm" else
             ddim_sample(model, schedule, (min(batch, n - i), 1, 28, 28), steps=steps, eta=eta, device=device,
                         generator=torch.Generator().manual_seed(10 + i), progress=False)).cpu()
            for i in range(0, n, batch)
        ])
        m = digit_metrics(x.clamp(-1, 1), reference, classifier)
        rows.append(dict(dataset="mnist", model=Path(checkpoint).stem, device=str(device), sampler=sampler, steps=steps, eta=eta, n=n,
                         frechet_distance=round(m.frechet_distance, 3), confident_share=round(m.confident_share, 4),
                         classes_covered=m.classes_covered, seconds=round(time.perf_counter() - start, 1)))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/ddim_grid.csv")
    parser.add_argument("--checkpoint", default="checkpoints/mnist.pt")
    parser.add_argument("--n-digits", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
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
    rows = (mixture_rows(args.n_points, args.repeats, steps_list) if "mixture" in parts else []) + (
        mnist_rows(args.checkpoint, args.n_digits, args.device, args.batch, steps_list, not args.no_ddpm)
        if "mnist" in parts else [])
    fields = ["dataset", "model", "device", "sampler", "steps", "eta", "n", "repeats", "sliced_wasserstein",
              "sliced_wasserstein_se", "sliced_wasserstein_floor", "floor_sd",
              "frechet_distance", "confident_share", "classes_covered", "seconds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}: {len(rows)} rows in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
