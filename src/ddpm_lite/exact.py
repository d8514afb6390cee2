"""The exact noise predictor for Gaussian-mixture data: the course's ground truth.

If x_0 follows a Gaussian mixture, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps follows another one in
closed form (`GaussianMixture.noised`). The best possible eps-predictor in mean squared error is the posterior mean
E[eps | x_t], and by Tweedie's formula it is a scaled score:

    E[eps | x_t] = -sqrt(1 - alpha_bar_t) * grad log q_t(x_t).

A trained network can at best match it, so comparing a sampler run with this predictor against the data isolates the
sampler's own error, and comparing a network against it isolates the network's error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ddpm_lite.data import GaussianMixture
from ddpm_lite.schedules import NoiseSchedule, timesteps


def mixture_eps(mixture: GaussianMixture, schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor) -> Tensor:
    """E[eps | x_t] for x_0 ~ mixture: x_t (B, D), t (B,) or int. Returns (B, D) in x_t's dtype.

    math/forward.tex eq:reparam; Tweedie: eps = -sqrt(1 - alpha_bar_t) * score of q(x_t).
    """
    if x_t.ndim != 2 or x_t.shape[1] != mixture.dim:
        raise ValueError(f"x_t must have shape (B, {mixture.dim}), got {tuple(x_t.shape)}")
    t = timesteps(schedule, t, x_t.shape[0])
    eps = torch.empty(x_t.shape, dtype=torch.float64)
    for step in t.unique().tolist():  # one closed-form marginal per distinct timestep
        rows = t == step
        alpha_bar = schedule.alpha_bar[step].item()
        score = mixture.noised(alpha_bar).score(x_t[rows])
        eps[rows] = -math.sqrt(1 - alpha_bar) * score
    return eps.to(x_t.dtype)


def mixture_eps_fn(mixture: GaussianMixture, schedule: NoiseSchedule):
    """`mixture_eps` as an `eps_fn(x_t, t)`, the signature samplers and `vlb_terms` take."""

    def eps_fn(x_t: Tensor, t: Tensor) -> Tensor:
        return mixture_eps(mixture, schedule, x_t, t)

    return eps_fn


class MixtureEpsModel(nn.Module):
    """`mixture_eps` as a module, so samplers and training code can call the exact predictor like a network."""

    def __init__(self, mixture: GaussianMixture, schedule: NoiseSchedule):
        super().__init__()
        self.mixture, self.schedule = mixture, schedule

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        return mixture_eps(self.mixture, self.schedule, x_t, t)
