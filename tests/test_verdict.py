"""Selection on dev, the paired statistics and the verdict they allow."""

from __future__ import annotations

import numpy as np
import pytest

from job.stats import (
    binomial_two_sided,
    decode_classes,
    encode_classes,
    macro_f1,
    mcnemar_exact,
    mean_std,
    paired_bootstrap_ci,
    per_class_accuracy,
)
from job.verdict import combine, headline_rows
from tests.records import records, result

LABELS = [i % 15 for i in range(200)]


def test_predictions_round_trip_as_one_character_per_title() -> None:
    classes = [0, 9, 10, 14, 3]
    assert encode_classes(classes) == "09ae3"
    assert decode_classes(encode_classes(classes)) == classes


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
    assert 0.01 < high - low < 0.08
    same = paired_bootstrap_ci(a, a)
    assert same == (0.0, 0.0, 0.0)


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
    # LoRA gets 4 titles wrong that full fine-tuning gets right, and 2 the other way: 1 point down.
    labels = LABELS
    full = answers_with_flips(labels, wrong=range(10, 20))
    lora = answers_with_flips(labels, wrong=[*range(14, 20), 40, 41, 30, 31])
    runs = [
        result("lora", lr=5e-4, seed=42, dev_right=100, test_right=0, labels=labels, test_predictions=lora),
        result("full_finetune", lr=5e-5, seed=42, dev_right=100, test_right=0, labels=labels, test_predictions=full),
    ]
    c = combine(records(runs, labels)).comparison
    assert c is not None
    assert c.accuracy_difference == pytest.approx(0.0)
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
