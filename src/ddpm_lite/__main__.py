"""Command line: `python -m ddpm_lite train ...` and `python -m ddpm_lite sample ...`.

    python -m ddpm_lite train --config 2d                      # ~1 min on a laptop CPU; prints sliced Wasserstein
    python -m ddpm_lite train --config mnist --out runs/mnist  # the tuned recipe (benchmarks/README.md)
    python -m ddpm_lite train --config mnist-ddpm --out runs/mnist-ddpm  # the committed checkpoint's (checkpoints/)
    python -m ddpm_lite train --config mnist --out runs/mnist --resume   # continue after an interruption
    python -m ddpm_lite sample --checkpoint runs/mnist/checkpoint.pt --sampler ddim --steps 50 --out samples.png
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from ddpm_lite.train import CONFIGS, TrainConfig, load_ema_model, pick_device, train


TOY_DATA = ("mixture", "swiss_roll", "two_moons")  # the 2-D configs' data


def draw_points(name: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, 2) of the 2-D data a config names."""
    from ddpm_lite import data

    if name == "mixture":
        return data.gaussian_mixture(n, generator=generator)[0]
    return getattr(data, name)(n, generator=generator)


def load_training_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The training set a config names: (N, ...) in the model's input range, labels (N,) for class-conditional
    models (else None), and a sentence naming the source."""
    from ddpm_lite import data

    if config.data in TOY_DATA:
        points = draw_points(config.data, config.n_points, torch.Generator().manual_seed(config.seed))
        name = "the course's 2-D Gaussian mixture" if config.data == "mixture" else config.data
        return points, None, f"{name} ({config.n_points:,} points)"
    if config.data == "mnist":
        dataset, source = data.load_mnist(train=True)
        images, labels = dataset.tensors
        return images, labels if getattr(config.model, "num_classes", 0) else None, source
    if config.data == "cifar10":
        from torchvision.datasets import CIFAR10

        root = Path("~/.cache/ddpm_lite").expanduser()
        cifar = CIFAR10(str(root), train=True, download=True)  # needs the internet the first time
        images = torch.from_numpy(cifar.data).permute(0, 3, 1, 2).float() / 127.5 - 1
        labels = torch.tensor(cifar.targets) if config.model.num_classes else None
        return images, labels, f"torchvision CIFAR-10 train split ({len(images):,} images)"
    raise ValueError(f"unknown data {config.data!r}")


def sample_points_report(model, config: TrainConfig, device) -> str:
    """For 2-D configs: sliced Wasserstein of 2,000 DDPM samples against the data, and the data-vs-data floor."""
    from ddpm_lite.metrics import sliced_wasserstein, sliced_wasserstein_floor
    from ddpm_lite.samplers import ddpm_sample
    from ddpm_lite.schedules import NoiseSchedule

    n = 2000
    schedule = NoiseSchedule.named(config.schedule, config.T)
    samples = ddpm_sample(model, schedule, (n, 2), generator=torch.Generator().manual_seed(1), device=device,
                          progress=False).cpu()

    def draw(size: int, generator: torch.Generator) -> torch.Tensor:
        return draw_points(config.data, size, generator)

    reference = draw(n, torch.Generator().manual_seed(2))
    distance = sliced_wasserstein(samples, reference, generator=torch.Generator().manual_seed(3))
    floor, spread = sliced_wasserstein_floor(draw, n, generator=torch.Generator().manual_seed(4))
    return (f"sliced Wasserstein (2,000 DDPM-{config.T} samples vs data): {distance:.4f}; data-vs-data floor at "
            f"the same size: {floor:.4f} +- {spread:.4f}; ratio {distance / floor:.2f}")


def cmd_train(args: argparse.Namespace) -> None:
    config = CONFIGS[args.config]
    overrides = {k: v for k, v in (("steps", args.steps), ("checkpoint_every", args.checkpoint_every)) if v}
    config = dataclasses.replace(config, **overrides)
    out = Path(args.out or f"runs/{config.name}")
    device = torch.device(args.device) if args.device else pick_device()
    images, labels, source = load_training_data(config)
    print(f"config {config.name}: {config}\ndata: {source}\ndevice: {device}\noutput: {out}", flush=True)
    result = train(config, images, out, resume=args.resume, device=device, progress=not args.no_progress,
                   labels=labels)
    print(f"trained to step {len(result.losses)} in {result.seconds:.1f} s this run; "
          f"mean loss of the last 100 steps {sum(result.losses[-100:]) / len(result.losses[-100:]):.4f}; "
          f"checkpoint {result.checkpoint}")
    if images.ndim == 2:
        print(sample_points_report(result.ema, config, device))


def cmd_sample(args: argparse.Namespace) -> None:
    from ddpm_lite.samplers import ddim_sample, ddpm_sample
    from ddpm_lite.schedules import NoiseSchedule

    device = torch.device(args.device) if args.device else pick_device()
    model, config = load_ema_model(args.checkpoint, device)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    generator = torch.Generator().manual_seed(args.seed)
    shape = (args.n, 2) if config.data in TOY_DATA else (
        args.n, config.model.image_channels, config.model.image_size, config.model.image_size)
    start = time.perf_counter()
    if args.sampler == "ddpm":
        samples = ddpm_sample(model, schedule, shape, generator=generator, device=device, clip_x0=args.clip)
    else:
        samples = ddim_sample(model, schedule, shape, steps=args.steps, eta=args.eta, generator=generator,
                              device=device, clip_x0=args.clip)
    samples = samples.cpu()
    seconds = time.perf_counter() - start
    label = "DDPM-" + str(config.T) if args.sampler == "ddpm" else f"DDIM-{args.steps} (eta={args.eta})"
    print(f"{args.n} samples with {label} in {seconds:.1f} s ({seconds / args.n:.3f} s per sample)")
    _save_samples(samples, Path(args.out), label)
    print(f"wrote {args.out}")
    if args.metrics and len(shape) == 4 and config.data == "mnist":
        from ddpm_lite.data import load_mnist
        from ddpm_lite.metrics import digit_metrics

        reference, source = load_mnist(train=False)
        print(f"digit metrics against held-out digits ({source}):")
        print(digit_metrics(samples.clamp(-1, 1), reference.tensors[0]))


def cmd_export(args: argparse.Namespace) -> None:
    from ddpm_lite.train import export_checkpoint

    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): config and EMA weights, for sampling only")


def _save_samples(samples: torch.Tensor, path: Path, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpm_lite.viz import show_samples

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 6))
    if samples.ndim == 4 and samples.shape[1] == 3:  # colour images (CIFAR-10)
        from torchvision.utils import make_grid

        ax.imshow(make_grid((samples[:64].clamp(-1, 1) + 1) / 2, nrow=8).permute(1, 2, 0).numpy())
        ax.set_axis_off()
        ax.set_title(label)
    else:
        show_samples(samples[:64] if samples.ndim == 4 else samples, ax, label)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a noise predictor with DDPM Algorithm 1")
    p.add_argument("--config", choices=sorted(CONFIGS), required=True, help="preset in ddpm_lite.train.CONFIGS")
    p.add_argument("--steps", type=int, help="total optimiser steps (default: the preset's)")
    p.add_argument("--out", help="output folder for checkpoint.pt and sample grids (default: runs/<config>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: the preset's)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("sample", help="sample from a checkpoint's EMA weights and save a PNG grid")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (DDPM always takes T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    p.add_argument("--clip", action="store_true", help="clip the predicted x_0 to [-1, 1] at every step")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png")
    p.add_argument("--metrics", action="store_true", help="MNIST: print the offline digit metrics of the samples")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(run=cmd_sample)

    p = commands.add_parser("export", help="write a small sampling-only copy of a checkpoint (EMA weights)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_export, threads=None)

    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.run(args)


if __name__ == "__main__":
    main(sys.argv[1:])
