"""ddpm_lite.flow: the linear path and its conversions as exact float64 identities (math/flow_matching.tex
eq:linear-path, eq:conditional-velocity, eq:velocity-conversions); the mixture's exact marginal velocity against a
self-normalised Monte Carlo estimate of E[eps - x_0 | x_tau] (eq:mixture-velocity, eq:marginal-velocity); the VP
path's velocity against the probability-flow drift of ddpm_lite.sde (eq:vp-path, eq:vp-path-velocity); the linear
path as the VP path in other coordinates (eq:linear-vp-change) and DDIM as Euler on it (eq:ddim-euler-linear); the
conditional loss against the marginal one (eq:cfm-loss, eq:cfm-gradient); ODE sampling (eq:flow-euler, eq:flow-heun),
straightness (eq:straightness), reflow (eq:reflow) and training a flow network through ddpm_lite.train
(eq:flow-time)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import Tensor

from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.flow import (
    conditional_velocity,
    eps_to_velocity,
    flow_matching_loss,
    flow_sample,
    flow_taus,
    linear_from_vp,
    linear_path,
    mixture_velocity,
    mixture_velocity_fn,
    network_velocity,
    nfe,
    noise_level_of_tau,
    reflow_pairs,
    straightness,
    tau_of_noise_level,
    velocity_to_eps,
    velocity_to_score,
    velocity_to_x0,
    vp_path,
    vp_path_velocity,
)
from ddpm_lite.forward import q_sample
from ddpm_lite.metrics import sliced_wasserstein, sliced_wasserstein_floor
from ddpm_lite.mixture import GaussianMixture, default_mixture, mixture_eps_at_noise_level
from ddpm_lite.models import MLP, MLPConfig
from ddpm_lite.objectives import Denoiser
from ddpm_lite.samplers import ddim_sample
from ddpm_lite.schedules import NoiseSchedule, extract
from ddpm_lite.sde import VPSDE, probability_flow_drift
from ddpm_lite.solvers import solve
from ddpm_lite.train import train

EXACT = dict(rtol=1e-12, atol=1e-12)
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_path_and_conversions_are_exact_identities():
    """eq:linear-path, eq:conditional-velocity, eq:velocity-conversions: from x_tau and the conditional velocity
    eps - x_0, x_0 and eps come back exactly; eps_to_velocity inverts velocity_to_eps; the score is -eps / tau."""
    x_0, eps = torch.randn(64, 3, generator=gen(0), dtype=F64), torch.randn(64, 3, generator=gen(1), dtype=F64)
    tau = torch.rand(64, generator=gen(2), dtype=F64) * 0.98 + 0.01
    x_tau = linear_path(x_0, eps, tau)
    torch.testing.assert_close(x_tau, (1 - tau[:, None]) * x_0 + tau[:, None] * eps, **EXACT)
    v = conditional_velocity(x_0, eps)
    torch.testing.assert_close(velocity_to_x0(x_tau, v, tau), x_0, **EXACT)
    torch.testing.assert_close(velocity_to_eps(x_tau, v, tau), eps, **EXACT)
    torch.testing.assert_close(eps_to_velocity(x_tau, eps, tau), v, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(velocity_to_score(x_tau, v, tau), -eps / tau[:, None], **EXACT)
    torch.testing.assert_close(linear_path(x_0, eps, 0.0), x_0, **EXACT)  # tau = 0 the data, tau = 1 the noise
    torch.testing.assert_close(linear_path(x_0, eps, 1.0), eps, **EXACT)
    h = 1e-6  # the velocity is the path's derivative in tau (it is linear, so the difference quotient is exact)
    torch.testing.assert_close((linear_path(x_0, eps, 0.5 + h) - linear_path(x_0, eps, 0.5 - h)) / (2 * h), v,
                               rtol=1e-7, atol=1e-7)


def _monte_carlo_velocity(mixture: GaussianMixture, x: Tensor, tau: float, n: int, seed: int):
    """Self-normalised importance estimate of E[eps - x_0 | x_tau = x] for one point x (D,): x_0^i from the mixture,
    weights N(x; (1 - tau) x_0^i, tau^2 I), eps^i = (x - (1 - tau) x_0^i) / tau. Returns (estimate, delta-method s.e.)
    (Owen 2013, Monte Carlo theory, eq. 9.8 for the variance of a ratio estimate)."""
    x_0 = mixture.sample(n, gen(seed)).to(F64)
    log_w = -0.5 * ((x - (1 - tau) * x_0) ** 2).sum(1) / tau**2
    w = torch.softmax(log_w, 0)
    f = (x - (1 - tau) * x_0) / tau - x_0
    estimate = (w[:, None] * f).sum(0)
    se = ((w[:, None] ** 2) * (f - estimate) ** 2).sum(0).sqrt()
    return estimate, se



@pytest.mark.parametrize("tau", [0.3, 0.6, 0.9])
def test_exact_velocity_matches_a_monte_carlo_estimate(tau):
    """eq:mixture-velocity, eq:marginal-velocity: at 6 points and 3 flow times, the closed form equals the
    self-normalised Monte Carlo estimate of E[eps - x_0 | x_tau] (N = 400,000 draws of x_0) within 5 standard errors
    in every coordinate; the estimate's s.e. is below 0.05, so an error of the closed form's size would show."""
    mixture = default_mixture()
    points = torch.tensor([[0.0, 0.0], [1.2, 0.3], [-0.8, 0.9], [0.1, -1.4], [2.0, 2.0], [-1.0, -0.2]], dtype=F64)
    exact = mixture_velocity(mixture, points, tau)
    for i, x in enumerate(points):
        estimate, se = _monte_carlo_velocity(mixture, x, tau, 400_000, seed=10 + i)
        assert bool((se < 0.05).all()), f"Monte Carlo too noisy at tau={tau}, x={x.tolist()}: s.e. {se.tolist()}"
        z = ((exact[i] - estimate) / se).abs()
        assert bool((z < 5).all()), f"tau={tau}, x={x.tolist()}: exact {exact[i].tolist()}, MC {estimate.tolist()} +- {se.tolist()}"
    shifted = mixture_velocity(mixture, points, min(tau + 0.1, 1.0))  # the check can fail: another tau is far off
    assert (shifted - exact).abs().max() > 0.1


def test_exact_velocity_at_the_ends_of_the_path():
    """eq:mixture-velocity: at tau = 0, x = x_0 and eps is independent of it, so E[eps - x_0 | x] = -x; at tau = 1,
    x = eps, so it is x - E[x_0] (the mixture's mean is 0)."""
    mixture = default_mixture()
    x = torch.randn(50, 2, generator=gen(3), dtype=F64)
    torch.testing.assert_close(mixture_velocity(mixture, x, 0.0), -x, **EXACT)
    torch.testing.assert_close(mixture_velocity(mixture, x, 1.0), x - mixture.mean(), **EXACT)


def test_linear_path_is_the_vp_path_in_other_coordinates():
    """eq:linear-vp-change: the VP point x_t of (x_0, eps) maps to the linear path's point of the same (x_0, eps) at
    tau = sigma_t / (1 + sigma_t); and the exact linear field equals the exact VP noise predictor there,
    u = (eps* - x_lin) / (1 - tau) (eq:velocity-conversions)."""
    schedule = NoiseSchedule.named("cosine", 1000)
    x_0, eps = torch.randn(32, 2, generator=gen(4), dtype=F64), torch.randn(32, 2, generator=gen(5), dtype=F64)
    t = torch.randint(0, 1000, (32,), generator=gen(6))
    x_t = q_sample(schedule, x_0, t, eps)
    x_lin, tau = linear_from_vp(x_t, extract(schedule.alpha_bar, t, x_t))
    torch.testing.assert_close(x_lin, linear_path(x_0, eps, tau.flatten()), rtol=1e-10, atol=1e-10)
    sigma = 0.7
    assert noise_level_of_tau(tau_of_noise_level(sigma)) == pytest.approx(sigma, rel=1e-14)
    mixture = default_mixture()
    eps_star = mixture_eps_at_noise_level(mixture)
    for tau_value in (0.1, 0.5, 0.95):
        sigma = noise_level_of_tau(tau_value)
        x = torch.randn(40, 2, generator=gen(7), dtype=F64)
        from_vp = eps_to_velocity(x, eps_star(x * (1 + sigma), sigma), tau_value)  # x_bar = x_lin (1 + sigma)
        torch.testing.assert_close(mixture_velocity(mixture, x, tau_value), from_vp, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_vp_path_velocity_is_the_probability_flow_drift(name):
    """eq:vp-path, eq:vp-path-velocity: averaged given x_s, the VP path's velocity from the exact E[eps | x_s] equals
    ddpm_lite.sde.probability_flow_drift with the exact score (Song et al. 2021, eq. 13) to 1e-10 in float64; given
    (x_0, eps) it is the path's derivative in s (a central difference inside one cell of the piecewise-constant
    beta, to 1e-6)."""
    schedule = NoiseSchedule.named(name, 1000)
    sde = VPSDE.from_schedule(schedule)
    mixture = default_mixture()
    x = torch.randn(40, 2, generator=gen(8), dtype=F64)
    for s in (0.0055, 0.3005, 0.8005):  # mid-cell: beta is constant on ((t) / T, (t + 1) / T]
        alpha_bar = sde.alpha_bar(s).item()
        score = mixture.noised(alpha_bar).score(x)
        eps = -math.sqrt(1 - alpha_bar) * score  # Tweedie; math/score_sde.tex eq:score-from-eps
        torch.testing.assert_close(vp_path_velocity(sde, x, s, eps), probability_flow_drift(sde, x, s, score),
                                   rtol=1e-10, atol=1e-10)
        x_0, noise = mixture.sample(40, gen(9)).to(F64), torch.randn(40, 2, generator=gen(10), dtype=F64)
        h = 1e-5
        derivative = (vp_path(sde, x_0, noise, s + h) - vp_path(sde, x_0, noise, s - h)) / (2 * h)
        torch.testing.assert_close(vp_path_velocity(sde, vp_path(sde, x_0, noise, s), s, noise), derivative,
                                   rtol=1e-6, atol=1e-6)


def test_ddim_is_euler_on_the_linear_path():
    """eq:ddim-euler-linear: deterministic DDIM (= Euler in sigma, math/fast_sampling.tex) and Euler in tau on the
    linear path, fed the same exact noise predictor at the same levels, give the same samples to 1e-10."""
    mixture = default_mixture()
    eps_star = mixture_eps_at_noise_level(mixture)
    sigmas = torch.tensor([80.0, 20.0, 6.0, 2.0, 0.7, 0.2, 0.05, 0.0], dtype=F64)
    x_T = torch.randn(100, 2, generator=gen(11), dtype=F64)
    x_bar = x_T * math.sqrt(1 + sigmas[0].item() ** 2)
    ddim = solve(eps_star, sigmas, x_bar, "euler")

    def velocity(x: Tensor, tau: float) -> Tensor:
        sigma = noise_level_of_tau(tau)
        return eps_to_velocity(x, eps_star(x * (1 + sigma), sigma), tau) if tau < 1 else x

    taus = tau_of_noise_level(sigmas)
    flow = flow_sample(velocity, tuple(x_T.shape), taus=taus, x_1=x_bar / (1 + sigmas[0].item()), progress=False)
    torch.testing.assert_close(flow, ddim, rtol=1e-10, atol=1e-10)
    heun = flow_sample(velocity, tuple(x_T.shape), taus=taus, solver="heun", x_1=x_bar / (1 + sigmas[0].item()),
                       progress=False)
    assert (heun - ddim).abs().max() > 1e-3  # the identity is Euler's: Heun's second slope changes the samples


def test_conditional_loss_differs_from_the_marginal_one_by_a_constant():
    """eq:cfm-loss, eq:cfm-gradient: for any field v, L_CFM(v) - L_CFM(u) = E||v - u||^2 with u the exact marginal
    velocity (Lipman et al. 2023, Theorem 2), so both losses have the same minimiser and gradients. Checked with the
    same N = 200,000 draws for three fields, the paired difference within 5 standard errors."""
    mixture = default_mixture()
    n = 200_000
    x_0 = mixture.sample(n, gen(12)).to(F64)
    eps = torch.randn(n, 2, generator=gen(13), dtype=F64)
    tau = torch.rand(n, generator=gen(14), dtype=F64) * 0.999
    x_tau = linear_path(x_0, eps, tau)
    u = mixture_velocity(mixture, x_tau, tau)  # each example at its own tau
    target = conditional_velocity(x_0, eps)
    for field in (lambda x: 0.5 * x, lambda x: torch.zeros_like(x), lambda x: -x + 0.3):
        v = field(x_tau)
        difference = ((v - target) ** 2).sum(1) - ((u - target) ** 2).sum(1) - ((v - u) ** 2).sum(1)
        z = difference.mean() / (difference.std() / math.sqrt(n))
        assert abs(z) < 5, f"L_CFM(v) - L_CFM(u) - E||v - u||^2 = {difference.mean():.4g} (z = {z:.1f})"
    loss = flow_matching_loss(lambda x, time: 0.5 * x, x_0[:64].float(), tau=tau[:64].float(), eps=eps[:64].float())
    manual = ((0.5 * linear_path(x_0[:64], eps[:64], tau[:64]) - target[:64]) ** 2).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_heun_on_the_exact_field_maps_noise_to_the_mixture():
    """eq:flow-euler, eq:flow-heun: 50 Heun steps on the exact field take N = 4,000 draws of N(0, I) to the mixture:
    the sliced Wasserstein distance to fresh data is within 3 sd of the data-vs-data floor; one Euler step (every
    point sent to E[x_0 | x_1], a blur) is not."""
    mixture = default_mixture()
    n = 4000
    data = mixture.sample(n, gen(20))
    floor, floor_sd = sliced_wasserstein_floor(lambda k, g: mixture.sample(k, g), n, generator=gen(21))
    velocity = mixture_velocity_fn(mixture)
    x = flow_sample(velocity, (n, 2), steps=50, solver="heun", generator=gen(22), progress=False)
    z = (sliced_wasserstein(x, data, generator=gen(23)) - floor) / floor_sd
    assert z < 3, f"50 Heun steps: sliced Wasserstein z = {z:.1f}"
    one = flow_sample(velocity, (n, 2), steps=1, generator=gen(22), progress=False)
    z_one = (sliced_wasserstein(one, data, generator=gen(23)) - floor) / floor_sd
    assert z_one > 10, f"one Euler step should be far from the data, z = {z_one:.1f}"


def test_orders_of_euler_and_heun_on_the_exact_field():
    """eq:flow-euler, eq:flow-heun: against a 2,000-step Heun reference from the same x_1 (N = 500), doubling the
    steps from 20 to 40 divides Euler's mean error by about 2 (first order) and Heun's by about 4 (second order)."""
    mixture = default_mixture()
    velocity = mixture_velocity_fn(mixture)
    x_1 = torch.randn(500, 2, generator=gen(24), dtype=F64)
    reference = flow_sample(velocity, (500, 2), steps=2000, solver="heun", x_1=x_1, progress=False)

    def error(solver: str, steps: int) -> float:
        x = flow_sample(velocity, (500, 2), steps=steps, solver=solver, x_1=x_1, progress=False)
        return (x - reference).norm(dim=1).mean().item()

    assert 1.6 < error("euler", 20) / error("euler", 40) < 2.5
    assert 3.0 < error("heun", 20) / error("heun", 40) < 5.0
    assert nfe("euler", 20) == 20 and nfe("heun", 20) == 40


def test_straightness_is_zero_for_a_constant_field_and_positive_for_the_mixture():
    """eq:straightness: a constant velocity moves every point on a straight line at constant speed, S = 0 (to
    rounding); the mixture's exact field bends its paths, S > 0.05 per point."""
    x_1 = torch.randn(200, 2, generator=gen(25), dtype=F64)
    constant = straightness(lambda x, tau: torch.full_like(x, 0.7), x_1, steps=20)
    assert constant.abs().max() < 1e-20
    bent = straightness(mixture_velocity_fn(default_mixture()), x_1, steps=100)
    assert bent.shape == (200,) and bent.mean() > 0.05


def test_reflow_pairs_are_the_flow_s_own_map():
    """eq:reflow: the pairs are (x_1, Phi(x_1)) with Phi the ODE solve; for the exact field the second member is a
    sample of the solver from that same x_1."""
    velocity = mixture_velocity_fn(default_mixture())
    x_1, z = reflow_pairs(velocity, (64, 2), steps=20, generator=gen(26), progress=False)
    again = flow_sample(velocity, (64, 2), steps=20, solver="heun", x_1=x_1, progress=False)
    torch.testing.assert_close(z, again, rtol=0, atol=0)
    torch.testing.assert_close(x_1, torch.randn(64, 2, generator=gen(26)), rtol=0, atol=0)


def test_flow_denoiser_is_an_eps_model_for_every_sampler():
    """eq:linear-vp-change, eq:flow-time: a Denoiser around a velocity network returns
    eps = x_lin + (1 - tau) v(x_lin, T tau) at the VP point x_t; native=True is the network itself;
    network_velocity calls it at T tau; DDIM runs it."""
    torch.manual_seed(0)
    schedule = NoiseSchedule.named("cosine", 1000)
    network = MLP(MLPConfig())
    model = Denoiser(network, schedule, "flow")
    x_t = torch.randn(16, 2, generator=gen(27))
    t = torch.randint(0, 1000, (16,), generator=gen(28))
    alpha_bar = extract(schedule.alpha_bar, t, x_t)
    x_lin, tau = linear_from_vp(x_t, alpha_bar)
    expected = x_lin + (1 - tau) * network(x_lin, 1000 * tau.flatten())
    torch.testing.assert_close(model(x_t, t), expected, rtol=1e-5, atol=1e-5)  # float32 throughout
    time = torch.full((16,), 250.0)
    torch.testing.assert_close(model(x_t, time, native=True), network(x_t, time), rtol=0, atol=0)
    torch.testing.assert_close(network_velocity(model)(x_t, 0.25), network(x_t, time), rtol=0, atol=0)
    samples = ddim_sample(model, schedule, (8, 2), steps=5, generator=gen(29), progress=False)
    assert samples.shape == (8, 2) and bool(torch.isfinite(samples).all())


def test_training_a_flow_network_through_train():
    """eq:flow-time, eq:cfm-loss: TrainConfig(prediction="flow") trains the course's MLP with the flow-matching loss
    at tau = (t + 1/2) / T. The loss (per coordinate) cannot fall below the exact field's, its floor, estimated here
    with N = 100,000 draws at the same taus (about 1.42; the zero field's is about 2.15): over 300 steps on the
    mixture the first 10 steps' mean is more than 0.4 above the floor and the last 50 steps' within 0.15 of it. With
    paired_noise the rows' own noise is used (reflow)."""
    mixture = default_mixture()
    n = 100_000
    x_0, eps = mixture.sample(n, gen(33)).to(F64), torch.randn(n, 2, generator=gen(34), dtype=F64)
    tau = (torch.randint(0, 1000, (n,), generator=gen(35)).to(F64) + 0.5) / 1000  # eq:flow-time
    x_tau = linear_path(x_0, eps, tau)
    floor = (mixture_velocity(mixture, x_tau, tau) - conditional_velocity(x_0, eps)).pow(2).mean().item()
    config = dataclasses.replace(CONFIGS["2d"], prediction="flow", schedule="cosine", steps=300, warmup=20)
    points = mixture.sample(5000, gen(30))
    result = train(config, points, progress=False)
    losses = torch.tensor(result.losses)
    assert losses[:10].mean() > floor + 0.4, (losses[:10].mean(), floor)
    assert losses[-50:].mean() < floor + 0.15, (losses[-50:].mean(), floor)
    assert isinstance(result.ema, torch.nn.Module)
    x = flow_sample(network_velocity(result.ema), (100, 2), steps=10, generator=gen(31), progress=False)
    assert bool(torch.isfinite(x).all())

    x_1, z = reflow_pairs(network_velocity(result.ema), (2000, 2), steps=10, generator=gen(32), progress=False)
    reflow = dataclasses.replace(config, name="reflow", paired_noise=True, steps=100)
    paired = train(reflow, torch.cat([z, x_1], dim=1), progress=False, steps=5)
    assert len(paired.losses) == 5 and all(math.isfinite(loss) for loss in paired.losses)


def test_flow_options_are_validated():
    base = CONFIGS["2d"]
    with pytest.raises(ValueError, match="loss_weighting must be None for prediction='flow'"):
        dataclasses.replace(base, prediction="flow", loss_weighting="min-snr")
    with pytest.raises(ValueError, match="noise_levels must be 'uniform' for prediction='flow'"):
        dataclasses.replace(base, prediction="flow", noise_levels="log-normal")
    with pytest.raises(ValueError, match="prediction='flow' learns no variances"):
        dataclasses.replace(base, prediction="flow", model=MLPConfig(learn_variance=True))
    with pytest.raises(ValueError, match="paired_noise \\(reflow\\) needs prediction='flow'"):
        dataclasses.replace(base, paired_noise=True)
    with pytest.raises(ValueError, match="prediction must be one of"):
        TrainConfig(name="x", data="mixture", model=MLPConfig(), prediction="velocity")


def test_bad_input_raises_clear_errors():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"tau must lie in \[0, 1\]"):
        linear_path(x, x, 1.5)
    with pytest.raises(ValueError, match="tau must be a number or have shape"):
        linear_path(x, x, torch.zeros(3))
    with pytest.raises(ValueError, match=r"tau must lie in \[0, 1\)"):
        eps_to_velocity(x, x, 1.0)
    with pytest.raises(ValueError, match=r"tau must lie in \(0, 1\]"):
        velocity_to_score(x, x, 0.0)
    with pytest.raises(ValueError, match="x_tau must have shape"):
        mixture_velocity(default_mixture(), torch.zeros(4, 3), 0.5)
    velocity = mixture_velocity_fn(default_mixture())
    with pytest.raises(ValueError, match="steps must be"):
        flow_sample(velocity, (4, 2), steps=0, progress=False)
    with pytest.raises(ValueError, match="solver must be one of"):
        flow_sample(velocity, (4, 2), solver="rk4", progress=False)
    with pytest.raises(ValueError, match="x_1 must have shape"):
        flow_sample(velocity, (4, 2), x_1=torch.zeros(5, 2), progress=False)
    with pytest.raises(ValueError, match="taus must be a decreasing"):
        flow_sample(velocity, (4, 2), taus=torch.tensor([0.0, 1.0]), progress=False)
    with pytest.raises(ValueError, match="solver must be one of"):
        nfe("rk4", 3)
    assert flow_taus(4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_flow_matching_is_a_weighted_noise_loss():
    """eq:cfm-weighting: at x_tau, a velocity v_hat and the eps_hat it implies (eq:velocity-conversions) err by
    ||v_hat - (eps - x_0)||^2 = ||eps_hat - eps||^2 / (1 - tau)^2, exactly: flow matching is the noise-prediction
    loss weighted by (1 + sigma)^2 at sigma = tau / (1 - tau)."""
    x_0, eps = torch.randn(64, 3, generator=gen(40), dtype=F64), torch.randn(64, 3, generator=gen(41), dtype=F64)
    tau = torch.rand(64, generator=gen(42), dtype=F64) * 0.98
    x_tau = linear_path(x_0, eps, tau)
    v_hat = torch.randn(64, 3, generator=gen(43), dtype=F64)
    eps_hat = velocity_to_eps(x_tau, v_hat, tau)
    left = (v_hat - conditional_velocity(x_0, eps)).pow(2).sum(1)
    right = (eps_hat - eps).pow(2).sum(1) / (1 - tau) ** 2
    torch.testing.assert_close(left, right, rtol=1e-10, atol=1e-10)
    sigma = noise_level_of_tau(tau)
    torch.testing.assert_close(1 / (1 - tau) ** 2, (1 + sigma) ** 2, rtol=1e-10, atol=1e-10)
