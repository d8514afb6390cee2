"""Samplers: DDPM and DDIM steps against diffusers' schedulers, identities, and sampling the exact mixture."""

import math

import pytest
import torch
from torch.testing import assert_close

from ddpm_lite.mixture import MixtureEpsModel, gaussian_mixture, mixture_eps_fn
from ddpm_lite.samplers import (
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddim_timesteps,
    ddpm_sample,
    ddpm_step,
    sample_in_batches,
)
from ddpm_lite.schedules import NoiseSchedule

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.named("linear", 1000)


@pytest.mark.parametrize(("variance", "variance_type"), [("posterior", "fixed_small"), ("beta", "fixed_large")])
@pytest.mark.parametrize("clip_x0", [False, True])
def test_ddpm_step_matches_diffusers(schedule, variance, variance_type, clip_x0):
    """DDPM Algorithm 2 against diffusers' DDPMScheduler.step (float32), with the same noise.
    math/posterior.tex eq:posterior-mean-eps, eq:reverse-variance-choices."""
    reference = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                        variance_type=variance_type, clip_sample=clip_x0)
    g = torch.Generator().manual_seed(0)
    x_t, eps = torch.randn(2, 1, 4, 4, generator=g) * 1.5, torch.randn(2, 1, 4, 4, generator=g)
    for t in (999, 500, 10, 1, 0):
        expected = reference.step(eps, t, x_t, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        got = ddpm_step(schedule, x_t, t, eps, noise, variance=variance, clip_x0=clip_x0)
        assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_diffusers(schedule, eta):
    """DDIM eqs. (12) and (16) against diffusers' DDIMScheduler.step, 50 uniform steps.
    math/ddim.tex eq:ddim-step, eq:ddim-sigma, eq:ddim-predicted-x0, eq:ddim-skip."""
    reference = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                        set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    reference.set_timesteps(50)
    tau = ddim_timesteps(1000, 50)
    assert reference.timesteps.tolist() == tau.flip(0).tolist()
    g = torch.Generator().manual_seed(1)
    x_t, eps = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    pairs = list(zip(tau.flip(0).tolist(), [*tau.flip(0)[1:].tolist(), -1]))
    for t, t_prev in pairs[:3] + pairs[-2:]:
        expected = reference.step(eps, t, x_t, eta=eta, generator=torch.Generator().manual_seed(t)).prev_sample
        noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t))
        assert_close(ddim_step(schedule, x_t, t, t_prev, eps, eta, noise), expected, rtol=1e-4, atol=1e-5)


def test_ddim_with_eta_one_and_every_step_is_ddpm_with_posterior_variance(schedule):
    """DDIM eq. (16) at eta = 1 gives sigma_t^2 = tilde-beta_t: the DDIM step equals the DDPM step exactly.
    math/ddim.tex eq:ddim-eta-one, eq:ddim-eta-one-mean."""
    g = torch.Generator().manual_seed(2)
    x_t, eps, noise = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    for t in (999, 400, 7, 1):
        ddim = ddim_step(schedule, x_t, t, t - 1, eps, 1.0, noise)
        ddpm = ddpm_step(schedule, x_t, t, eps, noise, variance="posterior")
        assert_close(ddim, ddpm, rtol=1e-10, atol=1e-12)


def test_ddim_timesteps():
    """math/ddim.tex eq:ddim-spacing."""
    assert ddim_timesteps(1000, 10).tolist() == list(range(0, 1000, 100))
    quad = ddim_timesteps(1000, 20, "quadratic")
    assert quad[0] == 0 and quad[-1] == int(0.8 * 1000) and torch.all(quad[1:] > quad[:-1])
    assert ddim_timesteps(1000, 1000).tolist() == list(range(1000))
    for bad, match in [(dict(steps=0), "steps"), (dict(steps=1001), "steps"), (dict(steps=10, spacing="log"), "spacing")]:
        with pytest.raises(ValueError, match=match):
            ddim_timesteps(1000, **bad)


def test_ddim_step_rejects_bad_arguments(schedule):
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="t_prev"):
        ddim_step(schedule, x, 10, 10, x, 0.0, None)
    with pytest.raises(ValueError, match="eta"):
        ddim_step(schedule, x, 10, 5, x, -0.1, None)
    with pytest.raises(ValueError, match="noise is required"):
        ddim_step(schedule, x, 10, 5, x, 0.5, None)


def sliced_w2(x, y, n=128):
    directions = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    directions /= directions.norm(dim=1, keepdim=True)
    px, py = (x.double() @ directions.T).sort(0).values, (y.double() @ directions.T).sort(0).values
    return ((px - py) ** 2).mean().sqrt().item()


@pytest.mark.parametrize("sampler", ["ddpm", "ddim-100"])
def test_sampling_the_exact_predictor_recovers_the_mixture(sampler):
    """With the exact predictor all error is the sampler's: N = 2,000 samples must be within 2x of the
    data-vs-data sliced Wasserstein floor at the same N, and recover the mixture's mean and covariance."""
    schedule = NoiseSchedule.named("linear", 1000)
    _, mixture = gaussian_mixture(1)
    model = MixtureEpsModel(mixture, schedule)
    g = torch.Generator().manual_seed(3)
    if sampler == "ddpm":
        x = ddpm_sample(model, schedule, (2000, 2), generator=g, progress=False)
    else:
        x = ddim_sample(model, schedule, (2000, 2), steps=100, generator=g, progress=False)
    reference, other = mixture.sample(2000, g), mixture.sample(2000, g)
    assert sliced_w2(x, reference) < 2 * sliced_w2(other, reference)
    assert_close(x.double().mean(0), mixture.mean(), rtol=0, atol=5 * math.sqrt(1.3 / 2000))


def test_callback_sees_every_step(schedule):
    seen = []
    model = MixtureEpsModel(gaussian_mixture(1)[1], schedule)
    ddim_sample(model, schedule, (4, 2), steps=5, callback=lambda i, t, x, x0: seen.append((i, t, x.shape, x0.shape)),
                progress=False)
    assert [(i, t) for i, t, _, _ in seen] == [(0, 800), (1, 600), (2, 400), (3, 200), (4, 0)]


def test_ddim_inversion_round_trip_error_shrinks_with_steps():
    """x_0 -> ddim_invert -> ddim_sample (eta = 0) returns to x_0, better with more steps (exact predictor, 200 points).
    math/ddim.tex eq:ddim-inversion."""
    from ddpm_lite.samplers import ddim_invert

    schedule = NoiseSchedule.named("linear", 1000)
    x_0, mixture = gaussian_mixture(200, generator=torch.Generator().manual_seed(4))
    model = MixtureEpsModel(mixture, schedule)
    errors = []
    for steps in (10, 100):
        x_T = ddim_invert(model, schedule, x_0, steps=steps, progress=False)
        back = ddim_sample(model, schedule, x_0.shape, steps=steps, x_T=x_T, progress=False)
        errors.append((back - x_0).pow(2).sum(1).sqrt().mean().item())
    assert errors[1] < 0.5 * errors[0] and errors[1] < 0.05, errors


def test_slerp_endpoints_and_norm():
    from ddpm_lite.samplers import slerp

    g = torch.Generator().manual_seed(5)
    z_0, z_1 = torch.randn(3, 1, 28, 28, generator=g), torch.randn(3, 1, 28, 28, generator=g)
    assert_close(slerp(z_0, z_1, 0.0), z_0, rtol=1e-5, atol=1e-5)
    assert_close(slerp(z_0, z_1, 1.0), z_1, rtol=1e-5, atol=1e-5)
    path = slerp(z_0, z_1, torch.linspace(0, 1, 5))
    assert path.shape == (5, 3, 1, 28, 28)
    norms = path.flatten(2).norm(dim=2)  # near sqrt(784) = 28 all along, unlike the straight line's midpoint
    assert (norms - 28).abs().max() < 2.5
    assert ((z_0 + z_1) / 2).flatten(1).norm(dim=1).max() < 22
    with pytest.raises(ValueError, match="weight"):
        slerp(z_0, z_1, 1.5)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_ddim_step_with_the_exact_predictor_keeps_the_marginal(eta):
    """x_t ~ q(x_t), one DDIM step t -> t_prev with eps* gives x_{t_prev} ~ q(x_{t_prev}) (math/ddim.tex
    eq:ddim-marginals), up to the step's discretisation error. Statistic: the mean of log q_prev(x) - log q_t(x),
    which is KL(q_prev || q_t) > 0 for x ~ q_prev and -KL(q_t || q_prev) < 0 for x ~ q_t. N = 40,000 per set; the
    step's samples must agree with fresh q_prev samples within 5 standard errors, and a step that did nothing must
    not (so the test can fail)."""
    N, t, t_prev = 40_000, 60, 50
    schedule = NoiseSchedule.named("linear", 1000)
    _, mixture = gaussian_mixture(1)
    g = torch.Generator().manual_seed(6)
    source, target = (mixture.noised(schedule.alpha_bar[k].item()) for k in (t, t_prev))
    x_t = source.sample(N, g).double()
    eps = mixture_eps_fn(mixture, schedule)(x_t, torch.full((N,), t))
    x_prev = ddim_step(schedule, x_t, t, t_prev, eps, eta, torch.randn(x_t.shape, generator=g, dtype=torch.float64))

    def statistic(x):
        return target.log_prob(x) - source.log_prob(x)

    stepped, fresh, unmoved = statistic(x_prev), statistic(target.sample(N, g).double()), statistic(x_t)
    se = math.sqrt(stepped.var() / N + fresh.var() / N)
    assert abs(stepped.mean() - fresh.mean()) < 5 * se
    assert unmoved.mean() < fresh.mean() - 10 * se  # the statistic tells q_t from q_prev


def test_samplers_are_reproducible_with_a_seeded_generator():
    schedule = NoiseSchedule.named("linear", 1000)
    model = MixtureEpsModel(gaussian_mixture(1)[1], schedule)
    runs = [ddim_sample(model, schedule, (50, 2), steps=10, eta=0.5, generator=torch.Generator().manual_seed(7),
                        progress=False) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = ddim_sample(model, schedule, (50, 2), steps=10, eta=0.5, generator=torch.Generator().manual_seed(8),
                        progress=False)
    assert not torch.equal(runs[0], other)


def test_samplers_take_a_plain_function_and_reject_a_wrong_output_shape(schedule):
    """eps_theta may be any callable (here the exact predictor as a function: the same samples as the module); an
    output of the wrong shape is a ValueError naming both shapes, at the first step."""
    _, mixture = gaussian_mixture(1)
    module, function = MixtureEpsModel(mixture, schedule), mixture_eps_fn(mixture, schedule)
    for sample in (lambda m: ddpm_sample(m, schedule, (64, 2), generator=torch.Generator().manual_seed(0), progress=False),
                   lambda m: ddim_sample(m, schedule, (64, 2), steps=20, eta=0.5,
                                         generator=torch.Generator().manual_seed(0), progress=False)):
        assert torch.equal(sample(module), sample(function))
    calls = []

    def flat(x_t, t):
        calls.append(t[0].item())
        return x_t.flatten()

    with pytest.raises(ValueError, match=r"shaped like x_t \(8, 2\), got \(16,\) at t=900"):
        ddim_sample(flat, schedule, (8, 2), steps=10, progress=False)
    assert calls == [900]  # DDIM-10 starts at tau = 900, and stopped there


def test_sample_in_batches_seeds_each_batch_by_its_first_row_or_shares_one_generator():
    """seed=s: batch k is drawn from a generator seeded s + its first row, whatever came before it; generator=g: the
    batches draw from g in turn, as one loop over the batches would."""
    def draw(rows, generator):
        return torch.randn(len(range(10)[rows]), 3, generator=generator)

    seeded = sample_in_batches(draw, 10, 4, seed=7)
    expected = torch.cat([torch.randn(n, 3, generator=torch.Generator().manual_seed(7 + start))
                          for start, n in ((0, 4), (4, 4), (8, 2))])
    assert torch.equal(seeded, expected)
    shared = sample_in_batches(draw, 10, 4, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    assert torch.equal(shared, torch.cat([torch.randn(n, 3, generator=g) for n in (4, 4, 2)]))
    rows_seen = []
    sample_in_batches(lambda rows, g: rows_seen.append(rows) or torch.zeros(0), 5, 2, seed=0)
    assert rows_seen == [slice(0, 2), slice(2, 4), slice(4, 5)]
    with pytest.raises(ValueError, match="exactly one of seed and generator"):
        sample_in_batches(draw, 10, 4)
    with pytest.raises(ValueError, match="exactly one of seed and generator"):
        sample_in_batches(draw, 10, 4, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        sample_in_batches(draw, 10, 0, seed=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "invert"])
def test_non_finite_values_stop_sampling_at_the_step_they_appear(schedule, sampler):
    """A network that returns NaN from t = 500 down: sampling stops there, naming the step and t, instead of
    returning NaN samples; with check_finite=False the NaNs come back as they are."""
    def nan_below_500(x_t, t):
        return torch.where(t[:, None] < 500, torch.nan, torch.zeros_like(x_t))

    x = torch.zeros(4, 2)
    run = {"ddpm": lambda **kw: ddpm_sample(nan_below_500, schedule, (4, 2), progress=False, **kw),
           "ddim": lambda **kw: ddim_sample(nan_below_500, schedule, (4, 2), steps=10, progress=False, **kw),
           "invert": lambda **kw: ddim_invert(nan_below_500, schedule, x, steps=10, progress=False, **kw)}[sampler]
    expected = {"ddpm": r"step 501 of 1000 \(t=499\)", "ddim": r"step 6 of 10 \(t=400\)",
                "invert": r"step 1 of 10 \(t=-1\)"}[sampler]
    with pytest.raises(FloatingPointError, match=f"NaN or infinite values at {expected}"):
        run()
    assert torch.isnan(run(check_finite=False)).all()
