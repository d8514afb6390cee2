"""ddpm-lite: the small, tested library behind the diffusion course's notebooks.

Modules: `schedules` (betas and the tables derived from them), `forward` (q and its posterior), `elbo` (the
variational bound term by term), `exact` (the exact noise predictor for Gaussian mixtures), `data` (MNIST and 2-D toy
data), `models` (MLP and UNet noise predictors), `train` (Algorithm 1, checkpoints), `samplers` (DDPM and DDIM),
`metrics` (offline sample quality), `sde` (the score and SDE view, probability-flow ODE), `guidance`
(classifier-free guidance), `exercises` (checkers for the notebooks' exercises, built on `exercises_sampling` and `diagnose`), `viz` (plots and sliders).
`python -m ddpm_lite` is the command line.
"""

from ddpm_lite.forward import predict_x0_from_eps, q_posterior, q_sample, q_step, snr
from ddpm_lite.schedules import NoiseSchedule, cosine_betas, linear_betas

__version__ = "0.1.0"

__all__ = [
    "NoiseSchedule",
    "cosine_betas",
    "linear_betas",
    "predict_x0_from_eps",
    "q_posterior",
    "q_sample",
    "q_step",
    "snr",
]
