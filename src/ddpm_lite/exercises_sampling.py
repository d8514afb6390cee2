"""Checkers for the exercises of notebooks 06-09: a DDPM step, a DDIM step, the score and Tweedie's formula, and
classifier-free guidance. `ddpm_lite.exercises` imports them and lists every checker; the method is in
`ddpm_lite.diagnose`.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ddpm_lite.diagnose import (
    IMAGE, MUTATIONS, Call, Coef, Mutation, T, check_linear, describe, labels, randn, replace, schedule_cases, solution,
    tables,
)
from ddpm_lite.guidance import GuidedModel
from ddpm_lite.samplers import ddim_step, ddpm_step
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.sde import score_from_eps, tweedie_x0

_DDPM_STEP = (  # DDPM Algorithm 2 line 4, eq. (11); math/posterior.tex eq:ddpm-step, eq:reverse-variance-choices
    Coef("x_t", "1 / sqrt(alpha[t])", lambda q: 1 / q.sqrt(q.alpha)),
    Coef("eps", "-beta[t] / (sqrt(alpha[t]) * sqrt(1 - alpha_bar[t]))",
         lambda q: -q.beta / (q.sqrt(q.alpha) * q.sqrt(1 - q.alpha_bar)), mistakes=[
             ("-beta[t] / sqrt(1 - alpha_bar[t]): the whole bracket is divided by sqrt(alpha[t])",
              lambda q: -q.beta / q.sqrt(1 - q.alpha_bar)),
             ("-beta[t] / (sqrt(alpha[t]) * (1 - alpha_bar[t])): the square root of 1 - alpha_bar[t] is missing",
              lambda q: -q.beta / (q.sqrt(q.alpha) * (1 - q.alpha_bar)))]),
    Coef("noise", "sigma_t (0 at t = 0)", lambda q: q.sqrt(q.sigma2) * q.nonzero, mistakes=[
        ("sigma_t at t = 0 too: Algorithm 2 line 3 adds no noise at the last step (code t = 0)",
         lambda q: q.sqrt(q.sigma2)),
        ("the other sigma_t (posterior_variance[t] vs beta[t]): check the variance argument",
         lambda q: q.sqrt(q.other_sigma2) * q.nonzero)]),
)


def check_ddpm_step(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_t, t, eps, noise, variance) -> x_{t-1}, one step of DDPM Algorithm 2 (line 4, eq. 11):

    (x_t - beta[t] / sqrt(1 - alpha_bar[t]) * eps) / sqrt(alpha[t]) + sigma_t * noise, with sigma_t^2 =
    posterior_variance[t] for variance="posterior" and beta[t] for "beta", and no noise at t = 0 (line 3).
    x_t, eps, noise: (B, C, H, W) float64; t: (B,) int64. Against `ddpm_lite.samplers.ddpm_step`.
    """
    g, calls = torch.Generator().manual_seed(seed), []
    for name, schedule, t in schedule_cases(g):
        for variance in ("posterior", "beta"):
            x_t, eps, noise = (randn(g, len(t), *IMAGE) for _ in range(3))
            args = dict(schedule=schedule, x_t=x_t, t=t, eps=eps, noise=noise, variance=variance)
            calls.append(Call(args, ddpm_step(schedule, x_t, t, eps, noise, variance=variance),
                              tables(schedule, t, variance), labels(name, t, f", variance={variance!r}"),
                              describe(name, t, x_t) + f", variance={variance!r}"))
    return check_linear("check_ddpm_step", fn, calls, _DDPM_STEP, library="ddpm_lite.samplers.ddpm_step",
                        paper="DDPM Algorithm 2", label="math/posterior.tex eq:ddpm-step",
                        solution=solution("06_ddpm_sampling"), mutations=MUTATIONS)


def _ddim_sigma(q: SimpleNamespace) -> Tensor:  # DDIM eq. (16); math/ddim.tex eq:ddim-sigma
    return q.eta * q.sqrt((1 - q.alpha_bar_prev) / (1 - q.alpha_bar)) * q.sqrt(1 - q.alpha_bar / q.alpha_bar_prev)


def _ddim_eps(q: SimpleNamespace, sigma: Tensor) -> Tensor:  # DDIM eq. (12), weight of eps; math/ddim.tex eq:ddim-step
    direction = q.sqrt((1 - q.alpha_bar_prev - sigma**2).clamp(min=0))
    return direction - q.sqrt(q.alpha_bar_prev * (1 - q.alpha_bar) / q.alpha_bar)


_DDIM_STEP = (  # DDIM eq. (12) with sigma from eq. (16), as weights of x_t, eps and noise
    Coef("x_t", "sqrt(alpha_bar[t_prev] / alpha_bar[t])", lambda q: q.sqrt(q.alpha_bar_prev / q.alpha_bar)),
    Coef("eps", "sqrt(1 - alpha_bar[t_prev] - sigma^2) - sqrt(alpha_bar[t_prev] * (1 - alpha_bar[t]) / alpha_bar[t])",
         lambda q: _ddim_eps(q, _ddim_sigma(q)),
         mistakes=[("the same without - sigma^2 under the first square root", lambda q: _ddim_eps(q, 0 * q.eta))]),
    Coef("noise", "sigma = eta * sqrt((1 - alpha_bar[t_prev]) / (1 - alpha_bar[t])) * sqrt(1 - alpha_bar[t] / "
         "alpha_bar[t_prev])", _ddim_sigma,
         mistakes=[("sigma^2, where eq. 12 adds sigma * noise", lambda q: _ddim_sigma(q) ** 2)]),
)
_DDIM_MUTATIONS: tuple[Mutation, ...] = (
    ("without the square root", lambda q: replace(q, sqrt=lambda v: v)),
    ("with alpha_bar_prev[t] (one step back) in place of alpha_bar[t_prev]",
     lambda q: replace(q, alpha_bar_prev=q.alpha_bar_one_step_back)),
    ("with alpha_bar[-1] (the last entry) at t_prev = -1, where the clean data's alpha_bar = 1 belongs",
     lambda q: replace(q, alpha_bar_prev=q.alpha_bar_wrapped)),
    ("with alpha_bar[t] and alpha_bar[t_prev] swapped",
     lambda q: replace(q, alpha_bar=q.alpha_bar_prev, alpha_bar_prev=q.alpha_bar)),
    ("with eta left out of sigma", lambda q: replace(q, eta=torch.ones_like(q.eta))),
)
DDIM_CASES = ((999, 979, 0.0), (999, 949, 1.0), (520, 500, 0.5), (300, 299, 1.0), (20, 0, 1.0), (19, -1, 0.0),
              (0, -1, 1.0))  # (t, t_prev, eta): strided and consecutive steps, and last steps to the clean data


def check_ddim_step(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_t, t, t_prev, eps, eta, noise) -> the sample at t_prev, one DDIM step (DDIM eq. 12, sigma eq. 16).

    t > t_prev are Python ints, t_prev = -1 stands for the clean data (alpha_bar = 1); eta: float; x_t, eps, noise:
    (3, 2, 5) float64 (noise is given even when eta = 0). Against `ddpm_lite.samplers.ddim_step`.
    """
    g, calls = torch.Generator().manual_seed(seed), []
    for name in ("linear", "cosine"):
        schedule = NoiseSchedule.named(name, T)
        for t, t_prev, eta in DDIM_CASES:
            x_t, eps, noise = (randn(g, 3, 2, 5) for _ in range(3))

            def full(value: float | Tensor) -> Tensor:
                return torch.full((3,), float(value), dtype=torch.float64)

            q = SimpleNamespace(alpha_bar=full(schedule.alpha_bar[t]), eta=full(eta), sqrt=torch.sqrt,
                                alpha_bar_prev=full(schedule.alpha_bar[t_prev] if t_prev >= 0 else 1.0),
                                alpha_bar_one_step_back=full(schedule.alpha_bar_prev[t]),
                                alpha_bar_wrapped=full(schedule.alpha_bar[t_prev]))  # Python's [-1]: the last entry
            label = f"t = {t}, t_prev = {t_prev}, eta = {eta} ({name} schedule)"
            calls.append(Call(dict(schedule=schedule, x_t=x_t, t=t, t_prev=t_prev, eps=eps, eta=eta, noise=noise),
                              ddim_step(schedule, x_t, t, t_prev, eps, eta, noise), q, [label] * 3, label))
    return check_linear("check_ddim_step", fn, calls, _DDIM_STEP, library="ddpm_lite.samplers.ddim_step",
                        paper="DDIM eq. 12", label="math/ddim.tex eq:ddim-step, eq:ddim-sigma",
                        solution=solution("07_ddim"), mutations=_DDIM_MUTATIONS)


def _score_calls(seed: int, library: Callable, score_given: bool) -> list[Call]:
    """Calls of fn(schedule, eps, t) (score_given=False) or fn(schedule, x_t, t, score) (True)."""
    g, calls = torch.Generator().manual_seed(seed), []
    for name, schedule, t in schedule_cases(g):
        x_t, other = randn(g, len(t), *IMAGE), randn(g, len(t), *IMAGE)
        args = dict(schedule=schedule, x_t=x_t, t=t, score=other) if score_given else dict(schedule=schedule,
                                                                                             eps=other, t=t)
        calls.append(Call(args, library(*args.values()), tables(schedule, t), labels(name, t), describe(name, t, x_t)))
    return calls


def check_score_from_eps(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, eps, t) -> the score -eps / sqrt(1 - alpha_bar[t]) (math/score_sde.tex eq:score-from-eps).

    eps: (B, C, H, W) float64; t: (B,) int64. Against `ddpm_lite.sde.score_from_eps`.
    """
    coefs = [Coef("eps", "-1 / sqrt(1 - alpha_bar[t])", lambda q: -1 / q.sqrt(1 - q.alpha_bar), mistakes=[
        ("-sqrt(1 - alpha_bar[t]), which maps a score to eps (eps_from_score), the other way",
         lambda q: -q.sqrt(1 - q.alpha_bar))])]
    return check_linear("check_score_from_eps", fn, _score_calls(seed, score_from_eps, False), coefs,
                        library="ddpm_lite.sde.score_from_eps", paper="the score identity",
                        label="math/score_sde.tex eq:score-from-eps", solution=solution("08_score_sde"),
                        mutations=MUTATIONS)


def check_tweedie_x0(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_t, t, score) -> E[x_0 | x_t] = (x_t + (1 - alpha_bar[t]) score) / sqrt(alpha_bar[t]).

    Tweedie's formula, math/score_sde.tex eq:tweedie. x_t, score: (B, C, H, W) float64; t: (B,) int64. Against
    `ddpm_lite.sde.tweedie_x0`.
    """
    coefs = [Coef("x_t", "1 / sqrt(alpha_bar[t])", lambda q: 1 / q.sqrt(q.alpha_bar)),
             Coef("score", "(1 - alpha_bar[t]) / sqrt(alpha_bar[t])", lambda q: (1 - q.alpha_bar) / q.sqrt(q.alpha_bar),
                  mistakes=[("sqrt(1 - alpha_bar[t]) / sqrt(alpha_bar[t]), the weight of eps in eq:predict-x0; the "
                             "score's is 1 - alpha_bar[t]", lambda q: q.sqrt((1 - q.alpha_bar) / q.alpha_bar))])]
    return check_linear("check_tweedie_x0", fn, _score_calls(seed, tweedie_x0, True), coefs,
                        library="ddpm_lite.sde.tweedie_x0", paper="Tweedie's formula",
                        label="math/score_sde.tex eq:tweedie", solution=solution("08_score_sde"), mutations=MUTATIONS)


class _TwoPredictions(nn.Module):
    """A stand-in class-conditional network for `GuidedModel`: eps_cond for every label, eps_uncond for "no label"."""

    def __init__(self, eps_cond: Tensor, eps_uncond: Tensor, num_classes: int = 10):
        super().__init__()
        self.config, self.eps_cond, self.eps_uncond = SimpleNamespace(num_classes=num_classes), eps_cond, eps_uncond

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        copies = len(y) // len(self.eps_cond)  # GuidedModel doubles the batch: conditional half, unconditional half
        no_label = (y == self.config.num_classes).reshape(-1, *[1] * (x_t.ndim - 1))
        return torch.where(no_label, torch.cat([self.eps_uncond] * copies), torch.cat([self.eps_cond] * copies))


def check_guided_eps(fn: Callable, *, seed: int = 0) -> bool:
    """fn(eps_cond, eps_uncond, w) -> (1 + w) eps_cond - w eps_uncond, classifier-free guidance (Ho & Salimans eq. 6).

    eps_cond, eps_uncond: (2, 1, 4, 4) float64; w: float >= 0 (0.0, 0.5, 1.0, 3.0, 7.5). Against
    `ddpm_lite.guidance.GuidedModel` on a stand-in network whose two predictions are eps_cond and eps_uncond.
    """
    g, calls = torch.Generator().manual_seed(seed), []
    for w in (0.0, 0.5, 1.0, 3.0, 7.5):
        eps_cond, eps_uncond = randn(g, 2, 1, 4, 4), randn(g, 2, 1, 4, 4)
        guided = GuidedModel(_TwoPredictions(eps_cond, eps_uncond), y=3, w=w)
        library = guided(torch.zeros_like(eps_cond), torch.zeros(2, dtype=torch.int64))
        calls.append(Call(dict(eps_cond=eps_cond, eps_uncond=eps_uncond, w=w), library,
                          SimpleNamespace(w=torch.full((2,), w, dtype=torch.float64)), [f"w = {w}"] * 2, f"w = {w}"))
    coefs = [  # Ho & Salimans 2022, eq. (6); math/guidance.tex eq:cfg
        Coef("eps_cond", "1 + w", lambda q: 1 + q.w, mistakes=[
            ("w: the convention eps_uncond + s (eps_cond - eps_uncond) with s = w; eq. 6's w is s - 1",
             lambda q: q.w)]),
        Coef("eps_uncond", "-w", lambda q: -q.w, mistakes=[("1 - w: the convention with s = w", lambda q: 1 - q.w)]),
    ]
    return check_linear("check_guided_eps", fn, calls, coefs, library="ddpm_lite.guidance.GuidedModel",
                        paper="Ho & Salimans 2022 eq. 6", label="math/guidance.tex eq:cfg",
                        solution=solution("09_guidance"))
