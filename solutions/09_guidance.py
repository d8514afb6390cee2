"""Notebook 09: the classifier-free guided noise prediction (Ho & Salimans 2022, eq. 6), from scratch.

Run this file to check it: `python solutions/09_guidance.py`.
"""


def your_guided_eps(eps_cond, eps_uncond, w):
    """(1 + w) eps_cond - w eps_uncond: w = 0 is the conditional model, w > 0 extrapolates away from the
    unconditional prediction (math/guidance.tex eq:cfg). eps_cond, eps_uncond: (B, ...); w: float >= 0."""
    return (1 + w) * eps_cond - w * eps_uncond


if __name__ == "__main__":
    from ddpm_lite.exercises import check_guided_eps

    check_guided_eps(your_guided_eps)
