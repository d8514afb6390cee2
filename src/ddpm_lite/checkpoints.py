"""Checkpoints: writing them atomically, reading them back, exporting a small sampling-only copy, and finding the
course's committed models.

A training checkpoint holds everything needed to continue exactly (model, EMA, optimiser, learning-rate schedule,
step, RNG states, config, loss history). It is written to a temporary file in the same folder, then renamed over the
old one, so a crash never leaves a half-written checkpoint. An exported checkpoint keeps only the config, the EMA
weights, the step and the loss history. `load_for_sampling(path)` gives what every sampler call needs from either:
the EMA network and its noise schedule.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddpm_lite.configs import TrainConfig
from ddpm_lite.devices import pick_device
from ddpm_lite.models import MLPConfig, UNetConfig, make_model
from ddpm_lite.schedules import NoiseSchedule

CHECKPOINT_NAME = "checkpoint.pt"  # the training checkpoint's file name inside a run's output folder
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the repository, when the package runs from a source checkout


def save_checkpoint(path: Path, config: TrainConfig, model: nn.Module, ema: AveragedModel, optimizer, lr_schedule,
                    generator: torch.Generator, step: int, losses: list[float]) -> Path:
    """Write everything needed to resume to `path`, atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": 1,
        "config": config_to_dict(config),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "rng": {"generator": generator.get_state(), "torch": torch.get_rng_state()},
        "step": step,
        "losses": losses,
    }
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, model: nn.Module, ema: AveragedModel | nn.Module | None = None,
                    *, expected: TrainConfig | None = None) -> dict:
    """Load weights (and EMA weights) from `path` into `model` (and `ema`); return the whole checkpoint dict.

    Raises ValueError, naming the differing fields, if the checkpoint's network config is not the model's (or if
    `expected` is given and the training config differs in anything but the number of steps).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved = config_to_dict(config_from_dict(state["config"]))  # fields added since the checkpoint get their defaults
    model_config = getattr(model, "config", None)
    if model_config is not None and saved["model"] != _asdict(model_config):
        raise ValueError(f"checkpoint {path} was trained with another network config: "
                         f"{_difference(saved['model'], _asdict(model_config))}")
    if expected is not None:
        wanted = {k: v for k, v in config_to_dict(expected).items() if k != "steps"}
        have = {k: v for k, v in saved.items() if k != "steps"}
        if wanted != have:
            raise ValueError(f"checkpoint {path} was trained with another config: {_difference(have, wanted)}")
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"] if isinstance(ema, AveragedModel) else _ema_weights(state["ema"]))
    return state


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Keep only what sampling needs (config, EMA weights, step, loss history): a quarter of the training checkpoint.

    The result loads with `load_ema_model`; it cannot be resumed from (no raw weights, optimiser or RNG states).
    """
    state = torch.load(path, map_location="cpu", weights_only=False)
    slim = {key: state[key] for key in ("format", "config", "ema", "step", "losses")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, out)
    return out


def load_ema_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The EMA network of a checkpoint, ready for sampling (eval mode), and its training config."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    config = config_from_dict(state["config"])
    model = make_model(config.model)
    model.load_state_dict(_ema_weights(state["ema"]))
    return model.to(device).eval(), config


def load_for_sampling(path: str | os.PathLike, device: torch.device | str | None = None
                      ) -> tuple[nn.Module, NoiseSchedule, TrainConfig]:
    """The EMA network of a checkpoint (eval mode, on `device`, default the best available), the noise schedule it
    was trained with, and its training config: everything a sampler call needs."""
    model, config = load_ema_model(path, pick_device(device))
    return model, NoiseSchedule.named(config.schedule, config.T), config


def repository_file(url: str) -> Path:
    """A committed file of the course, named by its URL in the repository (`https://github.com/OWNER/NAME/raw/main/
    checkpoints/mnist.pt`): the copy in this source checkout when there is one, else the file of that name in the
    working folder, downloaded first if it is not there yet (on Colab, where only the package is installed)."""
    parts = urlsplit(url).path.split("/")  # ['', OWNER, NAME, 'raw', BRANCH, *path]
    if len(parts) < 6 or parts[3] != "raw":
        raise ValueError(f"url must be a raw file of the repository, https://github.com/OWNER/NAME/raw/BRANCH/PATH, "
                         f"got {url!r}")
    local = _SOURCE_ROOT.joinpath(*parts[5:])
    if local.is_file():
        return local
    copy = Path(parts[-1])
    if not copy.is_file():
        torch.hub.download_url_to_file(url, str(copy))
    return copy


def config_to_dict(config: TrainConfig) -> dict:
    return {**_asdict(config), "model_type": type(config.model).__name__}


def config_from_dict(saved: dict) -> TrainConfig:
    saved = dict(saved)
    model_type = {"MLPConfig": MLPConfig, "UNetConfig": UNetConfig}[saved.pop("model_type")]
    model = saved.pop("model")
    model = model_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in model.items()})
    return TrainConfig(model=model, **saved)


def _asdict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))  # tuples -> lists, so saved and new compare equal


def _difference(have: dict, wanted: dict) -> str:
    keys = sorted(set(have) | set(wanted))
    return "; ".join(f"{k}: checkpoint {have.get(k)!r} vs requested {wanted.get(k)!r}" for k in keys
                     if have.get(k) != wanted.get(k))


def _ema_weights(ema_state: dict) -> dict:
    """AveragedModel's state dict holds the module under 'module.' plus a counter; keep the module's weights."""
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k.startswith("module.")}
