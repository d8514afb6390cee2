"""Checkers for the exercises of notebook 11: v-prediction's target, and the noise a v-prediction stands for.

    check_v_target(fn)     fn(schedule, x_0, t, eps) -> v     11, Salimans & Ho 2022, sec. 4
    check_eps_from_v(fn)   fn(schedule, x_t, t, v) -> eps     11, the conversion every sampler needs

Notation (math/objectives.tex): x_t = a x_0 + s eps with a = sqrt(alpha_bar[t]), s = sqrt(1 - alpha_bar[t]); the
velocity v = a eps - s x_0 (eq:v-definition); since a^2 + s^2 = 1, eps = s x_t + a v (eq:eps-from-v).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ddpm_lite.exercises._engine import _Call, _check_linear, _Term
from ddpm_lite.exercises._inputs import (
    _IMAGE, _MUTATIONS, _describe, _labels, _randn, _schedule_cases, _solution, _tables,
)
from ddpm_lite.forward import q_sample
from ddpm_lite.objectives import from_eps, to_eps
from ddpm_lite.schedules import extract

__all__ = ["check_eps_from_v", "check_v_target"]

_V_TARGET = (  # Salimans & Ho 2022, sec. 4; math/objectives.tex eq:v-definition
    _Term("eps", "sqrt(alpha_bar[t])", lambda q: q.sqrt(q.alpha_bar)),
    _Term("x_0", "-sqrt(1 - alpha_bar[t])", lambda q: -q.sqrt(1 - q.alpha_bar), mistakes=[
        ("sqrt(1 - alpha_bar[t]): v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0, x_0 enters with a minus",
         lambda q: q.sqrt(1 - q.alpha_bar))]),
)
_EPS_FROM_V = (  # math/objectives.tex eq:eps-from-v
    _Term("x_t", "sqrt(1 - alpha_bar[t])", lambda q: q.sqrt(1 - q.alpha_bar)),
    _Term("v", "sqrt(alpha_bar[t])", lambda q: q.sqrt(q.alpha_bar)),
)


def check_v_target(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_0, t, eps) -> v = sqrt(alpha_bar[t]) eps - sqrt(1 - alpha_bar[t]) x_0 (Salimans & Ho 2022,
    sec. 4), what a v-prediction network regresses on at x_t = q_sample(schedule, x_0, t, eps).

    x_0, eps: (B, C, H, W) float64; t: (B,) int64. Against `ddpm_lite.objectives.from_eps(eps, x_t, alpha_bar, "v")`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for name, schedule, t in _schedule_cases(generator):
        x_0, eps = _randn(generator, len(t), *_IMAGE), _randn(generator, len(t), *_IMAGE)
        v = from_eps(eps, q_sample(schedule, x_0, t, eps), extract(schedule.alpha_bar, t, x_0), "v")
        calls.append(_Call(dict(schedule=schedule, x_0=x_0, t=t, eps=eps), v, _tables(schedule, t),
                           _labels(name, t), _describe(name, t, x_0)))
    return _check_linear("check_v_target", fn, calls, _V_TARGET, library='ddpm_lite.objectives.from_eps(..., "v")',
                         paper="Salimans & Ho 2022, sec. 4", label="math/objectives.tex eq:v-definition",
                         solution=_solution("11_objectives"), mutations=_MUTATIONS)


def check_eps_from_v(fn: Callable, *, seed: int = 0) -> bool:
    """fn(schedule, x_t, t, v) -> eps = sqrt(1 - alpha_bar[t]) x_t + sqrt(alpha_bar[t]) v, the noise that a
    v-prediction stands for (math/objectives.tex eq:eps-from-v), which lets every eps-sampler run a v-network.

    x_t, v: (B, C, H, W) float64; t: (B,) int64. Against `ddpm_lite.objectives.to_eps(v, x_t, alpha_bar, "v")`.
    """
    generator, calls = torch.Generator().manual_seed(seed), []
    for name, schedule, t in _schedule_cases(generator):
        x_t, v = _randn(generator, len(t), *_IMAGE), _randn(generator, len(t), *_IMAGE)
        eps = to_eps(v, x_t, extract(schedule.alpha_bar, t, x_t), "v")
        calls.append(_Call(dict(schedule=schedule, x_t=x_t, t=t, v=v), eps, _tables(schedule, t),
                           _labels(name, t), _describe(name, t, x_t)))
    return _check_linear("check_eps_from_v", fn, calls, _EPS_FROM_V, library='ddpm_lite.objectives.to_eps(..., "v")',
                         paper="Salimans & Ho 2022, sec. 4", label="math/objectives.tex eq:eps-from-v", solution=_solution("11_objectives"),
                         mutations=_MUTATIONS)

