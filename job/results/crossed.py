"""The verdict's frame with two or more seeds: seeds and test titles both drawn at random, crossed (every
seed scores every title), so every number of the answer (the interval, its p-values, "significant", the
detectable difference) says what new seeds and new titles would show, not only these runs.

The per-seed, per-title differences d (row right minus full fine-tuning right: -1, 0 or 1) follow the
two-way random-effects layout d = mu + seed + title + residual. Its mean squares give the variance of the
mean difference, the textbook crossed estimate, each component floored at zero:

    V = (MS_seeds - MS_res)+ / (S T) + (MS_titles - MS_res)+ / (S T) + MS_res / (S T),

read with Student's t at Satterthwaite's degrees of freedom for the mean squares it uses.

With few seeds that t is not enough. MS_seeds has S - 1 degrees of freedom, and Satterthwaite's df is
estimated from the same mean squares as V: when the seeds happen to agree, V comes out small and the df
large together, so the interval is too narrow exactly when it should not be. Computed under the normal
model below (and seen in simulation): "significant" at no difference 7.4% of the time at worst with 3
seeds, 13% with 2.
So the critical value is widened, by the least factor that holds the error rate at 5% whatever the seeds'
share of the variance: the statistic R = |t| / t(0.975, df) has, under a normal model with the titles' and
the residual's mean squares known (they have hundreds of degrees of freedom or more), a distribution that
depends only on S, on the residual's share of the titles' part (beta, estimated) and on the unknown ratio
a of the seeds' component to the rest. Each p-value is the largest P(R >= r) over a (a grid from 0 to
10,000), and the critical value the r where that reaches 5%. So p < 0.05 exactly when the interval
excludes zero; the widening is about 1.25 with 3 seeds, 1.05 with 5 and 1.01 with 8 (2.4 to 2.8 with 2:
two seeds say little about training variance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SIGNIFICANCE = 0.05
USEFUL = 0.5  # a detectable difference above 50 points is none worth naming (the plan and the report say so)
QUADRATURE = 256  # midpoints of the chi-square's quantiles: the expectation over MS_seeds
NUISANCE = np.concatenate([[0.0], np.geomspace(0.01, 1e4, 61)])  # a: the seeds' component over the rest


@dataclass(frozen=True)
class Frame:
    """The variance of a mean difference over S seeds x T titles, by component (each / (S T))."""

    seeds: int
    titles: int
    seeds_part: float  # (MS_seeds - MS_res)+ / (S T): training variance
    titles_part: float  # (MS_titles - MS_res)+ / (S T): titles the rows differ on systematically
    residual: float  # MS_res / (S T)
    ms_seeds: float
    ms_titles: float
    ms_residual: float

    @property
    def variance(self) -> float:
        return self.seeds_part + self.titles_part + self.residual

    @property
    def se(self) -> float:
        return math.sqrt(self.variance)

    @property
    def df(self) -> float:
        """Satterthwaite's degrees of freedom for the mean squares V uses (their signs as in V)."""
        n, k, t = self.seeds * self.titles, self.seeds - 1, self.titles - 1
        terms = []  # (mean square / n, its df)
        if self.seeds_part > 0:
            terms.append((self.ms_seeds / n, k))
        if self.titles_part > 0:
            terms.append((self.ms_titles / n, t))
        if (self.seeds_part > 0 and self.titles_part > 0) or not terms:  # V subtracts it, or is it alone
            terms.append((self.ms_residual / n, k * t))
        denominator = sum(value**2 / df for value, df in terms)
        return self.variance**2 / denominator if denominator > 0 else float(n - 1)

    @property
    def beta(self) -> float:
        """The residual's share of the part of V known precisely (titles and residual)."""
        known = self.titles_part + self.residual
        return self.residual / known if known > 0 else 1.0


def frame_of(differences: np.ndarray) -> Frame:
    """The mean squares of a (seeds, titles) array of differences, as a Frame."""
    d = np.atleast_2d(differences).astype(float)
    seeds, titles = d.shape
    grand = d.mean()
    ms_seeds = titles * float(np.var(d.mean(axis=1), ddof=1))
    ms_titles = seeds * float(np.var(d.mean(axis=0), ddof=1))
    total = float(((d - grand) ** 2).sum())
    ms_residual = max(total - ms_seeds * (seeds - 1) - ms_titles * (titles - 1), 0.0) / ((seeds - 1) * (titles - 1))
    n = seeds * titles
    return Frame(
        seeds=seeds, titles=titles, seeds_part=max(ms_seeds - ms_residual, 0.0) / n,
        titles_part=max(ms_titles - ms_residual, 0.0) / n, residual=ms_residual / n, ms_seeds=ms_seeds,
        ms_titles=ms_titles, ms_residual=ms_residual,
    )  # fmt: skip


# ---------------------------------------------------------------- the distribution of R over the nuisance


def _model(seeds: int, titles: int, beta: float, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """V (over the precisely known part) and Satterthwaite's df at each quadrature point of MS_seeds, for
    each seeds' ratio a (rows): MS_seeds / (S T) = (a + beta) X with X ~ chi-square(S - 1) / (S - 1)."""
    from scipy.stats import chi2

    k, t = seeds - 1, titles - 1
    x = chi2.ppf((np.arange(QUADRATURE) + 0.5) / QUADRATURE, k)[None, :] / k
    ms_seeds = (ratio[:, None] + beta) * x
    seeds_part = np.maximum(ms_seeds - beta, 0.0)
    titles_part = 1.0 - beta
    variance = seeds_part + 1.0
    used = seeds_part > 0
    terms = np.where(used, ms_seeds**2 / k, 0.0)
    if titles_part > 0:
        terms = terms + 1.0 / t + np.where(used, beta**2 / (k * t), 0.0)
    else:
        terms = terms + np.where(used, 0.0, beta**2 / (k * t))
    return variance, variance**2 / terms


@lru_cache(maxsize=1024)
def _scaled_quantiles(seeds: int, titles: int, beta: float) -> np.ndarray:
    """t(0.975, df) x sqrt(V / (1 + a)) at each (a, quadrature point): R's scale under each a."""
    from scipy.stats import t as student

    variance, df = _model(seeds, titles, beta, NUISANCE)
    return student.ppf(1 - SIGNIFICANCE / 2, df) * np.sqrt(variance / (1 + NUISANCE[:, None]))


def _key(frame: Frame) -> tuple[int, int, float]:
    return frame.seeds, frame.titles, round(frame.beta, 2)  # beta to 0.01: the cache's key


def tail(r: float, seeds: int, titles: int, beta: float, *, sided: int = 2) -> float:
    """The largest P(R >= r) over the seeds' ratio a: a p-value valid whatever a is (sided 1: the one
    tail of a signed R)."""
    from scipy.stats import norm

    scale = _scaled_quantiles(seeds, titles, beta)
    return float(min(1.0, (sided * norm.sf(r * scale)).mean(axis=1).max()))


@lru_cache(maxsize=1024)
def widening(seeds: int, titles: int, beta: float, alpha: float = SIGNIFICANCE) -> float:
    """The critical R: where the largest two-sided P(R >= r) over a is `alpha` (5%: at least 1)."""
    from scipy.optimize import brentq

    low = 0.5
    while tail(low, seeds, titles, beta) <= alpha:
        low /= 2
    return float(brentq(lambda r: tail(r, seeds, titles, beta) - alpha, low, 50.0, xtol=1e-5))


# ---------------------------------------------------------------- what the verdict reads off a frame


@dataclass(frozen=True)
class Reading:
    """The interval and the p-values of one comparison in the seeds-and-titles frame."""

    difference: float
    frame: Frame

    @property
    def widening(self) -> float:
        return widening(*_key(self.frame))

    @property
    def critical(self) -> float:
        """The interval's half-width over its standard error."""
        from scipy.stats import t as student

        return self.widening * float(student.ppf(1 - SIGNIFICANCE / 2, self.frame.df))

    @property
    def half_width(self) -> float:
        return self.critical * self.frame.se

    def _r(self, distance: float) -> float:
        from scipy.stats import t as student

        se = self.frame.se
        if se == 0:
            return math.inf if distance > 0 else -math.inf if distance < 0 else 0.0
        return distance / (se * float(student.ppf(1 - SIGNIFICANCE / 2, self.frame.df)))

    def p_two_sided(self) -> float:
        """P-value of no difference: < 0.05 exactly when the interval excludes zero."""
        r = abs(self._r(self.difference))
        return 0.0 if math.isinf(r) else tail(r, *_key(self.frame))

    def p_above(self, bound: float) -> float:
        """One-sided p-value of 'the true difference is at most `bound`' (small: it lies above)."""
        r = self._r(self.difference - bound)
        if math.isinf(r):
            return 0.0 if r > 0 else 1.0
        return tail(r, *_key(self.frame), sided=1) if r > 0 else 1.0 - tail(-r, *_key(self.frame), sided=1)

    def p_below(self, bound: float) -> float:
        """One-sided p-value of 'the true difference is at least `bound`' (small: it lies below)."""
        mirrored = Reading(-self.difference, self.frame)
        return mirrored.p_above(-bound)


def power(
    gap: float, *, seeds: int, titles: int, known: float, seeds_part: float, beta: float = 1.0,
    margin: float | None, alpha: float = SIGNIFICANCE,
) -> float:  # fmt: skip
    """Under a normal model with the given components (each a variance of the mean, `known` the titles' and
    residual parts together): the chance that a true difference `gap` (away from zero) is found
    significant, or with `margin`, that a true difference of -gap is shown good enough at that margin."""
    from scipy.stats import norm
    from scipy.stats import t as student

    ratio = np.array([seeds_part / known])
    variance, df = _model(seeds, titles, beta, ratio)
    widen = widening(seeds, titles, round(beta, 2), alpha)
    half = widen * student.ppf(1 - SIGNIFICANCE / 2, df) * np.sqrt(variance * known)
    spread = math.sqrt(known + seeds_part)
    if margin is None:
        return float((norm.sf((half - gap) / spread) + norm.cdf((-half - gap) / spread)).mean())
    return float(norm.cdf((margin - gap - half) / spread).mean())


def detectable(
    *, seeds: int, titles: int, known: float, seeds_part: float, beta: float = 1.0, family: int = 1
) -> float:  # fmt: skip
    """The true difference found significant with 80% power under these components (Holm's first step
    over `family` rows: at 5% / family)."""
    from scipy.optimize import brentq

    def short(gap: float) -> float:
        return power(gap, seeds=seeds, titles=titles, known=known, seeds_part=seeds_part, beta=beta, margin=None,
                     alpha=SIGNIFICANCE / family) - 0.8  # fmt: skip

    scale = math.sqrt(known + seeds_part)
    high = scale
    while short(high) < 0 and high < 1e3 * scale + 1:
        high *= 2
    return float(brentq(short, 0.0, high, xtol=1e-6))
