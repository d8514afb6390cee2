"""benchmarks/tune_mnist.py: the weight averages it keeps beside a run are the averages `train` itself would keep,
and its command line runs end to end (a 2-step run, 4 samples)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import torch

from ddpm_lite.models import UNetConfig
from ddpm_lite.train import CONFIGS, TrainConfig, train

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = TrainConfig(name="tiny", data="mnist", steps=15, batch_size=4, lr=2e-3, warmup=2,
                   model=UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                    attention_resolutions=(4,), groups=4))


def _tune_mnist():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import tune_mnist
    finally:
        sys.path.remove(str(BENCHMARKS))
    return tune_mnist


def test_side_by_side_averages_equal_trains_own_ema():
    """The sweep scores five averages from one run; each must be the EMA a run with that setting would have."""
    tune_mnist = _tune_mnist()
    images = torch.rand(32, 1, 8, 8) * 2 - 1
    for decay, warmup, name in [(0.999, False, "ema0.999"), (0.999, True, "ema0.999w"), (0.99, False, "ema0.99")]:
        averages = None

        def callback(step, model):
            nonlocal averages
            if averages is None:
                averages = tune_mnist.Averages(model)
            averages(step, model)

        config = dataclasses.replace(TINY, ema_decay=decay, ema_warmup=warmup)
        result = train(config, images, device="cpu", progress=False, callback=callback)
        ours, trains = averages.get(name, result.model).state_dict(), result.ema.state_dict()
        assert ours.keys() == trains.keys()
        for key in ours:
            assert torch.equal(ours[key], trains[key]), (name, key)


def test_variants_change_what_they_say():
    tune_mnist = _tune_mnist()
    assert tune_mnist.variant_config("preset") == CONFIGS["mnist-ddpm"]
    assert tune_mnist.variant_config("cosine") == dataclasses.replace(CONFIGS["mnist-ddpm"], schedule="cosine")
    assert tune_mnist.variant_config("no-attn").model.attention_resolutions == ()


def test_quality_one_and_report_run(tmp_path):
    out = tmp_path / "preset.json"
    command = [sys.executable, str(BENCHMARKS / "tune_mnist.py"), "quality-one", "--variant", "preset", "--steps", "2",
               "--samples", "4", "--averages", "ema0.999w", "--no-half", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    record = json.loads(out.read_text())
    assert record["steps"] == 2 and [e["average"] for e in record["evaluations"]] == ["ema0.999w"]
    assert record["evaluations"][0]["frechet"] > 0
    report = subprocess.run([sys.executable, str(BENCHMARKS / "tune_mnist.py"), "report", str(tmp_path)], check=True,
                            capture_output=True, text=True, timeout=120).stdout
    assert "| preset | " in report and "| 2 of 2 |" in report
