"""The largest batch a strategy fits in a memory budget (job.training.capacity): the search's answer is the
one a direct sweep of batch sizes finds, within one granule; the process trains on afterwards; the run
records it and the report tabulates it beside full fine-tuning's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures import run_tiny

pytestmark = pytest.mark.timeout(300)


def strategy_setup(tiny_model: Path, tnews_dir: Path, strategy: str):
    from job.config.plan import plan_runs
    from job.config.schema import JobConfig
    from job.data.batches import encode
    from job.data.sources import read_source
    from job.training.model import load_model, load_tokenizer

    config = JobConfig(model_name=str(tiny_model), data_dir=str(tnews_dir), lora_r=4, batch_size=4, device="cpu",
                       max_seq_length=32)  # fmt: skip
    run = next(r for r in plan_runs(config) if r.strategy.name == strategy)
    raw = read_source(config.data_spec())
    rows = encode(raw.train[:64], load_tokenizer(str(tiny_model)), 32)

    def fresh():
        return run.strategy.prepare(load_model(str(tiny_model), len(raw.labels)), run)

    return run, rows, fresh


@pytest.mark.parametrize("strategy", ["lora", "full_finetune"])
def test_the_search_finds_the_batch_a_direct_sweep_finds_and_training_goes_on(
    tiny_model: Path, tnews_dir: Path, strategy: str
) -> None:
    from job.training.capacity import Probe, full_length_rows, largest_batch
    from job.training.dropout import training_dropout

    run, rows, fresh = strategy_setup(tiny_model, tnews_dir, strategy)
    sweep = Probe(fresh, run.settings, full_length_rows(rows, 32, 96))
    with training_dropout(0):
        sweep.step(4)
        peaks = {}
        for batch in range(4, 97, 4):
            sweep.step(batch)
            peaks[batch] = sweep.peak()
    budget = (peaks[40] + peaks[44]) / 2  # 40 fits, 44 does not
    found = largest_batch(fresh, rows, run.settings, budget_mb=budget, sequence_length=32)
    assert 40 - found.granule <= found.largest_batch <= 43, (found, peaks)
    assert found.peak_mb <= budget and found.reserved_mb is None  # no reserved pool on CPU
    assert found.samples_per_second > 0 and found.configured_samples_per_second > 0
    assert found.probes[:2] == [(4, pytest.approx(peaks[4], rel=0.05)), (8, pytest.approx(peaks[8], rel=0.05))]

    tiny = largest_batch(fresh, rows, run.settings, budget_mb=peaks[4] / 10, sequence_length=32)
    assert tiny.largest_batch == 0 and tiny.samples_per_second == 0  # not one title fits: said, not crashed
    assert sweep.fits(8, float("inf"), [])  # the process goes on training


def test_a_run_with_capacity_records_it_on_its_first_seed_and_the_report_tabulates_it(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, max_train_samples=64, max_eval_samples=32, num_epochs=1,
                   seed=[1, 2], capacity=True, memory_budget_mb=6)  # fmt: skip
    runs = {r["key"]: r for r in json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]}
    first = {key: run["capacity"] for key, run in runs.items() if run["seed"] == 1}
    assert all(run["capacity"] is None for run in runs.values() if run["seed"] == 2)
    assert set(first) == {"lora_r4_a8_lr5e-05_s1", "full_finetune_lr5e-05_s1"}, list(runs)
    for capacity in first.values():
        assert capacity["budget_mb"] == 6 and capacity["budget_source"] == "memory_budget_mb"
        assert capacity["largest_batch"] >= 1 and capacity["peak_allocated_mb"] <= 6
        assert capacity["probes"][0][0] == 16 and capacity["probes"][1][0] == 32  # the configured batch, twice it
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    section = report.split("### Capacity\n\n", 1)[1].split("\n### ", 1)[0]
    lora, full = first["lora_r4_a8_lr5e-05_s1"], first["full_finetune_lr5e-05_s1"]
    assert f"| {lora['largest_batch']:,} |" in section
    assert f"{lora['largest_batch'] / full['largest_batch']:.2f}x |" in section
    assert "Budget: 6 MiB (memory_budget_mb)" in section

    (tmp_path / "cpu").mkdir()
    skipped = run_tiny(tmp_path / "cpu", tiny_model, tnews_dir, max_train_samples=64, max_eval_samples=32,
                       num_epochs=1, capacity=True)  # fmt: skip
    assert "### Capacity" not in (skipped / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")


def test_out_of_memory_on_a_gpu_backs_off_instead_of_failing(
    tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paddle raises MemoryError when its GPU allocator is exhausted (ResourceExhaustedError): raised here
    for every batch above 20, the search backs off to the largest batch below, and records the failures."""
    from job.training import capacity

    run, rows, fresh = strategy_setup(tiny_model, tnews_dir, "lora")
    real = capacity.Probe.step

    def exhausted(self, batch: int) -> float:
        if batch > 20:
            raise MemoryError("ResourceExhaustedError: Out of memory error on GPU 0")
        return real(self, batch)

    monkeypatch.setattr(capacity.Probe, "step", exhausted)
    found = capacity.largest_batch(fresh, rows, run.settings, budget_mb=10**6, sequence_length=32)
    assert 20 - found.granule < found.largest_batch <= 20, found
    assert all(peak == float("inf") for batch, peak in found.probes if batch > 20)
    budget = capacity.largest_batch(fresh, rows, run.settings, budget_mb=10**6, sequence_length=32)
    assert budget.probes[:2] == found.probes[:2]  # the process went on: the next search measures alike


def test_a_gpus_budget_is_its_memory_as_paddle_may_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    import paddle

    import job.runtime.device
    import job.runtime.memory
    from job.training.capacity import device_budget_mb

    assert device_budget_mb(None) == (None, "")  # CPU without memory_budget_mb: no search
    assert device_budget_mb(3000) == (3000.0, "memory_budget_mb")
    monkeypatch.setattr(job.runtime.device, "on_gpu", lambda: True)
    monkeypatch.setattr(job.runtime.memory, "allocated_mb", lambda: 500.0)
    properties = types.SimpleNamespace(total_memory=16 * 2**30)  # a 16 GiB device
    monkeypatch.setattr(paddle.device.cuda, "get_device_properties", lambda *a: properties)
    monkeypatch.delenv("FLAGS_fraction_of_gpu_memory_to_use", raising=False)
    monkeypatch.delenv("FLAGS_gpu_memory_limit_mb", raising=False)
    assert device_budget_mb(None) == (round(16 * 1024 * 0.92 - 500, 1), "the GPU's memory")
    monkeypatch.setenv("FLAGS_gpu_memory_limit_mb", "6000")  # workers sharing the GPU (job.workers)
    assert device_budget_mb(None) == (5500.0, "the GPU's memory")
