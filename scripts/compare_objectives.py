"""What the network predicts and how the loss weights the noise levels, on MNIST at an equal budget (notebook 11).

    python scripts/compare_objectives.py all [--objectives eps,x0,...] [--steps 2000] [--every 500] [--workers 2]
        [--threads 1] --out DIR
        every objective in its own process, `--workers` at a time (two 1-thread workers use a 2-core machine best);
    python scripts/compare_objectives.py run --objective NAME [--steps 2000] [--every 500] [--samples 300]
        [--digits 50] [--threads 2] --out DIR
        one objective: writes DIR/NAME.json (its record, rewritten at every evaluation) and DIR/NAME.pt (the EMA
        weights, exported for sampling);
    python scripts/compare_objectives.py speed [--objectives eps,x0,...] [--steps 30] [--threads 2]
        each objective's training images/s, so that equal steps can be checked to be an equal budget;
    python scripts/compare_objectives.py report DIR [--out results/objectives_mnist.csv]
        the markdown tables for results/, and with --out the quality curves as CSV and each digit's bits/dim
        beside it (NAME_bpd.csv; a notebook recomputes any digit's value exactly).

Each objective trains round 1's `mnist` preset, `mnist-round1` (its UNet, cosine betas, batch 64, AdamW 1e-3, EMA with
warm-up; eps-prediction is its objective; the same seed, so the same initial weights and the same digits at every step)
for the same number of steps, changing only TrainConfig's objective options (math/objectives.tex): what the network
outputs (`prediction`), the weight over noise levels (`loss_weighting`), how the noise levels are drawn
(`noise_levels`) and whether the network learns its variances (Improved DDPM's L_hybrid). 2,000 steps is about the
ten-minute budget of the preset on 2 cores (results/benchmarks.md). Every `--every` steps the EMA weights are scored as
quality_per_minute.py scores them (`evaluate.digit_quality`: 300 DDIM-100 samples with eta = 1, the same starting noise
for every objective; Frechet distance in the course classifier's features, NOT Inception-FID, with its bootstrap
standard error; the share of confident digits). At the end, each model's bits/dim on `--digits` held-out digits drawn
at random (`evaluate.bits_per_dim_per_digit`, all 1,000 terms, each digit with its own noise, the same for every model,
so differences are paired): with the fixed reverse variance tilde-beta, and for the learned-variance model also with
its own variances.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from ddpm_lite.checkpoints import CHECKPOINT_NAME, config_to_dict, export_checkpoint
from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.data import load_mnist
from ddpm_lite.digits import load_digit_classifier
from ddpm_lite.evaluate import bits_per_dim_per_digit, digit_quality, machine_line, markdown_table, write_rows
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import train

BASE = CONFIGS["mnist-round1"]  # the objectives were compared from round 1's preset (eps-prediction)
# name -> (what it is, TrainConfig fields, UNetConfig fields)
OBJECTIVES: dict[str, tuple[str, dict, dict]] = {
    "eps": ("eps-prediction, L_simple (DDPM; round 1's preset)", {}, {}),
    "x0": ("x_0-prediction, its plain MSE", dict(prediction="x0"), {}),
    "v": ("v-prediction, its plain MSE (Salimans & Ho 2022)", dict(prediction="v"), {}),
    "min-snr": ("eps-prediction, min-SNR-5 weighting (Hang et al. 2023)", dict(loss_weighting="min-snr"), {}),
    "v-min-snr": ("v-prediction, min-SNR-5 weighting (Hang et al. 2023)", dict(prediction="v",
                                                                                 loss_weighting="min-snr"), {}),
    "elbo": ("eps-prediction, the ELBO's weighting (DDPM eq. 12's lambda_t)", dict(loss_weighting="elbo"), {}),
    "edm": ("EDM: preconditioned F, EDM's weighting, log-normal noise levels (Karras et al. 2022)",
            dict(prediction="edm", loss_weighting="edm", noise_levels="log-normal"), {}),
    "hybrid": ("eps-prediction with learned variances, L_hybrid (Improved DDPM)", {}, dict(learn_variance=True)),
    "flow": ("flow matching: the linear path's velocity, tau = (t + 1/2) / T (Lipman et al. 2023; Liu et al. 2023)",
             dict(prediction="flow"), {}),
}
SAMPLES, DIGITS, BPD_SEED, PICK_SEED = 300, 50, 0, 11


def objective_config(name: str) -> TrainConfig:
    _, fields, model_fields = OBJECTIVES[name]
    return dataclasses.replace(BASE, name=f"objective-{name}", model=dataclasses.replace(BASE.model, **model_fields),
                               **fields)


def held_out_digits(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` held-out digits drawn at random (seed PICK_SEED) and their indices in the held-out set."""
    images = load_mnist(train=False)[0].tensors[0]
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(PICK_SEED))[:count]
    return images[pick], pick


def run(args) -> None:
    """One objective: train, score the EMA every `--every` steps, bits/dim at the end."""
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(objective_config(args.objective), steps=args.steps)  # the checkpoints record the run
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier()
    schedule = NoiseSchedule.named(config.schedule, config.T)
    record = dict(objective=args.objective, what=OBJECTIVES[args.objective][0], config=config_to_dict(config),
                  machine=machine_line(args.threads), steps=args.steps, evaluations=[], bits_per_dim={})
    path = out / f"{args.objective}.json"
    scoring, start = 0.0, time.perf_counter()

    def save() -> None:
        path.write_text(json.dumps(record, indent=1))

    def score(step: int, model, ema) -> None:
        nonlocal scoring
        if step % args.every and step != args.steps:
            return
        begin = time.perf_counter()
        trained = begin - start - scoring  # wall time of training so far, without the earlier evaluations
        quality = digit_quality(ema, schedule, args.samples, images, classifier)
        scoring += time.perf_counter() - begin
        record["evaluations"].append(dict(step=step, train_seconds=round(trained, 1), **quality))
        save()
        print(f"{args.objective}: step {step}, Frechet {quality['frechet_distance']:.2f}, "
              f"confident {quality['confident_share']:.0%}", flush=True)

    result = train(config, images, out / args.objective, device="cpu", progress=False, callback=score)
    record["losses"] = [round(loss, 5) for loss in result.losses[::10]]  # every tenth step's loss
    export_checkpoint(out / args.objective / CHECKPOINT_NAME, out / f"{args.objective}.pt")

    digits, pick = held_out_digits(args.digits)
    record["digits"] = pick.tolist()
    ema = result.ema.eval()
    variances = ["posterior", "learned"] if config.model.learn_variance else ["posterior"]
    for variance in variances:
        begin = time.perf_counter()
        bpd = bits_per_dim_per_digit(ema, schedule, digits, variance, seed=BPD_SEED)
        record["bits_per_dim"][variance] = [round(value, 6) for value in bpd.tolist()]
        print(f"{args.objective}: bits/dim ({variance}) {bpd.mean():.4f} +- {bpd.std() / math.sqrt(len(bpd)):.4f} "
              f"({time.perf_counter() - begin:.0f} s)", flush=True)
    save()


def run_all(args) -> None:
    """Every objective in its own process, `--workers` at a time."""
    pending = [name for name in args.objectives if not (Path(args.out) / f"{name}.pt").exists()]
    running: list[subprocess.Popen] = []
    while pending or running:
        running = [process for process in running if process.poll() is None]
        while pending and len(running) < args.workers:
            name = pending.pop(0)
            command = [sys.executable, __file__, "run", "--objective", name, "--steps", str(args.steps),
                       "--every", str(args.every), "--samples", str(args.samples), "--digits", str(args.digits),
                       "--threads", str(args.threads), "--out", args.out]
            print(f"start {name}", flush=True)
            running.append(subprocess.Popen(command))
        time.sleep(1)


def speed(args) -> None:
    """Training images/s of each objective (the `train` loop itself: loss, backward, AdamW, clipping, EMA), over
    `--steps` steps after 5, on `--threads` threads: what makes equal steps an equal budget."""
    torch.set_num_threads(args.threads)
    images = load_mnist(train=True)[0].tensors[0]
    print(machine_line(args.threads))
    rows = []
    for name in args.objectives:
        marks = {}
        train(dataclasses.replace(objective_config(name), steps=5 + args.steps), images, device="cpu", progress=False,
              callback=lambda step, *_: marks.__setitem__(step, time.perf_counter()))
        seconds = marks[5 + args.steps] - marks[5]
        rows.append(dict(objective=name, images_per_second=round(args.steps * BASE.batch_size / seconds, 1)))
        print(f"{name}: {rows[-1]['images_per_second']:.0f} images/s", flush=True)
    print(markdown_table(rows, {"objective": "objective", "training images/s": "images_per_second:.0f"}))


def mean_se(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else math.nan


def report(args) -> None:
    records = {name: json.loads((Path(args.dir) / f"{name}.json").read_text())
               for name in OBJECTIVES if (Path(args.dir) / f"{name}.json").exists()}
    curves = [dict(objective=name, what=record["what"], **evaluation)
              for name, record in records.items() for evaluation in record["evaluations"]]
    print(markdown_table(curves, {"objective": "objective", "step": "step", "training seconds": "train_seconds:.0f",
                                  "n": "n", "Frechet distance (not FID)": "frechet_distance:.2f",
                                  "SE": "frechet_se:.2f", "confident share": "confident_share:.1%",
                                  "SE ": "confident_se:.1%", "classes": "classes_covered"}))
    digits = [dict(objective=name, variance=variance, digit=digit, bits_per_dim=value)
              for name, record in records.items() for variance, values in record["bits_per_dim"].items()
              for digit, value in zip(record["digits"], values)]
    print()
    print(markdown_table(bits_per_dim_summary(digits), {
        "objective": "objective", "reverse variance": "variance", "digits": "n", "bits/dim": "bits_per_dim:.3f",
        "SE": "se:.3f", "minus eps's (paired)": "minus_eps:+.4f", "SE ": "minus_eps_se:.4f"}))
    if args.out:
        print(f"wrote {write_rows(curves, args.out)}")
        print(f"wrote {write_rows(digits, Path(args.out).with_name(Path(args.out).stem + '_bpd.csv'))}")


def bits_per_dim_summary(digits: list[dict]) -> list[dict]:
    """Per (objective, variance): the mean bits/dim over the digits with its standard error, and the mean paired
    difference from eps-prediction's (fixed variance tilde-beta) on the same digits with its standard error."""
    values: dict[tuple[str, str], dict[int, float]] = {}
    for row in digits:
        values.setdefault((row["objective"], row["variance"]), {})[int(row["digit"])] = float(row["bits_per_dim"])
    baseline = values.get(("eps", "posterior"))
    rows = []
    for (name, variance), mine in values.items():
        mean, se = mean_se(list(mine.values()))
        row = dict(objective=name, variance=variance, n=len(mine), bits_per_dim=mean, se=se, minus_eps=math.nan,
                   minus_eps_se=math.nan)
        if baseline is not None and baseline.keys() == mine.keys():
            row["minus_eps"], row["minus_eps_se"] = mean_se([mine[d] - baseline[d] for d in mine])
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("all", "run"):
        p = sub.add_parser(name)
        if name == "all":
            p.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated objectives")
            p.add_argument("--workers", type=int, default=2, help="processes at a time")
        else:
            p.add_argument("--objective", required=True, choices=list(OBJECTIVES))
        p.add_argument("--steps", type=int, default=2000, help="training steps of every objective")
        p.add_argument("--every", type=int, default=500, help="steps between evaluations (and at the end)")
        p.add_argument("--samples", type=int, default=SAMPLES, help="DDIM-100 samples per evaluation")
        p.add_argument("--digits", type=int, default=DIGITS, help="held-out digits for bits/dim")
        p.add_argument("--threads", type=int, default=1 if name == "all" else 2, help="torch threads per process")
        p.add_argument("--out", required=True, help="folder for the records and the exported models")
    p = sub.add_parser("speed")
    p.add_argument("--objectives", default=",".join(OBJECTIVES), help="comma-separated objectives")
    p.add_argument("--steps", type=int, default=30, help="timed steps per objective (after 5 untimed)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p = sub.add_parser("report")
    p.add_argument("dir")
    p.add_argument("--out", default=None, help="CSV of the quality curves (each digit's bits/dim beside it, "
                                               "NAME_bpd.csv)")
    args = parser.parse_args()
    if args.command in ("all", "speed"):
        args.objectives = args.objectives.split(",")
        unknown = sorted(set(args.objectives) - set(OBJECTIVES))
        if unknown:
            parser.error(f"--objectives: unknown {unknown}; choose from {list(OBJECTIVES)}")
    for option in ("steps", "every", "samples", "digits", "threads", "workers"):
        value = getattr(args, option, None)
        if value is not None and value < (2 if option in ("samples", "digits") else 1):
            parser.error(f"--{option} must be at least {2 if option in ('samples', 'digits') else 1}, got {value}")
    {"all": run_all, "run": run, "speed": speed, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
