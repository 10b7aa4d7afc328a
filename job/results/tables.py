"""The report's tables: the headline, the comparisons in detail, every run, efficiency and accuracy per
class, with the cell formats every table of the report shares (job.results.report writes them into the
page)."""

from __future__ import annotations

from collections.abc import Sequence

from job.data.labels import Labels
from job.results.front import row_memory
from job.results.schema import Comparison, HeadlineRow, RunResult, Stat
from job.results.stats import mean_std
from job.results.verdict import p_text, signed_points
from job.training.runs import rate_text

PER_CLASS_SHOWN = 10  # above twice this many classes, the per-class table shows the worst and best this many
COLUMNS = (
    "Trainable Params", "Total Params", "Training Time (s)", "Dev Accuracy", "Test Accuracy", "Dev Loss", "Test Loss",
)  # fmt: skip
RUN_COLUMNS = (
    "Seed", "Learning Rate", "Training Time (s)", "Dev Accuracy", "Dev Macro-F1", "Test Accuracy", "Test Macro-F1",
    "Dev Loss", "Test Loss",
)  # fmt: skip
FRONT_COLUMNS = ("Test Accuracy", "Trainable Params", "Training Time (s)", "Peak Memory (MB)", "Pareto")
SUMMARY_COLUMNS = (
    "Test Accuracy", "Difference (95% CI)", "Answer", "Weights Trained", "Peak Memory (MB)", "Training Time (s)",
    "Size on Disk (MB)",
)  # fmt: skip
EFFICIENCY_COLUMNS = (
    "Samples/s", "Peak Memory (MB)", "Optimizer State (MB)", "Checkpoint Size (MB)", "Parameters Trained",
)  # fmt: skip


def cell(value: Stat, digits: int) -> str:
    """A plain number for one seed, `mean ± std (n=k)` for several."""
    if value.n == 1:
        return f"{value.mean:.{digits}f}"
    return f"{value.mean:.{digits}f} ± {value.std:.{digits}f} (n={value.n})"


def markdown_table(first: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    columns = [table_cell(column) for column in columns]
    header = f"| {first} | " + " | ".join(columns) + " |"
    rule = "|" + "-" * (len(first) + 2) + "|" + "|".join("-" * (len(c) + 1) + ":" for c in columns) + "|"
    return "\n".join([header, rule, *("| " + " | ".join(map(table_cell, row)) + " |" for row in rows)])


def table_cell(text: str) -> str:
    """A table cell as Markdown keeps it in its column: a `|` escaped, a line break a space (a label
    named `a|b`, or holding a newline, split the per-class table)."""
    return " ".join(text.split("\n")).replace("\r", " ").replace("|", "\\|")


def results_table(rows: Sequence[HeadlineRow]) -> str:
    """The seed's 7-column table: one row per strategy (and LoRA shape) at the rate chosen on dev."""
    return markdown_table(
        "Strategy",
        COLUMNS,
        [
            [
                row.label,
                f"{row.trainable_params:,}",
                f"{row.total_params:,}",
                cell(row.training_seconds, 1),
                cell(row.dev_accuracy, 4),
                cell(row.test_accuracy, 4),
                cell(row.dev_loss, 4),
                cell(row.test_loss, 4),
            ]
            for row in rows
        ],
    )


def comparison_details(found: Sequence[Comparison]) -> str:
    """Each comparison's numbers: the interval's, the p-values of the answer, and the titles-only test."""
    rows = []
    for c in found:
        low, high = c.accuracy_difference_ci95
        df = f"{c.interval_df:.1f}" if c.interval_df is not None else "(bootstrap)"
        se = f"{100 * c.interval_se:.2f}" if c.interval_se is not None else ""
        good = p_text(c.good_enough_p_value_holm) if c.good_enough_p_value_holm is not None else ""
        titles_only = p_text(c.titles_only_p_value) if c.titles_only_p_value is not None else ""
        rows.append([table_cell(c.labels[next(iter(c.labels))]), f"{len(c.seeds)} x {c.test_examples:,}",
                     signed_points(c.accuracy_difference), f"{signed_points(low)} to {signed_points(high)}", se, df,
                     f"{c.interval_widening:.2f}", p_text(c.p_value_holm), good, titles_only])  # fmt: skip
    table = markdown_table("Row", ["Seeds x Titles", "Difference", "95% CI", "SE", "df", "Widening", "p (Holm)",
                           "p good enough (Holm)", "Titles-only p"], rows)  # fmt: skip
    return (
        "### The comparisons in detail\n\n" + table + "\n\nEach row minus full fine-tuning, in points. With seeds, "
        "seeds and titles are both random: the interval, its p (two-sided, of no difference) and the one-sided p "
        "of good enough at the margin read one t, its critical value widened where few seeds would let the "
        "error rate past 5%, Holm-adjusted over the rows. The titles-only p is the exact sign-flip test over "
        "titles: it is about these trained models only (would these runs differ on new titles?), not about "
        "new seeds, so it is no part of the answer."
    )


def rate_choice(rows: Sequence[HeadlineRow]) -> str:
    """How each row's learning rate was chosen: mean dev accuracy of every rate tried (test unseen)."""
    parts = []
    for row in rows:
        tried = ", ".join(
            f"{rate} → {100 * accuracy:.2f}%" + (" (chosen)" if float(rate) == row.learning_rate else "")
            for rate, accuracy in row.dev_accuracy_by_rate.items()
        )
        parts.append(f"{row.label.split(' (')[0]}{shape_text(row)}: {tried}")
    return "Learning rates were chosen on mean dev accuracy over seeds, never on test: " + "; ".join(parts) + "."


def shape_text(row: HeadlineRow) -> str:
    return f" {row.group.removeprefix(row.strategy + '_')}" if row.group != row.strategy else ""


def runs_table(runs: Sequence[RunResult]) -> str:
    """Every run, with macro-F1 beside accuracy."""
    return markdown_table(
        "Run",
        RUN_COLUMNS,
        [
            [
                f"`{r.key}`",
                str(r.seed),
                rate_text(r.learning_rate),
                f"{r.training_seconds:.1f}",
                f"{r.dev.accuracy:.4f}",
                f"{r.dev.macro_f1:.4f}",
                f"{r.test.accuracy:.4f}",
                f"{r.test.macro_f1:.4f}",
                f"{r.dev.loss:.4f}",
                f"{r.test.loss:.4f}",
            ]
            for r in runs
        ],
    )


def efficiency_table(rows: Sequence[HeadlineRow], runs: Sequence[RunResult]) -> str:
    """What each headline row costs: speed, memory, optimizer state, and the weights it must store
    (means over its own seeds)."""
    by_key = {r.key: r for r in runs}
    lines = []
    for row in rows:
        chosen = [by_key[key] for key in row.keys]
        speed, _ = mean_std([r.samples_per_second for r in chosen])
        memory, _, checkpoint = row_costs(row, runs)
        optimizer, _ = mean_std([r.optimizer_state_mb for r in chosen])
        lines.append(
            [
                row.label,
                f"{speed:.1f}",
                f"{memory:,.0f}",
                megabytes_text(optimizer),
                megabytes_text(checkpoint),
                share_text(row.trainable_params, row.total_params),
            ]
        )
    note = (
        "Peak memory: the run's own peak of Paddle's tensor allocator (host memory on CPU, device memory on a GPU) "
        "above what was allocated when it began, the same whatever ran before it. Checkpoint size: the trained "
        "weights a strategy must store beyond the base model (fp32)."
    )
    return markdown_table("Efficiency", EFFICIENCY_COLUMNS, lines) + "\n\n" + note + plan_time(runs)


CAPACITY_COLUMNS = (
    "Largest batch",
    "Peak allocated MiB there",
    "Samples/s there",
    "Samples/s at the configured batch",
    "Speed-up",
    "Batch vs full fine-tuning",
)


def capacity_table(rows: Sequence[HeadlineRow], runs: Sequence[RunResult], baseline: str) -> str | None:
    """What each headline row's memory buys: the largest batch within the budget and its speed there (one
    measurement a row, on its first seed's run); None when no run measured it."""
    by_key = {r.key: r for r in runs}
    found = {row.group: next((by_key[k].capacity for k in row.keys if by_key[k].capacity), None) for row in rows}
    measured = [(row, found[row.group]) for row in rows if found[row.group] is not None]
    if not measured:
        return None
    full = next((c for row, c in measured if row.strategy == baseline), None)
    lines = []
    for row, c in measured:
        assert c is not None
        ratio = f"{c.largest_batch / full.largest_batch:.2f}x" if full and full.largest_batch else "–"
        speedup = (
            f"{c.samples_per_second / c.configured_samples_per_second:.2f}x" if c.configured_samples_per_second else "–"
        )
        peak = f"{c.peak_allocated_mb:,.1f}" if c.largest_batch else "–"
        configured = f"{c.configured_samples_per_second:,.1f} (batch {c.configured_batch})"
        lines.append([row.label, f"{c.largest_batch:,}", peak, f"{c.samples_per_second:,.1f}", configured, speedup,
                      ratio])  # fmt: skip
    first = measured[0][1]
    assert first is not None
    reserved = [f"{row.label} {c.peak_reserved_mb:,.0f}" for row, c in measured if c and c.peak_reserved_mb is not None]
    note = (
        f"Budget: {first.budget_mb:,.0f} MiB ({first.budget_source}) of Paddle's allocator, above what the process "
        f"held before; every title {first.sequence_length} tokens (max_seq_length, the longest a batch can be), so "
        "real batches of shorter titles fit more. Found from the peak at two batch sizes and one checking step "
        f"(granule {first.granule}); speeds are training steps at that batch."
    )
    if reserved:
        note += " Reserved by the GPU allocator at the peak (MiB): " + ", ".join(reserved) + "."
    return markdown_table("Row", CAPACITY_COLUMNS, lines) + "\n\n" + note


SERVING_COLUMNS = ("Form", "ms per title (batch 1)", "ms per batch of 32", "Titles/s at 32")
SERVING_FORMS = {"unmerged": "adapter unmerged", "merged": "adapter merged", "model": "as trained"}


def serving_table(rows: Sequence[HeadlineRow], runs: Sequence[RunResult]) -> str | None:
    """What serving each headline row's model costs, per form (means over its seeds), and whether LoRA's
    merged and unmerged forms agree; None when no run measured it."""
    by_key = {r.key: r for r in runs}
    lines, agreements = [], []
    for row in rows:
        chosen = [by_key[key] for key in row.keys if by_key[key].serving]
        for form in dict.fromkeys(f.form for r in chosen for f in r.serving):
            costs = [f for r in chosen for f in r.serving if f.form == form]
            lines.append([row.label, SERVING_FORMS.get(form, form),
                          f"{mean_std([c.ms_per_title for c in costs])[0]:.2f}",
                          f"{mean_std([c.ms_per_batch for c in costs])[0]:.1f}",
                          f"{mean_std([c.titles_per_second for c in costs])[0]:,.0f}"])  # fmt: skip
        for precision in dict.fromkeys(a.precision for r in chosen for a in r.merge_agreement):
            found = [a for r in chosen for a in r.merge_agreement if a.precision == precision]
            agreements.append(
                f"{row.label} ({precision}): largest logit difference "
                f"{max(a.max_logit_difference for a in found):.2g}, "
                f"{min(a.prediction_agreement for a in found):.1%} equal predictions on {found[0].titles:,} test titles"
                + (" (the worst seed)" if len(found) > 1 else "")
            )
    if not lines:
        return None
    note = (
        "Measured at the end of each run on its device with the plain forward a server runs (eval mode, no "
        "gradients): the median of repeated calls after a warm-up. Unmerged: LoRA's A and B applied at every call; "
        "merged: folded into the weights, the same cost as the base model."
    )
    if agreements:
        note += " Merged against unmerged: " + "; ".join(agreements) + "."
    return markdown_table("Row", SERVING_COLUMNS, lines) + "\n\n" + note


def plan_time(runs: Sequence[RunResult]) -> str:
    """The plan's wall time (first run's start to last run's finish) beside the sum of its runs' training
    times, and the workers that trained them: what `job run --workers` bought."""
    import datetime as dt

    timed = [run for run in runs if run.started_at and run.finished_at]
    if len(timed) < 2:
        return ""
    start = min(dt.datetime.fromisoformat(run.started_at) for run in timed)
    end = max(dt.datetime.fromisoformat(run.finished_at) for run in timed)
    wall = (end - start).total_seconds()
    training = sum(run.training_seconds for run in timed)
    workers = sorted({run.worker for run in timed if run.worker})
    who = f"{len(workers)} workers ({'; '.join(workers)})" if workers else "one process"
    return (
        f"\n\nPlan time: the {len(timed)} runs took {seconds_text(wall)} of wall time from the first one's start to "
        f"the last one's finish, for {seconds_text(training)} of training summed over them, trained by {who}"
        + " (wall time also counts loading, evaluation and saving, and any pause between resumed commands)."
        + shared_note(runs)
    )


def shared_note(runs: Sequence[RunResult]) -> str:
    """Runs trained while other workers used the same GPU: their times and peaks are not a GPU's own."""
    shared = [run for run in runs if run.gpu_shared_by > 1]
    if not shared:
        return ""
    most = max(run.gpu_shared_by for run in shared)
    return (f" {len(shared)} of the runs trained on a GPU shared by up to {most} workers (more workers than GPUs), "
            "each capped to its share of the GPU's memory: their training time and samples/s are slower than on a "
            "GPU of their own, and do not compare with runs that had one.")  # fmt: skip


def seconds_text(value: float) -> str:
    return f"{value:,.0f} s" if value < 600 else f"{value / 60:,.1f} min"


def per_class_table(rows: Sequence[HeadlineRow], labels: Labels) -> str:
    """Test accuracy on each class (mean over seeds): where the strategies differ. With many classes
    (IFLYTEK's 119), the worst and the best PER_CLASS_SHOWN by mean accuracy over the rows; results.json
    holds every class."""

    def share(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}"

    def line(class_id: int) -> list[str]:
        return [labels.shown(class_id), *(share(row.test_per_class_accuracy[class_id]) for row in rows)]

    if len(labels) <= 2 * PER_CLASS_SHOWN:
        return markdown_table("Class", [row.label for row in rows], [line(class_id) for class_id in range(len(labels))])
    means = {}
    for class_id in range(len(labels)):
        values = [row.test_per_class_accuracy[class_id] for row in rows]
        if all(value is not None for value in values):
            means[class_id] = sum(values) / len(values)  # type: ignore[arg-type]
    if len(means) <= 2 * PER_CLASS_SHOWN:  # few classes in test: each once, none in both halves
        note = f"The {len(means)} of {len(labels)} classes that have test examples."
        return markdown_table("Class", [row.label for row in rows], [line(class_id) for class_id in sorted(means)]) + (
            "\n\n" + note
        )
    ranked = sorted(means, key=lambda class_id: (means[class_id], class_id))
    shown = ranked[:PER_CLASS_SHOWN] + ranked[-PER_CLASS_SHOWN:]
    between = ["…", *("…" for _ in rows)]
    body = [*map(line, shown[:PER_CLASS_SHOWN]), between, *map(line, shown[PER_CLASS_SHOWN:])]
    absent = len(labels) - len(means)
    note = (
        f"The {PER_CLASS_SHOWN} classes with the lowest and the {PER_CLASS_SHOWN} with the highest test accuracy "
        f"(mean over the rows) of {len(labels)}"
        + (f"; {absent} have no test example" if absent else "")
        + ". `results.json` holds every class: `headline[].test_per_class_accuracy` by class id, named by "
        "`run.data.labels`."
    )
    return markdown_table("Class", [row.label for row in rows], body) + "\n\n" + note


def share_text(part: float, whole: float) -> str:
    """One way to write every share in the report: three significant digits, never a bare 0%."""
    if not whole:
        return "–"
    share = 100 * part / whole
    return f"{share:#.3g}".rstrip(".") + "%" if share >= 0.001 else "<0.001%"  # 1.60%, 72.9%, 100%


def money(amount: float, currency: str = "") -> str:
    """An amount to the cent, finer below a cent (a tiny run costs fractions of one)."""
    text = f"{amount:,.2f}" if amount >= 0.995 else f"{amount:.2g}" if amount < 0.01 else f"{amount:.2f}"
    return f"{text} {currency}".rstrip()


def memory_text(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def megabytes_text(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:,.1f}"


def row_costs(row: HeadlineRow, runs: Sequence[RunResult]) -> tuple[float, float, float]:
    """(peak memory, training time, checkpoint size) of the row: means over its own runs."""
    by_key = {r.key: r for r in runs}
    chosen = [by_key[key] for key in row.keys]
    memory, _ = row_memory(row, runs)
    checkpoint, _ = mean_std([r.checkpoint_mb for r in chosen])
    return memory, row.training_seconds.mean, checkpoint
