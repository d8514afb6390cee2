"""Checkers for the exercises of notebooks 06-09: a DDPM step, a DDIM step, the score and Tweedie's formula, and
classifier-free guidance.

    check_ddpm_step(fn)           fn(schedule, x_t, t, eps, noise, variance) -> x_{t-1}   06, DDPM Algorithm 2
    check_ddim_step(fn)           fn(schedule, x_t, t, t_prev, eps, eta, noise) -> x     07, DDIM eqs. 12, 16
    check_score_from_eps(fn)      fn(schedule, eps, t) -> score                           08, eq:score-from-eps
    check_tweedie_x0(fn)          fn(schedule, x_t, t, score) -> E[x_0 | x_t]             08, eq:tweedie
    check_guided_eps(fn)          fn(eps_cond, eps_uncond, w) -> guided eps               09, Ho & Salimans eq. 6

Notation of the DDIM step (DDIM eqs. 12 and 16 in the code's tables): `q.alpha_bar` is alpha_bar[t] (DDIM's
alpha_t), `q.alpha_bar_at_t_prev` is alpha_bar[t_prev] (1 at t_prev = -1, the clean data; not the schedule's
alpha_bar_prev[t], one step back, unless t_prev = t - 1), and `sigma_eta` is DDIM's sigma_t(eta), the eta-scaled
deviation of eq. 16, not DDPM's reverse standard deviation (`reverse_std`, Algorithm 2's sigma_t).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from torch import Tensor

from ddpm_lite.exercises._engine import _Call, _check_linear, _Mutation, _Term
from ddpm_lite.exercises._inputs import (
    _IMAGE, _MUTATIONS, _NO_ROOT, _T, _TwoPredictions, _describe, _labels, _randn, _replace, _schedule_cases, _solution,
    _tables,
)
from ddpm_lite.guidance import GuidedModel
from ddpm_lite.samplers import ddim_step, ddpm_step
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.sde import score_from_eps, tweedie_x0

__all__ = ["check_ddim_step", "check_ddpm_step", "check_guided_eps", "check_score_from_eps", "check_tweedie_x0"]


def _reverse_std(q: SimpleNamespace) -> Tensor:  # DDPM Algorithm 2's sigma_t, the root of DDPM sec. 3.2's sigma_t^2
    return q.sqrt(q.reverse_variance)  # math/posterior.tex eq:reverse-variance-choices


_DDPM_STEP = (  # DDPM Algorithm 2 line 4, eq. (11); math/posterior.tex eq:ddpm-step, eq:reverse-variance-choices
    _Term("x_t", "1 / sqrt(alpha[t])", lambda q: 1 / q.sqrt(q.alpha)),
    _Term("eps", "-beta[t] / (sqrt(alpha[t]) * sqrt(1 - alpha_bar[t]))",
          lambda q: -q.beta / (q.sqrt(q.alpha) * q.sqrt(1 - q.alpha_bar)), mistakes=[
              ("-beta[t] / sqrt(1 - alpha_bar[t]): the whole bracket is divided by sqrt(alpha[t])",
               lambda q: -q.beta / q.sqrt(1 - q.alpha_bar)),
              ("-beta[t] / (sqrt(alpha[t]) * (1 - alpha_bar[t])): the square root of 1 - alpha_bar[t] is missing",
               lambda q: -q.beta / (q.sqrt(q.alpha) * (1 - q.alpha_bar)))]),
    _Term("noise", "sigma_t (0 at t = 0)", lambda q: _reverse_std(q) * q.t_positive, mistakes=[
        ("sigma_t at t = 0 too: Algorithm 2 line 3 adds no noise at the last step (code t = 0)", _reverse_std),
        ("the other sigma_t (posterior_variance[t] vs beta[t]): check the variance argument",
         lambda q: q.sqrt(q.other_reverse_variance) * q.t_positive)]),
)


def check_ddpm_step(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_t, t, eps, noise, variance) -> x_{t-1}, one step of DDPM Algorithm 2 (line 4, eq. 11):

    (x_t - beta[t] / sqrt(1 - alpha_bar[t]) * eps) / sqrt(alpha[t]) + reverse_std * noise, with reverse_std^2 =
    posterior_variance[t] for variance="posterior" and beta[t] for "beta", and no noise at t = 0 (line 3).
    x_t, eps, noise: (B, C, H, W) float64; t: (B,) int64. Against `ddpm_lite.samplers.ddpm_step`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for name, schedule, t in _schedule_cases(generator):
        for variance in ("posterior", "beta"):
            x_t, eps, noise = (_randn(generator, len(t), *_IMAGE) for _ in range(3))
            args = dict(schedule=schedule, x_t=x_t, t=t, eps=eps, noise=noise, variance=variance)
            calls.append(_Call(args, ddpm_step(schedule, x_t, t, eps, noise, variance=variance),
                               _tables(schedule, t, variance), _labels(name, t, f", variance={variance!r}"),
                               _describe(name, t, x_t) + f", variance={variance!r}"))
    return _check_linear("check_ddpm_step", fn, calls, _DDPM_STEP, library="ddpm_lite.samplers.ddpm_step",
                         paper="DDPM Algorithm 2", label="math/posterior.tex eq:ddpm-step",
                         solution=_solution("06_ddpm_sampling"), mutations=_MUTATIONS)


def _sigma_eta(q: SimpleNamespace) -> Tensor:  # DDIM eq. (16); math/ddim.tex eq:ddim-sigma
    return (q.eta * q.sqrt((1 - q.alpha_bar_at_t_prev) / (1 - q.alpha_bar))
            * q.sqrt(1 - q.alpha_bar / q.alpha_bar_at_t_prev))


def _ddim_eps_weight(q: SimpleNamespace, sigma_eta: Tensor) -> Tensor:  # DDIM eq. (12); math/ddim.tex eq:ddim-step
    direction = q.sqrt((1 - q.alpha_bar_at_t_prev - sigma_eta**2).clamp(min=0))  # "direction pointing to x_t"
    return direction - q.sqrt(q.alpha_bar_at_t_prev * (1 - q.alpha_bar) / q.alpha_bar)  # minus eps's share of x_0


_DDIM_STEP = (  # DDIM eq. (12) with sigma_eta from eq. (16), as weights of x_t, eps and noise
    _Term("x_t", "sqrt(alpha_bar[t_prev] / alpha_bar[t])", lambda q: q.sqrt(q.alpha_bar_at_t_prev / q.alpha_bar)),
    _Term("eps", "sqrt(1 - alpha_bar[t_prev] - sigma^2) - sqrt(alpha_bar[t_prev] * (1 - alpha_bar[t]) / alpha_bar[t])",
          lambda q: _ddim_eps_weight(q, _sigma_eta(q)), mistakes=[
              ("the same without - sigma^2 under the first square root", lambda q: _ddim_eps_weight(q, 0 * q.eta))]),
    _Term("noise", "sigma = eta * sqrt((1 - alpha_bar[t_prev]) / (1 - alpha_bar[t])) * sqrt(1 - alpha_bar[t] / "
          "alpha_bar[t_prev])", _sigma_eta,
          mistakes=[("sigma^2, where eq. 12 adds sigma * noise", lambda q: _sigma_eta(q) ** 2)]),
)
_DDIM_MUTATIONS: tuple[_Mutation, ...] = (
    _NO_ROOT,
    ("with alpha_bar_prev[t] (one step back) in place of alpha_bar[t_prev]",
     lambda q: _replace(q, alpha_bar_at_t_prev=q.alpha_bar_prev)),
    ("with alpha_bar[-1] (the last entry) at t_prev = -1, where the clean data's alpha_bar = 1 belongs",
     lambda q: _replace(q, alpha_bar_at_t_prev=q.alpha_bar_wrapped)),
    ("with alpha_bar[t] and alpha_bar[t_prev] swapped",
     lambda q: _replace(q, alpha_bar=q.alpha_bar_at_t_prev, alpha_bar_at_t_prev=q.alpha_bar)),
    ("with eta left out of sigma", lambda q: _replace(q, eta=torch.ones_like(q.eta))),
)
_DDIM_CASES = ((999, 979, 0.0), (999, 949, 1.0), (520, 500, 0.5), (300, 299, 1.0), (20, 0, 1.0), (19, -1, 0.0),
               (0, -1, 1.0))  # (t, t_prev, eta): strided and consecutive steps, and last steps to the clean data


def check_ddim_step(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_t, t, t_prev, eps, eta, noise) -> the sample at t_prev, one DDIM step (DDIM eq. 12, sigma_eta
    from eq. 16).

    t > t_prev are Python ints, t_prev = -1 stands for the clean data (alpha_bar = 1); eta: float; x_t, eps, noise:
    (3, 2, 5) float64 (noise is given even when eta = 0). Against `ddpm_lite.samplers.ddim_step`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for name in ("linear", "cosine"):
        schedule = NoiseSchedule.named(name, _T)
        for t, t_prev, eta in _DDIM_CASES:
            x_t, eps, noise = (_randn(generator, 3, 2, 5) for _ in range(3))

            def full(value: float | Tensor) -> Tensor:
                return torch.full((3,), float(value), dtype=torch.float64)

            q = SimpleNamespace(alpha_bar=full(schedule.alpha_bar[t]), eta=full(eta), sqrt=torch.sqrt,
                                alpha_bar_at_t_prev=full(schedule.alpha_bar_at(t_prev)),
                                alpha_bar_prev=full(schedule.alpha_bar_prev[t]),  # one step back
                                alpha_bar_wrapped=full(schedule.alpha_bar[t_prev]))  # Python's [-1]: the last entry
            label = f"t = {t}, t_prev = {t_prev}, eta = {eta} ({name} schedule)"
            calls.append(_Call(dict(schedule=schedule, x_t=x_t, t=t, t_prev=t_prev, eps=eps, eta=eta, noise=noise),
                               ddim_step(schedule, x_t, t, t_prev, eps, eta, noise), q, [label] * 3, label))
    return _check_linear("check_ddim_step", fn, calls, _DDIM_STEP, library="ddpm_lite.samplers.ddim_step",
                         paper="DDIM eq. 12", label="math/ddim.tex eq:ddim-step, eq:ddim-sigma",
                         solution=_solution("07_ddim"), mutations=_DDIM_MUTATIONS)


def _check_score_view(check: str, fn: Callable, library: Callable, terms: Sequence[_Term], *, score_given: bool,
                      seed: int, paper: str, label: str) -> bool:
    """Check fn against `ddpm_lite.sde.<library>` on both schedules: fn(schedule, eps, t) (score_given=False) or
    fn(schedule, x_t, t, score) (True)."""
    generator, calls = torch.Generator().manual_seed(seed), []
    for name, schedule, t in _schedule_cases(generator):
        x_t, other = _randn(generator, len(t), *_IMAGE), _randn(generator, len(t), *_IMAGE)
        args = dict(schedule=schedule, x_t=x_t, t=t, score=other) if score_given else dict(schedule=schedule,
                                                                                             eps=other, t=t)
        calls.append(_Call(args, library(*args.values()), _tables(schedule, t), _labels(name, t),
                           _describe(name, t, x_t)))
    return _check_linear(check, fn, calls, terms, library=f"ddpm_lite.sde.{library.__name__}", paper=paper,
                         label=label, solution=_solution("08_score_sde"), mutations=_MUTATIONS)


def check_score_from_eps(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, eps, t) -> the score -eps / sqrt(1 - alpha_bar[t]) (math/score_sde.tex eq:score-from-eps).

    eps: (B, C, H, W) float64; t: (B,) int64. Against `ddpm_lite.sde.score_from_eps`.
    """
    terms = [_Term("eps", "-1 / sqrt(1 - alpha_bar[t])", lambda q: -1 / q.sqrt(1 - q.alpha_bar), mistakes=[
        ("-sqrt(1 - alpha_bar[t]), which maps a score to eps (eps_from_score), the other way",
         lambda q: -q.sqrt(1 - q.alpha_bar))])]
    return _check_score_view("check_score_from_eps", fn, score_from_eps, terms, score_given=False, seed=seed,
                             paper="the score identity", label="math/score_sde.tex eq:score-from-eps")


def check_tweedie_x0(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_t, t, score) -> E[x_0 | x_t] = (x_t + (1 - alpha_bar[t]) score) / sqrt(alpha_bar[t]).

    Tweedie's formula, math/score_sde.tex eq:tweedie. x_t, score: (B, C, H, W) float64; t: (B,) int64. Against
    `ddpm_lite.sde.tweedie_x0`.
    """
    terms = [_Term("x_t", "1 / sqrt(alpha_bar[t])", lambda q: 1 / q.sqrt(q.alpha_bar)),
             _Term("score", "(1 - alpha_bar[t]) / sqrt(alpha_bar[t])",
                   lambda q: (1 - q.alpha_bar) / q.sqrt(q.alpha_bar), mistakes=[
                       ("sqrt(1 - alpha_bar[t]) / sqrt(alpha_bar[t]), the weight of eps in eq:predict-x0; the "
                        "score's is 1 - alpha_bar[t]", lambda q: q.sqrt((1 - q.alpha_bar) / q.alpha_bar))])]
    return _check_score_view("check_tweedie_x0", fn, tweedie_x0, terms, score_given=True, seed=seed,
                             paper="Tweedie's formula", label="math/score_sde.tex eq:tweedie")


def check_guided_eps(fn: Callable, *, seed: int = 0) -> bool:
    """fn(eps_cond, eps_uncond, w) -> (1 + w) eps_cond - w eps_uncond, classifier-free guidance (Ho & Salimans eq. 6).

    eps_cond, eps_uncond: (2, 1, 4, 4) float64; w: float >= 0 (0.0, 0.5, 1.0, 3.0, 7.5). Against
    `ddpm_lite.guidance.GuidedModel` on a stand-in network whose two predictions are eps_cond and eps_uncond.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for w in (0.0, 0.5, 1.0, 3.0, 7.5):
        eps_cond, eps_uncond = _randn(generator, 2, 1, 4, 4), _randn(generator, 2, 1, 4, 4)
        guided = GuidedModel(_TwoPredictions(eps_cond, eps_uncond), y=3, w=w)
        library = guided(torch.zeros_like(eps_cond), torch.zeros(2, dtype=torch.int64))
        calls.append(_Call(dict(eps_cond=eps_cond, eps_uncond=eps_uncond, w=w), library,
                           SimpleNamespace(w=torch.full((2,), w, dtype=torch.float64)), [f"w = {w}"] * 2, f"w = {w}"))
    terms = [  # Ho & Salimans 2022, eq. (6); math/guidance.tex eq:cfg
        _Term("eps_cond", "1 + w", lambda q: 1 + q.w, mistakes=[
            ("w: the convention eps_uncond + s (eps_cond - eps_uncond) with s = w; eq. 6's w is s - 1",
             lambda q: q.w)]),
        _Term("eps_uncond", "-w", lambda q: -q.w, mistakes=[("1 - w: the convention with s = w", lambda q: 1 - q.w)]),
    ]
    return _check_linear("check_guided_eps", fn, calls, terms, library="ddpm_lite.guidance.GuidedModel",
                         paper="Ho & Salimans 2022 eq. 6", label="math/guidance.tex eq:cfg",
                         solution=_solution("09_guidance"))
