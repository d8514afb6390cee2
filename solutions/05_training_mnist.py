"""Notebook 05, exercise 1: the sinusoidal timestep embedding of DDPM's UNet, from scratch.

Run this file to check it: `python solutions/05_training_mnist.py`.
"""

import math

import torch


def your_timestep_embedding(t, dim):
    """(B,) int64 -> (B, dim): [sin(t f_0), ..., sin(t f_{h-1}), cos(t f_0), ..., cos(t f_{h-1})], h = dim // 2,
    with frequencies f_i = 10000^(-i / (h - 1)) from 1 down to 1/10000 (Vaswani et al. 2017, sec. 3.5)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000) * torch.arange(half, dtype=torch.float64) / (half - 1))
    angles = t.to(torch.float64)[:, None] * frequencies[None, :]  # (B, h)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


if __name__ == "__main__":
    from ddpm_lite.exercises import check_timestep_embedding

    check_timestep_embedding(your_timestep_embedding)
