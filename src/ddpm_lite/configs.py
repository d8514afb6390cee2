"""Training configurations: `TrainConfig` (every knob of a run, with what each default is for) and the presets in
`CONFIGS`, the recipes behind the course's committed models and the CLI's `--config`.

How each preset was chosen and what it measured is in results/ (results/benchmarks.md for the tuning of `mnist`,
results/checkpoints.md for the committed models).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torch import nn

from ddpm_lite.checks import check_finite_number
from ddpm_lite.models import MLPConfig, UNetConfig, make_model
from ddpm_lite.objectives import Denoiser, NetworkOutput, Weighting, check_objective
from ddpm_lite.schedules import NoiseSchedule, ScheduleName


@dataclass(frozen=True)
class TrainConfig:
    name: str  # preset name, also the default output folder
    data: Literal["mixture", "swiss_roll", "two_moons", "mnist", "cifar10"]  # what to train on
    model: MLPConfig | UNetConfig  # the network; its class follows from the config's type
    schedule: ScheduleName = "linear"  # beta schedule (DDPM: linear)
    T: int = 1000  # diffusion steps (DDPM: 1000)
    steps: int = 2000  # optimiser steps
    batch_size: int = 128  # images or points per step (DDPM CIFAR-10: 128)
    lr: float = 2e-4  # peak AdamW learning rate (DDPM CIFAR-10: 2e-4)
    warmup: int = 100  # steps of linear learning-rate warm-up (DDPM: 5000 for 800k steps)
    weight_decay: float = 0.0  # AdamW weight decay (DDPM used Adam, i.e. 0)
    grad_clip: float = 1.0  # max gradient norm (DDPM: 1.0)
    ema_decay: float = 0.999  # EMA of the weights (DDPM: 0.9999 over 800k steps; shorter runs need less)
    ema_warmup: bool = False  # decay min(ema_decay, (1 + n) / (10 + n)) at update n, so early weights fade (see ema_update)
    seed: int = 0  # seeds the initial weights, the data order, the timesteps and the noise
    checkpoint_every: int = 500  # steps between checkpoints (and at the end)
    sample_every: int = 0  # steps between the sample grids the CLI writes to the output folder; 0 = none
    n_points: int = 50_000  # size of the fixed training set for 2-D data
    label_dropout: float = 0.0  # class-conditional models: chance a label is replaced by "no label" (Ho & Salimans: 0.1-0.2)
    random_flip: bool = False  # images: flip each training image left-right with probability 1/2 (DDPM's CIFAR-10 runs)
    channels_last: bool = False  # images: keep the UNet's weights and inputs in NHWC order, for oneDNN's and cuDNN's faster convolutions
    # The objective (math/objectives.tex; ddpm_lite.objectives). The defaults are DDPM's L_simple.
    prediction: NetworkOutput = "eps"  # what the network outputs: eps (DDPM), x0, v (Salimans & Ho 2022) or edm (EDM's F)
    loss_weighting: Weighting | None = None  # weight over noise levels; None: the plain MSE of the network's output
    min_snr_gamma: float = 5.0  # gamma of loss_weighting="min-snr" (Hang et al. 2023 use 5)
    sigma_data: float = 0.5  # EDM's data standard deviation, for prediction or loss_weighting "edm" (EDM: 0.5)
    noise_levels: Literal["uniform", "log-normal"] = "uniform"  # how t is drawn: DDPM's uniform t, or EDM's ln sigma ~ N(-1.2, 1.2^2)
    vlb_weight: float = 0.001  # lambda of L_hybrid = L_simple + lambda L_vlb when the network learns its variances (Improved DDPM: 0.001)
    # Reflow (Liu et al. 2023; ddpm_lite.flow.reflow_pairs), with prediction="flow": each training row is a sample
    # and the noise the previous flow mapped to it, concatenated on dim 1, so eps is read from the row, not drawn.
    paired_noise: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.label_dropout and not getattr(self.model, "num_classes", 0):
            raise ValueError("label_dropout > 0 needs a class-conditional model (UNetConfig.num_classes > 0)")
        if self.random_flip and not isinstance(self.model, UNetConfig):
            raise ValueError(f"random_flip applies to images (a UNetConfig), got {type(self.model).__name__}")
        if self.channels_last and not isinstance(self.model, UNetConfig):
            raise ValueError(f"channels_last applies to images (a UNetConfig), got {type(self.model).__name__}")
        check_objective(self.prediction, self.loss_weighting, self.min_snr_gamma, self.sigma_data)
        check_finite_number("vlb_weight", self.vlb_weight, minimum=0.0)
        if self.noise_levels not in ("uniform", "log-normal"):
            raise ValueError(f"noise_levels must be 'uniform' or 'log-normal', got {self.noise_levels!r}")
        if self.prediction == "flow" and self.noise_levels != "uniform":
            raise ValueError(f"noise_levels must be 'uniform' for prediction='flow' (tau = (t + 1/2) / T), got "
                             f"{self.noise_levels!r}")
        if self.prediction == "flow" and self.model.learn_variance:
            raise ValueError("prediction='flow' learns no variances: set the model's learn_variance=False")
        if self.paired_noise and self.prediction != "flow":
            raise ValueError(f"paired_noise (reflow) needs prediction='flow', got prediction={self.prediction!r}")


def make_network(config: TrainConfig) -> nn.Module:
    """The module a config trains and samples with: its network (`make_model(config.model)`), wrapped in a
    `Denoiser` that returns eps when the network outputs x0, v or EDM's F or learns its variances (so every sampler
    runs it unchanged)."""
    network = make_model(config.model)
    if config.prediction == "eps" and not config.model.learn_variance:
        return network
    return Denoiser(network, NoiseSchedule.named(config.schedule, config.T), config.prediction, config.sigma_data)


CONFIGS: dict[str, TrainConfig] = {
    # 2-D mixture: the MLP learns it in well under a minute on a laptop CPU.
    "2d": TrainConfig(name="2d", data="mixture", model=MLPConfig(), steps=2000, batch_size=256, lr=2e-3,
                      warmup=100, ema_decay=0.995, checkpoint_every=500),
    # MNIST on a CPU: a small UNet (attention at 7x7), cosine betas, an EMA with warm-up and x_0-prediction, tuned for
    # sample quality per CPU-minute in two rounds (scripts/tune_mnist.py; the record is results/benchmarks.md).
    "mnist": TrainConfig(name="mnist", data="mnist", model=UNetConfig(num_res_blocks=1), schedule="cosine",
                         steps=4500, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, ema_warmup=True,
                         checkpoint_every=250, sample_every=1000, channels_last=True, prediction="x0"),
    # The `mnist` preset as round 1 of the tuning left it (eps-prediction, L_simple; results/benchmarks.md), kept as
    # the reference its second round is measured against (scripts/quality_per_minute.py's third row).
    "mnist-round1": TrainConfig(name="mnist-round1", data="mnist", model=UNetConfig(num_res_blocks=1), schedule="cosine",
                                steps=4500, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, ema_warmup=True,
                                checkpoint_every=250, sample_every=1000, channels_last=True),
    # The course's first MNIST recipe, DDPM's choices: linear betas, constant EMA decay. checkpoints/mnist.pt and
    # mnist_long.pt were trained with it (results/checkpoints.md).
    "mnist-ddpm": TrainConfig(name="mnist-ddpm", data="mnist", model=UNetConfig(num_res_blocks=1), steps=4500,
                              batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, checkpoint_every=250,
                              sample_every=1000),
    # Class-conditional MNIST for classifier-free guidance (notebook 09): the same UNet plus a label embedding; a tenth
    # of the labels are dropped to "no label" so that one network learns both eps(x_t, t, y) and eps(x_t, t).
    # checkpoints/mnist_cfg.pt is this preset (results/checkpoints.md).
    "mnist-cfg": TrainConfig(name="mnist-cfg", data="mnist", model=UNetConfig(num_res_blocks=1, num_classes=10),
                             steps=6000, batch_size=64, lr=1e-3, warmup=200, ema_decay=0.999, checkpoint_every=500,
                             sample_every=1000, label_dropout=0.1),
    # DDPM's CIFAR-10 run (Ho et al. 2020, appendix B), the paper's 35.7 M-parameter network; for GPUs (docs/cifar10.md).
    "cifar10": TrainConfig(name="cifar10", data="cifar10",
                           model=UNetConfig(image_channels=3, image_size=32, base_channels=128,
                                            channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,),
                                            dropout=0.1, groups=32),
                           steps=800_000, batch_size=128, lr=2e-4, warmup=5000, ema_decay=0.9999, random_flip=True,
                           checkpoint_every=10_000, sample_every=50_000, channels_last=True),
}
# The study log's budget: 250 epochs of CIFAR-10's 50,000 training images at batch 128, ceil(250 * 50,000 / 128) steps.
CONFIGS["cifar10-250ep"] = replace(CONFIGS["cifar10"], name="cifar10-250ep", steps=97_657, checkpoint_every=5000,
                                   sample_every=10_000)
