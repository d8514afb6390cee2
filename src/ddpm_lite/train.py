"""Training: DDPM Algorithm 1 (the simple loss), with EMA, gradient clipping, checkpoints and exact resume.

`train(config, out_dir)` runs the loop. A checkpoint holds everything needed to continue exactly (model, EMA,
optimiser, learning-rate schedule, step, RNG states, config, loss history) and is written atomically: to a temporary
file in the same folder, then renamed over the old one, so a crash never leaves a half-written checkpoint. On the CPU
a run stopped and resumed ends with the same weights, bit for bit, as a run that was never stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ddpm_lite.forward import q_sample
from ddpm_lite.models import MLPConfig, TimeMLP, UNet, UNetConfig
from ddpm_lite.schedules import NoiseSchedule, ScheduleName

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    name: str  # preset name, also the default output folder
    data: Literal["mixture", "swiss_roll", "two_moons", "mnist", "cifar10"]  # what to train on
    model: MLPConfig | UNetConfig  # the network; its class follows from the config's type
    schedule: ScheduleName = "linear"  # beta schedule (DDPM: linear)
    T: int = 1000  # diffusion steps (DDPM: 1000)
    steps: int = 2000  # optimiser steps
    batch_size: int = 128  # images or points per step (DDPM CIFAR-10: 128)
    lr: float = 2e-4  # peak AdamW learning rate (DDPM CIFAR-10: 2e-4)
    warmup: int = 100  # steps of linear learning-rate warm-up (DDPM: 5000 for 800k steps)
    weight_decay: float = 0.0  # AdamW weight decay (DDPM used Adam, i.e. 0)
    grad_clip: float = 1.0  # max gradient norm (DDPM: 1.0)
    ema_decay: float = 0.999  # EMA of the weights (DDPM: 0.9999 over 800k steps; shorter runs need less)
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) at update n, so early weights fade (see ema_update)
    seed: int = 0  # seeds the initial weights, the data order, the timesteps and the noise
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    sample_every: int = 0  # steps between sample grids written to the output folder; 0 = only at the end
    n_points: int = 50_000  # size of the fixed training set for 2-D data
    label_dropout: float = 0.0  # class-conditional models: chance a label is replaced by "no label" (Ho & Salimans: 0.1-0.2)
    channels_last: bool = False  # images: keep the UNet's weights and inputs in NHWC order (6% faster steps, 2-core CPU)

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.label_dropout and not getattr(self.model, "num_classes", 0):
            raise ValueError("label_dropout > 0 needs a class-conditional model (UNetConfig.num_classes > 0)")
        if self.channels_last and not isinstance(self.model, UNetConfig):
            raise ValueError(f"channels_last applies to images (a UNetConfig), got {type(self.model).__name__}")


CONFIGS: dict[str, TrainConfig] = {
    # 2-D mixture: the MLP learns it in well under a minute on a laptop CPU.
    "2d": TrainConfig(name="2d", data="mixture", model=MLPConfig(), steps=2000, batch_size=256, lr=2e-3,
                      warmup=100, ema_decay=0.995, checkpoint_every=500),
    # MNIST on a CPU: a ~1.1 M-parameter UNet (attention at 7x7), cosine betas and an EMA with warm-up. Tuned for
    # sample quality per CPU-minute (benchmarks/README.md): at ten minutes on 2 cores these two changes took the
    # Frechet distance from 11.96 (mnist-ddpm) to 4.42.
    "mnist": TrainConfig(name="mnist", data="mnist", model=UNetConfig(num_res_blocks=1), schedule="cosine",
                         steps=4500, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, ema_warmup=True,
                         checkpoint_every=250, sample_every=1000, channels_last=True),
    # The course's first MNIST recipe, DDPM's choices: linear betas, constant EMA decay. checkpoints/mnist.pt and
    # mnist_long.pt were trained with it (checkpoints/README.md).
    "mnist-ddpm": TrainConfig(name="mnist-ddpm", data="mnist", model=UNetConfig(num_res_blocks=1), steps=4500,
                              batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, checkpoint_every=250,
                              sample_every=1000),
    # Class-conditional MNIST for classifier-free guidance (notebook 09): the same UNet plus a label embedding; 10% of
    # labels are dropped to "no label" so that one network learns both eps(x_t, t, y) and eps(x_t, t).
    # checkpoints/mnist_cfg.pt is this preset (6,000 steps, trained on a GPU).
    "mnist-cfg": TrainConfig(name="mnist-cfg", data="mnist", model=UNetConfig(num_res_blocks=1, num_classes=10),
                             steps=6000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, checkpoint_every=500,
                             sample_every=1000, label_dropout=0.1),
    # DDPM's CIFAR-10 run (Ho et al. 2020, appendix B): 35.7 M parameters; for GPUs.
    "cifar10": TrainConfig(name="cifar10", data="cifar10",
                           model=UNetConfig(image_channels=3, image_size=32, base_channels=128,
                                            channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                                            dropout=0.1, groups=32),
                           steps=800_000, batch_size=128, lr=2e-4, warmup=5000, ema_decay=0.9999,
                           checkpoint_every=10_000, sample_every=50_000),
}


def ema_update(decay: float, warmup: bool = False):
    """The update for torch's AveragedModel: ema <- decay_n * ema + (1 - decay_n) * weights at update n = 1, 2, ...

    Without warm-up decay_n = decay: after n updates the initial weights still make up decay**n of the average
    (0.999**2000 = 13.5%; the first 200 steps' weights 16.5%). With warm-up decay_n = min(decay, (1 + n) / (10 + n)),
    the rule of diffusers' EMAModel and of TensorFlow's ExponentialMovingAverage(num_updates=...): until decay_n
    reaches `decay` (at n = 8,991 for 0.999) the average spans roughly the last tenth of the updates, and after
    2,000 updates the first 200 steps' share is about 1e-9.
    """
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")

    @torch.no_grad()
    def update(ema_params: list[Tensor], params: list[Tensor], num_averaged: Tensor) -> None:
        n = int(num_averaged)  # updates so far (AveragedModel copied the weights at n = 0)
        decay_n = min(decay, (1 + n) / (10 + n)) if warmup else decay
        torch._foreach_lerp_(ema_params, params, 1.0 - decay_n)

    return update


def make_model(config: MLPConfig | UNetConfig) -> nn.Module:
    """The network a config describes."""
    if isinstance(config, MLPConfig):
        return TimeMLP(config)
    if isinstance(config, UNetConfig):
        return UNet(config)
    raise ValueError(f"config must be an MLPConfig or a UNetConfig, got {type(config).__name__}")


def ddpm_loss(model: nn.Module, schedule: NoiseSchedule, x_0: Tensor, generator: torch.Generator | None = None,
              y: Tensor | None = None) -> Tensor:
    """L_simple for a batch, DDPM Algorithm 1: E ||eps - eps_theta(sqrt(ab) x_0 + sqrt(1 - ab) eps, t)||^2.

    x_0: (B, ...) on the model's device; y: optional (B,) int64 labels for a class-conditional model. t and eps are
    drawn on the CPU from `generator`, then moved. Returns a scalar. math/elbo.tex eq:l-simple
    """
    batch = x_0.shape[0]
    t = torch.randint(0, schedule.T, (batch,), generator=generator)  # 3. t ~ Uniform({1, ..., T})
    eps = torch.randn(x_0.shape, generator=generator)  # 4. eps ~ N(0, I)
    t, eps = t.to(x_0.device), eps.to(x_0.device, x_0.dtype)
    x_t = q_sample(schedule, x_0, t, eps)  # math/forward.tex eq:reparam
    eps_theta = model(x_t, t) if y is None else model(x_t, t, y)
    return F.mse_loss(eps_theta, eps)  # 5. gradient step on ||eps - eps_theta||^2; math/elbo.tex eq:l-simple


def pick_device() -> torch.device:
    """cuda if available, else Apple's mps, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss was NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    model: nn.Module  # the trained weights
    ema: nn.Module  # the EMA of the weights (use this one for sampling)
    losses: list[float] = field(default_factory=list)  # loss at every step, from step 1
    seconds: float = 0.0  # wall time of this call (not counting earlier runs that were resumed)
    checkpoint: Path | None = None  # the last checkpoint written


def train(
    config: TrainConfig,
    data: Tensor,
    out_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    steps: int | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    stop_after: int | None = None,
    labels: Tensor | None = None,
    max_seconds: float | None = None,
    mixed_precision: bool | None = None,
    callback: Callable[[int, nn.Module], None] | None = None,
) -> TrainResult:
    """Train an eps-predictor on `data` (N, ...) with DDPM Algorithm 1 for `steps` (default config.steps) steps.

    A class-conditional model (UNetConfig.num_classes > 0) needs `labels` (N,) int64; each step replaces a fraction
    `config.label_dropout` of them by the model's "no label" (classifier-free guidance, Ho & Salimans 2022, Algorithm 1).

    With `out_dir`, checkpoints go to out_dir/checkpoint.pt and `resume=True` continues from it. `stop_after`
    ends this call after that many steps (as if interrupted) without changing the planned total, for tests;
    `max_seconds` ends it at the first step that finishes after that much wall time (for equal-time benchmarks).
    `mixed_precision` (default: on CUDA only) runs the forward pass in bfloat16 autocast; False keeps float32
    everywhere, as on a CPU. `callback(step, model)` runs after every optimiser step (benchmarks use it to keep
    extra weight averages).
    """
    total = config.steps if steps is None else steps
    if total < 1:
        raise ValueError(f"steps must be at least 1, got {total}")
    device = torch.device(device) if device is not None else pick_device()
    out = Path(out_dir) if out_dir is not None else None
    schedule = NoiseSchedule.named(config.schedule, config.T)
    num_classes = getattr(config.model, "num_classes", 0)
    if (labels is not None) != bool(num_classes):
        raise ValueError(f"labels must be given exactly when the model is class-conditional (num_classes = "
                         f"{num_classes}); got labels={'None' if labels is None else tuple(labels.shape)}")
    if labels is not None and (labels.shape != data.shape[:1] or labels.dtype != torch.int64
                               or labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be int64 of shape ({len(data)},) in [0, {num_classes}), "
                         f"got {labels.dtype} {tuple(labels.shape)}")

    torch.manual_seed(config.seed)
    model = make_model(config.model).to(device)
    if config.channels_last:  # the same numbers in another memory order: oneDNN's and cuDNN's faster convolutions
        model = model.to(memory_format=torch.channels_last)
    ema = AveragedModel(model, multi_avg_fn=ema_update(config.ema_decay, config.ema_warmup), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(config.warmup, 1)))
    generator = torch.Generator().manual_seed(config.seed)
    step, losses = 0, []

    if resume:
        if out is None or not (out / CHECKPOINT_NAME).exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {out and out / CHECKPOINT_NAME}")
        state = load_checkpoint(out / CHECKPOINT_NAME, model, ema, expected=config)
        optimizer.load_state_dict(state["optimizer"])
        warmup.load_state_dict(state["lr_schedule"])
        generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        step, losses = state["step"], state["losses"]

    data = data.to(device)
    if config.channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    labels = labels.to(device) if labels is not None else None
    if mixed_precision and device.type != "cuda":
        raise ValueError(f"mixed_precision=True needs a CUDA device, got {device}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=device.type == "cuda" if mixed_precision is None else mixed_precision)
    start, last_checkpoint = time.perf_counter(), None
    end = total if stop_after is None else min(total, step + stop_after)
    bar = tqdm(total=total, initial=step, desc=f"train {config.name}", disable=not progress)
    model.train()
    while step < end and (max_seconds is None or time.perf_counter() - start < max_seconds):
        index = torch.randint(0, len(data), (config.batch_size,), generator=generator).to(device)
        y = None
        if labels is not None:  # classifier-free guidance: drop some labels to "no label" (null_label = num_classes)
            drop = (torch.rand(config.batch_size, generator=generator) < config.label_dropout).to(device)
            y = torch.where(drop, num_classes, labels[index])
        with autocast:
            loss = ddpm_loss(model, schedule, data[index], generator=generator, y=y)
        if not torch.isfinite(loss):
            bar.close()
            kept = f"the last good checkpoint is {last_checkpoint or (out and out / CHECKPOINT_NAME)}"
            raise NonFiniteLossError(f"loss is {loss.item()} at step {step + 1}; stopping ({kept}, unchanged)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        warmup.step()
        ema.update_parameters(model)
        step += 1
        if callback is not None:
            callback(step, model)
        losses.append(loss.item())
        # refresh=False: redrawing on every step floods a notebook's message channel (thousands of widget updates that
        # the front end or nbval may drop); update() redraws at most every 0.1 s, with the new postfix.
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
        bar.update(1)
        out_of_time = max_seconds is not None and time.perf_counter() - start >= max_seconds
        if out is not None and (step % config.checkpoint_every == 0 or step == end or out_of_time):
            last_checkpoint = save_checkpoint(out / CHECKPOINT_NAME, config, model, ema, optimizer, warmup, generator,
                                              step, losses)
        if out is not None and config.sample_every and step % config.sample_every == 0 and step < total:
            _write_samples(out / f"samples_step{step:07d}.png", ema.module, schedule, data, config.seed)
    bar.close()
    model.eval()
    ema.eval()
    return TrainResult(model=model, ema=ema.module, losses=losses, seconds=time.perf_counter() - start,
                       checkpoint=last_checkpoint)


def save_checkpoint(path: Path, config: TrainConfig, model: nn.Module, ema: AveragedModel, optimizer, lr_schedule,
                    generator: torch.Generator, step: int, losses: list[float]) -> Path:
    """Write everything needed to resume to `path`, atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": 1,
        "config": config_to_dict(config),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()},
        "step": step,
        "losses": losses,
    }
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module, ema: AveragedModel | nn.Module | None = None,
                    *, expected: TrainConfig | None = None) -> dict:
    """Load weights (and EMA weights) from `path` into `model` (and `ema`); return the whole checkpoint dict.

    Raises ValueError, naming the differing fields, if the checkpoint's network config is not the model's (or if
    `expected` is given and the training config differs in anything but the number of steps).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = config_to_dict(config_from_dict(state["config"]))  # fields added since the checkpoint get their defaults
    model_config = getattr(model, "config", None)
    if model_config is not None and saved["model"] != _asdict(model_config):
        raise ValueError(f"checkpoint {path} was trained with another network config: "
                         f"{_difference(saved['model'], _asdict(model_config))}")
    if expected is not None:
        wanted = {k: v for k, v in config_to_dict(expected).items() if k != "steps"}
        have = {k: v for k, v in saved.items() if k != "steps"}
        if wanted != have:
            raise ValueError(f"checkpoint {path} was trained with another config: {_difference(have, wanted)}")
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"] if isinstance(ema, AveragedModel) else _ema_weights(state["ema"]))
    return state


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Keep only what sampling needs (config, EMA weights, step, loss history): a quarter of the training checkpoint.

    The result loads with `load_ema_model`; it cannot be resumed from (no raw weights, optimiser or RNG states).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    slim = {key: state[key] for key in ("format", "config", "ema", "step", "losses")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, out)
    return out


def load_ema_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The EMA network of a checkpoint, ready for sampling (eval mode), and its training config."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = config_from_dict(state["config"])
    model = make_model(config.model)
    model.load_state_dict(_ema_weights(state["ema"]))
    return model.to(device).eval(), config


def config_to_dict(config: TrainConfig) -> dict:
    return {**_asdict(config), "model_type": type(config.model).__name__}


def config_from_dict(saved: dict) -> TrainConfig:
    saved = dict(saved)
    model_type = {"MLPConfig": MLPConfig, "UNetConfig": UNetConfig}[saved.pop("model_type")]
    model = saved.pop("model")
    model = model_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
    return TrainConfig(model=model, **saved)


def _asdict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, so saved and new compare equal


def _difference(have: dict, wanted: dict) -> str:
    keys = sorted(set(have) | set(wanted))
    return "; ".join(f"{k}: checkpoint {have.get(k)!r} vs requested {wanted.get(k)!r}" for k in keys
                     if have.get(k) != wanted.get(k))


def _ema_weights(ema_state: dict) -> dict:
    """AveragedModel's state dict holds the module under 'module.' plus a counter; keep the module's weights."""
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k.startswith("module.")}


def _write_samples(path: Path, model: nn.Module, schedule: NoiseSchedule, data: Tensor, seed: int) -> None:
    """A grid of 64 DDIM-50 samples (images) or 2,000 points (2-D), for watching training progress."""
    import matplotlib.pyplot as plt

    from ddpm_lite.samplers import ddim_sample
    from ddpm_lite.viz import show_samples

    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    n = 64 if data.ndim == 4 else 2000
    samples = ddim_sample(model, schedule, (n, *data.shape[1:]), steps=50, generator=generator, progress=False).cpu()
    fig, ax = plt.subplots(figsize=(5, 5))
    show_samples(samples, ax, path.stem)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    model.train(was_training)
