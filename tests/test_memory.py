"""A run's peak memory is its own: measured above the run's starting point on Paddle's allocator, so the
same run gives the same figure whether it runs first or after another strategy in the process."""

from __future__ import annotations

import json
from pathlib import Path

import paddle
import pytest

from job.runtime.memory import peak_memory_mb, start_memory_meter
from tests.fixtures import run_tiny


def test_the_meter_counts_what_was_allocated_after_its_start_and_not_before() -> None:
    left_over = paddle.zeros([4 * 2**20 // 4], dtype="float32")  # 4 MiB held from before the start
    start = start_memory_meter()
    held = paddle.zeros([8 * 2**20 // 4], dtype="float32")  # 8 MiB allocated by "the run"
    transient = paddle.zeros([2 * 2**20 // 4], dtype="float32")
    del transient  # freed again: the peak still saw it
    assert peak_memory_mb(start) == pytest.approx(10.0, abs=0.1)
    del held, left_over


def test_lora_peak_memory_is_the_same_first_or_after_full_fine_tuning(tmp_path: Path, tiny_model: Path,
                                                                     tnews_dir: Path) -> None:  # fmt: skip
    figures = {}
    for order in (["lora", "full_finetune"], ["full_finetune", "lora"]):
        (tmp_path / order[0]).mkdir()
        out = run_tiny(tmp_path / order[0], tiny_model, tnews_dir, strategies=order, max_train_samples=96,
                       max_eval_samples=32)  # fmt: skip
        runs = {r["strategy"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
        figures[order[0]] = runs
    lora_first, lora_last = (
        figures["lora"]["lora"]["peak_memory_mb"],
        figures["full_finetune"]["lora"]["peak_memory_mb"],
    )
    # The tiny model's run allocates a few MiB; the process holds hundreds (Paddle, the tokenizer, the data),
    # which a run's figure must not count.
    assert 0 < lora_first < 50
    assert lora_last == pytest.approx(lora_first, rel=0.02)
    full_first = figures["full_finetune"]["full_finetune"]["peak_memory_mb"]
    assert figures["lora"]["full_finetune"]["peak_memory_mb"] == pytest.approx(full_first, rel=0.02)
    # Full fine-tuning holds gradients and AdamW's two moments for every weight; LoRA for its adapters only.
    assert full_first > lora_first


def test_on_a_gpu_the_meter_reads_paddles_device_allocator_above_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """The GPU branch, forced on CPU: Paddle's CUDA counters (these names exist in the CPU build too) are
    reset at the start and read above what was allocated then."""
    import job.runtime.memory as memory

    counters = {"allocated": 300 * 2**20, "peak": 900 * 2**20, "resets": 0}

    def reset() -> None:
        counters["resets"] += 1
        counters["peak"] = counters["allocated"]

    reserved = {"resets": 0, "peak": 2_048 * 2**20}
    names = ("memory_allocated", "max_memory_allocated", "reset_max_memory_allocated", "max_memory_reserved",
             "reset_max_memory_reserved")  # fmt: skip
    for name in names:
        assert callable(getattr(paddle.device.cuda, name))
    monkeypatch.setattr(memory, "on_gpu", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "memory_allocated", lambda: counters["allocated"])
    monkeypatch.setattr(paddle.device.cuda, "max_memory_allocated", lambda: counters["peak"])
    monkeypatch.setattr(paddle.device.cuda, "reset_max_memory_allocated", reset)
    monkeypatch.setattr(paddle.device.cuda, "max_memory_reserved", lambda: reserved["peak"])
    monkeypatch.setattr(paddle.device.cuda, "reset_max_memory_reserved", lambda: reserved.update(resets=1))
    start = memory.start_memory_meter()
    assert counters["resets"] == 1 and reserved["resets"] == 1 and start == 300 * 2**20
    counters["peak"] = 1_324 * 2**20  # the run's own weights, optimizer state and activations on top
    assert memory.peak_memory_mb(start) == 1_024.0
    assert memory.peak_reserved_mb() == 2_048.0  # the allocator's reserve: what nvidia-smi sees of it
