"""Samplers: DDPM's ancestral sampling (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021).

Plain functions with no hidden state. A step function maps x_t to the next, cleaner sample given a noise prediction;
a sample function runs a model from pure noise to x_0. Code timesteps are 0-based (`ddpm_lite.schedules`), and
`t_prev = -1` stands for the clean data (alpha_bar = 1). `callback(step_index, t, x_t, x_0_pred)` is called after
each step (for trajectories and widgets); `generator` makes the noise reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm_lite.elbo import reverse_variance
from ddpm_lite.forward import predict_x0_from_eps, q_posterior
from ddpm_lite.schedules import NoiseSchedule, extract, timesteps

Callback = Callable[[int, int, Tensor, Tensor], None]
Spacing = Literal["uniform", "quadratic"]


def model_device(model: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer; the CPU for a module with neither (an exact predictor)."""
    for tensor in [*model.parameters(), *model.buffers()]:
        return tensor.device
    return torch.device("cpu")


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int | Tensor,
    eps: Tensor,
    noise: Tensor,
    variance: Literal["posterior", "beta"] = "posterior",
    clip_x0: bool = False,
) -> Tensor:
    """One step of DDPM Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at t = 0.

    x_t, eps, noise: (B, ...); t: (B,) or int. Without clipping, mu_theta is DDPM eq. (11); with `clip_x0` the
    predicted x_0 is clipped to [-1, 1] first and mu_theta is the posterior mean at it (DDPM's released code).
    """
    t = timesteps(schedule, t, x_t.shape[0])
    if eps.shape != x_t.shape or noise.shape != x_t.shape:
        raise ValueError(f"eps and noise must have the shape of x_t {tuple(x_t.shape)}, got {tuple(eps.shape)}, {tuple(noise.shape)}")
    # 1. predict x_0 from the noise estimate (DDPM eq. 15); math/forward.tex eq:predict-x0
    x_0_pred = predict_x0_from_eps(schedule, x_t, t, eps)
    if clip_x0:
        x_0_pred = x_0_pred.clamp(-1.0, 1.0)
    # 2. mean of p_theta(x_{t-1} | x_t): the posterior mean at the predicted x_0, which equals
    #    (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) when not clipped (DDPM eq. 11; Algorithm 2 line 4)
    mean, _ = q_posterior(schedule, x_0_pred, x_t, t)  # math/posterior.tex eq:posterior-mean-eps
    # 3. add sigma_t z, except at the last step (Algorithm 2 line 3: z = 0 if t = 1)
    sigma = extract(reverse_variance(schedule, variance), t, x_t).sqrt()
    nonzero = (t > 0).to(x_t.dtype).reshape(-1, *([1] * (x_t.ndim - 1)))
    return mean + nonzero * sigma * noise  # math/posterior.tex eq:reverse-variance-choices


@torch.inference_mode()
def ddpm_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    variance: Literal["posterior", "beta"] = "posterior",
    clip_x0: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> Tensor:
    """DDPM Algorithm 2: x_T ~ N(0, I), then T steps of `ddpm_step`. Returns x_0, `shape` (B, ...), on `device`.

    The noise is drawn on the CPU from `generator` (so results do not depend on the device) and moved.
    """
    device = torch.device(device) if device is not None else model_device(model)
    x = torch.randn(shape, generator=generator).to(device)  # 1. x_T ~ N(0, I)
    for index, step in enumerate(tqdm(range(schedule.T - 1, -1, -1), desc="DDPM", disable=not progress)):  # 2.
        t = torch.full((shape[0],), step, dtype=torch.int64, device=device)
        eps = model(x, t)  # 4. eps_theta(x_t, t)
        noise = torch.randn(shape, generator=generator).to(device)  # 3. z ~ N(0, I)
        x_next = ddpm_step(schedule, x, t, eps, noise, variance=variance, clip_x0=clip_x0)
        if callback is not None:
            callback(index, step, x_next, predict_x0_from_eps(schedule, x, t, eps))
        x = x_next
    return x  # 6. return x_0


def ddim_timesteps(T: int, steps: int, spacing: Spacing = "uniform") -> Tensor:
    """The increasing sub-sequence tau of code timesteps DDIM visits (DDIM sec. 4.2 and appendix D.2). (steps,) int64.

    "uniform": 0, c, 2c, ... with c = T // steps (the DDIM code's choice); "quadratic": floor of
    (linspace(0, sqrt(0.8 T), steps))^2, denser near the data (used for CIFAR-10 in the DDIM paper).
    math/ddim.tex eq:ddim-skip, eq:ddim-spacing
    """
    if not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, T={T}], got {steps!r}")
    if spacing == "uniform":
        tau = torch.arange(0, T, T // steps)[:steps]
    elif spacing == "quadratic":
        tau = (torch.linspace(0, math.sqrt(0.8 * T), steps, dtype=torch.float64) ** 2).floor().long()
        if len(tau.unique()) != steps:
            raise ValueError(f"steps={steps} is too many for quadratic spacing with T={T}: timesteps repeat")
    else:
        raise ValueError(f"spacing must be 'uniform' or 'quadratic', got {spacing!r}")
    return tau.to(torch.int64)


def ddim_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int,
    t_prev: int,
    eps: Tensor,
    eta: float,
    noise: Tensor | None,
    clip_x0: bool = False,
) -> Tensor:
    """One DDIM step from code timestep t to t_prev < t (t_prev = -1: to the clean data), DDIM eq. (12).

    sigma_t(eta) = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev) with a = alpha_bar (DDIM eq. 16):
    eta = 0 is deterministic, eta = 1 with consecutive steps is DDPM with sigma^2 = tilde-beta. `noise` may be None
    when eta = 0. x_t, eps: (B, ...).
    """
    if not -1 <= t_prev < t < schedule.T:
        raise ValueError(f"need -1 <= t_prev < t < T={schedule.T}, got t={t}, t_prev={t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alpha_bar = schedule.alpha_bar[t].item()
    alpha_bar_prev = schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0
    # 1. predicted x_0, "the prediction of x_0" in DDIM eq. (12)
    x_0_pred = (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)  # math/ddim.tex eq:ddim-predicted-x0
    if clip_x0:
        x_0_pred = x_0_pred.clamp(-1.0, 1.0)
    # 2. sigma_t(eta), DDIM eq. (16)
    sigma = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * math.sqrt(1 - alpha_bar / alpha_bar_prev)  # eq:ddim-sigma
    # 3. "direction pointing to x_t" and the random noise, DDIM eq. (12)
    x_prev = math.sqrt(alpha_bar_prev) * x_0_pred + math.sqrt(max(1 - alpha_bar_prev - sigma**2, 0.0)) * eps  # eq:ddim-step
    if sigma > 0:
        if noise is None:
            raise ValueError(f"noise is required when eta > 0 (eta={eta})")
        x_prev = x_prev + sigma * noise
    return x_prev


@torch.inference_mode()
def ddim_sample(
    model: nn.Module,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    steps: int,
    eta: float = 0.0,
    spacing: Spacing = "uniform",
    clip_x0: bool = False,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    x_T: Tensor | None = None,
    progress: bool = True,
) -> Tensor:
    """DDIM sampling with `steps` model calls on the sub-sequence `ddim_timesteps(T, steps, spacing)`.

    Starts from x_T ~ N(0, I) (or the given `x_T`, e.g. from `ddim_invert`). Returns x_0, `shape`, on `device`.
    """
    device = torch.device(device) if device is not None else model_device(model)
    tau = ddim_timesteps(schedule.T, steps, spacing).tolist()
    x = (torch.randn(shape, generator=generator) if x_T is None else x_T.detach().cpu()).to(device)
    pairs = list(zip(reversed(tau), reversed([-1] + tau[:-1])))  # (t, t_prev) from noisy to clean
    for index, (step, step_prev) in enumerate(tqdm(pairs, desc=f"DDIM-{steps}", disable=not progress)):
        t = torch.full((shape[0],), step, dtype=torch.int64, device=device)
        eps = model(x, t)
        noise = torch.randn(shape, generator=generator).to(device) if eta > 0 else None
        x_next = ddim_step(schedule, x, step, step_prev, eps, eta, noise, clip_x0=clip_x0)
        if callback is not None:
            callback(index, step, x_next, predict_x0_from_eps(schedule, x, t, eps))
        x = x_next
    return x


@torch.inference_mode()
def ddim_invert(
    model: nn.Module,
    schedule: NoiseSchedule,
    x_0: Tensor,
    *,
    steps: int,
    spacing: Spacing = "uniform",
    callback: Callback | None = None,
    progress: bool = True,
) -> Tensor:
    """Encode x_0 into x_T by running the eta = 0 DDIM update in the noising direction (DDIM sec. 5.4).

    Each step reuses the noise predicted at the current, cleaner timestep: x_{t'} = sqrt(a') x_0_pred +
    sqrt(1 - a') eps_theta(x_t, t) for t < t'. That is the Euler step of the ODE in the other direction, so
    `ddim_sample(..., x_T=ddim_invert(...), steps=same)` returns close to x_0, closer as `steps` grows. x_0: (B, ...).
    """
    device = model_device(model)
    tau = ddim_timesteps(schedule.T, steps, spacing).tolist()
    x = x_0.detach().to(device)
    pairs = list(zip([-1] + tau[:-1], tau))  # (from, to), from clean (alpha_bar = 1) to noisy
    for index, (step_from, step_to) in enumerate(tqdm(pairs, desc=f"DDIM inversion-{steps}", disable=not progress)):
        alpha_bar_from = schedule.alpha_bar[step_from].item() if step_from >= 0 else 1.0
        alpha_bar_to = schedule.alpha_bar[step_to].item()
        t = torch.full((x.shape[0],), max(step_from, 0), dtype=torch.int64, device=device)
        eps = model(x, t)
        x_0_pred = (x - math.sqrt(1 - alpha_bar_from) * eps) / math.sqrt(alpha_bar_from)
        x = math.sqrt(alpha_bar_to) * x_0_pred + math.sqrt(1 - alpha_bar_to) * eps  # math/ddim.tex eq:ddim-inversion
        if callback is not None:
            callback(index, step_to, x, x_0_pred)
    return x


def slerp(z_0: Tensor, z_1: Tensor, weight: float | Tensor) -> Tensor:
    """Spherical interpolation between noises z_0 and z_1 (B, ...) at weight in [0, 1] (a float or (K,) for K steps).

    Gaussian noise in high dimension lives near a sphere of radius sqrt(D); a straight line between two such points
    passes well inside it (noise no sampler was trained on), the great circle does not (DDIM sec. 5.3 and appendix D.5).
    Returns (B, ...) for a float weight, (K, B, ...) for a (K,) weight.
    """
    if z_0.shape != z_1.shape:
        raise ValueError(f"z_1 must have the shape of z_0 {tuple(z_0.shape)}, got {tuple(z_1.shape)}")
    w = torch.as_tensor(weight, dtype=z_0.dtype)
    if torch.any((w < 0) | (w > 1)):
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    a, b = z_0.flatten(1), z_1.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))  # (B,)
    w_ = w.reshape(-1, 1) if w.ndim else w.reshape(1, 1)  # (K, 1)
    sin = torch.sin(theta).clamp(min=1e-12)
    out = (torch.sin((1 - w_) * theta) / sin)[..., None] * a + (torch.sin(w_ * theta) / sin)[..., None] * b  # (K, B, D)
    out = out.reshape(out.shape[0], *z_0.shape)
    return out if w.ndim else out[0]
