"""Notebook 07: one DDIM step from t to t_prev (DDIM eq. 12 with sigma from eq. 16), from scratch.

Run this file to check it: `python solutions/07_ddim.py`.
"""

import math


def your_ddim_step(schedule, x_t, t, t_prev, eps, eta, noise):
    """The sample at t_prev < t (Python ints; t_prev = -1 is the clean data, alpha_bar = 1). x_t, eps, noise: (B, ...).

    x_0_pred = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t); sigma = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev);
    x_prev = sqrt(a_prev) x_0_pred + sqrt(1 - a_prev - sigma^2) eps + sigma noise, with a = alpha_bar.
    """
    a_t = schedule.alpha_bar[t].item()
    a_prev = schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0  # not alpha_bar[-1], the last entry
    x_0_pred = (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)  # "predicted x_0"
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t)) * math.sqrt(1 - a_t / a_prev)  # eq. 16
    direction = math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps  # "direction pointing to x_t"
    return math.sqrt(a_prev) * x_0_pred + direction + sigma * noise  # eq. 12


if __name__ == "__main__":
    from ddpm_lite.exercises import check_ddim_step

    check_ddim_step(your_ddim_step)
