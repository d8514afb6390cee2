"""The score view: eps as a scaled score, Tweedie, the VP-SDE of a schedule, and the probability-flow ODE sampler.

Three tiers: exact identities in float64 (tolerance 1e-12 unless stated); agreement with independent computations
(autograd of the exact mixture density, the mixture's Gaussian posterior mean, Song et al.'s beta(s), diffusers-free
DDIM from `samplers`); statistical checks with N stated.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from ddpm_lite.forward import predict_x0_from_eps, q_step
from ddpm_lite.mixture import MixtureEpsModel, default_mixture, mixture_eps
from ddpm_lite.samplers import ddim_sample, ddim_step, ddpm_step
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.sde import (
    VPSDE,
    eps_from_score,
    noise_levels,
    probability_flow_drift,
    probability_flow_sample,
    probability_flow_velocity,
    reverse_sde_drift,
    score_from_eps,
    timestep_at_noise_level,
    tweedie_x0,
)

EXACT = dict(rtol=0.0, atol=1e-12)
TIMESTEPS = [0, 1, 10, 100, 500, 999]


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.named("linear", 1000)


@pytest.fixture(scope="module")
def mixture():
    return default_mixture()


def points(n, seed, scale=2.0):
    return scale * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def mixture_posterior_mean(mixture, alpha_bar, x_t):
    """E[x_0 | x_t] from the mixture's Gaussian conditionals, without scores or eps: math/score_sde.tex
    eq:mixture-posterior-mean (Bishop 2006, eq. 2.81)."""
    a = math.sqrt(alpha_bar)
    variances = alpha_bar * mixture.stds**2 + 1 - alpha_bar  # (K,) variance of x_t given component k
    log_joint = (mixture.weights.log() - ((x_t[:, None, :] - a * mixture.means) ** 2).sum(-1) / (2 * variances)
                 - variances.log())  # (B, K); D = 2, so -D/2 log(2 pi v) = -log v + const
    responsibilities = torch.softmax(log_joint, dim=1)
    gain = a * mixture.stds**2 / variances  # (K,) Cov(x_0, x_t) / Var(x_t)
    means = mixture.means + gain[:, None] * (x_t[:, None, :] - a * mixture.means)  # (B, K, 2)
    return (responsibilities[..., None] * means).sum(1)


# ------------------------------------------------------------------------------------------ exact identities
@pytest.mark.parametrize("t", TIMESTEPS)
def test_score_from_eps_of_the_exact_predictor_is_the_exact_score(schedule, mixture, t):
    """grad log q_t = -E[eps | x_t] / sqrt(1 - alpha_bar_t): math/score_sde.tex eq:score-from-eps. Float64, 1e-12
    relative to the score's size (it reaches 1e2 at t = 0)."""
    x_t = points(64, t)
    score = score_from_eps(schedule, mixture_eps(mixture, schedule, x_t, t), t)
    expected = mixture.noised(schedule.alpha_bar[t].item()).score(x_t)
    assert_close(score, expected, rtol=1e-12, atol=1e-12)
    assert_close(eps_from_score(schedule, score, t), mixture_eps(mixture, schedule, x_t, t), **EXACT)


def test_the_noised_mixture_score_is_the_gradient_of_its_log_density(schedule, mixture):
    """The closed-form score against autograd of the closed-form log density (an independent route), float64."""
    for t in (0, 100, 999):
        noised = mixture.noised(schedule.alpha_bar[t].item())
        x_t = points(32, 100 + t).requires_grad_(True)
        (gradient,) = torch.autograd.grad(noised.log_prob(x_t).sum(), x_t)
        assert_close(noised.score(x_t.detach()), gradient, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("t", TIMESTEPS)
def test_tweedie_is_predict_x0_from_eps_and_the_mixture_posterior_mean(schedule, mixture, t):
    """Tweedie's formula: math/score_sde.tex eq:tweedie, equal term for term to math/forward.tex eq:predict-x0 (1e-12
    relative), and to the mixture's posterior mean computed without scores (eq:mixture-posterior-mean), which checks
    eq:score-from-eps end to end. At t = 0 dividing by sqrt(alpha_bar) and the softmax cost a few digits: 1e-9."""
    x_t = points(64, 10 + t)
    eps = mixture_eps(mixture, schedule, x_t, t)
    x_0 = tweedie_x0(schedule, x_t, t, score_from_eps(schedule, eps, t))
    assert_close(x_0, predict_x0_from_eps(schedule, x_t, t, eps), rtol=1e-12, atol=1e-12)
    assert_close(x_0, mixture_posterior_mean(mixture, schedule.alpha_bar[t].item(), x_t), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------------------ the VP-SDE
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_vpsde_beta_is_t_times_beta_on_each_cell(name):
    """math/score_sde.tex eq:sde-time, eq:sde-beta: beta(s_t) = T beta[t] at s_t = (t + 1) / T, constant on the cell
    (t / T, (t + 1) / T], and the integral over each cell is beta[t] (float64; 1e-13 absolute, as the integrals are
    differences of cumulative sums that reach 10)."""
    schedule = NoiseSchedule.named(name, 1000)
    sde = VPSDE.from_schedule(schedule)
    s_grid = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.equal(sde.beta(s_grid), 1000 * schedule.beta)
    assert torch.equal(sde.beta(s_grid - 0.5 / 1000), 1000 * schedule.beta)  # cell midpoints
    assert sde.beta(0.0).item() == 1000 * schedule.beta[0].item()
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), s_grid])
    assert_close(torch.diff(sde.integral_beta(edges)), schedule.beta, rtol=0.0, atol=1e-13)


def test_vpsde_of_the_linear_schedule_is_song_et_al_vp_sde():
    """Song et al. 2021 (appendix C): beta(s) = 0.1 + 19.9 s for DDPM's linear schedule with T = 1000. On the grid
    ours differs by 19.9 (T - 1 - t) / (T (T - 1)) <= 19.9 / T (math/score_sde.tex eq:sde-beta); 1e-12 slack."""
    T = 1000
    sde = VPSDE.from_schedule(NoiseSchedule.named("linear", T))
    t = torch.arange(T, dtype=torch.float64)
    s = (t + 1) / T
    difference = (sde.beta(s) - (0.1 + 19.9 * s)).abs()
    assert_close(difference, 19.9 * (T - 1 - t) / (T * (T - 1)), rtol=0.0, atol=1e-12)
    assert difference.max() <= 19.9 / T + 1e-12


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_vpsde_alpha_bar_matches_the_discrete_alpha_bar_within_the_derived_bounds(name):
    """math/score_sde.tex eq:sde-alpha-bar, eq:sde-alpha-bar-error: at every grid point
    sum_k beta_k^2 / 2 <= log alpha_bar(s_t) - log alpha_bar[t] <= sum_k beta_k^2 / (2 (1 - beta_k)), k <= t.
    Slack for float64 round-off: 1e-9 relative plus 1e-14 absolute (the gap starts at 5e-9)."""
    schedule = NoiseSchedule.named(name, 1000)
    sde = VPSDE.from_schedule(schedule)
    s = torch.arange(1, 1001, dtype=torch.float64) / 1000
    gap = sde.alpha_bar(s).log() - schedule.alpha_bar.log()
    lower = torch.cumsum(schedule.beta**2 / 2, 0)
    upper = torch.cumsum(schedule.beta**2 / (2 * (1 - schedule.beta)), 0)
    assert bool((gap >= lower * (1 - 1e-9) - 1e-14).all()) and bool((gap <= upper * (1 + 1e-9) + 1e-14).all())
    if name == "linear":  # the numbers quoted in math/score_sde.tex
        assert abs(gap[-1].item() - 0.0677) < 5e-5 and abs(sde.alpha_bar(1.0).item() - 4.32e-5) < 5e-8


def test_euler_maruyama_of_the_vp_sde_is_ddpm_forward_step_to_second_order(schedule):
    """math/score_sde.tex eq:vp-sde, eq:vp-euler-maruyama: one Euler-Maruyama step over code t's cell is
    (1 - beta_t / 2) x + sqrt(beta_t) z (1e-12); it differs from q_step (math/forward.tex eq:forward-step) by at
    most beta_t^2 / (8 (1 - beta_t)^(3/2)) |x| (Taylor with Lagrange remainder), and by more than beta_t^2 / 8 |x|."""
    sde = VPSDE.from_schedule(schedule)
    x, z = points(16, 1), points(16, 2, scale=1.0)
    for t in (0, 500, 999):
        s, beta, ds = (t + 1) / schedule.T, schedule.beta[t].item(), 1 / schedule.T
        euler_maruyama = x + sde.drift(x, s) * ds + sde.diffusion(s) * math.sqrt(ds) * z
        assert_close(euler_maruyama, (1 - beta / 2) * x + math.sqrt(beta) * z, **EXACT)
        error = (euler_maruyama - q_step(schedule, x, t, z)).abs()
        assert bool((error <= beta**2 / (8 * (1 - beta) ** 1.5) * x.abs() + 1e-15).all())
        assert bool((error >= beta**2 / 8 * x.abs() - 1e-15).all())


def test_ddpm_step_is_the_score_form_and_a_discretised_reverse_sde(schedule, mixture):
    """DDPM's step with sigma^2 = beta (math/posterior.tex eq:ddpm-step) written with the score is Song et al.'s eq. 4
    (math/score_sde.tex eq:ddpm-score-step, 1e-12); one Euler-Maruyama step of the reverse SDE
    (eq:reverse-sde-vp, eq:reverse-euler-maruyama) differs from it by at most
    3/8 beta^2 (1 - beta)^(-5/2) |x| + 1/2 beta^2 (1 - beta)^(-3/2) |score| per coordinate."""
    sde = VPSDE.from_schedule(schedule)
    x_t, z = points(32, 3), points(32, 4, scale=1.0)
    for t in (1, 300, 999):
        s, beta = (t + 1) / schedule.T, schedule.beta[t].item()
        eps = mixture_eps(mixture, schedule, x_t, t)
        score = score_from_eps(schedule, eps, t)
        ddpm = ddpm_step(schedule, x_t, t, eps, z, variance="beta")
        assert_close(ddpm, (x_t + beta * score) / math.sqrt(1 - beta) + math.sqrt(beta) * z, rtol=1e-12, atol=1e-12)
        ds = 1 / schedule.T  # one step backwards over code t's cell
        reverse = x_t - reverse_sde_drift(sde, x_t, s, score) * ds + sde.diffusion(s) * math.sqrt(ds) * z
        bound = 3 / 8 * beta**2 * (1 - beta) ** -2.5 * x_t.abs() + 0.5 * beta**2 * (1 - beta) ** -1.5 * score.abs()
        assert bool(((ddpm - reverse).abs() <= bound + 1e-12).all())


def test_probability_flow_drift_in_ddim_variables_is_the_expected_noise(mixture):
    """math/score_sde.tex eq:pf-ode-vp -> eq:pf-ode-ddim, by finite differences, not by the chain rule of the note:
    follow the s-ODE with the exact continuous score a step h = 1e-5 either way (RK4, inside one cell of beta),
    map both ends to (sigma, x_bar) and compare the slope with E[eps | x] = -sqrt(1 - alpha_bar) score.
    Central differences and RK4 are second order: error ~ h^2 times the field's curvature; tolerance 1e-6."""
    schedule = NoiseSchedule.named("linear", 1000)
    sde = VPSDE.from_schedule(schedule)

    def velocity(x, s):
        return probability_flow_drift(sde, x, s, mixture.noised(sde.alpha_bar(s).item()).score(x))

    def rk4(x, s, h):  # one step from s to s + h (h may be negative)
        k1 = velocity(x, s)
        k2 = velocity(x + h / 2 * k1, s + h / 2)
        k3 = velocity(x + h / 2 * k2, s + h / 2)
        return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + velocity(x + h * k3, s + h))

    x, h = points(16, 5, scale=1.0), 1e-5
    for s in (0.0505, 0.3005, 0.9005):  # mid-cell, so beta(s) is constant on [s - h, s + h]
        ends = []
        for step in (h, -h):
            alpha_bar = sde.alpha_bar(s + step).item()
            ends.append((math.sqrt(1 / alpha_bar - 1), rk4(x, s, step) / math.sqrt(alpha_bar)))
        slope = (ends[0][1] - ends[1][1]) / (ends[0][0] - ends[1][0])
        alpha_bar = sde.alpha_bar(s).item()
        expected = -math.sqrt(1 - alpha_bar) * mixture.noised(alpha_bar).score(x)
        assert_close(slope, expected, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ the ODE sampler
def test_noise_level_and_the_timestep_nearest_to_it(schedule):
    """math/ddim.tex eq:ddim-ode-variables, eq:ddim-ode-back (sqrt(alpha_bar) = 1 / sqrt(1 + sigma^2), 1e-12) and
    math/score_sde.tex eq:t-of-sigma: t(sigma_t) = t; between two levels the nearer one on a log scale."""
    sigma = noise_levels(schedule)
    assert bool((torch.diff(sigma) > 0).all())
    assert_close(1 / (1 + sigma**2).sqrt(), schedule.sqrt_alpha_bar, **EXACT)
    assert [timestep_at_noise_level(schedule, sigma[t].item()) for t in range(schedule.T)] == list(range(schedule.T))
    for t in (0, 10, 998):
        low, high = math.log(sigma[t].item()), math.log(sigma[t + 1].item())
        assert timestep_at_noise_level(schedule, math.exp(low + 0.49 * (high - low))) == t
        assert timestep_at_noise_level(schedule, math.exp(low + 0.51 * (high - low))) == t + 1
    assert timestep_at_noise_level(schedule, 0.0) == 0 and timestep_at_noise_level(schedule, 1e-9) == 0
    assert timestep_at_noise_level(schedule, 1e9) == schedule.T - 1


@pytest.mark.parametrize(("t", "t_prev"), [(999, 979), (500, 499), (40, 0), (0, -1), (999, -1)])
def test_a_ddim_step_is_an_euler_step_of_the_probability_flow_ode(schedule, mixture, t, t_prev):
    """math/score_sde.tex eq:ddim-euler-ode: x_bar' = x_bar + (sigma' - sigma) velocity, back in x by
    sqrt(alpha_bar') (math/ddim.tex eq:ddim-ode-back), is ddim_step(eta=0) from t to t_prev (sigma_{-1} = 0).
    Float64, 1e-10 relative (x_bar reaches 1e3 at t = 999)."""
    model = MixtureEpsModel(mixture, schedule)
    sigma = noise_levels(schedule)
    sigma_t, sigma_prev = sigma[t].item(), sigma[t_prev].item() if t_prev >= 0 else 0.0
    x_t = points(32, 6, scale=1.0)
    x_bar = x_t * math.sqrt(1 + sigma_t**2)
    x_bar_prev = x_bar + (sigma_prev - sigma_t) * probability_flow_velocity(model, schedule, x_bar, sigma_t)
    expected = ddim_step(schedule, x_t, t, t_prev, mixture_eps(mixture, schedule, x_t, t), 0.0, None)
    assert_close(x_bar_prev / math.sqrt(1 + sigma_prev**2), expected, rtol=1e-10, atol=1e-10)


def test_probability_flow_sample_maps_noise_to_the_mixture(schedule, mixture):
    """Statistical, N = 2,000 from N(0, I), exact predictor, RK45 at the default tolerance (math/score_sde.tex
    eq:pf-ode-ddim): each component's share of the samples (nearest mean) within 5 standard errors
    sqrt(w (1 - w) / N) of its weight; the share farther than 3 stds from every mean within 5 standard errors of
    exp(-9/2) = 1.1%, its value for the data. NFE is RK45's 2 + 6 x (steps attempted)."""
    n = 2000
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x_0, nfe = probability_flow_sample(MixtureEpsModel(mixture, schedule), schedule, x_T)
    assert x_0.shape == x_T.shape and x_0.dtype == torch.float64 and (nfe - 2) % 6 == 0 and 50 < nfe < 500
    distances = torch.cdist(x_0, mixture.means)
    shares = torch.bincount(distances.argmin(1), minlength=8).double() / n
    se = (mixture.weights * (1 - mixture.weights) / n).sqrt()
    assert bool(((shares - mixture.weights).abs() < 5 * se).all()), (shares, mixture.weights)
    off_mode, p = (distances.min(1).values > 3 * 0.15).double().mean().item(), math.exp(-4.5)
    assert abs(off_mode - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_the_ode_is_deterministic_and_ddim_converges_to_it_at_first_order(schedule, mixture):
    """math/score_sde.tex eq:ddim-euler-ode: DDIM (eta = 0) is Euler's method for the ODE, so its distance to the
    ODE's solution falls like 1/S. N = 500 points, the ODE with RK45 at rtol = atol = 1e-6; mean distance per point.
    Measured: 0.0131 at S = 100 and 0.0018 at S = 1000 (C / S with C ~ 1.3-1.8). Tolerances: the ratio between 5
    and 20 (first order gives 10); S = 1000 within 0.003; and the reference is good enough to see the error at
    S = 1000: even the looser rtol = 1e-5 solution is closer to it than DDIM-1000 is (measured: 0.0006)."""
    model = MixtureEpsModel(mixture, schedule)
    x_T = torch.randn(500, 2, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    ode, nfe = probability_flow_sample(model, schedule, x_T, rtol=1e-6, atol=1e-6)
    again, nfe_again = probability_flow_sample(model, schedule, x_T, rtol=1e-6, atol=1e-6)
    assert torch.equal(ode, again) and nfe == nfe_again

    def distance(x):
        return (x - ode).norm(dim=1).mean().item()

    errors = {steps: distance(ddim_sample(model, schedule, (500, 2), steps=steps, x_T=x_T, progress=False))
              for steps in (100, 1000)}
    assert 5 < errors[100] / errors[1000] < 20, errors
    assert errors[1000] < 0.003, errors
    assert distance(probability_flow_sample(model, schedule, x_T, rtol=1e-5, atol=1e-5)[0]) < errors[1000]


def test_probability_flow_sample_calls_back_once_per_evaluation(schedule, mixture):
    """The callback sees every evaluation, from t = T-1 (at sigma_{T-1}) to t = 0 (at sigma = 0). At the first one,
    on the grid, its x_0 guess x_bar - sigma eps is math/forward.tex eq:predict-x0 (1e-12); at the last, x_0 = x_t."""
    calls = []
    x_T = torch.randn(50, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    x_0, nfe = probability_flow_sample(MixtureEpsModel(mixture, schedule), schedule, x_T, method="RK23",
                                       callback=lambda *args: calls.append(args))
    assert [c[0] for c in calls] == list(range(1, nfe + 1))
    assert calls[0][1] == schedule.T - 1 and calls[-1][1] == 0
    _, t, x_t, x_0_pred = calls[0]
    assert_close(x_0_pred, predict_x0_from_eps(schedule, x_t, t, mixture_eps(mixture, schedule, x_t, t)), **EXACT)
    assert_close(calls[-1][3], calls[-1][2], **EXACT)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_raises_value_error_naming_the_argument(schedule, mixture):
    sde, x, model = VPSDE.from_schedule(schedule), torch.zeros(4, 2), MixtureEpsModel(mixture, schedule)
    cases = [
        ("eps", lambda: score_from_eps(schedule, [1.0, 2.0], 0)),
        ("t", lambda: score_from_eps(schedule, x, 1000)),
        ("score", lambda: eps_from_score(schedule, torch.tensor(1.0), 0)),
        ("score", lambda: tweedie_x0(schedule, x, 0, torch.zeros(4, 3))),
        ("s", lambda: sde.beta(1.5)),
        ("s", lambda: sde.alpha_bar(torch.tensor([-0.1, 0.5]))),
        ("noise_level", lambda: timestep_at_noise_level(schedule, -1.0)),
        ("x_bar", lambda: probability_flow_velocity(model, schedule, torch.tensor(1.0), 1.0)),
        ("method", lambda: probability_flow_sample(model, schedule, x, method="euler")),
        ("rtol", lambda: probability_flow_sample(model, schedule, x, rtol=0.0)),
        ("atol", lambda: probability_flow_sample(model, schedule, x, atol=-1e-3)),
        ("x_T", lambda: probability_flow_sample(model, schedule, torch.tensor(0.5))),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=rf"^{name} "):
            call()
