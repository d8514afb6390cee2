"""Few-step solvers (ddpm_lite.solvers): exact identities in float64, agreement with diffusers' schedulers step by step
on the same timesteps and the same model outputs, and clear errors on bad input.

diffusers keeps its tables in float32. Its noise levels near t = 0 lose digits to the cancellation in 1 - alpha_bar
(alpha_bar[0] = 1 - 1e-4 holds 1 - alpha_bar to about 1e-7 / 1e-4 = 1e-3, which the square root halves), so grids
agree to a relative 2e-4; the steps are then compared on diffusers' own levels (converted to float64), to float32
precision: 1e-5 of the starting noise's scale (x_bar starts near sigma_max = 157 for DDPM's linear betas)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler

from ddpm_lite.mixture import MixtureEpsModel, default_mixture, mixture_eps_at_noise_level
from ddpm_lite.samplers import ddim_sample, ddim_step
from ddpm_lite.schedules import NoiseSchedule, linear_betas
from ddpm_lite.sde import noise_levels
from ddpm_lite.solvers import (
    denoised_from_eps,
    dpmpp_2m_step,
    euler_step,
    eps_at_sigma,
    fast_sample,
    heun_correct,
    karras_sigmas,
    log_snr,
    log_snr_sigmas,
    nfe,
    rescale_zero_terminal_snr,
    sigma_schedule,
    solve,
    timesteps,
)

SCHEDULE = NoiseSchedule.named("linear", 1000)
BETAS = linear_betas(1000).tolist()  # diffusers gets the same betas (it stores them in float32)
GRID_RTOL = 2e-4  # diffusers' float32 noise levels near t = 0 (see above)


def outputs(n: int, seed: int, shape=(3, 2)) -> list[torch.Tensor]:
    """Stand-ins for a network's outputs: the same tensors go to diffusers and to ddpm_lite."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(n)]


# ------------------------------------------------------------------------------- identities (float64)


def test_ddim_with_eta_zero_is_euler_in_sigma():
    """math/fast_sampling.tex eq:euler-step (math/ddim.tex eq:ddim-euler-bar): DDIM's eq. (12) at eta = 0 divided by
    sqrt(alpha_bar_prev) is the Euler step of d x_bar / d sigma = eps, for any pair of timesteps (and to the clean
    data, t_prev = -1)."""
    x, eps = outputs(2, 0)
    levels = noise_levels(SCHEDULE)
    for t, t_prev in ((999, 899), (500, 17), (10, -1)):
        ddim = ddim_step(SCHEDULE, x, t, t_prev, eps, eta=0.0, noise=None)
        x_bar = x / math.sqrt(SCHEDULE.alpha_bar_at(t))
        euler = euler_step(x_bar, levels[t].item(), levels[t_prev].item() if t_prev >= 0 else 0.0, eps)
        torch.testing.assert_close(ddim / math.sqrt(SCHEDULE.alpha_bar_at(t_prev)), euler, rtol=1e-12, atol=1e-12)


def test_ddim_sampling_is_euler_sampling_on_the_leading_grid():
    """Whole runs: ddim_sample (DDIM's "uniform" = Lin et al.'s leading spacing) equals `fast_sample` with Euler on
    the leading grid, from the same x_T, with the 2-D mixture's exact predictor, in float64: both integrate
    eq:pf-ode-sigma."""
    mixture = default_mixture()
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    model = MixtureEpsModel(mixture, SCHEDULE)
    for steps in (1, 10, 50):
        ddim = ddim_sample(model, SCHEDULE, x_T.shape, steps=steps, x_T=x_T, progress=False)
        euler = fast_sample(model, SCHEDULE, x_T.shape, solver="euler", steps=steps, spacing="leading", x_T=x_T,
                            progress=False)
        torch.testing.assert_close(euler, ddim, rtol=1e-10, atol=1e-10)


def test_dpmpp_first_order_is_ddim_and_a_convex_combination():
    """eq:dpmpp-first-order: DPM-Solver++'s first-order step is DDIM (= Euler in sigma): (s'/s) x_bar + (1 - s'/s) D."""
    x_bar, eps = outputs(2, 2)
    sigma, sigma_next = 3.0, 1.2
    denoised = denoised_from_eps(x_bar, sigma, eps)
    torch.testing.assert_close(dpmpp_2m_step(x_bar, sigma, sigma_next, denoised),
                               euler_step(x_bar, sigma, sigma_next, eps), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(dpmpp_2m_step(x_bar, sigma, 0.0, denoised), denoised)  # to sigma = 0: x_0 = D


def test_zero_terminal_snr_gives_pure_noise_at_the_end_and_keeps_the_order():
    """eq:zero-terminal-snr (Lin et al. 2023, Algorithm 1): alpha_bar[T-1] = 0 exactly, alpha_bar[0] kept, and every
    other step's SNR keeps its place (strictly decreasing in t); the betas stay in (0, 1], the last one 1."""
    for name in ("linear", "cosine"):
        schedule = NoiseSchedule.named(name, 1000)
        betas = rescale_zero_terminal_snr(schedule.beta)  # beta[T-1] = 1: not a NoiseSchedule (it needs beta < 1)
        alpha_bar = torch.cumprod(1 - betas, 0)
        assert alpha_bar[-1].item() == 0.0
        assert schedule.alpha_bar[-1].item() > 0  # before: x_T still holds some signal
        torch.testing.assert_close(alpha_bar[0], schedule.alpha_bar[0], rtol=1e-14, atol=0)
        snr, snr_before = alpha_bar[:-1] / (1 - alpha_bar[:-1]), schedule.alpha_bar / (1 - schedule.alpha_bar)
        assert bool((snr[1:] < snr[:-1]).all()) and bool((snr <= snr_before[:-1] * (1 + 1e-12)).all())
        assert bool((betas > 0).all() and (betas <= 1).all()) and betas[-1].item() == 1.0


def test_grids_and_log_snr():
    levels = noise_levels(SCHEDULE)
    karras = karras_sigmas(levels[0].item(), levels[-1].item(), 10)
    assert len(karras) == 11 and karras[-1] == 0
    torch.testing.assert_close(karras[[0, 9]], levels[[-1, 0]], rtol=1e-12, atol=0)  # eq:karras-sigmas ends
    uniform = log_snr_sigmas(levels[0].item(), levels[-1].item(), 10)
    steps_in_lambda = log_snr(uniform[:-1]).diff()  # eq:log-snr, eq:log-snr-spacing: equal steps in lambda
    torch.testing.assert_close(steps_in_lambda, steps_in_lambda[:1].expand(9), rtol=1e-12, atol=0)
    torch.testing.assert_close(torch.exp(2 * log_snr(levels)), SCHEDULE.alpha_bar / (1 - SCHEDULE.alpha_bar))
    assert timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))  # never T - 1
    assert timesteps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))  # starts at T - 1
    assert nfe("heun", 10) == 19 and nfe("euler", 10) == nfe("dpmpp-2m", 10) == 10


def test_sigma_max_caps_the_karras_and_log_snr_grids_only():
    """eq:sigma-max-cap: a capped grid is eq:karras-sigmas / eq:log-snr-spacing from the schedule's sigma_min to the
    cap; the timestep spacings refuse a cap; fast_sample starts from x_T sqrt(1 + cap^2)."""
    cosine = NoiseSchedule.named("cosine", 1000)
    levels = noise_levels(cosine)
    assert levels[-1].item() > 20_000  # cosine betas clipped at 0.999: why a cap is needed
    for spacing, grid in (("karras", karras_sigmas), ("log-snr", log_snr_sigmas)):
        capped = sigma_schedule(cosine, 10, spacing, sigma_max=80.0)
        torch.testing.assert_close(capped, grid(levels[0].item(), 80.0, 10), rtol=0, atol=0)
        assert capped[0].item() == pytest.approx(80.0, rel=1e-12)
        torch.testing.assert_close(sigma_schedule(cosine, 10, spacing, sigma_max=levels[-1].item()),
                                   sigma_schedule(cosine, 10, spacing), rtol=0, atol=0)  # the cap at the top: no change
    for bad, message in ((1e6, "sigma_max must be in"), (levels[0].item(), "sigma_max must be in"),
                         (math.nan, "sigma_max must be a finite number"), ("80", "sigma_max must be a finite number")):
        with pytest.raises(ValueError, match=message):
            sigma_schedule(cosine, 10, "karras", sigma_max=bad)
    with pytest.raises(ValueError, match="sigma_max caps the karras and log-snr grids; spacing 'trailing'"):
        sigma_schedule(cosine, 10, "trailing", sigma_max=80.0)
    seen = []
    model = lambda x_t, t: seen.append(x_t.clone()) or torch.zeros_like(x_t)  # noqa: E731
    x_T = torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = fast_sample(model, cosine, x_T.shape, solver="euler", steps=4, sigma_max=80.0, x_T=x_T, progress=False)
    torch.testing.assert_close(seen[0], x_T)  # x_bar_0 = x_T sqrt(1 + 80^2), times c_in = 1 / sqrt(1 + 80^2)
    torch.testing.assert_close(out, x_T * math.sqrt(1 + 80.0**2))  # eps = 0: Euler keeps x_bar


def test_a_network_gets_integer_timesteps_on_the_grid_and_fractional_ones_between():
    """eq:t-of-sigma-continuous: t(sigma) interpolates in log sigma, as diffusers' `_sigma_to_t`; the network sees
    x_bar / sqrt(1 + sigma^2) (c_in of eq:denoiser)."""
    seen, inputs = [], []
    eps = eps_at_sigma(lambda x_t, t: seen.append(t) or inputs.append(x_t) or torch.zeros_like(x_t), SCHEDULE)
    levels = noise_levels(SCHEDULE)
    eps(torch.full((2, 2), 3.0, dtype=torch.float64), levels[500].item())
    middle = math.sqrt(levels[500].item() * levels[501].item())  # halfway in log sigma
    eps(torch.zeros(2, 2), middle)
    assert seen[0].dtype == torch.int64 and seen[0].tolist() == [500, 500]
    assert seen[1].dtype == torch.float32 and seen[1].tolist() == pytest.approx([500.5, 500.5], abs=1e-4)
    torch.testing.assert_close(inputs[0], torch.full((2, 2), 3.0 * math.sqrt(SCHEDULE.alpha_bar_at(500)),
                                                     dtype=torch.float64), rtol=1e-12, atol=0)
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, trained_betas=BETAS)
    log_sigmas = (((1 - scheduler.alphas_cumprod) / scheduler.alphas_cumprod) ** 0.5).log().numpy()
    assert float(scheduler._sigma_to_t(np.array([middle]), log_sigmas)[0]) == pytest.approx(500.5, abs=1e-3)


# ------------------------------------------------------------------------------- against diffusers


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 7, 10, 50])
def test_timesteps_are_diffusers_ddim_timesteps(spacing, steps):
    """math/fast_sampling.tex eq:timestep-spacings, as diffusers' `timestep_spacing` computes them."""
    scheduler = DDIMScheduler(num_train_timesteps=1000, trained_betas=BETAS, timestep_spacing=spacing)
    scheduler.set_timesteps(steps)
    assert timesteps(1000, steps, spacing).tolist() == scheduler.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["karras", "leading", "trailing"])
def test_euler_steps_agree_with_diffusers_euler_discrete_scheduler(spacing):
    steps = 10
    options = {"use_karras_sigmas": True} if spacing == "karras" else {"timestep_spacing": spacing}
    scheduler = EulerDiscreteScheduler(num_train_timesteps=1000, trained_betas=BETAS, **options)
    scheduler.set_timesteps(steps)
    sigmas = sigma_schedule(SCHEDULE, steps, spacing)
    torch.testing.assert_close(scheduler.sigmas.double(), sigmas, rtol=GRID_RTOL, atol=0)
    sigmas = scheduler.sigmas.double()  # the steps on the very same levels
    x_bar = torch.randn(3, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * sigmas[0].item()
    theirs = x_bar.float()
    for i, (t, eps) in enumerate(zip(scheduler.timesteps, outputs(steps, 4))):
        theirs = scheduler.step(eps.float(), t, theirs).prev_sample
        x_bar = euler_step(x_bar, sigmas[i].item(), sigmas[i + 1].item(), eps)
        torch.testing.assert_close(theirs.double(), x_bar, rtol=1e-5, atol=1e-5 * sigmas[0].item())


@pytest.mark.parametrize("spacing", ["karras", "trailing"])
def test_heun_steps_agree_with_diffusers_heun_discrete_scheduler(spacing):
    """math/fast_sampling.tex eq:heun-step. diffusers runs Heun as two scheduler calls per step (the Euler predictor, then the correction; the last step,
    to sigma = 0, is one call): 2N - 1 model outputs for N steps, as `nfe` counts."""
    steps = 6
    options = {"use_karras_sigmas": True} if spacing == "karras" else {"timestep_spacing": spacing}
    scheduler = HeunDiscreteScheduler(num_train_timesteps=1000, trained_betas=BETAS, **options)
    scheduler.set_timesteps(steps)
    assert len(scheduler.timesteps) == nfe("heun", steps)
    sigmas = sigma_schedule(SCHEDULE, steps, spacing)
    theirs_levels = torch.cat([scheduler.sigmas[::2], scheduler.sigmas[-1:]]).double()  # each level once
    torch.testing.assert_close(theirs_levels, sigmas, rtol=GRID_RTOL, atol=0)
    sigmas = theirs_levels
    x_bar = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * sigmas[0].item()
    theirs, model_outputs = x_bar.float(), iter(outputs(nfe("heun", steps), 6))
    for i in range(steps):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        eps = next(model_outputs)
        theirs = scheduler.step(eps.float(), scheduler.timesteps[2 * i], theirs).prev_sample
        predicted = euler_step(x_bar, sigma, sigma_next, eps)
        if sigma_next > 0:
            eps_next = next(model_outputs)
            theirs = scheduler.step(eps_next.float(), scheduler.timesteps[2 * i + 1], theirs).prev_sample
            predicted = heun_correct(x_bar, sigma, sigma_next, eps, eps_next)
        x_bar = predicted
        torch.testing.assert_close(theirs.double(), x_bar, rtol=1e-5, atol=1e-5 * sigmas[0].item())


@pytest.mark.parametrize("spacing", ["karras", "trailing"])
@pytest.mark.parametrize("steps", [5, 20])
def test_dpmpp_2m_steps_agree_with_diffusers_dpm_solver_multistep_scheduler(spacing, steps):
    """math/fast_sampling.tex eq:dpmpp-2m. diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, midpoint,
    final sigma 0) works on x itself;
    ddpm_lite works on x_bar = x sqrt(1 + sigma^2): the same step in other coordinates."""
    options = {"use_karras_sigmas": True} if spacing == "karras" else {"timestep_spacing": spacing}
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, trained_betas=BETAS, algorithm_type="dpmsolver++",
                                            solver_order=2, solver_type="midpoint", final_sigmas_type="zero", **options)
    scheduler.set_timesteps(steps)
    sigmas = sigma_schedule(SCHEDULE, steps, spacing)
    torch.testing.assert_close(scheduler.sigmas.double(), sigmas, rtol=GRID_RTOL, atol=0)
    sigmas = scheduler.sigmas.double()  # the steps on the very same levels
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x_bar, theirs, previous = x * math.sqrt(1 + sigmas[0].item() ** 2), x.float(), None
    for i, (t, eps) in enumerate(zip(scheduler.timesteps, outputs(steps, 8))):
        theirs = scheduler.step(eps.float(), t, theirs).prev_sample
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        denoised = denoised_from_eps(x_bar, sigma, eps)
        x_bar = dpmpp_2m_step(x_bar, sigma, sigma_next, denoised, *(previous or (None, None)))
        previous = (denoised, sigma)
        torch.testing.assert_close(theirs.double() * math.sqrt(1 + sigma_next**2), x_bar, rtol=1e-5,
                                   atol=1e-5 * sigmas[0].item())


def test_solve_runs_the_steps_the_tests_above_check():
    """`solve` is the loop over those steps: Euler, Heun and DPM-Solver++ 2M on a fixed field agree with the steps
    called by hand; EDM's stochastic Heun (churn > 0, eq:edm-churn) draws its noise from the generator (same seed,
    same run)."""
    sigmas = sigma_schedule(SCHEDULE, 8, "karras")
    x_bar = torch.randn(4, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64) * sigmas[0].item()
    eps_fn = mixture_eps_at_noise_level(default_mixture())
    by_hand, previous = x_bar, None
    for i in range(8):
        sigma, sigma_next = sigmas[i].item(), sigmas[i + 1].item()
        denoised = denoised_from_eps(by_hand, sigma, eps_fn(by_hand, sigma))
        by_hand = dpmpp_2m_step(by_hand, sigma, sigma_next, denoised, *(previous or (None, None)))
        previous = (denoised, sigma)
    torch.testing.assert_close(solve(eps_fn, sigmas, x_bar, "dpmpp-2m"), by_hand, rtol=1e-12, atol=1e-12)
    calls = []
    counting = lambda x, s: calls.append(s) or eps_fn(x, s)  # noqa: E731
    solve(counting, sigmas, x_bar, "heun")
    assert len(calls) == nfe("heun", 8)
    first = solve(eps_fn, sigmas, x_bar, "heun", churn=10.0, generator=torch.Generator().manual_seed(0))
    again = solve(eps_fn, sigmas, x_bar, "heun", churn=10.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(first, again) and not torch.allclose(first, solve(eps_fn, sigmas, x_bar, "heun"))


# ------------------------------------------------------------------------------- bad input


def test_bad_input_raises_a_value_error_naming_the_argument():
    levels = noise_levels(SCHEDULE)
    with pytest.raises(ValueError, match="steps must be an int in"):
        timesteps(1000, 0, "trailing")
    with pytest.raises(ValueError, match="spacing must be one of"):
        timesteps(1000, 10, "uniform")
    with pytest.raises(ValueError, match="spacing must be one of"):
        sigma_schedule(SCHEDULE, 10, "cosine")
    with pytest.raises(ValueError, match="rho must be > 0"):
        karras_sigmas(0.01, 100.0, 10, rho=0.0)
    with pytest.raises(ValueError, match="steps must be"):
        karras_sigmas(0.01, 100.0, 0)
    with pytest.raises(ValueError, match="need 0 < sigma_min < sigma_max"):
        log_snr_sigmas(1.0, 0.5, 10)
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(lambda x, s: x, sigma_schedule(SCHEDULE, 4), torch.zeros(1, 2), "dpmpp-3m")  # order 3: not here
    with pytest.raises(ValueError, match="solver must be one of"):
        nfe("dpmpp-3m", 4)
    with pytest.raises(ValueError, match="sigmas must be a decreasing"):
        solve(lambda x, s: x, levels[:5], torch.zeros(1, 2), "euler")  # increasing
    with pytest.raises(ValueError, match="churn .* needs solver='heun'"):
        solve(lambda x, s: x, sigma_schedule(SCHEDULE, 4), torch.zeros(1, 2), "euler", churn=1.0)
    with pytest.raises(ValueError, match="sigma_prev must be the previous"):
        dpmpp_2m_step(torch.zeros(2), 1.0, 0.5, torch.zeros(2), torch.zeros(2), sigma_prev=0.9)
    with pytest.raises(ValueError, match="betas must be"):
        rescale_zero_terminal_snr(torch.tensor([0.1]))
