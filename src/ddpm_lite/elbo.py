"""The variational bound (ELBO) of DDPM, term by term, for any noise predictor.

DDPM eq. (5) splits the negative ELBO into L_T + sum_{t>1} L_{t-1} + L_0. With the code's 0-based time (code t is
the paper's t+1), `VLBTerms.terms[:, t]` is the paper's L_t for t = 0, ..., T-1: terms[:, 0] is the decoder term L_0
and terms[:, t >= 1] is the KL of the reverse step out of code timestep t. `VLBTerms.prior` is L_T.
Everything is in nats per example (summed over dimensions) unless named `bits_per_dim`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from ddpm_lite.checks import check_positive_int
from ddpm_lite.forward import predict_x0_from_eps, q_posterior, q_sample
from ddpm_lite.schedules import NoiseSchedule, extract

EpsTheta = Callable[[Tensor, Tensor], Tensor]  # eps_theta(x_t: (B, ...), t: (B,) int64) -> the predicted noise (B, ...)
# sigma_t^2 of p_theta(x_{t-1} | x_t): tilde-beta_t or beta_t (DDPM sec. 3.2), or the network's own (Improved DDPM
# eq. 15; a `objectives.Denoiser` whose network learns its variances, through its `predict`)
ReverseVariance = Literal["posterior", "beta", "learned"]
Decoder = Literal["discretized", "gaussian"]


def normal_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) per coordinate, in nats; arguments broadcast, variances > 0.

    math/elbo.tex eq:gaussian-kl
    """
    var1, var2 = torch.as_tensor(var1), torch.as_tensor(var2)
    for name, var in (("var1", var1), ("var2", var2)):
        if not bool((var > 0).all()):
            raise ValueError(f"{name} must be positive, got a minimum of {var.min().item()}")
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)  # math/elbo.tex eq:gaussian-kl


def discretized_gaussian_log_likelihood(x_0: Tensor, mean: Tensor, variance: Tensor, levels: int = 256) -> Tensor:
    """log P(x_0) per coordinate, in nats, under DDPM's discretised decoder (Ho et al. 2020, eq. 13).

    x_0 holds pixel values k / (levels - 1) * 2 - 1 for integer k; each value owns the bin of width 2 / (levels - 1)
    around it, and the two end bins extend to -inf and +inf. mean, variance broadcast against x_0.
    math/elbo.tex eq:discretized-decoder
    """
    if x_0.min() < -1 or x_0.max() > 1:
        raise ValueError(f"x_0 must lie in [-1, 1], got values in [{x_0.min().item()}, {x_0.max().item()}]")
    std = torch.as_tensor(variance).sqrt()
    half_bin = 1.0 / (levels - 1)
    upper = (x_0 - mean + half_bin) / std  # standardised bin edges
    lower = (x_0 - mean - half_bin) / std
    # log(Phi(upper) - Phi(lower)), computed on the side of the mode where both CDFs are small, to keep precision.
    right = lower > 0
    a, b = torch.where(right, -upper, lower), torch.where(right, -lower, upper)
    # A bin far in the tail has probability below the dtype's range: clamp it to a positive number the dtype holds
    # (1e-300 in float64; float32's smallest normal number, 1.2e-38, where 1e-300 would round to 0 and log to -inf).
    floor = max(1e-300, torch.finfo(b.dtype).tiny)
    middle = torch.log((torch.special.ndtr(b) - torch.special.ndtr(a)).clamp(min=floor))
    first = torch.special.log_ndtr(upper)  # bin (-inf, upper] for the darkest value, x_0 = -1
    last = torch.special.log_ndtr(-lower)  # bin [lower, +inf) for the brightest value, x_0 = 1
    edge = half_bin / 2  # tolerance for float error in the pixel values
    return torch.where(x_0 < -1 + edge, first, torch.where(x_0 > 1 - edge, last, middle))


def reverse_variance(schedule: NoiseSchedule, variance: ReverseVariance) -> Tensor:
    """sigma_t^2 of p_theta(x_{t-1} | x_t) for each code t, (T,) float64: DDPM sec. 3.2's two choices.

    "beta": sigma_t^2 = beta_t at every t, the decoder L_0 included, as in the paper. (Improved DDPM's code swaps
    t = 0's value for tilde-beta at t = 1 to raise the discretised decoder's likelihood; we keep the paper's.)
    "posterior": sigma_t^2 = tilde-beta_t; tilde-beta is exactly 0 at t = 0, where the decoder needs a positive
    variance, so t = 0 takes t = 1's value, as in Improved DDPM's code.
    math/posterior.tex eq:reverse-variance-choices, eq:posterior-log-variance-clipped
    """
    if variance == "beta":
        return schedule.beta
    if variance == "posterior":
        return schedule.posterior_log_variance_clipped.exp()
    if variance == "learned":
        raise ValueError("variance='learned' has no table: the network gives sigma_t^2 (Denoiser.predict)")
    raise ValueError(f"variance must be 'posterior', 'beta' or 'learned', got {variance!r}")


def vlb_weights(schedule: NoiseSchedule, variance: ReverseVariance = "posterior") -> Tensor:
    """lambda_t = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)), (T,) float64.

    L_t = lambda_t E ||eps - eps_theta(x_t, t)||^2 for the KL terms (and for L_0 with a Gaussian decoder); L_simple
    sets every lambda_t to 1. math/elbo.tex eq:lambda-t, eq:loss-eps
    """
    reverse_variances = reverse_variance(schedule, variance)
    return schedule.beta**2 / (2 * reverse_variances * schedule.alpha * (1 - schedule.alpha_bar))  # math/elbo.tex eq:lambda-t


@dataclass(frozen=True, eq=False)
class VLBTerms:
    """The negative ELBO of a batch, term by term, in nats per example."""

    prior: Tensor  # (B,) L_T = KL(q(x_T | x_0) || N(0, I)); math/elbo.tex eq:prior-term
    terms: Tensor  # (B, T) terms[:, t] = the paper's L_t: L_0 decoder NLL at t = 0, reverse-step KLs for t >= 1
    total: Tensor  # (B,) -ELBO = prior + terms.sum(1) >= -log p(x_0); math/elbo.tex eq:elbo-decomposition
    bits_per_dim: Tensor  # (B,) total / (D ln 2); math/elbo.tex eq:bits-per-dim


@torch.no_grad()
def vlb_terms(
    eps_fn: EpsTheta,
    schedule: NoiseSchedule,
    x_0: Tensor,
    *,
    variance: ReverseVariance = "posterior",
    decoder: Decoder = "discretized",
    generator: torch.Generator | None = None,
    timesteps_per_call: int = 1,
) -> VLBTerms:
    """Every term of DDPM's variational bound (eq. 5) for each example of x_0, one x_t sample per term.

    eps_fn(x_t, t) -> predicted eps, like x_t: a trained model or an exact predictor. x_0: (B, ...); images in [-1, 1]
    for decoder="discretized" (DDPM eq. 13), any real data for decoder="gaussian" (a density, so -ELBO bounds
    -log p(x_0) of continuous data). variance: the reverse-process variance sigma_t^2 (DDPM sec. 3.2).
    Costs T / timesteps_per_call calls of eps_fn, each on timesteps_per_call x B inputs: a small batch is cheaper
    per example in few large calls; the random draws are the same for every value. math/elbo.tex eq:elbo-decomposition
    """
    if not isinstance(x_0, Tensor) or x_0.ndim < 2:
        raise ValueError(f"x_0 must be a tensor of shape (B, ...) with at least 2 dimensions, got {_describe(x_0)}")
    if decoder not in ("discretized", "gaussian"):
        raise ValueError(f"decoder must be 'discretized' or 'gaussian', got {decoder!r}")
    check_positive_int("timesteps_per_call", timesteps_per_call)
    if variance == "learned":
        predict = learned_predictor(eps_fn)
    else:
        reverse_variances = reverse_variance(schedule, variance)
    x_0 = x_0.to(torch.float64)
    batch, dims = x_0.shape[0], x_0[0].numel()
    sum_dims = tuple(range(1, x_0.ndim))

    # L_T: q(x_T | x_0) = N(sqrt(alpha_bar) x_0, (1 - alpha_bar) I) against the prior N(0, I); no parameters.
    last = schedule.T - 1
    prior = normal_kl(
        schedule.sqrt_alpha_bar[last] * x_0, 1 - schedule.alpha_bar[last], torch.zeros(()), torch.ones(())
    ).sum(sum_dims)  # math/elbo.tex eq:prior-term

    terms = torch.empty(batch, schedule.T, dtype=torch.float64)
    for steps in torch.arange(schedule.T).split(timesteps_per_call):
        ts = [torch.full((batch,), step, dtype=torch.int64) for step in steps.tolist()]
        x_ts = [q_sample(schedule, x_0, t, torch.randn(x_0.shape, generator=generator, dtype=torch.float64)) for t in ts]
        inputs = (torch.cat(x_ts).to(torch.float32), torch.cat(ts))
        if variance == "learned":
            eps_all, log_variance_all = (value.to(torch.float64) for value in predict(*inputs))
            variances = log_variance_all.exp().split(batch)
        else:
            eps_all = eps_fn(*inputs).to(torch.float64)
            variances = [extract(reverse_variances, t, x_0) for t in ts]
        if eps_all.shape != (len(ts) * batch, *x_0.shape[1:]):
            raise ValueError(f"eps_fn must return the shape of x_t, {(len(ts) * batch, *x_0.shape[1:])}, "
                             f"got {tuple(eps_all.shape)}")
        for t, x_t, eps_theta, variance_t in zip(ts, x_ts, eps_all.split(batch), variances):
            terms[:, t[0]] = _vlb_term(schedule, x_0, x_t, t, eps_theta, variance_t, decoder, sum_dims)
    total = prior + terms.sum(1)  # DDPM eq. (5); math/elbo.tex eq:elbo-decomposition
    return VLBTerms(prior=prior, terms=terms, total=total, bits_per_dim=total / (dims * math.log(2)))


def learned_predictor(eps_fn: object) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """`eps_fn.predict`, (x_t, t) -> (eps, log sigma_t^2), for variance="learned"; a ValueError if it has none."""
    predict = getattr(eps_fn, "predict", None)
    if predict is None or not getattr(eps_fn, "learned_variance", False):
        raise ValueError("variance='learned' needs a network that learns its variances (an objectives.Denoiser whose "
                         "network has learn_variance=True), got " + type(eps_fn).__name__)
    return predict


def _reverse_step_nats(schedule: NoiseSchedule, x_0: Tensor, x_t: Tensor, t: Tensor, eps_theta: Tensor,
                       reverse_variance_t: Tensor, decoder: Decoder) -> Tensor:
    """Each coordinate's L_t, (B, ...) nats, for timesteps t (B,) that may differ within the batch: the decoder's
    -log p_theta(x_0 | x_1) where t = 0, the KL of the reverse step elsewhere. reverse_variance_t: broadcastable."""
    # p_theta's mean: the posterior mean at the predicted x_0 (DDPM eq. 11); math/posterior.tex eq:posterior-mean-eps
    mean_pred, _ = q_posterior(schedule, predict_x0_from_eps(schedule, x_t, t, eps_theta), x_t, t)
    first = t == 0
    if bool(first.any()):  # L_0 = -log p_theta(x_0 | x_1)
        if decoder == "discretized":
            log_p = discretized_gaussian_log_likelihood(x_0, mean_pred, reverse_variance_t)  # math/elbo.tex eq:discretized-decoder
        else:
            log_p = -0.5 * ((x_0 - mean_pred) ** 2 / reverse_variance_t + torch.log(2 * math.pi * reverse_variance_t))
        if bool(first.all()):
            return -log_p
    # L_t = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)); math/elbo.tex eq:gaussian-kl
    mean_true, var_true = q_posterior(schedule, x_0, x_t, t)
    if not bool(first.any()):
        return normal_kl(mean_true, var_true, mean_pred, reverse_variance_t)
    first = first.reshape(-1, *[1] * (x_t.ndim - 1))
    # q's variance is 0 at t = 0, where the decoder's term is used: any positive stand-in keeps the KL finite there
    kl = normal_kl(mean_true, torch.where(first, torch.ones_like(var_true), var_true), mean_pred, reverse_variance_t)
    return torch.where(first, -log_p, kl)


def _vlb_term(schedule: NoiseSchedule, x_0: Tensor, x_t: Tensor, t: Tensor, eps_theta: Tensor,
              reverse_variance_t: Tensor, decoder: Decoder, sum_dims: tuple[int, ...]) -> Tensor:
    """L_t of the bound for one timestep t (the same for the whole batch), (B,) nats."""
    return _reverse_step_nats(schedule, x_0, x_t, t, eps_theta, reverse_variance_t, decoder).sum(sum_dims)


def vlb_term_bits(schedule: NoiseSchedule, x_0: Tensor, x_t: Tensor, t: Tensor, eps_theta: Tensor,
                  log_variance: Tensor) -> Tensor:
    """Improved DDPM's L_vlb term for training: each example's L_t (B,) in bits per dimension at its own t, with the
    reverse variance exp(log_variance) (B, ...) and the decoder of the data's kind (discretized for images (B, C, H,
    W) in [-1, 1], Gaussian otherwise). math/objectives.tex eq:l-hybrid"""
    decoder: Decoder = "discretized" if x_0.ndim == 4 else "gaussian"
    nats = _reverse_step_nats(schedule, x_0, x_t, t, eps_theta, log_variance.exp(), decoder)
    return nats.flatten(1).mean(1) / math.log(2)


def _describe(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
