"""Training: DDPM Algorithm 1 (the simple loss), with EMA, gradient clipping, checkpoints and exact resume.

`train(config, data, out_dir)` runs the loop; the configs and presets are `ddpm_lite.configs`, the checkpoint files
`ddpm_lite.checkpoints`. On the CPU a run stopped and resumed ends with the same weights, bit for bit, as a run that
was never stopped. The loop samples and draws nothing itself: progress grids and other side tasks run in
`callback(step, model, ema)` (the CLI writes its sample grids there).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from ddpm_lite import distributed
from ddpm_lite.checkpoints import (
    CHECKPOINT_NAME,
    CheckpointError,
    CheckpointWriteError,
    load_checkpoint,
    prepare_run_folder,
    save_checkpoint,
)
from ddpm_lite.configs import TrainConfig, make_network
from ddpm_lite.devices import pick_device
from ddpm_lite.distributed import stream_seed
from ddpm_lite.forward import q_sample
from ddpm_lite.elbo import vlb_term_bits
from ddpm_lite.flow import flow_matching_loss
from ddpm_lite.objectives import Objective, learned_log_variance, log_normal_timesteps, network_target, output_to_eps
from ddpm_lite.schedules import NoiseSchedule, extract

__all__ = ["NonFiniteLossError", "TrainResult", "TrainingInterrupted", "WeightAverages", "ddpm_loss", "ema_update", "train"]


def ema_update(decay: float, warmup: bool = False):
    """The update for torch's AveragedModel: ema <- decay_n * ema + (1 - decay_n) * weights at update n = 1, 2, ...

    Without warm-up decay_n = decay: after n updates the initial weights still make up decay**n of the average, a
    large share for runs not much longer than 1 / (1 - decay) steps. With warm-up decay_n = min(decay, (1 + n) / (10 + n)),
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


class WeightAverages:
    """Several averages of one run's weights side by side, each the EMA a run with that setting would keep, so that
    EMA settings can be compared on one run. `rules`: name -> (decay, warmup) as in `ema_update`. Use an instance as
    (part of) `train`'s callback: `averages(step, model, ema)` updates every average from the raw weights."""

    def __init__(self, model: nn.Module, rules: dict[str, tuple[float, bool]]):
        self.models = {name: AveragedModel(model, multi_avg_fn=ema_update(decay, warmup), use_buffers=True)
                       for name, (decay, warmup) in rules.items()}

    def __call__(self, step: int, model: nn.Module, ema: nn.Module | None = None) -> None:
        for average in self.models.values():
            average.update_parameters(model)

    def __getitem__(self, name: str) -> nn.Module:
        return self.models[name].module


def ddpm_loss(model: nn.Module, schedule: NoiseSchedule, x_0: Tensor, generator: torch.Generator | None = None,
              y: Tensor | None = None, *, t: Tensor | None = None, eps: Tensor | None = None,
              objective: Objective | None = None) -> Tensor:
    """L_simple for a batch, DDPM Algorithm 1: E ||eps - eps_theta(sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps, t)||^2.

    x_0: (B, ...) on the model's device; y: optional (B,) int64 labels for a class-conditional model. t (B,) and eps
    (B, ...) are drawn on the CPU from `generator` (t first), unless given, then moved. Returns a scalar.
    math/elbo.tex eq:l-simple

    With an `objective` (`ddpm_lite.objectives.Objective`) whose network outputs x0, v or EDM's F, `model` is its
    `Denoiser` and is called with native=True; each example's squared error on `network_target` is weighted by
    objective.weights[t]. math/objectives.tex eq:weighted-loss
    """
    batch = x_0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.T, (batch,), generator=generator)  # 3. t ~ Uniform({1, ..., T})
    if eps is None:
        eps = torch.randn(x_0.shape, generator=generator)  # 4. eps ~ N(0, I)
    t, eps = t.to(x_0.device), eps.to(x_0.device, x_0.dtype)
    if objective is not None and objective.prediction == "flow":  # flow matching at tau = (t + 1/2) / T
        tau = (t.to(x_0.dtype) + 0.5) / schedule.T  # math/flow_matching.tex eq:flow-time
        native = partial(model, native=True)  # the Denoiser's velocity in the linear path's coordinates
        return flow_matching_loss(native, x_0, y=y, tau=tau, eps=eps, time_scale=schedule.T)  # eq:cfm-loss
    x_t = q_sample(schedule, x_0, t, eps)  # math/forward.tex eq:reparam
    if objective is None or objective.is_l_simple:
        eps_theta = model(x_t, t) if y is None else model(x_t, t, y)
        return F.mse_loss(eps_theta, eps)  # 5. gradient step on ||eps - eps_theta||^2; math/elbo.tex eq:l-simple
    native = {} if objective.prediction == "eps" and not objective.learned_variance else {"native": True}
    output = model(x_t, t, **native) if y is None else model(x_t, t, y, **native)
    if objective.learned_variance:
        output, v = output.chunk(2, dim=1)
    alpha_bar = extract(schedule.alpha_bar, t, x_0)
    target = network_target(objective.prediction, x_0, eps, x_t, alpha_bar, objective.sigma_data)
    error = (output - target).pow(2).flatten(1).mean(1)  # each example's mean squared error
    if objective.weights is not None:  # math/objectives.tex eq:weighted-loss
        error = objective.weights.to(error.device, error.dtype)[t] * error
    if objective.learned_variance:  # L_hybrid, Improved DDPM sec. 3.1; math/objectives.tex eq:l-hybrid
        eps_mean = output_to_eps(objective.prediction, output.detach(), x_t, alpha_bar, objective.sigma_data)
        log_variance = learned_log_variance(schedule, v, t)
        error = error + objective.vlb_weight * schedule.T * vlb_term_bits(schedule, x_0, x_t, t, eps_mean, log_variance)
    return error.mean()


class NonFiniteLossError(RuntimeError):
    """Training stopped because the loss was NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training was stopped by Ctrl-C (SIGINT) or SIGTERM and wrote a checkpoint at the step it had reached."""

    def __init__(self, signal_name: str, step: int, checkpoint: Path):
        super().__init__(f"{signal_name} at step {step}: checkpoint written to {checkpoint}")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


@contextlib.contextmanager
def _stop_requests():
    """While training with an output folder: SIGINT and SIGTERM ask the loop to stop after the current step (the
    list holds the signal's name), so the checkpoint it writes is at a step boundary. A second Ctrl-C interrupts at
    once. Outside the main thread (where handlers cannot be set) signals keep their usual effect."""
    requests: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield requests
        return

    def request(signum, frame) -> None:
        if requests and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requests.append(signal.Signals(signum).name)

    previous = {signum: signal.signal(signum, request) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requests
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class TrainResult:
    model: nn.Module  # the trained weights
    ema: nn.Module | None  # the EMA of the weights (use this one for sampling); None on ranks other than 0
    losses: list[float] = field(default_factory=list)  # loss at every step, from step 1 (the global batch's mean)
    seconds: float = 0.0  # wall time of this call (not counting earlier runs that were resumed)
    checkpoint: Path | None = None  # the last checkpoint written


def check_streams(batch_size: int, streams: int, world: int) -> None:
    """Raise ValueError unless `streams` data streams are a positive multiple of the `world` processes and split a
    batch of `batch_size` into equal shares."""
    if streams < 1 or streams % world:
        raise ValueError(f"data_streams must be a positive multiple of the number of processes ({world}), got "
                         f"{streams} (--data-streams on the command line)")
    if batch_size % streams:
        raise ValueError(f"the batch of {batch_size} does not split into {streams} equal shares (one per data "
                         f"stream; by default one per process): choose a --batch-size divisible by {streams} "
                         f"(TrainConfig.batch_size)")


def streams_mismatch(checkpoint: Path, saved: int, streams: int, world: int) -> str:
    """Why a checkpoint of `saved` data streams does not resume exactly in a run of `streams`, and what does."""
    return (f"{checkpoint} was written by a run with {saved} data stream(s), one per process; this run has {streams} "
            f"({world} process(es)). Resume it with torchrun --nproc_per_node={saved}, or in fewer processes with "
            f"--data-streams {saved}, to continue exactly; or add --reshard to start {streams} new streams (the run "
            f"goes on, not as an unbroken one)")


class _Streams:
    """The data streams one process draws (see `ddpm_lite.distributed`): stream s draws its share of every batch,
    data indices, label drops, flips, t and eps in that order, from its own generator. With one stream this is the
    order a one-process run has always drawn in."""

    def __init__(self, config: TrainConfig, streams: range, share: int, restart: int = 0):
        self.config, self.share = config, share
        self.generators = [torch.Generator().manual_seed(stream_seed(config.seed, s, restart)) for s in streams]

    def draw(self, data: Tensor, labels: Tensor | None, num_classes: int, schedule: NoiseSchedule):
        """This process's part of a batch: (x_0, y or None, t, eps), the streams' shares one after another."""
        parts = []
        for generator in self.generators:
            index = torch.randint(0, len(data), (self.share,), generator=generator).to(data.device)
            y = None
            if labels is not None:  # classifier-free guidance: drop some labels to "no label" (= num_classes)
                drop = (torch.rand(self.share, generator=generator) < self.config.label_dropout).to(data.device)
                y = torch.where(drop, num_classes, labels[index])
            x_0 = data[index]
            if self.config.random_flip:  # DDPM's augmentation: a left-right mirror image is as likely as the image
                flip = (torch.rand(self.share, generator=generator) < 0.5).to(data.device)
                x_0 = torch.where(flip[:, None, None, None], x_0.flip(-1), x_0)
            if self.config.noise_levels == "log-normal":  # EDM's ln sigma ~ N(-1.2, 1.2^2); math/objectives.tex eq:log-normal-levels
                t = log_normal_timesteps(schedule, torch.randn(self.share, generator=generator))
            else:
                t = torch.randint(0, schedule.T, (self.share,), generator=generator)  # DDPM Algorithm 1, line 3
            if self.config.paired_noise:  # reflow: the row is (x_0, its paired eps) on dim 1
                x_0, eps = x_0.chunk(2, dim=1)
            else:
                eps = torch.randn(x_0.shape, generator=generator)  # line 4
            parts.append((x_0, y, t, eps))
        if len(parts) == 1:
            return parts[0]
        x_0, y, t, eps = zip(*parts)
        return torch.cat(x_0), None if labels is None else torch.cat(y), torch.cat(t), torch.cat(eps)

    def states(self) -> list[Tensor]:
        return [generator.get_state() for generator in self.generators]

    def set_states(self, states: list[Tensor]) -> None:
        for generator, state in zip(self.generators, states, strict=True):
            generator.set_state(state)


def _stream_states(state: dict) -> list[Tensor]:
    """The generator states of every data stream in a checkpoint (one for checkpoints written before streams)."""
    return state["rng"].get("streams", [state["rng"]["generator"]])


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
    callback: Callable[[int, nn.Module, nn.Module], None] | None = None,
    data_streams: int | None = None,
    reshard: bool = False,
    compile: bool = False,
) -> TrainResult:
    """Train an eps-predictor on `data` (N, ...) with DDPM Algorithm 1 for `steps` (default config.steps) steps.

    The config's objective options (`prediction`, `loss_weighting`, `noise_levels`; math/objectives.tex) train an
    x0-, v- or EDM network instead, or weight the noise levels otherwise; the result's model and EMA are then
    `Denoiser`s, which return eps to every sampler.

    A class-conditional model (UNetConfig.num_classes > 0) needs `labels` (N,) int64; each step replaces a fraction
    `config.label_dropout` of them by the model's "no label" (classifier-free guidance, Ho & Salimans 2022, Algorithm 1).

    With `out_dir`, checkpoints go to out_dir/checkpoint.pt and `resume=True` continues from it. `stop_after`
    ends this call after that many steps (as if interrupted) without changing the planned total, for tests;
    `max_seconds` ends it at the first step that finishes after that much wall time (for equal-time benchmarks).
    `mixed_precision` (default: on CUDA only) runs the forward pass in bfloat16 autocast; False keeps float32
    everywhere, as on a CPU; `compile=True` runs the network through `torch.compile`. `callback(step, model, ema)`
    runs after every optimiser step with the raw and the EMA network (the CLI writes sample grids and FIDs there;
    scripts/tune_mnist.py keeps extra weight averages).

    In a process group (`ddpm_lite.distributed`, under torchrun) every process calls `train` with the same arguments:
    the network is wrapped in DistributedDataParallel, each process draws its share of the global batch
    `config.batch_size` from its own data streams, and only rank 0 keeps the EMA, writes checkpoints, shows progress
    and runs `callback`. `data_streams` (default: one per process) must be a multiple of the number of processes
    and divide the batch. Resuming needs the checkpoint's number of streams; `reshard=True` starts new streams
    instead (the run goes on, but no longer as an unbroken run would).

    With `out_dir` the folder is created and checked before any work. Ctrl-C (SIGINT) or SIGTERM then stops the run
    after the current step with a checkpoint at that step and raises `TrainingInterrupted`; any other error that
    stops a one-process run (in a callback, say) first writes a checkpoint at the last complete step, unless the
    state is not sound (a non-finite loss, an error in the middle of an optimiser update) or the error is a failed
    write. Resuming from either checkpoint ends with the same weights as a run that was never stopped.
    """
    total = config.steps if steps is None else steps
    if total < 1:
        raise ValueError(f"steps must be at least 1, got {total}")
    rank, world = distributed.rank(), distributed.world_size()
    streams = world if data_streams is None else data_streams
    check_streams(config.batch_size, streams, world)
    device = pick_device(device)
    out = prepare_run_folder(out_dir) if out_dir is not None and rank == 0 else None
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
    model = make_network(config).to(device)  # a Denoiser around the network unless it predicts eps
    objective = Objective.of(schedule, config.prediction, config.loss_weighting, gamma=config.min_snr_gamma,
                             sigma_data=config.sigma_data, learned_variance=config.model.learn_variance,
                             vlb_weight=config.vlb_weight)
    if config.channels_last:  # the same numbers in another memory order: oneDNN's and cuDNN's faster convolutions
        model = model.to(memory_format=torch.channels_last)
    if rank > 0:  # the same initial weights everywhere, then each process its own dropout masks
        torch.manual_seed(stream_seed(config.seed, rank))
    ema = (AveragedModel(model, multi_avg_fn=ema_update(config.ema_decay, config.ema_warmup), use_buffers=True)
           if rank == 0 else None)
    # foreach=True: one multi-tensor kernel per operation of the update instead of one per tensor (torch's default
    # only on CUDA); on the CPU it gives the same weights bit for bit, in less time for small networks. On CUDA the
    # fused kernel does the whole update of all tensors in one launch.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **fast)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / max(config.warmup, 1)))
    mine = range(rank * streams // world, (rank + 1) * streams // world)
    draws = _Streams(config, mine, config.batch_size // streams)
    step, losses = 0, []

    if resume:
        path = Path(out_dir) / CHECKPOINT_NAME if out_dir is not None else None
        if path is None or not path.exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {path}")
        state = load_checkpoint(path, model, ema, expected=config)
        optimizer.load_state_dict(state["optimizer"])
        warmup.load_state_dict(state["lr_schedule"])
        step, losses = state["step"], state["losses"]
        saved = _stream_states(state)
        if len(saved) == streams:
            draws.set_states([saved[s] for s in mine])
        elif reshard:  # new streams, seeded apart from every earlier one by the step they start at
            draws = _Streams(config, mine, config.batch_size // streams, restart=step)
        else:
            raise CheckpointError(streams_mismatch(path, len(saved), streams, world))
        torch_states = state["rng"].get("torch_ranks", [state["rng"]["torch"]])
        torch.set_rng_state(torch_states[rank] if len(torch_states) == world else torch_states[0])

    data = data.to(device)
    if config.channels_last:
        data = data.contiguous(memory_format=torch.channels_last)
    labels = labels.to(device) if labels is not None else None
    if mixed_precision and device.type != "cuda":
        raise ValueError(f"mixed_precision=True needs a CUDA device, got {device}")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16,
                              enabled=device.type == "cuda" if mixed_precision is None else mixed_precision)
    # DistributedDataParallel averages the gradients of all processes in the backward pass (gloo on CPUs, nccl on
    # GPUs); `model` stays the plain network, whose weights are the same in every process after each step
    network = (nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
               if world > 1 else model)
    if compile:  # the forward and backward passes as fused kernels, compiled at the first step (minutes on a GPU)
        network = torch.compile(network)
    start, last_checkpoint = time.perf_counter(), None
    end = total if stop_after is None else min(total, step + stop_after)
    bar = tqdm(total=total, initial=step, desc=f"train {config.name}", disable=not progress or rank > 0)

    def save(rng_state=None) -> Path | None:
        """Rank 0 writes the checkpoint; every process must call this (it gathers every process's RNG states)."""
        generator_states, torch_state = rng_state or (draws.states(), torch.get_rng_state())
        gathered = distributed.all_gather((generator_states, torch_state))
        if out is None:
            return None
        rng = {"generator": gathered[0][0][0], "torch": gathered[0][1], "streams": [s for g, _ in gathered for s in g],
               "torch_ranks": [torch_state for _, torch_state in gathered]}
        return save_checkpoint(out / CHECKPOINT_NAME, config, model, ema, optimizer, warmup, step, losses, rng)

    model.train()
    updating, rng_at_step = False, None
    out_of_time = max_seconds is not None and max_seconds <= 0
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(_stop_requests()) if out_dir is not None else []
        try:
            while step < end and not out_of_time:
                rng_at_step = (draws.states(), torch.get_rng_state())  # what a resume from `step` starts with
                x_0, y, t, eps = draws.draw(data, labels, num_classes, schedule)
                with autocast:
                    loss = ddpm_loss(network, schedule, x_0, y=y, t=t, eps=eps, objective=objective)
                if world == 1 and not torch.isfinite(loss):  # in a group: checked below, on every process at once
                    kept = f"the last good checkpoint is {last_checkpoint or (out and out / CHECKPOINT_NAME)}"
                    raise NonFiniteLossError(f"loss is {loss.item()} at step {step + 1}; stopping ({kept}, unchanged)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip, foreach=True)
                updating = True  # from here to the end of the update, the state is half old, half new
                optimizer.step()
                warmup.step()
                if ema is not None:
                    ema.update_parameters(model)
                step += 1
                out_of_time = max_seconds is not None and time.perf_counter() - start >= max_seconds
                mean_loss, stopping, out_of_time = distributed.agree(loss.detach(), bool(stop), out_of_time)
                if not math.isfinite(mean_loss):
                    raise NonFiniteLossError(f"loss is {mean_loss} at step {step} on at least one process; stopping "
                                             f"(the last good checkpoint is {last_checkpoint}, unchanged)")
                losses.append(mean_loss)
                updating, rng_at_step = False, None
                # refresh=False: redrawing on every step floods a notebook's message channel (thousands of widget
                # updates that the front end or nbval may drop); update() redraws at most every 0.1 s.
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}", refresh=False)
                bar.update(1)
                if callback is not None and rank == 0:
                    callback(step, model, ema.module)
                if out_dir is not None and (step % config.checkpoint_every == 0 or step == end or out_of_time
                                            or stopping):
                    last_checkpoint = save()
                if stopping:
                    raise TrainingInterrupted(stop[0] if stop else "SIGTERM (to another process)", step, last_checkpoint)
        except (Exception, KeyboardInterrupt) as error:
            bar.close()
            stopped_cleanly = isinstance(error, (NonFiniteLossError, TrainingInterrupted, CheckpointWriteError))
            # in a group a checkpoint needs every process, and the others are not here to help
            if out is None or updating or stopped_cleanly or world > 1:
                raise
            last_checkpoint = save(rng_at_step)
            if hasattr(error, "add_note"):  # Python >= 3.11
                error.add_note(f"training stopped at step {step}; checkpoint written to {last_checkpoint}")
            raise
    bar.close()
    model.eval()
    if ema is not None:
        ema.eval()
    return TrainResult(model=model, ema=ema.module if ema is not None else None, losses=losses,
                       seconds=time.perf_counter() - start, checkpoint=last_checkpoint)
