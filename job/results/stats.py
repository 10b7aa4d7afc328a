"""The statistics behind the verdict: per-split metrics from predictions, mean and spread over seeds,
the exact McNemar test and a paired bootstrap of the accuracy difference. Plain NumPy, no state."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0  # fixed: the interval is a function of the predictions alone


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
    """Accuracy on the examples of each class (its recall); None for a class with no example."""
    predicted, gold = np.asarray(predictions), np.asarray(labels)
    out: list[float | None] = []
    for cls in range(num_classes):
        mask = gold == cls
        out.append(float((predicted[mask] == cls).mean()) if mask.any() else None)
    return out


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes that occur in the labels or the predictions
    (scikit-learn's f1_score(average="macro") over the labels present)."""
    predicted, gold = np.asarray(predictions), np.asarray(labels)
    scores = []
    for cls in range(num_classes):
        true_positive = int(((predicted == cls) & (gold == cls)).sum())
        predicted_count, gold_count = int((predicted == cls).sum()), int((gold == cls).sum())
        if predicted_count == 0 and gold_count == 0:
            continue
        scores.append(2 * true_positive / (predicted_count + gold_count))
    return float(np.mean(scores)) if scores else 0.0


# ---------------------------------------------------------------- over seeds


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


# ---------------------------------------------------------------- paired comparison


def mcnemar_exact(a_correct: Sequence[bool], b_correct: Sequence[bool]) -> tuple[float, int, int]:
    """Exact two-sided McNemar test on paired outcomes: a binomial test of the discordant pairs.
    Returns (p, b, c) with b = only A right, c = only B right."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return binomial_two_sided(min(only_a, only_b), only_a + only_b), only_a, only_b


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (in their order): the i-th smallest is
    multiplied by (m - i + 1), and the adjusted values are made non-decreasing in that order, capped at
    1. Rejecting where the adjusted p < alpha keeps the family-wise error rate at alpha."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def binomial_two_sided(k: int, n: int) -> float:
    """P(X <= k or X >= n - k) for X ~ Binomial(n, 1/2), k <= n/2: twice the lower tail, capped at 1."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_bootstrap_ci(
    a_correct: np.ndarray, b_correct: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float, float]:
    """Accuracy of A minus accuracy of B on the same examples, averaged over seeds, with a 95% percentile
    interval from resampling the examples (the same resample for every seed and both sides).

    `a_correct`, `b_correct`: arrays of shape (seeds, examples), True where the prediction was right.
    Returns (difference, low, high)."""
    a, b = np.atleast_2d(a_correct).astype(float), np.atleast_2d(b_correct).astype(float)
    per_example = (a - b).mean(axis=0)  # the seed-averaged difference on each example
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, per_example.size, size=(resamples, per_example.size))
    resampled = per_example[indices].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return float(per_example.mean()), float(low), float(high)
