"""Tests for ddpm_lite.mixture's `GaussianMixture`: exact moments, density, score and the noised marginal q(x_t),
against torch.distributions, autograd and sampling. (Its exact noise predictor is tested in test_elbo.py,
test_samplers.py and test_sde.py, where it is used.)

Statistical checks state their sample size N and use tolerances of 5 standard errors derived from N.
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import pytest
import torch
from torch.testing import assert_close

from ddpm_lite.mixture import GaussianMixture, default_mixture, log_prob_check

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_mixture_3d() -> GaussianMixture:
    """K = 4 components in D = 3, with unequal weights and stds."""
    g = _gen(3)
    weights = torch.rand(4, generator=g, dtype=F64) + 0.2
    means = 2.0 * torch.randn(4, 3, generator=g, dtype=F64)
    stds = 0.3 + 0.7 * torch.rand(4, generator=g, dtype=F64)
    return GaussianMixture(weights / weights.sum(), means, stds)


MIXTURES = {"default": default_mixture, "random_3d": _random_mixture_3d}


def _torch_mixture(mixture: GaussianMixture) -> torch.distributions.Distribution:
    """The same mixture built from torch.distributions, as an independent implementation."""
    scale = mixture.stds[:, None].expand_as(mixture.means)
    return torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=mixture.weights),
        torch.distributions.Independent(torch.distributions.Normal(mixture.means, scale), 1),
    )


def _test_points(mixture: GaussianMixture) -> torch.Tensor:
    """Samples, points in between, and far-away points (where the posterior over components is one-hot)."""
    x = mixture.sample(500, generator=_gen(4)).double()
    return torch.cat([x, 0.5 * x, 8.0 * x])


@pytest.mark.parametrize("name", MIXTURES)
def test_mixture_moments_match_torch_and_samples(name: str) -> None:
    """Analytic mean/covariance agree with torch.distributions (1e-12), and samples agree with them.
    N = 400,000; tolerance 5 standard errors, estimated from the sample."""
    mixture, n = MIXTURES[name](), 400_000
    reference = _torch_mixture(mixture)
    assert_close(mixture.mean(), reference.mean, rtol=0, atol=1e-12)
    assert_close(torch.diagonal(mixture.covariance()), reference.variance, rtol=0, atol=1e-12)
    x, labels = mixture.sample_with_labels(n, generator=_gen(5))
    assert x.dtype == torch.float32 and labels.dtype == torch.int64
    x = x.double()
    assert_close(x.mean(0), mixture.mean(), rtol=0, atol=5 * x.std(0).max().item() / math.sqrt(n))
    centred = x - mixture.mean()
    products = centred[:, :, None] * centred[:, None, :]  # (N, D, D); their average estimates the covariance
    tolerance = 5 * products.std(0) / math.sqrt(n)
    assert bool(((products.mean(0) - mixture.covariance()).abs() <= tolerance).all())
    frequencies = torch.bincount(labels, minlength=len(mixture.weights)).double() / n
    weights = mixture.weights
    assert bool(((frequencies - weights).abs() <= 5 * torch.sqrt(weights * (1 - weights) / n)).all())


@pytest.mark.parametrize("alpha_bar", [1.0, 0.5])
def test_log_prob_integrates_to_one(alpha_bar: float) -> None:
    """Riemann sum of exp(log_prob) on a grid covering > 10 component stds around every mean."""
    mixture = default_mixture().noised(alpha_bar)
    half_width, h = (3.5, 0.01) if alpha_bar == 1.0 else (7.0, 0.02)
    axis = torch.arange(-half_width, half_width + h / 2, h, dtype=F64)
    grid = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1)  # (M, M, 2)
    total = mixture.log_prob(grid).exp().sum() * h**2
    assert_close(total, torch.tensor(1.0, dtype=F64), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", MIXTURES)
def test_log_prob_matches_torch_distributions(name: str) -> None:
    mixture = MIXTURES[name]()
    x = _test_points(mixture)
    log_prob = mixture.log_prob(x)
    assert log_prob.shape == (len(x),) and log_prob.dtype == F64
    assert_close(log_prob, _torch_mixture(mixture).log_prob(x), rtol=1e-12, atol=1e-10)
    assert_close(mixture.log_prob(x.float()), mixture.log_prob(x.float().double()), rtol=0, atol=0)


@pytest.mark.parametrize("name", MIXTURES)
def test_score_matches_autograd_of_log_prob(name: str) -> None:
    mixture = MIXTURES[name]()
    x = _test_points(mixture).requires_grad_(True)
    (expected,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
    score = mixture.score(x.detach())
    assert score.shape == x.shape and score.dtype == F64
    assert_close(score, expected, rtol=1e-10, atol=1e-10)


def test_noised_endpoints() -> None:
    mixture = _random_mixture_3d()
    clean = mixture.noised(1.0)
    for field in ("weights", "means", "stds"):
        assert_close(getattr(clean, field), getattr(mixture, field), rtol=0, atol=1e-15)
    from_tensor = mixture.noised(torch.tensor(0.3, dtype=F64))  # e.g. schedule.alpha_bar[t]
    assert_close(from_tensor.stds, mixture.noised(0.3).stds, rtol=0, atol=0)
    pure_noise = mixture.noised(0.0)
    assert_close(pure_noise.means, torch.zeros_like(mixture.means), rtol=0, atol=0)
    assert_close(pure_noise.stds, torch.ones_like(mixture.stds), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", MIXTURES)
def test_noised_matches_empirical_forward_process(name: str) -> None:
    """x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps (DDPM eq. (4)) for alpha_bar = 0.3.
    N = 400,000; mean and covariance within 5 standard errors estimated from the sample."""
    mixture, alpha_bar, n = MIXTURES[name](), 0.3, 400_000
    x_0 = mixture.sample(n, generator=_gen(6)).double()
    eps = torch.randn(n, mixture.dim, generator=_gen(7), dtype=F64)
    x_t = math.sqrt(alpha_bar) * x_0 + math.sqrt(1 - alpha_bar) * eps
    noised = mixture.noised(alpha_bar)
    assert_close(x_t.mean(0), noised.mean(), rtol=0, atol=5 * x_t.std(0).max().item() / math.sqrt(n))
    centred = x_t - noised.mean()
    products = centred[:, :, None] * centred[:, None, :]
    assert bool(((products.mean(0) - noised.covariance()).abs() <= 5 * products.std(0) / math.sqrt(n)).all())


def test_noised_density_is_the_convolution() -> None:
    """q(x_t) = integral of p(x_0) N(x_t; sqrt(alpha_bar) x_0, (1 - alpha_bar) I) dx_0, by quadrature on a grid
    of spacing 0.01 (15 points per component std) covering 13 stds around every mean."""
    mixture, alpha_bar, h = default_mixture(), 0.6, 0.01
    axis = torch.arange(-3.5, 3.5 + h / 2, h, dtype=F64)
    x_0 = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), dim=-1).reshape(-1, 2)  # (M^2, 2)
    log_p_0 = mixture.log_prob(x_0)
    x_t = torch.tensor([[0.0, 0.0], [1.2, 0.3], [-0.5, 1.1], [2.0, -2.0]], dtype=F64)
    kernel = torch.distributions.Normal(math.sqrt(alpha_bar) * x_0, math.sqrt(1 - alpha_bar))
    quadrature = torch.stack([(log_p_0 + kernel.log_prob(point).sum(-1)).exp().sum() * h**2 for point in x_t])
    assert_close(mixture.noised(alpha_bar).log_prob(x_t).exp(), quadrature, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    ("weights", "means", "stds", "field"),
    [
        ([0.5, 0.4], [[0.0], [1.0]], [1.0, 1.0], "weights"),  # sums to 0.9
        ([1.5, -0.5], [[0.0], [1.0]], [1.0, 1.0], "weights"),  # negative
        ([[0.5, 0.5]], [[0.0], [1.0]], [1.0, 1.0], "weights"),  # not (K,)
        ([0.5, 0.5], [0.0, 1.0], [1.0, 1.0], "means"),  # not (K, D)
        ([0.5, 0.5], [[0.0], [1.0], [2.0]], [1.0, 1.0], "means"),  # K mismatch
        ([0.5, 0.5], [[0.0], [float("nan")]], [1.0, 1.0], "means"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0, 0.0], "stds"),
        ([0.5, 0.5], [[0.0], [1.0]], [1.0], "stds"),
    ],
)
def test_mixture_rejects_invalid_parameters(weights, means, stds, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field} must"):
        GaussianMixture(weights, means, stds)


def test_mixture_rejects_bad_arguments() -> None:
    mixture = default_mixture()
    for alpha_bar in (1.5, -0.1, float("nan"), "0.5", torch.ones(2)):
        with pytest.raises(ValueError, match=r"^alpha_bar must"):
            mixture.noised(alpha_bar)
    with pytest.raises(ValueError, match=r"^x must"):
        mixture.log_prob(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"^n must"):
        mixture.sample(0)
    with pytest.raises(FrozenInstanceError):
        mixture.stds = torch.ones(8)  # type: ignore[misc]
    weights = torch.full((2,), 0.5, dtype=F64)
    GaussianMixture(weights, torch.zeros(2, 1), torch.ones(2)).weights[0] = 0.9  # a copy is stored...
    assert weights[0].item() == 0.5  # ...so the caller's tensor is untouched


def test_log_prob_check_accepts_the_mixture_and_flags_wrong_spreads():
    """N = 4,000 samples: the mixture's own pass (|z| < 4); 10% too wide, or pulled halfway to their component means, fail beyond 5 s.e."""
    mixture = default_mixture()
    x = mixture.sample(4000, _gen(11))
    own = log_prob_check(mixture, x, generator=_gen(12))
    assert abs(own.z) < 4, own
    other = log_prob_check(mixture, x, generator=_gen(13))  # a second reference of 200,000 draws: the same E log p
    assert abs(other.expected - own.expected) < 5 * math.sqrt(2) * own.se * math.sqrt(4000 / 200_000)
    assert log_prob_check(mixture, 1.1 * x, generator=_gen(12)).z < -5  # over-dispersed: lower log-density
    shrunk = mixture.means[torch.cdist(x.double(), mixture.means).argmin(1)]  # pulled halfway to their means
    assert log_prob_check(mixture, (0.5 * x.double() + 0.5 * shrunk), generator=_gen(12)).z > 5


def test_log_prob_check_rejects_bad_input():
    mixture = default_mixture()
    for bad in (0, 1, 2.5, True):
        with pytest.raises(ValueError, match="n_reference must be an integer >= 2"):
            log_prob_check(mixture, mixture.sample(10), n_reference=bad)
    with pytest.raises(ValueError, match="samples must have shape"):
        log_prob_check(mixture, torch.zeros(10))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 2\)"):
        log_prob_check(mixture, torch.zeros(10, 3))
