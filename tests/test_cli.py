"""The command line (`python -m ddpm_lite`): the sample grids it writes during training, one-line errors for every
mistake before any work, and interruptions that lose nothing."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


# ---------------------------------------------------------------------------------------------------- errors
ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "checkpoints" / "mnist.pt"


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ddpm_lite", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "DDPM_LITE_OFFLINE": "1", **(env or {})})


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user mistake: exit code 2, nothing on stdout but what came before the check, one line `error: ...`."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def broken_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("broken")
    truncated = folder / "truncated.pt"
    truncated.write_bytes(COMMITTED.read_bytes()[:4096])
    text = folder / "notes.pt"
    text.write_text("not a checkpoint\n")
    old = folder / "format99.pt"
    state = torch.load(COMMITTED, weights_only=False)
    torch.save({**state, "format": 99}, old)
    return {"truncated": truncated, "text": text, "format": old}


@pytest.mark.parametrize(("args", "fragments"), [
    (["sample", "--checkpoint", "missing.pt"], ["checkpoint missing.pt does not exist"]),
    (["sample", "--checkpoint", "{truncated}"], ["not a readable ddpm-lite checkpoint", "truncated.pt"]),
    (["sample", "--checkpoint", "{text}"], ["not a readable ddpm-lite checkpoint", "notes.pt"]),
    (["sample", "--checkpoint", "{format}"], ["has format version 99", "reads version 1"]),
    (["sample", "--checkpoint", "{committed}", "--n", "0"], ["--n must be at least 1, got 0"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "ddim", "--steps", "0"], ["--steps must be in [1, T] = [1, 1000]"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "ddim", "--steps", "5000"], ["got 5000"]),
    (["sample", "--checkpoint", "{committed}", "--eta", "-1"], ["--eta must be a number >= 0", "got -1.0"]),
    (["sample", "--checkpoint", "{committed}", "--out", "grid.txt"], ["must end in one of .png"]),
    (["sample", "--checkpoint", "{committed}", "--device", "cuda"], ["no cuda device is available"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "heun", "--steps", "0"], ["--steps must be in [1, T]"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "ddim", "--spacing", "karras"],
     ["--spacing karras does not apply to --sampler ddim", "uniform, quadratic"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "dpmpp-2m", "--spacing", "quadratic"],
     ["--spacing quadratic does not apply to --sampler dpmpp-2m", "karras"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "euler", "--clip"], ["--clip applies to the ddpm and ddim"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "heun", "--spacing", "trailing", "--sigma-max", "80"],
     ["--sigma-max caps the karras and log-snr grids", "spacing trailing"]),
    (["sample", "--checkpoint", "{committed}", "--sampler", "dpmpp-2m", "--sigma-max", "1e6"],
     ["--sigma-max: sigma_max must be in (sigma_min, the schedule's sigma_max]", "got 1000000.0"]),
    (["export", "--checkpoint", "{committed}", "--out", "again.pt"], ["is an exported one", "need a training checkpoint"]),
    (["train", "--config", "nonsense"], ["invalid choice: 'nonsense'"]),
    (["train", "--config", "2d", "--steps", "0"], ["--steps must be at least 1, got 0"]),
    (["train", "--config", "2d", "--out", "a_file"], ["output folder a_file is an existing file"]),
    (["train", "--config", "2d", "--resume", "--out", "empty_run"], ["empty_run/checkpoint.pt does not exist"]),
], ids=["missing", "truncated", "not-a-checkpoint", "format-version", "n-0", "steps-0", "steps-5000", "eta-negative",
        "unknown-image-type", "no-cuda", "solver-steps-0", "ddim-spacing", "solver-spacing", "solver-clip",
        "sigma-max-trailing", "sigma-max-too-high",
        "export-an-export", "unknown-config", "train-steps-0", "out-is-a-file",
        "resume-nothing"])
def test_a_mistake_ends_in_one_line_before_any_work(args, fragments, broken_files, tmp_path):
    if "--device" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    (tmp_path / "a_file").write_text("keep me\n")
    names = {**{k: str(v) for k, v in broken_files.items()}, "committed": str(COMMITTED)}
    result = run_cli(*[a.format(**names) for a in args], cwd=tmp_path)
    assert_one_line_error(result, *fragments)
    assert (tmp_path / "a_file").read_text() == "keep me\n"
    assert not list(tmp_path.glob("**/checkpoint.pt")) and not list(tmp_path.glob("**/*.png"))


def test_the_ode_solvers_sample_from_the_command_line(tmp_path):
    """--sampler heun / dpmpp-2m (ddpm_lite.solvers) on a spacing of choice; the label gives steps and NFE."""
    for args, label in ((["--sampler", "dpmpp-2m", "--steps", "3"], "dpmpp-2m 3 steps, 3 NFE (karras)"),
                        (["--sampler", "heun", "--steps", "2", "--spacing", "trailing"], "heun 2 steps, 3 NFE (trailing)"),
                        (["--sampler", "dpmpp-2m", "--steps", "2", "--sigma-max", "80"],
                         "dpmpp-2m 2 steps, 2 NFE (karras, sigma_max 80)")):
        result = run_cli("sample", "--checkpoint", str(COMMITTED), "--n", "4", *args, "--out", "grid.png", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"4 samples with {label}" in result.stdout
        assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"
        (tmp_path / "grid.png").unlink()


def test_debug_shows_the_traceback(tmp_path):
    result = run_cli("--debug", "sample", "--checkpoint", "missing.pt", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr and "CheckpointError" in result.stderr


def test_resuming_a_corrupted_checkpoint_is_one_line_and_keeps_it(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(COMMITTED.read_bytes()[:2048])
    before = (run / "checkpoint.pt").read_bytes()
    result = run_cli("train", "--config", "2d", "--out", str(run), "--resume", cwd=tmp_path)
    assert_one_line_error(result, "not a readable ddpm-lite checkpoint")
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_new_run_never_overwrites_an_old_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"an earlier run")
    assert_one_line_error(run_cli("train", "--config", "2d", "--out", str(run), cwd=tmp_path), "add --resume")
    assert (run / "checkpoint.pt").read_bytes() == b"an earlier run"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupted_training_leaves_a_checkpoint_at_that_step_and_resumes_exactly(signum, tmp_path):
    """`python -m ddpm_lite train` stopped by Ctrl-C (SIGINT) or SIGTERM mid-run, before its first periodic
    checkpoint: it writes one at the step it reached, says so in one line with the resume command, and `--resume`
    ends with the same weights as a run that was never stopped."""
    common = ["train", "--config", "2d", "--steps", "1500", "--checkpoint-every", "5000", "--device", "cpu"]
    straight = run_cli(*common, "--no-progress", "--out", str(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    run, log = tmp_path / "stopped", tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "ddpm_lite", *common, "--out", str(run)], cwd=tmp_path,
                                   stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "DDPM_LITE_OFFLINE": "1"})
        deadline = time.monotonic() + 120
        while "train 2d:" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # the progress bar shows the loop has started
        time.sleep(0.5)
        process.send_signal(signum)
        code = process.wait(timeout=120)
    message = log.read_text().replace("\r", "\n").strip().splitlines()[-1]
    assert code == (130 if signum == signal.SIGINT else 143), log.read_text()
    stopped_at = torch.load(run / CHECKPOINT_NAME, weights_only=False)["step"]
    assert 0 < stopped_at < 1500, "the run finished before it could be stopped; make it longer"
    assert message.startswith(f"stopped by {signal.Signals(signum).name} at step {stopped_at}; checkpoint written to")
    resume = shlex.split(message.split("continue with: ", 1)[1])
    assert resume[:3] == ["python", "-m", "ddpm_lite"] and resume[-1] == "--resume"
    resumed = run_cli(*resume[3:], "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "straight" / CHECKPOINT_NAME, weights_only=False)
    b = torch.load(run / CHECKPOINT_NAME, weights_only=False)
    assert a["step"] == b["step"] == 1500 and a["losses"] == b["losses"]
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)


def test_a_sample_grid_that_cannot_be_written_is_reported_and_training_goes_on(tmp_path, capsys):
    points = gaussian_mixture(500, generator=torch.Generator().manual_seed(0))[0]
    out = tmp_path / "run"
    (out / "samples_step0000005.png").mkdir(parents=True)  # a folder where the grid should go: savefig fails
    result = train(SMALL, points, out, device="cpu", progress=False,
                   callback=sample_grid_writer(SMALL, out, (2,)))
    assert len(result.losses) == SMALL.steps and (out / "samples_step0000010.png").is_file()
    warnings = capsys.readouterr().err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("warning: could not write the sample grid")
    assert "training goes on" in warnings[0]
