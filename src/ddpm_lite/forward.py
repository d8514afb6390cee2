"""The forward (noising) process q and its posterior q(x_{t-1} | x_t, x_0).

Time indexing as in `ddpm_lite.schedules`: code t in [0, T) is the paper's t+1. So `q_sample(schedule, x_0, t)`
returns the paper's x_{t+1}, and `q_posterior(schedule, x_0, x_t, t)` is the distribution of the sample one step
cleaner (code t-1; the clean x_0 itself when t = 0). `x_0` always means clean data.

Shapes: data tensors are (B, ...) (images (B, C, H, W), points (B, D)); `t` is an int64 tensor of shape (B,) or a
Python int for the whole batch.
"""

from __future__ import annotations

from torch import Tensor

from ddpm_lite.schedules import NoiseSchedule, check_timesteps, extract


def q_step(schedule: NoiseSchedule, x_prev: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
    """One step of the Markov chain q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I).

    x_prev: (B, ...) the sample at code timestep t-1 (clean data when t = 0); eps: like x_prev, standard normal.
    Returns x_t, shaped like x_prev.
    """
    t = _check_inputs(schedule, x_prev, t, eps, names=("x_prev", "eps"))
    beta = extract(schedule.beta, t, x_prev)
    return (1 - beta).sqrt() * x_prev + beta.sqrt() * eps  # DDPM eq. (2); math/forward.tex eq:forward-step


def q_sample(schedule: NoiseSchedule, x_0: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
    """Sample x_t ~ q(x_t | x_0) in closed form, without iterating the chain.

    x_0: (B, ...) clean data; eps: like x_0, standard normal; t: (B,) or int. Returns x_t, shaped like x_0.
    """
    t = _check_inputs(schedule, x_0, t, eps, names=("x_0", "eps"))
    sqrt_alpha_bar = extract(schedule.sqrt_alpha_bar, t, x_0)
    sqrt_one_minus_alpha_bar = extract(schedule.sqrt_one_minus_alpha_bar, t, x_0)
    return sqrt_alpha_bar * x_0 + sqrt_one_minus_alpha_bar * eps  # DDPM eq. (4); math/forward.tex eq:reparam


def q_posterior(schedule: NoiseSchedule, x_0: Tensor, x_t: Tensor, t: int | Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of the Gaussian q(x_{t-1} | x_t, x_0).

    x_0, x_t: (B, ...); t: (B,) or int. Returns (mean, variance): mean shaped like x_t, variance (B, 1, ..., 1)
    (the same for every coordinate). At t = 0 the variance is 0 and the mean is x_0.
    """
    t = _check_inputs(schedule, x_0, t, x_t, names=("x_0", "x_t"))
    mean = (
        extract(schedule.posterior_mean_coef_x0, t, x_t) * x_0
        + extract(schedule.posterior_mean_coef_xt, t, x_t) * x_t
    )  # DDPM eq. (7); math/posterior.tex eq:posterior-mean
    variance = extract(schedule.posterior_variance, t, x_t)  # DDPM eq. (7); math/posterior.tex eq:posterior-variance
    return mean, variance


def predict_x0_from_eps(schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor, eps: Tensor) -> Tensor:
    """Invert the closed form: the x_0 that, with noise `eps`, gives `x_t` at timestep t.

    x_t, eps: (B, ...); t: (B,) or int. Returns x_0 shaped like x_t. With a model's eps this is its guess of x_0.
    """
    t = _check_inputs(schedule, x_t, t, eps, names=("x_t", "eps"))
    sqrt_alpha_bar = extract(schedule.sqrt_alpha_bar, t, x_t)
    sqrt_one_minus_alpha_bar = extract(schedule.sqrt_one_minus_alpha_bar, t, x_t)
    return (x_t - sqrt_one_minus_alpha_bar * eps) / sqrt_alpha_bar  # DDPM eq. (15); math/forward.tex eq:predict-x0


def snr(schedule: NoiseSchedule) -> Tensor:
    """Signal-to-noise ratio of q(x_t | x_0) at every timestep: alpha_bar / (1 - alpha_bar), (T,) float64.

    In decibels: 10 * log10(snr). math/forward.tex eq:snr
    """
    return schedule.alpha_bar / (1 - schedule.alpha_bar)  # Variational Diffusion Models (Kingma et al. 2021), sec. 2; math/forward.tex eq:snr


def _check_inputs(
    schedule: NoiseSchedule, x: Tensor, t: int | Tensor, other: Tensor, names: tuple[str, str]
) -> Tensor:
    """Check two same-shaped data tensors and return t as (B,) int64."""
    for name, value in zip(names, (x, other)):
        if not isinstance(value, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.ndim < 1:
            raise ValueError(f"{name} must have a batch dimension, got a 0-d tensor")
    if x.shape != other.shape:
        raise ValueError(f"{names[1]} must have the shape of {names[0]}, got {tuple(other.shape)} vs {tuple(x.shape)}")
    return check_timesteps(schedule, t, x.shape[0])

