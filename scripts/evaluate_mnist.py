"""Measure an MNIST checkpoint the way checkpoints/README.md reports it, and print a markdown table.

    python scripts/evaluate_mnist.py checkpoints/mnist.pt [--threads 2]

- Offline digit metrics (`ddpm_lite.metrics.digit_metrics`, a small MNIST classifier's features: NOT Inception-FID)
  of 500 DDIM-50 samples and of 100 DDPM-1000 samples, against the 4,500 training digits, beside the same numbers
  for real held-out digits (the floor at the same sample size).
- Bits per dimension of held-out digits from the variational bound (`ddpm_lite.elbo.vlb_terms`, DDPM eq. 5 with the
  discretised decoder of eq. 13), sigma_t^2 = beta_t, with its standard error.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from ddpm_lite.data import load_mnist
from ddpm_lite.elbo import vlb_terms
from ddpm_lite.metrics import digit_metrics, load_digit_classifier
from ddpm_lite.samplers import ddim_sample, ddpm_sample
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import load_ema_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddim-samples", type=int, default=500)
    parser.add_argument("--ddpm-samples", type=int, default=100)
    parser.add_argument("--bpd-digits", type=int, default=100, help="held-out digits for bits/dim")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, config = load_ema_model(args.checkpoint)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    train_set, train_source = load_mnist(train=True)
    test_set, test_source = load_mnist(train=False)
    reference, held_out = train_set.tensors[0], test_set.tensors[0]
    classifier = load_digit_classifier()
    shape = (1, 28, 28)
    print(f"checkpoint: {args.checkpoint} (step {torch.load(args.checkpoint, weights_only=False)['step']})")
    print(f"reference: {train_source}\nheld out: {test_source}\n")

    rows = []
    for n in (args.ddim_samples, args.ddpm_samples):
        real = digit_metrics(held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))[:n]],
                             reference, classifier)
        rows.append((f"real held-out digits (floor), n={n}", real, 0.0))
    def in_chunks(sample, n: int, seed: int) -> torch.Tensor:
        """Batches of 50: on a CPU, much larger batches run slower per image."""
        generator = torch.Generator().manual_seed(seed)
        return torch.cat([sample((min(50, n - i), *shape), generator) for i in range(0, n, 50)])

    start = time.perf_counter()
    samples = in_chunks(lambda s, g: ddim_sample(model, schedule, s, steps=50, generator=g, progress=False),
                        args.ddim_samples, 1)
    rows.append((f"DDIM-50 (eta=0), n={args.ddim_samples}", digit_metrics(samples.clamp(-1, 1), reference, classifier),
                 time.perf_counter() - start))
    start = time.perf_counter()
    samples = in_chunks(lambda s, g: ddpm_sample(model, schedule, s, generator=g, progress=False), args.ddpm_samples, 2)
    rows.append((f"DDPM-{config.T}, n={args.ddpm_samples}", digit_metrics(samples.clamp(-1, 1), reference, classifier),
                 time.perf_counter() - start))

    print("| images | Frechet distance (classifier features, not FID) | confident share (p >= 0.9) | classes covered | "
          "class counts 0-9 | sampling time |")
    print("|---|---|---|---|---|---|")
    for name, m, seconds in rows:
        counts = " ".join(str(int(c)) for c in m.class_histogram)
        print(f"| {name} | {m.frechet_distance:.2f} | {m.confident_share:.1%} | {m.classes_covered}/10 | {counts} | "
              f"{seconds:.0f} s |")

    start = time.perf_counter()
    digits = held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(3))[:args.bpd_digits]]
    bpd = torch.cat([
        vlb_terms(model, schedule, batch, variance="beta", generator=torch.Generator().manual_seed(4 + i)).bits_per_dim
        for i, batch in enumerate(digits.split(50))
    ])
    print(f"\nbits/dim on {len(digits)} held-out digits (variational bound, sigma^2 = beta_t, discretised decoder): "
          f"{bpd.mean():.3f} +- {bpd.std() / math.sqrt(len(bpd)):.3f} (s.e.), {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
