"""What a planned comparison can detect, before anything trains, and the simulation that measures the
verdict's error rates and power (docs/power.md; `python -m job.results.power` writes that page).

Both rest on one model of how runs get titles right, stated in `TitleModel`: each test title has an
easiness shared by every run (real test sets have titles every model gets right and titles none does),
each run has a small shift of its own (training variance over seeds), and a run gets a title right with
probability Phi(level + shift + tau * easiness), with the level set by the row's accuracy and tau by how
often two runs disagree."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from job.config.plan import plan_runs
from job.config.schema import JobConfig
from job.data.tasks import CLUE_TASKS
from job.results.stats import (
    ASSUMED_DISAGREEMENT,
    POWER,
    detectable_difference,
    satterthwaite,
    seed_title_interval,
    sign_flip_p,
    title_differences,
)
from job.results.verdict import directions_agree, is_significant, points


@dataclass(frozen=True)
class TitleModel:
    accuracy: float = 0.57  # full fine-tuning's: PaddleNLP's ERNIE 3.0 Medium TNEWS dev accuracy
    disagreement: float = ASSUMED_DISAGREEMENT  # share of titles two runs of equal accuracy score differently
    seed_sd: float = 0.005  # standard deviation of a run's accuracy over training seeds (assumed)

    @cached_property
    def tau(self) -> float:
        """The easiness scale that gives `disagreement` at `accuracy`."""
        from scipy.optimize import brentq

        return float(brentq(lambda tau: self._disagreement(tau) - self.disagreement, 1e-3, 50.0))

    def _disagreement(self, tau: float) -> float:
        from scipy.stats import norm

        nodes, weights = np.polynomial.hermite_e.hermegauss(80)
        p = norm.cdf(self._level(self.accuracy, tau) + tau * nodes)
        return float(2 * np.sum(weights * p * (1 - p)) / np.sqrt(2 * np.pi))

    @cached_property
    def _shift_sd(self) -> float:
        """A shift of the latent level moves accuracy by the density there: seed_sd in accuracy."""
        from scipy.stats import norm

        return self.seed_sd * math.sqrt(1 + self.tau**2) / float(norm.pdf(norm.ppf(self.accuracy)))

    @staticmethod
    def _level(accuracy: float, tau: float) -> float:
        from scipy.stats import norm

        return float(math.sqrt(1 + tau**2) * norm.ppf(accuracy))

    def outcomes(self, rng: np.random.Generator, *, titles: int, seeds: int, gap: float) -> tuple[np.ndarray, ...]:
        """(row right, full fine-tuning right), each of shape (seeds, titles), for a row `gap` below."""
        from scipy.special import ndtr

        tau = self.tau
        easiness = tau * rng.standard_normal(titles)
        shift_sd = self._shift_sd

        def runs(accuracy: float) -> np.ndarray:
            level = self._level(accuracy, tau) + shift_sd * rng.standard_normal((seeds, 1))
            return rng.random((seeds, titles)) < ndtr(level + easiness)

        return runs(self.accuracy - gap), runs(self.accuracy)

    def planned_spread(self, seeds: int) -> float:
        """The standard deviation of the seed-averaged per-title difference at no difference: each
        title's outcomes differ between two runs on `disagreement` of titles, and averaging over the
        seeds divides that variance by their number."""
        return math.sqrt(self.disagreement / seeds)

    def needed_width(self, *, titles: int, seeds: int, margin_power: float) -> float:
        """How far the true difference must sit above -margin for the interval's lower end to clear it
        `margin_power` of the time: (t or z quantile + z of the power) times the difference's expected
        standard error. One seed: the titles' variance q / titles. Two or more: the interval's own
        expectation, (2 q + titles x 2 seed_sd^2) / (seeds x titles), at Satterthwaite's df."""
        from scipy.stats import norm
        from scipy.stats import t as student

        q = self.disagreement
        if seeds == 1:
            return float((norm.ppf(0.975) + norm.ppf(margin_power)) * math.sqrt(q / titles))
        ms_seeds, ms_titles = q + titles * 2 * self.seed_sd**2, q
        df = satterthwaite((ms_seeds, seeds - 1), (ms_titles, titles - 1))
        spread = math.sqrt((ms_seeds + ms_titles) / (seeds * titles))
        return float((student.ppf(0.975, df) + norm.ppf(margin_power)) * spread)


MODEL = TitleModel()


@dataclass(frozen=True)
class Reach:
    """What a planned comparison can show, under `MODEL`."""

    titles: int
    seeds: int
    rows: int
    detectable: float  # the true difference the test finds significant with 80% power (a fraction)
    margin: float
    margin_shown: bool  # at no true difference, non-inferiority at `margin` is shown with 80% power
    titles_for_margin: int | None  # test titles that would show it with these seeds (None: no number does)
    seeds_for_margin: int | None  # seeds that would show it with these titles (None: not within 100)


def planned_detectable(*, titles: int, seeds: int, rows: int) -> float:
    """The true difference called significant with POWER: the exact test's (Holm's first step over
    `rows`), or with seeds the interval's, which carries their spread, when that is wider."""
    test = detectable_difference(MODEL.planned_spread(seeds), titles, rows)
    if seeds == 1:
        return test
    return max(test, MODEL.needed_width(titles=titles, seeds=seeds, margin_power=POWER))


def planned_reach(*, titles: int, seeds: int, rows: int, margin: float) -> Reach:
    detectable = planned_detectable(titles=titles, seeds=seeds, rows=rows)

    def reaches(n: int, with_seeds: int = seeds) -> bool:
        return MODEL.needed_width(titles=n, seeds=with_seeds, margin_power=POWER) <= margin

    shown = margin > 0 and reaches(titles)
    needed: int | None = None
    if margin > 0 and not shown:
        low, high = titles, titles
        while not reaches(high) and high < 10**9:
            low, high = high, high * 2
        if reaches(high):
            while high - low > max(1, low // 200):  # to half a percent
                middle = (low + high) // 2
                low, high = (low, middle) if reaches(middle) else (middle, high)
            needed = high
    more_seeds = None
    if margin > 0 and not shown:
        more_seeds = next((n for n in range(max(2, seeds + 1), 101) if reaches(titles, n)), None)
    return Reach(titles=titles, seeds=seeds, rows=rows, detectable=detectable, margin=margin, margin_shown=shown,
                 titles_for_margin=needed, seeds_for_margin=more_seeds)  # fmt: skip


def reach_line(reach: Reach) -> str:
    """`job plan`'s lines on what the comparison can show."""
    seeds = f"{reach.seeds} seed" + ("s" if reach.seeds > 1 else "")
    family = f", Holm over {reach.rows} rows" if reach.rows > 1 else ""
    first = (
        f"comparison: {reach.titles:,} test titles x {seeds}{family}: detects a true difference of "
        f"{100 * reach.detectable:.1f} points with 80% power (assuming runs disagree on "
        f"{100 * MODEL.disagreement:.0f}% of titles; docs/power.md)"
    )
    if reach.seeds == 1:
        first += "\none seed: the interval cannot carry training variance; a list of seeds lets it"
    if reach.margin_shown:
        second = f"margin {points(reach.margin)}: within reach (shown with 80% power when the rows are level)"
    elif reach.titles_for_margin is not None:
        second = (
            f"margin {points(reach.margin)}: out of reach with {reach.titles:,} test titles; about "
            f"{reach.titles_for_margin:,} would reach it with {seeds} (max_eval_samples"
            + ("; more seeds need fewer" if reach.seeds > 1 else "")
            + "), or widen `margin`"
        )
    elif reach.margin > 0:
        more = (
            f"about {reach.seeds_for_margin} seeds would reach it at {reach.titles:,} titles"
            if reach.seeds_for_margin
            else "more than 100 seeds would be needed"
        )
        second = (
            f"margin {points(reach.margin)}: out of reach with {seeds} at any number of titles "
            f"(the seeds' own spread is wider); {more}, or widen `margin`"
        )
    else:
        second = "margin 0: non-inferiority means better, shown only when the interval lies above zero"
    return first + "\n" + second


def config_reach(config: JobConfig) -> Reach | str:
    """What the config's planned comparison can show, or why that is not known before the data is read."""
    from job.training.strategies import baseline

    runs = plan_runs(config)
    base = baseline().name
    if base not in config.strategies:
        return f"comparison: none ({base} is not among the strategies)"
    rows = len({run.group for run in runs if run.strategy.name != base}) // len(config.train_sizes())  # per size
    if rows == 0:
        return "comparison: none (no strategy besides the baseline)"
    titles = config.max_eval_samples
    if titles is None:
        task = CLUE_TASKS.get(config.dataset)  # own data: unknown until read
        titles = task.dev_rows if task is not None else None
    if titles is None:
        return (
            "comparison: the test split's size is known once the data is read; the report gives the difference "
            "its runs can detect"
        )
    return planned_reach(titles=titles, seeds=len(config.seeds()), rows=rows, margin=config.margin / 100)


def plan_comparison(config: JobConfig) -> str:
    """`job plan`'s closing lines: what the planned comparison can detect, and whether `margin` can be
    shown with that many test titles."""
    reach = config_reach(config)
    return reach if isinstance(reach, str) else reach_line(reach)


def margin_warning(config: JobConfig) -> str | None:
    """`job run`'s warning before anything trains, when the plan cannot show its margin: the plan's own
    line with what would reach it. None when the margin is in reach, or 0, or not known beforehand."""
    reach = config_reach(config)
    if isinstance(reach, str) or reach.margin_shown or reach.margin == 0:
        return None
    return "warning: " + reach_line(reach).splitlines()[-1] + "; the runs train anyway (job plan says it all)"


# ---------------------------------------------------------------- simulated error rates and power


def simulate(
    *, gap: float, titles: int, seeds: int, margin: float, datasets: int, seed: int, model: TitleModel = MODEL
) -> dict[str, float]:
    """The verdict's own rules on `datasets` simulated comparisons of one row with full fine-tuning: the
    share called significant, and the share granted non-inferiority at `margin`."""
    rng = np.random.default_rng(seed)
    significant = granted = 0
    for _ in range(datasets):
        row, full = model.outcomes(rng, titles=titles, seeds=seeds, gap=gap)
        differences = title_differences(row, full)
        interval = seed_title_interval(differences)
        agree = directions_agree(list(differences.mean(axis=1)), interval.difference)
        significant += is_significant(p_value_holm=sign_flip_p(differences), directions_agree=agree,
                                      low=interval.low, high=interval.high)  # fmt: skip
        granted += interval.low > -margin
    return {"significant": significant / datasets, "noninferior": granted / datasets}


POWER_GAPS = (0.0, 0.01, 0.02, 0.04, 0.06)
POWER_MARGIN = 0.01
POWER_TITLES = (256, 1_000, 10_000)
POWER_SEEDS = (1, 3)
POWER_DATASETS = 300
POWER_SEED = 2026


def power_cell(titles: int, seeds: int, gap: float) -> dict[str, float]:
    """One cell of docs/power.md: the verdict's rules on POWER_DATASETS seeded comparisons."""
    return simulate(gap=gap, titles=titles, seeds=seeds, margin=POWER_MARGIN, datasets=POWER_DATASETS,
                    seed=POWER_SEED)  # fmt: skip


def power_page() -> str:
    significance = ["| test titles | seeds | 0 points | 2 points | 4 points | 6 points | detectable (80%) |",
                    "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    margin = ["| test titles | seeds | granted at no difference | granted at a 1-point gap (error) | titles for 80% |",
              "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for titles in POWER_TITLES:
        for seeds in POWER_SEEDS:
            cells = {gap: power_cell(titles, seeds, gap) for gap in POWER_GAPS}
            shares = " | ".join(f"{100 * cells[gap]['significant']:.0f}%" for gap in (0.0, 0.02, 0.04, 0.06))
            detectable = planned_detectable(titles=titles, seeds=seeds, rows=1)
            significance.append(f"| {titles:,} | {seeds} | {shares} | {100 * detectable:.1f} points |")
            reach = planned_reach(titles=titles, seeds=seeds, rows=1, margin=POWER_MARGIN)
            needed = (
                "reached"
                if reach.margin_shown
                else f"{reach.titles_for_margin:,}"
                if reach.titles_for_margin
                else "none"
            )
            margin.append(f"| {titles:,} | {seeds} | {100 * cells[0.0]['noninferior']:.0f}% | "
                          f"{100 * cells[POWER_MARGIN]['noninferior']:.1f}% | {needed} |")  # fmt: skip
    return PAGE.format(
        significance="\n".join(significance), margin="\n".join(margin), datasets=POWER_DATASETS, seed=POWER_SEED,
        accuracy=100 * MODEL.accuracy, disagreement=100 * MODEL.disagreement, seed_sd=100 * MODEL.seed_sd,
    )  # fmt: skip


PAGE = """# Power and error rates of the verdict

What the verdict ([how it works](how-it-works.md#the-verdict)) can find, by the number of test titles
and seeds, measured by simulation: each cell applies the verdict's own rules to {datasets} simulated
comparisons of one row with full fine-tuning (seeded: `make docs` writes this page again with the same
numbers, `python -m job.results.power --docs docs`, in about 9 minutes).

## Finding a difference

The share of comparisons called significant (the exact sign-flip test at p < 0.05, the seeds agreeing
in direction, and the interval excluding zero) when the row is truly that many points below full
fine-tuning. The column at 0 points is the false-positive rate. The last column is what `job plan`
prints: the true difference found with 80% power, by the normal approximation of the exact test, or
with seeds of the interval when that is wider (it carries their spread).

{significance}

With one seed nothing can tell a difference between the strategies from the luck of one training run:
at 10,000 titles the titles' noise is smaller than the runs' own spread, and a row no better than full
fine-tuning is called different on a third of comparisons. With seeds, the interval carries their
spread: 1-2% at 256 and 1,000 titles, and 7% at 10,000, where the runs' spread dominates and 3 seeds
estimate it only roughly (more seeds bring it to 5%).

## Showing "good enough"

The share of comparisons granted non-inferiority at a 1-point margin (the interval's lower end above
-1 point): when the row is level with full fine-tuning (what you want to see), and when it is exactly
1 point below (an error; at most 5% is the promise, 2.5% the nominal rate of a two-sided 95%
interval). The last column is the number of test titles `job plan` says would show the margin with
80% power at no difference ("none": more seeds, not more titles, are needed). With one seed the
interval leaves training variance out, so it grants too often once titles are many (17% at 10,000):
a non-inferiority answer wants seeds.

{margin}

## The simulation

Each title has an easiness shared by every run, so the titles one run gets wrong are mostly those
another gets wrong, as on real test sets. Full fine-tuning is right on {accuracy:.0f}% of titles
(PaddleNLP's ERNIE 3.0 Medium TNEWS dev accuracy); two runs of equal accuracy disagree on
{disagreement:.0f}% of titles; a run's accuracy varies by {seed_sd:.1f} points (one standard
deviation) over training seeds. The last two are assumptions, not measurements of ERNIE: the report's
detectable difference uses your runs' own disagreement instead. `tests/test_power.py` measures the
false-positive rate and the wrongly granted rate at 256 titles on every test run.
"""


TABLE_START, TABLE_END = "<!-- power table: make docs -->", "<!-- /power table -->"


def significance_table(page: str) -> str:
    """The page's table of finding a difference (docs/how-it-works.md carries a copy)."""
    return "\n".join(line for line in page.split("## Finding a difference", 1)[1].split("\n\n")[2].splitlines())


def write_docs(folder: Path) -> None:
    """docs/power.md, and the copy of its table in docs/how-it-works.md between the markers."""
    page = power_page()
    (folder / "power.md").write_text(page, encoding="utf-8")
    how = folder / "how-it-works.md"
    text = how.read_text(encoding="utf-8")
    before, rest = text.split(TABLE_START, 1)
    after = rest.split(TABLE_END, 1)[1]
    how.write_text(f"{before}{TABLE_START}\n{significance_table(page)}\n{TABLE_END}{after}", encoding="utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--docs"]:
        write_docs(Path(sys.argv[2]))
    else:
        print(power_page(), end="")
