"""Checkpoints: writing them atomically, reading them back, exporting a small sampling-only copy, and finding the
course's committed models.

A training checkpoint holds everything needed to continue exactly (model, EMA, optimiser, learning-rate schedule,
step, RNG states, config, loss history). It is written to a temporary file in the same folder, then renamed over the
old one, so a crash never leaves a half-written checkpoint. An exported checkpoint keeps only the config, the EMA
weights, the step and the loss history. `load_for_sampling(path)` gives what every sampler call needs from either:
the EMA network and its noise schedule.

Every file carries a format version (`FORMAT`). Reading one that cannot serve (missing, truncated, not a ddpm-lite
checkpoint, another format version, an exported one where training state is needed, another config) raises
`CheckpointError` naming the file and what is wrong; a failed write raises `CheckpointWriteError` and keeps the last
good checkpoint, leaving no temporary file behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from ddpm_lite.configs import TrainConfig, make_network
from ddpm_lite.devices import pick_device
from ddpm_lite.models import MLPConfig, UNet, UNetConfig
from ddpm_lite.schedules import NoiseSchedule

CHECKPOINT_NAME = "checkpoint.pt"  # the training checkpoint's file name inside a run's output folder
FORMAT = 1  # the layout of the checkpoint dict this version writes and reads; raise it when the layout changes
Kind = Literal["training", "exported"]  # everything to resume from, or the EMA weights for sampling only


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used as asked; the message names the file and what is wrong with it."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, no permission); the last good checkpoint at that path is kept."""
_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the repository, when the package runs from a source checkout


def save_checkpoint(path: Path, config: TrainConfig, model: nn.Module, ema: AveragedModel, optimizer, lr_schedule,
                    step: int, losses: list[float], rng: dict) -> Path:
    """Write everything needed to resume to `path`, atomically (temporary file in the same folder, then rename).

    `rng`: the RNG states to resume from, {"generator": stream 0's generator, "torch": torch's global state, and for
    runs with several data streams or processes "streams": every stream's generator, "torch_ranks": every process's
    global state}. Raises `CheckpointWriteError` if the file cannot be written; the previous file at `path`, if any,
    is then unchanged.
    """
    state = {
        "format": FORMAT,
        "config": config_to_dict(config),
        "model": model.state_dict(),
        "ema": ema.state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_schedule": lr_schedule.state_dict(),
        "rng": rng,
        "step": step,
        "losses": losses,
    }
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o644)  # mkstemp creates the file private to its owner
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError):
            kept = "the last good checkpoint there is kept" if path.exists() else "no checkpoint was written"
            raise CheckpointWriteError(f"could not write checkpoint {path}: {error.strerror or error}; {kept}") from error
        raise
    return path


def prepare_run_folder(out: str | os.PathLike) -> Path:
    """Create a run's output folder (and its parents) and check that files can be written into it, before any work
    is done. Raises `CheckpointWriteError` naming the folder if it is a file or cannot be written."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointWriteError(f"output folder {out} is an existing file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise CheckpointWriteError(f"cannot write into output folder {out}: {error.strerror or error}") from error
    return out


def read_checkpoint(path: str | os.PathLike, kind: Kind | None = None) -> dict:
    """The checkpoint dict stored at `path`, after checking that it is a ddpm-lite checkpoint of this format version
    and, if `kind` is given, of that kind. Raises `CheckpointError` naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir():
        inside = f"; the run's checkpoint is {path / CHECKPOINT_NAME}" if (path / CHECKPOINT_NAME).is_file() else ""
        raise CheckpointError(f"checkpoint {path} is a folder, not a file{inside}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except PermissionError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error.strerror}") from error
    except Exception as error:  # a truncated zip, a file of another kind (pickle's "invalid load key"), an empty file
        raise CheckpointError(f"{path} is not a readable ddpm-lite checkpoint: truncated, or not a PyTorch checkpoint "
                              f"file ({type(error).__name__}: {_first_sentence(error)})") from error
    if not isinstance(state, dict) or not {"format", "config", "ema", "step"} <= state.keys():
        raise CheckpointError(f"{path} is not a ddpm-lite checkpoint: it lacks the format, config, ema and step entries")
    if state["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {path} has format version {state['format']!r}, but this version of ddpm-lite "
                              f"reads version {FORMAT}")
    found: Kind = "training" if {"model", "optimizer", "rng"} <= state.keys() else "exported"
    if kind == "training" and found == "exported":
        raise CheckpointError(f"checkpoint {path} is an exported one (EMA weights for sampling only); resuming and "
                              f"exporting need a training checkpoint, a run's {CHECKPOINT_NAME}")
    if kind == "exported" and found == "training":
        raise CheckpointError(f"checkpoint {path} is a training checkpoint; export it first with "
                              f"`python -m ddpm_lite export --checkpoint {path} --out FILE`")
    return state


def load_checkpoint(path: str | os.PathLike, model: nn.Module, ema: AveragedModel | nn.Module | None = None,
                    *, expected: TrainConfig | None = None) -> dict:
    """Load weights (and EMA weights) from the training checkpoint `path` into `model` (and `ema`); return the whole
    checkpoint dict. Raises `CheckpointError` as `check_config` does, or for a file that is not a training checkpoint.
    """
    state = read_checkpoint(path, "training")
    check_config(state, path, model_config=getattr(model, "config", None), expected=expected)
    model.load_state_dict(state["model"])
    if ema is not None:
        ema.load_state_dict(state["ema"] if isinstance(ema, AveragedModel) else _ema_weights(state["ema"]))
    return state


def check_config(state: dict, path: str | os.PathLike, *, model_config=None, expected: TrainConfig | None = None) -> None:
    """Raise `CheckpointError`, naming the differing fields, if the checkpoint's network config is not `model_config`
    or (with `expected`) its training config differs from `expected` in anything but the number of steps."""
    saved = config_to_dict(config_from_dict(state["config"]))  # fields added since the checkpoint get their defaults
    if model_config is not None and saved["model"] != _asdict(model_config):
        raise CheckpointError(f"checkpoint {path} was trained with another network config: "
                              f"{_difference(saved['model'], _asdict(model_config))}")
    if expected is not None:
        wanted = {k: v for k, v in config_to_dict(expected).items() if k != "steps"}
        have = {k: v for k, v in saved.items() if k != "steps"}
        if wanted != have:
            raise CheckpointError(f"checkpoint {path} was trained with another config: {_difference(have, wanted)}")


def export_checkpoint(path: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Keep only what sampling needs (config, EMA weights, step, loss history): a quarter of the training checkpoint.

    The result loads with `load_ema_model`; it cannot be resumed from (no raw weights, optimiser or RNG states).
    """
    state = read_checkpoint(path, "training")
    slim = {key: state[key] for key in ("format", "config", "ema", "step", "losses")}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(slim, out)
    return out


def load_ema_model(path: str | os.PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, TrainConfig]:
    """The EMA network of a checkpoint (training or exported), ready for sampling (eval mode), and its training
    config. A network trained to output x0, v or EDM's F comes in its `Denoiser`, which returns eps (as
    `configs.make_network` builds it). Raises `CheckpointError` for a file that is not a usable checkpoint."""
    state = read_checkpoint(path)
    config = config_from_dict(state["config"])
    model = make_network(config)
    model.load_state_dict(_ema_weights(state["ema"]))
    return model.to(device).eval(), config


def load_for_sampling(path: str | os.PathLike, device: torch.device | str | None = None
                      ) -> tuple[nn.Module, NoiseSchedule, TrainConfig]:
    """The EMA network of a checkpoint (eval mode, on `device`, default the best available), the noise schedule it
    was trained with, and its training config: everything a sampler call needs. A UNet's weights are put in
    channels_last memory order, which makes convolutions faster on CPUs (oneDNN) and GPUs alike and changes no value
    beyond float rounding (`results/benchmarks.md`: weights in that order sampled faster in its quality-per-minute
    run)."""
    model, config = load_ema_model(path, pick_device(device))
    if isinstance(getattr(model, "network", model), UNet):
        model = model.to(memory_format=torch.channels_last)
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


def _first_sentence(error: BaseException) -> str:
    """The start of an exception's message, on one line (torch's zip errors run to several sentences)."""
    text = " ".join(str(error).split()).split(". ")[0]
    return text if len(text) <= 100 else text[:97] + "..."


def _ema_weights(ema_state: dict) -> dict:
    """AveragedModel's state dict holds the module under 'module.' plus a counter; keep the module's weights."""
    return {k.removeprefix("module."): v for k, v in ema_state.items() if k.startswith("module.")}
