"""Selection on dev, the paired statistics and the verdict they allow."""

from __future__ import annotations

import numpy as np
import pytest

from job.errors import UserError
from job.results.stats import (
    decode_classes,
    detectable_difference,
    discordant,
    encode_classes,
    holm,
    macro_f1,
    mean_std,
    observed_spread,
    per_class_accuracy,
    seed_title_interval,
    sign_flip_p,
    title_differences,
)
from job.results.verdict import combine, directions_agree, headline_rows
from tests.records import answers, records, result

LABELS = [i % 15 for i in range(200)]


def test_predictions_round_trip_as_one_character_per_title() -> None:
    classes = [0, 9, 10, 14, 3]
    assert encode_classes(classes, 15) == "09ae3"
    assert decode_classes(encode_classes(classes, 15)) == classes


def test_more_than_36_classes_take_two_characters_each_and_round_trip() -> None:
    classes = [0, 35, 36, 118, 7]
    assert encode_classes(classes, 119) == "2:000z103a07"
    assert decode_classes(encode_classes(classes, 119)) == classes
    assert decode_classes(encode_classes(list(range(1296)), 1296)) == list(range(1296))


def test_the_sign_flip_test_with_one_seed_is_the_exact_mcnemar_test() -> None:
    # 2 titles only the first model gets right, 10 only the second: exact p = 2 * P(X <= 2), X ~ B(12, 1/2).
    a = np.array([True] * 2 + [False] * 10 + [True] * 30 + [False] * 8)
    b = np.array([False] * 2 + [True] * 10 + [True] * 30 + [False] * 8)
    assert discordant(a, b) == (2, 10)
    p = sign_flip_p(title_differences(a, b))
    assert p == pytest.approx(2 * (1 + 12 + 66) / 4096, rel=1e-9)
    from scipy.stats import binomtest  # an independent implementation

    assert p == pytest.approx(binomtest(2, 12, 0.5).pvalue, rel=1e-9)
    assert sign_flip_p(title_differences(a, a)) == 1.0  # no discordant title: no evidence
    rng = np.random.default_rng(5)
    for _ in range(5):
        x, y = rng.random(500) < 0.6, rng.random(500) < 0.55
        only_x, only_y = discordant(x, y)
        assert sign_flip_p(title_differences(x, y)) == pytest.approx(
            binomtest(only_x, only_x + only_y).pvalue, rel=1e-7
        )


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_the_sign_flip_test_over_seeds_matches_scipys_permutation_test_by_enumeration(seeds: int) -> None:
    """scipy.stats.permutation_test enumerates all 2^titles sign flips of the seed-summed differences
    (exact for so few titles); the convolution gives the same p."""
    from scipy.stats import permutation_test

    rng = np.random.default_rng(seeds)
    for _ in range(4):
        differences = rng.integers(-1, 2, size=(seeds, 13))
        summed = differences.sum(axis=0).astype(float)
        expected = permutation_test((summed,), lambda x, axis: np.sum(x, axis=axis), permutation_type="samples",
                                    vectorized=True, n_resamples=np.inf, alternative="two-sided").pvalue  # fmt: skip
        assert sign_flip_p(differences) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_the_sign_flip_test_uses_titles_as_the_unit_not_seed_times_title() -> None:
    """Three seeds that agree title for title carry the evidence of one: the same p as one seed (a test
    that counted seed x title pairs would give p far smaller)."""
    rng = np.random.default_rng(9)
    a, b = rng.random(300) < 0.62, rng.random(300) < 0.55
    one = sign_flip_p(title_differences(a, b))
    assert sign_flip_p(title_differences(np.stack([a] * 3), np.stack([b] * 3))) == pytest.approx(one, rel=1e-9)
    assert 0.001 < one < 0.9


def test_holm_matches_its_closed_testing_definition() -> None:
    """Holm's adjusted p of hypothesis i is the largest, over every subset holding i, of the subset's
    Bonferroni p (capped at 1): checked by brute force over all subsets."""
    from itertools import combinations

    rng = np.random.default_rng(1)
    for m in (1, 2, 3, 5):
        p = list(rng.random(m) ** 3)
        subsets = [c for k in range(1, m + 1) for c in combinations(range(m), k)]
        closed = [max(min(1.0, len(c) * min(p[j] for j in c)) for c in subsets if i in c) for i in range(m)]
        assert holm(p) == pytest.approx(closed)
    assert holm([0.04, 0.30]) == pytest.approx([0.08, 0.30])


def exact_bootstrap_cdf(plus: int, minus: int, n: int):
    """P(resampled mean difference <= x) when `plus` of n titles count +1, `minus` count -1 and the rest 0:
    the bootstrap mean is (K+ - K-)/n with (K+, K-, rest) multinomial. Exact, by summing over K+."""
    from scipy.stats import binom

    p_plus, p_minus = plus / n, minus / n

    def cdf(x: float) -> float:
        k_plus = np.arange(n + 1)
        # K- given K+ is binomial over the remaining titles; D <= x  <=>  K- >= K+ - x n
        need = np.ceil(k_plus - x * n - 1e-9)
        tail = binom.sf(need - 1, n - k_plus, p_minus / (1 - p_plus))
        return float(np.sum(binom.pmf(k_plus, n, p_plus) * tail))

    return cdf


@pytest.mark.parametrize(("n", "plus", "minus"), [(300, 30, 12), (401, 40, 20), (523, 25, 25), (650, 91, 40)])
def test_bootstrap_interval_is_the_95_percent_interval_of_the_exact_bootstrap(n: int, plus: int, minus: int) -> None:
    """Constructed titles whose exact bootstrap distribution is known: the interval's ends sit at its
    2.5% and 97.5% points, to the sampling error of 2,000 resamples (±0.0035 in probability; a 90%
    interval would sit at 5%, and 200 resamples wander about three times as far)."""
    a = np.zeros(n, dtype=bool)
    b = np.zeros(n, dtype=bool)
    a[:plus] = True  # only A right
    b[plus : plus + minus] = True  # only B right
    a[plus + minus : plus + minus + n // 3] = b[plus + minus : plus + minus + n // 3] = True  # both right
    interval = seed_title_interval(title_differences(a, b))
    difference, low, high = interval.difference, interval.low, interval.high
    assert difference == pytest.approx((plus - minus) / n)
    cdf = exact_bootstrap_cdf(plus, minus, n)
    step = 1 / n  # the bootstrap mean lives on multiples of 1/n
    assert cdf(low - step / 2) - 0.01 <= 0.025 <= cdf(low) + 0.01
    assert cdf(high - step / 2) - 0.01 <= 0.975 <= cdf(high) + 0.01


def test_bootstrap_resamples_titles_once_for_both_models() -> None:
    """Paired: each resample draws titles once and scores both models on them."""
    rng = np.random.default_rng(11)
    a = rng.random(1500) < 0.7
    b = a.copy()
    flips = rng.choice(1500, 60, replace=False)
    b[flips] = ~b[flips]  # B agrees with A on 96% of titles
    interval = seed_title_interval(title_differences(a, b))
    low, high = interval.low, interval.high
    # The width a paired bootstrap must give: 2 x 1.96 standard errors of the per-title difference.
    per_title = a.astype(float) - b.astype(float)
    expected = 2 * 1.96 * per_title.std() / np.sqrt(per_title.size)
    assert high - low == pytest.approx(expected, rel=0.12)
    # Unpaired (each model resampled on its own) it would be about four times as wide.
    unpaired = 2 * 1.96 * np.sqrt((a.var() + b.var()) / a.size)
    assert unpaired > 3 * expected


def test_with_several_seeds_the_interval_carries_the_seeds_spread() -> None:
    """Seeds that agree title for title add nothing to the variance: the standard error is the titles'
    alone, and the interval is wider than one seed's only by the widening three seeds need (they cannot
    show that a fourth would agree too). Seeds that differ in level widen it by their spread."""
    from scipy.stats import t as student

    rng = np.random.default_rng(12)
    a, b = rng.random(2000) < 0.7, rng.random(2000) < 0.68
    one = seed_title_interval(title_differences(a, b))
    copies = seed_title_interval(title_differences(np.stack([a] * 3), np.stack([b] * 3)))
    assert one.df is None and copies.df == pytest.approx(1999)
    assert copies.difference == pytest.approx(one.difference)
    d = a.astype(float) - b
    assert copies.se == pytest.approx(d.std(ddof=1) / np.sqrt(2000))
    assert copies.widening == pytest.approx(1.25, abs=0.03)  # 3 seeds (crossed.widening)
    assert copies.high - copies.low == pytest.approx(2 * copies.widening * student.ppf(0.975, 1999) * copies.se)
    assert copies.high - copies.low == pytest.approx(copies.widening * (one.high - one.low), rel=0.1)
    # Seed 1's row is 8 points better than on seeds 2 and 3 (say, a lucky initialisation): the spread enters.
    lucky = a.copy()
    lucky[np.flatnonzero(~a)[:160]] = True
    pooled = title_differences(np.stack([lucky, a, a]), np.stack([b, b, b]))
    seeds_and_titles = seed_title_interval(pooled)
    titles_only = seed_title_interval(pooled.mean(axis=0, keepdims=True))
    assert seeds_and_titles.difference == pytest.approx(titles_only.difference)
    assert seeds_and_titles.high - seeds_and_titles.low > 3 * (titles_only.high - titles_only.low)


def test_the_seeds_and_titles_interval_is_the_textbook_random_effects_t_at_satterthwaites_df() -> None:
    """The variance (MS seeds + MS titles - MS residual) / (seeds x titles), the crossed random-effects
    layout's, with Satterthwaite's df over its three mean squares, and the half-width t at that df times
    the widening; dropping the residual's subtraction, or the seeds' term, changes it."""
    from scipy.stats import t as student

    rng = np.random.default_rng(4)
    differences = title_differences(rng.random((3, 400)) < 0.6 + 0.03 * np.arange(3)[:, None],
                                    rng.random((3, 400)) < 0.6)  # fmt: skip
    seeds, titles = differences.shape
    d = differences.astype(float)
    ms_seeds = titles * np.var(d.mean(axis=1), ddof=1)
    ms_titles = seeds * np.var(d.mean(axis=0), ddof=1)
    residual = d - d.mean(axis=1, keepdims=True) - d.mean(axis=0, keepdims=True) + d.mean()
    ms_residual = (residual**2).sum() / ((seeds - 1) * (titles - 1))
    assert ms_seeds > ms_residual and ms_titles > ms_residual  # both components positive here
    n = seeds * titles
    variance = (ms_seeds + ms_titles - ms_residual) / n
    df = variance**2 / ((ms_seeds / n) ** 2 / (seeds - 1) + (ms_titles / n) ** 2 / (titles - 1)
                        + (ms_residual / n) ** 2 / ((seeds - 1) * (titles - 1)))  # fmt: skip
    interval = seed_title_interval(differences)
    assert interval.se == pytest.approx(np.sqrt(variance), rel=1e-9)
    assert interval.df == pytest.approx(df, rel=1e-9)
    half = interval.widening * student.ppf(0.975, df) * np.sqrt(variance)
    assert (interval.low, interval.high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert interval.se**2 < (ms_seeds + ms_titles) / n  # the residual is subtracted, not counted twice


def test_macro_f1_and_per_class_accuracy_match_scikit_learn() -> None:
    from sklearn.metrics import f1_score, recall_score

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 15, 300).tolist()
    predictions = [g if rng.random() < 0.6 else int(rng.integers(0, 15)) for g in labels]
    assert macro_f1(predictions, labels, 15) == pytest.approx(f1_score(labels, predictions, average="macro"))
    per_class = per_class_accuracy(predictions, labels, 15)
    assert per_class == pytest.approx(list(recall_score(labels, predictions, average=None)))
    assert per_class_accuracy([1, 1], [1, 1], 3) == [None, 1.0, None]


def test_mean_and_sample_standard_deviation() -> None:
    assert mean_std([0.5]) == (0.5, 0.0)
    mean, std = mean_std([0.50, 0.52, 0.54])
    assert mean == pytest.approx(0.52) and std == pytest.approx(0.02)


def grid(best_dev_rate: float, best_test_rate: float) -> list:
    """LoRA at two rates over three seeds: one rate wins on dev, the other on test."""
    runs = []
    for seed in (1, 2, 3):
        for rate in (1e-4, 5e-4):
            dev = 120 if rate == best_dev_rate else 100
            test = 150 if rate == best_test_rate else 90
            runs.append(result("lora", lr=rate, seed=seed, dev_right=dev + seed, test_right=test, labels=LABELS))
        runs.append(result("full_finetune", lr=5e-5, seed=seed, dev_right=110, test_right=100, labels=LABELS))
    return runs


def test_selection_uses_dev_only() -> None:
    rows = headline_rows(grid(best_dev_rate=1e-4, best_test_rate=5e-4))
    lora = rows[0]
    assert (lora.strategy, lora.learning_rate) == ("lora", 1e-4)
    assert lora.keys == ["lora_lr0.0001_s1", "lora_lr0.0001_s2", "lora_lr0.0001_s3"]
    assert lora.test_accuracy.mean == pytest.approx(90 / 200)  # the rate that is worse on test
    assert lora.dev_accuracy_by_rate == {"0.0001": pytest.approx(122 / 200), "0.0005": pytest.approx(102 / 200)}
    assert lora.dev_accuracy.n == 3 and lora.dev_accuracy.std == pytest.approx(0.005)
    flipped = headline_rows(grid(best_dev_rate=5e-4, best_test_rate=1e-4))[0]
    assert flipped.learning_rate == 5e-4


def test_equal_dev_accuracy_prefers_the_lower_dev_loss() -> None:
    runs = [
        result("lora", lr=1e-4, seed=1, dev_right=100, test_right=100, labels=LABELS, dev_loss=1.2),
        result("lora", lr=5e-4, seed=1, dev_right=100, test_right=100, labels=LABELS, dev_loss=0.9),
    ]
    assert headline_rows(runs)[0].learning_rate == 5e-4


def correct_of(combined, keys: list[str], labels: list[int] = LABELS) -> np.ndarray:
    by_key = {r.key: r for r in combined.runs}
    gold = np.array(labels)
    return np.array([np.array(decode_classes(by_key[k].test.predictions)) == gold for k in keys])


def test_comparison_pairs_the_selected_runs_seed_by_seed() -> None:
    runs = grid(best_dev_rate=5e-4, best_test_rate=5e-4)
    combined = combine(records(runs, LABELS))
    c = combined.comparison
    assert c is not None and c.seeds == [1, 2, 3]
    assert c.selected["lora"] == ["lora_lr0.0005_s1", "lora_lr0.0005_s2", "lora_lr0.0005_s3"]
    assert c.accuracy_difference == pytest.approx((150 - 100) / 200)
    assert c.seed_differences == {"1": pytest.approx(0.25), "2": pytest.approx(0.25), "3": pytest.approx(0.25)}
    low, high = c.accuracy_difference_ci95
    assert 0 < low < 0.25 < high and c.significant and c.directions_agree and c.interval_has_seed_variance
    assert c.p_value < 0.01 and c.p_value_holm == c.p_value and c.compared_rows == 1  # 3 seeds: never tiny
    assert c.titles_only_p_value < 1e-9  # about these runs only: no part of the answer
    assert c.discordant["1"] == (50, 0)
    assert c.margin == 0.01 and c.noninferior and c.answer == "good enough"
    assert c.verdict.startswith("good enough: at most 1.0 point below full fine-tuning (95% CI +")
    assert c.verdict.endswith("LoRA is significantly better.")


def test_the_recorded_numbers_reproduce_the_test_interval_and_detectable_difference() -> None:
    """results.json is traceable: p, interval and detectable difference follow from the recorded
    predictions in the seeds-and-titles frame, and the verdict prints those very numbers."""
    from job.results.crossed import detectable, frame_of

    combined = combine(records(seed_runs({1: 2, 2: 9, 3: 17}, {1: 11, 2: 0, 3: 5}), LABELS))
    c = combined.comparison
    assert c is not None and c.bootstrap_resamples == 2000
    differences = title_differences(correct_of(combined, c.selected["lora"]),
                                    correct_of(combined, c.selected["full_finetune"]))  # fmt: skip
    assert c.titles_only_p_value == sign_flip_p(differences)
    interval = seed_title_interval(differences, c.bootstrap_resamples, c.bootstrap_seed)
    low, high = interval.low, interval.high
    assert c.accuracy_difference_ci95 == (low, high) and c.interval_df == interval.df
    assert c.p_value == interval.reading.p_two_sided() and (c.p_value < 0.05) == (low > 0 or high < 0)
    from scipy.stats import chi2

    frame = frame_of(differences)
    seeds_part = (frame.ms_seeds / (chi2.median(2) / 2) - frame.ms_residual) / 600  # MS_seeds at its median
    known = frame.titles_part + frame.residual
    expected = detectable(seeds=3, titles=200, known=known, seeds_part=seeds_part, beta=frame.beta)
    assert c.detectable_difference == pytest.approx(expected)
    # These seeds differ widely: the seeds' spread, not the titles', sets what the comparison can find.
    assert c.detectable_difference > detectable_difference(observed_spread(differences), 200)
    assert f"95% CI {100 * low:+.1f} to {100 * high:+.1f} points".replace("-", "−") in c.verdict
    assert f"with {c.interval_df:.1f} df over 3 seeds x 200 titles, both random, p = {c.p_value:.2f}" in c.verdict
    assert f"a true difference of {100 * c.detectable_difference:.1f} points 80% of the time" in c.verdict


def test_verdict_claims_no_difference_the_test_does_not_support() -> None:
    # LoRA gets 4 titles wrong that full fine-tuning gets right, and 4 the other way: level.
    labels = LABELS
    full = answers_with_flips(labels, wrong=range(10, 20))
    lora = answers_with_flips(labels, wrong=[*range(14, 20), 40, 41, 30, 31])
    runs = [
        result("lora", lr=5e-4, seed=42, dev_right=100, test_right=0, labels=labels, test_predictions=lora),
        result("full_finetune", lr=5e-5, seed=42, dev_right=100, test_right=0, labels=labels, test_predictions=full),
    ]
    c = combine(records(runs, labels)).comparison
    assert c is not None
    assert c.accuracy_difference == pytest.approx(0.0) and c.discordant["42"] == (4, 4)
    assert c.p_value == 1.0 and not c.significant and not c.directions_agree
    assert c.accuracy_difference_ci95[0] < 0 < c.accuracy_difference_ci95[1]
    assert not c.interval_has_seed_variance
    # 8 discordant of 200 titles: the interval is about +-2.7 points, so a 1-point margin is not shown.
    assert c.answer == "not shown to be good enough" and not c.noninferior
    low = c.accuracy_difference_ci95[0]
    assert c.verdict.startswith(
        f"not shown to be good enough: the interval reaches {100 * low:+.1f} points, beyond the margin of "
        "1.0 point (95% CI ".replace("-", "−")
    )
    assert "titles resampled; one seed, so training variance is not in it" in c.verdict
    assert "LoRA is level with full fine-tuning (exact sign-flip test over 200 paired titles x 1 seed, p = 1.00)" in (
        c.verdict
    )
    assert "no significant difference, which is not evidence of none" in c.verdict
    assert "significantly" not in c.verdict
    # The same runs at a 4-point margin: good enough.
    wide = combine(records(runs, labels), margin=0.04).comparison
    assert wide is not None and wide.margin == 0.04 and wide.answer == "good enough" and wide.noninferior
    assert wide.verdict.startswith("good enough: at most 4.0 points below full fine-tuning (95% CI −")


def test_a_row_wholly_below_the_margin_is_worse() -> None:
    runs = [
        result("lora", lr=5e-4, seed=42, dev_right=100, test_right=100, labels=LABELS),
        result("full_finetune", lr=5e-5, seed=42, dev_right=100, test_right=140, labels=LABELS),
    ]
    c = combine(records(runs, LABELS)).comparison
    assert c is not None and c.accuracy_difference == pytest.approx(-0.2)
    assert c.accuracy_difference_ci95[1] < -0.01 and c.answer == "worse" and not c.noninferior
    assert c.verdict.startswith("worse: more than 1.0 point below full fine-tuning (95% CI −")
    assert c.significant and c.verdict.endswith("full fine-tuning is significantly better.")


def answers_with_flips(labels: list[int], wrong) -> list[int]:
    wrong = set(wrong)
    return [(g + 1) % 15 if i in wrong else g for i, g in enumerate(labels)]


def test_missing_runs_are_listed() -> None:
    runs = grid(best_dev_rate=1e-4, best_test_rate=1e-4)[:2]
    combined = combine(records(runs, LABELS, planned=[*(r.key for r in runs), "full_finetune_lr5e-05_s1"]))
    assert combined.missing_runs == ["full_finetune_lr5e-05_s1"]
    assert combined.comparison is None


def right_on(predictions: list[int], titles: range) -> list[int]:
    return [LABELS[i] if i in titles else p for i, p in enumerate(predictions)]


def seed_runs(only_lora: dict[int, int], only_full: dict[int, int], *, full_order: tuple[int, ...] = (1, 2, 3)) -> list:
    """One LoRA and one full fine-tuning run per seed, with `only_lora[seed]` titles only LoRA gets right
    and `only_full[seed]` only full fine-tuning does, at a different place for every seed. Full
    fine-tuning's runs are listed in `full_order`."""
    runs, full = [], {}
    for seed in (1, 2, 3):
        start = 20 * seed  # each seed's titles differ
        both = answers(LABELS, 100, start + 50)  # right on 100 titles from start + 50 on
        lora = right_on(both, range(start, start + only_lora[seed]))
        full_right = right_on(both, range(start + 25, start + 25 + only_full[seed]))
        runs.append(result("lora", lr=5e-4, seed=seed, dev_right=120, test_right=0, labels=LABELS, index=seed,
                           test_predictions=lora))  # fmt: skip
        full[seed] = result("full_finetune", lr=5e-5, seed=seed, dev_right=110, test_right=0, labels=LABELS,
                            index=3 + seed, test_predictions=full_right)  # fmt: skip
    return runs + [full[seed] for seed in full_order]


@pytest.mark.parametrize("full_order", [(1, 2, 3), (3, 2, 1)])
def test_seeds_are_paired_by_seed_whatever_order_the_runs_come_in(full_order: tuple[int, ...]) -> None:
    only_lora, only_full = {1: 2, 2: 9, 3: 17}, {1: 11, 2: 0, 3: 5}
    c = combine(records(seed_runs(only_lora, only_full, full_order=full_order), LABELS)).comparison
    assert c is not None and c.seeds == [1, 2, 3]
    assert c.selected["full_finetune"] == ["full_finetune_lr5e-05_s1", "full_finetune_lr5e-05_s2",
                                           "full_finetune_lr5e-05_s3"]  # fmt: skip
    assert c.discordant == {str(s): (only_lora[s], only_full[s]) for s in (1, 2, 3)}
    assert c.seed_differences == {str(s): pytest.approx((only_lora[s] - only_full[s]) / 200) for s in (1, 2, 3)}
    assert c.accuracy_difference == pytest.approx((2 + 9 + 17 - 11 - 0 - 5) / 3 / 200)


def test_one_test_over_all_seeds_finds_what_no_single_seed_shows() -> None:
    """LoRA is ahead by 5 titles to 1 on each of three seeds, on different titles: no seed alone is
    significant (McNemar p = 0.22 each); over the seeds the frame's test is, the seeds agreeing (and the
    titles-only test, 15 to 3, about these runs, says so too)."""
    from scipy.stats import binomtest

    c = combine(records(seed_runs({1: 5, 2: 5, 3: 5}, {1: 1, 2: 1, 3: 1}), LABELS)).comparison
    assert c is not None
    assert binomtest(5, 6).pvalue == pytest.approx(0.21875)
    assert c.titles_only_p_value == pytest.approx(binomtest(15, 18).pvalue, rel=1e-6)
    assert c.p_value < 0.05 and c.significant and c.verdict.endswith("LoRA is significantly better.")


def test_a_pooled_difference_the_seeds_do_not_agree_on_is_not_significant() -> None:
    """One seed 30 titles ahead, two seeds 4 behind: the titles-only test rejects (these runs differ), but
    new seeds could fall either way: the frame's t, which carries the seeds' spread, does not."""
    c = combine(records(seed_runs({1: 30, 2: 0, 3: 0}, {1: 0, 2: 4, 3: 4}), LABELS)).comparison
    assert c is not None and c.titles_only_p_value < 0.05 and c.accuracy_difference > 0
    assert c.p_value > 0.05 and not c.directions_agree and not c.significant
    assert "no significant difference, which is not evidence of none" in c.verdict
    assert "sign-flip" not in c.verdict  # the titles-only test is no part of the answer


def test_directions_agree_when_more_seeds_go_the_pooled_way_than_against() -> None:
    assert directions_agree([0.02], 0.02) and not directions_agree([0.0], 0.0)
    assert not directions_agree([0.05, -0.01], 0.02)  # one each way is no agreement
    assert directions_agree([0.05, -0.01, 0.01], 0.017) and directions_agree([0.05, 0.0], 0.025)
    assert not directions_agree([-0.05, 0.01, 0.01], -0.01)  # pooled below, but most seeds above


def test_a_rank_sweep_compares_the_rank_best_on_dev_even_when_another_is_best_on_test() -> None:
    runs = []
    for seed in (1, 2):
        runs.append(result("lora", lr=5e-4, seed=seed, dev_right=130, test_right=90, labels=LABELS, rank=4))
        runs.append(result("lora", lr=5e-4, seed=seed, dev_right=110, test_right=160, labels=LABELS, rank=16))
        runs.append(result("full_finetune", lr=5e-5, seed=seed, dev_right=120, test_right=100, labels=LABELS))
    combined = combine(records(runs, LABELS))
    assert [row.group for row in combined.headline] == ["lora_r4_a8", "lora_r16_a32", "full_finetune"]
    c = combined.comparison
    assert c is not None and c.labels["lora"] == "lora (r=4, α=8, dropout=0.1, lr=0.0005)"
    assert c.selected["lora"] == ["lora_r4_a8_lr0.0005_s1", "lora_r4_a8_lr0.0005_s2"]
    assert c.accuracy_difference == pytest.approx((90 - 100) / 200)


def test_runs_that_saw_different_rows_are_never_compared() -> None:
    runs = grid(best_dev_rate=1e-4, best_test_rate=1e-4)
    stale = runs[2].model_copy(update={"sample": "0000000000000000"})
    with pytest.raises(UserError) as error:
        combine(records([*runs[:2], stale, *runs[3:]], LABELS))
    message = str(error.value)
    assert "did not all see the same training, dev and test rows" in message
    assert f"sample 0000000000000000: {stale.key}" in message and runs[0].key in message


def test_rows_that_got_every_title_alike_say_nothing_tells_them_apart() -> None:
    """A random-weight model that predicts one class for every title, under both strategies: the interval
    is a point at zero, and the detectable difference falls back to the usual disagreement between runs
    (15% of titles), not to the zero disagreement of these runs."""
    import math

    same = [LABELS[0]] * len(LABELS)
    runs = [result("lora", lr=5e-4, seed=42, dev_right=100, test_right=0, labels=LABELS, test_predictions=same),
            result("full_finetune", lr=5e-5, seed=42, dev_right=100, test_right=0, labels=LABELS,
                   test_predictions=same)]  # fmt: skip
    c = combine(records(runs, LABELS)).comparison
    assert c is not None and c.accuracy_difference_ci95 == (0.0, 0.0) and c.p_value == 1.0
    assert c.detectable_difference == pytest.approx(detectable_difference(math.sqrt(0.15), 200))
    assert "the two rows got the same titles right on every seed, so nothing here tells them apart" in c.verdict
    assert f"a true difference of {100 * c.detectable_difference:.1f} points would be found" in c.verdict


def test_with_seeds_a_row_far_below_is_worse_and_a_level_row_never_is() -> None:
    """The answer's third word in the seeds' frame: 'worse' when the row is wholly below -margin (one-sided
    p of a difference at or above -margin < 0.025); a level row is good enough at a margin it clears, never
    worse (with the margin's sign flipped, it would read worse)."""
    far = combine(records(seed_runs({1: 0, 2: 0, 3: 0}, {1: 30, 2: 32, 3: 28}), LABELS)).comparison
    assert far is not None and far.accuracy_difference < -0.1
    assert far.answer == "worse" and not far.noninferior
    assert far.verdict.startswith("worse: more than 1.0 point below full fine-tuning (95% CI −")
    level = combine(records(seed_runs({1: 2, 2: 2, 3: 2}, {1: 2, 2: 2, 3: 2}), LABELS), margin=0.03).comparison
    assert level is not None and level.accuracy_difference == 0
    assert level.accuracy_difference_ci95[1] < 0.03  # the whole interval is within 3 points of zero
    assert level.answer == "good enough" and level.good_enough_p_value_holm < 0.025
    # A point below, its interval reaching past -1 point but ending short of +1: not shown, not worse.
    near = combine(records(seed_runs({1: 2, 2: 2, 3: 2}, {1: 4, 2: 4, 3: 4}), LABELS)).comparison
    assert near is not None and near.accuracy_difference == pytest.approx(-0.01)
    low, high = near.accuracy_difference_ci95
    assert low < -0.01 and high < 0.01
    assert near.answer == "not shown to be good enough"


def test_several_rows_are_held_to_the_family_by_holm_for_the_test_and_the_answer() -> None:
    """A rank sweep of 4 rows: each row's p-values, two-sided and one-sided, are Holm-adjusted over the 4,
    and the answer and 'significant' read the adjusted ones (raw ones would grant and reject too often)."""
    runs = []
    for seed in (1, 2, 3):
        for rank, right in ((2, 104 + seed), (4, 100), (8, 99 + seed), (16, 101)):
            runs.append(result("lora", lr=5e-4, seed=seed, dev_right=130 - rank, test_right=right, labels=LABELS,
                               rank=rank))  # fmt: skip
        runs.append(result("full_finetune", lr=5e-5, seed=seed, dev_right=120, test_right=100, labels=LABELS))
    found = combine(records(runs, LABELS), margin=0.05).comparisons
    assert len(found) == 4 and {c.compared_rows for c in found} == {4}
    raw = [c.p_value for c in found]
    assert [c.p_value_holm for c in found] == pytest.approx(holm(raw))
    assert [c.p_value_holm for c in found] != pytest.approx(raw)  # the adjustment did something
    one_sided = [c.good_enough_p_value for c in found]
    assert [c.good_enough_p_value_holm for c in found] == pytest.approx(holm(one_sided))
    for c in found:
        assert c.noninferior == (c.good_enough_p_value_holm < 0.025)
        assert c.significant == (c.p_value_holm < 0.05)
        assert "Holm over 4 rows" in c.verdict
