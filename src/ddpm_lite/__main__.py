"""Command line: `python -m ddpm_lite train ...` and `python -m ddpm_lite sample ...`.

    python -m ddpm_lite train --config 2d                      # the 2-D mixture; prints sliced Wasserstein
    python -m ddpm_lite train --config mnist --out runs/mnist  # the tuned recipe (results/benchmarks.md)
    python -m ddpm_lite train --config mnist-ddpm --out runs/mnist-ddpm  # the committed checkpoint's (checkpoints/)
    python -m ddpm_lite train --config mnist --out runs/mnist --resume   # continue after an interruption
    python -m ddpm_lite sample --checkpoint runs/mnist/checkpoint.pt --sampler ddim --steps 50 --out samples.png
    python -m ddpm_lite sample --checkpoint checkpoints/mnist.pt --sampler dpmpp-2m --steps 10 --spacing karras
    torchrun --nproc_per_node=8 -m ddpm_lite train --config cifar10       # 8 GPUs (docs/cifar10.md)
    python -m ddpm_lite fid --checkpoint runs/cifar10/checkpoint.pt --n 50000 --sampler ddim --steps 100

A mistake in the options or files ends with one line `error: ...` and exit code 2, before any training or sampling;
`--debug` (or DDPM_LITE_DEBUG=1) shows the traceback instead. Ctrl-C or SIGTERM during training writes a checkpoint at
the step reached and prints the command that resumes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
import typing
from pathlib import Path

import torch

from ddpm_lite.checkpoints import (
    CHECKPOINT_NAME,
    CheckpointError,
    CheckpointWriteError,
    check_config,
    export_checkpoint,
    load_for_sampling,
    prepare_run_folder,
    read_checkpoint,
)
from ddpm_lite import distributed
from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.data import TOY_DATA, load_cifar10, load_mnist, toy_points
from ddpm_lite.devices import pick_device
from ddpm_lite.train import NonFiniteLossError, TrainingInterrupted, check_streams, streams_mismatch, train

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")  # what matplotlib writes, by the file name's suffix


class CommandError(Exception):
    """A mistake in the command line's options or files; `main` prints it as one line `error: ...`."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own complaints (unknown option, bad choice) as one line too
        raise CommandError(f"{message} (see `{self.prog} --help`)")


def _at_least_one(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise CommandError(f"{option} must be at least 1, got {value}")


def _device(name: str | None) -> torch.device:
    """--device, checked: a device type this machine has."""
    try:
        device = pick_device(name)
    except RuntimeError:
        raise CommandError(f"--device must be cuda, mps or cpu, got {name!r}") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise CommandError(f"--device {name}: no {device.type} device is available here (have: "
                           f"{', '.join(k for k, v in available.items() if v)})")
    return device


def _writable_image(option: str, path: Path) -> None:
    """An image file that can be written: a known suffix, not a folder, in a folder that can be written."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise CommandError(f"{option} {path}: the file name must end in one of {', '.join(IMAGE_SUFFIXES)}")
    _writable_file(option, path)


def _writable_file(option: str, path: Path) -> None:
    if path.is_dir():
        raise CommandError(f"{option} {path} is a folder; give a file name inside it")
    _writable_folder(option, path.parent)


def _writable_folder(option: str, folder: Path) -> None:
    try:
        prepare_run_folder(folder)
    except CheckpointWriteError as error:
        raise CommandError(f"{option}: {error}") from None


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


def _training_data(config: TrainConfig) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """`load_training_data` for a command: rank 0 first (it may download), a missing dataset as a one-line error."""
    try:
        with distributed.rank_zero_first():  # the other processes then read rank 0's files
            return load_training_data(config)
    except FileNotFoundError as error:  # CIFAR-10 offline: the message says where to put the files
        raise CommandError(str(error)) from None


def sample_grid_writer(config: TrainConfig, out: Path, sample_shape: tuple[int, ...]):
    """A `train` callback that writes a grid of 64 DDIM-50 samples (images) or 2,000 points (2-D) of the EMA network
    to out/samples_stepNNNNNNN.png every `config.sample_every` steps before the last, for watching progress. A grid
    that cannot be written is reported in one line on stderr; training goes on."""
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
        try:
            _save_samples(samples.cpu(), path, path.stem, figsize=(5, 5), dpi=80)
        except Exception as error:  # a side task: report it and let training go on
            print(f"warning: could not write the sample grid {path} ({type(error).__name__}: {error}); "
                  f"training goes on", file=sys.stderr, flush=True)

    return write


def _fid_weights(option_value: str | None) -> Path:
    from ddpm_lite.fid import FIDWeightsNotFound, inception_weights

    try:
        return inception_weights(option_value)
    except FIDWeightsNotFound as error:
        raise CommandError(str(error)) from None


def _fid_reference(config: TrainConfig, images: torch.Tensor, source: str, n: int | None
                   ) -> tuple[torch.Tensor, str, str]:
    """FID's reference set: the training images, or a random n of them (the same n every time); with its name in
    the statistics cache and a sentence naming it."""
    name = f"{config.data}-train"
    if n and n < len(images):
        subset = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:n]
        return images[subset], f"{name}-random", f"a random {n:,} of {source}"
    return images, name, source


SAMPLERS = ("ddpm", "ddim", "euler", "heun", "dpmpp-2m")  # the last three: ddpm_lite.solvers, on sigma grids
DDIM_SPACINGS = ("uniform", "quadratic")  # ddpm_lite.samplers.ddim_timesteps


def _sampler(model: torch.nn.Module, schedule, sampler: str, steps: int, device: torch.device, *, eta: float = 0.0,
             spacing: str | None = None, clip: bool = False, sigma_max: float | None = None):
    """(sample(shape, generator) -> samples, label) for --sampler, --steps, --eta, --spacing, --clip and --sigma-max,
    checked."""
    from ddpm_lite.samplers import ddim_sample, ddpm_sample
    from ddpm_lite.solvers import SigmaSpacing, fast_sample, nfe, sigma_schedule

    if not (math.isfinite(eta) and eta >= 0):
        raise CommandError(f"--eta must be a number >= 0 (0 deterministic, 1 DDPM-like), got {eta}")
    if sampler != "ddpm" and not 1 <= steps <= schedule.T:
        raise CommandError(f"--steps must be in [1, T] = [1, {schedule.T}] for this checkpoint, got {steps}")
    fast = sampler not in ("ddpm", "ddim")
    spacing = spacing or ("karras" if fast else "uniform")
    allowed = typing.get_args(SigmaSpacing) if fast else DDIM_SPACINGS
    if sampler != "ddpm" and spacing not in allowed:
        raise CommandError(f"--spacing {spacing} does not apply to --sampler {sampler}; choose one of "
                           f"{', '.join(allowed)}")
    if clip and fast:
        raise CommandError(f"--clip applies to the ddpm and ddim samplers, not {sampler}")
    if sigma_max is not None:
        if spacing not in ("karras", "log-snr"):
            raise CommandError(f"--sigma-max caps the karras and log-snr grids of the solvers, not --sampler "
                               f"{sampler} with spacing {spacing}")
        try:
            sigma_schedule(schedule, steps, spacing, sigma_max=sigma_max)
        except ValueError as error:
            raise CommandError(f"--sigma-max: {error}") from None

    def sample(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        if sampler == "ddpm":
            return ddpm_sample(model, schedule, shape, generator=generator, device=device, clip_x0=clip, progress=False)
        if sampler == "ddim":
            return ddim_sample(model, schedule, shape, steps=steps, eta=eta, spacing=spacing, generator=generator,
                               device=device, clip_x0=clip, progress=False)
        return fast_sample(model, schedule, shape, solver=sampler, steps=steps, spacing=spacing, sigma_max=sigma_max,
                           generator=generator, device=device, progress=False)

    if sampler == "ddpm":
        label = f"DDPM-{schedule.T}"
    elif sampler == "ddim":
        label = f"DDIM-{steps} (eta={eta}, {spacing})"
    else:
        cap = "" if sigma_max is None else f", sigma_max {sigma_max:g}"
        label = f"{sampler} {steps} steps, {nfe(sampler, steps)} NFE ({spacing}{cap})"
    return sample, label


def fid_logger(config: TrainConfig, out: Path, metric, n: int, every: int, device: torch.device):
    """A `train` callback (rank 0) that every `every` steps prints the FID of n DDIM-50 samples of the EMA network
    against the reference statistics in `metric`, and appends it to out/fid.csv with its sample size (FID at small n
    is biased upwards: compare rows of equal n only)."""
    from ddpm_lite.fid import fid_of_sampler
    from ddpm_lite.schedules import NoiseSchedule

    schedule = NoiseSchedule.named(config.schedule, config.T)
    shape = (config.model.image_channels, config.model.image_size, config.model.image_size)
    table = out / "fid.csv"

    def log(step: int, model: torch.nn.Module, ema: torch.nn.Module) -> None:
        if step % every:
            return
        was_training = ema.training
        ema.eval()
        sample, _ = _sampler(ema, schedule, "ddim", 50, device)
        start = time.perf_counter()
        fid = fid_of_sampler(metric, lambda count, generator: sample((count, *shape), generator), n,
                             batch_size=min(n, 250), seed=config.seed, progress=False, shared=False)
        metric.reset()  # the fake-image sums; the reference's are kept
        ema.train(was_training)
        print(f"step {step}: FID {fid:.2f} of {n} DDIM-50 samples of the EMA network "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
        new = not table.exists()
        with table.open("a") as file:
            file.write("step,fid,n,sampler\n" * new + f"{step},{fid:.4f},{n},ddim-50\n")

    return log


def cmd_train(args: argparse.Namespace) -> None:
    config = CONFIGS[args.config]
    for option in ("steps", "checkpoint_every", "batch_size", "data_streams", "fid_every", "fid_n", "fid_reference_n"):
        _at_least_one("--" + option.replace("_", "-"), getattr(args, option))
    overrides = {k: getattr(args, k) for k in ("steps", "checkpoint_every", "batch_size") if getattr(args, k)}
    config = dataclasses.replace(config, **overrides)
    out = Path(args.out or f"runs/{config.name}")
    device = _device(args.device)
    if distributed.launched():  # started by torchrun: one process per device, joined into one group
        device = distributed.init_from_env(device.type)
    rank, world = distributed.rank(), distributed.world_size()
    streams = args.data_streams or world
    try:
        check_streams(config.batch_size, streams, world)
    except ValueError as error:
        raise CommandError(str(error)) from None
    checkpoint = out / CHECKPOINT_NAME
    if args.resume:  # the checkpoint must be a training one of this config, before any data is loaded
        state = read_checkpoint(checkpoint, "training")
        check_config(state, checkpoint, expected=config)
        saved = len(state["rng"].get("streams", [None]))
        if saved != streams and not args.reshard:
            raise CommandError(streams_mismatch(checkpoint, saved, streams, world))
    elif checkpoint.exists():
        raise CommandError(f"{out} already holds a run's checkpoint; add --resume to continue it, or choose another "
                           f"--out")
    if rank == 0:
        _writable_folder("--out", out)
    images, labels, source = _training_data(config)
    callbacks = [sample_grid_writer(config, out, tuple(images.shape[1:]))]
    if args.fid_every:
        if images.ndim != 4:
            raise CommandError("--fid-every: FID is for images; this config trains on 2-D points")
        from ddpm_lite.fid import frechet_inception, reference_statistics

        weights = _fid_weights(args.fid_weights)
        metric = frechet_inception(weights, device, sync=False)
        reference, name, _ = _fid_reference(config, images, source, args.fid_reference_n)
        reference_statistics(metric, reference, name, weights)  # every process takes part
        callbacks.append(fid_logger(config, out, metric, args.fid_n, args.fid_every, device))
    if device.type == "cuda":  # TensorFloat-32 matrix products for what autocast leaves in float32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.tf32
    if rank == 0:
        group = f" x {world} processes ({config.batch_size // world} images each)" if world > 1 else ""
        print(f"config {config.name}: {config}\ndata: {source}\ndevice: {device}{group}\noutput: {out}", flush=True)
    result = train(config, images, out, resume=args.resume, device=device, progress=not args.no_progress,
                   labels=labels, callback=lambda *state: [callback(*state) for callback in callbacks],
                   data_streams=args.data_streams, reshard=args.reshard, compile=args.compile)
    if rank > 0:
        return
    print(f"trained to step {len(result.losses)} in {result.seconds:.1f} s this run; "
          f"mean loss of the last 100 steps {sum(result.losses[-100:]) / len(result.losses[-100:]):.4f}; "
          f"checkpoint {result.checkpoint}")
    if images.ndim == 2:
        from ddpm_lite.evaluate import toy_sample_report

        print(toy_sample_report(result.ema, config, device))


def cmd_sample(args: argparse.Namespace) -> None:
    _at_least_one("--n", args.n)
    device = _device(args.device)
    _writable_image("--out", Path(args.out))
    model, schedule, config = load_for_sampling(args.checkpoint, device)
    sample, label = _sampler(model, schedule, args.sampler, args.steps, device, eta=args.eta, spacing=args.spacing,
                             clip=args.clip, sigma_max=args.sigma_max)
    if args.metrics and config.data != "mnist":
        raise CommandError(f"--metrics reads MNIST digits, but {args.checkpoint} was trained on {config.data}")
    shape = (args.n, 2) if config.data in TOY_DATA else (
        args.n, config.model.image_channels, config.model.image_size, config.model.image_size)
    start = time.perf_counter()
    samples = sample(shape, torch.Generator().manual_seed(args.seed))
    samples = samples.cpu()
    seconds = time.perf_counter() - start
    print(f"{args.n} samples with {label} in {seconds:.1f} s ({seconds / args.n:.3f} s per sample)")
    _save_samples(samples, Path(args.out), label)
    print(f"wrote {args.out}")
    if args.metrics:
        from ddpm_lite.digits import digit_metrics

        reference, source = load_mnist(train=False)
        print(f"digit metrics against held-out digits ({source}):")
        print(digit_metrics(samples.clamp(-1, 1), reference.tensors[0]))


def cmd_fid(args: argparse.Namespace) -> None:
    from ddpm_lite.fid import fid_of_sampler, frechet_inception, reference_statistics

    for option in ("n", "batch", "reference_n"):
        _at_least_one("--" + option.replace("_", "-"), getattr(args, option))
    if args.n < 2:
        raise CommandError(f"--n must be at least 2 (FID fits a covariance), got {args.n}")
    device = _device(args.device)
    if distributed.launched():
        device = distributed.init_from_env(device.type)
    model, schedule, config = load_for_sampling(args.checkpoint, device)
    if config.data in TOY_DATA:
        raise CommandError(f"FID is for images, but {args.checkpoint} was trained on 2-D points ({config.data})")
    if getattr(config.model, "num_classes", 0):
        raise CommandError(f"{args.checkpoint} is class-conditional; FID here samples unconditional models")
    sample, label = _sampler(model, schedule, args.sampler, args.steps, device, eta=args.eta, spacing=args.spacing,
                             sigma_max=args.sigma_max)
    shape = (config.model.image_channels, config.model.image_size, config.model.image_size)
    weights = _fid_weights(args.fid_weights)
    images, _, source = _training_data(config)
    images, name, source = _fid_reference(config, images, source, args.reference_n)
    rank = distributed.rank()
    metric = frechet_inception(weights, device)
    start = time.perf_counter()
    cache, cached = reference_statistics(metric, images, name, weights)
    if rank == 0:
        print(f"reference: {len(images):,} images, {source}; Inception statistics "
              f"{'read from' if cached else 'computed and written to'} {cache}", flush=True)
    fid = fid_of_sampler(metric, lambda count, generator: sample((count, *shape), generator), args.n,
                         batch_size=args.batch, seed=args.seed, progress=not args.no_progress)
    if rank == 0:
        print(f"FID {fid:.4f}: {args.n:,} samples of {args.checkpoint} ({label}, seed {args.seed}) against "
              f"{len(images):,} reference images, in {time.perf_counter() - start:.1f} s on "
              f"{distributed.world_size()} process(es); Inception weights {weights}")


def cmd_export(args: argparse.Namespace) -> None:
    _writable_file("--out", Path(args.out))
    if Path(args.out).resolve() == Path(args.checkpoint).resolve():
        raise CommandError(f"--out {args.out} is the checkpoint itself; write the export to another file")
    out = export_checkpoint(args.checkpoint, args.out)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): config and EMA weights, for sampling only")


def _save_samples(samples: torch.Tensor, path: Path, label: str, figsize=(6, 6), dpi: int = 100) -> None:
    """A PNG of the first 64 images (grey or colour) or of all 2-D points (on the square the notebooks use), titled
    `label`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ddpm_lite.viz import POINT_LIMIT, show_samples

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=figsize)
    show_samples(samples[:64] if samples.ndim == 4 else samples, ax, label, limit=POINT_LIMIT)  # limit: points only
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code: 0, 2 for a mistake in the options or files (one line on stderr), 1 for
    a run stopped by a non-finite loss or a failed write, 130 / 143 after Ctrl-C / SIGTERM (checkpoint written)."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv or os.environ.get("DDPM_LITE_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}
    parser = _Parser(prog="python -m ddpm_lite", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error instead of one line")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("train", help="train a noise predictor with DDPM Algorithm 1")
    p.add_argument("--config", choices=sorted(CONFIGS), required=True, help="preset in ddpm_lite.configs.CONFIGS")
    p.add_argument("--steps", type=int, help="total optimiser steps (default: the preset's)")
    p.add_argument("--out", help="output folder for checkpoint.pt and sample grids (default: runs/<config>)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint.pt")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="global batch, split across processes under torchrun (default: the "
                                                  "preset's)")
    p.add_argument("--data-streams", type=int, help="random streams the batch is drawn from, a multiple of the number "
                                                    "of processes (default: one per process; ddpm_lite.distributed)")
    p.add_argument("--reshard", action="store_true", help="with --resume: start new data streams when the "
                                                          "checkpoint's number differs (not exact)")
    p.add_argument("--compile", action="store_true", help="run the network through torch.compile")
    p.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=True,
                   help="CUDA: TensorFloat-32 matrix products outside bf16 autocast (default: on)")
    p.add_argument("--fid-every", type=int, help="images: print and log to <out>/fid.csv the FID of --fid-n DDIM-50 "
                                                 "samples every this many steps")
    p.add_argument("--fid-n", type=int, default=1000, help="samples per periodic FID (default 1000)")
    p.add_argument("--fid-reference-n", type=int, help="--fid-every: compare with a random subset of this many "
                                                       "training images (default: all)")
    p.add_argument("--fid-weights", help="the Inception weights file for --fid-every (see the fid command)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser("sample", help="sample from a checkpoint's EMA weights and save a PNG grid")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm",
                   help="ddpm (T steps), ddim, or an ODE solver of ddpm_lite.solvers: euler, heun, dpmpp-2m")
    p.add_argument("--steps", type=int, default=50, help="steps of ddim or a solver (ddpm always takes T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    p.add_argument("--spacing", help="ddim: uniform (default) or quadratic; solvers: karras (default), log-snr, "
                                     "leading, trailing or linspace")
    p.add_argument("--sigma-max", type=float, help="solvers on the karras or log-snr grid: start there instead of at "
                                                   "the schedule's top level (EDM's is 80)")
    p.add_argument("--clip", action="store_true", help="clip the predicted x_0 to [-1, 1] at every step")
    p.add_argument("--n", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="samples.png", help="image file (.png, .jpg, .pdf or .svg)")
    p.add_argument("--metrics", action="store_true", help="MNIST: print the offline digit metrics of the samples")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.set_defaults(run=cmd_sample)

    p = commands.add_parser("fid", help="Inception FID of a checkpoint's samples against its training set")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", "--num-samples", dest="n", type=int, default=50_000,
                   help="number of samples (papers: 50,000); under torchrun write --num-samples (torchrun reads --n "
                        "as an abbreviation of its own options)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="as for the sample command")
    p.add_argument("--steps", type=int, default=100, help="steps of ddim or a solver (ddpm always takes T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like")
    p.add_argument("--spacing", help="as for the sample command")
    p.add_argument("--sigma-max", type=float, help="as for the sample command")
    p.add_argument("--batch", type=int, default=500, help="samples per sampling batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference-n", type=int, help="compare with a random subset of this many training images "
                                                   "(default: all, as the papers)")
    p.add_argument("--fid-weights", help="the Inception weights file (default: $DDPM_LITE_FID_WEIGHTS, else "
                                         "torch hub's cache, downloaded when online)")
    p.add_argument("--device", help="cuda, mps or cpu (default: the best available)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_fid)

    p = commands.add_parser("export", help="write a small sampling-only copy of a checkpoint (EMA weights)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_export, threads=None)

    try:
        args = parser.parse_args(argv)
        _at_least_one("--threads", args.threads)
        if args.threads:
            torch.set_num_threads(args.threads)
        args.run(args)
    except (CommandError, CheckpointError, CheckpointWriteError, NonFiniteLossError) as error:
        if debug:
            raise
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2 if isinstance(error, (CommandError, CheckpointError)) else 1
    except TrainingInterrupted as stop:
        again = [a for a in argv if a != "--resume"] + ["--resume"]
        launcher = (f"torchrun --nproc_per_node={distributed.world_size()} -m ddpm_lite" if distributed.launched()
                    else "python -m ddpm_lite")
        if distributed.rank() == 0:
            print(f"stopped by {stop.signal_name} at step {stop.step}; checkpoint written to {stop.checkpoint}; "
                  f"continue with: {launcher} {shlex.join(again)}", file=sys.stderr)
        return 130 if stop.signal_name == "SIGINT" else 143
    finally:
        distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
