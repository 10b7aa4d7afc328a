"""From runs to a verdict: pick each row's learning rate on dev (never on test), summarise its seeds,
and compare every other row with the chosen full fine-tuning row on the same test titles with an
exact McNemar test per seed (Holm-adjusted across the rows compared) and a paired-bootstrap interval
of the accuracy difference."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

from job.errors import UserError
from job.results.schema import Combined, Comparison, HeadlineRow, ResultRecord, RunFacts, RunResult, Stat
from job.results.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    decode_classes,
    holm,
    mcnemar_exact,
    mean_std,
    paired_bootstrap_ci,
)
from job.training.runs import rate_text
from job.training.strategies import STRATEGIES, baseline, compared


def stat(values: Sequence[float]) -> Stat:
    mean, std = mean_std(values)
    return Stat(mean=mean, std=std, n=len(values))


def select_rate(runs: Sequence[RunResult]) -> tuple[float, dict[str, float]]:
    """The learning rate with the best mean dev accuracy over its seeds (ties: lower mean dev loss,
    then the rate tried first), and every rate's mean dev accuracy."""
    by_rate: dict[float, list[RunResult]] = {}
    for run in runs:
        by_rate.setdefault(run.learning_rate, []).append(run)
    scores = {
        rate: (statistics.fmean(r.dev.accuracy for r in group), -statistics.fmean(r.dev.loss for r in group))
        for rate, group in by_rate.items()
    }
    best = max(scores, key=lambda rate: scores[rate])  # max keeps the first of equal scores
    return best, {rate_text(rate): score[0] for rate, score in scores.items()}


def headline_rows(results: Sequence[RunResult]) -> list[HeadlineRow]:
    """One row per group (strategy, LoRA shape), in the order the groups first appear."""
    groups: dict[str, list[RunResult]] = {}
    for result in results:
        groups.setdefault(result.group, []).append(result)
    return [_headline(members) for members in groups.values()]


def _headline(members: list[RunResult]) -> HeadlineRow:
    rate, by_rate = select_rate(members)
    chosen = sorted((r for r in members if r.learning_rate == rate), key=lambda r: r.index)
    first = chosen[0]
    per_class = np.array([[np.nan if a is None else a for a in r.test.per_class_accuracy] for r in chosen])
    shortest = min(len(r.step_losses) for r in chosen)
    return HeadlineRow(
        group=first.group,
        strategy=first.strategy,
        label=first.label,
        learning_rate=rate,
        keys=[r.key for r in chosen],
        seeds=[r.seed for r in chosen],
        dev_accuracy_by_rate=by_rate,
        trainable_params=first.trainable_params,
        total_params=first.total_params,
        training_seconds=stat([r.training_seconds for r in chosen]),
        dev_accuracy=stat([r.dev.accuracy for r in chosen]),
        test_accuracy=stat([r.test.accuracy for r in chosen]),
        dev_loss=stat([r.dev.loss for r in chosen]),
        test_loss=stat([r.test.loss for r in chosen]),
        dev_macro_f1=stat([r.dev.macro_f1 for r in chosen]),
        test_macro_f1=stat([r.test.macro_f1 for r in chosen]),
        test_per_class_accuracy=[
            None if np.isnan(column).all() else float(np.nanmean(column)) for column in per_class.T
        ],
        step_losses=[statistics.fmean(r.step_losses[i] for r in chosen) for i in range(shortest)],
    )


SIGNIFICANCE = 0.05


def mcnemar_agrees(p_values: Sequence[float]) -> bool:
    """The exact test confirms a difference on more than half of the seeds. The percentile bootstrap
    alone can exclude zero on a handful of one-sided discordant titles (5 vs 0: McNemar p = 0.06), so a
    difference is called significant only when both agree."""
    return sum(p < SIGNIFICANCE for p in p_values) * 2 > len(p_values)


def best_row(rows: Sequence[HeadlineRow], strategy: str) -> HeadlineRow | None:
    """The strategy's row with the best mean dev accuracy (a LoRA rank sweep has several)."""
    candidates = [row for row in rows if row.strategy == strategy]
    return max(candidates, key=lambda row: row.dev_accuracy.mean) if candidates else None


def comparisons(rows: Sequence[HeadlineRow], results: Sequence[RunResult], facts: RunFacts) -> list[Comparison]:
    """Every row of a strategy other than the baseline against the baseline's chosen row, seed by seed
    on the same test titles. With several rows compared, each seed's McNemar p-values are Holm-adjusted
    across them, and significance reads the adjusted values (one row: the same as unadjusted)."""
    base = best_row(rows, baseline().name)
    labels_text = facts.data.test.labels
    if base is None or not labels_text:
        return []
    gold = np.array(decode_classes(labels_text))
    by_key = {r.key: r for r in results}
    compared_rows = [row for row in rows if row.strategy != base.strategy]
    pairs = [(row, _paired(row, base, by_key, gold)) for row in compared_rows]
    pairs = [(row, paired) for row, paired in pairs if paired is not None]
    raw = {row.group: {str(seed): mcnemar_exact(a, b) for seed, a, b in paired} for row, paired in pairs}
    adjusted: dict[str, dict[str, float]] = {row.group: {} for row, _ in pairs}
    for seed in dict.fromkeys(seed for tests in raw.values() for seed in tests):
        family = [group for group, tests in raw.items() if seed in tests]
        for group, p in zip(family, holm([raw[group][seed][0] for group in family]), strict=True):
            adjusted[group][seed] = p
    strategies = [row.strategy for row in compared_rows]
    return [
        _comparison(
            row,
            base,
            paired,
            raw[row.group],
            adjusted[row.group],
            len(pairs),
            gold.size,
            alone=strategies.count(row.strategy) == 1,
        )
        for row, paired in pairs
    ]


def _paired(
    row: HeadlineRow, base: HeadlineRow, by_key: dict[str, RunResult], gold: np.ndarray
) -> list[tuple[int, np.ndarray, np.ndarray]] | None:
    """(seed, row correct, baseline correct) per title, for each seed both rows ran."""
    mine = {by_key[k].seed: by_key[k] for k in row.keys}
    theirs = {by_key[k].seed: by_key[k] for k in base.keys}
    seeds = [seed for seed in mine if seed in theirs]

    def correct(run: RunResult) -> np.ndarray:
        return np.array(decode_classes(run.test.predictions)) == gold

    return [(seed, correct(mine[seed]), correct(theirs[seed])) for seed in seeds] or None


def _comparison(
    row: HeadlineRow, base: HeadlineRow, paired: list[tuple[int, np.ndarray, np.ndarray]],
    tests: dict[str, tuple[float, int, int]], adjusted: dict[str, float], family: int, examples: int, alone: bool,
) -> Comparison:  # fmt: skip
    seeds = [seed for seed, _, _ in paired]
    mine = np.array([a for _, a, _ in paired])
    theirs = np.array([b for _, _, b in paired])
    difference, low, high = paired_bootstrap_ci(mine, theirs, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
    significant = (low > 0 or high < 0) and mcnemar_agrees(list(adjusted.values()))
    keys = dict(zip(row.seeds, row.keys, strict=True))
    base_keys = dict(zip(base.seeds, base.keys, strict=True))
    comparison = Comparison(
        group=row.group,
        subject=STRATEGIES[row.strategy].title if alone else row.label,
        selected={row.strategy: [keys[s] for s in seeds], base.strategy: [base_keys[s] for s in seeds]},
        labels={row.strategy: row.label, base.strategy: base.label},
        seeds=seeds,
        test_examples=int(examples),
        accuracy_difference=difference,
        accuracy_difference_ci95=(low, high),
        bootstrap_resamples=BOOTSTRAP_RESAMPLES,
        bootstrap_seed=BOOTSTRAP_SEED,
        mcnemar_p={seed: p for seed, (p, _, _) in tests.items()},
        mcnemar_p_holm=adjusted,
        compared_rows=family,
        discordant={seed: (only_row, only_base) for seed, (_, only_row, only_base) in tests.items()},
        significant=significant,
        verdict="",
    )
    return comparison.model_copy(update={"verdict": verdict_sentence(comparison)})


def primary(found: Sequence[Comparison], rows: Sequence[HeadlineRow]) -> Comparison | None:
    """The comparison the report leads with: the first compared strategy's (LoRA's) best row on dev."""
    row = best_row(rows, compared()[0].name)
    return next((c for c in found if row is not None and c.group == row.group), None)


def _signed_points(value: float) -> str:
    return f"{100 * value:+.1f}".replace("-", "−")


def _p_value(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"


def verdict_sentence(c: Comparison) -> str:
    """The comparison in words; it claims a difference only when the 95% interval excludes zero."""
    gap = 100 * c.accuracy_difference
    direction = "above" if gap > 0 else "below" if gap < 0 else "level with"
    amount = f"{abs(gap):.1f} points " if gap != 0 else ""
    low, high = c.accuracy_difference_ci95
    if len(c.seeds) == 1:
        mcnemar = f"McNemar p = {_p_value(next(iter(c.mcnemar_p.values())))}"
    else:
        mcnemar = "McNemar p = " + ", ".join(f"{_p_value(p)} (seed {seed})" for seed, p in c.mcnemar_p.items())
    if c.compared_rows > 1:
        mcnemar += f", Holm-adjusted over {c.compared_rows} rows " + ", ".join(
            _p_value(p) for p in c.mcnemar_p_holm.values()
        )
    evidence = (
        f"(95% CI {_signed_points(low)} to {_signed_points(high)} points; {mcnemar} on {c.test_examples} paired titles)"
    )
    excludes_zero = low > 0 or high < 0
    if excludes_zero and not c.significant:
        conclusion = (
            f"the interval excludes zero but the exact test does not confirm it (p ≥ {SIGNIFICANCE:g} on most "
            "seeds): no firm difference at this sample size"
        )
    elif not c.significant:
        conclusion = "no significant difference at this sample size"
    elif gap < 0:
        conclusion = f"{baseline().title} is significantly better (the interval excludes zero)"
    else:
        conclusion = f"{c.subject} is significantly better (the interval excludes zero)"
    return f"{c.subject} is {amount}{direction} {baseline().title} {evidence}: {conclusion}."


def check_same_sample(results: Sequence[RunResult]) -> None:
    """The paired statistics compare runs title by title: every run must have trained and been scored on
    the same rows. Runs whose recorded samples differ are never compared (a UserError naming them)."""
    by_sample: dict[str, list[str]] = {}
    for result in results:
        by_sample.setdefault(result.sample, []).append(result.key)
    if len(by_sample) > 1:
        listing = "; ".join(f"sample {sample}: {', '.join(keys)}" for sample, keys in by_sample.items())
        raise UserError(
            f"the runs did not all see the same training, dev and test rows ({listing}); their results cannot "
            "be compared: were the data files changed between runs? Rerun the stale ones with --force"
        )


def combine(records: Sequence[ResultRecord]) -> Combined:
    """results.json: the run's facts once, the headline rows, the comparison, then every run."""
    facts = records[0].run
    results = [record.result for record in records]
    check_same_sample(results)
    present = {result.key for result in results}
    planned = list(dict.fromkeys(key for record in records for key in record.run.planned_runs))
    strategies = list(dict.fromkeys(result.strategy for result in results))
    facts = facts.model_copy(update={"config": facts.config.model_copy(update={"strategies": strategies})})
    rows = headline_rows(results)
    found = comparisons(rows, results, facts)
    return Combined(
        run=facts,
        headline=rows,
        comparison=primary(found, rows),
        comparisons=found,
        missing_runs=[key for key in planned if key not in present],
        runs=results,
    )
