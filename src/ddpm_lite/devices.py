"""Which device to run on: the one asked for, else the device a model's weights are on, else the best available.

One helper for training, sampling and the command line, so they agree on the rule.
"""

from __future__ import annotations

import torch
from torch import nn


def pick_device(device: torch.device | str | None = None, model: object = None) -> torch.device:
    """`device` if given; else, for an `nn.Module` with parameters or buffers, the device of the first one (a module
    with neither, such as an exact predictor, or a plain function runs on the CPU); else, with no model, cuda if
    available, then Apple's mps, then the CPU."""
    if device is not None:
        return torch.device(device)
    if model is not None:
        if isinstance(model, nn.Module):
            for tensor in [*model.parameters(), *model.buffers()]:
                return tensor.device
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
