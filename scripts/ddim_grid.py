"""The DDIM paper's Table 1 at CPU scale: sample quality for S steps x eta, on 2-D data and on MNIST.

    python scripts/ddim_grid.py --out results/ddim_grid.csv [--checkpoint checkpoints/mnist.pt] [--n-digits 100]
        [--parts mixture,mnist] [--device cuda --batch 500]

Rows (one per dataset, S, eta):
- "mixture": the course's 2-D Gaussian mixture with the exact noise predictor (`ddpm_lite.exact`), so every error
  is the sampler's. Metric: sliced Wasserstein distance of 2,000 samples to 2,000 data points (lower is better), and
  the data-vs-data floor at that size.
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


def mixture_rows(n: int = 2000) -> list[dict]:
    schedule = NoiseSchedule.named("linear", 1000)
    _, mixture = gaussian_mixture(1)
    model = MixtureEpsModel(mixture, schedule)
    reference = mixture.sample(n, torch.Generator().manual_seed(0))
    floor, floor_sd = sliced_wasserstein_floor(lambda k, g: mixture.sample(k, g), n, generator=torch.Generator().manual_seed(1))
    rows = []
    for steps in STEPS:
        for eta in ETAS:
            start = time.perf_counter()
            x = ddim_sample(model, schedule, (n, 2), steps=steps, eta=eta, generator=torch.Generator().manual_seed(2),
                            progress=False)
            distance = sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(3))
            rows.append(dict(dataset="mixture", sampler="ddim", steps=steps, eta=eta, n=n, sliced_wasserstein=round(distance, 5),
                             sliced_wasserstein_floor=round(floor, 5), floor_sd=round(floor_sd, 5),
                             seconds=round(time.perf_counter() - start, 1)))
            print(rows[-1], flush=True)
    return rows


def mnist_rows(checkpoint: str, n: int, device: str = "cpu", batch: int = 50) -> list[dict]:
    model, config = load_ema_model(checkpoint, device)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    reference = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier()
    cells = [("ddpm", config.T, 1.0)] + [("ddim", steps, eta) for steps in STEPS for eta in ETAS]
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
        rows.append(dict(dataset="mnist", sampler=sampler, steps=steps, eta=eta, n=n,
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    parts = args.parts.split(",")
    rows = (mixture_rows() if "mixture" in parts else []) + (
        mnist_rows(args.checkpoint, args.n_digits, args.device, args.batch) if "mnist" in parts else [])
    fields = ["dataset", "sampler", "steps", "eta", "n", "sliced_wasserstein", "sliced_wasserstein_floor", "floor_sd",
              "frechet_distance", "confident_share", "classes_covered", "seconds"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}: {len(rows)} rows in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
