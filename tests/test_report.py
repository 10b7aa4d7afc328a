"""The report's text follows the numbers: nothing in Observations is fixed prose, and the seed's
layout is kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from job.results.report import render_report
from job.results.schema import Stat
from job.results.tables import cell, efficiency_table, results_table
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


def test_the_report_opens_with_the_answer_keeps_the_seeds_results_table_and_ends_with_the_config() -> None:
    report = pair(545)
    headings = [line for line in report.splitlines() if line.startswith("#")]
    assert headings[0] == "# ERNIE 3.0 Medium: LoRA vs Full Fine-Tuning"
    # The answer first, then the seed's sections in the seed's order, the configuration (69 lines) last.
    assert [h for h in headings if h.startswith("## ")] == [
        "## Summary", "## Results", "## Observations", "## Artifacts", "## Configuration",
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
    assert "(t = −0.58 with 999.0 df over 3 seeds x 1,000 titles, both random, p = 0.56)" in report
    assert "seeds and titles random: t with 999.0 df, its critical value widened 1.26x for 3 seeds" in report


def test_observations_follow_the_verdict() -> None:
    close = pair(545)
    far = pair(380)
    assert "Verdict: not shown to be good enough: the interval reaches −" in close
    assert "LoRA is 0.5 points below full fine-tuning (exact sign-flip test over 1000 paired titles x 1 seed" in close
    assert "no significant difference, which is not evidence of none" in close
    assert "Verdict: worse: more than 1.0 point below full fine-tuning (95% CI −" in far
    assert "LoRA is 17.0 points below full fine-tuning" in far and "full fine-tuning is significantly better" in far
    assert "LoRA trained 0.405% of its weights (306,447 of 75,734,031); full fine-tuning trained all 75,439,119." in far


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
    run = full.runs[0]  # the row's own costs, as its record gives them
    assert (run.peak_memory_mb, run.optimizer_state_mb, run.checkpoint_mb) == (2310.5, 575.5105, 287.70105)
    assert "| full_finetune (lr=5e-05) | 5.1 | 2,310 | 575.5 | 287.7 | 100% |" in efficiency_table(
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


def three_seed_records(lora_test: int = 545, full_test: int = 550, **config: object) -> list:
    runs = []
    for seed in (1, 2, 3):
        runs.append(result("lora", lr=5e-4, seed=seed, dev_right=555, test_right=lora_test + seed, labels=LABELS,
                           seconds=40.0 + seed, test_start=40))  # fmt: skip
        runs.append(result("full_finetune", lr=5e-5, seed=seed, dev_right=560, test_right=full_test, labels=LABELS,
                           seconds=100.0 + 2 * seed))  # fmt: skip
    saved = records(runs, LABELS)
    if config:
        changed = saved[0].run.config.model_copy(update=config)
        saved = [r.model_copy(update={"run": r.run.model_copy(update={"config": changed})}) for r in saved]
    return saved


def test_the_report_opens_with_each_rows_answer_accuracies_difference_and_its_own_savings() -> None:
    import statistics

    combined = combine(three_seed_records())
    report = render_report(combined)
    summary = report.split("## Summary\n\n", 1)[1].split("## Results", 1)[0]
    c = combined.comparison
    assert c is not None
    lora, full = ([r for r in combined.runs if r.strategy == name] for name in ("lora", "full_finetune"))

    def mean(runs: list, field: str) -> float:
        return statistics.fmean(getattr(r, field) for r in runs)

    accuracy, full_accuracy = (statistics.fmean(r.test.accuracy for r in runs) for runs in (lora, full))
    spread, full_spread = (statistics.stdev(r.test.accuracy for r in runs) for runs in (lora, full))
    low, high = c.accuracy_difference_ci95
    first = summary.splitlines()[0]
    assert first.startswith(f"- **{c.labels['lora']}**: not shown to be good enough: it may be more than 1.0 point "
                            "below full fine-tuning. ")  # fmt: skip
    assert (f"Test accuracy {100 * accuracy:.1f}% ± {100 * spread:.1f} against full fine-tuning's "
            f"{100 * full_accuracy:.1f}% ± {100 * full_spread:.1f} (3 seeds x 1,000 titles): ") in first  # fmt: skip
    difference = f"{100 * c.accuracy_difference:+.1f} ({100 * low:+.1f} to {100 * high:+.1f})".replace("-", "−")
    assert f"{difference} points." in first
    memory, full_memory = mean(lora, "peak_memory_mb"), mean(full, "peak_memory_mb")
    seconds = mean(lora, "training_seconds")
    disk, full_disk = mean(lora, "checkpoint_mb"), mean(full, "checkpoint_mb")
    assert (round(memory), round(full_memory)) == (1027, 2320)  # each run's own figure, averaged over its seeds
    assert ("It trains 0.405% of the weights, in 44.2% of the peak memory and 40.4% of the training time, and "
            "stores 0.418% as much.") in first  # fmt: skip
    row = (
        f"| {c.labels['lora']} | {100 * accuracy:.1f}% ± {100 * spread:.1f} | {difference} | not shown to be good "
        f"enough | 0.405% | {memory:,.0f} (44.2%) | {seconds:.1f} (40.4%) | {disk:.3f} (0.418%) |"
    )
    assert row in summary, summary
    assert (f"| full_finetune (lr=5e-05) | {100 * full_accuracy:.1f}% ± {100 * full_spread:.1f} | – | (the reference) "
            f"| 100% | 2,320 | 104.0 | {full_disk:.1f} |") in summary  # fmt: skip
    sure = summary.split("### How sure\n\n", 1)[1]
    assert sure.startswith(f"- **{c.labels['lora']}**: 95% CI −") and "t = " in sure
    assert len(report[: report.index("### How sure")].splitlines()) < 20  # the answer on the first screen


def test_an_untuned_lora_rate_is_warned_about_and_a_rate_of_its_own_is_not() -> None:
    shared = render_report(combine(three_seed_records()))
    warning = (
        "**Warning:** LoRA trained at full fine-tuning's learning rate (5e-05) with no rate of its own swept; "
        "adapter recipes use about 10 times full fine-tuning's rate, and at its rate an adapter may barely move: "
        "set `lora_learning_rate`"
    )
    assert warning in shared.split("## Results")[0]
    assert "**Warning:**" not in render_report(combine(three_seed_records(lora_learning_rate=5e-4)))


def test_at_chance_the_report_ranks_nothing_and_says_why() -> None:
    chance_runs = []
    for rank, right in ((4, 70), (8, 72)):
        chance_runs.append(result("lora", lr=5e-4, seed=1, dev_right=70, test_right=right, labels=LABELS, rank=rank))
    chance_runs.append(result("full_finetune", lr=5e-5, seed=1, dev_right=70, test_right=68, labels=LABELS))
    report = render_report(combine(records(chance_runs, LABELS)))
    ranked = report.split("### Accuracy against cost\n\n", 1)[1]
    assert ranked.startswith("Not ranked: every row is within two standard errors of chance (6.7% for 15 classes)")
    assert "| Rank by test accuracy |" not in report and "On the accuracy-cost front" not in report
    assert "every row is within two standard errors of chance" in report.split("## Results")[0]
    summary = report.split("## Summary")[1].split("## ")[0]
    # Against an untrained reference nothing is "good enough": the answer says so, in the line and the table
    assert summary.count("no answer: full fine-tuning is at chance (6.7% for 15 classes), so nothing can be good "
                         "enough against it") == 2  # fmt: skip
    assert summary.count("| no answer |") == 2 and "| good enough |" not in summary
    verdicts = [line for line in report.splitlines() if line.startswith("- Verdict")]
    assert verdicts and all("no answer: full fine-tuning is at chance" in line for line in verdicts)
    # One row that learned: the rows are ranked.
    learned = [*chance_runs[:2], result("full_finetune", lr=5e-5, seed=1, dev_right=70, test_right=600, labels=LABELS)]
    assert "| Rank by test accuracy |" in render_report(combine(records(learned, LABELS)))


@pytest.mark.parametrize(("seeds", "bars"), [((1, 2, 3), True), ((42,), False)])
def test_the_pareto_plot_has_error_bars_of_the_seeds_spread(seeds: tuple[int, ...], bars: bool, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Each point's vertical bar is its row's test-accuracy std over seeds (in points), and the time
    axis its training-time std: none with one seed, so a difference within noise does not look clear, and
    then the title says n = 1. Each panel draws the chance line (100 / 15 classes)."""
    import matplotlib.axes
    import matplotlib.figure

    from job.results.plot import plot_pareto

    drawn: list[tuple[float, float]] = []
    lines: list[float] = []
    titles: list[str] = []
    original, horizontal, suptitle = (matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.axhline,
                                      matplotlib.figure.Figure.suptitle)  # fmt: skip

    def errorbar(self, x, y, *args, yerr=None, xerr=None, **kwargs):
        drawn.append((float(yerr or 0.0), float(xerr or 0.0)))
        return original(self, x, y, *args, yerr=yerr, xerr=xerr, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    monkeypatch.setattr(
        matplotlib.axes.Axes, "axhline", lambda self, y, **k: lines.append(y) or horizontal(self, y, **k)
    )
    monkeypatch.setattr(
        matplotlib.figure.Figure, "suptitle", lambda self, t, **k: titles.append(t) or suptitle(self, t, **k)
    )
    combined = combine(three_seed_records() if bars else records(
        [result("lora", lr=5e-4, seed=42, dev_right=555, test_right=545, labels=LABELS),
         result("full_finetune", lr=5e-5, seed=42, dev_right=560, test_right=550, labels=LABELS)], LABELS))  # fmt: skip
    path = plot_pareto(combined.headline, tmp_path / "pareto.png", "ERNIE 3.0 Medium on TNEWS", 15)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flat = [value for pair in drawn for value in pair]
    expected = []  # per row: the parameters panel's bars, then the time panel's
    for row in combined.headline:
        spread = 100 * row.test_accuracy.std
        expected += [spread, 0.0, spread, row.training_seconds.std]
    assert flat == pytest.approx(expected)
    assert any(value > 0 for value in flat) is bars
    assert lines == pytest.approx([100 / 15, 100 / 15])
    assert titles[0].endswith("(mean ± std over 3 seeds)" if bars else "(one seed: no spread shown, n = 1)")


def test_with_one_seed_runs_that_started_from_other_weights_are_named_not_called_the_same() -> None:
    from job.results.report import start_note

    lora = result("lora", lr=5e-4, seed=42, dev_right=555, test_right=545, labels=LABELS)
    full = result("full_finetune", lr=5e-5, seed=42, dev_right=560, test_right=550, labels=LABELS)
    assert "Every row started from the same initial weights (fingerprint `weights-of-seed-42`)" in start_note(
        [lora, full]
    )
    other = full.model_copy(update={"initial_weights": "other-weights"})
    note = start_note([lora, other])
    assert "did NOT all start from the same initial weights" in note and "same initial weights (fingerprint" not in note
    assert "lora_lr0.0005_s42 `weights-of-seed-42`, full_finetune_lr5e-05_s42 `other-weights`" in note


def test_a_run_of_paddlenlps_protocol_names_every_remaining_departure() -> None:
    def departures(**config: object) -> str:
        saved = three_seed_records(**{"max_train_samples": None, "max_eval_samples": None, **config})
        line = next(line for line in render_report(combine(saved)).splitlines() if "Published:" in line)
        return line.split("Departures from PaddleNLP's protocol: ", 1)[1]

    assert departures() == (
        "the test titles carved from train are left out of training; dev scored only at the end with the last "
        "checkpoint, not every 100 steps with the best; 1 epochs, not 3; batch size 8 only, of PaddleNLP's 16, "
        "32, 64; rates 5e-05, not PaddleNLP's 1e-05, 2e-05, 3e-05, 5e-05; the rate chosen on the mean dev "
        "accuracy over seeds, where PaddleNLP reports its best run."
    )
    protocol = {"eval_steps": 100, "select_checkpoint": "best_dev", "num_epochs": 3, "batch_size": 64,
                "full_finetune_learning_rate": [1e-5, 2e-5, 3e-5, 5e-5]}  # fmt: skip
    assert departures(**protocol) == (
        "the test titles carved from train are left out of training; batch size 64 only, of PaddleNLP's 16, 32, "
        "64; the rate chosen on the mean dev accuracy over seeds, where PaddleNLP reports its best run."
    )


def test_the_report_states_a_step_budget_and_gradient_accumulation_when_set() -> None:
    runs = [
        result(name, lr=5e-4, seed=1, dev_right=500, test_right=500, labels=LABELS)
        for name in ("lora", "full_finetune")
    ]
    plain = records(runs, LABELS)
    assert "- Steps:" not in render_report(combine(plain))
    config = plain[0].run.config.model_copy(update={"max_steps": 2000, "gradient_accumulation_steps": 4})
    budget = [r.model_copy(update={"run": r.run.model_copy(update={"config": config})}) for r in plain]
    assert ("- Steps: 2,000 optimizer steps a run (max_steps); each batch in 4 micro-batches, their gradients "
            "summed") in render_report(combine(budget))  # fmt: skip


@pytest.mark.timeout(60)
def test_a_price_per_hour_turns_training_time_into_money_in_the_cost_table(tmp_path: Path) -> None:
    """From the config (price_per_hour, currency) or, for runs already made, `job report --price-per-hour`."""
    import shutil
    import statistics

    from click.testing import CliRunner

    from job.cli import main

    example = Path(__file__).resolve().parents[1] / "docs" / "example-report"
    shutil.copytree(example / "results", tmp_path / "results")
    plain = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert plain.exit_code == 0 and "Training Cost" not in (tmp_path / "ernie_lora_vs_full_report.md").read_text()
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path), "--price-per-hour", "3.6",
                                       "--currency", "EUR"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = (tmp_path / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    import json

    seconds = {name: statistics.fmean(json.loads(p.read_text())["result"]["training_seconds"]
                                      for p in (tmp_path / "results").glob(f"{name}_*.json"))
               for name in ("lora", "full_finetune")}  # fmt: skip
    lora, full = (f"{seconds[name] / 3600 * 3.6:.2f}" for name in ("lora", "full_finetune"))
    share = f"{100 * seconds['lora'] / seconds['full_finetune']:.1f}%"
    assert "| Training Cost (EUR) |" in report and f"| {lora} ({share}) |" in report and f"| {full} |" in report
    assert "Cost: training time at 3.60 EUR an hour (`price_per_hour`" in report
    bad = CliRunner().invoke(
        main, ["report", "--output-dir", str(tmp_path), "--price-per-hour", "1", "--currency", "U S"]
    )
    assert bad.exit_code == 2 and "config key 'currency'" in bad.output
