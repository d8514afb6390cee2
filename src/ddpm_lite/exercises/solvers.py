"""Checkers for the exercises of notebook 10: one Heun step and one DPM-Solver++ 2M step in EDM's sigma view.

    check_heun_step(fn)       fn(x_bar, sigma, sigma_next, eps, eps_next) -> x_bar_next     10, EDM Algorithm 1, line 8
    check_dpmpp_2m_step(fn)   fn(x_bar, sigma, sigma_next, denoised, denoised_prev, sigma_prev) -> x_bar_next
                                                                                            10, DPM-Solver++ Algorithm 2

Notation (math/fast_sampling.tex): sigma = sqrt((1 - alpha_bar) / alpha_bar) is the noise level, x_bar = x_t /
sqrt(alpha_bar) the scaled sample, and the probability-flow ODE is d x_bar / d sigma = eps (eq:pf-ode-sigma). A step
goes from sigma down to sigma_next < sigma (both > 0 here); `eps_next` is the prediction at the Euler point, and the
data predictions D = x_bar - sigma eps (`denoised`) come from this step and the one before, at sigma_prev > sigma.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor

from ddpm_lite.exercises._engine import _Call, _check_linear, _Mutation, _Term
from ddpm_lite.exercises._inputs import _randn, _replace, _solution
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.solvers import dpmpp_2m_step, heun_correct, sigma_schedule

__all__ = ["check_dpmpp_2m_step", "check_heun_step"]

_SHAPE = (3, 2, 5)  # one call's batch: 3 examples


def _grid_cases() -> list[tuple[float, float, float]]:
    """(sigma_prev, sigma, sigma_next) of consecutive levels > 0 on Karras' grid of 6 steps and the trailing grid of 4,
    for the linear and cosine schedules: the first steps from pure noise (sigma near 157 and 6e3) down to the last
    before sigma = 0; each triple is the step from sigma to sigma_next with the level before it."""
    cases = []
    for name, spacing, steps in (("linear", "karras", 6), ("cosine", "karras", 6), ("linear", "trailing", 4)):
        levels = sigma_schedule(NoiseSchedule.named(name, 1000), steps, spacing)[:-1].tolist()  # drop the final 0
        cases += [(levels[i - 1], levels[i], levels[i + 1]) for i in range(1, len(levels) - 1)]
    return cases


def _q(sigma_prev: float, sigma: float, sigma_next: float, n: int) -> SimpleNamespace:
    def full(value: float) -> Tensor:
        return torch.full((n,), value, dtype=torch.float64)

    return SimpleNamespace(sigma=full(sigma), sigma_next=full(sigma_next), sigma_prev=full(sigma_prev),
                           h=lambda high, low: torch.log(high / low))  # the step in lambda = -log sigma


def _label(sigma_prev: float, sigma: float, sigma_next: float, with_prev: bool) -> str:
    before = f"sigma_prev = {sigma_prev:.4g}, " if with_prev else ""
    return f"{before}sigma = {sigma:.4g}, sigma_next = {sigma_next:.4g}"


_HEUN = (  # EDM Algorithm 1, line 8, for an eps-model (d = eps); math/fast_sampling.tex eq:heun-step
    _Term("x_bar", "1", lambda q: torch.ones_like(q.sigma)),
    _Term("eps", "(sigma_next - sigma) / 2", lambda q: (q.sigma_next - q.sigma) / 2, mistakes=[
        ("sigma_next - sigma: Euler's step, without the average of the two slopes",
         lambda q: q.sigma_next - q.sigma),
        ("(sigma - sigma_next) / 2: sigma decreases, so the step sigma_next - sigma is negative",
         lambda q: (q.sigma - q.sigma_next) / 2)]),
    _Term("eps_next", "(sigma_next - sigma) / 2", lambda q: (q.sigma_next - q.sigma) / 2, mistakes=[
        ("(sigma - sigma_next) / 2: sigma decreases, so the step sigma_next - sigma is negative",
         lambda q: (q.sigma - q.sigma_next) / 2)]),
)


def check_heun_step(fn: Callable, *, seed: int = 0) -> bool:
    """fn(x_bar, sigma, sigma_next, eps, eps_next) -> x_bar_next = x_bar + (sigma_next - sigma) (eps + eps_next) / 2.

    Heun's corrector, EDM (Karras et al. 2022) Algorithm 1 line 8 for an eps-model, whose slope d = (x_bar - D) / sigma
    is eps (math/fast_sampling.tex eq:heun-step). sigma > sigma_next > 0 are Python floats; x_bar, eps, eps_next:
    (3, 2, 5) float64. Against `ddpm_lite.solvers.heun_correct`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for sigma_prev, sigma, sigma_next in _grid_cases():
        x_bar = _randn(generator, *_SHAPE) * math.sqrt(1 + sigma**2)  # as large as x_bar is at that level
        eps, eps_next = _randn(generator, *_SHAPE), _randn(generator, *_SHAPE)
        label = _label(sigma_prev, sigma, sigma_next, with_prev=False)
        calls.append(_Call(dict(x_bar=x_bar, sigma=sigma, sigma_next=sigma_next, eps=eps, eps_next=eps_next),
                           heun_correct(x_bar, sigma, sigma_next, eps, eps_next),
                           _q(sigma_prev, sigma, sigma_next, _SHAPE[0]), [label] * _SHAPE[0], label))
    return _check_linear("check_heun_step", fn, calls, _HEUN, library="ddpm_lite.solvers.heun_correct",
                         paper="EDM Algorithm 1", label="math/fast_sampling.tex eq:heun-step",
                         solution=_solution("10_fast_sampling"))


def _r(q: SimpleNamespace) -> Tensor:  # DPM-Solver++ Algorithm 2: r = h_{i-1} / h_i
    return q.h(q.sigma_prev, q.sigma) / q.h(q.sigma, q.sigma_next)


def _step_share(q: SimpleNamespace) -> Tensor:  # 1 - exp(-h) = 1 - sigma_next / sigma
    return 1 - q.sigma_next / q.sigma


_DPMPP_2M = (  # Lu et al. 2022b, Algorithm 2, in x_bar; math/fast_sampling.tex eq:dpmpp-2m
    _Term("x_bar", "sigma_next / sigma", lambda q: q.sigma_next / q.sigma, mistakes=[
        ("sigma / sigma_next: the ratio upside down", lambda q: q.sigma / q.sigma_next)]),
    _Term("denoised", "(1 - sigma_next / sigma) (1 + 1 / (2 r)), r = h_prev / h",
          lambda q: _step_share(q) * (1 + 1 / (2 * _r(q))), mistakes=[
              ("1 - sigma_next / sigma: the first-order step (DDIM), without extrapolating the data prediction",
               _step_share),
              ("(1 - sigma_next / sigma) (1 + r / 2): r upside down, it is h_prev / h",
               lambda q: _step_share(q) * (1 + _r(q) / 2))]),
    _Term("denoised_prev", "-(1 - sigma_next / sigma) / (2 r)", lambda q: -_step_share(q) / (2 * _r(q)), mistakes=[
        ("-(1 - sigma_next / sigma) r / 2: r upside down, it is h_prev / h", lambda q: -_step_share(q) * _r(q) / 2)]),
)
_DPMPP_MUTATIONS: tuple[_Mutation, ...] = (
    ("with the steps h measured in sigma (sigma - sigma_next) instead of in lambda = -log sigma "
     "(log(sigma / sigma_next))", lambda q: _replace(q, h=lambda high, low: high - low)),
)


def check_dpmpp_2m_step(fn: Callable, *, seed: int = 0) -> bool:
    """fn(x_bar, sigma, sigma_next, denoised, denoised_prev, sigma_prev) -> x_bar_next, one multistep DPM-Solver++(2M)
    step (Lu et al. 2022b, Algorithm 2) in x_bar:

    (sigma_next / sigma) x_bar + (1 - sigma_next / sigma) ((1 + 1 / (2 r)) denoised - denoised_prev / (2 r)), with
    h = log(sigma / sigma_next), h_prev = log(sigma_prev / sigma), r = h_prev / h (math/fast_sampling.tex eq:dpmpp-2m).
    sigma_prev > sigma > sigma_next > 0 are Python floats; x_bar, denoised, denoised_prev: (3, 2, 5) float64. Against
    `ddpm_lite.solvers.dpmpp_2m_step`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for sigma_prev, sigma, sigma_next in _grid_cases():
        x_bar = _randn(generator, *_SHAPE) * math.sqrt(1 + sigma**2)
        denoised, denoised_prev = _randn(generator, *_SHAPE), _randn(generator, *_SHAPE)
        label = _label(sigma_prev, sigma, sigma_next, with_prev=True)
        args = dict(x_bar=x_bar, sigma=sigma, sigma_next=sigma_next, denoised=denoised, denoised_prev=denoised_prev,
                    sigma_prev=sigma_prev)
        calls.append(_Call(args, dpmpp_2m_step(*args.values()), _q(sigma_prev, sigma, sigma_next, _SHAPE[0]),
                           [label] * _SHAPE[0], label))
    return _check_linear("check_dpmpp_2m_step", fn, calls, _DPMPP_2M, library="ddpm_lite.solvers.dpmpp_2m_step",
                         paper="DPM-Solver++ Algorithm 2", label="math/fast_sampling.tex eq:dpmpp-2m",
                         solution=_solution("10_fast_sampling"), mutations=_DPMPP_MUTATIONS)
