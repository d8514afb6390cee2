"""scripts/tune_mnist.py from its command line: each variant changes what it says, and a 2-step quality run
(4 samples) and its report run end to end. (Its side-by-side weight averages, `train.WeightAverages`, are tested in
tests/test_train.py.)"""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

from ddpm_lite.checkpoints import config_to_dict
from ddpm_lite.configs import CONFIGS

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _show(variant: str) -> dict:
    """The variant's config as `tune_mnist.py show` prints it."""
    command = [sys.executable, str(SCRIPTS / "tune_mnist.py"), "show", "--variant", variant]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout)


def test_variants_change_what_they_say():
    assert _show("preset") == config_to_dict(CONFIGS["mnist-ddpm"])
    assert _show("cosine") == config_to_dict(dataclasses.replace(CONFIGS["mnist-ddpm"], schedule="cosine"))
    assert _show("no-attn")["model"]["attention_resolutions"] == []


def test_quality_one_and_report_run(tmp_path):
    out = tmp_path / "preset.json"
    command = [sys.executable, str(SCRIPTS / "tune_mnist.py"), "quality-one", "--variant", "preset", "--steps", "2",
               "--samples", "4", "--averages", "ema0.999w", "--no-half", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=300)
    record = json.loads(out.read_text())
    assert record["steps"] == 2 and [e["average"] for e in record["evaluations"]] == ["ema0.999w"]
    assert record["evaluations"][0]["frechet"] > 0
    report = subprocess.run([sys.executable, str(SCRIPTS / "tune_mnist.py"), "report", str(tmp_path)], check=True,
                            capture_output=True, text=True, timeout=120).stdout
    assert "| preset | " in report and "| 2 of 2 |" in report
