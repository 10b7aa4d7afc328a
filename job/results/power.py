"""What a planned comparison can detect, before anything trains, and the simulation that measures the
verdict's error rates and power (docs/power.md; `python -m job.results.power` writes that page).

Both rest on one model of how runs get titles right, stated in `TitleModel`: each test title has an
easiness shared by every run (real test sets have titles every model gets right and titles none does),
each run has a small shift of its own (training variance over seeds), and a run gets a title right with
probability Phi(level + shift + tau * easiness), with the level set by the row's accuracy and tau by how
often two runs disagree."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from job.config.plan import plan_runs
from job.config.schema import JobConfig
from job.data.tasks import CLUE_TASKS
from job.results.stats import (
    SIGNIFICANCE,
    detectable_difference,
    seed_title_interval,
    sign_flip_p,
    title_differences,
)
from job.results.verdict import points


@dataclass(frozen=True)
class TitleModel:
    accuracy: float = 0.57  # full fine-tuning's: PaddleNLP's ERNIE 3.0 Medium TNEWS dev accuracy
    disagreement: float = 0.15  # share of titles two runs of equal accuracy score differently (assumed)
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

    def interval_terms(self, seeds: int) -> tuple[float, float]:
        """(a, c) of the variance a / titles + c the seeds-then-titles bootstrap gives the difference:
        the titles' noise counted once per seed drawn and once per title drawn, the seeds' shifts scaled
        by the bootstrap's (seeds - 1) / seeds. One seed: the titles' alone."""
        q = self.disagreement
        if seeds == 1:
            return q, 0.0
        seed_level = (seeds - 1) / seeds**2
        return seed_level * q + q / seeds, seed_level * 2 * self.seed_sd**2


MODEL = TitleModel()


def _z_sum() -> float:
    from scipy.stats import norm

    from job.results.stats import POWER

    return float(norm.ppf(1 - SIGNIFICANCE / 2) + norm.ppf(POWER))


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


def planned_reach(*, titles: int, seeds: int, rows: int, margin: float) -> Reach:
    detectable = detectable_difference(MODEL.planned_spread(seeds), titles, rows)
    z = _z_sum()
    a, c = MODEL.interval_terms(seeds)
    shown = margin > 0 and z * math.sqrt(a / titles + c) <= margin
    room = (margin / z) ** 2 - c
    needed = math.ceil(a / room) if not shown and margin > 0 and room > 0 else None
    return Reach(titles=titles, seeds=seeds, rows=rows, detectable=detectable, margin=margin, margin_shown=shown,
                 titles_for_margin=needed)  # fmt: skip


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
        second = (
            f"margin {points(reach.margin)}: out of reach with {seeds} at any number of titles "
            "(the seeds' own spread is wider): add seeds or widen `margin`"
        )
    else:
        second = "margin 0: non-inferiority means better, shown only when the interval lies above zero"
    return first + "\n" + second


def plan_comparison(config: JobConfig) -> str:
    """`job plan`'s closing lines: what the planned comparison can detect, and whether `margin` can be
    shown with that many test titles."""
    from job.training.strategies import baseline

    runs = plan_runs(config)
    base = baseline().name
    if base not in config.strategies:
        return f"comparison: none ({base} is not among the strategies)"
    rows = len({run.group for run in runs if run.strategy.name != base})
    if rows == 0:
        return "comparison: none (no strategy besides the baseline)"
    titles = config.max_eval_samples
    if titles is None:
        task = CLUE_TASKS.get(config.dataset) if config.data_dir is None or config.dataset in CLUE_TASKS else None
        titles = task.dev_rows if task is not None else None
    if titles is None:
        return (
            "comparison: the test split's size is known once the data is read; the report gives the difference "
            "its runs can detect"
        )
    return reach_line(planned_reach(titles=titles, seeds=len(config.seeds()), rows=rows, margin=config.margin / 100))


# ---------------------------------------------------------------- simulated error rates and power


def simulate(
    *, gap: float, titles: int, seeds: int, margin: float, datasets: int, seed: int, model: TitleModel = MODEL,
    intervals: bool = True,
) -> dict[str, float]:  # fmt: skip
    """The verdict's statistics on `datasets` simulated comparisons: the share found significant
    (sign-flip p < 0.05) and, with `intervals`, the share granted non-inferiority at `margin`."""
    rng = np.random.default_rng(seed)
    significant = granted = 0
    for _ in range(datasets):
        row, full = model.outcomes(rng, titles=titles, seeds=seeds, gap=gap)
        differences = title_differences(row, full)
        significant += sign_flip_p(differences) < SIGNIFICANCE
        if intervals:
            _, low, _ = seed_title_interval(differences)
            granted += low > -margin
    out = {"significant": significant / datasets}
    if intervals:
        out["noninferior"] = granted / datasets
    return out


POWER_GAPS = (0.0, 0.02, 0.04, 0.06)
POWER_TITLES = (256, 1_000, 10_000)
POWER_SEEDS = (1, 3)
POWER_DATASETS = 400
POWER_SEED = 2026


def power_cells() -> Iterator[tuple[int, int, float, float]]:
    """(titles, seeds, gap, share significant) of docs/power.md's table."""
    for titles in POWER_TITLES:
        for seeds in POWER_SEEDS:
            for gap in POWER_GAPS:
                found = simulate(gap=gap, titles=titles, seeds=seeds, margin=0.01, datasets=POWER_DATASETS,
                                 seed=POWER_SEED, intervals=False)  # fmt: skip
                yield titles, seeds, gap, found["significant"]


def power_page() -> str:
    from job.results.stats import POWER

    cells = list(power_cells())
    gaps = " | ".join(f"{100 * gap:.0f} points" for gap in POWER_GAPS)
    header = f"| test titles | seeds | {gaps} | detectable (80%) |"
    rule = "|---:|---:|" + "---:|" * len(POWER_GAPS) + "---:|"
    lines = [header, rule]
    for titles in POWER_TITLES:
        for seeds in POWER_SEEDS:
            shares = [share for t, s, _, share in cells if (t, s) == (titles, seeds)]
            detectable = detectable_difference(MODEL.planned_spread(seeds), titles)
            lines.append(f"| {titles:,} | {seeds} | " + " | ".join(f"{100 * share:.0f}%" for share in shares)
                         + f" | {100 * detectable:.1f} points |")  # fmt: skip
    return PAGE.format(
        table="\n".join(lines), datasets=POWER_DATASETS, seed=POWER_SEED, accuracy=100 * MODEL.accuracy,
        disagreement=100 * MODEL.disagreement, seed_sd=100 * MODEL.seed_sd, power=100 * POWER,
    )  # fmt: skip


PAGE = """# Power of the verdict

How often the verdict's difference test (the exact sign-flip permutation test over titles,
[how it works](how-it-works.md#the-verdict)) finds a true accuracy gap between a row and full
fine-tuning, by the number of test titles and seeds. Each cell is the share of {datasets} simulated
comparisons found significant at p < 0.05 (seeded: `python -m job.results.power` writes this page
again, the same numbers, `make docs` with it). The column at 0 points is the false-positive rate. The
last column is what `job plan` prints: the true difference detected with {power:.0f}% power, by the
normal approximation of the same test.

{table}

The simulation: each title has an easiness shared by every run, so the titles one run gets wrong are
mostly those another gets wrong, as on real test sets. Full fine-tuning is right on {accuracy:.0f}% of
titles (PaddleNLP's ERNIE 3.0 Medium TNEWS dev accuracy), two runs of equal accuracy disagree on
{disagreement:.0f}% of titles, and a run's accuracy varies by {seed_sd:.1f} points (one standard
deviation) over training seeds. The last two are assumptions: your own runs' disagreement is measured,
and the report's detectable difference uses it.

The test is exact: its false-positive rate is at most 5% whatever the titles, and a test
(`tests/test_power.py`) measures it by simulation, together with how often non-inferiority is wrongly
granted when the true gap equals the margin (at most 5%; the interval is two-sided 95%, so 2.5% is
the nominal rate).
"""


if __name__ == "__main__":
    print(power_page(), end="")
