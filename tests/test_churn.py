"""How the models differ beyond accuracy: the share of test titles a compared row and full fine-tuning
predict differently at the same seed, beside the share two seeds of one strategy do, from the stored
predictions, with planted disagreement of known size; at few seeds and with one."""

from __future__ import annotations

import pytest

from job.results.answer import differences
from job.results.churn import churn
from job.results.verdict import combine
from tests.records import records, result

LABELS = [i % 15 for i in range(200)]


def flipped(titles: range) -> list[int]:
    """The gold labels, with the titles in `titles` predicted as the next class."""
    return [(label + 1) % 15 if index in titles else label for index, label in enumerate(LABELS)]


def run(strategy: str, seed: int, wrong: range):
    lr = 5e-4 if strategy == "lora" else 5e-5
    return result(strategy, lr=lr, seed=seed, dev_right=150, test_right=0, labels=LABELS, index=seed,
                  test_predictions=flipped(wrong))  # fmt: skip


@pytest.mark.timeout(60)
def test_planted_disagreement_is_measured_at_its_size_with_an_interval_around_it() -> None:
    """Each run is wrong on its own 20 titles: full fine-tuning's seeds on 0-19 and 20-39, LoRA's on 40-59
    and 60-79. Any two runs then differ on 40 of the 200 titles: 20%, at the same seed and across seeds."""
    runs = [run("full_finetune", 1, range(0, 20)), run("full_finetune", 2, range(20, 40)),
            run("lora", 1, range(40, 60)), run("lora", 2, range(60, 80))]  # fmt: skip
    # lora s1 against full s1: titles 0-19 and 40-59 differ (40); lora s2 against full s2: 20-39 and 60-79 (40)
    combined = combine(records(runs, LABELS))
    c = combined.comparison
    assert c is not None
    found = churn(combined, c)
    assert found is not None
    assert found.against_full.value == pytest.approx(0.20) and found.against_full.pairs == 2
    assert found.full_seeds.value == pytest.approx(0.20) and found.own_seeds.value == pytest.approx(0.20)
    for share in (found.against_full, found.full_seeds, found.own_seeds):
        assert share.low < share.value < share.high and share.high - share.low < 0.15
    line = differences(combined)[0]
    assert line.startswith("LoRA disagrees with full fine-tuning on 20.0% (95% CI ")
    assert "two seeds of full fine-tuning disagree on 20.0%" in line


@pytest.mark.timeout(60)
def test_three_seeds_average_every_pair_and_one_seed_says_it_cannot_tell() -> None:
    runs = [run("full_finetune", seed, range(10 * seed, 10 * seed + 10)) for seed in (1, 2, 3)]
    runs += [run("lora", seed, range(10 * seed, 10 * seed + 10)) for seed in (1, 2, 3)]  # same as full: 0%
    combined = combine(records(runs, LABELS))
    found = churn(combined, combined.comparisons[0])
    assert found is not None and found.against_full.value == 0.0 and found.against_full.pairs == 3
    assert found.full_seeds.value == pytest.approx(0.10) and found.full_seeds.pairs == 3  # 20 of 200 per pair
    one = combine(records([run("full_finetune", 1, range(0, 5)), run("lora", 1, range(5, 9))], LABELS))
    assert churn(one, one.comparisons[0]) is None
    assert "with one seed there is no pair of seeds" in differences(one)[0]
