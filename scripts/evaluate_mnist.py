"""Measure an MNIST checkpoint as results/checkpoints.md reports it, and print a markdown table.

    python scripts/evaluate_mnist.py checkpoints/mnist.pt [--threads 2] [--out results/mnist_eval.csv]

- Offline digit metrics (`ddpm_lite.digits.digit_metrics`, a small MNIST classifier's features: NOT Inception-FID)
  of 500 DDIM-50 samples and of 100 DDPM-1000 samples, against the 4,500 training digits, beside the same numbers
  for real held-out digits (the floor at the same sample size).
- Bits per dimension of held-out digits from the variational bound (`ddpm_lite.elbo.vlb_terms`, DDPM eq. 5 with the
  discretised decoder of eq. 13), sigma_t^2 = beta_t, with its standard error.
"""

from __future__ import annotations

import math
import time

import torch

from ddpm_lite.checkpoints import load_for_sampling
from ddpm_lite.data import load_mnist
from ddpm_lite.digits import digit_metrics, load_digit_classifier
from ddpm_lite.elbo import vlb_terms
from ddpm_lite.evaluate import machine_line, markdown_table, script_parser, write_rows
from ddpm_lite.samplers import ddim_sample, ddpm_sample, sample_in_batches

BATCH = 50  # images per sampler call: on a CPU, much larger batches run slower per image
COLUMNS = {"images": "images", "Frechet distance (classifier features, not FID)": "frechet_distance:.2f",
           "confident share (p >= 0.9)": "confident_share:.1%", "classes covered": "classes_covered",
           "class counts 0-9": "class_counts", "sampling time": "seconds:.0f"}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--ddim-samples", type=int, default=500)
    parser.add_argument("--ddpm-samples", type=int, default=100)
    parser.add_argument("--bpd-digits", type=int, default=100, help="held-out digits for bits/dim")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))

    model, schedule, config = load_for_sampling(args.checkpoint, "cpu")
    train_set, train_source = load_mnist(train=True)
    test_set, test_source = load_mnist(train=False)
    reference, held_out = train_set.tensors[0], test_set.tensors[0]
    classifier = load_digit_classifier()
    print(f"checkpoint: {args.checkpoint} (step {torch.load(args.checkpoint, weights_only=False)['step']})")
    print(f"reference: {train_source}\nheld out: {test_source}\n")

    def row(images: str, generated: torch.Tensor, seconds: float) -> dict:
        m = digit_metrics(generated.clamp(-1, 1), reference, classifier)
        return dict(images=images, frechet_distance=m.frechet_distance, confident_share=m.confident_share,
                    classes_covered=f"{m.classes_covered}/10", class_counts=" ".join(map(str, m.class_histogram)),
                    seconds=seconds)

    rows = []
    for n in (args.ddim_samples, args.ddpm_samples):  # a random n of the held-out digits (stored sorted by class)
        real = held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(0))[:n]]
        rows.append(row(f"real held-out digits (floor), n={n}", real, 0.0))
    for label, n, seed, sample in [
        (f"DDIM-50 (eta=0), n={args.ddim_samples}", args.ddim_samples, 1,
         lambda shape, g: ddim_sample(model, schedule, shape, steps=50, generator=g, progress=False)),
        (f"DDPM-{config.T}, n={args.ddpm_samples}", args.ddpm_samples, 2,
         lambda shape, g: ddpm_sample(model, schedule, shape, generator=g, progress=False)),
    ]:
        start = time.perf_counter()
        samples = sample_in_batches(lambda batch_rows, g: sample((len(range(n)[batch_rows]), 1, 28, 28), g), n, BATCH,
                                    generator=torch.Generator().manual_seed(seed))
        rows.append(row(label, samples, time.perf_counter() - start))
    print(markdown_table(rows, COLUMNS))

    start = time.perf_counter()
    digits = held_out[torch.randperm(len(held_out), generator=torch.Generator().manual_seed(3))[:args.bpd_digits]]
    bpd = torch.cat([
        vlb_terms(model, schedule, batch, variance="beta", generator=torch.Generator().manual_seed(4 + i)).bits_per_dim
        for i, batch in enumerate(digits.split(50))
    ])
    print(f"\nbits/dim on {len(digits)} held-out digits (variational bound, sigma^2 = beta_t, discretised decoder): "
          f"{bpd.mean():.3f} +- {bpd.std() / math.sqrt(len(bpd)):.3f} (s.e.), {time.perf_counter() - start:.0f} s")
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
