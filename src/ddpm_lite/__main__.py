"""Command line: `python -m ddpm_lite train ...` and `python -m ddpm_lite sample ...`.

    python -m ddpm_lite train --config 2d                      # the 2-D mixture; prints sliced Wasserstein
    python -m ddpm_lite train --config mnist --out runs/mnist  # the tuned recipe (results/benchmarks.md)
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

from ddpm_lite.checkpoints import export_checkpoint, load_for_sampling
from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.data import TOY_DATA, load_cifar10, load_mnist, toy_points
from ddpm_lite.devices import pick_device
from ddpm_lite.train import train


def load_training_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """The training set a config names: (N, ...) in the model's input range, labels (N,) for class-conditional
    models (else None), and a sentence naming the source."""
    conditional = bool(getattr(config.model, "num_classes", 0))
    if config.data in TOY_DATA:
        points = toy_points(config.data, config.n_points, torch.Generator().manual_seed(config.seed))
        name = "the course's 2-D Gaussian mixture" if config.data == "mixture" else config.data
        return points, None, f"{name} ({config.n_points:,} points)"
    if config.data in ("mnist", "cifar10"):
        dataset, source = load_mnist(train=True) if config.data == "mnist" else load_cifar10(train=True)
        images, labels = dataset.tensors
        return images, labels if conditional else None, source
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
        return toy_points(config.data, size, generator)

    reference = draw(n, torch.Generator().manual_seed(2))
    distance = sliced_wasserstein(samples, reference, generator=torch.Generator().manual_seed(3))
    floor, spread = sliced_wasserstein_floor(draw, n, generator=torch.Generator().manual_seed(4))
    return (f"sliced Wasserstein (2,000 DDPM-{config.T} samples vs data): {distance:.4f}; data-vs-data floor at "
            f"the same size: {floor:.4f} +- {spread:.4f}; ratio {distance / floor:.2f}")


def sample_grid_writer(config: TrainConfig, out: Path, sample_shape: tuple[int, ...]):
    """A `train` callback that writes a grid of 64 DDIM-50 samples (images) or 2,000 points (2-D) of the EMA network
    to out/samples_stepNNNNNNN.png every `config.sample_every` steps before the last, for watching progress."""
    from ddpm_lite.samplers import ddim_sample
    from ddpm_lite.schedules import NoiseSchedule

    schedule = NoiseSchedule.named(config.schedule, config.T)
    n = 64 if len(sample_shape) == 3 else 2000

    def write(step: int, model: torch.nn.Module, ema: torch.nn.Module) -> None:
        if not config.sample_every or step % config.sample_every or step >= config.steps:
            return
        was_training = ema.training
        ema.eval()
        generator = torch.Generator().manual_seed(config.seed)
        samples = ddim_sample(ema, schedule, (n, *sample_shape), steps=50, generator=generator, progress=False)
        ema.train(was_training)
        path = out / f"samples_step{step:07d}.png"
        _save_samples(samples.cpu(), path, path.stem, figsize=(5, 5), dpi=80)

    return write


def cmd_train(args: argparse.Namespace) -> None:
    config = CONFIGS[args.config]
    overrides = {k: v for k, v in (("steps", args.steps), ("checkpoint_every", args.checkpoint_every)) if v}
    config = dataclasses.replace(config, **overrides)
    out = Path(args.out or f"runs/{config.name}")
    device = pick_device(args.device)
    images, labels, source = load_training_data(config)
    print(f"config {config.name}: {config}\ndata: {source}\ndevice: {device}\noutput: {out}", flush=True)
    result = train(config, images, out, resume=args.resume, device=device, progress=not args.no_progress,
                   labels=labels, callback=sample_grid_writer(config, out, tuple(images.shape[1:])))
    print(f"trained to step {len(result.losses)} in {result.seconds:.1f} s this run; "
          f"mean loss of the last 100 steps {sum(result.losses[-100:]) / len(result.losses[-100:]):.4f}; "
          f"checkpoint {result.checkpoint}")
    if images.ndim == 2:
        print(sample_points_report(result.ema, config, device))


def cmd_sample(args: argparse.Namespace) -> None:
    from ddpm_lite.samplers import ddim_sample, ddpm_sample

    device = pick_device(args.device)
    model, schedule, config = load_for_sampling(args.checkpoint, device)
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
        from ddpm_lite.digits import digit_metrics

        reference, source = load_mnist(train=False)
        print(f"digit metrics against held-out digits ({source}):")
        print(digit_metrics(samples.clamp(-1, 1), reference.tensors[0]))


def cmd_export(args: argparse.Namespace) -> None:
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): config and EMA weights, for sampling only")


def _save_samples(samples: torch.Tensor, path: Path, label: str, figsize=(6, 6), dpi: int = 100) -> None:
    """A PNG of the first 64 images (grey or colour) or of all 2-D points, titled `label`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpm_lite.viz import show_samples

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=figsize)
    show_samples(samples[:64] if samples.ndim == 4 else samples, ax, label)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ddpm_lite", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a noise predictor with DDPM Algorithm 1")
    p.add_argument("--config", choices=sorted(CONFIGS), required=True, help="preset in ddpm_lite.configs.CONFIGS")
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
