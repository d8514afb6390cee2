"""Noise schedules: the betas and every per-timestep quantity derived from them.

Notation (one name per quantity; see math/notation.tex):

    code name                   DDPM paper (Ho et al. 2020)         DDIM paper (Song et al. 2021)   diffusers
    --------------------------  ----------------------------------  ------------------------------  -------------------
    beta[t]                     beta_{t+1}                           1 - alpha_{t+1}/alpha_t         betas
    alpha[t]                    alpha_{t+1} = 1 - beta_{t+1}         alpha_{t+1}/alpha_t             alphas
    alpha_bar[t]                bar-alpha_{t+1} = prod_s alpha_s     alpha_{t+1}                     alphas_cumprod
    alpha_bar_prev[t]           bar-alpha_t  (alpha_bar_prev[0] = 1) alpha_t                         alpha_prod_t_prev (inline)
    posterior_variance[t]       tilde-beta_{t+1}                     sigma_{t+1}^2 at eta = 1        (DDPMScheduler variance)

Three different sigmas, three names (math/notation.tex):
    reverse_std     DDPM's sigma_t, the standard deviation of p_theta(x_{t-1} | x_t) (Algorithm 2 line 4; sec. 3.2),
                    sqrt of `elbo.reverse_variance`
    sigma_eta       DDIM's sigma_t(eta) (DDIM eq. 16), the standard deviation of the fresh noise in a DDIM step
    noise_level     DDIM's sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t) (DDIM sec. 4.3; EDM's sigma),
                    `sde.noise_levels(schedule)` for every t
The network's output, the predicted noise, is `eps_theta` everywhere; `eps` is the true noise.

Time indexing, stated once (STYLE.md rule 4): code timesteps are 0-based, t in {0, ..., T-1}, and code t is
the paper's t+1. So `alpha_bar[0] = 1 - beta[0]` is the paper's bar-alpha_1, `alpha_bar[t]` equals diffusers'
`alphas_cumprod[t]`, and `alpha_bar_prev[0] = 1` stands for the clean data (the paper's bar-alpha_0).

Every table is float64 (rule 5); `extract` casts to the data's dtype at the point of use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ScheduleName = Literal["linear", "cosine"]


def linear_betas(T: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear schedule (Ho et al. 2020, sec. 4): `T` betas evenly spaced in [beta_start, beta_end].

    The defaults are the paper's, chosen for T = 1000. Returns (T,) float64.
    math/forward.tex eq:linear-schedule
    """
    _check_T(T)
    for name, value in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {value}")
    if beta_start > beta_end:
        raise ValueError(f"beta_start must not exceed beta_end, got {beta_start} > {beta_end}")
    return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)  # math/forward.tex eq:linear-schedule


def cosine_betas(T: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17). Returns (T,) float64.

    bar-alpha(t) = f(t) / f(0) with f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2), and
    beta_t = 1 - bar-alpha(t) / bar-alpha(t - 1), clipped to at most `max_beta` so the last step is not singular.
    math/forward.tex eq:cosine-schedule, eq:cosine-beta
    """
    _check_T(T)
    if s <= 0.0:
        raise ValueError(f"s must be positive, got {s}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2  # Improved DDPM eq. 17; math/forward.tex eq:cosine-schedule
    alpha_bar = f / f[0]
    beta = 1 - alpha_bar[1:] / alpha_bar[:-1]  # math/forward.tex eq:cosine-beta
    return beta.clamp(max=max_beta)


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no single truth value
class NoiseSchedule:
    """Every per-timestep table a DDPM or DDIM sampler needs, each (T,) float64, indexed by code t in [0, T).

    Build it with `NoiseSchedule.from_betas(betas)` (or `NoiseSchedule.named("linear", T)`), never by hand.
    """

    beta: Tensor  # beta_t, the variance added by step t; math/forward.tex eq:forward-step
    alpha: Tensor  # alpha_t = 1 - beta_t
    alpha_bar: Tensor  # bar-alpha_t = prod_{s <= t} alpha_s; math/forward.tex eq:alpha-bar
    alpha_bar_prev: Tensor  # bar-alpha_{t-1}, with alpha_bar_prev[0] = 1 (the clean data)
    sqrt_alpha_bar: Tensor  # scale of x_0 in q(x_t | x_0); math/forward.tex eq:forward-marginal
    sqrt_one_minus_alpha_bar: Tensor  # scale of eps in q(x_t | x_0); math/forward.tex eq:reparam
    posterior_variance: Tensor  # tilde-beta_t; math/posterior.tex eq:posterior-variance
    posterior_log_variance_clipped: Tensor  # log tilde-beta_t, t=0 takes t=1's; math/posterior.tex eq:posterior-log-variance-clipped
    posterior_mean_coef_x0: Tensor  # weight of x_0 in tilde-mu_t; math/posterior.tex eq:posterior-mean
    posterior_mean_coef_xt: Tensor  # weight of x_t in tilde-mu_t; math/posterior.tex eq:posterior-mean

    @classmethod
    def from_betas(cls, betas: Tensor) -> NoiseSchedule:
        """Derive every table from betas: (T,) with each beta in (0, 1). The tables are float64."""
        beta = torch.as_tensor(betas).detach().to(dtype=torch.float64, device="cpu").clone()
        if beta.ndim != 1 or beta.numel() < 2:
            raise ValueError(f"betas must be a 1-D tensor with at least 2 entries, got shape {tuple(beta.shape)}")
        if not torch.all((beta > 0) & (beta < 1)):
            bad = beta[~((beta > 0) & (beta < 1))]
            raise ValueError(f"betas must lie in the open interval (0, 1), got values such as {bad[0].item()}")
        alpha = 1 - beta
        alpha_bar = torch.cumprod(alpha, dim=0)  # DDPM sec. 2; math/forward.tex eq:alpha-bar
        alpha_bar_prev = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        posterior_variance = beta * (1 - alpha_bar_prev) / (1 - alpha_bar)  # DDPM eq. (7); math/posterior.tex eq:posterior-variance
        return cls(
            beta=beta,
            alpha=alpha,
            alpha_bar=alpha_bar,
            alpha_bar_prev=alpha_bar_prev,
            sqrt_alpha_bar=alpha_bar.sqrt(),
            sqrt_one_minus_alpha_bar=(1 - alpha_bar).sqrt(),
            posterior_variance=posterior_variance,
            # tilde-beta at code t = 0 is exactly 0, so its log is -inf; Improved DDPM's code uses t = 1's value there.
            posterior_log_variance_clipped=torch.cat([posterior_variance[1:2], posterior_variance[1:]]).log(),
            # DDPM eq. (7); math/posterior.tex eq:posterior-mean
            posterior_mean_coef_x0=alpha_bar_prev.sqrt() * beta / (1 - alpha_bar),
            posterior_mean_coef_xt=alpha.sqrt() * (1 - alpha_bar_prev) / (1 - alpha_bar),
        )

    @classmethod
    def named(cls, name: ScheduleName, T: int = 1000) -> NoiseSchedule:
        """The linear (DDPM) or cosine (Improved DDPM) schedule with its default parameters."""
        if name == "linear":
            return cls.from_betas(linear_betas(T))
        if name == "cosine":
            return cls.from_betas(cosine_betas(T))
        raise ValueError(f"name must be 'linear' or 'cosine', got {name!r}")

    @property
    def T(self) -> int:
        """Number of diffusion steps; valid code timesteps are 0, ..., T-1."""
        return self.beta.numel()

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.T}, beta=[{self.beta[0].item():.3g}, ..., {self.beta[-1].item():.3g}], "
            f"alpha_bar[-1]={self.alpha_bar[-1].item():.3g})"
        )

    def alpha_bar_at(self, t: int) -> float:
        """alpha_bar[t] for a code timestep t in [0, T), and 1 for t = -1, the clean data (the paper's bar-alpha_0).

        The value a sampler needs at the timestep it steps to (DDIM's t_prev) or from (DDIM inversion).
        """
        if isinstance(t, bool) or not isinstance(t, int) or not -1 <= t < self.T:
            raise ValueError(f"t must be an int in [-1, T) = [-1, {self.T}) (-1: the clean data), got {t!r}")
        return self.alpha_bar[t].item() if t >= 0 else 1.0


def check_timesteps(schedule: NoiseSchedule, t: int | Tensor, batch_size: int) -> Tensor:
    """Validate `t` and return it as an int64 tensor of shape (batch_size,).

    `t` is a Python int (one timestep for the whole batch) or an integer tensor of shape (batch_size,) or ().
    Raises ValueError for non-integer t, a wrong shape, or a value outside [0, T).
    """
    if isinstance(t, bool) or not isinstance(t, (int, Tensor)):
        raise ValueError(f"t must be an int or an int64 tensor of shape ({batch_size},), got {type(t).__name__} {t!r}")
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise ValueError(f"t must hold integer timesteps, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(batch_size)
    if t.shape != (batch_size,):
        raise ValueError(f"t must have shape ({batch_size},) to match the batch, got {tuple(t.shape)}")
    if batch_size > 0 and (t.min() < 0 or t.max() >= schedule.T):
        bad = t[(t < 0) | (t >= schedule.T)][0].item()
        raise ValueError(f"t must lie in [0, T) = [0, {schedule.T}), got {bad}")
    return t.to(torch.int64)


def extract(table: Tensor, t: Tensor, x: Tensor) -> Tensor:
    """Gather `table[t]` for a batch and shape it to broadcast against `x`, in x's dtype and device.

    table: (T,) float64; t: (B,) int64; x: (B, ...). Returns (B, 1, ..., 1) with x.ndim dimensions.
    (improved-diffusion's `_extract_into_tensor`.)
    """
    values = table.to(x.device)[t.to(x.device)].to(x.dtype)
    return values.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def _check_T(T: int) -> None:
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"T must be an integer of at least 2, got {T!r}")
