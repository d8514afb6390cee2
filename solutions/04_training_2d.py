"""Notebook 04, exercise 1: L_simple for one batch with the timesteps and the noise given, from scratch.

Run this file to check it: `python solutions/04_training_2d.py`.
"""

import torch


def your_ddpm_loss(model, schedule, x_0, t, eps):
    """DDPM Algorithm 1 (eq. 14) for given t: (B,) int64 and eps like x_0: the mean over the batch and every
    coordinate of (eps - eps_theta(sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps, t))^2."""
    alpha_bar = schedule.alpha_bar[t].to(x_0.dtype).reshape(-1, *[1] * (x_0.ndim - 1))
    x_t = torch.sqrt(alpha_bar) * x_0 + torch.sqrt(1 - alpha_bar) * eps  # line 5's input (DDPM eq. 4)
    return ((eps - model(x_t, t)) ** 2).mean()  # line 5: the squared error, averaged


if __name__ == "__main__":
    from ddpm_lite.exercises import check_ddpm_loss

    check_ddpm_loss(your_ddpm_loss)
