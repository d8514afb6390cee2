"""Tuning the course's MNIST recipe for sample quality per CPU-minute (the record: results/benchmarks.md).

Quality at a fixed CPU budget = quality after the number of steps that budget buys, so the sweep is measured in two
parts that do not disturb each other:

    python scripts/tune_mnist.py speed [--threads 2] [--out speed.csv]
        CPU training images/s of every variant that changes the work per step (widths, attention, blocks, batch),
        on the given threads, plus the runtime settings that change nothing but speed: channels_last,
        torch.compile, 1 vs 2 threads, and no_grad vs inference_mode when sampling.
    python scripts/tune_mnist.py quality --speed speed.csv [--minutes 10] [--device cuda] [--workers 8] --out DIR
        trains every variant for the steps its CPU speed buys in `--minutes` (float32 everywhere, also on a GPU:
        no autocast, no TF32, so a step is the same computation as on the CPU), keeping several weight averages in
        the same run (raw weights, constant EMA 0.99 / 0.995 / 0.999, EMA 0.999 with warm-up), and evaluates each at
        half and all of the steps: the offline digit metrics of 300 DDIM-100 (eta = 1) samples, as
        quality_per_minute.py does. One JSON file per variant in DIR.
    python scripts/tune_mnist.py quality-one --variant NAME --steps N [--averages ema0.999w,...] [--no-half] --out F
        one variant (what `quality` runs in each process; on the CPU, run two side by side with --threads 1).
    python scripts/tune_mnist.py report DIR
        the markdown table of all variants.

A round-1 variant changes one thing against the `mnist-ddpm` preset, the recipe before tuning (or combines changes);
a round-2 variant (`mnist`, `mnist-CHANGE`, each also `-seed1` and `-seed2`) changes one thing against the `mnist`
preset, round 1's result. `--variants a,b` picks some.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

from ddpm_lite.checkpoints import config_to_dict
from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.data import load_mnist
from ddpm_lite.digits import load_digit_classifier
from ddpm_lite.evaluate import digit_quality
from ddpm_lite.models import count_parameters, make_model
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import WeightAverages, ddpm_loss, train

BASE = CONFIGS["mnist-ddpm"]  # where the tuning started; the `mnist` preset is its result
# name -> (what changes, TrainConfig fields, UNetConfig fields)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "preset": ("the `mnist-ddpm` preset (lr 1e-3, warm-up 200, linear, batch 64, 32/64/64, attention 7x7)", {}, {}),
    "seed1": ("the preset with another seed (seed-to-seed spread)", dict(seed=1), {}),
    "lr5e-4": ("learning rate 5e-4", dict(lr=5e-4), {}),
    "lr2e-3": ("learning rate 2e-3", dict(lr=2e-3), {}),
    "lr4e-3": ("learning rate 4e-3", dict(lr=4e-3), {}),
    "warmup50": ("warm-up 50 steps", dict(warmup=50), {}),
    "cosine": ("cosine schedule (Improved DDPM)", dict(schedule="cosine"), {}),
    "batch32": ("batch 32", dict(batch_size=32), {}),
    "batch128": ("batch 128", dict(batch_size=128), {}),
    "base24": ("channels 24/48/48", {}, dict(base_channels=24)),
    "base48": ("channels 48/96/96", {}, dict(base_channels=48)),
    "mults124": ("channels 32/64/128", {}, dict(channel_mults=(1, 2, 4))),
    "no-attn": ("no attention", {}, dict(attention_resolutions=())),
    "blocks2": ("two residual blocks per level", {}, dict(num_res_blocks=2)),
    # combinations of changes that buy steps with ones that may use them better
    "base24-noattn": ("channels 24/48/48, no attention", {}, dict(base_channels=24, attention_resolutions=())),
    "base24-lr2e-3": ("channels 24/48/48, learning rate 2e-3", dict(lr=2e-3), dict(base_channels=24)),
    "base24-batch32": ("channels 24/48/48, batch 32", dict(batch_size=32), dict(base_channels=24)),
    "cosine-seed1": ("cosine schedule, another seed", dict(schedule="cosine", seed=1), {}),
    "cosine-noattn": ("cosine schedule, no attention", dict(schedule="cosine"), dict(attention_resolutions=())),
    "cosine-noattn-seed1": ("cosine schedule, no attention, another seed", dict(schedule="cosine", seed=1),
                            dict(attention_resolutions=())),
}
# Round 2 starts from round 1's result, the `mnist` preset (cosine betas, EMA with warm-up, channels_last), and tries
# the objectives of math/objectives.tex (screened by scripts/compare_objectives.py) and dropping attention, each with
# seeds 0, 1 and 2, since one run resolves only large differences (round 1's seed spread).
ROUND1 = dict(schedule="cosine", ema_warmup=True, channels_last=True)
ROUND2: dict[str, tuple[str, dict, dict]] = {  # change -> (what, TrainConfig fields, UNetConfig fields)
    "": ("", {}, {}),
    "x0": ("x_0-prediction", dict(prediction="x0"), {}),
    "min-snr": ("min-SNR-5 weighting", dict(loss_weighting="min-snr"), {}),
    "v": ("v-prediction", dict(prediction="v"), {}),
    "v-min-snr": ("v-prediction, min-SNR-5 weighting", dict(prediction="v", loss_weighting="min-snr"), {}),
    "v-min-snr-noattn": ("v-prediction, min-SNR-5 weighting, no attention",
                         dict(prediction="v", loss_weighting="min-snr"), dict(attention_resolutions=())),
}
for _change, (_what, _fields, _model_fields) in ROUND2.items():
    for _seed in (0, 1, 2):
        _name = "mnist" + (f"-{_change}" if _change else "") + (f"-seed{_seed}" if _seed else "")
        VARIANTS[_name] = (", ".join(["the `mnist` preset (round 1)"] + [_what] * bool(_what)
                                     + [f"seed {_seed}"] * bool(_seed)),
                           {**ROUND1, **_fields, "seed": _seed}, _model_fields)
# Weight averages kept side by side in every run: name -> (decay, warm-up); "raw" is the trained weights themselves.
AVERAGES: dict[str, tuple[float, bool] | None] = {
    "raw": None, "ema0.99": (0.99, False), "ema0.995": (0.995, False), "ema0.999": (0.999, False),
    "ema0.999w": (0.999, True),
}
SAMPLES, SAMPLE_STEPS = 300, 100  # as quality_per_minute.py: DDIM-100, eta = 1


def variant_config(name: str) -> TrainConfig:
    _, fields, model_fields = VARIANTS[name]
    return dataclasses.replace(BASE, model=dataclasses.replace(BASE.model, **model_fields), **fields)


def work_key(config: TrainConfig) -> tuple:
    """Variants with the same network and batch do the same work per step."""
    return (config.model, config.batch_size)


def training_images_per_second(config: TrainConfig, images: torch.Tensor, warm: int = 5, measured: int = 30) -> float:
    """Images/s of `train` itself (AdamW, clipping, EMA included) over `measured` steps after `warm` steps."""
    marks = {}
    train(config, images, steps=warm + measured, device="cpu", progress=False,
          callback=lambda step, *_: marks.__setitem__(step, time.perf_counter()))
    return measured * config.batch_size / (marks[warm + measured] - marks[warm])


def step_images_per_second(model: nn.Module, images: torch.Tensor, batch: int, channels_last: bool = False,
                           steps: int = 30, warm: int = 5) -> float:
    """A bare training step (loss, backward, AdamW) with the model's memory format as given, images/s."""
    schedule = NoiseSchedule.named("linear", 1000)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for step in range(warm + steps):
        if step == warm:
            start = time.perf_counter()
        x_0 = images[torch.randint(0, len(images), (batch,), generator=generator)].contiguous(memory_format=fmt)
        loss = ddpm_loss(model, schedule, x_0, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - start)


def sampling_images_per_second(model: nn.Module, mode: str, batch: int = 32, calls: int = 20) -> float:
    """Network calls per second x batch under torch.no_grad or torch.inference_mode (the samplers use the latter)."""
    x, t = torch.randn(batch, 1, 28, 28), torch.full((batch,), 500)
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    best = 0.0
    for _ in range(3):
        with context():
            start = time.perf_counter()
            for _ in range(calls):
                model(x, t)
        best = max(best, calls * batch / (time.perf_counter() - start))
    return best


def speed(args) -> None:
    torch.set_num_threads(args.threads)
    images = load_mnist(train=True)[0].tensors[0]
    rows, seen = [], {}
    for name in args.variants:
        config = variant_config(name)
        key = work_key(config)
        if key not in seen:
            seen[key] = training_images_per_second(config, images)
            print(f"{name}: {seen[key]:.0f} images/s", flush=True)
        rows.append(dict(variant=name, parameters=count_parameters(make_model(config.model)),
                         batch=config.batch_size, images_per_second=round(seen[key], 1)))
    with open(args.out, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out}")

    print(f"\nruntime settings on the preset's network ({args.threads} threads unless named), images/s:")
    torch.manual_seed(0)
    model = make_model(BASE.model)
    batch = BASE.batch_size
    runtime = {"training step, contiguous (the default)": step_images_per_second(copy.deepcopy(model), images, batch)}
    runtime["training step, channels_last"] = step_images_per_second(
        copy.deepcopy(model).to(memory_format=torch.channels_last), images, batch, channels_last=True)
    start = time.perf_counter()
    compiled = torch.compile(copy.deepcopy(model))
    step_images_per_second(compiled, images, batch, steps=1, warm=0)
    runtime[f"torch.compile: first step (compiling) took {time.perf_counter() - start:.0f} s; then"] = \
        step_images_per_second(compiled, images, batch)
    threads = torch.get_num_threads()
    for n in sorted({1, 2} - {threads}):
        torch.set_num_threads(n)
        runtime[f"training step, {n} thread(s)"] = step_images_per_second(copy.deepcopy(model), images, batch)
    torch.set_num_threads(threads)
    model.eval()
    for mode in ("no_grad", "inference_mode"):
        runtime[f"sampling (network calls, batch 32), torch.{mode}"] = sampling_images_per_second(model, mode)
    for what, value in runtime.items():
        print(f"| {what} | {value:.0f} |")


def evaluate(model: nn.Module, schedule: NoiseSchedule, reference: torch.Tensor, classifier: nn.Module,
             n: int = SAMPLES) -> dict:
    """`evaluate.digit_quality`, the protocol of quality_per_minute.py: n DDIM-100 (eta = 1) samples in batches of
    50, batch k seeded 1000 + its first row, with the Frechet distance's bootstrap standard error. (Round 1 of the
    record drew its 300 samples as one batch seeded 1000, without standard errors.)"""
    quality = digit_quality(model, schedule, n, reference, classifier, steps=SAMPLE_STEPS)
    return dict(frechet=quality["frechet_distance"], frechet_se=quality["frechet_se"],
                confident=quality["confident_share"], confident_se=quality["confident_se"],
                classes=quality["classes_covered"])


def quality_one(args) -> None:
    """One variant (run in its own process by `quality`)."""
    torch.set_num_threads(args.threads)
    torch.backends.cudnn.allow_tf32 = False  # float32 convolutions on a GPU, as on the CPU
    torch.backends.cuda.matmul.allow_tf32 = False
    config = variant_config(args.variant)
    images = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier(args.device)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    evaluations, averages = [], None
    checkpoints = sorted({max(1, args.steps // 2), args.steps} if args.half else {args.steps})
    start = time.perf_counter()

    def record(steps_done: int, losses: list[float]) -> None:  # written at every evaluation, so a cut-off run keeps its data
        Path(args.out).write_text(json.dumps(dict(
            variant=args.variant, what=VARIANTS[args.variant][0], planned_steps=args.steps, steps=steps_done,
            batch=config.batch_size, device=args.device, seconds=round(time.perf_counter() - start, 1),
            final_loss=round(sum(losses[-100:]) / max(len(losses[-100:]), 1), 5), evaluations=evaluations), indent=1))

    def evaluate_all(step: int, model: nn.Module, losses: list[float]) -> None:
        for name in args.averages:
            weights = model if name == "raw" else averages[name]
            evaluations.append(dict(step=step, average=name, **evaluate(weights, schedule, images, classifier,
                                                                         args.samples)))
        record(step, losses)
        print(f"{args.variant}: evaluated step {step} at {time.perf_counter() - start:.0f} s", flush=True)

    def callback(step: int, model: nn.Module, ema: nn.Module) -> None:
        nonlocal averages
        if averages is None:  # first step: start every average from the same point as train's own EMA
            averages = WeightAverages(model, {name: rule for name, rule in AVERAGES.items() if rule is not None})
        averages(step, model)
        if step % 250 == 0:
            print(f"{args.variant}: step {step}, {time.perf_counter() - start:.0f} s", flush=True)
        if step in checkpoints[:-1]:
            evaluate_all(step, model, [])

    result = train(config, images, steps=args.steps, device=args.device, progress=False, mixed_precision=False,
                   callback=callback, max_seconds=args.max_seconds)
    evaluate_all(len(result.losses), result.model, result.losses)


def quality(args) -> None:
    """Every variant in its own process, `--workers` at a time, each for the steps its CPU speed buys."""
    with open(args.speed) as file:
        speeds = {row["variant"]: row for row in csv.DictReader(file)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + args.deadline if args.deadline else None
    pending = [name for name in args.variants if not (out / f"{name}.json").exists()]
    running: list[subprocess.Popen] = []
    while pending or running:
        running = [p for p in running if p.poll() is None]
        while pending and len(running) < args.workers:
            name = pending.pop(0)
            row = speeds[name]
            steps = int(float(row["images_per_second"]) * args.minutes * 60 / int(row["batch"]))
            command = [sys.executable, __file__, "quality-one", "--variant", name, "--steps", str(steps),
                       "--device", args.device, "--threads", str(args.threads), "--samples", str(args.samples),
                       "--averages", ",".join(args.averages), "--out", str(out / f"{name}.json")]
            if deadline:
                command += ["--max-seconds", str(max(30, deadline - time.time()))]
            print(f"start {name}: {steps} steps", flush=True)
            running.append(subprocess.Popen(command))
        time.sleep(1)


def report(args) -> None:
    records = [json.loads(p.read_text()) for p in sorted(Path(args.dir).glob("*.json"))]
    order = {name: i for i, name in enumerate(VARIANTS)}
    records.sort(key=lambda r: order.get(r["variant"], len(order)))
    averages = [a for a in AVERAGES if any(e["average"] == a for r in records for e in r["evaluations"])]
    print("| variant | change | steps | final loss | " + " | ".join(f"Frechet {a}" for a in averages) + " |")
    print("|---|---|---|---|" + "---|" * len(averages))
    for r in records:
        final = {e["average"]: e for e in r["evaluations"] if e["step"] == r["steps"]}
        half = {e["average"]: e for e in r["evaluations"] if e["step"] < r["steps"]}
        cells = [f"{final[a]['frechet']:.2f} ({half[a]['frechet']:.2f})" if a in half else
                 f"{final[a]['frechet']:.2f}" if a in final else "" for a in averages]
        print(f"| {r['variant']} | {r['what']} | {r['steps']:,} of {r['planned_steps']:,} | {r['final_loss']:.4f} | "
              + " | ".join(cells) + " |")
    print("\nFrechet distance in the digit classifier's features (not FID) of 300 DDIM-100 samples at the end "
          "(in brackets: at half the steps).")


def show(args) -> None:
    """The variant's TrainConfig, as the checkpoints store it."""
    print(json.dumps(config_to_dict(variant_config(args.variant)), indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("speed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="speed.csv")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p = sub.add_parser("quality")
    p.add_argument("--speed", required=True)
    p.add_argument("--minutes", type=float, default=10.0, help="CPU budget the step counts stand for")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--deadline", type=float, default=0, help="seconds from now after which runs stop and evaluate")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--samples", type=int, default=SAMPLES, help="samples per evaluation (fewer only for trying it out)")
    p.add_argument("--averages", default=",".join(AVERAGES), help="weight averages to evaluate")
    p.add_argument("--out", required=True)
    p = sub.add_parser("quality-one")
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-seconds", type=float, default=None)
    p.add_argument("--samples", type=int, default=SAMPLES, help="samples per evaluation (fewer only for trying it out)")
    p.add_argument("--averages", default=",".join(AVERAGES), help="weight averages to evaluate")
    p.add_argument("--no-half", dest="half", action="store_false", help="evaluate at the end only")
    p.add_argument("--out", required=True)
    p = sub.add_parser("report")
    p.add_argument("dir")
    p = sub.add_parser("show", help="print a variant's training config as JSON")
    p.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    args = parser.parse_args()
    if hasattr(args, "averages"):
        args.averages = args.averages.split(",")
        if set(args.averages) - set(AVERAGES):
            parser.error(f"unknown averages {sorted(set(args.averages) - set(AVERAGES))}; choose from {list(AVERAGES)}")
    if hasattr(args, "variants"):
        args.variants = args.variants.split(",")
        unknown = set(args.variants) - set(VARIANTS)
        if unknown:
            parser.error(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}")
    commands = {"speed": speed, "quality": quality, "quality-one": quality_one, "report": report, "show": show}
    commands[args.command](args)


if __name__ == "__main__":
    main()
