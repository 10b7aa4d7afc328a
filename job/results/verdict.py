"""From runs to a verdict: pick each row's learning rate on dev (never on test), summarise its seeds,
and compare every other row with the chosen full fine-tuning row on the same test titles and seeds.

With two or more seeds every number of the answer is in one frame, seeds and titles both random
(job.results.crossed): the 95% interval of the row minus full fine-tuning, the two-sided p-value of no
difference read from the interval's own t (so p < 0.05 exactly when the interval excludes zero), and
the one-sided p-values of the answer at the margin: good enough, worse, or not shown. Holm's adjustment
over the rows compared holds each for the family. The exact sign-flip test over titles stays in the
record as `titles_only_p_value`: a statement about these trained models only. With one seed the titles'
frame is the only one: the sign-flip test and the titles' bootstrap interval, with no training variance."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from job.errors import UserError
from job.results.crossed import USEFUL, detectable
from job.results.schema import (
    Answer,
    Combined,
    Comparison,
    DevPoint,
    HeadlineRow,
    ResultRecord,
    RunFacts,
    RunResult,
    Stat,
)
from job.results.stats import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    SIGNIFICANCE,
    Interval,
    decode_classes,
    detectable_difference,
    discordant,
    holm,
    mean_std,
    observed_spread,
    seed_title_interval,
    sign_flip_p,
    title_differences,
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
        dev_curve=mean_curve(chosen),
        train_examples=first.train_examples,
    )


def mean_curve(runs: Sequence[RunResult]) -> list[DevPoint]:
    """The runs' dev curves averaged at the steps every one of them evaluated (early stopping can end
    a seed sooner)."""
    common = set.intersection(*({point.step for point in r.dev_curve} for r in runs)) if runs else set()
    by_run = [{point.step: point for point in r.dev_curve} for r in runs]
    return [
        DevPoint(
            step=step,
            accuracy=statistics.fmean(c[step].accuracy for c in by_run),
            loss=statistics.fmean(c[step].loss for c in by_run),
        )
        for step in sorted(common)
    ]


def best_row(rows: Sequence[HeadlineRow], strategy: str) -> HeadlineRow | None:
    """The strategy's row with the best mean dev accuracy (a LoRA rank sweep has several)."""
    candidates = [row for row in rows if row.strategy == strategy]
    return max(candidates, key=lambda row: row.dev_accuracy.mean) if candidates else None


def comparisons(
    rows: Sequence[HeadlineRow], results: Sequence[RunResult], facts: RunFacts, margin: float
) -> list[Comparison]:
    """Every row of a strategy other than the baseline against the baseline's chosen row of the same
    training size, on the seeds both ran and the same test titles: one exact test per row, Holm-adjusted
    over the rows of that size (a learning curve has one comparison per size)."""
    found: list[Comparison] = []
    for size in dict.fromkeys(row.train_examples for row in rows):
        found += _comparisons_at([row for row in rows if row.train_examples == size], results, facts, margin)
    return found


def _comparisons_at(
    rows: Sequence[HeadlineRow], results: Sequence[RunResult], facts: RunFacts, margin: float
) -> list[Comparison]:
    base = best_row(rows, baseline().name)
    labels_text = facts.data.test.labels
    if base is None or not labels_text:
        return []
    gold = np.array(decode_classes(labels_text))
    by_key = {r.key: r for r in results}
    compared_rows = [row for row in rows if row.strategy != base.strategy]
    pairs = [(row, _paired(row, base, by_key, gold)) for row in compared_rows]
    pairs = [(row, paired) for row, paired in pairs if paired is not None]
    tests = [Tests.of(title_differences(*_stacked(paired)), margin) for _, paired in pairs]
    family = holm_family(tests)
    strategies = [row.strategy for row in compared_rows]
    found = []
    for (row, paired), adjusted in zip(pairs, family, strict=True):
        alone = strategies.count(row.strategy) == 1
        found.append(_comparison(row, base, paired, adjusted, family=len(pairs), examples=gold.size, margin=margin,
                                 alone=alone))  # fmt: skip
    return found


@dataclass(frozen=True)
class Tests:
    """One row's tests against the baseline: in the seeds-and-titles frame with 2 or more seeds (the
    interval's own t: p < 0.05 exactly when it excludes zero); with one seed the titles' frame (the exact
    sign-flip test and the titles' bootstrap), the only one one seed has."""

    differences: np.ndarray
    interval: Interval
    titles_only_p: float  # the exact sign-flip test: about these runs (titles random, the models fixed)
    p: float  # two-sided, of no difference
    p_good_enough: float | None  # one-sided, of a true difference at or below -margin (None: one seed)
    p_worse: float | None  # one-sided, of a true difference at or above -margin

    @classmethod
    def of(cls, differences: np.ndarray, margin: float) -> Tests:
        interval = seed_title_interval(differences, BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED)
        titles_only = sign_flip_p(differences)
        reading = interval.reading
        if reading is None:
            return cls(differences, interval, titles_only, titles_only, None, None)
        return cls(differences, interval, titles_only, reading.p_two_sided(), reading.p_above(-margin),
                   reading.p_below(-margin))  # fmt: skip

    def at_margin(self, margin: float) -> Tests:
        """The same tests at another margin (the interval and the titles-only test stay as they are)."""
        reading = self.interval.reading
        if reading is None:
            return self
        return replace(self, p_good_enough=reading.p_above(-margin), p_worse=reading.p_below(-margin))


@dataclass(frozen=True)
class Adjusted:
    """One row's tests after Holm's adjustment over the rows compared at one training size."""

    tests: Tests
    p_holm: float
    good_enough_holm: float | None
    worse_holm: float | None


def holm_family(tests: Sequence[Tests]) -> list[Adjusted]:
    """Holm over the rows, for the difference test (two-sided) and for each non-inferiority answer (one-sided:
    good enough, worse), so each holds for the family as it does for one row."""
    p = holm([t.p for t in tests])
    one_sided = all(t.p_good_enough is not None for t in tests)
    good = holm([t.p_good_enough for t in tests]) if one_sided else [None] * len(tests)  # type: ignore[misc]
    worse = holm([t.p_worse for t in tests]) if one_sided else [None] * len(tests)  # type: ignore[misc]
    return [Adjusted(t, a, g, w) for t, a, g, w in zip(tests, p, good, worse, strict=True)]


def decide(adjusted: Adjusted, margin: float) -> tuple[bool, Answer]:
    """(significant, the answer at `margin`). Two or more seeds: Holm-adjusted p < 0.05 (two-sided) and,
    for the answer, Holm-adjusted one-sided p < 0.025, the two-sided 95% interval's own level; one seed:
    the exact test and the titles' interval."""
    interval = adjusted.tests.interval
    if adjusted.good_enough_holm is None or adjusted.worse_holm is None:
        agree = directions_agree(list(adjusted.tests.differences.mean(axis=1)), interval.difference)
        significant = is_significant(p_value_holm=adjusted.p_holm, directions_agree=agree, low=interval.low,
                                     high=interval.high)  # fmt: skip
        return significant, answer_for(interval.low, interval.high, margin)
    one_sided = SIGNIFICANCE / 2
    if adjusted.good_enough_holm < one_sided:
        answer: Answer = "good enough"
    elif adjusted.worse_holm < one_sided:
        answer = "worse"
    else:
        answer = "not shown to be good enough"
    return adjusted.p_holm < SIGNIFICANCE, answer


Paired = list[tuple[int, np.ndarray, np.ndarray]]


def _paired(row: HeadlineRow, base: HeadlineRow, by_key: dict[str, RunResult], gold: np.ndarray) -> Paired | None:
    """(seed, row correct, baseline correct) per title, for each seed both rows ran."""
    mine = {by_key[k].seed: by_key[k] for k in row.keys}
    theirs = {by_key[k].seed: by_key[k] for k in base.keys}
    seeds = [seed for seed in mine if seed in theirs]

    def correct(run: RunResult) -> np.ndarray:
        return np.array(decode_classes(run.test.predictions)) == gold

    return [(seed, correct(mine[seed]), correct(theirs[seed])) for seed in seeds] or None


def _stacked(paired: Paired) -> tuple[np.ndarray, np.ndarray]:
    return np.array([a for _, a, _ in paired]), np.array([b for _, _, b in paired])


def answer_for(low: float, high: float, margin: float) -> Answer:
    """Non-inferiority at `margin`: good enough when the whole interval lies above -margin, worse when
    it lies wholly below, otherwise not shown either way."""
    if low > -margin:
        return "good enough"
    if high < -margin:
        return "worse"
    return "not shown to be good enough"


def is_significant(*, p_value_holm: float, directions_agree: bool, low: float, high: float) -> bool:
    """A difference is called significant when the exact test rejects at the Holm-adjusted level, the
    seeds agree in its direction, and the interval (which carries the seeds' spread) excludes zero."""
    return p_value_holm < SIGNIFICANCE and directions_agree and (low > 0 or high < 0)


def directions_agree(seed_differences: Sequence[float], pooled: float) -> bool:
    """More seeds differ in the pooled difference's direction than against it (no direction: no)."""
    if pooled == 0:
        return False
    sign = 1 if pooled > 0 else -1
    along = sum(d * sign > 0 for d in seed_differences)
    return along > sum(d * sign < 0 for d in seed_differences)


def _comparison(
    row: HeadlineRow, base: HeadlineRow, paired: Paired, adjusted: Adjusted, *, family: int, examples: int,
    margin: float, alone: bool,
) -> Comparison:  # fmt: skip
    seeds = [seed for seed, _, _ in paired]
    tests = adjusted.tests
    differences, interval = tests.differences, tests.interval
    difference, low, high = interval.difference, interval.low, interval.high
    by_seed = {str(seed): float(d) for seed, d in zip(seeds, differences.mean(axis=1), strict=True)}
    keys = dict(zip(row.seeds, row.keys, strict=True))
    base_keys = dict(zip(base.seeds, base.keys, strict=True))
    significant, answer = decide(adjusted, margin)
    comparison = Comparison(
        group=row.group,
        baseline_group=base.group,
        subject=STRATEGIES[row.strategy].title if alone else row.label,
        selected={row.strategy: [keys[s] for s in seeds], base.strategy: [base_keys[s] for s in seeds]},
        labels={row.strategy: row.label, base.strategy: base.label},
        seeds=seeds,
        test_examples=int(examples),
        accuracy_difference=difference,
        seed_differences=by_seed,
        accuracy_difference_ci95=(low, high),
        interval_has_seed_variance=interval.df is not None,
        interval_df=interval.df,
        interval_widening=interval.widening,
        interval_se=interval.se,
        bootstrap_resamples=BOOTSTRAP_RESAMPLES,
        bootstrap_seed=BOOTSTRAP_SEED,
        p_value=tests.p,
        p_value_holm=adjusted.p_holm,
        titles_only_p_value=tests.titles_only_p,
        good_enough_p_value=tests.p_good_enough,
        good_enough_p_value_holm=adjusted.good_enough_holm,
        compared_rows=family,
        discordant={str(seed): discordant(a, b) for seed, a, b in paired},
        directions_agree=directions_agree(list(by_seed.values()), difference),
        significant=significant,
        detectable_difference=_detectable(differences, interval, int(examples), family),
        margin=margin,
        noninferior=answer == "good enough",
        answer=answer,
        verdict="",
    )
    return comparison.model_copy(update={"verdict": verdict_sentence(comparison)})


def _detectable(differences: np.ndarray, interval: Interval, titles: int, family: int) -> float:
    """The true difference this comparison finds significant 80% of the time, at its own observed spread:
    the seeds-and-titles frame's, its components as measured; one seed, the exact test's. MS_seeds over
    few seeds is skewed (its median is below its mean: 0.84 of it with 5 seeds), so the seeds' part is read
    at MS_seeds over that median: then, over many runs, the median of this number is found 80% of the time
    (measured: 70% with the plain estimate, tests/test_power.py)."""
    from scipy.stats import chi2

    reading = interval.reading
    if reading is None or reading.frame.titles_part + reading.frame.residual == 0:
        return detectable_difference(observed_spread(differences), titles, family)
    frame = reading.frame
    k = frame.seeds - 1
    ms_seeds = frame.ms_seeds / (float(chi2.median(k)) / k)
    seeds_part = max(ms_seeds - frame.ms_residual, 0.0) / (frame.seeds * frame.titles)
    return detectable(seeds=frame.seeds, titles=frame.titles, known=frame.titles_part + frame.residual,
                      seeds_part=seeds_part, beta=frame.beta, family=family)  # fmt: skip


def primary(found: Sequence[Comparison], rows: Sequence[HeadlineRow]) -> Comparison | None:
    """The comparison the report leads with: the first compared strategy's (LoRA's) best row on dev, at
    the largest training size."""
    largest = max((row.train_examples for row in rows), default=0)
    row = best_row([row for row in rows if row.train_examples == largest], compared()[0].name)
    return next((c for c in found if row is not None and c.group == row.group), None)


def signed_points(value: float) -> str:
    """A fraction as signed accuracy points: +1.2, −0.4 (a true minus sign)."""
    return f"{100 * value:+.1f}".replace("-", "−")


def points(value: float) -> str:
    """A fraction as a number of points: 1.0 point, 2.5 points."""
    amount = f"{100 * value:.1f}"
    return f"{amount} point" + ("" if amount == "1.0" else "s")


def p_text(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"


def interval_text(c: Comparison) -> str:
    low, high = c.accuracy_difference_ci95
    if c.interval_df is None:
        how = "titles resampled; one seed, so training variance is not in it"
    else:
        how = f"seeds and titles random: t with {c.interval_df:.1f} df"
        if c.interval_widening > 1.005:
            how += f", its critical value widened {c.interval_widening:.2f}x for {len(c.seeds)} seeds"
    holm_note = f"; Holm over {c.compared_rows} rows" if c.compared_rows > 1 and c.interval_df is not None else ""
    return f"95% CI {signed_points(low)} to {signed_points(high)} points, {how}{holm_note}"


def answer_text(c: Comparison) -> str:
    """The answer to "is it good enough?", first words first."""
    base, interval = baseline().title, interval_text(c)
    if c.answer == "good enough":
        return f"good enough: at most {points(c.margin)} below {base} ({interval})"
    if c.answer == "worse":
        return f"worse: more than {points(c.margin)} below {base} ({interval})"
    low = c.accuracy_difference_ci95[0]
    return (
        f"not shown to be good enough: the interval reaches {signed_points(low)} points, beyond the margin of "
        f"{points(c.margin)} ({interval})"
    )


def test_text(c: Comparison) -> str:
    """The difference test in words, in the interval's frame; it claims a difference only when the test does."""
    gap = 100 * c.accuracy_difference
    direction = "above" if gap > 0 else "below" if gap < 0 else "level with"
    amount = f"{abs(gap):.1f} points " if gap != 0 else ""
    seeds = f"{len(c.seeds)} seed" + ("s" if len(c.seeds) > 1 else "")
    if c.interval_df is None:
        evidence = f"exact sign-flip test over {c.test_examples} paired titles x {seeds}, p = {p_text(c.p_value)}"
    elif c.interval_se:
        t = c.accuracy_difference / c.interval_se
        evidence = (
            f"t = {t:.2f}".replace("-", "−")
            + f" with {c.interval_df:.1f} df over {seeds} x {c.test_examples:,} titles, both random, "
            f"p = {p_text(c.p_value)}"
        )
    else:
        evidence = f"{seeds} x {c.test_examples:,} titles, p = {p_text(c.p_value)}"
    if c.compared_rows > 1:
        evidence += f", Holm-adjusted over {c.compared_rows} rows {p_text(c.p_value_holm)}"
    if c.significant:
        better = baseline().title if gap < 0 else c.subject
        conclusion = f"{better} is significantly better"
    elif c.interval_df is None and c.p_value_holm < SIGNIFICANCE:
        conclusion = (
            "the titles differ, but the titles' interval still holds zero, and one seed carries no training "
            "variance: no firm difference between the strategies"
        )
    elif not any(only_row or only_base for only_row, only_base in c.discordant.values()):
        conclusion = (
            "the two rows got the same titles right on every seed, so nothing here tells them apart; at the "
            f"disagreement usual between runs a true difference of {c.detectable_difference * 100:.1f} points "
            "would be found 80% of the time"
        )
    elif c.detectable_difference > USEFUL:
        conclusion = (
            "no significant difference, which is not evidence of none: this comparison is too small to find even "
            "a 50-point difference 80% of the time"
        )
    else:
        conclusion = (
            f"no significant difference, which is not evidence of none: this comparison finds a true difference "
            f"of {c.detectable_difference * 100:.1f} points 80% of the time"
        )
    return f"{c.subject} is {amount}{direction} {baseline().title} ({evidence}): {conclusion}"


def verdict_sentence(c: Comparison) -> str:
    """The answer first, then what the difference test says."""
    return f"{answer_text(c)}. {test_text(c)}."


def check_same_sample(results: Sequence[RunResult]) -> None:
    """The paired statistics compare runs title by title: every run must have trained and been scored on
    the same rows. Runs whose recorded samples differ are never compared (a UserError naming them)."""
    by_size: dict[int, dict[str, list[str]]] = {}  # runs of one training size saw one sample
    for result in results:
        by_size.setdefault(result.train_examples, {}).setdefault(result.sample, []).append(result.key)
    for by_sample in by_size.values():
        if len(by_sample) > 1:
            listing = "; ".join(f"sample {sample}: {', '.join(keys)}" for sample, keys in by_sample.items())
            raise UserError(
                f"the runs did not all see the same training, dev and test rows ({listing}); their results "
                "cannot be compared: were the data files changed between runs? Rerun the stale ones with --force"
            )
    by_eval: dict[str, list[str]] = {}  # and every size the same dev and test rows
    for result in results:
        by_eval.setdefault(result.eval_sample, []).append(result.key)
    if len(by_eval) > 1:
        listing = "; ".join(f"dev and test {sample}: {', '.join(keys)}" for sample, keys in by_eval.items())
        raise UserError(
            f"the runs were not all scored on the same dev and test rows ({listing}); their results cannot be "
            "compared: were the data files changed between runs? Rerun the stale ones with --force"
        )


def combine(records: Sequence[ResultRecord], margin: float | None = None) -> Combined:
    """results.json: the run's facts once, the headline rows, the comparisons, then every run. `margin`
    (a fraction) replaces the config's `margin` (in points) for the non-inferiority answer."""
    facts = records[0].run
    results = [record.result for record in records]
    check_same_sample(results)
    present = {result.key for result in results}
    planned = list(dict.fromkeys(key for record in records for key in record.run.planned_runs))
    strategies = list(dict.fromkeys(result.strategy for result in results))
    facts = facts.model_copy(update={"config": facts.config.model_copy(update={"strategies": strategies})})
    rows = headline_rows(results)
    found = comparisons(rows, results, facts, facts.config.margin / 100 if margin is None else margin)
    return Combined(
        run=facts,
        headline=rows,
        comparison=primary(found, rows),
        comparisons=found,
        missing_runs=[key for key in planned if key not in present],
        runs=results,
    )
