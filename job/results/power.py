"""What a planned comparison can detect, before anything trains, and the simulation that measures the
verdict's error rates and power (docs/power.md; `python -m job.results.power` writes that page). Both
use the verdict's own frame (job.results.crossed): with seeds, the power is computed under the same
normal model that sets the interval's critical value, not as (t + z) standard errors.

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
from job.results.crossed import USEFUL
from job.results.crossed import detectable as crossed_detectable
from job.results.crossed import power as crossed_power
from job.results.stats import ASSUMED_DISAGREEMENT, POWER, detectable_difference, title_differences
from job.results.verdict import Tests, decide, holm_family, points

SEED_SD_SOURCE = "as measured on the pretrained stand-in at the default config"


@dataclass(frozen=True)
class TitleModel:
    accuracy: float = 0.57  # full fine-tuning's: PaddleNLP's ERNIE 3.0 Medium TNEWS dev accuracy
    disagreement: float = ASSUMED_DISAGREEMENT  # share of titles two runs of equal accuracy score differently
    # standard deviation of a run's accuracy over training seeds: the default config on the pretrained stand-in,
    # 8 seeds per strategy, pooled (docs/power.md: LoRA 0.97, full fine-tuning 0.67, pooled 0.84 points)
    seed_sd: float = 0.0084

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
        return self.family(rng, titles=titles, seeds=seeds, gaps=[gap])

    def family(self, rng: np.random.Generator, *, titles: int, seeds: int, gaps: list[float]) -> tuple[np.ndarray, ...]:
        """(each row right ..., full fine-tuning right) on the same titles: a row per gap below."""
        from scipy.special import ndtr

        tau = self.tau
        easiness = tau * rng.standard_normal(titles)
        shift_sd = self._shift_sd

        def runs(accuracy: float) -> np.ndarray:
            level = self._level(accuracy, tau) + shift_sd * rng.standard_normal((seeds, 1))
            return rng.random((seeds, titles)) < ndtr(level + easiness)

        rows = [runs(self.accuracy - gap) for gap in gaps]
        return (*rows, runs(self.accuracy))

    def planned_spread(self, seeds: int) -> float:
        """The standard deviation of the seed-averaged per-title difference at no difference: each
        title's outcomes differ between two runs on `disagreement` of titles, and averaging over the
        seeds divides that variance by their number."""
        return math.sqrt(self.disagreement / seeds)

    def components(self, *, titles: int, seeds: int, seed_sd: float | None = None) -> dict[str, float]:
        """The variance of the mean difference by component, as the verdict's frame estimates it: the
        runs' title-by-title disagreement (the residual) and the seeds' (a row's accuracy moves by
        `seed_sd` over seeds, so the difference of two rows by √2 as much)."""
        sd = self.seed_sd if seed_sd is None else seed_sd
        return {"known": self.disagreement / (seeds * titles), "seeds_part": 2 * sd**2 / seeds}

    def margin_power(self, *, titles: int, seeds: int, margin: float, seed_sd: float | None = None) -> float:
        """The chance that a row level with full fine-tuning is shown good enough at `margin`. One seed:
        the titles' interval, by the normal approximation; seeds: the verdict's frame."""
        from scipy.stats import norm

        if seeds == 1:
            return float(norm.cdf(margin / math.sqrt(self.disagreement / titles) - norm.ppf(0.975)))
        return crossed_power(0.0, seeds=seeds, titles=titles, margin=margin,
                             **self.components(titles=titles, seeds=seeds, seed_sd=seed_sd))  # fmt: skip


MODEL = TitleModel()
PLAN_SEED_SDS = (0.005, 0.01, 0.02)  # `job plan` prints the detectable difference at these seed spreads too


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


def planned_detectable(*, titles: int, seeds: int, rows: int, seed_sd: float | None = None) -> float:
    """The true difference called significant with POWER: one seed, the exact test's (Holm's first step
    over `rows`, normal approximation); seeds, the verdict's frame at the model's components."""
    if seeds == 1:
        return detectable_difference(MODEL.planned_spread(seeds), titles, rows)
    return crossed_detectable(seeds=seeds, titles=titles, family=rows,
                              **MODEL.components(titles=titles, seeds=seeds, seed_sd=seed_sd))  # fmt: skip


def planned_reach(*, titles: int, seeds: int, rows: int, margin: float) -> Reach:
    detectable = planned_detectable(titles=titles, seeds=seeds, rows=rows)

    def reaches(n: int, with_seeds: int = seeds) -> bool:
        return MODEL.margin_power(titles=n, seeds=with_seeds, margin=margin) >= POWER

    shown = margin > 0 and reaches(titles)
    needed: int | None = None
    if margin > 0 and not shown:
        low, high = titles, titles
        while not reaches(high) and high < 10**8:
            low, high = high, high * 4
        if reaches(high):
            while high - low > max(1, low // 100):  # to one percent
                middle = (low + high) // 2
                low, high = (low, middle) if reaches(middle) else (middle, high)
            needed = high
    more_seeds = None
    if margin > 0 and not shown:
        low, high = max(2, seeds + 1), max(2, seeds + 1)
        while not reaches(titles, high) and high < 100:
            low, high = high, min(100, high * 2)
        if reaches(titles, high):
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (low, middle) if reaches(titles, middle) else (middle, high)
            more_seeds = low if reaches(titles, low) else high
    return Reach(titles=titles, seeds=seeds, rows=rows, detectable=detectable, margin=margin, margin_shown=shown,
                 titles_for_margin=needed, seeds_for_margin=more_seeds)  # fmt: skip


def detects(detectable: float) -> str:
    if detectable > USEFUL:
        return "finds no true difference with 80% power (it would need more than 50 points)"
    return f"detects a true difference of {100 * detectable:.1f} points with 80% power"


def reach_line(reach: Reach) -> str:
    """`job plan`'s lines on what the comparison can show."""
    seeds = f"{reach.seeds} seed" + ("s" if reach.seeds > 1 else "")
    family = f", Holm over {reach.rows} rows" if reach.rows > 1 else ""
    assumed = f"assuming runs disagree on {100 * MODEL.disagreement:.0f}% of titles"
    if reach.seeds > 1:
        assumed += f" and a seed moves a run's accuracy by {points(MODEL.seed_sd)} ({SEED_SD_SOURCE})"
    first = f"comparison: {reach.titles:,} test titles x {seeds}{family}: {detects(reach.detectable)}"
    first += f" ({assumed}; docs/power.md)"
    if reach.seeds == 1:
        first += "\none seed: the interval cannot carry training variance; a list of seeds lets it"
    else:
        if reach.seeds == 2:
            first += (
                "\ntwo seeds: the interval's critical value is widened about 2.7x to hold its error rates, so the "
                "verdict rarely answers; 3 or more seeds do far better (docs/power.md)"
            )
        others = [planned_detectable(titles=reach.titles, seeds=reach.seeds, rows=reach.rows, seed_sd=sd)
                  for sd in PLAN_SEED_SDS]  # fmt: skip
        first += (
            "\nif a seed moves accuracy by "
            + " / ".join(f"{100 * sd:g}" for sd in PLAN_SEED_SDS)
            + " points: detects "
            + " / ".join(f"{100 * d:.1f}" if d <= USEFUL else "none" for d in others)
            + (" points (none: not even 50)" if any(d > USEFUL for d in others) else " points")
        )
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
    if titles < 2:
        return "comparison: one test title cannot measure a difference; give max_eval_samples 256 or more"
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
    *, gap: float, titles: int, seeds: int, margin: float, datasets: int, seed: int, model: TitleModel = MODEL,
    rows: int = 1, more_margins: tuple[float, ...] = (),
) -> dict[str, float]:  # fmt: skip
    """The verdict's own rules (job.results.verdict: Tests, Holm over the rows, decide) on `datasets`
    simulated comparisons of `rows` rows, each `gap` below full fine-tuning, with full fine-tuning: the
    share where some row is called significant, and where some row is granted good enough at `margin`
    (and, on the same comparisons, at each of `more_margins`: "noninferior <margin>")."""
    rng = np.random.default_rng(seed)
    margins = (margin, *more_margins)
    significant = 0
    granted = dict.fromkeys(margins, 0)
    for _ in range(datasets):
        *compared, full = model.family(rng, titles=titles, seeds=seeds, gaps=[gap] * rows)
        tests = [Tests.of(title_differences(row, full), margin) for row in compared]
        for index, this in enumerate(margins):
            at = tests if index == 0 else [t.at_margin(this) for t in tests]
            decisions = [decide(adjusted, this) for adjusted in holm_family(at)]
            if index == 0:
                significant += any(found for found, _ in decisions)
            granted[this] += any(answer == "good enough" for _, answer in decisions)
    shares = {"significant": significant / datasets, "noninferior": granted[margin] / datasets}
    return shares | {f"noninferior {m}": granted[m] / datasets for m in more_margins}


# docs/power.md's grid: every cell the verdict must hold its error rates in.
GRID_SEEDS = (2, 3, 5)
GRID_TITLES = (256, 2_000, 10_000)
GRID_SEED_SDS = (0.0, 0.005, 0.01, 0.02, 0.03)
GRID_MARGINS = (0.01, 0.02, 0.03, 0.05)
GRID_DATASETS = 2000  # a rate of 5% is measured to +-1.0 point (two standard errors)
GRID_SEED = 2026


def grid_cell(*, titles: int, seeds: int, seed_sd: float, datasets: int = GRID_DATASETS,
              margins: tuple[float, ...] = GRID_MARGINS) -> dict[str, float]:  # fmt: skip
    """One row of docs/power.md's grid, by the verdict's own rules: "significant" at no difference, and
    good enough granted at each margin, on the same comparisons; then, per margin, good enough wrongly
    granted at a true gap equal to it. Each cell draws from a seed of its own."""
    model = TitleModel(seed_sd=seed_sd)
    seed = GRID_SEED + 7 * titles + 101 * seeds + round(10_000 * seed_sd)
    level = simulate(gap=0.0, titles=titles, seeds=seeds, margin=margins[0], more_margins=margins[1:],
                     datasets=datasets, seed=seed, model=model)  # fmt: skip
    cell = {"significant": level["significant"], f"granted {margins[0]}": level["noninferior"]}
    cell |= {f"granted {m}": level[f"noninferior {m}"] for m in margins[1:]}
    for index, margin in enumerate(margins):
        wrong = simulate(gap=margin, titles=titles, seeds=seeds, margin=margin, datasets=datasets,
                         seed=seed + 1 + index, model=model)  # fmt: skip
        cell[f"wrongly granted {margin}"] = wrong["noninferior"]
    return cell


def grid_line(titles: int, seeds: int, seed_sd: float, cell: dict[str, float]) -> str:
    margins = " | ".join(
        f"{100 * cell[f'wrongly granted {m}']:.1f}% / {100 * cell[f'granted {m}']:.0f}%" for m in GRID_MARGINS
    )
    return f"| {seeds} | {titles:,} | {100 * seed_sd:.1f} | {100 * cell['significant']:.1f}% | {margins} |"


def detectable_line(titles: int, seeds: int) -> str:
    found = [planned_detectable(titles=titles, seeds=seeds, rows=1, seed_sd=sd) for sd in GRID_SEED_SDS]
    return f"| {seeds} | {titles:,} | " + " | ".join(f"{100 * d:.1f}" if d <= USEFUL else "none" for d in found) + " |"


def measured_spread(folder: Path) -> list[tuple[str, list[float]]]:
    """Each strategy's test accuracy by seed in the example report's records (docs/example-report), read
    and checked as `job report` reads them."""
    from job.output.storage import open_output
    from job.results.records import load_results

    found: dict[str, dict[int, float]] = {}
    for record in load_results(open_output(str(folder))):
        found.setdefault(record.result.strategy, {})[record.result.seed] = record.result.test.accuracy
    return [(strategy, [by_seed[seed] for seed in sorted(by_seed)]) for strategy, by_seed in found.items()]


def pooled_sd(spread: list[tuple[str, list[float]]]) -> float:
    """The strategies' seed-to-seed standard deviations pooled (their variances averaged)."""
    return math.sqrt(float(np.mean([np.var(values, ddof=1) for _, values in spread])))


def power_page(example: Path) -> str:
    grid = [
        grid_line(titles, seeds, sd, grid_cell(titles=titles, seeds=seeds, seed_sd=sd))
        for seeds in GRID_SEEDS
        for titles in GRID_TITLES
        for sd in GRID_SEED_SDS
    ]
    detect = [detectable_line(titles, seeds) for seeds in GRID_SEEDS for titles in GRID_TITLES]
    spread = measured_spread(example)
    seeds_rows = [
        f"| {strategy} | " + ", ".join(f"{100 * v:.2f}" for v in values)
        + f" | {100 * float(np.mean(values)):.2f} | {100 * float(np.std(values, ddof=1)):.2f} |"
        for strategy, values in spread
    ]  # fmt: skip
    return PAGE.format(
        grid="\n".join(grid), detectable="\n".join(detect), seeds="\n".join(seeds_rows),
        pooled=100 * pooled_sd(spread), datasets=GRID_DATASETS, seed=GRID_SEED, accuracy=100 * MODEL.accuracy,
        disagreement=100 * MODEL.disagreement, seed_sd=100 * MODEL.seed_sd,
        sds=" | ".join(f"seed sd {100 * sd:.1f}" for sd in GRID_SEED_SDS),
        margins=" | ".join(f"margin {100 * m:.0f}" for m in GRID_MARGINS),
    )  # fmt: skip


PAGE = """# Power and error rates of the verdict

What the verdict ([how it works](how-it-works.md#the-verdict)) can find, by seeds, test titles and how
far a run's accuracy moves from seed to seed, measured by simulation through the verdict's own code
(`job.results.verdict`; seeded: `make docs` writes this page again with the same numbers, `python -m
job.results.power --docs docs`).

## The seed-to-seed spread, measured

A run's test accuracy moves with its training seed even on the same titles. Measured on the example
run ([the example report](example-report/report.md): the default config on the pretrained stand-in, not
ERNIE 3.0 Medium; 2,000 test titles), test accuracy in percent:

| strategy | by seed | mean | standard deviation |
|---|---|---:|---:|
{seeds}

Pooled over the strategies: {pooled:.2f} points. `job plan` assumes {seed_sd:.1f} points from this
measurement, prints it with its detectable difference, and prints the detectable difference at 0.5, 1 and
2 points as well. Published fine-tuning runs of BERT-size models move by 1 to 3 points from seed to seed;
after a run, the report uses the spread its own seeds show.

## Error rates and power in every cell

Each cell applies the verdict's rules to {datasets:,} simulated comparisons of one row with full
fine-tuning, drawn from a seed of its own (a true rate of 5% is measured to about 1 point either
way: a rate held at exactly 5% where the seeds' share of the variance is worst shows as 4 to 6%).
"Significant" is the share called significant when the row is level with full fine-tuning: the
false-positive rate, held at 5%. For each
margin: the share granted *good enough* when the row is exactly the margin below (an error; at most 5%,
2.5% nominal: the two-sided 95% interval's lower end) / the share granted when the row is level (the
power to show it; higher is better). Seed sd: how far a run's accuracy moves over seeds (points).

| seeds | test titles | seed sd | significant | {margins} |
|---:|---:|---:|---:|---:|---:|---:|---:|
{grid}

*Good enough* is wrongly granted at most 3.4% of the time in every cell. "Significant" at no
difference is held at 5% where the seeds' share of the variance is worst for the design, and below it
elsewhere: the measured rates average 2.8% over the cells, and the six above 5% (5.1 to 6.0%) are
within two standard errors of the simulation (1 point at 2,000 comparisons); on two more seeds of
2,000 comparisons, the cell of 5 seeds x 10,000 titles at a 1-point spread measured 4.7% and 4.5%.
The interval this verdict replaced (MS seeds + MS titles at Satterthwaite's df, with the exact
titles-only test beside it) called 7 to 9% of level rows significant with 3 seeds at a 1- to 2-point
spread, and 8 to 13% with 2.

The price is power where the seeds happen to agree: 3 seeds cannot tell a seed spread of 0 from one of
2 points, so their interval is widened for the worse case (1.25 times) and shows a level row within 3
points at 2,000 titles and no seed spread 74% of the time, less often than the former interval did
(which was narrower there and let false positives through elsewhere). With 5 seeds the widening is
1.05 and costs little. With 2 seeds the critical value is widened
2.4 to 2.8 times so its error rates hold, and the verdict rarely says anything: two seeds cannot tell how
far a third would fall. Use 3 or more, 5 for a firm answer; `job plan` says before anything trains
what the planned seeds and titles can show.

## The detectable difference

The true difference `job plan` says is found significant 80% of the time, in points, by seeds and test
titles, at each seed spread (the verdict's frame, computed, not simulated; "none": not even 50 points):

| seeds | test titles | {sds} |
|---:|---:|---:|---:|---:|---:|---:|
{detectable}

More seeds narrow the interval where the seeds' spread dominates; more titles only where the titles'
disagreement does.

## The simulation

Each title has an easiness shared by every run, so the titles one run gets wrong are mostly those
another gets wrong, as on real test sets. Full fine-tuning is right on {accuracy:.0f}% of titles
(PaddleNLP's ERNIE 3.0 Medium TNEWS dev accuracy); two runs of equal accuracy disagree on
{disagreement:.0f}% of titles; each run's accuracy is shifted by its seed, with the standard deviation of
the row. `tests/test_power.py` measures the hardest cells on every test run: 3 seeds at a 2-point seed
spread, 2 seeds, and a sweep of 4 LoRA rows against one full fine-tuning row.
"""


def write_docs(folder: Path) -> None:
    """docs/power.md from the simulation and the example report's records."""
    (folder / "power.md").write_text(power_page(folder / "example-report"), encoding="utf-8")


def refresh_measured(folder: Path) -> None:
    """docs/power.md's parts read from the example's records (the seed-to-seed spread and the plan's
    assumption), the simulated tables kept: they depend on the seeds of the grid alone, not on the
    example (after `make example`; `make docs` writes the whole page)."""
    import re

    page = (folder / "power.md").read_text(encoding="utf-8")
    spread = measured_spread(folder / "example-report")
    rows = "\n".join(
        f"| {strategy} | " + ", ".join(f"{100 * v:.2f}" for v in values)
        + f" | {100 * float(np.mean(values)):.2f} | {100 * float(np.std(values, ddof=1)):.2f} |"
        for strategy, values in spread
    )  # fmt: skip
    page = re.sub(r"(\| strategy \| by seed \| mean \| standard deviation \|\n\|---\|---\|---:\|---:\|\n)(?:\|.*\n)+",
                  lambda m: m.group(1) + rows + "\n", page, count=1)  # fmt: skip
    page = re.sub(r"Pooled over the strategies: [0-9.]+ points\. `job plan` assumes [0-9.]+ points",
                  f"Pooled over the strategies: {100 * pooled_sd(spread):.2f} points. `job plan` assumes "
                  f"{100 * MODEL.seed_sd:.1f} points", page, count=1)  # fmt: skip
    (folder / "power.md").write_text(page, encoding="utf-8")


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--docs"]:
        write_docs(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["--measured"]:
        refresh_measured(Path(sys.argv[2]))
    else:
        print(power_page(Path("docs") / "example-report"), end="")
