"""The report's text follows the numbers: nothing in Observations is fixed prose, and the seed's
layout is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from job.results.report import cell, efficiency_table, render_report, results_table
from job.results.schema import Stat
from job.results.verdict import combine
from tests.records import records, result

LABELS = [i % 15 for i in range(1000)]
SEED_REPORT = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed_report.md"


def pair(lora_test: int, lora_seconds: float = 50.0, seeds: tuple[int, ...] = (42,)) -> str:
    runs = []
    for seed in seeds:
        runs.append(result("lora", lr=5e-4, seed=seed, dev_right=555, test_right=lora_test, labels=LABELS,
                           seconds=lora_seconds + seed % 3, test_start=40))  # fmt: skip
        runs.append(result("full_finetune", lr=5e-5, seed=seed, dev_right=560, test_right=550, labels=LABELS,
                           seconds=100.0))  # fmt: skip
    return render_report(combine(records(runs, LABELS)))


def test_mean_std_cells() -> None:
    assert cell(Stat(mean=0.51234, std=0.0, n=1), 4) == "0.5123"
    assert cell(Stat(mean=0.51234, std=0.01234, n=3), 4) == "0.5123 ± 0.0123 (n=3)"
    assert cell(Stat(mean=52.25, std=1.5, n=3), 1) == "52.2 ± 1.5 (n=3)"


def test_seed_config_keeps_the_seed_layout() -> None:
    report = pair(545)
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert headings[0] == "# ERNIE 3.0 Medium: LoRA vs Full Fine-Tuning"
    assert [h for h in headings if h.startswith("## ")] == [
        "## Configuration", "## Results", "## Observations", "## Artifacts",
    ]  # fmt: skip
    table = report.split("## Results\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    expected = "| lora (r=16, α=32, dropout=0.1, lr=0.0005) | 306,447 | 75,734,031 | 50.0 | 0.5550 | 0.5450 |"
    assert table[2] == expected + " 1.0000 | 1.1000 |"
    if SEED_REPORT.is_file():  # header and alignment row exactly as the seed's
        seed = SEED_REPORT.read_text(encoding="utf-8").split("## Results\n\n", 1)[1].splitlines()
        assert table[:2] == seed[:2]
    assert "±" not in "\n".join(table) and "One seed per row" in report


def test_several_seeds_give_mean_and_spread() -> None:
    report = pair(545, seeds=(1, 2, 3))
    table = report.split("## Results\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert "| 51.0 ± 1.0 (n=3) | 0.5550 ± 0.0000 (n=3) |" in table[2]
    assert "### Every run" in report and "`lora_lr0.0005_s3`" in report
    assert "One seed per row" not in report
    assert "McNemar p = " in report and "(seed 1)" in report and "(seed 3)" in report


def test_observations_follow_the_verdict() -> None:
    close = pair(545)
    far = pair(380)
    assert "Verdict: LoRA is 0.5 points below full fine-tuning (95% CI −" in close
    assert "no significant difference at this sample size" in close
    assert "Verdict: LoRA is 17.0 points below full fine-tuning (95% CI −" in far
    assert "full fine-tuning is significantly better" in far
    assert "LoRA trained 0.41% as many parameters as full fine-tuning (306,447 vs 75,439,119)." in far


def test_observations_follow_the_time_ratio_and_chance_level() -> None:
    assert "(LoRA 4.00x faster)" in pair(500, lora_seconds=25.0)
    assert "(LoRA 2.00x slower)" in pair(500, lora_seconds=200.0)
    assert "chance" not in pair(500)
    assert "lr=0.0005) is within two standard errors of chance" in pair(70)


def test_tables_show_every_row_with_its_numbers() -> None:
    combined = combine(records([result("lora", lr=5e-4, seed=1, dev_right=500, test_right=490, labels=LABELS)],
                               LABELS))  # fmt: skip
    table = results_table(combined.headline)
    assert "| 50.0 | 0.5000 | 0.4900 | 1.0000 | 1.1000 |" in table
    changed = combine(records([result("lora", lr=5e-4, seed=1, dev_right=500, test_right=610, labels=LABELS)],
                              LABELS))  # fmt: skip
    assert "| 0.6100 |" in results_table(changed.headline) and "| 0.6100 |" not in table
    full = combine(records([result("full_finetune", lr=5e-5, seed=1, dev_right=5, test_right=5, labels=LABELS,
                                   seconds=100.0)], LABELS))  # fmt: skip
    assert "| full_finetune (lr=5e-05) | 5.1 | 1,000 | 2.300 | 1.200 | 100.000% |" in efficiency_table(
        full.headline, full.runs
    )


@pytest.mark.parametrize("seeds", [(42,), (1, 2)])
def test_rate_choice_is_explained_only_when_rates_were_tried(seeds: tuple[int, ...]) -> None:
    assert "chosen on mean dev accuracy" not in pair(500, seeds=seeds)


def test_rate_choice_names_every_rate_tried_and_the_one_chosen_on_dev() -> None:
    runs = []
    for seed in (1, 2):
        for rate, dev in ((1e-4, 520), (5e-4, 600)):
            runs.append(result("lora", lr=rate, seed=seed, dev_right=dev, test_right=500, labels=LABELS))
        runs.append(result("full_finetune", lr=5e-5, seed=seed, dev_right=560, test_right=550, labels=LABELS))
    report = render_report(combine(records(runs, LABELS)))
    paragraph = next(line for line in report.splitlines() if line.startswith("Learning rates were chosen"))
    assert paragraph == (
        "Learning rates were chosen on mean dev accuracy over seeds, never on test: "
        "lora: 0.0001 → 52.00%, 0.0005 → 60.00% (chosen); full_finetune: 5e-05 → 56.00% (chosen)."
    )
