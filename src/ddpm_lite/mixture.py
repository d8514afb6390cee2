"""The course's ground truth: a Gaussian mixture with its exact density and score, and the exact noise predictor.

`GaussianMixture` knows its exact `log_prob` and `score`, and `GaussianMixture.noised(alpha_bar)` is the exact
marginal q(x_t) when x_0 follows the mixture: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is another
mixture in closed form. The best possible eps-predictor in mean squared error is the posterior mean E[eps | x_t],
and by Tweedie's formula it is a scaled score:

    E[eps | x_t] = -sqrt(1 - alpha_bar_t) * grad log q_t(x_t).

A trained network can at best match it, so comparing a sampler run with this predictor against the data isolates the
sampler's own error, and comparing a network against it isolates the network's error (`mixture_eps`,
`MixtureEpsModel`). `log_prob_check` tests whether samples have the mixture's typical log-density, a sharper test of
a sampler than a distance between point clouds. `default_mixture()` is the 2-D mixture the notebooks train on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ddpm_lite.checks import check_positive_int
from ddpm_lite.schedules import NoiseSchedule, check_timesteps

# eq=False: the generated __eq__ would compare tensors and raise; compare fields with assert_close instead.
@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """A mixture of K isotropic Gaussians in D dimensions: p(x) = sum_k weights[k] N(x; means[k], stds[k]^2 I).

    weights: (K,) positive, summing to 1; means: (K, D); stds: (K,) positive. Any array-like is accepted and
    stored as a float64 tensor. Exact `log_prob` and `score`, and `noised` gives the exact marginal q(x_t).
    """

    weights: Tensor
    means: Tensor
    stds: Tensor

    def __post_init__(self) -> None:
        for name in ("weights", "means", "stds"):
            value = torch.as_tensor(getattr(self, name), dtype=torch.float64).detach().clone()
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} must be finite, got {value}")
            object.__setattr__(self, name, value)  # frozen: __setattr__ is blocked
        weights, means, stds = self.weights, self.means, self.stds
        if weights.ndim != 1 or len(weights) < 1:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got shape {tuple(weights.shape)}")
        k = len(weights)
        if means.ndim != 2 or means.shape[0] != k or means.shape[1] < 1:
            raise ValueError(f"means must have shape (K, D) = ({k}, D), got shape {tuple(means.shape)}")
        if stds.shape != (k,):
            raise ValueError(f"stds must have shape (K,) = ({k},), got shape {tuple(stds.shape)}")
        if not bool((weights > 0).all()) or abs(float(weights.sum()) - 1.0) > 1e-9:
            raise ValueError(f"weights must be positive and sum to 1 (within 1e-9), got {weights.tolist()}")
        if not bool((stds > 0).all()):
            raise ValueError(f"stds must be positive, got {stds.tolist()}")

    @property
    def dim(self) -> int:
        """D, the dimension of x."""
        return self.means.shape[1]

    def mean(self) -> Tensor:
        """(D,) float64: E[x] = sum_k w_k mu_k."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """(D, D) float64: Cov[x] = sum_k w_k (s_k^2 I + mu_k mu_k^T) - E[x] E[x]^T."""
        second = torch.einsum("k,ki,kj->ij", self.weights, self.means, self.means)
        second = second + (self.weights @ self.stds**2) * torch.eye(self.dim, dtype=torch.float64)
        return second - torch.outer(self.mean(), self.mean())

    def sample_with_labels(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n samples (n, D) float32 and the component each came from, (n,) int64 in [0, K)."""
        check_positive_int("n", n)
        labels = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        x = self.means[labels] + self.stds[labels, None] * eps
        return x.to(torch.float32), labels

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples, (n, D) float32."""
        return self.sample_with_labels(n, generator)[0]

    def _joint_log_prob(self, x: Tensor) -> Tensor:
        """x: (..., D) -> (..., K) float64: log w_k + log N(x; mu_k, s_k^2 I)."""
        if x.shape[-1:] != (self.dim,):
            raise ValueError(f"x must have shape (..., {self.dim}), got shape {tuple(x.shape)}")
        x = x.to(torch.float64)
        # ||x - mu_k||^2 = ||x||^2 - 2 x . mu_k + ||mu_k||^2: one (..., D) x (D, K) product instead of a (..., K, D)
        # tensor of differences; the exact score and its solvers call this once per step on thousands of points.
        squared_distance = (x.pow(2).sum(-1, keepdim=True) - 2 * x @ self.means.T + self.means.pow(2).sum(-1)).clamp(min=0)
        return (
            torch.log(self.weights)
            - 0.5 * squared_distance / self.stds**2
            - self.dim * torch.log(self.stds)
            - 0.5 * self.dim * math.log(2.0 * math.pi)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x). x: (..., D) -> (...,) float64."""
        return torch.logsumexp(self._joint_log_prob(x), dim=-1)

    def score(self, x: Tensor) -> Tensor:
        """Exact grad_x log p(x) = sum_k P(k | x) (mu_k - x) / s_k^2. x: (..., D) -> (..., D) float64."""
        x = x.to(torch.float64)
        precision = torch.softmax(self._joint_log_prob(x), dim=-1) / self.stds**2  # (..., K): P(k | x) / s_k^2
        return precision @ self.means - precision.sum(-1, keepdim=True) * x  # sum_k P(k | x) (mu_k - x) / s_k^2

    def noised(self, alpha_bar: float | Tensor) -> GaussianMixture:
        """The law of x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (DDPM eq. (4)) for x_0 ~ self, eps ~ N(0, I).

        Component k becomes N(sqrt(alpha_bar) mu_k, (alpha_bar s_k^2 + 1 - alpha_bar) I); weights are unchanged.
        So `noised(alpha_bar).score(x_t)` is the exact score of q(x_t), and -sqrt(1 - alpha_bar) times it is the
        exact (MMSE) noise prediction. alpha_bar: a float or one-element tensor in [0, 1].
        """
        try:
            value = float(alpha_bar)
        except (TypeError, ValueError, RuntimeError):
            value = math.nan
        if isinstance(alpha_bar, (str, bool)) or not 0.0 <= value <= 1.0:
            raise ValueError(f"alpha_bar must be a number in [0, 1], got {alpha_bar!r}")
        alpha_bar = value
        stds = torch.sqrt(alpha_bar * self.stds**2 + (1.0 - alpha_bar))
        return GaussianMixture(self.weights, math.sqrt(alpha_bar) * self.means, stds)


def default_mixture() -> GaussianMixture:
    """The course's 2-D mixture: 8 components on a circle of radius 1.5, std 0.15 each, at angles k * 45 degrees,
    with weights 0.2, 0.1, 0.15, 0.05 going round twice. Opposite components share a weight, so the mean is exactly
    0; the covariance is [[1.26, 0.11], [0.11, 1.04]]; unequal weights show whether a sampler recovers mode
    proportions.
    """
    angles = torch.arange(8, dtype=torch.float64) * (math.pi / 4.0)
    means = 1.5 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    weights = torch.tensor([0.2, 0.1, 0.15, 0.05] * 2, dtype=torch.float64)
    return GaussianMixture(weights, means, torch.full((8,), 0.15, dtype=torch.float64))


class LogProbCheck(NamedTuple):
    """`log_prob_check`'s answer; all in nats per point."""

    mean: float  # mean log p(x) over the samples
    expected: float  # E[log p(x)] under the mixture itself, from n_reference fresh draws
    se: float  # standard error of mean - expected
    z: float  # (mean - expected) / se


def log_prob_check(
    mixture: GaussianMixture, samples: Tensor, *, n_reference: int = 200_000, generator: torch.Generator | None = None
) -> LogProbCheck:
    """Do samples have the mixture's typical log-density? A sharp test of a sampler run with the exact predictor.

    samples: (N, D). Compares the mean of log p(x) over the samples with its expectation under the mixture (Monte
    Carlo over n_reference draws), z = difference / standard error. A sampler that adds too much noise lowers the
    mean log-density, one that pulls points towards the component means raises it; |z| > 3 flags either. It cannot
    see every error (a sampler that moves mass between components of equal shape keeps it): pair it with mode shares.
    """
    if isinstance(n_reference, bool) or not isinstance(n_reference, int) or n_reference < 2:
        raise ValueError(f"n_reference must be an integer >= 2 (a variance is estimated from it), got {n_reference!r}")
    if samples.ndim != 2 or len(samples) < 2:
        raise ValueError(f"samples must have shape (N, {mixture.dim}) with N >= 2, got shape {tuple(samples.shape)}")
    log_p = mixture.log_prob(samples)
    reference = mixture.log_prob(mixture.sample(n_reference, generator))
    se = math.sqrt(log_p.var().item() / len(log_p) + reference.var().item() / len(reference))
    mean, expected = log_p.mean().item(), reference.mean().item()
    return LogProbCheck(mean, expected, se, (mean - expected) / se)


def gaussian_mixture(
    n: int, *, mixture: GaussianMixture | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, GaussianMixture]:
    """n samples (n, D) float32 from `mixture` (default: `default_mixture()`), and the mixture itself."""
    check_positive_int("n", n)
    mixture = default_mixture() if mixture is None else mixture
    return mixture.sample(n, generator), mixture


# ---------------------------------------------------------------------------------------------------- exact eps


def mixture_eps(mixture: GaussianMixture, schedule: NoiseSchedule, x_t: Tensor, t: int | Tensor) -> Tensor:
    """E[eps | x_t] for x_0 ~ mixture: x_t (B, D), t (B,) or int. Returns (B, D) in x_t's dtype.

    math/forward.tex eq:reparam; Tweedie: eps = -sqrt(1 - alpha_bar_t) * score of q(x_t).
    """
    if x_t.ndim != 2 or x_t.shape[1] != mixture.dim:
        raise ValueError(f"x_t must have shape (B, {mixture.dim}), got {tuple(x_t.shape)}")
    t = check_timesteps(schedule, t, x_t.shape[0])
    steps = t.unique().tolist()
    eps = torch.empty(x_t.shape, dtype=torch.float64)
    for step in steps:  # one closed-form marginal per distinct timestep
        rows = slice(None) if len(steps) == 1 else t == step  # the samplers' and the bound's calls: one t, no copy
        alpha_bar = schedule.alpha_bar[step].item()
        score = mixture.noised(alpha_bar).score(x_t[rows])
        eps[rows] = -math.sqrt(1 - alpha_bar) * score
    return eps.to(x_t.dtype)


def mixture_eps_at_noise_level(mixture: GaussianMixture):
    """The exact E[eps | x_t] at any noise level, as the solvers' `EpsAtSigma` eps(x_bar, sigma): alpha_bar =
    1 / (1 + sigma^2), x_t = x_bar sqrt(alpha_bar), not only at a schedule's levels. x_bar: (B, D); computed in
    float64, returned in x_bar's dtype. math/fast_sampling.tex eq:pf-ode-sigma"""

    def eps(x_bar: Tensor, sigma: float) -> Tensor:
        if x_bar.ndim != 2 or x_bar.shape[1] != mixture.dim:
            raise ValueError(f"x_bar must have shape (B, {mixture.dim}), got {tuple(x_bar.shape)}")
        alpha_bar = 1 / (1 + sigma**2)
        x_t = x_bar.to(torch.float64) * math.sqrt(alpha_bar)  # math/ddim.tex eq:ddim-ode-back
        return (-math.sqrt(1 - alpha_bar) * mixture.noised(alpha_bar).score(x_t)).to(x_bar.dtype)

    return eps


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
