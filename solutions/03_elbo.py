"""Notebook 03, exercise 1: the KL divergence between two diagonal Gaussians, per coordinate, from scratch.

Run this file to check it: `python solutions/03_elbo.py`.
"""

import torch


def your_normal_kl(mean1, var1, mean2, var2):
    """KL(N(mean1, var1) || N(mean2, var2)) per coordinate, in nats (math/elbo.tex eq:gaussian-kl).

    E_{p1}[log p1 - log p2] = 1/2 (log(var2 / var1) + (var1 + (mean1 - mean2)^2) / var2 - 1). All (B, D).
    """
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1)


if __name__ == "__main__":
    from ddpm_lite.exercises import check_normal_kl

    check_normal_kl(your_normal_kl)
