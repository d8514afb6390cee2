"""The forward process and its posterior: exact identities, statistics with stated N, and bad input."""

import math

import pytest
import torch
from torch.testing import assert_close

from ddpm_lite.forward import predict_x0_from_eps, q_posterior, q_sample, q_step, snr
from ddpm_lite.schedules import NoiseSchedule

EXACT = dict(rtol=0.0, atol=1e-12)


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.named("linear", 1000)


def test_q_sample_is_ddpm_eq_4(schedule):
    """DDPM eq. (4); math/forward.tex eq:forward-marginal, eq:reparam."""
    g = torch.Generator().manual_seed(0)
    x_0 = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(5, 1, 3, 3, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 500, 998, 999])
    ab = schedule.alpha_bar[t].view(5, 1, 1, 1)
    assert_close(q_sample(schedule, x_0, t, eps), ab.sqrt() * x_0 + (1 - ab).sqrt() * eps, **EXACT)


def test_q_step_is_ddpm_eq_2(schedule):
    """DDPM eq. (2); math/forward.tex eq:forward-step."""
    x_prev = torch.tensor([[0.5, -1.0]], dtype=torch.float64)
    eps = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    beta = schedule.beta[7].item()
    expected = math.sqrt(1 - beta) * x_prev + math.sqrt(beta) * eps
    assert_close(q_step(schedule, x_prev, 7, eps), expected, **EXACT)


def test_iterating_the_chain_matches_the_closed_form_in_distribution(schedule):
    """Iterating eq. (2) t+1 times gives q(x_t | x_0) of eq. (4): math/forward.tex eq:forward-marginal.

    N = 40,000 chains from each of four x_0 values. Mean tolerance 5 * sd / sqrt(N); the sample variance of a
    Gaussian has standard error var * sqrt(2 / N), so its tolerance is 5 * var * sqrt(2 / N).
    """
    N, checkpoints = 40_000, {0, 9, 299, 999}
    g = torch.Generator().manual_seed(1)
    x_0 = torch.tensor([-1.0, -0.2, 0.3, 1.0], dtype=torch.float64).repeat(N, 1)  # (N, 4)
    x = x_0
    for t in range(schedule.T):
        x = q_step(schedule, x, t, torch.randn(x.shape, generator=g, dtype=torch.float64))
        if t in checkpoints:
            ab = schedule.alpha_bar[t].item()
            mean, var = math.sqrt(ab) * x_0[0], torch.full((4,), 1 - ab, dtype=torch.float64)
            assert_close(x.mean(0), mean, rtol=0.0, atol=5 * math.sqrt((1 - ab) / N))
            assert_close(x.var(0), var, rtol=5 * math.sqrt(2 / N), atol=0.0)


def test_q_posterior_is_bayes_rule_for_gaussians(schedule):
    """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): precisions add, means are precision-weighted.

    An independent route to DDPM eqs. (6-7); math/posterior.tex eq:posterior, eq:posterior-mean, eq:posterior-variance.
    """
    g = torch.Generator().manual_seed(2)
    t = torch.arange(1, 1000, 37)
    x_0 = torch.randn(len(t), 2, generator=g, dtype=torch.float64)
    x_t = torch.randn(len(t), 2, generator=g, dtype=torch.float64)
    ab_prev = schedule.alpha_bar_prev[t].view(-1, 1)
    alpha, beta = schedule.alpha[t].view(-1, 1), schedule.beta[t].view(-1, 1)
    precision = 1 / (1 - ab_prev) + alpha / beta  # prior q(x_{t-1} | x_0) times likelihood q(x_t | x_{t-1})
    expected_var = 1 / precision
    expected_mean = expected_var * (ab_prev.sqrt() * x_0 / (1 - ab_prev) + alpha.sqrt() * x_t / beta)
    mean, var = q_posterior(schedule, x_0, x_t, t)
    assert_close(mean, expected_mean, rtol=1e-10, atol=1e-12)
    assert_close(var, expected_var, rtol=1e-10, atol=1e-15)


def test_q_posterior_at_t0_returns_x0_exactly(schedule):
    x_0, x_t = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    mean, var = q_posterior(schedule, x_0, x_t, 0)
    assert_close(mean, x_0, **EXACT)
    assert torch.all(var == 0)


def test_posterior_mean_in_terms_of_eps(schedule):
    """tilde-mu_t = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t): math/posterior.tex eq:posterior-mean-eps."""
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 3, 200, 999])
    x_0 = torch.randn(4, 6, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 6, generator=g, dtype=torch.float64)
    x_t = q_sample(schedule, x_0, t, eps)
    mean, _ = q_posterior(schedule, x_0, x_t, t)
    alpha, beta, ab = (v[t].view(-1, 1) for v in (schedule.alpha, schedule.beta, schedule.alpha_bar))
    assert_close(mean, (x_t - beta / (1 - ab).sqrt() * eps) / alpha.sqrt(), rtol=1e-9, atol=1e-10)


def test_predict_x0_from_eps_inverts_q_sample(schedule):
    """DDPM eq. (15); math/forward.tex eq:predict-x0."""
    g = torch.Generator().manual_seed(4)
    t = torch.tensor([0, 10, 500, 999])
    x_0 = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    x_t = q_sample(schedule, x_0, t, eps)
    assert_close(predict_x0_from_eps(schedule, x_t, t, eps), x_0, rtol=0.0, atol=1e-9)


def test_snr_definition_and_monotonicity(schedule):
    """math/forward.tex eq:snr."""
    ratio = snr(schedule)
    assert_close(ratio, schedule.alpha_bar / (1 - schedule.alpha_bar), **EXACT)
    assert torch.all(ratio[1:] < ratio[:-1])
    assert 10 * math.log10(ratio[0].item()) > 35  # code t = 0 is nearly clean: SNR ≈ 1e4
    assert 10 * math.log10(ratio[-1].item()) < -40


def test_int_and_tensor_t_agree_and_dtype_is_kept(schedule):
    x_0, eps = torch.randn(3, 2), torch.randn(3, 2)
    out = q_sample(schedule, x_0, 17, eps)
    assert out.dtype == torch.float32
    assert_close(out, q_sample(schedule, x_0, torch.full((3,), 17), eps), rtol=0.0, atol=0.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: q_sample(s, torch.zeros(2, 3), 0, torch.zeros(2, 4)), "eps must have the shape of x_0"),
        (lambda s: q_step(s, torch.zeros(2, 3), 0, torch.zeros(3, 3)), "eps must have the shape of x_prev"),
        (lambda s: q_sample(s, torch.zeros(2, 3), 1000, torch.zeros(2, 3)), r"t must lie in \[0, T\)"),
        (lambda s: q_sample(s, torch.zeros(2, 3), -1, torch.zeros(2, 3)), r"t must lie in \[0, T\)"),
        (lambda s: q_sample(s, torch.zeros(2, 3), 1.5, torch.zeros(2, 3)), "t must be an int"),
        (lambda s: q_sample(s, torch.zeros(2, 3), torch.tensor([1.0, 2.0]), torch.zeros(2, 3)), "integer"),
        (lambda s: q_sample(s, torch.zeros(2, 3), torch.tensor([1, 2, 3]), torch.zeros(2, 3)), "shape"),
        (lambda s: q_posterior(s, torch.zeros(2, 3), torch.zeros(2, 2), 0), "x_t must have the shape of x_0"),
        (lambda s: predict_x0_from_eps(s, torch.zeros(2), 0, torch.zeros(3)), "eps must have the shape of x_t"),
        (lambda s: q_sample(s, [0.0, 1.0], 0, torch.zeros(2)), "x_0 must be a torch.Tensor"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(schedule, call, match):
    with pytest.raises(ValueError, match=match):
        call(schedule)
