"""The training loop: it learns, resumes bit for bit, stops on a non-finite loss, and writes checkpoints atomically."""

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddpm_lite.checkpoints import CHECKPOINT_NAME
from ddpm_lite.configs import CONFIGS, TrainConfig
from ddpm_lite.mixture import gaussian_mixture
from ddpm_lite.models import MLPConfig, UNet, UNetConfig
from ddpm_lite.train import NonFiniteLossError, WeightAverages, train

SMALL = TrainConfig(name="small", data="mixture", model=MLPConfig(hidden=32, depth=2, time_dim=16), T=100,
                    steps=40, batch_size=64, lr=2e-3, warmup=5, ema_decay=0.9, checkpoint_every=10)
# A tiny UNet with dropout: resuming must also restore the global RNG that dropout draws from.
TINY_UNET = dataclasses.replace(SMALL, name="tiny-unet", data="mnist", steps=12, batch_size=4, checkpoint_every=4,
                                model=UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2),
                                                 num_res_blocks=1, attention_resolutions=(4,), dropout=0.2, groups=4))


@pytest.fixture(scope="module")
def points():
    return gaussian_mixture(2000, generator=torch.Generator().manual_seed(0))[0]


def test_ddpm_loss_is_l_simple(points):
    """DDPM Algorithm 1 lines 2-5; math/elbo.tex eq:l-simple: the same draws of t and eps give the same loss."""
    from ddpm_lite.models import MLP
    from ddpm_lite.schedules import NoiseSchedule
    from ddpm_lite.train import ddpm_loss

    torch.manual_seed(0)
    model, schedule, x_0 = MLP(SMALL.model), NoiseSchedule.named("linear", 100), points[:32]
    g = torch.Generator().manual_seed(1)
    t, eps = torch.randint(0, 100, (32,), generator=g), torch.randn(x_0.shape, generator=g)
    ab = schedule.alpha_bar[t].float()[:, None]
    expected = ((eps - model(ab.sqrt() * x_0 + (1 - ab).sqrt() * eps, t)) ** 2).mean()
    torch.testing.assert_close(ddpm_loss(model, schedule, x_0, generator=torch.Generator().manual_seed(1)), expected)


def test_loss_decreases_on_2d_data(points):
    """A fixed small budget: 300 steps. The mean loss of the last 50 steps is below 80% of the first 50's."""
    result = train(dataclasses.replace(SMALL, steps=300), points, device="cpu", progress=False)
    first, last = sum(result.losses[:50]) / 50, sum(result.losses[-50:]) / 50
    assert last < 0.8 * first, (first, last)


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("config", [SMALL, TINY_UNET, dataclasses.replace(TINY_UNET, channels_last=True)],
                         ids=["mlp", "unet-dropout", "unet-channels-last"])
def test_resume_is_bit_identical(config, points, tmp_path):
    data = points if config is SMALL else torch.rand(32, 1, 8, 8) * 2 - 1
    straight = train(config, data, tmp_path / "straight", device="cpu", progress=False)
    interrupted = tmp_path / "interrupted"
    train(config, data, interrupted, device="cpu", progress=False, stop_after=config.steps // 2 + 1)
    assert torch.load(interrupted / CHECKPOINT_NAME, weights_only=False)["step"] == config.steps // 2 + 1
    resumed = train(config, data, interrupted, resume=True, device="cpu", progress=False)
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert_same_state(straight.ema.state_dict(), resumed.ema.state_dict())
    assert straight.losses == resumed.losses


def test_killed_command_line_run_resumes_to_the_same_weights(tmp_path):
    """`python -m ddpm_lite train` killed (SIGKILL) after its first checkpoint, then rerun with --resume."""
    env = {**os.environ, "DDPM_LITE_OFFLINE": "1"}
    command = [sys.executable, "-m", "ddpm_lite", "train", "--config", "2d", "--steps", "600",
               "--checkpoint-every", "100", "--device", "cpu", "--no-progress"]
    subprocess.run([*command, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    process = subprocess.Popen([*command, "--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (run / CHECKPOINT_NAME).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(run / CHECKPOINT_NAME, weights_only=False)["step"]
    assert killed_at < 600, "the run finished before it could be killed; make it longer"
    subprocess.run([*command, "--out", str(run), "--resume"], check=True, env=env, capture_output=True)

    a = torch.load(tmp_path / "straight" / CHECKPOINT_NAME, weights_only=False)
    b = torch.load(run / CHECKPOINT_NAME, weights_only=False)
    assert a["step"] == b["step"] == 600
    assert_same_state(a["model"], b["model"])
    assert_same_state(a["ema"], b["ema"])


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(points, tmp_path):
    config = dataclasses.replace(SMALL, steps=20)
    train(config, points, tmp_path, device="cpu", progress=False)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    poisoned = torch.full_like(points, float("nan"))
    with pytest.raises(NonFiniteLossError, match="at step 21"):
        train(dataclasses.replace(config, steps=40), poisoned, tmp_path, resume=True, device="cpu", progress=False)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good


def test_presets_are_valid():
    assert set(CONFIGS) == {"2d", "mnist", "mnist-round1", "mnist-ddpm", "mnist-cfg", "cifar10", "cifar10-250ep"}
    assert CONFIGS["mnist-cfg"].model.num_classes == 10 and CONFIGS["mnist-cfg"].label_dropout == 0.1
    assert dataclasses.replace(CONFIGS["mnist-cfg"].model, num_classes=0) == CONFIGS["mnist"].model
    # Round 1 of the tuning (results/benchmarks.md) differs from the committed checkpoints' recipe in these choices only.
    round_1, before = CONFIGS["mnist-round1"], CONFIGS["mnist-ddpm"]
    assert (round_1.schedule, round_1.ema_warmup, before.schedule, before.ema_warmup) == ("cosine", True, "linear", False)
    assert dataclasses.replace(before, name="mnist-round1", schedule="cosine", ema_warmup=True,
                               channels_last=True) == round_1
    # Round 2 changed the objective only: x_0-prediction with its plain MSE.
    assert dataclasses.replace(round_1, name="mnist", prediction="x0") == CONFIGS["mnist"]
    assert (round_1.prediction, round_1.loss_weighting) == ("eps", None)
    assert CONFIGS["cifar10"].lr == 2e-4 and CONFIGS["cifar10"].batch_size == 128
    assert CONFIGS["cifar10"].ema_decay == 0.9999 and CONFIGS["cifar10"].model.dropout == 0.1
    assert CONFIGS["cifar10"].random_flip and CONFIGS["cifar10"].steps == 800_000  # DDPM appendix B
    seed_run = CONFIGS["cifar10-250ep"]  # the study log's 250 epochs of 50,000 images at batch 128
    assert seed_run.steps == math.ceil(250 * 50_000 / seed_run.batch_size) == 97_657
    assert dataclasses.replace(seed_run, name="cifar10", steps=800_000, checkpoint_every=10_000,
                               sample_every=50_000) == CONFIGS["cifar10"]


def test_max_seconds_stops_on_time_and_keeps_a_checkpoint(points, tmp_path):
    """Equal-time benchmarks: training stops at the first step past max_seconds and saves where it stopped."""
    result = train(dataclasses.replace(SMALL, steps=10**7, checkpoint_every=10**6), points, tmp_path, device="cpu",
                   progress=False, max_seconds=0.5)
    assert 0 < len(result.losses) < 10**7 and 0.5 <= result.seconds < 5
    assert torch.load(tmp_path / CHECKPOINT_NAME, weights_only=False)["step"] == len(result.losses)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_update_follows_its_rule(warmup):
    """ema_update: after the copy at n = 0, update n mixes in (1 - decay_n) of the weights, decay_n =
    min(decay, (1 + n) / (10 + n)) with warm-up (diffusers' EMAModel) and decay without; written out in float64."""
    from torch.optim.swa_utils import AveragedModel

    from ddpm_lite.train import ema_update

    model = torch.nn.Linear(3, 2).double()
    average = AveragedModel(model, multi_avg_fn=ema_update(0.9, warmup), use_buffers=True)
    expected = None
    for n in range(30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update_parameters(model)
        weights = torch.cat([p.detach().flatten() for p in model.parameters()])
        decay_n = min(0.9, (1 + n) / (10 + n)) if warmup else 0.9
        expected = weights.clone() if n == 0 else decay_n * expected + (1 - decay_n) * weights
        torch.testing.assert_close(torch.cat([p.flatten() for p in average.module.parameters()]), expected,
                                   rtol=1e-12, atol=1e-12)
    assert (1 + 29) / (10 + 29) < 0.9 or not warmup  # the warm-up was still active at the last update


def test_constant_ema_is_torchs_ema():
    """Without warm-up, ema_update is torch's get_ema_multi_avg_fn bit for bit, so runs of the earlier presets
    (checkpoints/README.md) reproduce exactly."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from ddpm_lite.train import ema_update

    torch.manual_seed(0)
    model = UNet(TINY_UNET.model)
    ours = AveragedModel(model, multi_avg_fn=ema_update(0.999), use_buffers=True)
    torchs = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ours.update_parameters(model)
        torchs.update_parameters(model)
    assert_same_state(ours.state_dict(), torchs.state_dict())


def test_ema_update_rejects_a_bad_decay():
    from ddpm_lite.train import ema_update

    with pytest.raises(ValueError, match="decay must be in"):
        ema_update(1.0)


def test_callback_sees_every_step_and_mixed_precision_needs_cuda(points):
    seen = []
    train(dataclasses.replace(SMALL, steps=7), points, device="cpu", progress=False,
          callback=lambda step, model, ema: seen.append((step, model.training)))
    assert seen == [(step, True) for step in range(1, 8)]
    with pytest.raises(ValueError, match="mixed_precision=True needs a CUDA device"):
        train(SMALL, points, device="cpu", progress=False, mixed_precision=True)


def test_channels_last_is_the_same_training_in_another_memory_order():
    """channels_last (the tuned `mnist` preset) changes the memory order, not the computation: same draws, same loss
    curve to float32 rounding, weights stored NHWC, and resuming is still bit-identical."""
    config = dataclasses.replace(TINY_UNET, model=dataclasses.replace(TINY_UNET.model, dropout=0.0), steps=6)
    images = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = train(config, images, device="cpu", progress=False)
    nhwc = train(dataclasses.replace(config, channels_last=True), images, device="cpu", progress=False)
    torch.testing.assert_close(torch.tensor(nhwc.losses), torch.tensor(plain.losses), rtol=1e-4, atol=1e-6)
    conv = next(p for p in nhwc.model.parameters() if p.dim() == 4 and p.shape[1] > 1)  # (C_out, C_in > 1, 3, 3)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    with pytest.raises(ValueError, match="channels_last applies to images"):
        dataclasses.replace(SMALL, channels_last=True)


TINY_UNET = TrainConfig(name="tiny", data="mnist", steps=15, batch_size=4, lr=2e-3, warmup=2,
                        model=UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                         attention_resolutions=(4,), groups=4))


def test_side_by_side_averages_equal_trains_own_ema():
    """scripts/tune_mnist.py scores several averages from one run; each must be the EMA a run with that setting
    would keep, bit for bit."""
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    for decay, warmup, name in [(0.999, False, "ema0.999"), (0.999, True, "ema0.999w"), (0.99, False, "ema0.99")]:
        averages = None

        def callback(step, model, ema):
            nonlocal averages
            if averages is None:
                averages = WeightAverages(model, {"ema0.999": (0.999, False), "ema0.999w": (0.999, True),
                                                  "ema0.99": (0.99, False)})
            averages(step, model, ema)

        config = dataclasses.replace(TINY_UNET, ema_decay=decay, ema_warmup=warmup)
        result = train(config, images, device="cpu", progress=False, callback=callback)
        ours, trains = averages[name].state_dict(), result.ema.state_dict()
        assert ours.keys() == trains.keys()
        for key in ours:
            assert torch.equal(ours[key], trains[key]), (name, key)


def test_an_error_that_stops_training_first_writes_a_checkpoint_to_resume_from(points, tmp_path):
    """A callback (a side task) fails after step 7, long before the first periodic checkpoint: training stops with
    that error, a checkpoint at step 7 is there, and resuming from it ends with the weights of an unbroken run."""
    config = dataclasses.replace(SMALL, steps=20, checkpoint_every=100)
    straight = train(config, points, tmp_path / "straight", device="cpu", progress=False)

    def fail_at_7(step, model, ema):
        if step == 7:
            raise RuntimeError("the plot failed")

    with pytest.raises(RuntimeError, match="the plot failed") as caught:
        train(config, points, tmp_path / "broken", device="cpu", progress=False, callback=fail_at_7)
    assert torch.load(tmp_path / "broken" / CHECKPOINT_NAME, weights_only=False)["step"] == 7
    if hasattr(caught.value, "__notes__"):
        assert "training stopped at step 7; checkpoint written to" in caught.value.__notes__[0]
    resumed = train(config, points, tmp_path / "broken", resume=True, device="cpu", progress=False)
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert_same_state(straight.ema.state_dict(), resumed.ema.state_dict())
    assert straight.losses == resumed.losses


def test_an_error_inside_a_step_saves_the_state_from_before_it(points, tmp_path, monkeypatch):
    """An error in the forward pass of step 5 (out of memory, say): the checkpoint holds step 4 and the random state
    step 5 started from, so the resumed run draws step 5's batch, t and noise again and ends like an unbroken run."""
    config = dataclasses.replace(SMALL, steps=12, checkpoint_every=100)
    straight = train(config, points, tmp_path / "straight", device="cpu", progress=False)
    from ddpm_lite import train as train_module

    calls, real_loss = [], train_module.ddpm_loss

    def loss_failing_at_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise MemoryError("out of memory")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "ddpm_loss", loss_failing_at_5)
    with pytest.raises(MemoryError):
        train(config, points, tmp_path / "broken", device="cpu", progress=False)
    monkeypatch.setattr(train_module, "ddpm_loss", real_loss)
    assert torch.load(tmp_path / "broken" / CHECKPOINT_NAME, weights_only=False)["step"] == 4
    resumed = train(config, points, tmp_path / "broken", resume=True, device="cpu", progress=False)
    assert_same_state(straight.model.state_dict(), resumed.model.state_dict())
    assert straight.losses == resumed.losses


@pytest.mark.parametrize("config", [dataclasses.replace(SMALL, weight_decay=0.01), TINY_UNET], ids=["mlp", "unet"])
def test_foreach_updates_give_the_weights_of_the_per_tensor_loop(config, monkeypatch):
    """train() asks AdamW and gradient clipping for their foreach kernels (faster on the CPU for small networks).
    They must change the time only: the same run with torch's per-tensor loops ends with identical weights."""
    data = (gaussian_mixture(256, generator=torch.Generator().manual_seed(1))[0] if config.data == "mixture"
            else torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    config = dataclasses.replace(config, steps=20)
    fast = train(config, data, device="cpu", progress=False)
    adamw, clip = torch.optim.AdamW, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.optim, "AdamW", lambda *args, foreach, **kwargs: adamw(*args, foreach=False, **kwargs))
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda *args, foreach, **kwargs: clip(*args, foreach=False, **kwargs))
    loop = train(config, data, device="cpu", progress=False)
    assert fast.losses == loop.losses
    for name, weight in fast.ema.state_dict().items():
        assert torch.equal(weight, loop.ema.state_dict()[name]), name
