"""Sample quality per CPU-minute: the course's MNIST recipe against a diffusers baseline, same data, same budget.

    python scripts/quality_per_minute.py [--minutes 10] [--threads 2] [--samples 300] [--previous PRESET]
        [--out FILE.csv]

In one run on one machine, with the thread count fixed:
1. trains `ddpm_lite`'s `mnist` preset (UNet of `ddpm_lite.models`, x_0-prediction, cosine betas, AdamW 1e-3 with
   warm-up, gradient clipping, EMA 0.999 with warm-up, batch 64, channels_last; tuned with scripts/tune_mnist.py)
   for `--minutes` of wall time;
2. trains the baseline a learner would otherwise write, the Hugging Face diffusion course's recipe: a diffusers
   `UNet2DModel` of the same size (channels 32/64/64, one ResNet layer per block, attention at the lowest
   resolution; 1,112,801 parameters, like the course's UNet), `DDPMScheduler(beta_schedule="squaredcos_cap_v2")`,
   AdamW 4e-4, batch 64, no EMA, for the same wall time;
3. samples both with the same sampler code (`ddpm_lite.samplers`, each model with its own noise schedule) and the same
   starting noise, and measures the offline digit metrics of `--samples` DDIM-100 (eta = 1) samples against the
   4,500 training digits; times DDPM-1000, DDIM-50 and DDIM-20 per image; and compares the DDIM-50 sampler's time
   with the time of its network calls alone (the sampler's own overhead).

4. trains a third row, `--previous` (default `mnist-round1`, the `mnist` preset before its second tuning round), for
   the same wall time, and prints the second round's targets with their verdicts: at least 90% confident digits,
   10/10 classes, and a Frechet distance at most half of the previous preset's in the same run.

Prints a markdown table (with the Frechet distance's bootstrap standard error); the last line is
`frechet_ratio=<ddpm_lite / baseline>`. Achieved GFLOP/s counts the
network's multiply-adds as 2 FLOPs (torch's FlopCounterMode over one training step, forward and backward), against
a measured float32 matrix-multiply peak (2048 x 2048) on the same threads.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ddpm_lite.configs import CONFIGS
from ddpm_lite.data import load_mnist
from ddpm_lite.digits import digit_metrics, load_digit_classifier
from ddpm_lite.models import count_parameters
from ddpm_lite.evaluate import machine_line, script_parser, write_rows
from ddpm_lite.samplers import ddim_sample, ddpm_sample, sample_in_batches
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import train

BATCH = 64  # both recipes
PREVIOUS = "mnist-round1"  # the `mnist` preset before its second tuning round: the third row


class DiffusersEps(nn.Module):
    """A diffusers UNet2DModel as an eps-predictor eps(x_t, t), the interface of `ddpm_lite.samplers`."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return self.unet(x_t, t).sample


def matmul_peak_gflops(seconds: float = 3.0, n: int = 2048) -> float:
    """Measured float32 GFLOP/s of an n x n matrix product on the current threads (best of repeated runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b)
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def training_flops_per_image(model: nn.Module, batch: int = 8) -> float:
    """FLOPs of one training step (forward and backward) per 28 x 28 digit, counted by torch's FlopCounterMode."""
    was_training = model.training
    model.train()
    x, t = torch.randn(batch, 1, 28, 28), torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        F.mse_loss(model(x, t), x).backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / batch


def train_baseline(images: Tensor, seconds: float, seed: int = 0) -> tuple[nn.Module, NoiseSchedule, int]:
    """The Hugging Face diffusion course's loop (unit 1) on a 1.1 M-parameter UNet2DModel; returns (model, schedule,
    steps)."""
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    optimizer = torch.optim.AdamW(unet.parameters(), lr=4e-4)
    generator = torch.Generator().manual_seed(seed)
    steps, start = 0, time.perf_counter()
    unet.train()
    while time.perf_counter() - start < seconds:
        x_0 = images[torch.randint(0, len(images), (BATCH,), generator=generator)]
        noise = torch.randn(x_0.shape, generator=generator)
        t = torch.randint(0, 1000, (BATCH,), generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(x_0, noise, t), t).sample, noise)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    schedule = NoiseSchedule.from_betas(torch.as_tensor(scheduler.betas, dtype=torch.float64))
    return DiffusersEps(unet).eval(), schedule, steps


def seconds_per_image(run, batch: int) -> float:
    start = time.perf_counter()
    run(batch)
    return (time.perf_counter() - start) / batch


def sampler_overhead(model: nn.Module, schedule: NoiseSchedule, steps: int = 50, batch: int = 32,
                     repeats: int = 3) -> float:
    """Share of DDIM-`steps` sampling time spent outside the network's forward passes (same batch, same count):
    (sampler - network) / sampler, each the fastest of `repeats` runs, alternating. Can be slightly negative (noise)."""
    x, t = torch.randn(batch, 1, 28, 28), torch.full((batch,), 500)
    network, sampler = math.inf, math.inf
    for _ in range(repeats):
        with torch.inference_mode():
            start = time.perf_counter()
            for _ in range(steps):
                model(x, t)
            network = min(network, time.perf_counter() - start)
        start = time.perf_counter()
        ddim_sample(model, schedule, (batch, 1, 28, 28), steps=steps, generator=torch.Generator().manual_seed(0),
                    progress=False)
        sampler = min(sampler, time.perf_counter() - start)
    return (sampler - network) / sampler


def evaluate(name: str, model: nn.Module, schedule: NoiseSchedule, train_steps: int, seconds: float, peak: float,
             reference: Tensor, classifier: nn.Module, n: int) -> dict:
    flops = training_flops_per_image(model)
    images_per_second = train_steps * BATCH / seconds
    samples = sample_in_batches(lambda rows, g: ddim_sample(model, schedule, (len(range(n)[rows]), 1, 28, 28), steps=100,
                                                            eta=1.0, generator=g, progress=False), n, 50, seed=1000)
    metrics = digit_metrics(samples.clamp(-1, 1), reference, classifier, resamples=100)
    shape = lambda b: (b, 1, 28, 28)  # noqa: E731
    return dict(
        name=name, parameters=count_parameters(model), steps=train_steps, images_per_second=images_per_second,
        gflops=images_per_second * flops / 1e9, peak=peak, metrics=metrics,
        ddpm=seconds_per_image(lambda b: ddpm_sample(model, schedule, shape(b), progress=False,
                                                     generator=torch.Generator().manual_seed(1)), 8),
        ddim50=seconds_per_image(lambda b: ddim_sample(model, schedule, shape(b), steps=50, progress=False,
                                                       generator=torch.Generator().manual_seed(1)), 32),
        ddim20=seconds_per_image(lambda b: ddim_sample(model, schedule, shape(b), steps=20, progress=False,
                                                       generator=torch.Generator().manual_seed(1)), 32),
        overhead=sampler_overhead(model, schedule),
    )


def target_lines(ours: dict, previous: dict) -> list[str]:
    """The tuning targets of the `mnist` preset's second round, each with its verdict: at least 90% of the DDIM-100
    samples classified with confidence >= 0.9, all 10 classes, and a Frechet distance at most half of the previous
    preset's in the same run."""
    mine, before = ours["metrics"], previous["metrics"]
    half = before.frechet_distance / 2
    checks = [(f"confident share >= 90%: {mine.confident_share:.1%}", mine.confident_share >= 0.9),
              (f"classes covered 10/10: {mine.classes_covered}/10", mine.classes_covered == 10),
              (f"Frechet distance <= half of {previous['name']}'s {before.frechet_distance:.2f} in this run "
               f"(<= {half:.2f}): {mine.frechet_distance:.2f}", mine.frechet_distance <= half)]
    return [f"target: {text} ({'met' if met else 'NOT met'})" for text, met in checks]


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall time per recipe")
    parser.add_argument("--samples", type=int, default=300, help="samples per model for the digit metrics")
    parser.add_argument("--previous", default=PREVIOUS, choices=sorted(CONFIGS),
                        help=f"the preset of the third row, trained for the same time (default {PREVIOUS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seconds = args.minutes * 60
    print(f"{machine_line(args.threads)}; {args.minutes:g} min of training per recipe", flush=True)

    train_set, source = load_mnist(train=True)
    images = train_set.tensors[0]
    print(f"data: {source}", flush=True)
    peak = matmul_peak_gflops()
    print(f"float32 matmul peak on {args.threads} threads: {peak:.1f} GFLOP/s", flush=True)
    classifier = load_digit_classifier()

    runs = {}
    for preset in ("mnist", args.previous):
        config = CONFIGS[preset]
        runs[preset] = train(config, images, steps=10**9, device="cpu", progress=False, max_seconds=seconds)
        print(f"ddpm_lite `{preset}`: {len(runs[preset].losses)} steps in {runs[preset].seconds:.0f} s", flush=True)
        if preset == "mnist":  # the baseline second, as before this row was added
            baseline, baseline_schedule, baseline_steps = train_baseline(images, seconds)
            print(f"baseline: {baseline_steps} steps in {seconds:.0f} s", flush=True)

    def ours(preset: str, label: str) -> dict:
        config = CONFIGS[preset]
        return evaluate(f"ddpm_lite `{preset}` preset{label} (EMA weights)", runs[preset].ema.eval(),
                        NoiseSchedule.named(config.schedule, config.T), len(runs[preset].losses),
                        runs[preset].seconds, peak, images, classifier, args.samples)

    rows = [ours("mnist", ""),
            evaluate("diffusers UNet2DModel + DDPMScheduler (HF course recipe)", baseline, baseline_schedule,
                     baseline_steps, seconds, peak, images, classifier, args.samples),
            ours(args.previous, ", before round 2")]
    print("\n| recipe | parameters | steps | train images/s | GFLOP/s counted (% of matmul peak) | Frechet (classifier, not FID) "
          "| SE | confident | classes | s/image DDPM-1000 | DDIM-50 | DDIM-20 | sampler overhead |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["metrics"]
        print(f"| {r['name']} | {r['parameters']:,} | {r['steps']:,} | {r['images_per_second']:.0f} | "
              f"{r['gflops']:.1f} ({100 * r['gflops'] / r['peak']:.0f}%) | {m.frechet_distance:.2f} | "
              f"{m.frechet_se:.2f} | {m.confident_share:.0%} | {m.classes_covered}/10 | {r['ddpm']:.3f} | "
              f"{r['ddim50']:.4f} | {r['ddim20']:.4f} | {r['overhead']:.1%} |")
    print(f"\nquality samples: {args.samples} per model, DDIM-100 with eta = 1, the same starting noise for all")
    worst = max(r["overhead"] for r in rows)
    print(f"sampler overhead beyond the network's forward passes (DDIM-50, batch 32): at most {worst:.1%} "
          f"({'under' if worst < 0.05 else 'NOT under'} 5%)")
    for line in target_lines(rows[0], dict(rows[2], name=f"`{args.previous}`")):
        print(line)
    ratio = rows[0]["metrics"].frechet_distance / rows[1]["metrics"].frechet_distance
    if args.out:
        flat = [{**{k: v for k, v in r.items() if k != "metrics"}, "frechet_distance": r["metrics"].frechet_distance,
                 "frechet_se": r["metrics"].frechet_se, "confident_share": r["metrics"].confident_share,
                 "classes_covered": r["metrics"].classes_covered} for r in rows]
        print(f"wrote {write_rows(flat, args.out)}")
    print(f"frechet_ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
