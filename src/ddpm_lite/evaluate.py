"""Evaluation protocols behind the committed results (results/): one function per protocol, called alike by the
script that wrote the record (scripts/) and by a notebook that recomputes part of it live, so the two cannot drift.

- `ddim_mixture_rows`: DDIM's S x eta grid on the 2-D mixture with the exact noise predictor (every error is the
  sampler's): sliced Wasserstein distance to the data, mean and standard error over trials, beside the data floor.
- `ddim_mnist_rows`: the same grid on MNIST from a checkpoint, plus a DDPM-T reference row: offline digit metrics.
- `fast_sampler_mnist_rows`: digit quality against network evaluations (NFE) for DDIM, Heun and DPM-Solver++ 2M, with
  a DDPM-T reference row.
- `digit_quality`: offline digit metrics of DDIM-100 (eta = 1) samples, the protocol of the recipe benchmarks
  (quality_per_minute.py, compare_objectives.py).
- `bits_per_dim_per_digit`: each held-out digit's bits/dim from the variational bound, with its own noise, so a
  notebook recomputes any subset exactly.
- `toy_sample_report`: the CLI's verdict after training on 2-D data: sliced Wasserstein of DDPM samples against its
  data-vs-data floor.
- `read_markdown_table`, `table_number`: a notebook reads the record's numbers from results/*.md instead of typing
  them again.
- `script_parser`, `machine_line`, `markdown_table`, `write_rows`: the scripts' one convention. Every script in
  scripts/ runs as `python scripts/NAME.py [INPUTS] [--threads N] [--out FILE]`, prints a line naming the machine,
  threads, torch version and date, then its markdown table(s) for results/, and with `--out` writes the same rows as
  CSV.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ddpm_lite.checkpoints import load_for_sampling
from ddpm_lite.configs import TrainConfig
from ddpm_lite.data import load_mnist, toy_points
from ddpm_lite.digits import DigitClassifier, digit_metrics, load_digit_classifier
from ddpm_lite.elbo import ReverseVariance, vlb_terms
from ddpm_lite.metrics import sliced_wasserstein, sliced_wasserstein_floor
from ddpm_lite.mixture import MixtureEpsModel, default_mixture
from ddpm_lite.samplers import ddim_sample, ddpm_sample, sample_in_batches
from ddpm_lite.schedules import NoiseSchedule

STEPS = (10, 20, 50, 100, 1000)  # the DDIM paper's Table 1 columns S
ETAS = (0.0, 0.2, 0.5, 1.0)  # and its rows eta


def ddim_mixture_rows(n: int = 20_000, repeats: int = 3, steps_list: Sequence[int] = STEPS,
                      etas: Sequence[float] = ETAS, progress: bool = False) -> list[dict]:
    """One row per (S, eta): sliced Wasserstein distance of n DDIM samples (exact predictor, linear schedule, T =
    1000) to n data points, mean and standard error over `repeats` trials. Each trial has fresh starting noise and
    fresh reference data, shared by all etas of the trial, so differences between etas are paired."""
    schedule = NoiseSchedule.named("linear", 1000)
    mixture = default_mixture()
    model = MixtureEpsModel(mixture, schedule)
    floor, floor_sd = sliced_wasserstein_floor(lambda k, g: mixture.sample(k, g), n, repeats=max(repeats, 5),
                                               generator=torch.Generator().manual_seed(1))
    rows = []
    for steps, eta in tqdm([(s, e) for s in steps_list for e in etas], desc="mixture cells", disable=not progress):
        start, distances = time.perf_counter(), []
        for trial in range(repeats):
            reference = mixture.sample(n, torch.Generator().manual_seed(100 + trial))
            x = ddim_sample(model, schedule, (n, 2), steps=steps, eta=eta, progress=False,
                            generator=torch.Generator().manual_seed(200 + trial))
            distances.append(sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(300 + trial)))
        mean = sum(distances) / repeats
        se = (sum((d - mean) ** 2 for d in distances) / (repeats - 1) / repeats) ** 0.5
        rows.append(dict(dataset="mixture", model="exact", device="cpu", sampler="ddim", steps=steps, eta=eta,
                         n=n, repeats=repeats, sliced_wasserstein=round(mean, 5), sliced_wasserstein_se=round(se, 5),
                         sliced_wasserstein_floor=round(floor, 5), floor_sd=round(floor_sd, 5),
                         seconds=round(time.perf_counter() - start, 1)))
    return rows


def ddim_mnist_rows(checkpoint: str | os.PathLike, n: int, device: str = "cpu", batch: int = 50,
                    steps_list: Sequence[int] = STEPS, ddpm: bool = True, etas: Sequence[float] = ETAS,
                    progress: bool = False) -> list[dict]:
    """One row per (S, eta), plus a DDPM-T row first when `ddpm`: offline digit metrics (Frechet distance in the
    course classifier's features, not Inception-FID; confident share) of n samples against the training digits.
    Samples are drawn `batch` at a time, batch k seeded 10 + its first row, the same for every cell."""
    model, schedule, config = load_for_sampling(checkpoint, device)
    reference = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier()
    cells = [("ddpm", config.T, 1.0)] * ddpm + [("ddim", steps, eta) for steps in steps_list for eta in etas]
    rows = []
    for sampler, steps, eta in tqdm(cells, desc=f"{Path(checkpoint).stem} cells", disable=not progress):
        start = time.perf_counter()

        def sample(batch_rows: slice, generator: torch.Generator) -> torch.Tensor:
            shape = (len(range(n)[batch_rows]), 1, 28, 28)
            if sampler == "ddpm":
                return ddpm_sample(model, schedule, shape, generator=generator, progress=False)
            return ddim_sample(model, schedule, shape, steps=steps, eta=eta, generator=generator, progress=False)

        x = sample_in_batches(sample, n, batch, seed=10)
        m = digit_metrics(x.clamp(-1, 1), reference, classifier)
        rows.append(dict(dataset="mnist", model=Path(checkpoint).stem, device=str(device), sampler=sampler,
                         steps=steps, eta=eta, n=n, frechet_distance=round(m.frechet_distance, 3),
                         confident_share=round(m.confident_share, 4), classes_covered=m.classes_covered,
                         seconds=round(time.perf_counter() - start, 1)))
    return rows


FAST_SAMPLERS = ("ddim", "heun", "dpmpp-2m")  # DDIM (eta = 0) and the solvers of ddpm_lite.solvers
FLOW_SAMPLERS = ("flow-euler", "flow-heun")  # ddpm_lite.flow.flow_sample on a flow network's own velocity, uniform in tau
NFE_BUDGETS = (3, 5, 10, 20, 50)


def solver_steps(sampler: str, budget: int) -> int:
    """The most steps `sampler` takes within `budget` network evaluations: Heun's N steps cost 2N - 1 (its last step
    to sigma = 0 is Euler's), flow-heun's 2N (a flow's field is finite at tau = 0), the others N."""
    if sampler == "flow-heun":
        return max(budget // 2, 1)
    return (budget + 1) // 2 if sampler == "heun" else budget


def fast_sampler_mnist_rows(checkpoint: str | os.PathLike, n: int, budgets: Sequence[int] = NFE_BUDGETS,
                            samplers: Sequence[str] = FAST_SAMPLERS, spacing: str = "karras", batch: int = 50,
                            ddpm: bool = True, device: str = "cpu", progress: bool = False,
                            sigma_max: float | None = None) -> list[dict]:
    """Digit quality against network evaluations (NFE): one row per (budget, sampler), plus a DDPM-T row first when
    `ddpm`. DDIM runs with eta = 0 on its uniform (leading) spacing; Heun and DPM-Solver++ 2M on `spacing`, each with
    the most steps its budget allows (`solver_steps`), a Karras or log-SNR grid capped at `sigma_max` when given (the
    rows' `sigma_max` column is the grid's top level, blank for DDPM and DDIM). A flow checkpoint (prediction
    "flow") also runs `FLOW_SAMPLERS`, Euler and Heun on its own velocity with steps uniform in tau
    (`ddpm_lite.flow.flow_sample`; spacing "uniform-tau"); the diffusion samplers run it through its noise
    prediction. Offline digit metrics of n samples
    (Frechet distance in the course classifier's features, not Inception-FID, with its bootstrap standard error
    `frechet_se` over 100 resamplings of the n samples; confident share; classes) against the training digits;
    samples drawn `batch` at a time, batch k seeded 10 + its first row, the same noise for every cell; `seconds` is
    the sampling's wall time."""
    from ddpm_lite.flow import flow_sample, network_velocity
    from ddpm_lite.flow import nfe as flow_nfe
    from ddpm_lite.solvers import fast_sample, nfe, sigma_schedule

    model, schedule, config = load_for_sampling(checkpoint, device)
    sigma_schedule(schedule, 1, spacing, sigma_max=sigma_max)  # checks spacing and sigma_max before any sampling
    flow = [sampler for sampler in samplers if sampler in FLOW_SAMPLERS]
    if flow and config.prediction != "flow":
        raise ValueError(f"samplers {flow} integrate a flow network's velocity, but {checkpoint} was trained with "
                         f"prediction={config.prediction!r}")
    reference = load_mnist(train=True)[0].tensors[0]
    classifier = load_digit_classifier()
    cells = [("ddpm", config.T)] * ddpm + [(sampler, budget) for budget in budgets for sampler in samplers]
    rows = []
    for sampler, budget in tqdm(cells, desc=f"{Path(checkpoint).stem} cells", disable=not progress):
        steps = config.T if sampler == "ddpm" else solver_steps(sampler, budget)
        start = time.perf_counter()

        def sample(batch_rows: slice, generator: torch.Generator) -> torch.Tensor:
            shape = (len(range(n)[batch_rows]), 1, 28, 28)
            if sampler == "ddpm":
                return ddpm_sample(model, schedule, shape, generator=generator, progress=False)
            if sampler == "ddim":
                return ddim_sample(model, schedule, shape, steps=steps, generator=generator, progress=False)
            if sampler in FLOW_SAMPLERS:
                return flow_sample(network_velocity(model, schedule.T), shape, steps=steps,
                                   solver=sampler.removeprefix("flow-"), generator=generator, progress=False)
            return fast_sample(model, schedule, shape, solver=sampler, steps=steps, spacing=spacing,
                               sigma_max=sigma_max, generator=generator, progress=False)

        x = sample_in_batches(sample, n, batch, seed=10)
        seconds = time.perf_counter() - start  # sampling only
        m = digit_metrics(x.clamp(-1, 1), reference, classifier, resamples=100)
        solver = sampler in FAST_SAMPLERS and sampler != "ddim"
        top = round(sigma_schedule(schedule, steps, spacing, sigma_max=sigma_max)[0].item(), 1) if solver else ""
        spent = (flow_nfe(sampler.removeprefix("flow-"), steps) if sampler in FLOW_SAMPLERS
                 else nfe(sampler, steps) if solver else steps)
        rows.append(dict(model=Path(checkpoint).stem, sampler=sampler,
                         spacing={"ddpm": "all", "ddim": "uniform"}.get(sampler, "uniform-tau" if sampler in FLOW_SAMPLERS
                                                                             else spacing),
                         sigma_max=top, budget=budget, steps=steps, nfe=spent, n=n,
                         frechet_distance=round(m.frechet_distance, 3), frechet_se=round(m.frechet_se, 3),
                         confident_share=round(m.confident_share, 4),
                         classes_covered=m.classes_covered, seconds=round(seconds, 1)))
    return rows


def digit_quality(model: torch.nn.Module, schedule: NoiseSchedule, n: int, reference: torch.Tensor,
                  classifier: DigitClassifier | None = None, *, steps: int = 100, eta: float = 1.0, batch: int = 50,
                  seed: int = 1000, resamples: int = 100) -> dict:
    """Offline digit metrics of n DDIM-`steps` samples (eta = 1 by default: DDPM's reverse variance on a 100-step
    grid) against `reference` digits (N, 1, 28, 28): Frechet distance in the course classifier's features (not
    Inception-FID) with its bootstrap standard error over `resamples` resamplings, the confident share with its
    binomial standard error, and the classes covered. Batch k is seeded `seed` + its first row, so every model gets
    the same starting noise. The model is switched to eval mode for sampling and back."""
    was_training = model.training
    model.eval()
    try:
        x = sample_in_batches(lambda rows, g: ddim_sample(model, schedule, (len(range(n)[rows]), 1, 28, 28),
                                                          steps=steps, eta=eta, generator=g, progress=False),
                              n, batch, seed=seed)
    finally:
        model.train(was_training)
    m = digit_metrics(x.clamp(-1, 1), reference, classifier, resamples=resamples)
    share = m.confident_share
    return dict(n=n, frechet_distance=round(m.frechet_distance, 3), frechet_se=round(m.frechet_se, 3),
                confident_share=round(share, 4), confident_se=round((share * (1 - share) / n) ** 0.5, 4),
                classes_covered=m.classes_covered)


def bits_per_dim_per_digit(model: torch.nn.Module, schedule: NoiseSchedule, digits: torch.Tensor,
                           variance: ReverseVariance = "posterior", *, seed: int = 0,
                           timesteps_per_call: int = 100) -> torch.Tensor:
    """Each digit's bits/dim from DDPM's variational bound (`elbo.vlb_terms`, all T terms, the discretised decoder),
    (N,) float64, for digits (N, 1, 28, 28) in [-1, 1]. Digit i draws its x_t from its own generator, seeded
    `seed` + i, so another model on the same digits sees the same noise (differences between models are paired)
    and digits[k:m] with seed + k recompute those digits' values exactly. variance: the reverse variance, "posterior" (tilde-beta), "beta" or "learned" (a network that learns
    it). math/elbo.tex eq:elbo-decomposition, eq:bits-per-dim"""
    values = [vlb_terms(model, schedule, digit[None], variance=variance, timesteps_per_call=timesteps_per_call,
                        generator=torch.Generator().manual_seed(seed + i)).bits_per_dim
              for i, digit in enumerate(digits)]
    return torch.cat(values)


def write_rows(rows: Sequence[dict], path: str | os.PathLike, fields: Sequence[str] | None = None) -> Path:
    """Write `rows` as CSV to `path` (folders created), columns `fields` (default: the first row's keys); missing
    values are left empty. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(fields or rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def toy_sample_report(model, config: TrainConfig, device: torch.device | str | None = None) -> str:
    """For 2-D configs: sliced Wasserstein of 2,000 DDPM samples against the data, and the data-vs-data floor."""
    n = 2000
    schedule = NoiseSchedule.named(config.schedule, config.T)
    samples = ddpm_sample(model, schedule, (n, 2), generator=torch.Generator().manual_seed(1), device=device,
                          progress=False).cpu()

    def draw(size: int, generator: torch.Generator) -> torch.Tensor:
        return toy_points(config.data, size, generator)

    reference = draw(n, torch.Generator().manual_seed(2))
    distance = sliced_wasserstein(samples, reference, generator=torch.Generator().manual_seed(3))
    floor, spread = sliced_wasserstein_floor(draw, n, generator=torch.Generator().manual_seed(4))
    return (f"sliced Wasserstein (2,000 DDPM-{config.T} samples vs data): {distance:.4f}; data-vs-data floor at "
            f"the same size: {floor:.4f} +- {spread:.4f}; ratio {distance / floor:.2f}")


def script_parser(doc: str, *, threads: int = 2, out: str | None = None) -> argparse.ArgumentParser:
    """An argument parser with the scripts' shared options: `--threads` (torch CPU threads, default `threads`) and
    `--out` (the CSV to write; default `out`, None for none)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=threads, help=f"torch CPU threads (default {threads})")
    parser.add_argument("--out", default=out, help="CSV to write, one row per line of the table"
                                                   + (f" (default {out})" if out else " (default: none)"))
    return parser


def machine_line(threads: int) -> str:
    """What a measurement ran on: architecture, cores, threads, torch version, today's date."""
    return (f"{platform.machine()}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}, "
            f"{time.strftime('%Y-%m-%d')}")


def markdown_table(rows: Sequence[dict], columns: dict[str, str]) -> str:
    """A markdown table of `rows`: `columns` maps each header to a format spec applied to row[header's key], given
    as 'key' or 'key:spec' (e.g. {'Frechet distance': 'frechet_distance:.2f'})."""
    keys = [(header, *column.split(":", 1)) for header, column in columns.items()]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format(row[key], spec[0]) if spec else str(row[key]) for _, key, *spec in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def read_markdown_table(path: str | os.PathLike, first_header: str) -> list[dict[str, str]]:
    """The rows of the markdown table in `path` whose header row starts with the cell `first_header`, each a dict
    from header to cell text with bold marks removed. ValueError naming the file and header if there is none."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()

    def cells(line: str) -> list[str]:
        return [cell.strip().strip("*").strip() for cell in line.strip().strip("|").split("|")]

    for number, line in enumerate(lines):
        if line.startswith("|") and cells(line)[0] == first_header:
            headers, rows = cells(line), []
            for row in lines[number + 2:]:  # the line after the header is the |---| separator
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(headers, cells(row))))
            return rows
    raise ValueError(f"no markdown table with first header {first_header!r} in {path}")


def table_number(cell: str) -> float:
    """A table cell as a number: '96.8%' -> 0.968, '0.69' -> 0.69, '1,112,801' -> 1112801.0."""
    text = cell.strip().strip("*").replace(",", "")
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ValueError(f"cell must be a number or a percentage, got {cell!r}") from None
