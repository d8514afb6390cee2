"""What the network predicts, and how the loss weights the noise levels: the parameterisations of a denoiser (eps,
x_0, v, score, and EDM's preconditioned denoiser), the exact conversions between them, and the weightings of the
noise-prediction error as functions of the log-SNR (Kingma et al. 2021, VDM; Kingma & Gao 2023).

Variables (math/objectives.tex): x_t = a x_0 + s eps with a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar); the
signal-to-noise ratio SNR = a^2 / s^2 and its log lambda = log SNR (`vdm_lambda`; DPM-Solver's lambda, in
`ddpm_lite.solvers.log_snr`, is half of it); EDM's noise level `sigma` = s / a (as in `ddpm_lite.solvers`). Every
loss here is a weighted noise-prediction error, w(lambda) ||eps - eps_hat||^2 (eq:weighted-loss): an x_0-, v- or
EDM-loss is the same regression with another w.

A network trained to output x_0, v or EDM's F is wrapped in a `Denoiser`, a module whose forward returns eps like
every other model of the course, so that every sampler, `vlb_terms` and the guidance code run it unchanged; its
`native=True` call gives the raw output that the training loss compares with `network_target`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor, nn

from ddpm_lite.checks import check_finite_number
from ddpm_lite.elbo import vlb_weights
from ddpm_lite.flow import linear_from_vp, velocity_to_eps
from ddpm_lite.schedules import NoiseSchedule, extract

__all__ = ["Denoiser", "NetworkOutput", "Objective", "Prediction", "Weighting", "check_objective", "convert",
           "edm_coefficients", "from_eps", "learned_log_variance", "log_normal_timesteps", "loss_weight",
           "network_target", "output_to_eps", "relative_weights", "timestep_weights", "to_eps", "vdm_lambda"]

Prediction = Literal["eps", "x0", "v", "score"]  # what a predictor's output is; `to_eps` and `from_eps` convert
NetworkOutput = Literal["eps", "x0", "v", "edm", "flow"]  # what a trained network outputs (TrainConfig.prediction);
# "flow": the velocity of the linear path (ddpm_lite.flow), trained with the flow-matching loss
Weighting = Literal["eps", "x0", "v", "min-snr", "elbo", "edm"]  # TrainConfig.loss_weighting
NATIVE_WEIGHTING: dict[str, str] = {"eps": "eps", "x0": "x0", "v": "v", "edm": "edm"}  # each output's plain MSE


def _check_choice(name: str, value: object, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def _check_positive(name: str, value: object) -> None:
    check_finite_number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")


def check_objective(prediction: object, weighting: object, gamma: object, sigma_data: object) -> None:
    """Raise ValueError naming the argument unless `prediction` is a NetworkOutput, `weighting` a Weighting (or None;
    None for "flow", whose loss draws its own flow times), and `gamma` (min-SNR's) and `sigma_data` (EDM's) finite
    numbers > 0."""
    _check_choice("prediction", prediction, get_args(NetworkOutput))
    if weighting is not None:
        _check_choice("loss_weighting", weighting, get_args(Weighting))
        if prediction == "flow":
            raise ValueError(f"loss_weighting must be None for prediction='flow' (the flow-matching loss weights the "
                             f"noise levels itself, math/flow_matching.tex eq:cfm-weighting), got {weighting!r}")
    _check_positive("min_snr_gamma", gamma)
    _check_positive("sigma_data", sigma_data)


def _coefficients(alpha_bar: Tensor | float, like: Tensor) -> tuple[Tensor, Tensor]:
    """(a, s) = (sqrt(alpha_bar), sqrt(1 - alpha_bar)) as tensors of `like`'s dtype and device, broadcastable."""
    alpha_bar = torch.as_tensor(alpha_bar, dtype=like.dtype, device=like.device)
    if not bool(((alpha_bar > 0) & (alpha_bar < 1)).all()):
        raise ValueError("alpha_bar must lie in (0, 1): at 0 or 1 one of x_0 and eps is not determined by the other")
    return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()


def to_eps(output: Tensor, x_t: Tensor, alpha_bar: Tensor | float, prediction: Prediction) -> Tensor:
    """The predicted noise from a predictor's `output` in `prediction`'s parameterisation, at x_t with the given
    alpha_bar (a tensor broadcastable to x_t, e.g. (B, 1, 1, 1), or a number). math/objectives.tex eq:eps-from-x0,
    eq:eps-from-v, eq:score-from-eps"""
    _check_choice("prediction", prediction, get_args(Prediction))
    a, s = _coefficients(alpha_bar, x_t)
    if prediction == "eps":
        return output
    if prediction == "x0":
        return (x_t - a * output) / s  # math/objectives.tex eq:eps-from-x0
    if prediction == "v":
        return s * x_t + a * output  # math/objectives.tex eq:eps-from-v
    return -s * output  # score = -eps / s; math/objectives.tex eq:score-from-eps


def from_eps(eps: Tensor, x_t: Tensor, alpha_bar: Tensor | float, prediction: Prediction) -> Tensor:
    """The inverse of `to_eps`: what a `prediction` predictor outputs for the noise `eps` at x_t.
    math/objectives.tex eq:x0-from-eps, eq:v-definition, eq:score-from-eps"""
    _check_choice("prediction", prediction, get_args(Prediction))
    a, s = _coefficients(alpha_bar, x_t)
    if prediction == "eps":
        return eps
    if prediction == "score":
        return -eps / s  # math/objectives.tex eq:score-from-eps
    x_0 = (x_t - s * eps) / a  # math/objectives.tex eq:x0-from-eps
    if prediction == "x0":
        return x_0
    return a * eps - s * x_0  # Salimans & Ho 2022, sec. 4; math/objectives.tex eq:v-definition


def convert(output: Tensor, x_t: Tensor, alpha_bar: Tensor | float, source: Prediction,
            target: Prediction) -> Tensor:
    """A predictor's `output` in the `source` parameterisation, re-expressed in `target`'s (exact, through eps)."""
    _check_choice("source", source, get_args(Prediction))
    _check_choice("target", target, get_args(Prediction))
    return from_eps(to_eps(output, x_t, alpha_bar, source), x_t, alpha_bar, target)


def vdm_lambda(alpha_bar: Tensor) -> Tensor:
    """VDM's lambda = log SNR = log(alpha_bar / (1 - alpha_bar)), elementwise. math/objectives.tex eq:log-snr-vdm"""
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def loss_weight(weighting: Weighting, lam: Tensor, *, gamma: float = 5.0, sigma_data: float = 0.5) -> Tensor:
    """w(lambda) of eq:weighted-loss, the weight on ||eps - eps_hat||^2 at log-SNR `lam` that makes it equal to:
    "eps" the noise-prediction error, L_simple (1); "x0" the x_0 error (1 / SNR, eq:weight-x0); "v" the v error
    (1 + 1 / SNR, eq:weight-v); "min-snr" Hang et al. 2023's min-SNR-gamma (min(SNR, gamma) / SNR,
    eq:weight-min-snr); "edm" Karras et al. 2022's lambda(sigma) ||D - x_0||^2 with sigma^2 = 1 / SNR
    ((sigma^2 + sigma_data^2) / sigma_data^2, eq:weight-edm). The ELBO's weight depends on the schedule's steps,
    not on lambda alone: it is `timestep_weights(schedule, "elbo")`. The distribution of noise levels a loss draws
    is a separate factor (eq:weighted-loss)."""
    _check_choice("weighting", weighting, tuple(w for w in get_args(Weighting) if w != "elbo"))
    _check_positive("gamma", gamma)
    _check_positive("sigma_data", sigma_data)
    inverse_snr = torch.exp(-lam)
    if weighting == "eps":
        return torch.ones_like(lam)  # Ho et al. 2020, eq. (14)
    if weighting == "x0":
        return inverse_snr  # math/objectives.tex eq:weight-x0
    if weighting == "v":
        return 1 + inverse_snr  # math/objectives.tex eq:weight-v
    if weighting == "min-snr":
        return torch.clamp(gamma * inverse_snr, max=1.0)  # min(SNR, gamma) / SNR; math/objectives.tex eq:weight-min-snr
    return (inverse_snr + sigma_data**2) / sigma_data**2  # math/objectives.tex eq:weight-edm


def timestep_weights(schedule: NoiseSchedule, weighting: Weighting, *, gamma: float = 5.0,
                     sigma_data: float = 0.5) -> Tensor:
    """`loss_weight` at each of the schedule's timesteps, (T,) float64. "elbo" is the ELBO's own weight on the noise
    error, DDPM eq. (12)'s lambda_t with sigma_t^2 = tilde-beta_t (t = 0: beta_1, the Gaussian decoder), divided by
    its mean over t so that a uniform t gives the bound's KL terms times one constant. math/objectives.tex
    eq:weight-elbo"""
    if weighting == "elbo":
        lam_t = vlb_weights(schedule, "posterior")  # math/elbo.tex eq:lambda-t (its t = 0 entry uses beta_1)
        return lam_t / lam_t.mean()  # math/objectives.tex eq:weight-elbo
    return loss_weight(weighting, vdm_lambda(schedule.alpha_bar), gamma=gamma, sigma_data=sigma_data)


def relative_weights(schedule: NoiseSchedule, prediction: NetworkOutput, weighting: Weighting | None, *,
                     gamma: float = 5.0, sigma_data: float = 0.5) -> Tensor | None:
    """The weight on a `prediction` network's own squared error at each timestep, (T,) float64, that makes the loss
    `weighting`'s: w_weighting / w_prediction (eq:weighted-loss; e.g. min-SNR for a v-network is min(SNR, gamma) /
    (SNR + 1), Hang et al. 2023, sec. 3.4). None when the two are the same (the plain MSE of the output)."""
    check_objective(prediction, weighting, gamma, sigma_data)
    if weighting is None or weighting == NATIVE_WEIGHTING[prediction]:
        return None
    native = NATIVE_WEIGHTING[prediction]
    options = dict(gamma=gamma, sigma_data=sigma_data)
    return timestep_weights(schedule, weighting, **options) / timestep_weights(schedule, native, **options)


def edm_coefficients(sigma: Tensor, sigma_data: float = 0.5) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's preconditioning at noise level sigma (Karras et al. 2022, Table 1; eq. 7): (c_skip, c_out, c_in, c_noise)
    with D(x_bar; sigma) = c_skip x_bar + c_out F(c_in x_bar, c_noise), x_bar = x_t / a. math/objectives.tex
    eq:edm-preconditioning"""
    _check_positive("sigma_data", sigma_data)
    total = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / total
    c_out = sigma * sigma_data / total.sqrt()
    c_in = 1 / total.sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def network_target(prediction: NetworkOutput, x_0: Tensor, eps: Tensor, x_t: Tensor, alpha_bar: Tensor,
                   sigma_data: float = 0.5) -> Tensor:
    """What a `prediction` network should output at x_t = a x_0 + s eps (alpha_bar broadcastable to x_t): eps, x_0,
    v = a eps - s x_0, or EDM's F target (x_0 - c_skip x_bar) / c_out (EDM eq. 8).
    math/objectives.tex eq:v-definition, eq:edm-target"""
    _check_choice("prediction", prediction, get_args(NetworkOutput))
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x_0
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction == "v":
        return a * eps - s * x_0  # math/objectives.tex eq:v-definition
    c_skip, c_out, _, _ = edm_coefficients(s / a, sigma_data)
    return (x_0 - c_skip * (x_t / a)) / c_out  # math/objectives.tex eq:edm-target


def output_to_eps(prediction: NetworkOutput, output: Tensor, x_t: Tensor, alpha_bar: Tensor,
                  sigma_data: float = 0.5) -> Tensor:
    """The noise prediction of a `prediction` network's (mean) output at x_t; for "edm" the denoiser
    D = c_skip x_bar + c_out F first (EDM eq. 7). math/objectives.tex eq:edm-preconditioning, eq:eps-from-x0"""
    if prediction != "edm":
        return to_eps(output, x_t, alpha_bar, prediction)
    a = alpha_bar.sqrt()
    c_skip, c_out, _, _ = edm_coefficients(((1 - alpha_bar) / alpha_bar).sqrt(), sigma_data)
    x_0 = c_skip * (x_t / a) + c_out * output  # EDM eq. (7); math/objectives.tex eq:edm-preconditioning
    return to_eps(x_0, x_t, alpha_bar, "x0")


def learned_log_variance(schedule: NoiseSchedule, v: Tensor, t: Tensor) -> Tensor:
    """Improved DDPM's learned reverse variance (Nichol & Dhariwal 2021, eq. 15): log Sigma = f log beta_t + (1 - f)
    log tilde-beta_t with f = (v + 1) / 2 for the network's raw output v (B, ...) (their code's mapping of [-1, 1]
    onto [0, 1]); tilde-beta at t = 0 takes t = 1's value. Returns log Sigma like v. math/objectives.tex
    eq:learned-variance"""
    return _interpolate(schedule.beta.log(), schedule.posterior_log_variance_clipped, v, t)


def _interpolate(log_beta: Tensor, log_beta_tilde: Tensor, v: Tensor, t: Tensor) -> Tensor:
    """`learned_log_variance` from the (T,) tables of log beta and log tilde-beta (on v's device)."""
    fraction = (v + 1) / 2
    return (fraction * extract(log_beta, t, v)
            + (1 - fraction) * extract(log_beta_tilde, t, v))  # math/objectives.tex eq:learned-variance


@dataclass(frozen=True, eq=False)
class Objective:
    """What `ddpm_lite.train.ddpm_loss` regresses: a `prediction` network's output on `network_target`, each
    example's squared error times `weights[t]` ((T,) float64, from `relative_weights`, cast to the error's dtype at
    use; None: the plain MSE). With `learned_variance` the network's second half of outputs is Improved DDPM's v and
    the loss is L_hybrid = L_simple + vlb_weight L_vlb, L_vlb seeing the mean through a stop-gradient
    (math/objectives.tex eq:l-hybrid)."""

    prediction: NetworkOutput = "eps"
    weights: Tensor | None = None
    sigma_data: float = 0.5
    learned_variance: bool = False
    vlb_weight: float = 0.001

    @classmethod
    def of(cls, schedule: NoiseSchedule, prediction: NetworkOutput = "eps", weighting: Weighting | None = None, *,
           gamma: float = 5.0, sigma_data: float = 0.5, learned_variance: bool = False,
           vlb_weight: float = 0.001) -> Objective:
        """The objective of a TrainConfig's prediction, loss_weighting, min_snr_gamma, sigma_data, its network's
        learn_variance and its vlb_weight."""
        weights = relative_weights(schedule, prediction, weighting, gamma=gamma, sigma_data=sigma_data)
        check_finite_number("vlb_weight", vlb_weight, minimum=0.0)
        return cls(prediction, weights, sigma_data, learned_variance, vlb_weight)

    @property
    def is_l_simple(self) -> bool:
        """DDPM's own loss: an eps network's plain MSE, no learned variances."""
        return self.prediction == "eps" and self.weights is None and not self.learned_variance


class Denoiser(nn.Module):
    """A network that outputs x_0, v or EDM's F (`prediction`), or that learns its variances (its config's
    learn_variance), as a noise predictor: `forward(x_t, t[, y])` returns eps (B, ...) like every model of the
    course, so samplers run it unchanged; `predict` returns (eps, log Sigma) for DDPM sampling and the bound with
    learned variances (variance="learned"); `forward(..., native=True)` returns the network's raw output, what the
    training loss compares with `network_target`. For "edm" the network sees c_in x_bar and, in place of EDM's
    c_noise = ln(sigma) / 4, the timestep t: a one-to-one relabelling of the noise level, which the timestep
    embedding learns as well (math/objectives.tex, section "EDM's preconditioning"). The schedule's tables are
    buffers that are not saved: the weights are the network's, under `network.`.

    For "flow" the network is a velocity field of the linear path (`ddpm_lite.flow`): at code timestep t the VP point
    x_t is moved to the linear path's point with the same x_0 and eps, x_lin at tau = sigma_t / (1 + sigma_t), the
    network called there at T tau (math/flow_matching.tex eq:linear-vp-change, eq:flow-time), and its velocity
    turned into eps = x_lin + (1 - tau) v. Its native call takes the linear path's own coordinates, (x_lin, T tau):
    what the flow-matching loss trains and `ddpm_lite.flow.network_velocity` integrates."""

    def __init__(self, network: nn.Module, schedule: NoiseSchedule, prediction: NetworkOutput,
                 sigma_data: float = 0.5):
        super().__init__()
        check_objective(prediction, None, 1.0, sigma_data)
        self.config = getattr(network, "config", None)  # the network's config, as checkpoints check it
        self.learned_variance = bool(getattr(self.config, "learn_variance", False))
        if prediction == "eps" and not self.learned_variance:
            raise ValueError("prediction='eps' with fixed variances needs no Denoiser: the network predicts the noise")
        if prediction == "flow" and self.learned_variance:
            raise ValueError("prediction='flow' learns no variances: the velocity field gives the probability-flow ODE")
        self.T = schedule.T  # a flow network's time input is T tau (math/flow_matching.tex eq:flow-time)
        self.network, self.prediction, self.sigma_data = network, prediction, sigma_data
        self.register_buffer("alpha_bar", schedule.alpha_bar.to(torch.float32), persistent=False)
        self.register_buffer("log_beta", schedule.beta.log().to(torch.float32), persistent=False)
        self.register_buffer("log_beta_tilde", schedule.posterior_log_variance_clipped.to(torch.float32),
                             persistent=False)

    def _alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """alpha_bar at code timesteps t (B,), broadcastable to `like`. A fractional t, as the solvers pass between
        grid levels (`ddpm_lite.solvers.eps_at_sigma`: t linear in log sigma, diffusers' `_sigma_to_t`), gets the
        level that mapping implies: log sigma interpolated linearly in t between its two grid neighbours."""
        if not torch.is_floating_point(t):
            return extract(self.alpha_bar, t, like)
        t = t.to(self.alpha_bar.device, torch.float64).clamp(0, len(self.alpha_bar) - 1)
        low = t.floor().long().clamp(max=len(self.alpha_bar) - 2)
        weight = t - low
        log_sigma = 0.5 * (torch.log1p(-self.alpha_bar.double()) - torch.log(self.alpha_bar.double()))
        log_level = (1 - weight) * log_sigma[low] + weight * log_sigma[low + 1]
        alpha_bar = torch.sigmoid(-2 * log_level)  # 1 / (1 + sigma^2)
        return alpha_bar.to(like.device, like.dtype).reshape(-1, *([1] * (like.ndim - 1)))

    def _network(self, x_t: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        inputs = x_t
        if self.prediction == "edm":  # the network sees c_in x_bar, x_bar = x_t / a (math/ddim.tex eq:ddim-ode-back)
            alpha_bar = self._alpha_bar(t, x_t)
            _, _, c_in, _ = edm_coefficients(((1 - alpha_bar) / alpha_bar).sqrt(), self.sigma_data)
            inputs = c_in * x_t / alpha_bar.sqrt()
        return self.network(inputs, t) if y is None else self.network(inputs, t, y)

    def predict(self, x_t: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """(eps, log Sigma), each (B, ...); log Sigma is None for a network with fixed variances.
        x_t: (B, ...); t: (B,) int64 in [0, T); y: (B,) labels for a class-conditional network."""
        if self.prediction == "flow":
            x_lin, tau = linear_from_vp(x_t, self._alpha_bar(t, x_t))  # math/flow_matching.tex eq:linear-vp-change
            time = self.T * tau.reshape(-1)  # math/flow_matching.tex eq:flow-time
            v = self.network(x_lin, time) if y is None else self.network(x_lin, time, y)
            return velocity_to_eps(x_lin, v, tau), None  # math/flow_matching.tex eq:velocity-conversions
        output = self._network(x_t, t, y)
        log_variance = None
        if self.learned_variance:
            output, v = output.chunk(2, dim=1)
            log_variance = _interpolate(self.log_beta, self.log_beta_tilde, v, t)  # as `learned_log_variance`
        alpha_bar = self._alpha_bar(t, x_t)
        return output_to_eps(self.prediction, output, x_t, alpha_bar, self.sigma_data), log_variance

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor | None = None, *, native: bool = False) -> Tensor:
        """The predicted noise (B, ...), or with native=True the network's raw output (B, ...), (B, 2 C, ...) when it
        learns its variances. x_t: (B, ...); t: (B,) int64 in [0, T); y: (B,) labels. For "flow", native=True takes
        the linear path's x_tau and time T tau (B,) float, and returns the velocity."""
        if native and self.prediction == "flow":
            return self.network(x_t, t) if y is None else self.network(x_t, t, y)
        if native:
            return self._network(x_t, t, y)
        return self.predict(x_t, t, y)[0]


def log_normal_timesteps(schedule: NoiseSchedule, z: Tensor, mean: float = -1.2, std: float = 1.2) -> Tensor:
    """EDM's noise levels on a discrete schedule: for standard normal draws z (B,), the timesteps (B,) int64 whose
    log sigma_t is nearest to mean + std z, so ln sigma ~ N(mean, std^2) up to the grid (Karras et al. 2022,
    Table 1: P_mean = -1.2, P_std = 1.2). math/objectives.tex eq:log-normal-levels"""
    check_finite_number("mean", mean)
    _check_positive("std", std)
    log_sigma = 0.5 * (torch.log1p(-schedule.alpha_bar) - torch.log(schedule.alpha_bar))  # increasing in t
    wanted = mean + std * z.to(torch.float64)
    upper = torch.searchsorted(log_sigma, wanted).clamp(1, schedule.T - 1)  # log_sigma[upper - 1] < wanted <= ...
    lower = upper - 1
    nearer_lower = (wanted - log_sigma[lower]).abs() <= (log_sigma[upper] - wanted).abs()
    return torch.where(nearer_lower, lower, upper)

