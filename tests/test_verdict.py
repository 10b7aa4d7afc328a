"""Selection on dev, the paired statistics and the verdict they allow."""

from __future__ import annotations

import numpy as np
import pytest

from job.errors import UserError
from job.results.stats import (
    binomial_two_sided,
    decode_classes,
    encode_classes,
    macro_f1,
    mcnemar_exact,
    mean_std,
    paired_bootstrap_ci,
    per_class_accuracy,
)
from job.results.verdict import combine, headline_rows, mcnemar_agrees
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


def test_mcnemar_matches_a_textbook_table() -> None:
    # 2 titles only the first model gets right, 10 only the second: exact p = 2 * P(X <= 2), X ~ B(12, 1/2).
    a = [True] * 2 + [False] * 10 + [True] * 30 + [False] * 8
    b = [False] * 2 + [True] * 10 + [True] * 30 + [False] * 8
    p, only_a, only_b = mcnemar_exact(a, b)
    assert (only_a, only_b) == (2, 10)
    assert p == pytest.approx(2 * (1 + 12 + 66) / 4096)
    from scipy.stats import binomtest  # an independent implementation

    assert p == pytest.approx(binomtest(2, 12, 0.5).pvalue)
    assert binomial_two_sided(6, 12) == 1.0 and mcnemar_exact([True], [True])[0] == 1.0


def test_bootstrap_interval_is_reproducible_and_covers_a_known_difference() -> None:
    rng = np.random.default_rng(7)
    truth = 0.10  # model A is right 80% of the time, B 70%, on 2,000 titles and 3 seeds
    a = rng.random((3, 2000)) < 0.8
    b = rng.random((3, 2000)) < 0.8 - truth
    first = paired_bootstrap_ci(a, b)
    assert first == paired_bootstrap_ci(a, b)  # seeded: the same interval every time
    difference, low, high = first
    assert difference == pytest.approx(a.mean() - b.mean())
    assert low < truth < high and low > 0  # covers the truth, and excludes no difference


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
    difference, low, high = paired_bootstrap_ci(a, b)
    assert difference == pytest.approx((plus - minus) / n)
    cdf = exact_bootstrap_cdf(plus, minus, n)
    step = 1 / n  # the bootstrap mean lives on multiples of 1/n
    assert cdf(low - step / 2) - 0.01 <= 0.025 <= cdf(low) + 0.01
    assert cdf(high - step / 2) - 0.01 <= 0.975 <= cdf(high) + 0.01


def test_bootstrap_resamples_titles_once_for_every_seed_and_both_models() -> None:
    """Paired: each resample draws titles once and scores both models and every seed on them."""
    rng = np.random.default_rng(11)
    a = rng.random(1500) < 0.7
    b = a.copy()
    flips = rng.choice(1500, 60, replace=False)
    b[flips] = ~b[flips]  # B agrees with A on 96% of titles
    _, low, high = paired_bootstrap_ci(a, b)
    # The width a paired bootstrap must give: 2 x 1.96 standard errors of the per-title difference.
    per_title = a.astype(float) - b.astype(float)
    expected = 2 * 1.96 * per_title.std() / np.sqrt(per_title.size)
    assert high - low == pytest.approx(expected, rel=0.12)
    # Unpaired (each model resampled on its own) it would be about four times as wide.
    unpaired = 2 * 1.96 * np.sqrt((a.var() + b.var()) / a.size)
    assert unpaired > 3 * expected
    # Seeds that agree title for title add no information: three copies give the one-seed interval exactly.
    assert paired_bootstrap_ci(np.stack([a] * 3), np.stack([b] * 3)) == paired_bootstrap_ci(a, b)


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


def test_comparison_pairs_the_selected_runs_seed_by_seed() -> None:
    runs = grid(best_dev_rate=5e-4, best_test_rate=5e-4)
    combined = combine(records(runs, LABELS))
    c = combined.comparison
    assert c is not None and c.seeds == [1, 2, 3]
    assert c.selected["lora"] == ["lora_lr0.0005_s1", "lora_lr0.0005_s2", "lora_lr0.0005_s3"]
    assert c.accuracy_difference == pytest.approx((150 - 100) / 200)
    low, high = c.accuracy_difference_ci95
    assert 0 < low < 0.25 < high and c.significant
    assert set(c.mcnemar_p) == {"1", "2", "3"} and all(p < 1e-9 for p in c.mcnemar_p.values())
    assert c.discordant["1"] == (50, 0)
    assert c.verdict.startswith("LoRA is 25.0 points above full fine-tuning (95% CI +")
    assert c.verdict.endswith("LoRA is significantly better (the interval excludes zero).")


def test_verdict_claims_no_difference_the_interval_does_not_support() -> None:
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
    assert c.accuracy_difference_ci95[0] < 0 < c.accuracy_difference_ci95[1] and not c.significant
    assert c.verdict.startswith("LoRA is level with full fine-tuning (95% CI −")
    assert "on 200 paired titles): no significant difference at this sample size." in c.verdict
    assert "significantly" not in c.verdict


def answers_with_flips(labels: list[int], wrong) -> list[int]:
    wrong = set(wrong)
    return [(g + 1) % 15 if i in wrong else g for i, g in enumerate(labels)]


def test_missing_runs_are_listed() -> None:
    runs = grid(best_dev_rate=1e-4, best_test_rate=1e-4)[:2]
    combined = combine(records(runs, LABELS, planned=[*(r.key for r in runs), "full_finetune_lr5e-05_s1"]))
    assert combined.missing_runs == ["full_finetune_lr5e-05_s1"]
    assert combined.comparison is None


def test_a_one_sided_handful_of_titles_is_not_called_significant() -> None:
    """5 titles only full fine-tuning gets right, none the other way: the bootstrap interval excludes
    zero, McNemar (p = 0.0625) does not, and the verdict says so."""
    runs = [
        result("lora", lr=5e-4, seed=42, dev_right=100, test_right=100, labels=LABELS),
        result("full_finetune", lr=5e-5, seed=42, dev_right=100, test_right=105, labels=LABELS),
    ]
    c = combine(records(runs, LABELS)).comparison
    assert c is not None and c.accuracy_difference_ci95[1] < 0
    assert c.mcnemar_p["42"] == pytest.approx(0.0625) and not c.significant
    assert "the interval excludes zero but the exact test does not confirm it" in c.verdict


def test_the_recorded_resamples_and_seed_reproduce_the_interval() -> None:
    """results.json is traceable: the interval follows from the recorded predictions, resample count and
    seed (the count the comparison says it used is the count it used)."""
    runs = grid(best_dev_rate=5e-4, best_test_rate=5e-4)
    combined = combine(records(runs, LABELS))
    c = combined.comparison
    assert c is not None and c.bootstrap_resamples == 2000
    gold = np.array(LABELS)
    by_key = {r.key: r for r in combined.runs}

    def correct(strategy: str) -> np.ndarray:
        return np.array([np.array(decode_classes(by_key[k].test.predictions)) == gold for k in c.selected[strategy]])

    _, low, high = paired_bootstrap_ci(correct("lora"), correct("full_finetune"), c.bootstrap_resamples,
                                       c.bootstrap_seed)  # fmt: skip
    assert c.accuracy_difference_ci95 == (low, high)


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
    for s in (1, 2, 3):
        n = only_lora[s] + only_full[s]
        assert c.mcnemar_p[str(s)] == pytest.approx(binomtest(only_lora[s], n, 0.5).pvalue)
    assert c.accuracy_difference == pytest.approx((2 + 9 + 17 - 11 - 0 - 5) / 3 / 200)


def binomtest(k: int, n: int, p: float):
    from scipy.stats import binomtest as scipy_binomtest

    return scipy_binomtest(k, n, p)


@pytest.mark.parametrize(("significant_seeds", "called"), [(1, False), (2, True), (3, True)])
def test_a_difference_is_significant_only_when_mcnemar_confirms_it_on_most_seeds(
    significant_seeds: int, called: bool
) -> None:
    """LoRA is ahead on every seed and the interval excludes zero, but by 25 titles to 0 (p < 1e-6) only on
    `significant_seeds` seeds, and 4 to 0 (p = 0.125) on the others."""
    only_lora = {s: 25 if s <= significant_seeds else 4 for s in (1, 2, 3)}
    c = combine(records(seed_runs(only_lora, {1: 0, 2: 0, 3: 0}), LABELS)).comparison
    assert c is not None and c.accuracy_difference_ci95[0] > 0
    assert sum(p < 0.05 for p in c.mcnemar_p.values()) == significant_seeds
    assert c.significant is called
    if not called:
        assert "the interval excludes zero but the exact test does not confirm it" in c.verdict


def test_mcnemar_agrees_on_more_than_half_of_the_seeds() -> None:
    assert mcnemar_agrees([0.01])
    assert not mcnemar_agrees([0.01, 0.5])  # half is not most
    assert mcnemar_agrees([0.01, 0.04, 0.5]) and not mcnemar_agrees([0.01, 0.5, 0.5])


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
