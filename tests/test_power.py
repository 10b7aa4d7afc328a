"""The verdict's error rates and power, measured by simulation with fixed seeds through the verdict's
own rules (job.results.power.simulate), and what `job plan` says the planned comparison can show."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.results.power import (
    MODEL,
    POWER_GAPS,
    POWER_SEEDS,
    POWER_TITLES,
    TitleModel,
    planned_reach,
    power_cell,
    simulate,
)
from job.results.stats import detectable_difference

POWER_PAGE = Path(__file__).resolve().parents[1] / "docs" / "power.md"
DATASETS = 1000  # a rate of 5% is measured to +-1.4 points (two standard errors)


def test_the_simulated_runs_have_the_accuracy_and_disagreement_the_model_states() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    row, full = MODEL.outcomes(rng, titles=20_000, seeds=2, gap=0.04)
    assert full.mean() == pytest.approx(0.57, abs=0.01) and row.mean() == pytest.approx(0.53, abs=0.01)
    assert (full[0] != full[1]).mean() == pytest.approx(0.15, abs=0.01)  # two runs of equal accuracy
    wide = TitleModel(seed_sd=0.05)  # a run-level spread shows as spread between the seeds' accuracies
    accuracies = [wide.outcomes(rng, titles=20_000, seeds=1, gap=0.0)[1].mean() for _ in range(40)]
    assert float(np.std(accuracies, ddof=1)) == pytest.approx(0.05, rel=0.3)


@pytest.mark.parametrize("seeds", [1, 3])
def test_at_no_difference_at_most_5_percent_of_comparisons_are_called_significant(seeds: int) -> None:
    found = simulate(gap=0.0, titles=256, seeds=seeds, margin=0.05, datasets=DATASETS, seed=11)
    assert found["significant"] <= 0.05
    assert found["significant"] > 0.005  # a test that never rejects would pass the bound: it does reject


@pytest.mark.parametrize("seeds", [1, 3])
def test_noninferiority_is_wrongly_granted_at_most_5_percent_when_the_gap_equals_the_margin(seeds: int) -> None:
    """A 5-point margin, which 256 titles can show: granted at most 5% of the time for a row exactly 5
    points below, and most of the time for a row level with full fine-tuning."""
    at_margin = simulate(gap=0.05, titles=256, seeds=seeds, margin=0.05, datasets=DATASETS, seed=12)
    assert at_margin["noninferior"] <= 0.05
    level = simulate(gap=0.0, titles=256, seeds=seeds, margin=0.05, datasets=400, seed=13)
    assert level["noninferior"] > 0.4


def test_the_planned_detectable_difference_is_found_about_80_percent_of_the_time() -> None:
    """With 3 seeds the interval, which carries their spread, is what a difference must clear: wider
    than the exact test alone (2.0 points at 1,000 titles)."""
    reach = planned_reach(titles=1000, seeds=3, rows=1, margin=0.01)
    assert 100 * detectable_difference(math.sqrt(0.15 / 3), 1000) == pytest.approx(2.0, abs=0.05)
    assert reach.detectable == pytest.approx(MODEL.needed_width(titles=1000, seeds=3, margin_power=0.8))
    assert 100 * reach.detectable == pytest.approx(3.5, abs=0.05)
    found = simulate(gap=reach.detectable, titles=1000, seeds=3, margin=0.01, datasets=400, seed=14)
    assert 0.70 <= found["significant"] <= 0.90
    half = simulate(gap=reach.detectable / 2, titles=1000, seeds=3, margin=0.01, datasets=400, seed=15)
    assert half["significant"] < 0.45  # power falls with the gap


def test_holm_over_more_rows_raises_the_detectable_difference() -> None:
    one, four = (planned_reach(titles=256, seeds=1, rows=rows, margin=0.01).detectable for rows in (1, 4))
    assert 100 * one == pytest.approx(6.8, abs=0.05) and 100 * four == pytest.approx(8.1, abs=0.05)


def test_the_margin_is_in_reach_where_the_plan_says_and_the_titles_it_names_reach_it() -> None:
    short = planned_reach(titles=256, seeds=1, rows=1, margin=0.02)
    assert not short.margin_shown and short.titles_for_margin is not None
    assert short.titles_for_margin == pytest.approx(0.15 * ((1.959964 + 0.841621) / 0.02) ** 2, rel=0.01)
    assert planned_reach(titles=short.titles_for_margin, seeds=1, rows=1, margin=0.02).margin_shown
    # With seeds, their own spread bounds what titles can do: then the plan names the seeds that would.
    seeded = planned_reach(titles=10_000, seeds=3, rows=1, margin=0.01)
    assert not seeded.margin_shown and seeded.titles_for_margin is None and seeded.seeds_for_margin == 8
    assert planned_reach(titles=10_000, seeds=8, rows=1, margin=0.01).margin_shown


def test_job_plan_prints_what_the_comparison_can_detect_and_whether_the_margin_is_in_reach() -> None:
    result = CliRunner().invoke(main, ["plan", "--set", "margin=2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[-1] == "array size: 2"
    assert lines[-4].startswith("comparison: 256 test titles x 1 seed: detects a true difference of 6.8 points")
    needed = planned_reach(titles=256, seeds=1, rows=1, margin=0.02).titles_for_margin
    assert lines[-2] == (
        f"margin 2.0 points: out of reach with 256 test titles; about {needed:,} would reach it with 1 seed "
        "(max_eval_samples), or widen `margin`"
    )
    grid = CliRunner().invoke(main, ["plan", "--set", "seed=[1,2,3]", "--set", "max_eval_samples=null"])
    assert "comparison: 10,000 test titles x 3 seeds: detects a true difference of 2.1 points" in grid.output
    assert "about 8 seeds would reach it at 10,000 titles" in grid.output


def test_the_power_page_holds_what_the_simulation_gives() -> None:
    """docs/power.md is written by `python -m job.results.power` (make docs); its 256-title rows are
    computed again here, cell by cell, and every row's detectable difference."""
    page = POWER_PAGE.read_text(encoding="utf-8")
    for seeds in POWER_SEEDS:
        cells = {gap: power_cell(256, seeds, gap) for gap in POWER_GAPS}
        shares = " | ".join(f"{100 * cells[gap]['significant']:.0f}%" for gap in (0.0, 0.02, 0.04, 0.06))
        assert f"| 256 | {seeds} | {shares} | " in page
        assert (
            f"| 256 | {seeds} | {100 * cells[0.0]['noninferior']:.0f}% | {100 * cells[0.01]['noninferior']:.1f}% |"
            in page
        )
    for titles in POWER_TITLES:
        for seeds in POWER_SEEDS:
            detectable = planned_reach(titles=titles, seeds=seeds, rows=1, margin=0.01).detectable
            assert f"| {titles:,} | {seeds} | " in page and f"| {100 * detectable:.1f} points |" in page


def test_how_it_works_carries_the_power_pages_table() -> None:
    from job.results.power import TABLE_END, TABLE_START, significance_table

    page = POWER_PAGE.read_text(encoding="utf-8")
    how = (POWER_PAGE.parent / "how-it-works.md").read_text(encoding="utf-8")
    copy = how.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    assert copy == significance_table(page).strip()
    rows = [line for line in copy.splitlines() if line.startswith("| ") and line[2].isdigit()]
    cells = [row.split(" | ")[:2] for row in rows]
    assert cells == [[f"| {titles:,}", str(seeds)] for titles in POWER_TITLES for seeds in POWER_SEEDS]
