"""The report's text follows the numbers: nothing in Observations is fixed prose."""

from __future__ import annotations

import copy

from job.report import efficiency_table, observations, results_table

RUN = {"device": {"name": "cpu"}}


def result(strategy: str, label: str, trainable: int, total: int, seconds: float, dev: float, test: float) -> dict:
    return {
        "strategy": strategy, "label": label, "trainable_params": trainable, "total_params": total,
        "training_seconds": seconds, "samples_per_second": 512 / seconds, "steps": 64,
        "dev": {"accuracy": dev, "loss": 1.0, "examples": 1000},
        "test": {"accuracy": test, "loss": 1.1, "examples": 1000},
        "peak_memory_mb": 1000.0, "optimizer_state_mb": 2.3, "checkpoint_mb": 1.2,
    }  # fmt: skip


def pair(lora_dev: float, lora_test: float, lora_seconds: float = 50.0) -> list[dict]:
    return [
        result("lora", "lora (r=16, α=32, dropout=0.1)", 306_447, 75_734_031, lora_seconds, lora_dev, lora_test),
        result("full_finetune", "full_finetune", 75_439_119, 75_439_119, 100.0, 0.56, 0.55),
    ]


def test_observations_follow_the_accuracy_gap() -> None:
    close = "\n".join(observations(pair(0.555, 0.545), RUN))
    far = "\n".join(observations(pair(0.40, 0.38), RUN))
    assert close != far
    assert "Dev accuracy: LoRA is 0.5 points below full fine-tuning" in close
    assert "within the sampling noise" in close
    assert "Test accuracy: LoRA is 17.0 points below full fine-tuning" in far
    assert "larger than the sampling noise" in far
    assert "LoRA trained 0.41% as many parameters as full fine-tuning (306,447 vs 75,439,119)." in far


def test_observations_follow_the_time_ratio_and_chance_level() -> None:
    faster = "\n".join(observations(pair(0.5, 0.5, lora_seconds=25.0), RUN))
    slower = "\n".join(observations(pair(0.5, 0.5, lora_seconds=200.0), RUN))
    assert "(LoRA 4.00x faster)" in faster and "(LoRA 2.00x slower)" in slower
    assert "chance" not in faster
    at_chance = "\n".join(observations(pair(0.07, 0.06), RUN))
    assert "Test accuracy of lora (r=16, α=32, dropout=0.1) is within two standard errors of chance" in at_chance


def test_tables_show_every_row_with_its_numbers() -> None:
    rows = pair(0.5, 0.49)
    table = results_table(rows)
    assert (
        "| lora (r=16, α=32, dropout=0.1) | 306,447 | 75,734,031 | 50.0 | 0.5000 | 0.4900 | 1.0000 | 1.1000 |" in table
    )
    changed = copy.deepcopy(rows)
    changed[0]["test"]["accuracy"] = 0.61
    assert "| 0.6100 |" in results_table(changed) and "| 0.6100 |" not in table
    assert "| full_finetune | 5.1 | 1,000 | 2.300 | 1.200 | 100.000% |" in efficiency_table(rows)
