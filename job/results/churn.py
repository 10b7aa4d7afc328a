"""How differently two rows' models predict, beyond accuracy: the share of test titles on which a compared
row and full fine-tuning disagree at the same seed, beside the share on which two seeds of one strategy
disagree (full fine-tuning's, and the row's own). Equal accuracy can hide different solutions; two seeds
of one strategy show how much disagreement is mere training noise. From the stored predictions: no
training. Each share has a 95% percentile-bootstrap interval over titles (scipy.stats.bootstrap)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from job.results.schema import Combined, Comparison
from job.results.stats import decode_classes
from job.training.strategies import baseline

BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 2000, 0


@dataclass(frozen=True)
class Share:
    value: float  # the share of titles, a fraction
    low: float
    high: float
    pairs: int  # the pairs of runs it averages over


@dataclass(frozen=True)
class Churn:
    subject: str  # the compared row, as its comparison names it
    against_full: Share  # the row and full fine-tuning, same seed
    full_seeds: Share  # two seeds of full fine-tuning
    own_seeds: Share  # two seeds of the row itself


def disagreement(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Share:
    """The share of titles two runs predict differently, averaged over `pairs`, with its interval."""
    from scipy.stats import bootstrap

    per_title = np.mean([first != second for first, second in pairs], axis=0).astype(float)
    value = float(per_title.mean())
    if np.ptp(per_title) == 0:  # every title alike: no spread to resample
        return Share(value, value, value, len(pairs))
    interval = bootstrap((per_title,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                         random_state=BOOTSTRAP_SEED, vectorized=True).confidence_interval  # fmt: skip
    return Share(value, float(interval.low), float(interval.high), len(pairs))


def churn(combined: Combined, c: Comparison) -> Churn | None:
    """The three shares of `c`'s rows, or None with fewer than two seeds (no pair of seeds to compare)."""
    if len(c.seeds) < 2:
        return None
    by_key = {run.key: run for run in combined.runs}
    full_name = baseline().name
    row_name = next(name for name in c.selected if name != full_name)
    predictions = {
        name: {by_key[key].seed: np.array(decode_classes(by_key[key].test.predictions)) for key in keys}
        for name, keys in c.selected.items()
    }
    row, full = predictions[row_name], predictions[full_name]
    same_seed = [(row[seed], full[seed]) for seed in sorted(row) if seed in full]
    return Churn(
        subject=c.subject,
        against_full=disagreement(same_seed),
        full_seeds=disagreement([(full[a], full[b]) for a, b in combinations(sorted(full), 2)]),
        own_seeds=disagreement([(row[a], row[b]) for a, b in combinations(sorted(row), 2)]),
    )


def churn_text(found: Churn, base: str) -> str:
    def share(s: Share) -> str:
        return f"{100 * s.value:.1f}% (95% CI {100 * s.low:.1f}–{100 * s.high:.1f})"

    return (
        f"{found.subject} disagrees with {base} on {share(found.against_full)} of test titles at the same seed; two "
        f"seeds of {base} disagree on {share(found.full_seeds)}, two of {found.subject} on "
        f"{share(found.own_seeds)}."
    )
