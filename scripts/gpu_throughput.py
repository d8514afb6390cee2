"""Training throughput of the `cifar10` preset's UNet against diffusers' UNet2DModel of DDPM's CIFAR-10 size.

    python scripts/gpu_throughput.py [--device cuda] [--batch 128] [--steps 30] [--compile] [--out FILE.csv]
    python scripts/gpu_throughput.py --smoke      # a few steps of narrow copies of both networks, on the CPU (CI)

Both networks are trained by one loop, in one run, with the same batch, precision and settings: DDPM Algorithm 1
(L_simple with eps-prediction, `ddpm_lite.train.ddpm_loss`), AdamW (fused on CUDA), gradient clipping at 1.0 and an
EMA of the weights, as `ddpm_lite.train.train` does. On CUDA the settings are those of a fast GPU run: bfloat16
autocast, TF32 matmuls and convolutions, channels_last memory order, and with `--compile`, `torch.compile` of the
network. Images are random values of CIFAR-10's shape: the speed of a step does not depend on what the pixels show.
The table gives training images per second after `--warmup` untimed steps, and the peak GPU memory of each network's
run (`torch.cuda.max_memory_allocated`; not measured on the CPU).

The diffusers network is DDPM's CIFAR-10 network as diffusers ships it (`google/ddpm-cifar10-32`, converted from the
paper's code): channels 128/256/256/256, two ResNet layers per block, attention at 16 x 16, dropout 0.1; it has
exactly the course UNet's 35,746,307 parameters. `--smoke` divides every
width by 4 and runs 1 + 2 steps of batch 4, so that CI checks that the script works, not how fast anything is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddpm_lite.configs import CONFIGS
from ddpm_lite.evaluate import machine_line, markdown_table, script_parser, write_rows
from ddpm_lite.models import count_parameters, make_model
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import ddpm_loss, ema_update
from quality_per_minute import DiffusersEps  # scripts/ is on sys.path when a script runs


def networks(width_divisor: int) -> dict[str, nn.Module]:
    """The two networks, freshly initialised (seed 0); widths divided by `width_divisor` (1: the real sizes)."""
    from diffusers import UNet2DModel

    course = CONFIGS["cifar10"].model
    course = dataclasses.replace(course, base_channels=course.base_channels // width_divisor,
                                 groups=course.groups // width_divisor)
    torch.manual_seed(0)
    ours = make_model(course)
    torch.manual_seed(0)
    theirs = DiffusersEps(UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, dropout=0.1, norm_eps=1e-6,
        downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,  # as diffusers' conversions of DDPM's models
        block_out_channels=tuple(c // width_divisor for c in (128, 256, 256, 256)),
        norm_num_groups=32 // width_divisor,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")))
    return {"ddpm_lite `cifar10` UNet": ours, "diffusers UNet2DModel (google/ddpm-cifar10-32)": theirs}


def throughput(model: nn.Module, device: torch.device, batch: int, warmup: int, steps: int, bf16: bool,
               compile_model: bool) -> tuple[float, float | None]:
    """(training images per second over `steps` timed steps, peak GPU memory in GiB or None on the CPU)."""
    cuda = device.type == "cuda"
    config = CONFIGS["cifar10"]
    schedule = NoiseSchedule.named(config.schedule, config.T)
    model = model.to(device, memory_format=torch.channels_last).train()
    ema = AveragedModel(model, multi_avg_fn=ema_update(config.ema_decay), use_buffers=True)
    network = torch.compile(model) if compile_model else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, **({"fused": True} if cuda else {"foreach": True}))
    images = torch.rand(batch, 3, 32, 32, device=device).mul(2).sub(1).contiguous(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)  # ddpm_loss draws t and eps on the CPU, as train() does
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with autocast:
            loss = ddpm_loss(network, schedule, images, generator=generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
        optimizer.step()
        ema.update_parameters(model)

    for _ in range(warmup):  # compilation, cuDNN's algorithm search and the allocator's first requests happen here
        step()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return batch * steps / seconds, peak


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=128, help="images per step (default 128, DDPM's CIFAR-10 batch)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per network (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5)")
    parser.add_argument("--compile", action="store_true", help="torch.compile both networks")
    parser.add_argument("--smoke", action="store_true", help="narrow networks, batch 4, 1 + 2 steps (for CI)")
    args = parser.parse_args()
    for name in ("batch", "steps", "warmup"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name} must be at least {0 if name == 'warmup' else 1}, got {getattr(args, name)}")
    if args.smoke:
        args.batch, args.steps, args.warmup = 4, 2, 1
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    bf16 = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    precision = "bf16 autocast, TF32" if bf16 else "float32"
    print(f"{machine_line(args.threads)}; device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    print(f"batch {args.batch}, {args.warmup} untimed + {args.steps} timed steps per network, {precision}, "
          f"channels_last, torch.compile {'on' if args.compile else 'off'}" + (", SMOKE: widths / 4" if args.smoke else "")
          + "\n")
    rows = []
    for name, model in networks(4 if args.smoke else 1).items():
        images_per_second, peak = throughput(model, device, args.batch, args.warmup, args.steps, bf16, args.compile)
        rows.append(dict(network=name, parameters=count_parameters(model), batch=args.batch, precision=precision,
                         compile=args.compile, images_per_second=round(images_per_second, 2),
                         peak_memory_gib="-" if peak is None else round(peak, 2)))
    print(markdown_table(rows, {"network": "network", "parameters": "parameters:,", "batch": "batch",
                                "precision": "precision", "torch.compile": "compile", "train images/s":
                                "images_per_second:.1f", "peak GPU memory (GiB)": "peak_memory_gib"}))
    print(f"\nspeed_ratio={rows[0]['images_per_second'] / rows[1]['images_per_second']:.3f} "
          "(ddpm_lite images/s over diffusers')")
    if args.out:
        print(f"wrote {write_rows(rows, args.out)}")


if __name__ == "__main__":
    main()
