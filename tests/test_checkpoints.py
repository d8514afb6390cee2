"""Checkpoints (ddpm_lite.checkpoints): atomic writes, clear errors on a mismatched config, the EMA network and its
schedule for sampling, the exported copy, and finding a committed file locally or by download."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from ddpm_lite import checkpoints
from ddpm_lite.checkpoints import (
    CHECKPOINT_NAME,
    FORMAT,
    CheckpointError,
    CheckpointWriteError,
    export_checkpoint,
    load_checkpoint,
    load_ema_model,
    load_for_sampling,
    prepare_run_folder,
    read_checkpoint,
    repository_file,
)
from ddpm_lite.configs import TrainConfig
from ddpm_lite.mixture import gaussian_mixture
from ddpm_lite.models import MLPConfig, UNet, UNetConfig
from ddpm_lite.schedules import NoiseSchedule
from ddpm_lite.train import train

SMALL = TrainConfig(name="small", data="mixture", model=MLPConfig(hidden=32, depth=2, time_dim=16), T=100,
                    steps=40, batch_size=64, lr=2e-3, warmup=5, ema_decay=0.9, checkpoint_every=10)
ROOT = Path(__file__).resolve().parents[1]
URL = "https://github.com/ddpm-lite/ddpm-lite/raw/main"


@pytest.fixture(scope="module")
def points():
    return gaussian_mixture(2000, generator=torch.Generator().manual_seed(0))[0]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_checkpoint_write_is_atomic(points, tmp_path, monkeypatch):
    """If writing fails halfway, the previous checkpoint is intact and no temporary file is left."""
    config = dataclasses.replace(SMALL, steps=10)
    train(config, points, tmp_path, device="cpu", progress=False)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    real_save = torch.save

    def save_half_then_fail(obj, file, *args, **kwargs):
        real_save(obj, file, *args, **kwargs)
        file.truncate(100)  # a half-written file...
        raise OSError("disk full")  # ...and a crash

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(CheckpointWriteError, match="disk full") as caught:
        train(dataclasses.replace(config, steps=20), points, tmp_path, resume=True, device="cpu", progress=False)
    assert isinstance(caught.value, OSError) and len(str(caught.value).splitlines()) == 1
    assert f"could not write checkpoint {tmp_path / CHECKPOINT_NAME}" in str(caught.value)
    assert "the last good checkpoint there is kept" in str(caught.value)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]


def test_loading_into_another_config_fails_clearly(points, tmp_path):
    train(dataclasses.replace(SMALL, steps=10), points, tmp_path, device="cpu", progress=False)
    other = UNet(UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1, groups=4))
    with pytest.raises(ValueError, match="another network config"):
        load_checkpoint(tmp_path / CHECKPOINT_NAME, other)
    with pytest.raises(ValueError, match="lr: checkpoint 0.002 vs requested 0.1"):
        train(dataclasses.replace(SMALL, lr=0.1), points, tmp_path, resume=True, device="cpu", progress=False)


def test_ema_model_loads_for_sampling(points, tmp_path):
    result = train(dataclasses.replace(SMALL, steps=10), points, tmp_path, device="cpu", progress=False)
    model, config = load_ema_model(tmp_path / CHECKPOINT_NAME)
    assert config.model == SMALL.model and not model.training
    assert_same_state(model.state_dict(), result.ema.state_dict())


def test_load_for_sampling_gives_the_ema_network_and_its_schedule(points, tmp_path):
    config = dataclasses.replace(SMALL, steps=10, schedule="cosine")
    result = train(config, points, tmp_path, device="cpu", progress=False)
    model, schedule, loaded = load_for_sampling(tmp_path / CHECKPOINT_NAME, "cpu")
    assert loaded == config and not model.training
    assert_same_state(model.state_dict(), result.ema.state_dict())
    torch.testing.assert_close(schedule.beta, NoiseSchedule.named("cosine", 100).beta, rtol=0, atol=0)


def test_exported_checkpoint_samples_like_the_training_one(points, tmp_path):
    train(dataclasses.replace(SMALL, steps=10), points, tmp_path, device="cpu", progress=False)
    slim = export_checkpoint(tmp_path / CHECKPOINT_NAME, tmp_path / "export" / "slim.pt")
    assert slim.stat().st_size < (tmp_path / CHECKPOINT_NAME).stat().st_size
    assert_same_state(load_ema_model(slim)[0].state_dict(), load_ema_model(tmp_path / CHECKPOINT_NAME)[0].state_dict())


def test_repository_file_finds_the_committed_copy_in_a_checkout():
    assert repository_file(f"{URL}/checkpoints/mnist.pt") == ROOT / "checkpoints" / "mnist.pt"
    assert repository_file(f"{URL}/results/ddim_grid.csv") == ROOT / "results" / "ddim_grid.csv"


def test_repository_file_downloads_once_where_there_is_no_checkout(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints, "_SOURCE_ROOT", tmp_path / "not-a-checkout")
    monkeypatch.chdir(tmp_path)
    fetched = []

    def download(url, destination):
        fetched.append(url)
        Path(destination).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    for _ in range(2):
        assert repository_file(f"{URL}/checkpoints/mnist.pt") == Path("mnist.pt")
    assert fetched == [f"{URL}/checkpoints/mnist.pt"] and Path("mnist.pt").read_bytes() == b"weights"


@pytest.mark.parametrize("url", ["https://github.com/ddpm-lite/ddpm-lite/blob/main/checkpoints/mnist.pt",
                                 "checkpoints/mnist.pt", "https://github.com/ddpm-lite/ddpm-lite/raw/main"])
def test_repository_file_rejects_what_is_not_a_raw_file_url(url):
    with pytest.raises(ValueError, match="url must be a raw file of the repository"):
        repository_file(url)


@pytest.fixture(scope="module")
def trained(points, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    train(dataclasses.replace(SMALL, steps=10), points, folder, device="cpu", progress=False)
    return folder / CHECKPOINT_NAME


def test_reading_names_the_file_and_what_is_wrong(trained, tmp_path):
    """Missing, a folder, truncated, not a checkpoint, another format version, the wrong kind: one CheckpointError
    each, naming the file."""
    cases = {"missing": (tmp_path / "missing.pt", "does not exist"), "folder": (trained.parent, "is a folder")}
    (tmp_path / "truncated.pt").write_bytes(trained.read_bytes()[:1000])
    cases["truncated"] = (tmp_path / "truncated.pt", "not a readable ddpm-lite checkpoint")
    (tmp_path / "text.pt").write_text("hello")
    cases["text"] = (tmp_path / "text.pt", "not a readable ddpm-lite checkpoint")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    cases["other"] = (tmp_path / "other.pt", "is not a ddpm-lite checkpoint: it lacks")
    state = torch.load(trained, weights_only=False)
    torch.save({**state, "format": 2}, tmp_path / "future.pt")
    cases["future"] = (tmp_path / "future.pt", "has format version 2, but this version of ddpm-lite reads version 1")
    for name, (path, fragment) in cases.items():
        with pytest.raises(CheckpointError, match=fragment) as caught:
            read_checkpoint(path)
        assert str(path) in str(caught.value), name
    exported = export_checkpoint(trained, tmp_path / "exported.pt")
    assert read_checkpoint(exported, "exported")["step"] == 10 == read_checkpoint(trained, "training")["step"]
    with pytest.raises(CheckpointError, match="is an exported one"):
        read_checkpoint(exported, "training")
    with pytest.raises(CheckpointError, match="is a training checkpoint; export it first"):
        read_checkpoint(trained, "exported")
    with pytest.raises(CheckpointError, match="is an exported one"):
        export_checkpoint(exported, tmp_path / "twice.pt")


def test_every_checkpoint_stores_the_format_version(trained, tmp_path):
    assert torch.load(trained, weights_only=False)["format"] == FORMAT
    assert torch.load(export_checkpoint(trained, tmp_path / "e.pt"), weights_only=False)["format"] == FORMAT


def test_run_folder_is_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointWriteError, match="is an existing file, not a folder"):
        prepare_run_folder(tmp_path / "file")
    assert prepare_run_folder(tmp_path / "a" / "b").is_dir()


def test_load_for_sampling_puts_a_unet_in_channels_last_order_with_the_same_outputs():
    """The committed MNIST model (trained in the default order) comes back channels_last, predicting the same noise."""
    path = Path(__file__).resolve().parent.parent / "checkpoints" / "mnist.pt"
    model, _, _ = load_for_sampling(path, "cpu")
    plain, _ = load_ema_model(path)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size[0] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(m for m in plain.modules() if m is not None and isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
                    and m.kernel_size[0] > 1).weight.is_contiguous(memory_format=torch.channels_last)
    x, t = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 500, 999])
    with torch.inference_mode():
        torch.testing.assert_close(model(x, t), plain(x, t), rtol=1e-4, atol=1e-5)
