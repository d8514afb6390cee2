"""Notebook 08, exercise 1: the score from a noise prediction, and Tweedie's formula, from scratch.

Run this file to check them: `python solutions/08_score_sde.py`.
"""

import torch


def _per_example(table, t, x):  # (T,) float64 -> (B, 1, ..., 1) in x's dtype
    return table[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def your_score_from_eps(schedule, eps, t):
    """grad log q(x_t) = -E[eps | x_t] / sqrt(1 - alpha_bar_t) (math/score_sde.tex eq:score-from-eps)."""
    return -eps / torch.sqrt(1 - _per_example(schedule.alpha_bar, t, eps))


def your_tweedie_x0(schedule, x_t, t, score):
    """E[x_0 | x_t] = (x_t + (1 - alpha_bar_t) score) / sqrt(alpha_bar_t) (math/score_sde.tex eq:tweedie)."""
    alpha_bar = _per_example(schedule.alpha_bar, t, x_t)
    return (x_t + (1 - alpha_bar) * score) / torch.sqrt(alpha_bar)


if __name__ == "__main__":
    from ddpm_lite.exercises import check_score_from_eps, check_tweedie_x0

    check_score_from_eps(your_score_from_eps)
    check_tweedie_x0(your_tweedie_x0)
