"""The scripts from their command lines. scripts/tune_mnist.py: each variant changes what it says, and a 2-step
quality run (4 samples) and its report run end to end (its side-by-side weight averages, `train.WeightAverages`, are
tested in tests/test_train.py). scripts/gpu_throughput.py: its smoke mode runs on the CPU and its two networks are
DDPM's CIFAR-10 network at the same size. scripts/compare_objectives.py: each objective changes only the objective,
and a 2-step run of two objectives and its report run end to end."""

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import torch

from ddpm_lite.checkpoints import config_to_dict
from ddpm_lite.configs import CONFIGS
from ddpm_lite.models import count_parameters

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _show(variant: str) -> dict:
    """The variant's config as `tune_mnist.py show` prints it."""
    command = [sys.executable, str(SCRIPTS / "tune_mnist.py"), "show", "--variant", variant]
    return json.loads(subprocess.run(command, check=True, capture_output=True, text=True, timeout=120).stdout)


def test_variants_change_what_they_say():
    assert _show("preset") == config_to_dict(CONFIGS["mnist-ddpm"])
    assert _show("cosine") == config_to_dict(dataclasses.replace(CONFIGS["mnist-ddpm"], schedule="cosine"))
    assert _show("no-attn")["model"]["attention_resolutions"] == []
    round_1 = dict(config_to_dict(CONFIGS["mnist-round1"]), name="mnist-ddpm")  # round 2 starts from round 1's preset
    assert _show("mnist") == round_1
    assert _show("mnist-v-min-snr-seed2") == dict(round_1, prediction="v", loss_weighting="min-snr", seed=2)


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


def test_gpu_throughput_smoke_mode_runs_on_the_cpu(tmp_path):
    out = tmp_path / "throughput.csv"
    command = [sys.executable, str(SCRIPTS / "gpu_throughput.py"), "--smoke", "--device", "cpu", "--out", str(out)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    rows = list(csv.DictReader(out.open()))
    assert [row["network"] for row in rows] == ["ddpm_lite `cifar10` UNet", "diffusers UNet2DModel (google/ddpm-cifar10-32)"]
    assert all(float(row["images_per_second"]) > 0 and row["batch"] == "4" for row in rows)
    assert rows[0]["parameters"] == rows[1]["parameters"]  # the same network at a quarter of the width
    assert "| ddpm_lite `cifar10` UNet | " in printed and "speed_ratio=" in printed


def test_gpu_throughput_compares_ddpm_cifar10_networks_of_the_papers_size():
    sys.path.insert(0, str(SCRIPTS))
    try:
        from gpu_throughput import networks
    finally:
        sys.path.remove(str(SCRIPTS))
    counts = [count_parameters(model) for model in networks(1).values()]
    assert counts == [35_746_307, 35_746_307]  # DDPM's CIFAR-10 network: 35.7 M parameters (Ho et al. 2020, sec. 4)


def test_fast_samplers_mnist_rejects_an_unknown_spacing_before_sampling():
    command = [sys.executable, str(SCRIPTS / "fast_samplers_mnist.py"), "missing.pt", "--spacing", "karras", "cosine"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "--spacing must be among" in finished.stderr and "'cosine'" in finished.stderr


def test_gpu_throughput_rejects_bad_step_counts():
    command = [sys.executable, str(SCRIPTS / "gpu_throughput.py"), "--steps", "0", "--device", "cpu"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "--steps must be at least 1, got 0" in finished.stderr


def test_fast_samplers_mnist_runs_and_gives_each_sampler_its_budget(tmp_path):
    """scripts/fast_samplers_mnist.py on the committed model, 4 samples a cell: within 3 and 10 evaluations Heun
    takes 2 and 5 steps (3 and 9 NFE), DDIM and DPM-Solver++ 2M 3 and 10; the second grid repeats the solvers only."""
    out = tmp_path / "nfe.csv"
    command = [sys.executable, str(SCRIPTS / "fast_samplers_mnist.py"), str(SCRIPTS.parent / "checkpoints" / "mnist.pt"),
               "--n", "4", "--batch", "4", "--nfe", "3", "10", "--spacing", "karras", "trailing", "--no-ddpm", "--out", str(out)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = list(csv.DictReader(out.open()))
    assert [(row["sampler"], row["spacing"], row["steps"], row["nfe"]) for row in rows] == [
        ("ddim", "uniform", "3", "3"), ("heun", "karras", "2", "3"), ("dpmpp-2m", "karras", "3", "3"),
        ("ddim", "uniform", "10", "10"), ("heun", "karras", "5", "9"), ("dpmpp-2m", "karras", "10", "10"),
        ("heun", "trailing", "2", "3"), ("dpmpp-2m", "trailing", "3", "3"),
        ("heun", "trailing", "5", "9"), ("dpmpp-2m", "trailing", "10", "10")]
    assert all(float(row["frechet_distance"]) > 0 and float(row["frechet_se"]) > 0 and row["n"] == "4" for row in rows)
    assert "| mnist | dpmpp-2m | karras | 157.4 | 10 | 10 | 10 | 4 |" in printed  # sigma_0: linear betas' top level
    assert [row["sigma_max"] for row in rows[:3]] == ["", "157.4", "157.4"]  # DDIM's grid is its own


def test_fast_samplers_mnist_runs_a_flow_checkpoint_on_its_own_ode(tmp_path):
    """A tiny flow-matching UNet (2 training steps): --samplers flow-euler flow-heun ddim at 3 and 10 evaluations gives
    flow-euler 3 and 10 steps, flow-heun 1 and 5 steps (2 and 10 NFE: Heun on every step), each on its uniform tau
    grid, and DDIM through the flow network's noise prediction; an eps checkpoint refuses the flow samplers."""
    from ddpm_lite.checkpoints import export_checkpoint, CHECKPOINT_NAME
    from ddpm_lite.data import load_mnist
    from ddpm_lite.models import UNetConfig
    from ddpm_lite.train import train

    config = dataclasses.replace(CONFIGS["mnist"], name="tiny-flow", prediction="flow", steps=2, batch_size=4,
                                 warmup=1, channels_last=False,
                                 model=UNetConfig(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                                  attention_resolutions=(), groups=4))
    train(config, load_mnist(train=True)[0].tensors[0][:64], tmp_path / "run", progress=False)
    checkpoint = export_checkpoint(tmp_path / "run" / CHECKPOINT_NAME, tmp_path / "tiny_flow.pt")
    out = tmp_path / "flow.csv"
    command = [sys.executable, str(SCRIPTS / "fast_samplers_mnist.py"), str(checkpoint), "--n", "4", "--batch", "4",
               "--nfe", "3", "10", "--samplers", "flow-euler", "flow-heun", "ddim", "--spacing", "karras", "trailing",
               "--no-ddpm", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    rows = list(csv.DictReader(out.open()))
    assert [(row["sampler"], row["spacing"], row["steps"], row["nfe"]) for row in rows] == [
        ("flow-euler", "uniform-tau", "3", "3"), ("flow-heun", "uniform-tau", "1", "2"), ("ddim", "uniform", "3", "3"),
        ("flow-euler", "uniform-tau", "10", "10"), ("flow-heun", "uniform-tau", "5", "10"),
        ("ddim", "uniform", "10", "10")]
    assert all(float(row["frechet_distance"]) > 0 and row["sigma_max"] == "" for row in rows)
    command[command.index(str(checkpoint))] = str(SCRIPTS.parent / "checkpoints" / "mnist.pt")
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode != 0 and "integrate a flow network's velocity" in finished.stderr


def test_fast_samplers_mnist_caps_the_karras_grid_and_refuses_a_cap_on_timestep_spacings(tmp_path):
    """--sigma-max 80 on the tuned preset's cosine schedule (top level 20,291): the rows' sigma_max column is the cap;
    a cap with the trailing spacing is refused before any sampling."""
    out = tmp_path / "capped.csv"
    checkpoint = SCRIPTS.parent / "checkpoints" / "mnist_tuned.pt"
    command = [sys.executable, str(SCRIPTS / "fast_samplers_mnist.py"), str(checkpoint), "--n", "4", "--batch", "4",
               "--nfe", "3", "--samplers", "dpmpp-2m", "--spacing", "karras", "log-snr", "--sigma-max", "80",
               "--no-ddpm", "--out", str(out)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    rows = list(csv.DictReader(out.open()))
    assert [(row["spacing"], row["sigma_max"]) for row in rows] == [("karras", "80.0"), ("log-snr", "80.0")]
    assert "| mnist_tuned | dpmpp-2m | karras | 80.0 | 3 | 3 | 3 | 4 |" in printed
    command[command.index("log-snr")] = "trailing"
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "--sigma-max caps the karras and log-snr grids" in finished.stderr
    assert "['trailing']" in finished.stderr


def test_the_ratio_line_picks_the_best_sampler_within_ten_evaluations():
    sys.path.insert(0, str(SCRIPTS))
    try:
        from fast_samplers_mnist import ratio_lines
    finally:
        sys.path.remove(str(SCRIPTS))
    def row(sampler, budget, steps, nfe, spacing, distance, se):
        return dict(model="m", sampler=sampler, budget=budget, steps=steps, nfe=nfe, spacing=spacing,
                    frechet_distance=distance, frechet_se=se)

    rows = [row("ddpm", 1000, 1000, 1000, "all", 10.0, 0.3), row("ddim", 10, 10, 10, "uniform", 30.0, 1.0),
            row("dpmpp-2m", 10, 10, 10, "karras", 14.0, 0.56), row("heun", 20, 10, 19, "karras", 11.0, 0.4)]
    # ratio 1.4, relative SEs 0.03 and 0.04: 1.4 * hypot(0.03, 0.04) = 1.4 * 0.05 = 0.07
    assert ratio_lines(rows) == ["m: best at 10 NFE is dpmpp-2m (10 NFE, karras), Frechet 14.00 +- 0.56 against "
                                 "DDPM-1000 10.00 +- 0.30: ratio 1.40 +- 0.07 (goal <= 1.5)"]
    rows[2]["sigma_max"] = 80.0  # a capped grid names its top level
    assert ratio_lines(rows)[0].startswith("m: best at 10 NFE is dpmpp-2m (10 NFE, karras, sigma_0 80.0), Frechet 14.00")


def test_tune_mnist_times_the_training_loop_through_its_callback():
    """`tune_mnist.py speed` reads the clock in `train`'s callback(step, model, ema) after each step."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        from tune_mnist import training_images_per_second
    finally:
        sys.path.remove(str(SCRIPTS))
    config = dataclasses.replace(CONFIGS["mnist-ddpm"], batch_size=2, warmup=1)
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, base_channels=8, channel_mults=(1,),
                                                                   attention_resolutions=()))
    images = torch.randn(4, 1, 28, 28)
    assert training_images_per_second(config, images, warm=1, measured=2) > 0


def test_course_time_prints_the_machine_speed_and_times_each_notebook(tmp_path):
    import nbformat

    notebook = tmp_path / "01_tiny.ipynb"
    cell = nbformat.v4.new_code_cell("import time\ntime.sleep(0.5)")
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), notebook)
    command = [sys.executable, str(SCRIPTS / "course_time.py"), "--threads", "1", "--slowest", "1", str(notebook)]
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=300).stdout
    assert "machine speed on 1 threads: float32 matmul peak " in printed and " images/s in sampling calls" in printed
    seconds = float(printed.split("| 01_tiny | ")[1].split(" |")[0])
    assert seconds >= 0.5 and f"total_seconds={seconds:.1f} within_budget=True" in printed
    assert "| 0 | `import time` |" in printed


def test_sigma_max_check_caps_the_karras_grid_and_rejects_a_bad_cap(tmp_path):
    out = tmp_path / "grids.csv"
    checkpoint = SCRIPTS.parent / "checkpoints" / "mnist_tuned.pt"
    command = [sys.executable, str(SCRIPTS / "sigma_max_check.py"), str(checkpoint), "--n", "4", "--cap", "80",
               "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
    rows = list(csv.DictReader(out.open()))
    assert [row["grid"] for row in rows] == ["karras, the schedule's sigma_max", "karras, sigma_max 80", "trailing"]
    assert float(rows[0]["sigma_0"]) > 10_000 and rows[1]["sigma_0"] == "80.0"  # cosine betas: sigma_max about 20,000
    assert all(float(row["frechet_distance"]) > 0 and float(row["frechet_se"]) > 0 and row["n"] == "4" for row in rows)
    finished = subprocess.run([sys.executable, str(SCRIPTS / "sigma_max_check.py"), "missing.pt", "--cap", "0"],
                              capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "--cap must be positive, got 0.0" in finished.stderr


def _compare_objectives(*arguments: str, timeout: int = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPTS / "compare_objectives.py"), *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "DDPM_LITE_OFFLINE": "1"})


def test_compare_objectives_changes_only_the_objective():
    sys.path.insert(0, str(SCRIPTS))
    try:
        from compare_objectives import OBJECTIVES, objective_config
    finally:
        sys.path.remove(str(SCRIPTS))
    base = config_to_dict(CONFIGS["mnist-round1"])
    for name in OBJECTIVES:
        changed = {key for key, value in config_to_dict(objective_config(name)).items() if base[key] != value}
        assert changed <= {"name", "model", "prediction", "loss_weighting", "noise_levels"}, (name, changed)
    assert objective_config("eps").prediction == "eps" and objective_config("eps").loss_weighting is None
    assert objective_config("hybrid").model.learn_variance and not objective_config("v").model.learn_variance
    assert objective_config("flow").prediction == "flow" and objective_config("flow").loss_weighting is None
    edm = objective_config("edm")
    assert (edm.prediction, edm.loss_weighting, edm.noise_levels) == ("edm", "edm", "log-normal")


def test_compare_objectives_runs_and_reports_paired_bits_per_dim(tmp_path):
    """Two objectives for 2 steps (2 samples, 2 held-out digits): the record, the exported model, the learned
    variances scored both ways, and a report whose bits/dim are paired with eps's on the same digits."""
    for name in ("eps", "hybrid"):
        finished = _compare_objectives("run", "--objective", name, "--steps", "2", "--every", "1", "--samples", "2",
                                       "--digits", "2", "--threads", "1", "--out", str(tmp_path))
        assert finished.returncode == 0, finished.stderr
    record = json.loads((tmp_path / "hybrid.json").read_text())
    assert [e["step"] for e in record["evaluations"]] == [1, 2] and record["config"]["model"]["learn_variance"]
    assert set(record["bits_per_dim"]) == {"posterior", "learned"} and len(record["digits"]) == 2
    assert (tmp_path / "hybrid.pt").exists()
    out = tmp_path / "objectives.csv"
    printed = _compare_objectives("report", str(tmp_path), "--out", str(out)).stdout
    assert "| eps | posterior | 2 |" in printed and "| hybrid | learned | 2 |" in printed
    bpd = list(csv.DictReader((tmp_path / "objectives_bpd.csv").open()))
    assert [(row["objective"], row["variance"]) for row in bpd] == [("eps", "posterior")] * 2 + [
        ("hybrid", "posterior")] * 2 + [("hybrid", "learned")] * 2
    assert [row["digit"] for row in bpd] == [str(d) for d in record["digits"]] * 3
    sys.path.insert(0, str(SCRIPTS))
    try:
        from compare_objectives import bits_per_dim_summary
    finally:
        sys.path.remove(str(SCRIPTS))
    summary = {(row["objective"], row["variance"]): row for row in bits_per_dim_summary(bpd)}
    assert summary[("eps", "posterior")]["minus_eps"] == 0 and summary[("hybrid", "learned")]["minus_eps_se"] > 0
    hybrid = [float(row["bits_per_dim"]) for row in bpd[4:]]
    assert math.isclose(summary[("hybrid", "learned")]["bits_per_dim"], sum(hybrid) / 2, rel_tol=1e-12)
    assert len(list(csv.DictReader(out.open()))) == 4  # two evaluations of each


def test_compare_objectives_rejects_an_unknown_objective_and_a_bad_count():
    finished = _compare_objectives("all", "--objectives", "eps,vee", "--out", "unused")
    assert finished.returncode == 2 and "unknown ['vee']" in finished.stderr
    finished = _compare_objectives("run", "--objective", "eps", "--steps", "0", "--out", "unused")
    assert finished.returncode == 2 and "--steps must be at least 1, got 0" in finished.stderr


def test_quality_per_minute_states_each_round_2_target_with_its_verdict():
    sys.path.insert(0, str(SCRIPTS))
    try:
        from quality_per_minute import PREVIOUS, target_lines
    finally:
        sys.path.remove(str(SCRIPTS))
    from types import SimpleNamespace
    assert PREVIOUS in CONFIGS

    def row(frechet, confident, classes):
        return {"metrics": SimpleNamespace(frechet_distance=frechet, confident_share=confident, classes_covered=classes)}

    met = target_lines(row(2.0, 0.91, 10), dict(row(4.2, 0.8, 10), name="`mnist-round1`"))
    assert met == ["target: confident share >= 90%: 91.0% (met)", "target: classes covered 10/10: 10/10 (met)",
                   "target: Frechet distance <= half of `mnist-round1`'s 4.20 in this run (<= 2.10): 2.00 (met)"]
    missed = target_lines(row(2.2, 0.899, 9), dict(row(4.2, 0.8, 10), name="`mnist-round1`"))
    assert [line.endswith("(NOT met)") for line in missed] == [True, True, True]
