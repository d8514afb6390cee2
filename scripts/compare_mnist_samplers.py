"""Digit metrics of the MNIST checkpoint under several DDIM settings (100 samples each, same seed).

    python scripts/compare_mnist_samplers.py checkpoints/mnist.pt

Prints one line per (steps, eta, clip_x0): Frechet distance in the digit classifier's features (NOT Inception-FID)
against the 4,500 training digits, the confident share and the classes covered, and the wall time.
"""

import argparse
import time

import torch

from ddpm_lite.data import load_mnist
from ddpm_lite.metrics import digit_metrics, load_digit_classifier
from ddpm_lite.samplers import ddim_sample
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import load_ema_model

SETTINGS = [(50, 0.0, False), (50, 0.0, True), (50, 1.0, False), (100, 1.0, False), (100, 0.0, False), (200, 1.0, False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, config = load_ema_model(args.checkpoint)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    reference = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier()
    print("| sampler | Frechet distance (not FID) | confident share | classes covered | time |")
    print("|---|---|---|---|---|")
    for steps, eta, clip in SETTINGS:
        start = time.perf_counter()
        x = ddim_sample(model, schedule, (args.n, 1, 28, 28), steps=steps, eta=eta, clip_x0=clip,
                        generator=torch.Generator().manual_seed(1), progress=False)
        m = digit_metrics(x.clamp(-1, 1), reference, classifier)
        label = f"DDIM-{steps}, eta={eta:g}" + (", clip x_0" if clip else "")
        print(f"| {label} | {m.frechet_distance:.2f} | {m.confident_share:.0%} | {m.classes_covered}/10 | "
              f"{time.perf_counter() - start:.0f} s |", flush=True)


if __name__ == "__main__":
    main()
