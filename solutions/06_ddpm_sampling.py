"""Notebook 06, exercise 1: one step of DDPM's sampler (Algorithm 2, lines 3-4) for a batch, from scratch.

Run this file to check it: `python solutions/06_ddpm_sampling.py`.
"""

import torch


def your_ddpm_step(schedule, x_t, t, eps, noise, variance):
    """x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) + sigma_t noise (DDPM eq. 11).

    sigma_t^2 = posterior_variance[t] (tilde-beta_t) for variance="posterior", beta[t] for "beta"; no noise at code
    t = 0, the paper's t = 1 (line 3). x_t, eps, noise: (B, ...); t: (B,) int64.
    """

    def per_example(table):  # (T,) float64 -> (B, 1, ..., 1) in the data's dtype
        return table[t].to(x_t.dtype).reshape(-1, *[1] * (x_t.ndim - 1))

    alpha, beta, alpha_bar = per_example(schedule.alpha), per_example(schedule.beta), per_example(schedule.alpha_bar)
    sigma2 = per_example(schedule.posterior_variance if variance == "posterior" else schedule.beta)
    not_last = per_example((torch.arange(schedule.T) > 0).to(torch.float64))  # 0 at t = 0, else 1
    mean = (x_t - beta / torch.sqrt(1 - alpha_bar) * eps) / torch.sqrt(alpha)  # line 4
    return mean + not_last * torch.sqrt(sigma2) * noise


if __name__ == "__main__":
    from ddpm_lite.exercises import check_ddpm_step

    check_ddpm_step(your_ddpm_step)
