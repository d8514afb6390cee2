"""Few-step sampling after DDIM: the probability-flow ODE in EDM's sigma view (Karras et al. 2022), solved by Euler
(= DDIM with eta = 0), Heun (EDM Algorithms 1 and 2) and DPM-Solver++ 2M (Lu et al. 2022b), on the grids people use:
the timestep spacings of Lin et al. 2023 (leading, trailing, linspace), Karras' rho-spacing and uniform log-SNR;
and the zero-terminal-SNR rescaling of a schedule (Lin et al. 2023, Algorithm 1).

Variables (math/fast_sampling.tex): the noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) (EDM's sigma, DDIM's
sigma_t, `sde.noise_levels`), x_bar = x / sqrt(alpha_bar), and DPM-Solver's log-SNR lambda = -log sigma. The ODE is
d x_bar / d sigma = eps(x_bar, sigma) (eq:pf-ode-sigma), where an `EpsAtSigma` eps(x_bar, sigma) returns the predicted
noise: `eps_at_sigma(model, schedule)` for a network trained on code timesteps, `mixture_eps_at_noise_level` for the
2-D mixture's exact one. A grid is a decreasing float64 tensor sigmas[0] > ... > sigmas[N] = 0: N steps, whose
function evaluations (NFE) are N for Euler and DPM-Solver++ 2M and 2N - 1 for Heun (`nfe`). Steps are plain
functions on given model outputs (the form diffusers' schedulers are tested against); `solve` runs one from a grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm_lite.checks import check_finite_number, check_positive_int
from ddpm_lite.devices import pick_device
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.sde import noise_levels

EpsAtSigma = Callable[[Tensor, float], Tensor]  # (x_bar (B, ...), sigma) -> predicted noise (B, ...)
Solver = Literal["euler", "heun", "dpmpp-2m"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]
SigmaSpacing = Literal["leading", "trailing", "linspace", "karras", "log-snr"]
Callback = Callable[[int, float, Tensor, Tensor], None]  # (step index, sigma, x_bar_next, denoised)


def log_snr(noise_level: Tensor) -> Tensor:
    """DPM-Solver's lambda = log(alpha / sigma_VP) = -log(noise level); SNR = exp(2 lambda). math/fast_sampling.tex
    eq:log-snr"""
    return -torch.log(noise_level)


# ---------------------------------------------------------------------------------------------------- grids


def timesteps(T: int, steps: int, spacing: TimestepSpacing) -> Tensor:
    """The code timesteps a sampler of `steps` steps visits, from noisy to clean: (steps,) int64, Lin et al. 2023,
    Table 2, in 0-based code t. "linspace": round(linspace(0, T - 1, steps)); "leading": 0, c, ..., (steps - 1) c with
    c = T // steps (DDIM's "uniform"; it never visits T - 1); "trailing": round(T - k T / steps) - 1, k = 0, 1, ...
    (it starts at T - 1). math/fast_sampling.tex eq:timestep-spacings"""
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an int in [1, T={T}], got {steps!r}")
    if spacing == "linspace":
        t = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().flip(0)
    elif spacing == "leading":
        t = (torch.arange(steps, dtype=torch.float64) * (T // steps)).flip(0)
    elif spacing == "trailing":
        t = (T - torch.arange(steps, dtype=torch.float64) * (T / steps)).round() - 1
    else:
        raise ValueError(f"spacing must be one of {get_args(TimestepSpacing)}, got {spacing!r}")
    return t.to(torch.int64)


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. (5): sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
    for i < N = `steps`, then sigma_N = 0. (steps + 1,) float64. math/fast_sampling.tex eq:karras-sigmas"""
    _check_range(sigma_min, sigma_max, steps)
    check_finite_number("rho", rho)
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64) if steps > 1 else torch.zeros(1, dtype=torch.float64)
    high, low = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return torch.cat([(high + ramp * (low - high)) ** rho, torch.zeros(1, dtype=torch.float64)])


def log_snr_sigmas(sigma_min: float, sigma_max: float, steps: int) -> Tensor:
    """Uniform in log-SNR (DPM-Solver's "logSNR" spacing, Lu et al. 2022a): lambda_i evenly spaced from -log sigma_max
    to -log sigma_min, sigma_i = exp(-lambda_i), then 0. (steps + 1,) float64. math/fast_sampling.tex eq:log-snr-spacing"""
    _check_range(sigma_min, sigma_max, steps)
    lam = torch.linspace(-math.log(sigma_max), -math.log(sigma_min), steps, dtype=torch.float64)
    return torch.cat([torch.exp(-lam), torch.zeros(1, dtype=torch.float64)])


def sigma_schedule(schedule: NoiseSchedule, steps: int, spacing: SigmaSpacing = "karras", rho: float = 7.0,
                   sigma_max: float | None = None) -> Tensor:
    """A grid of `steps` steps for `schedule`: the noise levels at `timesteps(T, steps, spacing)` for the timestep
    spacings, or Karras' / uniform log-SNR levels between the schedule's smallest noise level and `sigma_max` (default:
    its largest); with a final 0. (steps + 1,) float64, decreasing.

    `sigma_max` caps a Karras or log-SNR grid below the schedule's top level, as EDM's 80 (Karras et al. 2022,
    Table 1): cosine betas end near sigma = 20,000, where a data-prediction step multiplies the network's error in eps
    by sigma (math/fast_sampling.tex eq:sigma-max-cap). It must lie in (sigma_min, the schedule's sigma_max]; the
    timestep spacings take the schedule's own levels and refuse it."""
    levels = noise_levels(schedule)
    if spacing in get_args(TimestepSpacing):
        if sigma_max is not None:
            raise ValueError(f"sigma_max caps the karras and log-snr grids; spacing {spacing!r} visits the schedule's "
                             f"own timesteps (got sigma_max={sigma_max})")
        return torch.cat([levels[timesteps(schedule.T, steps, spacing)], torch.zeros(1, dtype=torch.float64)])
    check_positive_int("steps", steps)
    if spacing not in ("karras", "log-snr"):
        raise ValueError(f"spacing must be one of {get_args(SigmaSpacing)}, got {spacing!r}")
    low, high = levels[0].item(), levels[-1].item()
    if sigma_max is not None:
        check_finite_number("sigma_max", sigma_max)
        if not low < sigma_max <= high:
            raise ValueError(f"sigma_max must be in (sigma_min, the schedule's sigma_max] = ({low:.4g}, {high:.6g}], "
                             f"got {sigma_max}")
        high = float(sigma_max)
    if spacing == "karras":
        return karras_sigmas(low, high, steps, rho)
    return log_snr_sigmas(low, high, steps)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. 2023, Algorithm 1: shift and scale sqrt(alpha_bar) so that its last value is 0 (zero SNR: pure noise
    at t = T - 1) and its first is kept, then return the betas of the new alpha_bar. betas: (T,) float64.
    math/fast_sampling.tex eq:zero-terminal-snr"""
    if not (isinstance(betas, Tensor) and betas.ndim == 1 and len(betas) >= 2):
        raise ValueError(f"betas must be a (T,) tensor with T >= 2, got {getattr(betas, 'shape', type(betas).__name__)}")
    root = torch.cumprod(1 - betas.to(torch.float64), 0).sqrt()  # sqrt(alpha_bar)
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)  # 0 at T - 1, unchanged at 0, increasing in the old value
    alpha_bar = root**2
    return torch.cat([1 - alpha_bar[:1], 1 - alpha_bar[1:] / alpha_bar[:-1]])


def _check_range(sigma_min: float, sigma_max: float, steps: int) -> None:
    check_positive_int("steps", steps)
    check_finite_number("sigma_min", sigma_min)
    check_finite_number("sigma_max", sigma_max)
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")


# ---------------------------------------------------------------------------------------------------- the model


def eps_at_sigma(model: nn.Module | Callable[[Tensor, Tensor], Tensor], schedule: NoiseSchedule) -> EpsAtSigma:
    """A network trained on code timesteps as an `EpsAtSigma`: eps_theta(x_bar / sqrt(1 + sigma^2), t(sigma)), where
    t(sigma) interpolates t linearly in log sigma between grid levels (diffusers' `_sigma_to_t`), so a level off the
    grid gets a fractional t (int64 on the grid). EDM's preconditioning of an eps-model, c_in = 1 / sqrt(1 + sigma^2).
    math/fast_sampling.tex eq:t-of-sigma-continuous, eq:denoiser"""
    log_levels = noise_levels(schedule).log()

    def eps(x_bar: Tensor, sigma: float) -> Tensor:
        t = _t_of_sigma(log_levels, sigma)
        device = pick_device(None, model) if isinstance(model, nn.Module) else x_bar.device
        x_t = (x_bar / math.sqrt(1 + sigma**2)).to(device)
        if abs(t - round(t)) < 1e-6:  # on the grid, up to the rounding of log
            t_batch = torch.full((x_bar.shape[0],), int(round(t)), dtype=torch.int64, device=device)
        else:
            t_batch = torch.full((x_bar.shape[0],), t, dtype=torch.float32, device=device)
        return model(x_t, t_batch).to(x_bar.dtype)

    return eps


def _t_of_sigma(log_levels: Tensor, sigma: float) -> float:
    """eq:t-of-sigma-continuous: clamped to [0, T - 1] outside the grid's levels."""
    log_sigma = math.log(max(sigma, 1e-10))
    if log_sigma <= log_levels[0]:
        return 0.0
    if log_sigma >= log_levels[-1]:
        return float(len(log_levels) - 1)
    high = int(torch.searchsorted(log_levels, torch.tensor([log_sigma], dtype=torch.float64)).item())
    low = high - 1
    weight = (log_sigma - log_levels[low].item()) / (log_levels[high].item() - log_levels[low].item())
    return 0.0 if weight == 0 else (float(high) if weight == 1 else low + weight)


# ---------------------------------------------------------------------------------------------------- steps


def denoised_from_eps(x_bar: Tensor, sigma: float, eps: Tensor) -> Tensor:
    """EDM's denoiser D(x_bar; sigma) = x_bar - sigma eps: the predicted x_0 (x_bar = x_0 at sigma = 0).
    math/fast_sampling.tex eq:denoiser"""
    return x_bar - sigma * eps


def euler_step(x_bar: Tensor, sigma: float, sigma_next: float, eps: Tensor) -> Tensor:
    """x_bar_{i+1} = x_bar_i + (sigma_{i+1} - sigma_i) eps_i: Euler on d x_bar / d sigma = eps, which is DDIM's step
    with eta = 0 divided by sqrt(alpha_bar_next). math/fast_sampling.tex eq:euler-step; math/ddim.tex eq:ddim-euler-bar"""
    return x_bar + (sigma_next - sigma) * eps


def heun_correct(x_bar: Tensor, sigma: float, sigma_next: float, eps: Tensor, eps_next: Tensor) -> Tensor:
    """EDM Algorithm 1, line 8: x_bar_{i+1} = x_bar_i + (sigma_{i+1} - sigma_i) (d_i + d'_i) / 2, with d = eps for an
    eps-model ((x_bar - D) / sigma) and d'_i = eps at the Euler point, sigma_{i+1} (> 0). math/fast_sampling.tex
    eq:heun-step"""
    return x_bar + (sigma_next - sigma) * 0.5 * (eps + eps_next)


def dpmpp_2m_step(x_bar: Tensor, sigma: float, sigma_next: float, denoised: Tensor,
                  denoised_prev: Tensor | None = None, sigma_prev: float | None = None) -> Tensor:
    """One step of DPM-Solver++(2M) (Lu et al. 2022b, Algorithm 2) in x_bar: the ODE's linear part solved exactly in
    lambda = -log sigma, x_bar_{i+1} = (sigma_{i+1} / sigma_i) x_bar_i + (1 - sigma_{i+1} / sigma_i) D_hat, with D_hat the
    data prediction extrapolated from D_{i-1} (at sigma_prev) and D_i: (1 + 1 / (2 r)) D_i - D_{i-1} / (2 r),
    r = h_{i-1} / h_i. Without a previous prediction, or to sigma_next = 0 (h infinite), the first-order step,
    D_hat = D_i (= DDIM). math/fast_sampling.tex eq:dpmpp-first-order, eq:dpmpp-2m"""
    ratio = sigma_next / sigma  # exp(-h), h = lambda_{i+1} - lambda_i
    if denoised_prev is None or sigma_next == 0:
        return ratio * x_bar + (1 - ratio) * denoised  # eq:dpmpp-first-order
    if sigma_prev is None or not sigma_prev > sigma:
        raise ValueError(f"sigma_prev must be the previous, larger noise level (> {sigma}), got {sigma_prev}")
    h, h_prev = math.log(sigma / sigma_next), math.log(sigma_prev / sigma)
    r = h_prev / h
    extrapolated = (1 + 1 / (2 * r)) * denoised - denoised_prev / (2 * r)  # eq:dpmpp-2m
    return ratio * x_bar + (1 - ratio) * extrapolated


def nfe(solver: Solver, steps: int) -> int:
    """Function evaluations of `steps` steps ending at sigma = 0: Heun's last step is a single Euler step."""
    check_positive_int("steps", steps)
    if solver not in get_args(Solver):
        raise ValueError(f"solver must be one of {get_args(Solver)}, got {solver!r}")
    return 2 * steps - 1 if solver == "heun" else steps


# ---------------------------------------------------------------------------------------------------- solving


@torch.inference_mode()
def solve(eps_fn: EpsAtSigma, sigmas: Tensor, x_bar: Tensor, solver: Solver = "heun", *, churn: float = 0.0,
          s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
          generator: torch.Generator | None = None, callback: Callback | None = None,
          progress: bool = False) -> Tensor:
    """Integrate d x_bar / d sigma = eps from x_bar at sigmas[0] down the grid `sigmas` (decreasing, >= 0) with
    `solver`; returns x_bar at the last level: the sample x_0 when it is 0 (a grid that stops at a level > 0 measures a
    solver's error there). x_bar: (B, ...).

    `churn` > 0 with "heun" is EDM's stochastic sampler (Algorithm 2): where s_tmin <= sigma_i <= s_tmax, noise of
    variance sigma_hat^2 - sigma_i^2 (times s_noise^2, drawn on the CPU from `generator`) first raises the level to
    sigma_hat = sigma_i (1 + gamma), gamma = min(churn / N, sqrt(2) - 1), math/fast_sampling.tex eq:edm-churn.
    `callback(i, sigma_i, x_bar_{i+1}, denoised_i)` runs after each step."""
    if solver not in get_args(Solver):
        raise ValueError(f"solver must be one of {get_args(Solver)}, got {solver!r}")
    if not (isinstance(sigmas, Tensor) and sigmas.ndim == 1 and len(sigmas) >= 2 and sigmas[-1] >= 0
            and bool((sigmas[1:] < sigmas[:-1]).all())):
        raise ValueError("sigmas must be a decreasing 1-D tensor of at least two levels >= 0")
    check_finite_number("churn", churn, minimum=0)
    if churn > 0 and solver != "heun":
        raise ValueError(f"churn (EDM's stochastic sampler, Algorithm 2) needs solver='heun', got {solver!r}")
    levels = sigmas.tolist()
    steps = len(levels) - 1
    previous = None  # (denoised, sigma) of the step before, for DPM-Solver++ 2M
    for i in tqdm(range(steps), desc=f"{solver}-{steps}", disable=not progress):
        sigma, sigma_next = levels[i], levels[i + 1]
        if churn > 0 and s_tmin <= sigma <= s_tmax:  # Algorithm 2, lines 4-6
            gamma = min(churn / steps, math.sqrt(2) - 1)
            sigma_hat = sigma * (1 + gamma)
            noise = torch.randn(x_bar.shape, generator=generator, dtype=x_bar.dtype).to(x_bar.device)
            x_bar = x_bar + math.sqrt(sigma_hat**2 - sigma**2) * s_noise * noise
            sigma = sigma_hat
        eps = eps_fn(x_bar, sigma)  # Algorithm 1, line 4: d_i = (x_i - D(x_i; t_i)) / t_i = eps
        denoised = denoised_from_eps(x_bar, sigma, eps)
        if solver == "dpmpp-2m":
            x_next = dpmpp_2m_step(x_bar, sigma, sigma_next, denoised, *(previous or (None, None)))
            previous = (denoised, sigma)
        else:
            x_next = euler_step(x_bar, sigma, sigma_next, eps)  # Algorithm 1, line 5
            if solver == "heun" and sigma_next > 0:  # lines 6-8: the second-order correction
                x_next = heun_correct(x_bar, sigma, sigma_next, eps, eps_fn(x_next, sigma_next))
        if callback is not None:
            callback(i, sigma, x_next, denoised)
        x_bar = x_next
    return x_bar


def fast_sample(model: nn.Module, schedule: NoiseSchedule, shape: tuple[int, ...], *, solver: Solver = "dpmpp-2m",
                steps: int = 10, spacing: SigmaSpacing = "karras", rho: float = 7.0, sigma_max: float | None = None,
                churn: float = 0.0, generator: torch.Generator | None = None, device: torch.device | str | None = None,
                x_T: Tensor | None = None, callback: Callback | None = None, progress: bool = True) -> Tensor:
    """Sample a network with `steps` steps of `solver` on `sigma_schedule(schedule, steps, spacing, rho, sigma_max)`:
    x_T ~ N(0, I) (or the given x_T, drawn on the CPU from `generator`) is scaled to x_bar = x_T sqrt(1 + sigma_0^2), the
    level of pure noise at sigma_0 (diffusers' init_noise_sigma; below the schedule's top level it drops the signal's
    share 1 / sqrt(1 + sigma_0^2) of x_T, as EDM does). Returns x_0, `shape`, on `device`."""
    device = pick_device(device, model)
    sigmas = sigma_schedule(schedule, steps, spacing, rho, sigma_max)
    x = torch.randn(shape, generator=generator) if x_T is None else x_T.detach().cpu()
    x_bar = (x * math.sqrt(1 + sigmas[0].item() ** 2)).to(device)
    return solve(eps_at_sigma(model, schedule), sigmas, x_bar, solver, churn=churn, generator=generator,
                 callback=callback, progress=progress)
