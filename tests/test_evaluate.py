"""The evaluation protocols and the scripts' shared output (ddpm_lite.evaluate)."""

from __future__ import annotations

import csv

import pytest

from ddpm_lite.evaluate import ddim_mixture_rows, markdown_table, write_rows


def test_markdown_table_formats_each_column_by_its_spec():
    rows = [dict(name="a", share=0.5, n=3), dict(name="b", share=0.125, n=10)]
    table = markdown_table(rows, {"name": "name", "share": "share:.1%", "n": "n"})
    assert table.splitlines() == ["| name | share | n |", "|---|---|---|", "| a | 50.0% | 3 |", "| b | 12.5% | 10 |"]


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
