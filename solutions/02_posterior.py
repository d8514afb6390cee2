"""Notebook 02, exercise 1: the posterior q(x_{t-1} | x_t, x_0) for a batch, from scratch (plain torch).

Run this file to check it: `python solutions/02_posterior.py`.
"""

import torch


def your_q_posterior(schedule, x_0, x_t, t):
    """DDPM eqs. 6-7: the mean tilde-mu_t and the variance tilde-beta_t. x_0, x_t: (B, ...); t: (B,) int64.

    Returns (mean shaped like x_t, variance (B, 1, ..., 1)). Code t = 0 is the paper's t = 1, where
    alpha_bar_prev = 1: the variance is 0 and the mean is x_0.
    """

    def per_example(table):  # (T,) float64 -> (B, 1, ..., 1) in the data's dtype
        return table[t].to(x_t.dtype).reshape(-1, *[1] * (x_t.ndim - 1))

    alpha, beta = per_example(schedule.alpha), per_example(schedule.beta)
    alpha_bar, alpha_bar_prev = per_example(schedule.alpha_bar), per_example(schedule.alpha_bar_prev)
    mean = (torch.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar) * x_0
            + torch.sqrt(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar) * x_t)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    return mean, variance


if __name__ == "__main__":
    from ddpm_lite.exercises import check_q_posterior

    check_q_posterior(your_q_posterior)
