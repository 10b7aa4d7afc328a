"""The accuracy-cost front of the headline rows: which rows another row beats on every measure, beyond
the noise of the measures themselves, and which rows sit at chance (then nothing is ranked)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from job.results.schema import HeadlineRow, RunResult
from job.results.stats import mean_std

# With one seed there is no spread to read: time and memory differences below this share of the larger
# are taken as noise (BitFit's training time varied 97 ± 74 s over three seeds on a shared machine, so
# a seeds' spread, when there is one, is usually the wider tolerance).
RELATIVE_TOLERANCE = 0.05
NOISE_WIDTH = 2.0  # standard errors of a difference that count as a difference


@dataclass(frozen=True)
class Measure:
    mean: float
    se: float  # standard error of the mean (0: exact)


@dataclass(frozen=True)
class Point:
    """One row on the front: test accuracy (higher is better), and its costs (lower is better)."""

    accuracy: Measure
    params: Measure
    seconds: Measure
    memory: Measure


def row_memory(row: HeadlineRow, runs: Sequence[RunResult]) -> tuple[float, float]:
    """Mean and spread of the row's peak memory over its seeds."""
    by_key = {r.key: r for r in runs}
    return mean_std([by_key[key].peak_memory_mb for key in row.keys])


def point(row: HeadlineRow, runs: Sequence[RunResult], test_titles: int) -> Point:
    seeds = len(row.keys)
    accuracy = row.test_accuracy.mean
    title_noise = accuracy * (1 - accuracy) / max(test_titles, 1)
    memory, memory_std = row_memory(row, runs)
    return Point(
        accuracy=Measure(accuracy, math.sqrt(row.test_accuracy.std**2 / seeds + title_noise)),
        params=Measure(float(row.trainable_params), 0.0),
        seconds=Measure(row.training_seconds.mean, row.training_seconds.std / math.sqrt(seeds)),
        memory=Measure(memory, memory_std / math.sqrt(seeds)),
    )


def _beyond_noise(better: Measure, worse: Measure, *, higher_is_better: bool, relative: float) -> bool:
    """`better` is better than `worse` by more than the noise of their difference."""
    gap = better.mean - worse.mean if higher_is_better else worse.mean - better.mean
    tolerance = max(NOISE_WIDTH * math.hypot(better.se, worse.se), relative * max(abs(better.mean), abs(worse.mean)))
    return gap > tolerance


def _measures(p: Point) -> tuple[tuple[Measure, bool, float], ...]:
    """(measure, higher is better, relative tolerance with no spread to read)."""
    return (
        (p.accuracy, True, 0.0),
        (p.params, False, 0.0),  # counted, not measured: exact
        (p.seconds, False, RELATIVE_TOLERANCE),
        (p.memory, False, RELATIVE_TOLERANCE),
    )


def dominates(a: Point, b: Point) -> bool:
    """`a` is clearly better than `b` on at least one measure and clearly worse on none."""
    pairs = list(zip(_measures(a), _measures(b), strict=True))
    better = any(_beyond_noise(x, y, higher_is_better=up, relative=rel) for (x, up, rel), (y, _, _) in pairs)
    worse = any(_beyond_noise(y, x, higher_is_better=up, relative=rel) for (x, up, rel), (y, _, _) in pairs)
    return better and not worse


def pareto_front(rows: Sequence[HeadlineRow], runs: Sequence[RunResult], test_titles: int) -> dict[str, list[str]]:
    """Each row's group -> the rows that dominate it. An empty list: the row is on the front. Rows
    within noise of each other, and equal rows, dominate neither."""
    points = {row.group: point(row, runs, test_titles) for row in rows}
    return {
        row.group: [
            other.group
            for other in rows
            if other.group != row.group and dominates(points[other.group], points[row.group])
        ]
        for row in rows
    }


def at_chance(row: HeadlineRow, classes: int, test_titles: int) -> bool:
    """Test accuracy within two standard errors of guessing among `classes`."""
    chance = 1 / classes
    return row.test_accuracy.mean < chance + 2 * math.sqrt(chance * (1 - chance) / max(test_titles, 1))
