"""Samplers: DDPM's ancestral sampling (Ho et al. 2020, Algorithm 2) and DDIM (Song et al. 2021).

Plain functions with no hidden state. A step function maps x_t to the next, cleaner sample given a noise prediction;
a sample function runs a network from pure noise to x_0. Code timesteps are 0-based (`ddpm_lite.schedules`), and
`t_prev = -1` stands for the clean data (alpha_bar = 1). `eps_theta` is any callable `eps_theta(x_t, t)` returning
the predicted noise shaped like x_t: a network (`nn.Module`), an exact predictor or a plain function.
`callback(step_index, t, x_next, x_0_pred)` is called after each step with the timestep t the network was called
at (for trajectories and widgets); `generator` makes the noise reproducible. Sampling stops with a ValueError at the
first step whose eps_theta is not shaped like x_t, and (unless `check_finite=False`) with a FloatingPointError at
the first step that produces a NaN or an infinity.

The three loops are one (`_sampling_loop`): DDPM and DDIM visit (t, t_prev) pairs from noisy to clean, DDIM
inversion visits them from clean to noisy; each differs only in its step, which stays readable against its paper.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddpm_lite.checks import check_positive_int
from ddpm_lite.devices import pick_device
from ddpm_lite.elbo import EpsTheta, ReverseVariance, learned_predictor, reverse_variance
from ddpm_lite.forward import predict_x0_from_eps, q_posterior
from ddpm_lite.schedules import NoiseSchedule, check_timesteps, extract

Callback = Callable[[int, int, Tensor, Tensor], None]
Spacing = Literal["uniform", "quadratic"]
Step = Callable[[Tensor, int, int, Tensor], tuple[Tensor, Tensor]]  # (x, t, t_next, eps_theta) -> (x_next, x_0_pred)


def ddpm_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int | Tensor,
    eps_theta: Tensor,
    noise: Tensor,
    variance: ReverseVariance = "posterior",
    clip_x0: bool = False,
    log_variance: Tensor | None = None,
) -> Tensor:
    """One step of DDPM Algorithm 2: x_{t-1} = mu_theta(x_t, t) + sigma_t z, with no noise at t = 0.

    x_t, eps_theta, noise: (B, ...); t: (B,) or int. Without clipping, mu_theta is DDPM eq. (11); with `clip_x0`
    the predicted x_0 is clipped to [-1, 1] first and mu_theta is the posterior mean at it (DDPM's released code).
    variance="learned" takes sigma_t^2 = exp(log_variance) (B, ...), the network's (Improved DDPM eq. 15).
    """
    t = check_timesteps(schedule, t, x_t.shape[0])
    if eps_theta.shape != x_t.shape or noise.shape != x_t.shape:
        raise ValueError(f"eps_theta and noise must have the shape of x_t {tuple(x_t.shape)}, "
                         f"got {tuple(eps_theta.shape)}, {tuple(noise.shape)}")
    # 1. predict x_0 from the noise estimate (DDPM eq. 15); math/forward.tex eq:predict-x0
    x_0_pred = predict_x0_from_eps(schedule, x_t, t, eps_theta)
    if clip_x0:
        x_0_pred = x_0_pred.clamp(-1.0, 1.0)
    # 2. mean of p_theta(x_{t-1} | x_t): the posterior mean at the predicted x_0, which equals
    #    (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_theta) / sqrt(alpha_t) when not clipped (DDPM eq. 11; Algorithm 2 line 4)
    mean, _ = q_posterior(schedule, x_0_pred, x_t, t)  # math/posterior.tex eq:posterior-mean-eps
    # 3. add sigma_t z, except at the last step (Algorithm 2 line 3: z = 0 if t = 1)
    if variance == "learned":
        if log_variance is None or log_variance.shape != x_t.shape:
            raise ValueError(f"variance='learned' needs log_variance shaped like x_t {tuple(x_t.shape)}, got "
                             f"{None if log_variance is None else tuple(log_variance.shape)}")
        reverse_std = (0.5 * log_variance).exp()  # math/objectives.tex eq:learned-variance
    else:
        reverse_std = extract(reverse_variance(schedule, variance), t, x_t).sqrt()
    not_last = extract((torch.arange(schedule.T) > 0).double(), t, x_t)
    return mean + not_last * reverse_std * noise  # math/posterior.tex eq:reverse-variance-choices


def ddim_step(
    schedule: NoiseSchedule,
    x_t: Tensor,
    t: int,
    t_prev: int,
    eps_theta: Tensor,
    eta: float,
    noise: Tensor | None,
    clip_x0: bool = False,
) -> Tensor:
    """One DDIM step from code timestep t to t_prev < t (t_prev = -1: to the clean data), DDIM eq. (12).

    sigma_eta = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * sqrt(1 - alpha_bar / alpha_bar_prev) (DDIM
    eq. 16): eta = 0 is deterministic, eta = 1 with consecutive steps is DDPM with sigma^2 = tilde-beta. `noise` may
    be None when eta = 0. x_t, eps_theta: (B, ...).
    """
    if not -1 <= t_prev < t < schedule.T:
        raise ValueError(f"need -1 <= t_prev < t < T={schedule.T}, got t={t}, t_prev={t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    alpha_bar, alpha_bar_prev = schedule.alpha_bar_at(t), schedule.alpha_bar_at(t_prev)
    # sigma_t(eta), DDIM eq. (16); math/ddim.tex eq:ddim-sigma
    sigma_eta = eta * math.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * math.sqrt(1 - alpha_bar / alpha_bar_prev)
    if sigma_eta > 0 and noise is None:
        raise ValueError(f"noise is required when eta > 0 (eta={eta})")
    return _ddim_update(x_t, alpha_bar, alpha_bar_prev, eps_theta, sigma_eta, noise, clip_x0)[0]


def _ddim_update(x_t: Tensor, alpha_bar: float, alpha_bar_next: float, eps_theta: Tensor, sigma_eta: float = 0.0,
                 noise: Tensor | None = None, clip_x0: bool = False) -> tuple[Tensor, Tensor]:
    """DDIM eq. (12) from the level alpha_bar to alpha_bar_next (either direction): (x_next, x_0_pred)."""
    # 1. predicted x_0, "the prediction of x_0" in DDIM eq. (12); math/ddim.tex eq:ddim-predicted-x0
    x_0_pred = (x_t - math.sqrt(1 - alpha_bar) * eps_theta) / math.sqrt(alpha_bar)
    if clip_x0:
        x_0_pred = x_0_pred.clamp(-1.0, 1.0)
    # 2. "direction pointing to x_t", DDIM eq. (12); math/ddim.tex eq:ddim-step (eq:ddim-inversion when going up)
    x_next = math.sqrt(alpha_bar_next) * x_0_pred + math.sqrt(max(1 - alpha_bar_next - sigma_eta**2, 0.0)) * eps_theta
    # 3. the random noise, sigma_t(eta) z
    if sigma_eta > 0:
        x_next = x_next + sigma_eta * noise
    return x_next, x_0_pred


def _non_finite(tensor: Tensor) -> int:
    return int((~torch.isfinite(tensor)).sum())


def _sampling_loop(eps_theta: EpsTheta, x: Tensor, pairs: Sequence[tuple[int, int]], step: Step, *,
                   callback: Callback | None, desc: str, progress: bool, check_finite: bool) -> Tensor:
    """For each (t, t_next) in `pairs`: call the network at t (the clean data, -1, is called at 0) and move x to
    t_next with `step`. x: (B, ...) on the device the network runs on. With `check_finite`, a NaN or infinity in the
    new x stops sampling with a FloatingPointError naming the step and t (one reduction per step)."""
    for index, (t, t_next) in enumerate(tqdm(pairs, desc=desc, disable=not progress)):
        t_batch = torch.full((x.shape[0],), max(t, 0), dtype=torch.int64, device=x.device)
        eps = eps_theta(x, t_batch)
        if not isinstance(eps, Tensor) or eps.shape != x.shape:
            raise ValueError(f"eps_theta must return the predicted noise shaped like x_t {tuple(x.shape)}, got "
                             f"{tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__} at t={t}")
        x_next, x_0_pred = step(x, t, t_next, eps)
        if check_finite and not bool(torch.isfinite(x_next).all()):
            raise FloatingPointError(f"sampling produced NaN or infinite values at step {index + 1} of {len(pairs)} "
                                     f"(t={t}); the network's eps_theta had {_non_finite(eps)} non-finite entries")
        if callback is not None:
            callback(index, t, x_next, x_0_pred)
        x = x_next
    return x


@torch.inference_mode()
def ddpm_sample(
    eps_theta: EpsTheta,
    schedule: NoiseSchedule,
    shape: tuple[int, ...],
    *,
    generator: torch.Generator | None = None,
    variance: ReverseVariance = "posterior",
    clip_x0: bool = False,
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    check_finite: bool = True,
) -> Tensor:
    """DDPM Algorithm 2: x_T ~ N(0, I), then T steps of `ddpm_step`. Returns x_0, `shape` (B, ...), on `device`
    (default: the network's, see `devices.pick_device`).

    The noise is drawn on the CPU from `generator` (so results do not depend on the device) and moved.
    variance="learned" samples with the network's own variances: eps_theta must be an `objectives.Denoiser` whose
    network learns them (Improved DDPM eq. 15); one network call per step gives both.
    """
    device = pick_device(device, eps_theta)
    x_T = torch.randn(shape, generator=generator).to(device)  # 1. x_T ~ N(0, I)
    network, learned = eps_theta, {}
    if variance == "learned":
        predict = learned_predictor(eps_theta)

        def network(x_t: Tensor, t: Tensor) -> Tensor:  # eps for the loop; the log-variance for the step
            eps, learned["log_variance"] = predict(x_t, t)
            return eps

    def step(x_t: Tensor, t: int, t_prev: int, eps: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn(shape, generator=generator).to(device)  # 3. z ~ N(0, I)
        x_prev = ddpm_step(schedule, x_t, t, eps, noise, variance=variance, clip_x0=clip_x0,
                           log_variance=learned.get("log_variance"))  # 4.
        return x_prev, predict_x0_from_eps(schedule, x_t, t, eps)

    pairs = [(t, t - 1) for t in range(schedule.T - 1, -1, -1)]  # 2. for t = T, ..., 1
    return _sampling_loop(network, x_T, pairs, step, callback=callback, desc="DDPM", progress=progress,
                          check_finite=check_finite)  # 6.


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


@torch.inference_mode()
def ddim_sample(
    eps_theta: EpsTheta,
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
    check_finite: bool = True,
) -> Tensor:
    """DDIM sampling with `steps` network calls on the sub-sequence `ddim_timesteps(T, steps, spacing)`.

    Starts from x_T ~ N(0, I) (or the given `x_T`, e.g. from `ddim_invert`). Returns x_0, `shape`, on `device`.
    """
    device = pick_device(device, eps_theta)
    tau = ddim_timesteps(schedule.T, steps, spacing).tolist()
    x = (torch.randn(shape, generator=generator) if x_T is None else x_T.detach().cpu()).to(device)

    def step(x_t: Tensor, t: int, t_prev: int, eps: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn(shape, generator=generator).to(device) if eta > 0 else None
        x_prev = ddim_step(schedule, x_t, t, t_prev, eps, eta, noise, clip_x0=clip_x0)
        return x_prev, predict_x0_from_eps(schedule, x_t, t, eps)

    pairs = list(zip(reversed(tau), reversed([-1] + tau[:-1])))  # (t, t_prev) from noisy to clean
    return _sampling_loop(eps_theta, x, pairs, step, callback=callback, desc=f"DDIM-{steps}",
                          progress=progress, check_finite=check_finite)


@torch.inference_mode()
def ddim_invert(
    eps_theta: EpsTheta,
    schedule: NoiseSchedule,
    x_0: Tensor,
    *,
    steps: int,
    spacing: Spacing = "uniform",
    callback: Callback | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    check_finite: bool = True,
) -> Tensor:
    """Encode x_0 into x_T by running the eta = 0 DDIM update in the noising direction (DDIM sec. 5.4).

    Each step reuses the noise predicted at the current, cleaner timestep: x_{t'} = sqrt(alpha_bar') x_0_pred +
    sqrt(1 - alpha_bar') eps_theta(x_t, t) for t < t'. That is the Euler step of the ODE in the other direction, so
    `ddim_sample(..., x_T=ddim_invert(...), steps=same)` returns close to x_0, closer as `steps` grows. x_0: (B, ...).
    """
    device = pick_device(device, eps_theta)
    tau = ddim_timesteps(schedule.T, steps, spacing).tolist()

    def step(x_t: Tensor, t: int, t_next: int, eps: Tensor) -> tuple[Tensor, Tensor]:
        # math/ddim.tex eq:ddim-inversion: eq. (12) with eta = 0 from alpha_bar[t] up to alpha_bar[t_next]
        return _ddim_update(x_t, schedule.alpha_bar_at(t), schedule.alpha_bar_at(t_next), eps)

    pairs = list(zip([-1] + tau[:-1], tau))  # (from, to), from clean (alpha_bar = 1) to noisy
    return _sampling_loop(eps_theta, x_0.detach().to(device), pairs, step, callback=callback,
                          desc=f"DDIM inversion-{steps}", progress=progress, check_finite=check_finite)


def sample_in_batches(sample: Callable[[slice, torch.Generator], Tensor], n: int, batch_size: int, *,
                      seed: int | None = None, generator: torch.Generator | None = None) -> Tensor:
    """n samples drawn `batch_size` at a time, concatenated on the CPU: `sample(rows, generator)` returns the
    samples for rows rows.start..rows.stop-1 (their count is len(range(n)[rows]); the rows also pick per-row inputs
    such as class labels).

    Exactly one of `seed` and `generator`: with `seed` every batch gets a fresh generator seeded `seed + rows.start`
    (a batch's noise does not depend on the batches before it); with `generator` the batches draw from it in turn.
    Batches keep memory bounded and, on a CPU, run faster per image than one large batch.
    """
    if (seed is None) == (generator is None):
        raise ValueError(f"give exactly one of seed and generator, got seed={seed!r}, generator={generator!r}")
    check_positive_int("n", n)
    check_positive_int("batch_size", batch_size)
    batches = []
    for start in range(0, n, batch_size):
        rows = slice(start, min(start + batch_size, n))
        batch_generator = generator if seed is None else torch.Generator().manual_seed(seed + start)
        batches.append(sample(rows, batch_generator).cpu())
    return torch.cat(batches)


def slerp(z_0: Tensor, z_1: Tensor, weight: float | Tensor) -> Tensor:
    """Spherical interpolation between noises z_0 and z_1 (B, ...) at weight in [0, 1] (a float or (K,) for K steps).

    Gaussian noise in high dimension lives near a sphere of radius sqrt(D); a straight line between two such points
    passes well inside it (noise no sampler was trained on), the great circle does not (DDIM sec. 5.3 and appendix D.5).
    Returns (B, ...) for a float weight, (K, B, ...) for a (K,) weight.
    """
    if z_0.shape != z_1.shape:
        raise ValueError(f"z_1 must have the shape of z_0 {tuple(z_0.shape)}, got {tuple(z_1.shape)}")
    weights = torch.as_tensor(weight, dtype=z_0.dtype)
    if torch.any((weights < 0) | (weights > 1)):
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    flat_0, flat_1 = z_0.flatten(1), z_1.flatten(1)
    cos = (flat_0 * flat_1).sum(1) / (flat_0.norm(dim=1) * flat_1.norm(dim=1))
    theta = torch.arccos(cos.clamp(-1.0, 1.0))  # (B,)
    column = weights.reshape(-1, 1)  # (K, 1), K = 1 for a float weight
    sin = torch.sin(theta).clamp(min=1e-12)
    out = ((torch.sin((1 - column) * theta) / sin)[..., None] * flat_0
           + (torch.sin(column * theta) / sin)[..., None] * flat_1)  # (K, B, D)
    out = out.reshape(out.shape[0], *z_0.shape)
    return out if weights.ndim else out[0]
