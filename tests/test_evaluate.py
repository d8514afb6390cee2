"""The evaluation protocols and the scripts' shared output (ddpm_lite.evaluate)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ddpm_lite.evaluate import ddim_mixture_rows, markdown_table, read_markdown_table, table_number, write_rows


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
