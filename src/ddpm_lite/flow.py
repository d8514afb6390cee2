"""Flow matching: the linear (rectified-flow) path, its velocity, the conditional flow-matching loss, the exact
marginal velocity of a Gaussian mixture, the bridge to the course's VP diffusion, ODE sampling and reflow (Lipman et
al. 2023; Liu et al. 2023; Albergo & Vanden-Eijnden 2023; Esser et al. 2024). math/flow_matching.tex

Time, stated once (math/flow_matching.tex eq:linear-path): the flow time `tau` runs over [0, 1] with tau = 0 the data
and tau = 1 pure noise, the direction of the course's diffusion time and of Esser et al. (Stable Diffusion 3):
x_tau = (1 - tau) x_0 + tau eps. Liu et al. and Lipman et al. run it the other way (their t = 1 - tau, their
velocity = minus this one). `t` stays the integer code timestep of a `NoiseSchedule`. The course's networks embed a
timestep number, so a flow network is called at T * tau (eq:flow-time; T = 1000 by default) and trained at
tau = (t + 1/2) / T for the code timestep t that `ddpm_lite.train` draws.

A velocity field here is a function `velocity(x, tau) -> v` of a batch x (B, ...) and one float tau; samplers
integrate dx/dtau = v from tau = 1 down to 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ddpm_lite.checks import check_positive_int
from ddpm_lite.mixture import GaussianMixture
from ddpm_lite.sde import VPSDE

__all__ = ["FlowSolver", "VelocityFn", "conditional_velocity", "eps_to_velocity", "flow_matching_loss", "flow_sample",
           "flow_taus", "linear_from_vp", "linear_path", "mixture_velocity", "mixture_velocity_fn", "network_velocity",
           "nfe", "noise_level_of_tau", "reflow_pairs", "straightness", "tau_of_noise_level", "velocity_to_eps",
           "velocity_to_score", "velocity_to_x0", "vp_path", "vp_path_velocity"]

FlowSolver = Literal["euler", "heun"]
VelocityFn = Callable[[Tensor, float], Tensor]


def _tau(tau: Tensor | float, like: Tensor, *, low_open: bool = False, high_open: bool = False) -> Tensor:
    """tau as a tensor broadcastable to `like` (a number, or (B,) put on `like`'s batch dimension), checked in [0, 1]
    (or the open ends asked for)."""
    if isinstance(tau, (bool, str)):
        raise ValueError(f"tau must be a number or a tensor in [0, 1], got {tau!r}")
    value = torch.as_tensor(tau, dtype=like.dtype, device=like.device)
    batch = (like.shape[0], *([1] * (like.ndim - 1)))  # (B, 1, ...): one tau per example
    if value.ndim == 1 and len(value) == like.shape[0]:
        value = value.reshape(batch)
    elif value.ndim != 0 and tuple(value.shape) != batch:
        raise ValueError(f"tau must be a number or have shape ({like.shape[0]},) or {batch}, got shape "
                         f"{tuple(value.shape)}")
    low_ok = (value > 0) if low_open else (value >= 0)
    high_ok = (value < 1) if high_open else (value <= 1)
    if not bool((low_ok & high_ok).all()):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"tau must lie in {interval}, got values from {value.min().item():g} to {value.max().item():g}")
    return value


# ---------------------------------------------------------------------------------- the path and its velocity


def linear_path(x_0: Tensor, eps: Tensor, tau: Tensor | float) -> Tensor:
    """x_tau = (1 - tau) x_0 + tau eps. x_0, eps: (B, ...); tau: a number or (B,). math/flow_matching.tex
    eq:linear-path"""
    tau = _tau(tau, x_0)
    return (1 - tau) * x_0 + tau * eps  # Esser et al. 2024, eq. 3 with a = 1 - t, b = t; math/flow_matching.tex eq:linear-path


def conditional_velocity(x_0: Tensor, eps: Tensor) -> Tensor:
    """d x_tau / d tau given (x_0, eps): eps - x_0, the regression target of flow matching. math/flow_matching.tex
    eq:conditional-velocity"""
    return eps - x_0  # math/flow_matching.tex eq:conditional-velocity


def velocity_to_x0(x_tau: Tensor, v: Tensor, tau: Tensor | float) -> Tensor:
    """x_0 = x_tau - tau v: the clean sample a velocity implies at x_tau. math/flow_matching.tex
    eq:velocity-conversions"""
    return x_tau - _tau(tau, x_tau) * v  # math/flow_matching.tex eq:velocity-conversions


def velocity_to_eps(x_tau: Tensor, v: Tensor, tau: Tensor | float) -> Tensor:
    """eps = x_tau + (1 - tau) v: the noise a velocity implies at x_tau. math/flow_matching.tex
    eq:velocity-conversions"""
    return x_tau + (1 - _tau(tau, x_tau)) * v  # math/flow_matching.tex eq:velocity-conversions


def eps_to_velocity(x_tau: Tensor, eps: Tensor, tau: Tensor | float) -> Tensor:
    """The inverse of `velocity_to_eps`, v = (eps - x_tau) / (1 - tau), for tau < 1. math/flow_matching.tex
    eq:velocity-conversions"""
    return (eps - x_tau) / (1 - _tau(tau, x_tau, high_open=True))  # math/flow_matching.tex eq:velocity-conversions


def velocity_to_score(x_tau: Tensor, v: Tensor, tau: Tensor | float) -> Tensor:
    """grad log p_tau(x) = -E[eps | x_tau] / tau for the marginal velocity v (Tweedie on this path), 0 < tau <= 1.
    math/flow_matching.tex eq:velocity-conversions"""
    return -velocity_to_eps(x_tau, v, tau) / _tau(tau, x_tau, low_open=True)


def mixture_velocity(mixture: GaussianMixture, x_tau: Tensor, tau: Tensor | float) -> Tensor:
    """The exact marginal velocity u_tau(x) = E[eps - x_0 | x_tau = x] when x_0 follows `mixture`, in closed form:
    given component k, x_tau ~ N((1 - tau) mu_k, v_k I) with v_k = (1 - tau)^2 s_k^2 + tau^2, and
    E[eps - x_0 | x_tau, k] = ((tau - (1 - tau) s_k^2) / v_k) (x_tau - (1 - tau) mu_k) - mu_k, averaged with the
    posterior P(k | x_tau). x_tau: (B, D); tau: a number or (B,) in [0, 1]. Returns (B, D) float64.
    math/flow_matching.tex eq:mixture-velocity"""
    if x_tau.ndim != 2 or x_tau.shape[1] != mixture.dim:
        raise ValueError(f"x_tau must have shape (B, {mixture.dim}), got {tuple(x_tau.shape)}")
    x = x_tau.to(torch.float64)
    tau = _tau(tau, x).reshape(-1, 1)  # (B, 1) or (1, 1)
    variance = (1 - tau) ** 2 * mixture.stds**2 + tau**2  # (B, K): v_k
    # ||x - (1 - tau) mu_k||^2 expanded, so that no (B, K, D) tensor is formed (the samplers call this per step)
    squared_distance = (x.pow(2).sum(1, keepdim=True) - 2 * (1 - tau) * (x @ mixture.means.T)
                        + (1 - tau) ** 2 * mixture.means.pow(2).sum(1)).clamp(min=0)  # (B, K)
    log_joint = (torch.log(mixture.weights) - 0.5 * squared_distance / variance
                 - 0.5 * mixture.dim * torch.log(2 * math.pi * variance))  # log w_k N(x; (1 - tau) mu_k, v_k I)
    posterior = torch.softmax(log_joint, dim=-1)  # (B, K): P(k | x_tau)
    weighted_gain = posterior * (tau - (1 - tau) * mixture.stds**2) / variance  # (B, K): P(k | x_tau) gain_k
    # sum_k P(k | x) [gain_k (x - (1 - tau) mu_k) - mu_k]; math/flow_matching.tex eq:mixture-velocity
    return weighted_gain.sum(1, keepdim=True) * x - (1 - tau) * (weighted_gain @ mixture.means) - posterior @ mixture.means


def mixture_velocity_fn(mixture: GaussianMixture) -> VelocityFn:
    """`mixture_velocity` as a `velocity(x, tau)`, returned in x's dtype."""

    def velocity(x: Tensor, tau: float) -> Tensor:
        return mixture_velocity(mixture, x, tau).to(x.dtype)

    return velocity


# ---------------------------------------------------------------------------------- the bridge to VP diffusion


def tau_of_noise_level(sigma: Tensor | float) -> Tensor | float:
    """The flow time whose point of the linear path has noise level sigma = tau / (1 - tau): tau = sigma / (1 +
    sigma). math/flow_matching.tex eq:linear-vp-change"""
    return sigma / (1 + sigma)  # math/flow_matching.tex eq:linear-vp-change


def noise_level_of_tau(tau: Tensor | float) -> Tensor | float:
    """sigma = tau / (1 - tau), the noise level (x_bar = x_0 + sigma eps, math/ddim.tex) of the linear path at tau < 1.
    math/flow_matching.tex eq:linear-vp-change"""
    return tau / (1 - tau)  # math/flow_matching.tex eq:linear-vp-change


def linear_from_vp(x_t: Tensor, alpha_bar: Tensor) -> tuple[Tensor, Tensor]:
    """The point of the linear path with the same x_0 and eps as the VP point x_t = sqrt(alpha_bar) x_0 +
    sqrt(1 - alpha_bar) eps: (x_lin, tau) with sigma = sqrt((1 - alpha_bar) / alpha_bar), tau = sigma / (1 + sigma),
    x_lin = x_t / (sqrt(alpha_bar) (1 + sigma)). alpha_bar: broadcastable to x_t, in (0, 1]. math/flow_matching.tex
    eq:linear-vp-change"""
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt()  # math/ddim.tex eq:ddim-ode-variables
    return x_t / (alpha_bar.sqrt() * (1 + sigma)), tau_of_noise_level(sigma)  # math/flow_matching.tex eq:linear-vp-change


def vp_path(sde: VPSDE, x_0: Tensor, eps: Tensor, s: float) -> Tensor:
    """x_s = sqrt(alpha_bar(s)) x_0 + sqrt(1 - alpha_bar(s)) eps on the VP-SDE's continuous time s in [0, 1]
    (math/score_sde.tex eq:sde-time).
    math/flow_matching.tex eq:vp-path"""
    alpha_bar = sde.alpha_bar(s).item()  # math/score_sde.tex eq:sde-alpha-bar
    return math.sqrt(alpha_bar) * x_0 + math.sqrt(1 - alpha_bar) * eps  # math/flow_matching.tex eq:vp-path


def vp_path_velocity(sde: VPSDE, x_s: Tensor, s: float, eps: Tensor) -> Tensor:
    """d x_s / ds along the VP path, averaged given x_s, from E[eps | x_s] (`eps`, e.g. the exact or a network's
    prediction): d sqrt(alpha_bar)/ds E[x_0 | x_s] + d sqrt(1 - alpha_bar)/ds E[eps | x_s] with
    d alpha_bar / ds = -beta(s) alpha_bar. It equals the probability-flow drift -beta(s) / 2 (x + score) of
    `ddpm_lite.sde.probability_flow_drift` (Song et al. 2021, eq. 13). math/flow_matching.tex eq:vp-path-velocity"""
    beta, alpha_bar = sde.beta(s).item(), sde.alpha_bar(s).item()
    a, b = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    x_0 = (x_s - b * eps) / a  # math/objectives.tex eq:x0-from-eps
    return -0.5 * beta * a * x_0 + 0.5 * beta * alpha_bar / b * eps  # math/flow_matching.tex eq:vp-path-velocity


# ---------------------------------------------------------------------------------- training


def flow_matching_loss(velocity_model: Callable[..., Tensor], x_0: Tensor, generator: torch.Generator | None = None,
                       y: Tensor | None = None, *, tau: Tensor | None = None, eps: Tensor | None = None,
                       time_scale: float = 1000.0) -> Tensor:
    """The conditional flow-matching loss for a batch, E ||v_theta(x_tau, T tau) - (eps - x_0)||^2 (Lipman et al.
    2023, eq. 9; Liu et al. 2023, eq. 1).

    velocity_model(x_tau, time[, y]) -> v (B, ...), called at time = time_scale * tau (eq:flow-time). x_0: (B, ...)
    on the model's device. tau (B,) ~ U(0, 1) and eps (B, ...) are drawn on the CPU from `generator` (tau first),
    unless given (reflow passes its paired eps). Returns a scalar. math/flow_matching.tex eq:cfm-loss"""
    batch = x_0.shape[0]
    if tau is None:
        tau = torch.rand(batch, generator=generator)  # tau ~ U(0, 1)
    if eps is None:
        eps = torch.randn(x_0.shape, generator=generator)
    tau, eps = tau.to(x_0.device, x_0.dtype), eps.to(x_0.device, x_0.dtype)
    x_tau = linear_path(x_0, eps, tau)  # math/flow_matching.tex eq:linear-path
    time = time_scale * tau
    v = velocity_model(x_tau, time) if y is None else velocity_model(x_tau, time, y)
    return (v - conditional_velocity(x_0, eps)).pow(2).mean()  # math/flow_matching.tex eq:cfm-loss


# ---------------------------------------------------------------------------------- sampling


def network_velocity(model: nn.Module, time_scale: float = 1000.0, y: Tensor | None = None) -> VelocityFn:
    """A flow network as a `velocity(x, tau)`: the model called at time = time_scale * tau (eq:flow-time), with
    native=True when it is a course `Denoiser` (prediction "flow"), whose native output is the velocity. y: labels
    for a class-conditional network."""
    kwargs = {"native": True} if getattr(model, "prediction", None) == "flow" else {}
    device = next(model.parameters()).device

    def velocity(x: Tensor, tau: float) -> Tensor:
        time = torch.full((x.shape[0],), time_scale * tau, device=device)
        x = x.to(device)
        return model(x, time, **kwargs) if y is None else model(x, time, y.to(device), **kwargs)

    return velocity


def flow_taus(steps: int) -> Tensor:
    """The flow times a sampler visits: `steps` equal steps from tau = 1 to 0, (steps + 1,) float64, decreasing."""
    check_positive_int("steps", steps)
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def nfe(solver: FlowSolver, steps: int) -> int:
    """Velocity evaluations of `steps` steps of `solver`: one per Euler step, two per Heun step."""
    if solver not in get_args(FlowSolver):
        raise ValueError(f"solver must be one of {get_args(FlowSolver)}, got {solver!r}")
    return steps if solver == "euler" else 2 * steps


@torch.inference_mode()
def flow_sample(velocity: VelocityFn, shape: tuple[int, ...], *, steps: int = 10, solver: FlowSolver = "euler",
                taus: Tensor | None = None, x_1: Tensor | None = None, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, callback: Callable[..., None] | None = None,
                progress: bool = True) -> Tensor:
    """Integrate dx/dtau = velocity(x, tau) from tau = 1 (x_1 ~ N(0, I), drawn on the CPU from `generator`, or the
    given x_1) down to tau = 0 on `taus` (default `flow_taus(steps)`), with Euler's method or Heun's (the
    trapezoidal rule with an Euler predictor, on every step: the field is finite at tau = 0). Returns x_0, `shape`.
    callback(i, tau_i, x_i) after each step i (x at tau_{i+1}). math/flow_matching.tex eq:flow-euler, eq:flow-heun"""
    if solver not in get_args(FlowSolver):
        raise ValueError(f"solver must be one of {get_args(FlowSolver)}, got {solver!r}")
    if taus is None:
        taus = flow_taus(steps)
    elif taus.ndim != 1 or len(taus) < 2 or not bool((taus[1:] < taus[:-1]).all()) or taus[0] > 1 or taus[-1] < 0:
        raise ValueError(f"taus must be a decreasing 1-D grid in [0, 1] with at least 2 entries, got {taus}")
    if x_1 is None:
        x_1 = torch.randn(shape, generator=generator)
    elif tuple(x_1.shape) != tuple(shape):
        raise ValueError(f"x_1 must have shape {tuple(shape)}, got {tuple(x_1.shape)}")
    x = x_1.to(device) if device is not None else x_1.clone()
    for i in tqdm(range(len(taus) - 1), desc=f"flow {solver}", disable=not progress, leave=False):
        tau, tau_next = taus[i].item(), taus[i + 1].item()
        h = tau_next - tau  # negative: towards the data
        # 1. Euler: x' = x + h v(x, tau); math/flow_matching.tex eq:flow-euler
        d = velocity(x, tau).to(x.dtype)
        x_next = x + h * d
        if solver == "heun":
            # 2. Heun: average the slopes at both ends of the step; math/flow_matching.tex eq:flow-heun
            d_next = velocity(x_next, tau_next).to(x.dtype)
            x_next = x + h * 0.5 * (d + d_next)
        x = x_next
        if callback is not None:
            callback(i, tau, x)
    return x


def reflow_pairs(velocity: VelocityFn, shape: tuple[int, ...], *, steps: int = 100, solver: FlowSolver = "heun",
                 generator: torch.Generator | None = None, device: torch.device | str | None = None,
                 progress: bool = True) -> tuple[Tensor, Tensor]:
    """Reflow's training pairs (Liu et al. 2023): noise x_1 ~ N(0, I) (`shape`, from `generator`) and the sample
    z = Phi(x_1) the flow's ODE maps it to. A new flow trained on the linear path between z and its own x_1 (data
    and noise coupled, not independent) has straighter paths. Returns (x_1, z), each `shape`, on the CPU.
    math/flow_matching.tex eq:reflow"""
    x_1 = torch.randn(shape, generator=generator)
    z = flow_sample(velocity, shape, steps=steps, solver=solver, x_1=x_1, device=device, progress=progress)
    return x_1, z.cpu()


@torch.inference_mode()
def straightness(velocity: VelocityFn, x_1: Tensor, *, steps: int = 100, solver: FlowSolver = "heun") -> Tensor:
    """Liu et al. 2023's straightness of the flow's own trajectories from x_1 (B, ...): the integral over tau of
    ||(x_1 - x_0) - v(x_tau, tau)||^2, with x_0 the trajectory's end, by the trapezoidal rule on the `steps`-step
    grid of the ODE solve. 0 exactly when every trajectory is a straight line at constant speed. Returns (B,)
    float64, per sample (divide by the dimension for a per-coordinate value). math/flow_matching.tex eq:straightness"""
    taus = flow_taus(steps)
    calls = []  # every velocity the solver evaluates, in order; each step's first is at the trajectory's point

    def traced(x: Tensor, tau: float) -> Tensor:
        calls.append(velocity(x, tau))
        return calls[-1]

    x_0 = flow_sample(traced, tuple(x_1.shape), taus=taus, solver=solver, x_1=x_1, progress=False)
    on_path = calls[::2 if solver == "heun" else 1] + [velocity(x_0, taus[-1].item())]  # tau_0, ..., tau_N
    chord = (x_1 - x_0).flatten(1).to(torch.float64)
    gaps = [(chord - v.flatten(1).to(torch.float64)).pow(2).sum(1) for v in on_path]
    widths = (taus[:-1] - taus[1:]).tolist()
    return sum(w * 0.5 * (gaps[i] + gaps[i + 1]) for i, w in enumerate(widths))  # math/flow_matching.tex eq:straightness
