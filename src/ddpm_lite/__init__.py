"""ddpm-lite: the small, tested library behind the diffusion course's notebooks. One module per concept:

- the process: `schedules` (betas and the tables derived from them), `forward` (q and its posterior), `elbo` (the
  variational bound term by term), `sde` (the score and SDE view, probability-flow ODE);
- the data and the ground truth: `data` (MNIST with an offline fallback, CIFAR-10, 2-D toys), `mixture` (the 2-D
  Gaussian mixture with its exact density, score and exact noise predictor);
- networks and training: `models` (MLP and UNet noise predictors, `make_model`), `configs` (`TrainConfig` and the
  presets), `train` (Algorithm 1, EMA), `checkpoints` (saving, loading, exporting, the committed models),
  `devices` (which device to run on);
- sampling: `samplers` (DDPM, DDIM, inversion, batched sampling), `guidance` (classifier-free guidance);
- measuring: `metrics` (sliced Wasserstein, Frechet distance), `digits` (the MNIST classifier and digit metrics);
- teaching: `viz` (plots and sliders), `exercises` (the notebooks' exercise checkers); `checks` holds the argument
  validators the modules share.

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
