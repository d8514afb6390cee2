"""Notebook 11: v-prediction's target and the noise a v-prediction stands for, from scratch.

x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps; v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x_0 (Salimans &
Ho 2022, sec. 4; math/objectives.tex eq:v-definition), and back: eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v
(eq:eps-from-v).

Run this file to check them: `python solutions/11_objectives.py`.
"""


def _per_example(table, t, x):
    """table[t] reshaped to (B, 1, ..., 1), to broadcast against x (B, ...)."""
    return table[t].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))


def your_v_target(schedule, x_0, t, eps):
    """The velocity a v-network regresses on: a rotation of (eps, x_0) by the angle whose cosine is sqrt(alpha_bar)."""
    alpha_bar = _per_example(schedule.alpha_bar, t, x_0)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x_0


def your_eps_from_v(schedule, x_t, t, v):
    """The inverse rotation, read off for eps: eps = sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v."""
    alpha_bar = _per_example(schedule.alpha_bar, t, x_t)
    return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * v


if __name__ == "__main__":
    from ddpm_lite.exercises import check_eps_from_v, check_v_target

    check_v_target(your_v_target)
    check_eps_from_v(your_eps_from_v)
