"""Training under torchrun with DistributedDataParallel (ddpm_lite.distributed), on the CPU with gloo.

The claim: N processes that each draw their share of a global batch B from their own data stream end with the weights
of one process that draws the same N streams into one batch of B, up to float32 reduction order (DDP averages N
per-process gradient means; one process takes one mean over B). Resuming under torchrun is exact, and a checkpoint
refuses to be resumed by another number of streams unless asked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm_lite.checkpoints import CHECKPOINT_NAME, CheckpointError
from ddpm_lite.configs import TrainConfig
from ddpm_lite.distributed import stream_seed
from ddpm_lite.mixture import gaussian_mixture
from ddpm_lite.models import MLPConfig
from ddpm_lite.train import train

# float32 reduction order: the largest weight difference allowed after 4 steps between averaging two half-batch
# gradients (DDP) and taking one whole-batch gradient (4e-8 measured with the `mnist` preset); the test also shows
# that a run on other data (one stream instead of two) differs by more than ten times this, so the tolerance tells the
# two cases apart. That difference cannot exceed about twice the sum of the 4 warm-up learning rates (AdamW moves a
# weight by about the learning rate a step), 2 x 5e-5, so the tolerance is kept well below a tenth of it.
REDUCTION_ORDER = 1e-6
SMALL_IMAGES = ["--config", "mnist", "--batch-size", "8", "--steps", "4", "--checkpoint-every", "2", "--device", "cpu",
                "--no-progress"]


def _env(tmp_path: Path) -> dict:
    # one thread per process, as torchrun gives each of its processes (OMP_NUM_THREADS=1), so runs compare bit for bit
    return {**os.environ, "DDPM_LITE_OFFLINE": "1", "DDPM_LITE_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}


def torchrun(tmp_path: Path, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "ddpm_lite", "train", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(tmp_path))


def one_process(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "ddpm_lite", "train", "--threads", "1", *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env(tmp_path))


def weights(run: Path) -> dict:
    return torch.load(run / CHECKPOINT_NAME, map_location="cpu", weights_only=False)


def max_difference(a: dict, b: dict, key: str = "model") -> float:
    return max((a[key][k].float() - b[key][k].float()).abs().max().item() for k in a[key])


def test_two_processes_end_with_the_weights_of_one_process_drawing_their_two_streams(tmp_path):
    two = torchrun(tmp_path, *SMALL_IMAGES, "--out", "two")
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x 2 processes (4 images each)" in two.stdout
    one = one_process(tmp_path, *SMALL_IMAGES, "--out", "one", "--data-streams", "2")
    other_data = one_process(tmp_path, *SMALL_IMAGES, "--out", "other")  # one stream: another data order
    assert one.returncode == 0 and other_data.returncode == 0, one.stderr + other_data.stderr
    a, b, c = weights(tmp_path / "two"), weights(tmp_path / "one"), weights(tmp_path / "other")
    assert max_difference(a, b) < REDUCTION_ORDER and max_difference(a, b, "ema") < REDUCTION_ORDER
    torch.testing.assert_close(torch.tensor(a["losses"]), torch.tensor(b["losses"]), rtol=1e-6, atol=0)
    assert max_difference(a, c) > 10 * REDUCTION_ORDER  # the comparison can fail: other data, other weights
    # rank 0 stored both processes' streams; rank 1's generator is seeded apart from rank 0's
    assert len(a["rng"]["streams"]) == 2 and len(a["rng"]["torch_ranks"]) == 2
    assert not torch.equal(a["rng"]["streams"][0], a["rng"]["streams"][1])
    assert all(torch.equal(s, t) for s, t in zip(a["rng"]["streams"], b["rng"]["streams"]))


def test_resume_under_torchrun_is_exact_and_another_number_of_streams_is_refused(tmp_path):
    straight = torchrun(tmp_path, *SMALL_IMAGES, "--out", "straight")
    first = torchrun(tmp_path, *SMALL_IMAGES[:5], "2", *SMALL_IMAGES[6:], "--out", "stopped")  # --steps 2
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr[-2000:] + first.stderr[-2000:]
    shutil.copytree(tmp_path / "stopped", tmp_path / "stopped_copy")
    resumed = torchrun(tmp_path, *SMALL_IMAGES, "--out", "stopped", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "stopped")
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert a["losses"] == b["losses"] and b["step"] == 4

    refused = one_process(tmp_path, *SMALL_IMAGES, "--out", "stopped_copy", "--resume")
    assert refused.returncode == 2 and "2 data stream(s)" in refused.stderr and "--data-streams 2" in refused.stderr
    assert weights(tmp_path / "stopped_copy")["step"] == 2  # nothing written
    fewer = one_process(tmp_path, *SMALL_IMAGES, "--out", "stopped_copy", "--resume", "--data-streams", "2")
    assert fewer.returncode == 0, fewer.stderr
    assert max_difference(a, weights(tmp_path / "stopped_copy")) < REDUCTION_ORDER


POINTS = TrainConfig(name="points", data="mixture", model=MLPConfig(hidden=16, depth=1, time_dim=8), T=50, steps=6,
                     batch_size=12, lr=2e-3, warmup=2, checkpoint_every=3)


@pytest.fixture(scope="module")
def points():
    return gaussian_mixture(300, generator=torch.Generator().manual_seed(0))[0]


def test_one_stream_draws_what_one_process_always_drew(points):
    """Stream 0 is seeded with the config's seed itself; the other streams' seeds differ from it and each other."""
    assert stream_seed(7, 0) == 7
    seeds = {stream_seed(7, s, restart) for s in range(4) for restart in (0, 100)}
    assert len(seeds) == 8
    default = train(POINTS, points, device="cpu", progress=False)
    explicit = train(POINTS, points, device="cpu", progress=False, data_streams=1)
    two = train(POINTS, points, device="cpu", progress=False, data_streams=2)
    assert default.losses == explicit.losses and default.losses != two.losses


def test_streams_that_do_not_divide_the_batch_or_the_processes_are_refused(points, tmp_path):
    with pytest.raises(ValueError, match="does not split into 5 equal shares"):
        train(POINTS, points, device="cpu", progress=False, data_streams=5)
    with pytest.raises(ValueError, match="data_streams must be a positive multiple"):
        train(POINTS, points, device="cpu", progress=False, data_streams=0)
    result = one_process(tmp_path, *SMALL_IMAGES, "--out", "bad", "--batch-size", "7", "--data-streams", "2")
    assert result.returncode == 2 and "choose a --batch-size divisible by 2" in result.stderr
    assert not (tmp_path / "bad").exists()


def test_resuming_with_another_number_of_streams_needs_reshard(points, tmp_path):
    out = tmp_path / "run"
    train(POINTS, points, out, device="cpu", progress=False, data_streams=2, stop_after=3)
    with pytest.raises(CheckpointError, match="2 data stream"):
        train(POINTS, points, out, resume=True, device="cpu", progress=False)
    reshard = train(POINTS, points, out, resume=True, device="cpu", progress=False, reshard=True)
    exact = train(POINTS, points, tmp_path / "exact", device="cpu", progress=False, data_streams=2)
    assert len(reshard.losses) == 6 and reshard.losses[:3] == exact.losses[:3]
    assert reshard.losses[3:] != exact.losses[3:]  # new streams: the run goes on, but not as the unbroken one
    assert len(weights(out)["rng"]["streams"]) == 1
