"""Notebook 10: one Heun step (EDM Algorithm 1, line 8) and one DPM-Solver++ 2M step (Lu et al. 2022b, Algorithm 2)
in the sigma view, x_bar = x_t / sqrt(alpha_bar) and d x_bar / d sigma = eps, from scratch.

Run this file to check them: `python solutions/10_fast_sampling.py`.
"""

import math


def your_heun_step(x_bar, sigma, sigma_next, eps, eps_next):
    """Heun's corrector from sigma to sigma_next (floats, sigma > sigma_next > 0): average the slope eps at the start
    and the slope eps_next at the Euler point x_bar + (sigma_next - sigma) eps, and take the step with it."""
    return x_bar + (sigma_next - sigma) * (eps + eps_next) / 2


def your_dpmpp_2m_step(x_bar, sigma, sigma_next, denoised, denoised_prev, sigma_prev):
    """The multistep second-order step: the linear part of the ODE exactly (the weights sigma_next / sigma and
    1 - sigma_next / sigma), and the data prediction extrapolated in lambda = -log sigma from the one at sigma_prev."""
    h = math.log(sigma / sigma_next)  # this step in lambda
    h_prev = math.log(sigma_prev / sigma)  # the step before it
    r = h_prev / h
    extrapolated = (1 + 1 / (2 * r)) * denoised - denoised_prev / (2 * r)
    return (sigma_next / sigma) * x_bar + (1 - sigma_next / sigma) * extrapolated


if __name__ == "__main__":
    from ddpm_lite.exercises import check_dpmpp_2m_step, check_heun_step

    check_heun_step(your_heun_step)
    check_dpmpp_2m_step(your_dpmpp_2m_step)
