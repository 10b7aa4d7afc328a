"""LoRA learns where it has something to adapt: the job, end to end, on the pretrained stand-in (a small
ERNIE-architecture encoder pretrained by masked LM on the TNEWS train titles, in ../shared; not ERNIE 3.0
Medium) and the real TNEWS titles. Skipped cleanly when ../shared is absent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from job.results.stats import decode_classes, seed_title_interval, title_differences
from tests.conftest import SHARED_DATA
from tests.fixtures import run_tiny

STANDIN = SHARED_DATA / "ernie-standin-tnews"
CHANCE = 1 / 15
# Measured with this config on 2 cores (seeds 1 and 2; test accuracy): LoRA at 3e-3 0.244 and 0.229, full
# fine-tuning at 3e-4 0.258 and 0.229; LoRA at full fine-tuning's rate reached 0.168 and 0.125. Seeded, but
# oneDNN's kernels differ between CPUs, so the runs are not bit-for-bit the same everywhere: 3 points of room.
MEASURED = {("lora", 1): 0.244, ("lora", 2): 0.229, ("full_finetune", 1): 0.258, ("full_finetune", 2): 0.229}
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def standin() -> Path:
    if not (STANDIN / "model.safetensors").is_file():
        pytest.skip(f"the pretrained stand-in is not present at {STANDIN}")
    return STANDIN


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lora_at_its_own_rate_learns_on_the_stand_in_and_the_report_answers_from_its_records(
    tmp_path: Path, standin: Path, shared_tnews: Path
) -> None:
    out = run_tiny(
        tmp_path, standin, shared_tnews, max_seq_length=64, learning_rate=3e-4, lora_learning_rate=3e-3,
        num_epochs=3, max_train_samples=2000, max_eval_samples=1000, seed=[1, 2], margin=3, lora_r=16,
        lora_alpha=32,
    )  # fmt: skip
    records = [json.loads(path.read_text(encoding="utf-8")) for path in sorted((out / "results").glob("*.json"))]
    results = {(r["result"]["strategy"], r["result"]["seed"]): r["result"] for r in records}
    assert set(results) == set(MEASURED)
    for key, accuracy in MEASURED.items():
        assert results[key]["test"]["accuracy"] == pytest.approx(accuracy, abs=TOLERANCE), key
        assert results[key]["test"]["accuracy"] > 3 * CHANCE, key  # well above chance: it learned
    lora_losses = results[("lora", 1)]["step_losses"]
    assert np.mean(lora_losses[-50:]) < np.mean(lora_losses[:10]) - 0.3  # ln 15 = 2.71 at the start

    # The report's answer carries the numbers its records give.
    gold = np.array(decode_classes(records[0]["run"]["data"]["test"]["labels"]))

    def right(strategy: str) -> np.ndarray:
        return np.array([np.array(decode_classes(results[(strategy, seed)]["test"]["predictions"])) == gold
                         for seed in (1, 2)])  # fmt: skip

    interval = seed_title_interval(title_differences(right("lora"), right("full_finetune")))
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    summary = report.split("## Summary", 1)[1].split("\n\n")[1]
    found = re.search(r": [−+]\d+\.\d \(([−+]\d+\.\d) to ([−+]\d+\.\d)\) points\.", summary)  # the difference (CI)
    assert found, summary
    low, high = (float(text.replace("−", "-")) for text in found.groups())
    assert (low, high) == (pytest.approx(100 * interval.low, abs=0.051), pytest.approx(100 * interval.high, abs=0.051))
    answer = "good enough" if interval.low > -0.03 else "worse" if interval.high < -0.03 else "not shown"
    assert summary.split("**: ", 1)[1].startswith(answer), summary
    for strategy in ("lora", "full_finetune"):
        mean = np.mean([results[(strategy, seed)]["test"]["accuracy"] for seed in (1, 2)])
        assert f"| {mean:.4f} ± " in report
