"""Classifier-free guidance on MNIST: accuracy of the requested digit and diversity as the guidance weight w grows.

    python scripts/evaluate_guidance.py checkpoints/mnist_cfg.pt [--per-class 50] [--weights 0,0.5,1,2,3,5]
        [--sampler ddim --steps 100 --eta 1] [--device cuda --batch 500] [--threads 2] [--out results/guidance.csv]

For each w: `per-class` samples of every digit 0-9 drawn with `ddpm_lite.guidance.GuidedModel` (Ho & Salimans 2022,
eq. 6), then `ddpm_lite.digits.conditional_metrics` with the course's offline classifier: accuracy (argmax equals
the requested digit), confident share, within-class diversity relative to real digits, and the Frechet distance in
the classifier's features (not Inception-FID) against the 4,500 training digits. The same noise for every w.
"""

from __future__ import annotations

import time

import torch

from ddpm_lite.checkpoints import load_for_sampling
from ddpm_lite.data import load_mnist
from ddpm_lite.digits import conditional_metrics, load_digit_classifier
from ddpm_lite.evaluate import machine_line, markdown_table, script_parser, write_rows
from ddpm_lite.guidance import GuidedModel
from ddpm_lite.samplers import ddim_sample, ddpm_sample, sample_in_batches

COLUMNS = {"w": "w:g", "accuracy": "accuracy:.1%", "confident share (p >= 0.9)": "confident_share:.1%",
           "diversity": "diversity:.2f", "Frechet distance (classifier features, not FID)": "frechet_distance:.2f",
           "n": "n", "seconds": "seconds:.0f"}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--weights", default="0,0.5,1,2,3,5")
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddim")
    parser.add_argument("--steps", type=int, default=100, help="DDIM steps")
    parser.add_argument("--eta", type=float, default=1.0, help="DDIM eta")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))

    model, schedule, config = load_for_sampling(args.checkpoint, args.device)
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

        def sample(rows_of_batch: slice, generator: torch.Generator) -> torch.Tensor:
            guided = GuidedModel(model, labels[rows_of_batch], w)
            shape = (len(labels[rows_of_batch]), 1, 28, 28)
            if args.sampler == "ddpm":
                return ddpm_sample(guided, schedule, shape, generator=generator, progress=False)
            return ddim_sample(guided, schedule, shape, steps=args.steps, eta=args.eta, generator=generator,
                               progress=False)

        samples = sample_in_batches(sample, len(labels), args.batch, seed=100)  # the same noise for every w
        m = conditional_metrics(samples.clamp(-1, 1), labels, reference, reference_labels, classifier)
        rows.append(dict(w=w, accuracy=round(m.accuracy, 4), confident_share=round(m.confident_share, 4),
                         diversity=round(m.diversity, 4), frechet_distance=round(m.frechet_distance, 3), n=m.n,
                         seconds=round(time.perf_counter() - start, 1)))
        print(rows[-1], flush=True)
    print(markdown_table(rows, COLUMNS))
    print(f"total {time.perf_counter() - start_all:.0f} s")
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
