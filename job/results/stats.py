"""The statistics behind the verdict: per-split metrics from predictions (scikit-learn), mean and spread
over seeds, and the paired comparison of two rows on the same test titles over all their seeds: the
interval of the accuracy difference (seeds and titles random: job.results.crossed; one seed: a bootstrap
over titles), Holm's adjustment over the rows compared, and the exact sign-flip permutation test of the
seed-averaged per-title differences (about these runs only, or the one-seed frame's test).
No state: every random draw is seeded."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from job.results.crossed import Reading, frame_of

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the interval is a function of the predictions alone
SIGNIFICANCE = 0.05
POWER = 0.80  # the detectable difference: the true difference found significant this often


# ---------------------------------------------------------------- predictions as compact text


def class_width(num_classes: int) -> int:
    """Base-36 digits per class id: 1 up to 36 classes (TNEWS), 2 up to 1,296 (IFLYTEK's 119)."""
    width = 1
    while 36**width < num_classes:
        width += 1
    return width


def encode_classes(classes: Sequence[int], num_classes: int) -> str:
    """Class ids as base-36 digits, `class_width` each: "3a0e..." (256 titles take 256 characters in
    JSON); with more than 36 classes the width comes first: "2:0a1b..."."""
    width = class_width(num_classes)
    digits = "".join(np.base_repr(int(c), 36).lower().rjust(width, "0") for c in classes)
    return digits if width == 1 else f"{width}:{digits}"


def decode_classes(text: str) -> list[int]:
    width_text, separator, digits = text.partition(":")
    if not separator:
        return [int(char, 36) for char in text]
    width = int(width_text)
    return [int(digits[start : start + width], 36) for start in range(0, len(digits), width)]


# ---------------------------------------------------------------- metrics of one split


def per_class_accuracy(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> list[float | None]:
    """Accuracy on the examples of each class (its recall, scikit-learn's); None for a class with no example."""
    from sklearn.metrics import recall_score

    gold = np.asarray(labels)
    recall = recall_score(gold, np.asarray(predictions), labels=range(num_classes), average=None, zero_division=0)
    present = np.bincount(gold, minlength=num_classes) > 0
    return [float(value) if here else None for value, here in zip(recall, present, strict=True)]


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in the labels or the predictions
    (scikit-learn's f1_score(average="macro") over the labels present)."""
    from sklearn.metrics import f1_score

    predicted, gold = np.asarray(predictions), np.asarray(labels)
    present = sorted(set(predicted.tolist()) | set(gold.tolist()))
    if not present:
        return 0.0
    return float(f1_score(gold, predicted, labels=present, average="macro", zero_division=0))


# ---------------------------------------------------------------- over seeds


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


# ---------------------------------------------------------------- paired comparison


def discordant(a_correct: np.ndarray, b_correct: np.ndarray) -> tuple[int, int]:
    """(titles only A gets right, titles only B gets right) of one seed."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    return int((a & ~b).sum()), int((~a & b).sum())


def title_differences(a_correct: np.ndarray, b_correct: np.ndarray) -> np.ndarray:
    """Per seed and title, A right minus B right (-1, 0 or 1): shape (seeds, titles)."""
    return np.atleast_2d(a_correct).astype(np.int64) - np.atleast_2d(b_correct).astype(np.int64)


def sign_flip_p(differences: np.ndarray) -> float:
    """Two-sided p of the paired permutation test over titles: under no difference, which of the two
    rows a title's outcomes belong to is exchangeable, so each title's seed-summed difference is as
    likely with either sign. The statistic is their sum; p = P(|T| >= |t observed|).

    Exact, not sampled: the seed-summed differences are integers from -seeds to seeds, so T is a sum of
    scaled binomials, one per magnitude, whose distribution is their convolution (scipy.stats.binom,
    scipy.signal). With one seed this is the exact McNemar test (scipy.stats.binomtest, checked in a
    test); scipy.stats.permutation_test gives the same p by enumeration, far slower."""
    from scipy.signal import fftconvolve
    from scipy.stats import binom

    summed = np.atleast_2d(differences).sum(axis=0)
    observed = int(summed.sum())
    magnitudes = np.bincount(np.abs(summed))
    distribution = np.ones(1)  # P(T = t) on t = -width .. width, width growing with each magnitude
    width = 0
    for size, count in enumerate(magnitudes):
        if size == 0 or count == 0:
            continue
        flips = np.zeros(2 * size * count + 1)
        flips[:: 2 * size] = binom.pmf(np.arange(count + 1), count, 0.5)  # size x (2 B - count), B ~ B(count, 1/2)
        distribution = np.clip(fftconvolve(distribution, flips), 0, None) if width else flips
        width += size * count
    if width == 0 or observed == 0:
        return 1.0
    values = np.arange(-width, width + 1)
    return float(min(1.0, distribution[np.abs(values) >= abs(observed)].sum()))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (in their order): the i-th smallest is
    multiplied by (m - i + 1), and the adjusted values are made non-decreasing in that order, capped at
    1. Rejecting where the adjusted p < alpha keeps the family-wise error rate at alpha. (No library
    here has it: statsmodels would be a new dependency in both images for one function; a test checks
    it against Holm's closed-testing definition.)"""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


@dataclass(frozen=True)
class Interval:
    difference: float  # mean over seeds and titles
    low: float
    high: float
    df: float | None  # Satterthwaite's degrees of freedom (2 or more seeds); None: the titles' bootstrap
    se: float | None = None  # the t interval's standard error
    widening: float = 1.0  # the critical value over Student's t's (job.results.crossed): few seeds widen it
    reading: Reading | None = None  # the seeds-and-titles frame's p-values (2 or more seeds)


def seed_title_interval(
    differences: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> Interval:
    """The accuracy difference (mean of `differences`, shape (seeds, titles)) and its 95% interval.

    One seed: a percentile bootstrap over titles (scipy.stats.bootstrap); it knows nothing of training
    variance. Two or more: seeds and titles both random, crossed: the textbook random-effects variance
    with Student's t at Satterthwaite's df, the critical value widened where few seeds would let the
    error rate past 5% (job.results.crossed, which also gives the p-values read from the same t)."""
    d = np.atleast_2d(differences).astype(float)
    seeds, titles = d.shape
    difference = float(d.mean())
    if seeds == 1:
        from scipy.stats import bootstrap

        interval = bootstrap((d[0],), np.mean, n_resamples=resamples, method="percentile", random_state=seed,
                             vectorized=True, batch=max(1, 2**22 // titles)).confidence_interval  # fmt: skip
        return Interval(difference, float(interval.low), float(interval.high), None)
    reading = Reading(difference, frame_of(d))
    half = reading.half_width
    return Interval(difference, difference - half, difference + half, reading.frame.df, reading.frame.se,
                    reading.widening, reading)  # fmt: skip


def detectable_difference(spread: float, titles: int, family: int = 1) -> float:
    """The smallest true accuracy difference the sign-flip test finds significant with POWER, by the
    normal approximation: (z of alpha / 2 at Holm's first step, alpha / family, + z of POWER) standard
    errors, where `spread` is the standard deviation of the seed-averaged per-title difference."""
    from scipy.stats import norm

    z = norm.ppf(1 - SIGNIFICANCE / (2 * family)) + norm.ppf(POWER)
    return float(z * spread / np.sqrt(titles))


ASSUMED_DISAGREEMENT = 0.15  # share of titles two runs of equal accuracy score differently (job.results.power)


def observed_spread(differences: np.ndarray) -> float:
    """The standard deviation of the seed-averaged per-title difference. When the rows got every title
    alike there is nothing to measure it on, and the assumed disagreement stands in for it."""
    d = np.atleast_2d(differences)
    if not d.any():
        return math.sqrt(ASSUMED_DISAGREEMENT / d.shape[0])
    per_title = d.mean(axis=0)
    return float(per_title.std(ddof=1))
