"""The evaluation protocols and the scripts' shared output (ddpm_lite.evaluate)."""

from __future__ import annotations

import csv
from pathlib import Path

import math

import pytest
import torch
from torch import nn

from ddpm_lite.data import load_mnist
from ddpm_lite.elbo import vlb_terms
from ddpm_lite.evaluate import (
    bits_per_dim_per_digit, ddim_mixture_rows, digit_quality, markdown_table, read_markdown_table, table_number,
    write_rows,
)
from ddpm_lite.schedules import NoiseSchedule


def test_markdown_table_formats_each_column_by_its_spec():
    rows = [dict(name="a", share=0.5, n=3), dict(name="b", share=0.125, n=10)]
    table = markdown_table(rows, {"name": "name", "share": "share:.1%", "n": "n"})
    assert table.splitlines() == ["| name | share | n |", "|---|---|---|", "| a | 50.0% | 3 |", "| b | 12.5% | 10 |"]


def test_read_markdown_table_reads_what_markdown_table_writes(tmp_path):
    """The record's tables round-trip: bold marks dropped, the table found by its first header, others ignored."""
    rows = [dict(name="**w = 3**", share=0.5), dict(name="w = 5", share=0.125)]
    page = tmp_path / "record.md"
    page.write_text("# Record\n\n| other | x |\n|---|---|\n| 1 | 2 |\n\ntext\n\n"
                    + markdown_table(rows, {"images": "name", "share": "share:.1%"}) + "\n\nafter\n")
    assert read_markdown_table(page, "images") == [{"images": "w = 3", "share": "50.0%"},
                                                   {"images": "w = 5", "share": "12.5%"}]
    assert [table_number(row["share"]) for row in read_markdown_table(page, "images")] == [0.5, 0.125]
    assert table_number("**1,112,801**") == 1112801.0
    with pytest.raises(ValueError, match="no markdown table with first header 'missing'"):
        read_markdown_table(page, "missing")
    with pytest.raises(ValueError, match="cell must be a number"):
        table_number("10/10")


def test_the_guidance_tables_that_notebook_09_reads_are_in_the_record():
    """Notebook 09 reads these two tables of results/checkpoints.md by their first header."""
    record = Path(__file__).resolve().parent.parent / "results" / "checkpoints.md"
    guidance = read_markdown_table(record, "images, n = 500")
    assert [row["images, n = 500"] for row in guidance][:2] == ["real held-out digits", "w = 0"]
    assert len(guidance) == 7 and all(0 < table_number(row["diversity"]) < 2 for row in guidance)
    nearest = read_markdown_table(record, "images, n = 200")
    assert [row["images, n = 200"] for row in nearest] == ["real held-out digits", "samples, w = 0", "samples, w = 3"]


def test_write_rows_round_trips_through_csv(tmp_path):
    rows = [dict(steps=10, eta=0.0), dict(steps=20, eta=1.0)]
    path = write_rows(rows, tmp_path / "deep" / "rows.csv", fields=["steps", "eta", "missing"])
    with path.open() as file:
        read = list(csv.DictReader(file))
    assert read == [{"steps": "10", "eta": "0.0", "missing": ""}, {"steps": "20", "eta": "1.0", "missing": ""}]


def test_ddim_mixture_rows_are_paired_trials_with_a_standard_error():
    """A small grid (2,000 points, 2 trials): one row per (S, eta), in order, the same floor for all; at S = 10 the
    DDPM-like sampler (eta = 1) is further from the data than the deterministic one, as at full size
    (results/ddim_grid.md), by more than both standard errors."""
    rows = ddim_mixture_rows(n=2000, repeats=2, steps_list=(10, 50), etas=(0.0, 1.0))
    assert [(r["steps"], r["eta"]) for r in rows] == [(10, 0.0), (10, 1.0), (50, 0.0), (50, 1.0)]
    assert len({r["sliced_wasserstein_floor"] for r in rows}) == 1
    assert all(r["sliced_wasserstein_se"] > 0 and r["repeats"] == 2 for r in rows)
    eta_0, eta_1 = rows[0], rows[1]
    gap = eta_1["sliced_wasserstein"] - eta_0["sliced_wasserstein"]
    assert gap > eta_0["sliced_wasserstein_se"] + eta_1["sliced_wasserstein_se"], rows[:2]


@pytest.mark.parametrize("bad", [0, -1])
def test_ddim_mixture_rows_rejects_a_bad_sample_size(bad):
    with pytest.raises(ValueError, match="n must be a positive int"):
        ddim_mixture_rows(n=bad, repeats=2, steps_list=(10,), etas=(0.0,))


class _Shrink(nn.Module):
    """A stand-in noise predictor eps(x_t, t) = scale * x_t, with a train/eval flag to watch."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.scale * x_t


def test_bits_per_dim_per_digit_gives_each_digit_its_own_noise():
    """Each digit's value is `vlb_terms` on that digit alone with the generator seed + i (eq:elbo-decomposition,
    eq:bits-per-dim), so digits[1:3] with seed + 1 recompute the same two numbers exactly, and two models on the same
    digits see the same x_t (a model against itself differs by exactly 0)."""
    schedule = NoiseSchedule.named("linear", 50)
    digits = load_mnist(train=False)[0].tensors[0][[3, 70, 140]]
    model = _Shrink(0.5)
    values = bits_per_dim_per_digit(model, schedule, digits, seed=7, timesteps_per_call=10)
    assert values.shape == (3,) and values.dtype == torch.float64
    alone = vlb_terms(model, schedule, digits[2:3], generator=torch.Generator().manual_seed(9)).bits_per_dim
    assert torch.equal(values[2:], alone)
    assert torch.equal(bits_per_dim_per_digit(model, schedule, digits[1:], seed=8, timesteps_per_call=25), values[1:])
    other = bits_per_dim_per_digit(_Shrink(0.4), schedule, digits, seed=7, timesteps_per_call=10)
    assert not torch.equal(other, values)
    beta = bits_per_dim_per_digit(model, schedule, digits, "beta", seed=7, timesteps_per_call=10)
    assert not torch.equal(beta, values)  # the variance reaches vlb_terms


def test_digit_quality_scores_the_same_noise_for_every_model_and_restores_the_mode():
    """A stand-in network that shrinks x_t gives no confident digits; the binomial SE follows from the share; the
    same seed gives the same numbers, and the model goes back to training mode."""
    schedule = NoiseSchedule.named("cosine", 100)
    reference = load_mnist(train=True)[0].tensors[0][:200]
    model = _Shrink(0.9).train()
    first = digit_quality(model, schedule, 6, reference, steps=5, batch=4, resamples=10)
    assert model.training
    assert first == digit_quality(model, schedule, 6, reference, steps=5, batch=4, resamples=10)
    assert set(first) == {"n", "frechet_distance", "frechet_se", "confident_share", "confident_se", "classes_covered"}
    share = first["confident_share"]
    assert first["n"] == 6 and first["frechet_distance"] > 0 and first["frechet_se"] > 0
    assert first["confident_se"] == round(math.sqrt(share * (1 - share) / 6), 4)
    assert digit_quality(model, schedule, 6, reference, steps=5, batch=4, seed=5, resamples=10) != first
