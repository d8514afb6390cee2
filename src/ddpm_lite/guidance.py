"""Classifier-free guidance (Ho & Salimans 2022): one class-conditional network, two predictions, one extrapolation.

A network trained with some labels dropped to "no label" (`UNetConfig.num_classes`, `TrainConfig.label_dropout`)
predicts both eps_theta(x_t, t, y) and eps_theta(x_t, t). Guidance with weight w samples with

    eps_guided = (1 + w) eps_theta(x_t, t, y) - w eps_theta(x_t, t)        # Ho & Salimans 2022, eq. (6)

w = 0 is the plain conditional model; w > 0 moves along the gradient of the classifier implicit in the pair,
log p(y | x_t) = log p(x_t | y) - log p(x_t) + const, trading diversity for samples that look more like class y.
`GuidedModel` wraps the network so that every sampler in `ddpm_lite.samplers` uses it unchanged.
math/guidance.tex eq:cfg
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GuidedModel(nn.Module):
    """eps_guided(x_t, t) for labels `y` (an int, or (B,) int64 matching the batch) and guidance weight `w` >= 0.

    Both predictions come from one forward pass over the doubled batch (conditional half, unconditional half).
    """

    def __init__(self, model: nn.Module, y: int | Tensor, w: float):
        super().__init__()
        num_classes = getattr(getattr(model, "config", None), "num_classes", 0)
        if not num_classes:
            raise ValueError("model must be class-conditional (config.num_classes > 0) for guidance")
        if not w >= 0:
            raise ValueError(f"w must be >= 0 (0 = conditional model without guidance), got {w}")
        y = torch.as_tensor(y, dtype=torch.int64)
        if y.ndim > 1 or (y < 0).any() or (y >= num_classes).any():
            raise ValueError(f"y must be an int or a (B,) tensor of labels in [0, {num_classes}), got {y}")
        self.model, self.w, self.null_label = model, float(w), num_classes
        self.register_buffer("y", y, persistent=False)

    def forward(self, x_t: Tensor, t: Tensor) -> Tensor:
        y = self.y.to(t.device).expand(t.shape)
        if self.w == 0:
            return self.model(x_t, t, y)
        no_label = torch.full_like(y, self.null_label)
        eps = self.model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([y, no_label]))
        eps_cond, eps_uncond = eps.chunk(2)
        return eps_cond + self.w * (eps_cond - eps_uncond)  # = (1 + w) eps_cond - w eps_uncond; eq:cfg
