"""The command line's side tasks (`python -m ddpm_lite`): the sample grids it writes during training."""

from __future__ import annotations

import dataclasses

import torch

from ddpm_lite.__main__ import sample_grid_writer
from ddpm_lite.checkpoints import CHECKPOINT_NAME
from ddpm_lite.configs import TrainConfig
from ddpm_lite.mixture import gaussian_mixture
from ddpm_lite.models import MLPConfig
from ddpm_lite.train import train

SMALL = TrainConfig(name="small", data="mixture", model=MLPConfig(hidden=16, depth=1, time_dim=8), T=50, steps=12,
                    batch_size=32, lr=2e-3, warmup=2, checkpoint_every=100, sample_every=5)


def test_sample_grids_are_written_every_interval_before_the_first_checkpoint(tmp_path):
    """The grids come from train's callback: every `sample_every` steps before the last, into the output folder,
    even when the first checkpoint (which used to create the folder) comes later; the run then trains to the end."""
    points = gaussian_mixture(500, generator=torch.Generator().manual_seed(0))[0]
    out = tmp_path / "run"
    result = train(SMALL, points, out, device="cpu", progress=False,
                   callback=sample_grid_writer(SMALL, out, tuple(points.shape[1:])))
    assert len(result.losses) == SMALL.steps
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_NAME, "samples_step0000005.png",
                                                     "samples_step0000010.png"]
    assert (out / "samples_step0000005.png").read_bytes()[:4] == b"\x89PNG"
    quiet = dataclasses.replace(SMALL, sample_every=0)
    train(quiet, points, tmp_path / "quiet", device="cpu", progress=False,
          callback=sample_grid_writer(quiet, tmp_path / "quiet", (2,)))
    assert [p.name for p in (tmp_path / "quiet").iterdir()] == [CHECKPOINT_NAME]
