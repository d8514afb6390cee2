"""Schedules: exact identities in float64, agreement with diffusers, and bad input."""

import math

import pytest
import torch
from torch.testing import assert_close

from ddpm_lite.schedules import NoiseSchedule, check_timesteps, cosine_betas, extract, linear_betas

EXACT = dict(rtol=0.0, atol=1e-12)


def test_linear_alpha_bar_is_cumprod_of_one_minus_beta():
    """math/forward.tex eq:linear-schedule, eq:alpha-bar (the acceptance identity)."""
    schedule = NoiseSchedule.from_betas(linear_betas(1000))
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), dim=0)
    assert schedule.alpha_bar.dtype == torch.float64
    assert_close(schedule.alpha_bar, expected, **EXACT)
    assert schedule.T == 1000


def test_alpha_bar_prev_is_shifted_alpha_bar_with_one_first():
    schedule = NoiseSchedule.named("cosine", 50)
    assert schedule.alpha_bar_prev[0].item() == 1.0
    assert_close(schedule.alpha_bar_prev[1:], schedule.alpha_bar[:-1], rtol=0.0, atol=0.0)


def improved_ddpm_cosine_betas(T, s=0.008, max_beta=0.999):
    """Improved DDPM's reference code (`betas_for_alpha_bar`), written out independently in plain Python."""
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]


@pytest.mark.parametrize("T", [10, 1000, 4000])
def test_cosine_betas_match_improved_ddpm_definition(T):
    """Improved DDPM eq. 17; math/forward.tex eq:cosine-schedule, eq:cosine-beta."""
    expected = torch.tensor(improved_ddpm_cosine_betas(T), dtype=torch.float64)
    assert_close(cosine_betas(T), expected, **EXACT)


def test_cosine_alpha_bar_is_f_over_f0_where_unclipped():
    """alpha_bar(t) = f(t) / f(0) (Improved DDPM eq. 17) wherever the 0.999 clip did not act."""
    T, s = 1000, 0.008
    schedule = NoiseSchedule.from_betas(cosine_betas(T))
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    expected = torch.tensor([f((t + 1) / T) / f(0.0) for t in range(T)], dtype=torch.float64)
    unclipped = schedule.beta < 0.999
    assert unclipped.sum() >= T - 2  # only the last step(s) hit the clip
    assert_close(schedule.alpha_bar[unclipped], expected[unclipped], rtol=1e-10, atol=1e-12)
    assert cosine_betas(T).max().item() == pytest.approx(0.999)


@pytest.mark.parametrize(
    ("name", "diffusers_schedule"), [("linear", "linear"), ("cosine", "squaredcos_cap_v2")]
)
def test_tables_agree_with_diffusers(name, diffusers_schedule):
    """diffusers' DDPMScheduler (float32) is an independent implementation of the same tables."""
    diffusers = pytest.importorskip("diffusers")
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_schedule)
    schedule = NoiseSchedule.named(name, 1000)
    assert_close(schedule.beta.float(), reference.betas, rtol=1e-6, atol=1e-9)
    assert_close(schedule.alpha_bar.float(), reference.alphas_cumprod, rtol=1e-5, atol=1e-9)
    # DDPMScheduler's "fixed_small" variance is tilde-beta_t; it clamps t = 0's exact zero to 1e-20. diffusers
    # works in float32, where 1 - alpha_bar_prev at small t is a difference of nearly equal numbers: its relative
    # error is about (t + 1) * 6e-8 / (1 - alpha_bar_prev) <= 1e-3 here, hence rtol=2e-3 (measured: 8.6e-4).
    variances = torch.stack([reference._get_variance(t) for t in range(1, 1000)])
    assert_close(schedule.posterior_variance[1:].float(), variances, rtol=2e-3, atol=1e-9)


def test_posterior_tables_follow_ddpm_eq_7():
    """DDPM eq. (7); math/posterior.tex eq:posterior-variance, eq:posterior-mean, eq:posterior-log-variance-clipped."""
    s = NoiseSchedule.named("linear", 1000)
    beta_tilde = torch.tensor(
        [(1 - s.alpha_bar_prev[t].item()) / (1 - s.alpha_bar[t].item()) * s.beta[t].item() for t in range(s.T)],
        dtype=torch.float64,
    )
    assert_close(s.posterior_variance, beta_tilde, rtol=1e-12, atol=1e-15)
    assert s.posterior_variance[0].item() == 0.0  # paper's tilde-beta_1 = 0: x_0 is known given x_1 and x_0
    assert torch.all(s.posterior_variance <= s.beta)  # tilde-beta_t <= beta_t (DDPM sec. 3.2)
    assert_close(s.posterior_log_variance_clipped[0], s.posterior_variance[1].log(), **EXACT)
    assert_close(s.posterior_log_variance_clipped[1:], s.posterior_variance[1:].log(), **EXACT)
    # tilde-mu's coefficients; with x_0 = x_t = 1 their sum is the mean of a constant signal, < 1 + 1e-12.
    assert_close(s.posterior_mean_coef_x0, s.alpha_bar_prev.sqrt() * s.beta / (1 - s.alpha_bar), **EXACT)
    assert_close(s.posterior_mean_coef_xt, s.alpha.sqrt() * (1 - s.alpha_bar_prev) / (1 - s.alpha_bar), **EXACT)
    assert_close(s.posterior_mean_coef_x0[0], torch.tensor(1.0, dtype=torch.float64), **EXACT)
    assert s.posterior_mean_coef_xt[0].item() == 0.0


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_alpha_bar_decreases_from_one_towards_zero(name):
    s = NoiseSchedule.named(name, 1000)
    assert torch.all(s.alpha_bar[1:] < s.alpha_bar[:-1])
    assert 0.99 < s.alpha_bar[0].item() < 1.0
    assert s.alpha_bar[-1].item() < 1e-4  # x_{T} is (almost) pure noise
    assert_close(s.sqrt_alpha_bar**2 + s.sqrt_one_minus_alpha_bar**2, torch.ones(1000, dtype=torch.float64), **EXACT)


@pytest.mark.parametrize(
    ("betas", "match"),
    [
        (torch.tensor([0.1, 0.0, 0.2]), "betas"),
        (torch.tensor([0.1, 1.0]), "betas"),
        (torch.tensor([-0.1, 0.2]), "betas"),
        (torch.tensor([0.1, float("nan")]), "betas"),
        (torch.full((2, 3), 0.1), "betas"),
        (torch.tensor([0.1]), "betas"),
    ],
)
def test_from_betas_rejects_bad_betas(betas, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule.from_betas(betas)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: linear_betas(1), "T"),
        (lambda: linear_betas(10.0), "T"),
        (lambda: linear_betas(10, beta_start=0.0), "beta_start"),
        (lambda: linear_betas(10, beta_end=1.5), "beta_end"),
        (lambda: linear_betas(10, beta_start=0.1, beta_end=0.01), "beta_start"),
        (lambda: cosine_betas(10, s=-0.1), "s"),
        (lambda: cosine_betas(10, max_beta=1.0), "max_beta"),
        (lambda: NoiseSchedule.named("quadratic", 10), "name"),
    ],
)
def test_schedule_constructors_reject_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_check_timesteps_accepts_int_and_tensor_and_rejects_the_rest():
    s = NoiseSchedule.named("linear", 10)
    assert_close(check_timesteps(s, 3, 4), torch.full((4,), 3, dtype=torch.int64))
    assert check_timesteps(s, torch.tensor([0, 9], dtype=torch.int32), 2).dtype == torch.int64
    for bad, match in [
        (10, r"\[0, 10\)"),
        (-1, r"\[0, 10\)"),
        (torch.tensor([1, 10]), "got 10"),
        (2.0, "t must be an int"),
        (torch.tensor([1.0, 2.0]), "integer"),
        (torch.tensor([1, 2, 3]), r"shape \(2,\)"),
        (True, "t must be an int"),
    ]:
        with pytest.raises(ValueError, match=match):
            check_timesteps(s, bad, 2)


def test_extract_broadcasts_and_casts():
    table = torch.arange(5, dtype=torch.float64)
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
    out = extract(table, torch.tensor([4, 0, 2]), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out.flatten().tolist() == [4.0, 0.0, 2.0]


def test_alpha_bar_at_is_the_table_and_one_for_the_clean_data():
    """The value DDIM's step reads at t_prev: alpha_bar[t] on [0, T), and 1 at t = -1 (math/ddim.tex eq:ddim-step)."""
    s = NoiseSchedule.named("cosine", 50)
    assert [s.alpha_bar_at(t) for t in range(50)] == s.alpha_bar.tolist()
    assert s.alpha_bar_at(-1) == 1.0
    for bad in (-2, 50, 1.0, True):
        with pytest.raises(ValueError, match=r"t must be an int in \[-1, T\)"):
            s.alpha_bar_at(bad)
