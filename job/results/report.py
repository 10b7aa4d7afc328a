"""Results -> the Markdown report in the seed's layout. Every sentence in Observations is computed
from the measured numbers; the verdict claims no more than its confidence interval supports."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from job.config.schema import JobConfig
from job.data.tasks import CLUE_TASKS, DEFAULT_DATASET, OWN, dataset_title
from job.output.layout import LEARNING_PLOT, LOSS_PLOT, PARETO_PLOT, SPECTRUM_PLOT
from job.results.answer import answers, unless_at_chance, weights_share
from job.results.front import at_chance, pareto_front, row_memory
from job.results.overlap import overlap_line
from job.results.schema import Combined, HeadlineRow, RunFacts, RunResult
from job.results.tables import (
    FRONT_COLUMNS,
    capacity_table,
    cell,
    comparison_details,
    efficiency_table,
    markdown_table,
    per_class_table,
    rate_choice,
    results_table,
    runs_table,
    serving_table,
)
from job.results.verdict import best_row, points
from job.training.model import looks_like_a_path
from job.training.runs import rate_text
from job.training.strategies import STRATEGIES, baseline, compared
from job.training.update_rank import INTRUDER_TOP, WEIGHT_KINDS

SEED_MODEL, SEED_MODEL_TITLE = "ernie-3.0-medium-zh", "ERNIE 3.0 Medium"


def render_report(combined: Combined) -> str:
    run, rows, runs = combined.run, combined.headline, combined.runs
    results = "\n\n".join(
        [
            results_table(rows),
            *([rate_choice(rows)] if any(len(row.dev_accuracy_by_rate) > 1 for row in rows) else []),
            *([comparison_details(combined.comparisons)] if combined.comparisons else []),
            "### Every run\n\n" + runs_table(runs),
            "### Efficiency\n\n" + efficiency_table(rows, runs),
            *([f"### Capacity\n\n{capacity}"] if (capacity := capacity_table(rows, runs, baseline().name)) else []),
            *([f"### Serving\n\n{serving}"] if (serving := serving_table(rows, runs)) else []),
            *(["### Accuracy against cost\n\n" + front_table(rows, combined)] if len(rows) > 2 else []),
            "### Test accuracy per class\n\n" + per_class_table(rows, run.data.label_set()),
            f"![Training loss per step]({LOSS_PLOT})\n\n![Test accuracy against trainable parameters and time]"
            f"({PARETO_PLOT})"
            + (f"\n\n![Test accuracy against training rows]({LEARNING_PLOT})" if _sized(rows) else "")
            + (
                f"\n\n![What the learned updates are made of]({SPECTRUM_PLOT})"
                if any(c.subspace_overlap for c in combined.comparisons)
                else ""
            ),
        ]
    )
    sections = [
        title(run.config),
        *([run.config.report_note] if run.config.report_note else []),
        _introduction(combined),
        "## Summary\n\n" + answers(combined),
        _run_facts(combined),
        "## Results\n\n" + results,
        "## Observations\n\n" + "\n".join(f"- {line}" for line in observations(combined)),
        "## Artifacts\n\n" + "\n".join(f"- {line}" for line in artifact_lines(runs)),
        "## Configuration\n\nThe resolved config these runs trained with (also `run.config` in results.json):\n\n"
        "```json\n" + json.dumps(run.config.model_dump(), indent=2, ensure_ascii=False) + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


# ---------------------------------------------------------------- what it ran on


def model_title(model_name: str) -> str:
    """ERNIE 3.0 Medium; a model folder by its own name (`ernie-standin-tnews`, not the path to it)."""
    if model_name == SEED_MODEL:
        return SEED_MODEL_TITLE
    return Path(model_name).name if looks_like_a_path(model_name) else model_name


def data_title(config: JobConfig) -> str:
    """TNEWS, IFLYTEK, ...; a user's own data by its folder's name."""
    return dataset_title(config.dataset) if config.dataset != OWN else Path(config.data_dir or ".").name


def subject(config: JobConfig) -> str:
    """`ERNIE 3.0 Medium on TNEWS`: what the plots' titles name."""
    return f"{model_title(config.model_name)} on {data_title(config)}"


def title(config: JobConfig) -> str:
    """The seed's title for the seed's model and task; any other model or task is named in it."""
    on = "" if config.dataset == DEFAULT_DATASET else f" on {data_title(config)}"
    model = SEED_MODEL_TITLE if config.model_name == SEED_MODEL else f"`{model_title(config.model_name)}`"
    return f"# {model}: LoRA vs Full Fine-Tuning{on}"


def _task_phrase(config: JobConfig) -> str:
    if config.dataset != OWN:
        return CLUE_TASKS[config.dataset].task
    pair = f" and `{config.text_pair_column}` (sentence pairs)" if config.text_pair_column else ""
    return (
        f"the labelled data in `{config.data_dir}` (text `{config.text_column}`{pair}, label `{config.label_column}`)"
    )


def _model_phrase(model_name: str) -> str:
    if model_name == SEED_MODEL:
        return f"the {SEED_MODEL_TITLE} model (`{model_name}`)"
    return f"the model `{model_name}`"


# ---------------------------------------------------------------- summary


def start_note(runs: Sequence[RunResult]) -> str:
    """Said only when the records show it: the rows every run saw (their recorded sample identity; the
    merge never combines runs of different samples) and that runs of one seed shared their initial
    weights (their recorded fingerprints)."""
    rows = f"Every run saw the same training, dev and test rows (sample `{runs[0].sample}`)."
    by_seed: dict[int, set[str]] = {}
    for r in runs:
        by_seed.setdefault(r.seed, set()).add(r.initial_weights)
    if any(len(prints) > 1 for prints in by_seed.values()):
        listing = ", ".join(f"{r.key} `{r.initial_weights}`" for r in runs)
        return f"{rows} The runs of a seed did NOT all start from the same initial weights: {listing}."
    if len(by_seed) == 1:
        only = next(iter(by_seed.values()))
        return (
            f"{rows} Every row started from the same initial weights (fingerprint `{next(iter(only))}`) and saw "
            "the same batches in the same order."
        )
    listing = ", ".join(f"seed {seed} `{next(iter(prints))}`" for seed, prints in sorted(by_seed.items()))
    return (
        f"{rows} Runs of the same seed started from the same initial weights and saw the same batches in the "
        f"same order ({listing})."
    )


def _introduction(combined: Combined) -> str:
    run = combined.run
    return (
        "This report compares low-rank adaptation (LoRA) with full-parameter fine-tuning of "
        f"{_model_phrase(run.config.model_name)} on {_task_phrase(run.config)} ({len(run.data.labels)} classes)."
    )


def _run_facts(combined: Combined) -> str:
    run = combined.run
    data = run.data
    lines = [
        start_note(combined.runs),
        "",
        f"- Device: {run.device.description} ({run.device.reason}); training precision "
        + ", ".join(sorted({r.precision + (" (matmuls in TF32)" if r.tf32 else "") for r in combined.runs}))
        + ", evaluation fp32 in batches of "
        + ", ".join(str(size) for size in sorted({r.eval_batch_size for r in combined.runs}))
        + "; dropout "
        + ", ".join(sorted({r.dropout for r in combined.runs})),
        f"- Train: {data.train.source}",
        f"- Dev: {data.dev.source}",
        f"- Test: {data.test.source}",
        f"- Data sample seed {data.sample_seed}; runs: {len(combined.runs)} "
        f"(seeds {', '.join(str(s) for s in sorted({r.seed for r in combined.runs}))})",
        "- Data files: " + ", ".join(_file_check(name, check) for name, check in data.files.items()),
        f"- Config hash `{run.config_hash}`, "
        + ", ".join(f"{name} {version}" for name, version in run.versions.items())
        + (f", commit `{run.git_commit[:12]}`" if run.git_commit else ""),
    ]
    config = run.config
    if config.max_steps is not None or config.gradient_accumulation_steps > 1:
        budget = f"{config.max_steps:,} optimizer steps a run (max_steps)" if config.max_steps else (
            f"{config.num_epochs} epoch(s) a run")  # fmt: skip
        accumulation = (f"; each batch in {config.gradient_accumulation_steps} micro-batches, their gradients summed"
                        if config.gradient_accumulation_steps > 1 else "")  # fmt: skip
        lines.append(f"- Steps: {budget}{accumulation}")
    if combined.missing_runs:
        lines.append(
            f"- **Partial report:** {len(combined.missing_runs)} planned runs have no result yet "
            f"({', '.join(combined.missing_runs)}); it is rebuilt when they finish."
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- the answer


def _file_check(name: str, check: str) -> str:
    """A sha256 shortened to 12 hex digits; any other check (PaddleNLP's md5) as it is."""
    is_sha256 = len(check) == 64 and all(c in "0123456789abcdef" for c in check)
    return f"{name} sha256 `{check[:12]}`" if is_sha256 else f"{name} ({check})"


# ---------------------------------------------------------------- observations


def observations(combined: Combined) -> list[str]:
    rows, run = combined.headline, combined.run
    lines = [_cost_line(row, run) for row in rows]
    adapted, base = compared()[0].name, baseline().name
    lora = [row for row in rows if row.strategy == adapted]
    full = next((row for row in rows if row.strategy == base), None)
    others = [row for row in rows if row.strategy != base]
    if full is not None:
        for row in others:
            alone = sum(other.strategy == row.strategy for other in others) == 1
            name = STRATEGIES[row.strategy].title if alone else row.label
            lines.append(
                f"{name} trained {weights_share(row)} of its weights ({row.trainable_params:,} of "
                f"{row.total_params:,}); {baseline().title} trained all {full.trainable_params:,}."
            )
    c = combined.comparison
    if c is not None:
        chosen = f" ({c.labels[adapted]} against {c.labels[base]})" if len(lora) > 1 or len(others) > 1 else ""
        lines.append(f"Verdict{chosen}: {unless_at_chance(combined, c, c.verdict)}")
    for other in combined.comparisons:
        if c is None or other.group != c.group:
            strategy = next(iter(other.labels))
            lines.append(f"Verdict ({other.labels[strategy]} against {other.labels[base]}): "
                         f"{unless_at_chance(combined, other, other.verdict)}")  # fmt: skip
    if (curve := learning_curve_line(combined)) is not None:
        lines.append(curve)
    if (checkpoints := _checkpoint_line(rows, combined)) is not None:
        lines.append(checkpoints)
    if (ranks := update_rank_line(rows, combined)) is not None:
        lines.append(ranks)
    if (intruders := intruder_line(rows, combined)) is not None:
        lines.append(intruders)
    if (overlap := overlap_line(combined.comparisons)) is not None:
        lines.append(overlap)
    if c is not None and full is not None:
        lines.append(_time_line(next(r for r in lora if r.group == c.group), full))
    if len(rows) > 2:
        lines.append(_front_line(rows, combined))
    if full is not None and (published := _published_line(run, full, combined.runs)):
        lines.append(published)
    lines += _caveats(rows, combined)
    return lines


# PaddleNLP's model zoo: TNEWS dev accuracy of full fine-tuning, the best over its grid of batch sizes and
# learning rates (3 epochs, max length 128, the whole train set): a dev score, not a test one.
PUBLISHED_TNEWS_DEV = {
    "ernie-3.0-xbase-zh": 59.55, "ernie-3.0-base-zh": 58.26, "ernie-3.0-medium-zh": 57.00,
    "ernie-3.0-mini-zh": 55.24, "ernie-3.0-micro-zh": 55.05, "ernie-3.0-nano-zh": 54.57,
}  # fmt: skip


PADDLENLP_BATCHES, PADDLENLP_RATES = (16, 32, 64), (1e-5, 2e-5, 3e-5, 5e-5)  # its CLUE grid for full FT


def _published_line(run: RunFacts, full: HeadlineRow, runs: Sequence[RunResult]) -> str | None:
    """Beside a run of PaddleNLP's protocol (TNEWS, every train and dev row), the published figure and
    every way this run still departs from how that figure was made."""
    config = run.config
    published = PUBLISHED_TNEWS_DEV.get(config.model_name)
    if published is None or config.dataset != DEFAULT_DATASET or config.max_train_samples or config.max_eval_samples:
        return None
    return (
        f"Published: PaddleNLP gives {model_title(config.model_name)} {published:.2f}% TNEWS dev accuracy with full "
        "fine-tuning, the best dev score over its grid of batch sizes and learning rates (3 epochs on all 53,360 "
        f"training titles; a dev number, not a test one). Measured here: {100 * full.dev_accuracy.mean:.2f}% dev "
        f"accuracy ({full.label}, chosen on dev) on {run.data.dev.examples:,} dev titles, trained on "
        f"{run.data.train.examples:,} titles. Departures from PaddleNLP's protocol: "
        + "; ".join(protocol_departures(config, [r for r in runs if r.strategy == baseline().name]))
        + "."
    )


def protocol_departures(config: JobConfig, full_runs: Sequence[RunResult]) -> list[str]:
    """How a full fine-tuning run of this config differs from PaddleNLP's CLUE protocol."""
    out = ["the test titles carved from train are left out of training"]
    if config.eval_steps != 100 or config.select_checkpoint != "best_dev":
        out.append(
            f"dev scored {'only at the end' if config.eval_steps is None else f'every {config.eval_steps} steps'} "
            f"with the {config.select_checkpoint.replace('_', ' ')} checkpoint, not every 100 steps with the best"
        )
    precisions = sorted({"tf32" if r.tf32 and r.precision == "fp32" else r.precision for r in full_runs})
    if precisions != ["fp32"]:
        out.append(f"training precision {', '.join(precisions)}, not fp32")
    if config.max_steps is not None:
        out.append(f"{config.max_steps:,} steps a run (max_steps), not 3 epochs")
    elif config.num_epochs != 3:
        out.append(f"{config.num_epochs} epochs, not 3")
    batch = config.batch_size_for(baseline().name)
    out.append(f"batch size {batch} only, of PaddleNLP's {', '.join(map(str, PADDLENLP_BATCHES))}")
    rates = config.learning_rates_for(baseline().name)
    if sorted(rates) != sorted(PADDLENLP_RATES):
        out.append(f"rates {', '.join(map(rate_text, rates))}, not PaddleNLP's "
                   f"{', '.join(map(rate_text, PADDLENLP_RATES))}")  # fmt: skip
    if len({r.seed for r in full_runs}) > 1:
        out.append("the rate chosen on the mean dev accuracy over seeds, where PaddleNLP reports its best run")
    return out


def _nothing_ranked(combined: Combined) -> str | None:
    """Why the rows are not ranked, when every row is at chance."""
    classes, titles = len(combined.run.data.labels), combined.run.data.test.examples
    if all(at_chance(row, classes, titles) for row in combined.headline):
        return (
            f"Not ranked: every row is within two standard errors of chance ({100 / classes:.1f}% for {classes} "
            "classes), so their accuracies differ by noise alone."
        )
    return None


def front_table(rows: Sequence[HeadlineRow], combined: Combined) -> str:
    """The rows ranked by test accuracy, with their costs and whether another row dominates them."""
    if (why := _nothing_ranked(combined)) is not None:
        return why
    runs = combined.runs
    dominated = pareto_front(rows, runs, combined.run.data.test.examples)
    labels = {row.group: row.label for row in rows}
    ranked = sorted(rows, key=lambda row: -row.test_accuracy.mean)
    body = [
        [row.label, cell(row.test_accuracy, 4), f"{row.trainable_params:,}", cell(row.training_seconds, 1),
         f"{row_memory(row, runs)[0]:,.0f}",
         "on the front" if not dominated[row.group] else "dominated by " + ", ".join(
             labels[group] for group in dominated[row.group])]
        for row in ranked
    ]  # fmt: skip
    note = (
        "A row is dominated when another is better beyond noise on at least one of test accuracy, trainable "
        "parameters, training time and peak memory, and worse beyond noise on none. Noise: two standard errors "
        "of the difference (accuracy: the seeds' spread and the titles'; time and memory: the seeds' spread, and "
        "at least 5% of the larger); rows within noise of each other, or equal, dominate neither."
    )
    return markdown_table("Rank by test accuracy", FRONT_COLUMNS, body) + "\n\n" + note


def _front_line(rows: Sequence[HeadlineRow], combined: Combined) -> str:
    if (why := _nothing_ranked(combined)) is not None:
        return why
    dominated = pareto_front(rows, combined.runs, combined.run.data.test.examples)
    front = [row.label for row in rows if not dominated[row.group]]
    beaten = [row.label for row in rows if dominated[row.group]]
    return (
        f"On the accuracy-cost front (test accuracy against trainable parameters, time and memory, beyond noise): "
        f"{', '.join(front)}." + (f" Dominated: {', '.join(beaten)}." if beaten else " No row is dominated.")
    )


def _cost_line(row: HeadlineRow, run: RunFacts) -> str:
    seconds = row.training_seconds
    timing = f"{seconds.mean:.1f} s" if seconds.n == 1 else f"{seconds.mean:.1f} ± {seconds.std:.1f} s per seed"
    return (
        f"{row.label} trained {row.trainable_params:,} of {row.total_params:,} parameters "
        f"({weights_share(row)}) in {timing} on {run.device.name}; test macro-F1 "
        f"{cell(row.test_macro_f1, 4)}."
    )


def learning_curve_line(combined: Combined) -> str | None:
    """With several training sizes: from which size on LoRA's best row is good enough at every larger
    size (computed from the verdicts), or that it is at none."""
    by_group = {row.group: row for row in combined.headline}
    lora = compared()[0].name
    sizes = sorted({row.train_examples for row in combined.headline})
    if len(sizes) < 2:
        return None
    answers: dict[int, str] = {}
    for size in sizes:
        rows = [row for row in combined.headline if row.train_examples == size]
        best = best_row(rows, lora)
        found = next((c for c in combined.comparisons if best is not None and c.group == best.group), None)
        if found is not None:
            answers[by_group[found.group].train_examples] = found.answer
    if not answers:
        return None
    measured = sorted(answers)
    margin = points(combined.comparisons[0].margin)
    listing = ", ".join(f"{size:,} rows: {answers[size]}" for size in measured)
    good_from = next(
        (size for index, size in enumerate(measured) if all(answers[s] == "good enough" for s in measured[index:])),
        None,
    )
    if good_from is None:
        verdict = f"LoRA is good enough (within {margin}) at none of the training sizes"
    elif good_from == measured[0]:
        verdict = f"LoRA is good enough (within {margin}) at every training size"
    else:
        verdict = f"LoRA is good enough (within {margin}) from {good_from:,} training rows on"
    return f"Learning curve: {verdict} ({listing}; `{LEARNING_PLOT}`)."


def per_kind(row: HeadlineRow, combined: Combined, field: str) -> tuple[list[RunResult], dict[str, list]]:
    """A row's runs that recorded `field` (kind -> a value per layer), and each kind's values over their
    layers and seeds, in WEIGHT_KINDS' order."""
    by_key = {r.key: r for r in combined.runs}
    runs = [by_key[key] for key in row.keys if getattr(by_key[key], field)]
    values = {kind: [v for r in runs for v in getattr(r, field).get(kind, [])] for kind in WEIGHT_KINDS}
    return runs, {kind: found for kind, found in values.items() if found}


def update_rank_line(rows: Sequence[HeadlineRow], combined: Combined) -> str | None:
    """The effective rank of each weight kind's learned update (rows that train the encoder's own
    weights), as median and range over layers and seeds, beside the LoRA ranks of the config."""
    import statistics

    parts = []
    for row in rows:
        runs, ranks = per_kind(row, combined, "update_rank")
        _, stables = per_kind(row, combined, "update_stable_rank")
        texts = []
        for kind, values in ranks.items():
            random = next((r.update_rank_random[kind] for r in runs if kind in r.update_rank_random), None)
            extra = [f"a random matrix of its shape: {random}"] if random else []
            extra += [f"stable rank {statistics.median(stables[kind]):.1f}"] if kind in stables else []
            texts.append(f"{kind} {statistics.median(values):g} ({min(values)}–{max(values)}"
                         + "".join(f"; {part}" for part in extra) + ")")  # fmt: skip
        if texts:
            layers = len(runs[0].update_rank[next(iter(runs[0].update_rank))])
            scope = f"{layers} layers" + (f" x {len(runs)} seeds" if len(runs) > 1 else "")
            parts.append(f"{row.label}, over {scope}: " + ", ".join(texts))
    if not parts:
        return None
    lora_ranks = sorted({r.lora_r for r in combined.runs if r.strategy == compared()[0].name and r.lora_r})
    beside = f"; LoRA's rank here: r = {', '.join(map(str, lora_ranks))}" if lora_ranks else ""
    return (
        "Effective rank of the learned update ΔW = W_after − W_before (the rank holding 90% of its energy; median "
        "and range): " + "; ".join(parts) + beside + "."
    )


def intruder_line(rows: Sequence[HeadlineRow], combined: Combined) -> str | None:
    """Each row's intruder dimensions per kind of weight (median over layers and seeds, and the most)."""
    import statistics

    parts = []
    for row in rows:
        _, counts = per_kind(row, combined, "intruder_dimensions")
        if counts:
            parts.append(f"{row.label}: " + ", ".join(f"{kind} {statistics.median(values):g} (at most {max(values)})"
                                                      for kind, values in counts.items()))  # fmt: skip
    if not parts:
        return None
    threshold = combined.run.config.intruder_threshold
    return (
        f"Intruder dimensions (of each fine-tuned weight's top {INTRUDER_TOP} singular vectors, those with no "
        f"pretrained singular vector within cosine {threshold:g}; median over layers and seeds; Shuttleworth et al. "
        "2024): " + "; ".join(parts) + ". Many mean the update added directions the pretrained weight did not have."
    )


def _checkpoint_line(rows: Sequence[HeadlineRow], combined: Combined) -> str | None:
    """Which step's weights each run was scored on, when dev was scored during training."""
    config = combined.run.config
    if config.eval_steps is None:
        return None
    by_key = {r.key: r for r in combined.runs}
    parts = []
    for row in rows:
        runs = [by_key[key] for key in row.keys]
        steps = ", ".join(
            f"{r.selected_step if r.selected_step is not None else r.steps} of {r.steps}"
            + (" (stopped early)" if r.stopped_early else "")
            for r in runs
        )
        parts.append(f"{row.label}: step{'s' if len(runs) > 1 else ''} {steps}")
    how = "the best dev accuracy" if config.select_checkpoint == "best_dev" else "the last"
    return (
        f"Checkpoints scored on test and saved ({how}; dev scored every {config.eval_steps} steps, chosen on dev, "
        f"never on test): " + "; ".join(parts) + "."
    )


def _time_line(lora: HeadlineRow, full: HeadlineRow) -> str:
    a, b = lora.training_seconds.mean, full.training_seconds.mean
    ratio = b / a if a else float("nan")
    faster = "faster" if ratio >= 1 else "slower"
    return f"Training time: LoRA {a:.1f} s vs full fine-tuning {b:.1f} s (LoRA {max(ratio, 1 / ratio):.2f}x {faster})."


def _caveats(rows: Sequence[HeadlineRow], combined: Combined) -> list[str]:
    lines = []
    classes = len(combined.run.data.labels)
    chance = 1 / classes
    near_chance = [row.label for row in rows if at_chance(row, classes, combined.run.data.test.examples)]
    if near_chance:
        lines.append(
            f"Test accuracy of {', '.join(near_chance)} is within two standard errors of chance "
            f"({100 * chance:.1f}% for {classes} classes): the model has not learned the task in this run "
            "(too few steps, a too-low learning rate, or weights that are not pretrained)."
        )
    if max(len(row.seeds) for row in rows) == 1:
        lines.append(
            "One seed per row: the spread between seeds is unknown. A list of seeds (`seed: [42, 43, 44]`) "
            "repeats every run and reports mean ± std."
        )
    return lines


def _sized(rows: Sequence[HeadlineRow]) -> bool:
    return len({row.train_examples for row in rows}) > 1


def artifact_lines(runs: Sequence[RunResult]) -> list[str]:
    lines = [
        "`results.json`: every number above plus per-step losses, predictions, the comparison, device, versions "
        "and data checksums",
        f"`{LOSS_PLOT}`: training loss per step",
        f"`{PARETO_PLOT}`: test accuracy against trainable parameters and training time",
    ]
    if len({r.train_examples for r in runs}) > 1:
        lines.append(f"`{LEARNING_PLOT}`: test accuracy against training rows, per strategy")
    lines += [f"`results/{r.key}.json`: {r.label}, seed {r.seed}, on its own" for r in runs]
    saved = [(r.label, path) for r in runs for path in r.artifacts]
    if saved:
        lines += [f"`{path}`: {label}" for label, path in saved]
    else:
        lines.append("No model files were saved (`save_artifacts: false`).")
    return lines
