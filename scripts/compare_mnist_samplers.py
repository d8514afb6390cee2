"""Digit metrics of the MNIST checkpoint under several DDIM settings (100 samples each, same seed).

    python scripts/compare_mnist_samplers.py checkpoints/mnist.pt [--n 100] [--threads 2] [--out FILE.csv]

Prints one line per (steps, eta, clip_x0): Frechet distance in the digit classifier's features (NOT Inception-FID)
against the 4,500 training digits, the confident share and the classes covered, and the wall time.
"""

from __future__ import annotations

import time

import torch

from ddpm_lite.checkpoints import load_for_sampling
from ddpm_lite.data import load_mnist
from ddpm_lite.digits import digit_metrics, load_digit_classifier
from ddpm_lite.evaluate import machine_line, markdown_table, script_parser, write_rows
from ddpm_lite.samplers import ddim_sample

SETTINGS = [(50, 0.0, False), (50, 0.0, True), (50, 1.0, False), (100, 1.0, False), (100, 0.0, False), (200, 1.0, False)]
COLUMNS = {"sampler": "sampler", "Frechet distance (not FID)": "frechet_distance:.2f",
           "confident share": "confident_share:.0%", "classes covered": "classes_covered", "time": "seconds:.0f"}


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    model, schedule, _ = load_for_sampling(args.checkpoint, "cpu")
    reference = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier()
    rows = []
    for steps, eta, clip in SETTINGS:
        start = time.perf_counter()
        x = ddim_sample(model, schedule, (args.n, 1, 28, 28), steps=steps, eta=eta, clip_x0=clip,
                        generator=torch.Generator().manual_seed(1), progress=False)
        m = digit_metrics(x.clamp(-1, 1), reference, classifier)
        rows.append(dict(sampler=f"DDIM-{steps}, eta={eta:g}" + (", clip x_0" if clip else ""),
                         frechet_distance=m.frechet_distance, confident_share=m.confident_share,
                         classes_covered=f"{m.classes_covered}/10", seconds=time.perf_counter() - start))
    print(markdown_table(rows, COLUMNS))
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
