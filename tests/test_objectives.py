"""ddpm_lite.objectives: the conversions between eps, x_0, v and score predictions are exact identities in float64
(math/objectives.tex eq:x0-from-eps, eq:eps-from-x0, eq:v-definition, eq:eps-from-v, eq:score-from-eps), and each
loss weight turns the noise-prediction error into the other parameterisation's error (eq:weighted-loss,
eq:weight-x0, eq:weight-v, eq:weight-min-snr, eq:weight-edm; eq:log-snr-vdm)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.mixture import MixtureEpsModel, default_mixture
from ddpm_lite.models import MLP, MLPConfig
from ddpm_lite.objectives import (
    Denoiser,
    Prediction,
    convert,
    edm_coefficients,
    from_eps,
    learned_log_variance,
    log_normal_timesteps,
    loss_weight,
    relative_weights,
    timestep_weights,
    to_eps,
    vdm_lambda,
)
from ddpm_lite.schedules import NoiseSchedule

PREDICTIONS = ("eps", "x0", "v", "score")
EXACT = dict(rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def draw():
    """x_0, eps, a network's eps_hat and alpha_bar for 64 points at random timesteps of the cosine schedule, float64,
    alpha_bar as (B, 1) so that it broadcasts."""
    g = torch.Generator().manual_seed(0)
    schedule = NoiseSchedule.named("cosine", 1000)
    t = torch.randint(0, 999, (64,), generator=g)  # t = 999 has alpha_bar ~ 2e-9: exact, but not to 1e-12
    alpha_bar = schedule.alpha_bar.to(torch.float64)[t].unsqueeze(1)
    x_0, eps = torch.randn(64, 2, generator=g, dtype=torch.float64), torch.randn(64, 2, generator=g, dtype=torch.float64)
    eps_hat = eps + 0.1 * torch.randn(64, 2, generator=g, dtype=torch.float64)
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps
    return x_0, eps, eps_hat, x_t, alpha_bar


def test_each_target_from_eps_is_its_definition(draw):
    x_0, eps, _, x_t, alpha_bar = draw
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    targets = {"eps": eps, "x0": x_0, "v": a * eps - s * x_0, "score": -eps / s}  # eq:v-definition, eq:score-from-eps
    for prediction, target in targets.items():
        torch.testing.assert_close(from_eps(eps, x_t, alpha_bar, prediction), target, **EXACT)
        torch.testing.assert_close(to_eps(target, x_t, alpha_bar, prediction), eps, **EXACT)
    torch.testing.assert_close(a * x_t - s * targets["v"], x_0, **EXACT)  # eq:eps-from-v, its x_0 half


@pytest.mark.parametrize(("source", "target"), list(itertools.product(PREDICTIONS, PREDICTIONS)))
def test_conversions_round_trip(draw, source: Prediction, target: Prediction):
    _, _, eps_hat, x_t, alpha_bar = draw
    output = from_eps(eps_hat, x_t, alpha_bar, source)  # a network's output of the source kind
    there = convert(output, x_t, alpha_bar, source, target)
    torch.testing.assert_close(convert(there, x_t, alpha_bar, target, source), output, **EXACT)
    torch.testing.assert_close(to_eps(there, x_t, alpha_bar, target), eps_hat, **EXACT)


class Oracle(torch.nn.Module):
    """A `prediction` network that outputs, from its input and t alone, what the exact mixture predictor implies:
    for "edm" it undoes c_in x_bar to find x_t, then gives EDM's F for the exact E[x_0 | x_t]."""

    def __init__(self, schedule: NoiseSchedule, prediction: str):
        super().__init__()
        self.schedule, self.prediction = schedule, prediction
        self.exact = MixtureEpsModel(default_mixture(), schedule)

    def forward(self, inputs, t):
        alpha_bar = schedule_at(self.schedule, t)
        a, sigma = alpha_bar.sqrt(), ((1 - alpha_bar) / alpha_bar).sqrt()
        x_t = inputs
        if self.prediction == "edm":
            _, _, c_in, _ = edm_coefficients(sigma)
            x_t = inputs / c_in * a  # inputs = c_in x_t / a
        eps = self.exact(x_t, t)
        if self.prediction == "edm":
            c_skip, c_out, _, _ = edm_coefficients(sigma)
            return (from_eps(eps, x_t, alpha_bar, "x0") - c_skip * x_t / a) / c_out  # eq:edm-preconditioning
        return from_eps(eps, x_t, alpha_bar, self.prediction)


def schedule_at(schedule: NoiseSchedule, t):
    return schedule.alpha_bar[t].unsqueeze(1)


@pytest.mark.parametrize("prediction", ("x0", "v", "edm"))
def test_a_denoiser_returns_the_noise_its_network_implies(prediction):
    """The 2-D mixture's exact E[eps | x_t], re-expressed as an x_0, v or EDM network (eq:x0-from-eps,
    eq:v-definition, eq:edm-preconditioning) and wrapped in a Denoiser, is the exact predictor again (float64)."""
    schedule = NoiseSchedule.named("cosine", 1000)
    g = torch.Generator().manual_seed(3)
    t = torch.randint(0, 999, (256,), generator=g)
    x_t = 2 * torch.randn(256, 2, generator=g, dtype=torch.float64)
    denoiser = Denoiser(Oracle(schedule, prediction), schedule, prediction).double()
    denoiser.alpha_bar = schedule.alpha_bar  # the float64 table, for an exact comparison
    exact = MixtureEpsModel(default_mixture(), schedule)(x_t, t)
    torch.testing.assert_close(denoiser(x_t, t), exact, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(denoiser(x_t, t, native=True), exact)  # the network's own output is not eps


@pytest.mark.parametrize("prediction", ("x0", "v"))
def test_weights_turn_the_noise_error_into_the_other_errors(draw, prediction: Prediction):
    """eq:weight-x0, eq:weight-v: ||F_hat - F||^2 = w(lambda) ||eps_hat - eps||^2, per sample."""
    _, eps, eps_hat, x_t, alpha_bar = draw
    error = (from_eps(eps_hat, x_t, alpha_bar, prediction) - from_eps(eps, x_t, alpha_bar, prediction)).pow(2).sum(1)
    weight = loss_weight(prediction, vdm_lambda(alpha_bar.squeeze(1)))
    torch.testing.assert_close(error, weight * (eps_hat - eps).pow(2).sum(1), rtol=1e-10, atol=0)


def test_min_snr_and_edm_weights(draw):
    """eq:weight-min-snr: min(SNR, gamma) times the x_0 error; eq:weight-edm: EDM's lambda(sigma) ||D - x_0||^2 with
    sigma^2 = (1 - alpha_bar) / alpha_bar and D the x_0 prediction."""
    _, eps, eps_hat, x_t, alpha_bar = draw
    alpha_bar = alpha_bar.squeeze(1)
    lam = vdm_lambda(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    torch.testing.assert_close(torch.exp(lam), snr, rtol=1e-12, atol=0)  # eq:log-snr-vdm
    x0_error = (from_eps(eps_hat, x_t, alpha_bar.unsqueeze(1), "x0") - from_eps(eps, x_t, alpha_bar.unsqueeze(1), "x0"))
    x0_error = x0_error.pow(2).sum(1)
    eps_error = (eps_hat - eps).pow(2).sum(1)
    for gamma in (1.0, 5.0):
        min_snr = loss_weight("min-snr", lam, gamma=gamma)
        torch.testing.assert_close(min_snr * eps_error, torch.clamp(snr, max=gamma) * x0_error, rtol=1e-10, atol=0)
        assert bool((min_snr <= 1).all()) and bool((min_snr[snr <= gamma] == 1).all())  # L_simple where SNR <= gamma
    sigma, sigma_data = ((1 - alpha_bar) / alpha_bar).sqrt(), 0.5
    edm = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2  # Karras et al. 2022, Table 1, lambda(sigma)
    torch.testing.assert_close(loss_weight("edm", lam) * eps_error, edm * x0_error, rtol=1e-10, atol=0)
    assert bool((loss_weight("eps", lam) == 1).all())  # L_simple


def test_bad_input_raises_a_value_error_naming_the_argument(draw):
    _, eps, _, x_t, alpha_bar = draw
    with pytest.raises(ValueError, match="prediction must be one of"):
        to_eps(eps, x_t, alpha_bar, "mu")
    with pytest.raises(ValueError, match="target must be one of"):
        convert(eps, x_t, alpha_bar, "eps", "x_0")
    with pytest.raises(ValueError, match="alpha_bar must lie in"):
        from_eps(eps, x_t, 1.0, "x0")
    lam = torch.zeros(3)
    with pytest.raises(ValueError, match="weighting must be one of"):
        loss_weight("elbo-ish", lam)
    with pytest.raises(ValueError, match="weighting must be one of"):  # the ELBO's weight needs a schedule
        loss_weight("elbo", lam)
    for gamma in (0.0, -1.0, math.nan):
        with pytest.raises(ValueError, match="gamma must be"):
            loss_weight("min-snr", lam, gamma=gamma)
    with pytest.raises(ValueError, match="sigma_data must be"):
        loss_weight("edm", lam, sigma_data=0.0)
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        relative_weights(NoiseSchedule.named("linear", 10), "v", "snr")
    with pytest.raises(ValueError, match="prediction must be one of"):
        relative_weights(NoiseSchedule.named("linear", 10), "score", None)  # not a training target
    with pytest.raises(ValueError, match="std must be"):
        log_normal_timesteps(NoiseSchedule.named("linear", 10), torch.zeros(3), std=0.0)
    with pytest.raises(ValueError, match="fixed variances needs no Denoiser"):
        Denoiser(torch.nn.Identity(), NoiseSchedule.named("linear", 10), "eps")


@pytest.mark.parametrize("name", ("linear", "cosine"))
def test_the_elbo_weight_is_the_bounds_lambda_t_over_its_mean(name):
    """eq:weight-elbo: timestep_weights(., "elbo") is DDPM eq. (12)'s lambda_t (math/elbo.tex eq:lambda-t) over its
    mean, and for t >= 1 lambda_t = (SNR(t - 1) / SNR(t) - 1) / 2 (the identity the note states; VDM sec. 4.1)."""
    schedule = NoiseSchedule.named(name, 1000)
    weights = timestep_weights(schedule, "elbo")
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-12, atol=0)
    snr = schedule.alpha_bar / (1 - schedule.alpha_bar)
    half = 0.5 * (snr[:-1] / snr[1:] - 1)
    torch.testing.assert_close(weights[1:] / weights[1:2] * half[0], half, rtol=1e-9, atol=0)


def test_relative_weights_make_each_loss_the_weighted_noise_error():
    """eq:weighted-loss: the weight on a network's own squared error is w_weighting / w_own, e.g. min-SNR-gamma for
    a v-network is min(SNR, gamma) / (SNR + 1) (Hang et al. 2023, sec. 3.4); None where they are the same."""
    schedule = NoiseSchedule.named("cosine", 1000)
    snr = schedule.alpha_bar / (1 - schedule.alpha_bar)
    torch.testing.assert_close(relative_weights(schedule, "v", "min-snr", gamma=5.0), snr.clamp(max=5.0) / (snr + 1),
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(relative_weights(schedule, "x0", "min-snr", gamma=5.0), snr.clamp(max=5.0),
                               rtol=1e-10, atol=0)
    torch.testing.assert_close(relative_weights(schedule, "eps", "v"), 1 + 1 / snr, rtol=1e-10, atol=0)
    for prediction in ("eps", "x0", "v", "edm"):
        assert relative_weights(schedule, prediction, None) is None
        assert relative_weights(schedule, prediction, "eps" if prediction == "eps" else prediction) is None


def test_edm_preconditioning_gives_unit_variance_input_and_target():
    """eq:edm-preconditioning, eq:edm-target, eq:edm-target-variance (Karras et al. 2022, Table 1 and appendix B.6):
    for data of variance sigma_data^2 the network's input c_in (x_0 + sigma eps) and its target (x_0 - c_skip x_bar)
    / c_out both have variance 1 at every sigma, and lambda(sigma) c_out^2 = 1 (EDM eq. 8), exactly in float64."""
    sigma = torch.logspace(-3, 3, 61, dtype=torch.float64)
    for sigma_data in (0.5, 1.0):
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sigma_data)
        input_variance = c_in**2 * (sigma_data**2 + sigma**2)
        target_variance = ((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2
        lam = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        ones = torch.ones_like(sigma)
        for value in (input_variance, target_variance, lam * c_out**2):
            torch.testing.assert_close(value, ones, rtol=1e-12, atol=0)
        torch.testing.assert_close(c_noise, sigma.log() / 4, rtol=1e-12, atol=0)


def test_log_normal_timesteps_pick_the_nearest_noise_level():
    """eq:log-normal-levels: each draw's timestep minimises |ln sigma_t - (mean + std z)| (brute force over all T),
    levels beyond the grid's ends go to t = 0 and t = T - 1, and for N = 20,000 draws the share at or below the
    median timestep is 1/2 within 5 standard errors (sqrt(1/4 / N) = 0.0035)."""
    schedule = NoiseSchedule.named("cosine", 1000)
    log_sigma = 0.5 * (torch.log1p(-schedule.alpha_bar) - torch.log(schedule.alpha_bar))
    z = torch.randn(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = log_normal_timesteps(schedule, z)
    wanted = -1.2 + 1.2 * z
    brute = (log_sigma[None, :] - wanted[:, None]).abs().argmin(1)
    assert torch.equal((log_sigma[t] - wanted).abs(), (log_sigma[brute] - wanted).abs())
    ends = log_normal_timesteps(schedule, torch.tensor([-100.0, 100.0]))
    assert ends.tolist() == [0, 999]
    median = int((log_sigma - (-1.2)).abs().argmin())  # the timestep nearest ln sigma = P_mean
    share = (t < median).double().mean().item() + 0.5 * (t == median).double().mean().item()
    assert abs(share - 0.5) < 5 * math.sqrt(0.25 / len(z)) + (t == median).double().mean().item(), share


class TinyNetwork(torch.nn.Module):
    """A random float64 network of (x, t): tanh(W [x, t / 1000] + b)."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3, 2, dtype=torch.float64)

    def forward(self, x, t):
        return torch.tanh(self.layer(torch.cat([x, t[:, None].double() / 1000], 1)))


@pytest.mark.parametrize(("prediction", "weighting"), [("x0", None), ("v", None), ("edm", None), ("v", "min-snr"),
                                                      ("x0", "eps"), ("eps", "elbo"), ("eps", "min-snr")])
def test_the_training_loss_is_the_weighted_noise_error(prediction, weighting):
    """eq:weighted-loss: `ddpm_loss` with an objective, computed on the network's own output, equals the mean of
    w(t) ||eps_hat - eps||^2 / D with eps_hat the Denoiser's noise prediction and w the weighting's (the prediction's
    own when None), for the same draws of t and eps; float64, a random MLP."""
    from ddpm_lite.objectives import Objective
    from ddpm_lite.train import ddpm_loss

    schedule = NoiseSchedule.named("cosine", 1000)
    torch.manual_seed(0)
    network = TinyNetwork()
    model = network if prediction == "eps" else Denoiser(network, schedule, prediction).double()
    if prediction != "eps":
        model.alpha_bar = schedule.alpha_bar
    g = torch.Generator().manual_seed(1)
    x_0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t, eps = torch.randint(0, 999, (64,), generator=g), torch.randn(64, 2, generator=g, dtype=torch.float64)
    objective = Objective.of(schedule, prediction, weighting)
    loss = ddpm_loss(model, schedule, x_0, t=t, eps=eps, objective=objective)
    alpha_bar = schedule.alpha_bar[t].unsqueeze(1)
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps
    own = {"eps": "eps", "x0": "x0", "v": "v", "edm": "edm"}[prediction]
    w = timestep_weights(schedule, weighting or own)[t]
    expected = (w * (model(x_t, t) - eps).pow(2).mean(1)).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-8, atol=0)


class ZeroNetwork(torch.nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


@pytest.mark.parametrize("prediction", ("v", "edm"))
def test_a_v_or_edm_run_checkpoints_and_samples_as_an_eps_model(tmp_path, prediction):
    """A run of TrainConfig(prediction=...) saves the network's weights under `network.`; load_for_sampling gives
    back the Denoiser, whose eps equals the run's EMA's, and DDIM samples from it. After 600 steps of the 2-D MLP
    the EMA's loss on 500 points has closed more than half the gap between the zero network's and the exact
    predictor's (the loss's floor) on the same draws."""
    import dataclasses

    from ddpm_lite.checkpoints import load_for_sampling
    from ddpm_lite.configs import CONFIGS
    from ddpm_lite.mixture import gaussian_mixture
    from ddpm_lite.objectives import Objective
    from ddpm_lite.samplers import ddim_sample
    from ddpm_lite.train import ddpm_loss, train

    config = dataclasses.replace(CONFIGS["2d"], steps=600, checkpoint_every=600, prediction=prediction,
                                 noise_levels="log-normal" if prediction == "edm" else "uniform")
    points = gaussian_mixture(2000, generator=torch.Generator().manual_seed(0))[0]
    result = train(config, points, tmp_path, device="cpu", progress=False)
    schedule = NoiseSchedule.named(config.schedule, config.T)
    objective = Objective.of(schedule, prediction)
    exact = Denoiser(Oracle(schedule, prediction), schedule, prediction)
    zero = Denoiser(ZeroNetwork(), schedule, prediction)
    trained, floor, none = [
        ddpm_loss(network, schedule, points[:500], generator=torch.Generator().manual_seed(5), objective=objective)
        .item() for network in (result.ema, exact, zero)]  # the same 500 draws of t and eps (points are unordered)
    assert trained - floor < 0.5 * (none - floor), (trained, floor, none)
    model, schedule, saved = load_for_sampling(result.checkpoint, "cpu")
    assert isinstance(model, Denoiser) and saved.prediction == prediction
    assert all(key.startswith("network.") for key in model.state_dict())
    x_t, t = torch.randn(16, 2, generator=torch.Generator().manual_seed(1)), torch.arange(0, 1000, 63)[:16]
    torch.testing.assert_close(model(x_t, t), result.ema(x_t, t))
    x_0 = ddim_sample(model, schedule, (64, 2), steps=10, generator=torch.Generator().manual_seed(2), progress=False)
    assert x_0.shape == (64, 2) and bool(torch.isfinite(x_0).all())


def test_train_config_validates_the_objective_options():
    """Bad names and gamma <= 0 raise a ValueError naming the field, when the config is built."""
    base = CONFIGS["2d"]
    for field, value, message in [("prediction", "mu", "prediction must be one of"),
                                  ("loss_weighting", "snr", "loss_weighting must be one of"),
                                  ("min_snr_gamma", 0.0, "min_snr_gamma must be"),
                                  ("min_snr_gamma", -5.0, "min_snr_gamma must be"),
                                  ("sigma_data", 0.0, "sigma_data must be"),
                                  ("noise_levels", "uniform-ish", "noise_levels must be")]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__}, field: value})


class WithVariance(torch.nn.Module):
    """An eps network that also outputs a constant v (Improved DDPM's raw variance output), as a network with
    learn_variance=True does: v = -1 is tilde-beta_t, v = +1 is beta_t (eq:learned-variance)."""

    def __init__(self, eps_network, v: float):
        super().__init__()
        self.eps_network, self.v = eps_network, v
        self.config = MLPConfig(learn_variance=True)

    def forward(self, x_t, t):
        eps = self.eps_network(x_t, t)
        return torch.cat([eps, torch.full_like(eps, self.v)], dim=1)


def test_learned_variances_interpolate_between_beta_and_tilde_beta():
    """eq:learned-variance: v = +1 gives log beta_t, v = -1 log tilde-beta_t (t = 0: t = 1's), v = 0 their mean."""
    schedule = NoiseSchedule.named("linear", 1000)
    t = torch.arange(1000)
    ones = torch.ones(1000, 1, dtype=torch.float64)
    torch.testing.assert_close(learned_log_variance(schedule, ones, t)[:, 0], schedule.beta.log(), rtol=1e-12, atol=0)
    torch.testing.assert_close(learned_log_variance(schedule, -ones, t)[:, 0], schedule.posterior_log_variance_clipped,
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(learned_log_variance(schedule, 0 * ones, t)[:, 0],
                               (schedule.beta.log() + schedule.posterior_log_variance_clipped) / 2, rtol=1e-12, atol=0)


@pytest.mark.parametrize(("v", "fixed"), [(-1.0, "posterior"), (1.0, "beta")])
def test_a_learned_variance_at_either_end_is_the_fixed_choice(v, fixed):
    """A Denoiser whose network learns its variances and outputs v = -1 (+1) everywhere has the bound and the DDPM
    samples of the fixed variance tilde-beta_t (beta_t): vlb_terms and ddpm_sample with variance="learned" equal
    those with variance=fixed, for the 2-D mixture's exact eps and the same random draws."""
    from ddpm_lite.elbo import vlb_terms
    from ddpm_lite.samplers import ddpm_sample

    schedule = NoiseSchedule.named("linear", 100)
    exact = MixtureEpsModel(default_mixture(), schedule)
    model = Denoiser(WithVariance(exact, v), schedule, "eps")
    x_0 = default_mixture().sample(64, torch.Generator().manual_seed(0))
    bound = {variance: vlb_terms(network, schedule, x_0, variance=variance, decoder="gaussian",
                                 generator=torch.Generator().manual_seed(1)).total
             for variance, network in (("learned", model), (fixed, exact))}
    torch.testing.assert_close(bound["learned"], bound[fixed], rtol=1e-5, atol=1e-5)
    samples = {variance: ddpm_sample(network, schedule, (64, 2), variance=variance, progress=False,
                                     generator=torch.Generator().manual_seed(2))
               for variance, network in (("learned", model), (fixed, exact))}
    torch.testing.assert_close(samples["learned"], samples[fixed], rtol=1e-4, atol=1e-4)
    other = "beta" if fixed == "posterior" else "posterior"  # and the other fixed choice differs
    assert not torch.allclose(bound[fixed], vlb_terms(exact, schedule, x_0, variance=other, decoder="gaussian",
                                                      generator=torch.Generator().manual_seed(1)).total, rtol=1e-3)


def test_the_hybrid_loss_is_l_simple_plus_the_bound_term_with_a_stop_gradient():
    """eq:l-hybrid: for an eps network that learns its variances, ddpm_loss = mean(||eps - eps_hat||^2 / D
    + 0.001 T L_t(bits/dim)) with L_t the bound's term at each example's t (decoder at t = 0, here included), and the
    L_vlb part sends no gradient to the mean output (Improved DDPM sec. 3.1)."""
    from ddpm_lite.elbo import vlb_term_bits
    from ddpm_lite.objectives import Objective
    from ddpm_lite.train import ddpm_loss

    schedule = NoiseSchedule.named("linear", 1000)
    g = torch.Generator().manual_seed(4)
    x_0 = torch.randn(64, 2, generator=g, dtype=torch.float64)
    t = torch.cat([torch.zeros(4, dtype=torch.int64), torch.randint(1, 1000, (60,), generator=g)])
    eps = torch.randn(64, 2, generator=g, dtype=torch.float64)
    output = torch.randn(64, 4, generator=g, dtype=torch.float64).requires_grad_()  # (eps_hat, v) per example
    network = Lookup(output)
    model = Denoiser(network, schedule, "eps").double()
    objective = Objective.of(schedule, "eps", learned_variance=True)
    loss = ddpm_loss(model, schedule, x_0, t=t, eps=eps, objective=objective)
    eps_hat, v = output.detach().chunk(2, dim=1)
    alpha_bar = schedule.alpha_bar[t].unsqueeze(1)
    x_t = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * eps
    bits = vlb_term_bits(schedule, x_0, x_t, t, eps_hat, learned_log_variance(schedule, v, t))
    assert bool(torch.isfinite(bits).all()) and bool((bits[4:] >= 0).all())  # KLs are >= 0; t = 0 is an NLL
    expected = ((eps_hat - eps).pow(2).mean(1) + 0.001 * 1000 * bits).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)
    loss.backward()
    mean_grad = 2 * (eps_hat - eps) / (2 * 64)  # the gradient of L_simple alone on the mean outputs
    torch.testing.assert_close(output.grad[:, :2], mean_grad, rtol=1e-10, atol=1e-12)
    assert bool((output.grad[:, 2:].abs() > 0).any())  # the variances do get the bound's gradient


class Lookup(torch.nn.Module):
    """A 'network' that returns fixed outputs (B, 2 D), one row per example, so gradients can be read off."""

    def __init__(self, output):
        super().__init__()
        self.output = output
        self.config = MLPConfig(learn_variance=True)

    def forward(self, x_t, t):
        return self.output


def test_a_learned_variance_run_trains_samples_and_bounds(tmp_path):
    """TrainConfig with an MLP that learns its variances: 300 steps of L_hybrid, the checkpoint loads as a Denoiser
    with learned variances, and DDPM sampling and the bound run with variance="learned" (finite values)."""
    import dataclasses

    from ddpm_lite.checkpoints import load_for_sampling
    from ddpm_lite.elbo import vlb_terms
    from ddpm_lite.mixture import gaussian_mixture
    from ddpm_lite.samplers import ddpm_sample
    from ddpm_lite.train import train

    config = dataclasses.replace(CONFIGS["2d"], T=100, steps=300, checkpoint_every=300,
                                 model=MLPConfig(learn_variance=True))
    points = gaussian_mixture(2000, generator=torch.Generator().manual_seed(0))[0]
    result = train(config, points, tmp_path, device="cpu", progress=False)
    assert all(math.isfinite(loss) for loss in result.losses)
    model, schedule, _ = load_for_sampling(result.checkpoint, "cpu")
    assert isinstance(model, Denoiser) and model.learned_variance
    x = ddpm_sample(model, schedule, (256, 2), variance="learned", generator=torch.Generator().manual_seed(1),
                    progress=False)
    bound = vlb_terms(model, schedule, points[:256], variance="learned", decoder="gaussian",
                      generator=torch.Generator().manual_seed(2))
    assert bool(torch.isfinite(x).all()) and bool(torch.isfinite(bound.total).all())


def test_learned_variance_needs_a_network_that_learns_them():
    from ddpm_lite.elbo import reverse_variance, vlb_terms
    from ddpm_lite.samplers import ddpm_sample

    schedule = NoiseSchedule.named("linear", 10)
    exact = MixtureEpsModel(default_mixture(), schedule)
    with pytest.raises(ValueError, match="needs a network that learns its variances"):
        ddpm_sample(exact, schedule, (4, 2), variance="learned", progress=False)
    with pytest.raises(ValueError, match="needs a network that learns its variances"):
        vlb_terms(exact, schedule, torch.zeros(4, 2), variance="learned", decoder="gaussian")
    with pytest.raises(ValueError, match="has no table"):
        reverse_variance(schedule, "learned")
    with pytest.raises(ValueError, match="vlb_weight must be"):
        TrainConfig(**{**{f: getattr(CONFIGS["2d"], f) for f in CONFIGS["2d"].__dataclass_fields__},
                       "vlb_weight": -1.0})


@pytest.mark.parametrize("prediction", ["x0", "v", "flow"])
def test_denoisers_run_in_the_solvers_between_grid_levels(prediction):
    """The solvers call a model at fractional timesteps between grid levels (t linear in log sigma,
    eq:t-of-sigma-continuous); a Denoiser then uses the level that mapping implies: at an integer t it is the grid's
    alpha_bar exactly, at t + 1/2 the geometric mean of the two sigmas. DPM-Solver++ 2M on Karras' grid runs it."""
    from ddpm_lite.solvers import fast_sample

    schedule = NoiseSchedule.named("cosine", 1000)
    torch.manual_seed(0)
    model = Denoiser(MLP(MLPConfig()), schedule, prediction)
    x = torch.zeros(2, 2, dtype=torch.float64)  # the level comes back in x's dtype
    on_grid = model._alpha_bar(torch.tensor([10.0, 700.0]), x).flatten()  # from the float32 buffer
    torch.testing.assert_close(on_grid, schedule.alpha_bar[[10, 700]], rtol=1e-6, atol=0)
    sigma = ((1 - schedule.alpha_bar) / schedule.alpha_bar).sqrt()
    between = model._alpha_bar(torch.tensor([10.5]), x[:1]).flatten()
    torch.testing.assert_close(((1 - between) / between).sqrt(), (sigma[10] * sigma[11]).sqrt().reshape(1),
                               rtol=1e-5, atol=0)
    out = fast_sample(model, schedule, (4, 2), solver="dpmpp-2m", steps=5, spacing="karras", sigma_max=80.0,
                      generator=torch.Generator().manual_seed(1), progress=False)
    assert out.shape == (4, 2) and bool(torch.isfinite(out).all())
