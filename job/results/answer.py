"""The report's opening, the part a reader takes in at a glance: for each compared row the two test
accuracies, their difference with its interval, the plain answer and what the row saves; then what
weakens the answers (a reference at chance, an untuned rate), and the statistics behind each answer."""

from __future__ import annotations

from job.config.schema import own_key
from job.results.churn import churn, churn_text
from job.results.front import at_chance
from job.results.schema import Combined, Comparison, HeadlineRow
from job.results.tables import (
    SUMMARY_COLUMNS,
    markdown_table,
    megabytes_text,
    memory_text,
    money,
    row_costs,
    share_text,
)
from job.results.verdict import best_row, interval_text, points, signed_points, test_text
from job.training.runs import rate_text
from job.training.strategies import STRATEGIES, baseline


def weights_share(row: HeadlineRow) -> str:
    """The share of its model's weights a row trains (PEFT's `trainable%`): the report's one figure for it."""
    return share_text(row.trainable_params, row.total_params)


def accuracy_text(row: HeadlineRow) -> str:
    accuracy = row.test_accuracy
    if accuracy.n > 1:
        return f"{100 * accuracy.mean:.1f}% ± {100 * accuracy.std:.1f}"
    return f"{100 * accuracy.mean:.1f}% (1 seed)"


def difference_text(c: Comparison) -> str:
    low, high = c.accuracy_difference_ci95
    return f"{signed_points(c.accuracy_difference)} ({signed_points(low)} to {signed_points(high)})"


def answers(combined: Combined) -> str:
    """The report's opening: one line per compared row (its answer, its accuracy against full fine-tuning's,
    what it saves), the table of both accuracies, the difference and the costs, the margin, the warnings,
    then how sure each answer is."""
    rows, base = combined.headline, baseline()
    full = best_row(rows, base.name)  # the row every comparison is against
    if full is None or not combined.comparisons:
        missing = "no full fine-tuning row" if full is None else "no row to compare with full fine-tuning"
        return f"No answer: {missing} in these results." + _warnings_text(combined)
    by_group = {row.group: row for row in rows}
    lines, table_rows = [], []
    for c in combined.comparisons:  # each against the full fine-tuning row it was compared with
        row, reference = by_group[c.group], by_group.get(c.baseline_group, full)
        lines.append(f"- **{row.label}**: {plain_answer(combined, c)}. {_accuracy_line(row, reference, c)} "
                     f"{_saving_line(row, reference, combined)}")  # fmt: skip
        table_rows.append(_table_row(row, reference, combined, c))
    for group in dict.fromkeys(c.baseline_group or full.group for c in combined.comparisons):
        table_rows.append(_table_row(by_group.get(group, full), by_group.get(group, full), combined, None))
    note = (
        f"Margin {points(combined.comparisons[0].margin)} (`margin`; `job report --margin` judges these runs again "
        f"at another). Test accuracy: mean ± standard deviation over seeds; difference: the row minus "
        f"{base.title}, in points, with its 95% interval (how sure, below). Costs: means over the row's seeds; in "
        f"brackets, as a share of {base.title}'s."
    )
    sure = "\n".join(f"- **{by_group[c.group].label}**: {interval_text(c)}. {test_text(c)}."
                     for c in combined.comparisons)  # fmt: skip
    config = combined.run.config
    columns = list(SUMMARY_COLUMNS)
    if config.price_per_hour is not None:
        columns.append(f"Training Cost ({config.currency})")
        note += (f" Cost: training time at {money(config.price_per_hour, config.currency)} an hour "
                 "(`price_per_hour`; loading and evaluation come on top).")  # fmt: skip
    return (
        "\n".join(lines)
        + "\n\n"
        + markdown_table("Row", columns, table_rows)
        + "\n\n"
        + note
        + _warnings_text(combined)
        + "\n\n### How sure\n\n"
        + sure
        + "\n\n### How the models differ\n\n"
        + "\n".join(f"- {line}" for line in differences(combined))
    )


def differences(combined: Combined) -> list[str]:
    """Per compared row, how often it and full fine-tuning predict a title differently, against how often
    two seeds of one strategy do (job.results.churn); with one seed, that it cannot say."""
    lines = []
    for c in combined.comparisons:
        found = churn(combined, c)
        if found is None:
            lines.append(f"{c.subject}: with one seed there is no pair of seeds to show how much two runs of one "
                         "strategy disagree anyway; a list of seeds shows it")  # fmt: skip
        else:
            lines.append(churn_text(found, baseline().title))
        if c.subspace_overlap:
            overlap = ", ".join(f"{value:.2f} ({kind})" for kind, value in c.subspace_overlap.items())
            random = sorted(set(c.subspace_random.values()))
            lines.append(f"{c.subject}'s update lies {overlap} in {baseline().title}'s top-r directions of the same "
                         f"weights; a random subspace of its rank: {', '.join(f'{r:.3f}' for r in random)} (1 would "
                         "be inside them: subspace overlap, under Observations)")  # fmt: skip
    return lines


def plain_answer(combined: Combined, c: Comparison) -> str:
    """The answer in plain words: good enough, worse, not shown, or no answer when the reference is at
    chance (at any margin: being as good as an untrained model says nothing about the task)."""
    if reference_at_chance(combined, c):
        classes = len(combined.run.data.labels)
        return (f"no answer: {baseline().title} is at chance ({100 / classes:.1f}% for {classes} classes), so nothing "
                "can be good enough against it")  # fmt: skip
    base, margin = baseline().title, points(c.margin)
    if c.answer == "good enough":
        return f"good enough: at most {margin} below {base}"
    if c.answer == "worse":
        return f"worse: more than {margin} below {base}"
    return f"not shown to be good enough: it may be more than {margin} below {base}"


def _accuracy_line(row: HeadlineRow, reference: HeadlineRow, c: Comparison) -> str:
    seeds = len(c.seeds)
    return (
        f"Test accuracy {accuracy_text(row)} against {baseline().title}'s {accuracy_text(reference)} "
        f"({seeds} seed{'s' if seeds > 1 else ''} x {c.test_examples:,} titles): "
        f"{difference_text(c)} points."
    )


def _saving_line(row: HeadlineRow, reference: HeadlineRow, combined: Combined) -> str:
    memory, seconds, disk = row_costs(row, combined.runs)
    full_memory, full_seconds, full_disk = row_costs(reference, combined.runs)
    return (
        f"It trains {weights_share(row)} of the weights, in {share_text(memory, full_memory)} of the peak memory and "
        f"{share_text(seconds, full_seconds)} of the training time, and stores {share_text(disk, full_disk)} as much."
    )


def _table_row(row: HeadlineRow, reference: HeadlineRow, combined: Combined, c: Comparison | None) -> list[str]:
    memory, seconds, disk = row_costs(row, combined.runs)
    full_memory, full_seconds, full_disk = row_costs(reference, combined.runs)

    def against(value: float, whole: float, text: str) -> str:
        return text if c is None or not whole else f"{text} ({share_text(value, whole)})"

    answer = "(the reference)" if c is None else plain_answer(combined, c).split(":")[0]
    cells = [
        row.label,
        accuracy_text(row),
        "–" if c is None else difference_text(c),
        answer,
        weights_share(row),
        against(memory, full_memory, memory_text(memory)),
        against(seconds, full_seconds, f"{seconds:.1f}"),
        against(disk, full_disk, megabytes_text(disk)),
    ]
    price = combined.run.config.price_per_hour
    if price is not None:
        cells.append(against(seconds, full_seconds, money(seconds / 3600 * price)))
    return cells


def _warnings_text(combined: Combined) -> str:
    lines = answer_warnings(combined)
    return "\n\n" + "\n".join(f"- **Warning:** {line}" for line in lines) if lines else ""


def reference_at_chance(combined: Combined, c: Comparison) -> bool:
    """The full fine-tuning row `c` was compared with is at chance: no answer, whatever the compared row did."""
    by_group = {row.group: row for row in combined.headline}
    classes, titles = len(combined.run.data.labels), combined.run.data.test.examples
    reference = by_group.get(c.baseline_group) or best_row(combined.headline, baseline().name)
    return reference is not None and at_chance(reference, classes, titles)


def unless_at_chance(combined: Combined, c: Comparison, said: str) -> str:
    """`said` (an answer or a verdict), unless the reference is at chance: agreeing with, or beating, an
    untrained model would read as a finding about nothing."""
    if not reference_at_chance(combined, c):
        return said
    return f"{plain_answer(combined, c)} (the numbers alone read: {said})"


def answer_warnings(combined: Combined) -> list[str]:
    """What makes the answers weaker than they read: rows at chance, a LoRA-family rate left untuned."""
    rows, run = combined.headline, combined.run
    classes, titles = len(run.data.labels), run.data.test.examples
    lines = []
    chance_rows = [row.label for row in rows if at_chance(row, classes, titles)]
    if chance_rows and len(chance_rows) == len(rows):
        lines.append(
            f"every row is within two standard errors of chance ({100 / classes:.1f}% for {classes} classes): the "
            "answers compare models that have not learned the task, and nothing is ranked"
        )
    elif any(row.strategy == baseline().name and row.label in chance_rows for row in rows):
        lines.append(f"{baseline().title} is at chance: being as good as it says nothing about the task")
    config = run.config
    shared = config.learning_rates_for(baseline().name)
    for name in dict.fromkeys(row.strategy for row in rows):
        strategy = STRATEGIES[name]
        if strategy.adapter_options is None or name == baseline().name:
            continue
        key = own_key(name, "learning_rate")
        if getattr(config, key, None) is None and config.learning_rates_for(name) == shared:
            rates = ", ".join(rate_text(rate) for rate in shared)
            lines.append(
                f"{strategy.title} trained at {baseline().title}'s learning rate ({rates}) with no rate of its own "
                f"swept; adapter recipes use about 10 times full fine-tuning's rate, and at its rate an adapter may "
                f"barely move: set `{key}` (a list is swept and chosen on dev)"
            )
    return lines
