"""Classifier-free guidance on MNIST: accuracy of the requested digit and diversity as the guidance weight w grows.

    python scripts/evaluate_guidance.py checkpoints/mnist_cfg.pt [--per-class 50] [--weights 0,0.5,1,2,3,5]
        [--sampler ddim --steps 100 --eta 1] [--device cuda --batch 500] [--out results/guidance.csv]

For each w: `per-class` samples of every digit 0-9 drawn with `ddpm_lite.guidance.GuidedModel` (Ho & Salimans 2022,
eq. 6), then `ddpm_lite.metrics.conditional_metrics` with the course's offline classifier: accuracy (argmax equals
the requested digit), confident share, within-class diversity relative to real digits, and the Frechet distance in
the classifier's features (not Inception-FID) against the 4,500 training digits. The same noise for every w.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from ddpm_lite.data import load_mnist
from ddpm_lite.guidance import GuidedModel
from ddpm_lite.metrics import conditional_metrics, load_digit_classifier
from ddpm_lite.samplers import ddim_sample, ddpm_sample
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import load_ema_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--weights", default="0,0.5,1,2,3,5")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="CSV to write (optional)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, config = load_ema_model(args.checkpoint, args.device)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    train_set, source = load_mnist(train=True)
    reference, reference_labels = train_set.tensors
    classifier = load_digit_classifier()
    labels = torch.arange(10).repeat_interleave(args.per_class)
    print(f"{args.checkpoint}: {args.per_class} samples per digit, "
          f"{'DDPM-' + str(config.T) if args.sampler == 'ddpm' else f'DDIM-{args.steps} eta={args.eta}'}; "
          f"reference: {source}")
    rows, start_all = [], time.perf_counter()
    for w in (float(v) for v in args.weights.split(",")):
        start = time.perf_counter()
        chunks = []
        for i in range(0, len(labels), args.batch):
            guided = GuidedModel(model, labels[i:i + args.batch], w)
            shape = (len(labels[i:i + args.batch]), 1, 28, 28)
            generator = torch.Generator().manual_seed(100 + i)
            if args.sampler == "ddpm":
                x = ddpm_sample(guided, schedule, shape, generator=generator, device=args.device, progress=False)
            else:
                x = ddim_sample(guided, schedule, shape, steps=args.steps, eta=args.eta, generator=generator,
                                device=args.device, progress=False)
            chunks.append(x.cpu())
        m = conditional_metrics(torch.cat(chunks).clamp(-1, 1), labels, reference, reference_labels, classifier)
        rows.append(dict(w=w, accuracy=round(m.accuracy, 4), confident_share=round(m.confident_share, 4),
                         diversity=round(m.diversity, 4), frechet_distance=round(m.frechet_distance, 3), n=m.n,
                         seconds=round(time.perf_counter() - start, 1)))
        print(rows[-1], flush=True)
    print(f"total {time.perf_counter() - start_all:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
