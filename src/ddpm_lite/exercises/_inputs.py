"""What the checkers hand the learner's functions and the diagnosis: schedules and timesteps to test on, the
per-example tables the formulas read, the usual slips in a formula over those tables (`_MUTATIONS`), and the
stand-in networks of the loss and guidance checks.

Time indexing as in `ddpm_lite.schedules`: code t in [0, T) is the paper's t+1, and the formulas index the code's
tables (`alpha_bar[t]`, `alpha_bar_prev[t]`, which is 1 at t = 0). `_schedule_cases` always includes t = 0 and T-1.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import Tensor, nn

from ddpm_lite.elbo import ReverseVariance
from ddpm_lite.exercises._engine import _Mutation
from ddpm_lite.schedules import NoiseSchedule

_T = 1000  # steps of both schedules the checkers use
_IMAGE = (2, 3, 4)  # one example's shape: its last size differs from the batch of 6, so a (B,) table cannot broadcast


def _solution(notebook: str) -> str:
    return f"solutions/{notebook}.py (in the course repository)"


def _randn(generator: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def _schedule_cases(generator: torch.Generator) -> list[tuple[str, NoiseSchedule, Tensor]]:
    """(name, schedule, t) for the linear and cosine schedules; t: (6,) holds 0, 1, two random steps, T-2 and T-1."""
    cases = []
    for name in ("linear", "cosine"):
        middle = [int(torch.randint(2, _T // 2, (), generator=generator)),
                  int(torch.randint(_T // 2, _T - 2, (), generator=generator))]
        cases.append((name, NoiseSchedule.named(name, _T), torch.tensor([0, 1, *middle, _T - 2, _T - 1])))
    return cases


def _labels(name: str, t: Tensor, extra: str = "") -> list[str]:
    return [f"t = {int(step)} ({name} schedule{extra})" for step in t]


def _describe(name: str, t: Tensor, x: Tensor) -> str:
    return f"the {name} schedule, t = {t.tolist()}, a batch of shape {tuple(x.shape)}"


def _replace(q: SimpleNamespace, **changes) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(q), **changes})


def _tables(schedule: NoiseSchedule, t: Tensor, variance: ReverseVariance | None = None) -> SimpleNamespace:
    """The schedule's tables at each example's t, (B,) float64, and the same at t - 1 (what table[t - 1] reads).

    With `variance` ("posterior" or "beta"), also DDPM's reverse variance sigma_t^2 (`reverse_variance`), the other
    choice (`other_reverse_variance`) and whether t > 0 (`t_positive`, 1.0 or 0.0: Algorithm 2 adds noise there).
    """

    def at(index: Tensor) -> SimpleNamespace:
        q = SimpleNamespace(alpha=schedule.alpha[index], alpha_bar=schedule.alpha_bar[index], beta=schedule.beta[index],
                            alpha_bar_prev=schedule.alpha_bar_prev[index], sqrt=torch.sqrt)
        if variance is not None:  # DDPM sec. 3.2; math/posterior.tex eq:reverse-variance-choices
            chosen, other = (schedule.posterior_variance, schedule.beta)[:: 1 if variance == "posterior" else -1]
            q.reverse_variance, q.other_reverse_variance = chosen[index], other[index]
            q.t_positive = (index > 0).to(torch.float64)
        return q

    q = at(t)
    q.at_t_minus_1 = at((t - 1) % schedule.T)  # Python's table[t - 1]: at t = 0 it reads the last entry
    return q


_MUTATIONS: tuple[_Mutation, ...] = (  # the usual slips in a formula over the schedule's tables
    ("without the square root", lambda q: _replace(q, sqrt=lambda value: value)),
    ("with alpha[t] in place of alpha_bar[t]", lambda q: _replace(q, alpha_bar=q.alpha)),
    ("with alpha_bar[t] in place of alpha[t]", lambda q: _replace(q, alpha=q.alpha_bar)),
    ("with alpha_bar[t] in place of alpha_bar_prev[t]", lambda q: _replace(q, alpha_bar_prev=q.alpha_bar)),
    ("with alpha_bar_prev[t] in place of alpha_bar[t]", lambda q: _replace(q, alpha_bar=q.alpha_bar_prev)),
    ("with alpha_bar[t - 1] in place of alpha_bar_prev[t] (they differ at t = 0, where alpha_bar_prev[0] = 1 and "
     "alpha_bar[-1] is the last entry)", lambda q: _replace(q, alpha_bar_prev=q.at_t_minus_1.alpha_bar)),
    ("with every table read at t - 1 (t off by one; at t = 0, table[t - 1] is the last entry)",
     lambda q: q.at_t_minus_1),
)
_NO_ROOT = _MUTATIONS[0]  # the one slip every formula can make, whatever tables it reads


class _RecordingModel(nn.Module):
    """A fixed eps_theta(x_t, t) = x_t / 2 + cos(t / 100) that records its inputs, so that the loss check can tell a
    wrong x_t or t from a wrong loss."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[tuple[Tensor, Tensor]] = []

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        self.inputs.append((x_t.detach().clone(), torch.as_tensor(t).detach().clone()))
        return x_t / 2 + torch.cos(torch.as_tensor(t, dtype=x_t.dtype) / 100).reshape(-1, *[1] * (x_t.ndim - 1))


class _TwoPredictions(nn.Module):
    """A stand-in class-conditional network for `GuidedModel`: eps_cond for every label, eps_uncond for "no label"."""

    def __init__(self, eps_cond: Tensor, eps_uncond: Tensor, num_classes: int = 10):
        super().__init__()
        self.config, self.eps_cond, self.eps_uncond = SimpleNamespace(num_classes=num_classes), eps_cond, eps_uncond

    def forward(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        copies = len(y) // len(self.eps_cond)  # GuidedModel doubles the batch: conditional half, unconditional half
        no_label = (y == self.config.num_classes).reshape(-1, *[1] * (x_t.ndim - 1))
        return torch.where(no_label, torch.cat([self.eps_uncond] * copies), torch.cat([self.eps_cond] * copies))
