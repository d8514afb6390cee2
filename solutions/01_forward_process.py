"""Notebook 01, exercise 1: q_sample for a batch with one timestep per example, from scratch (plain torch).

Run this file to check it: `python solutions/01_forward_process.py`.
"""

import torch


def your_q_sample(schedule, x_0, t, eps):
    """DDPM eq. 4: x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps. x_0, eps: (B, ...); t: (B,) int64."""
    alpha_bar = schedule.alpha_bar[t].to(x_0.dtype)  # (B,): one value per example
    alpha_bar = alpha_bar.reshape(-1, *[1] * (x_0.ndim - 1))  # (B, 1, ..., 1), to broadcast against x_0
    return torch.sqrt(alpha_bar) * x_0 + torch.sqrt(1 - alpha_bar) * eps


if __name__ == "__main__":
    from ddpm_lite.exercises import check_q_sample

    check_q_sample(your_q_sample)
