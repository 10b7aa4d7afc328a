"""`job bench` runs the real training step and evaluation and reports consistent numbers (no timing
assertions: speed targets live in the benchmark's output, not in tests)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.bench import eval_flops, matmul_peak_gflops, step_flops
from job.cli import main


def test_bench_writes_every_number_for_every_strategy(write_config, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main, ["bench", "--config", str(write_config()), "--steps", "20", "--warmup", "2", "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(output.read_text(encoding="utf-8"))
    runs = {(run["group"], run["length_bucket_window"]): run for run in report["runs"]}
    assert set(runs) == {(group, window) for group in ("lora", "full_finetune") for window in (0, 16)}
    assert report["model"].endswith("(checkpoint)")
    assert report["matmul_peak_gflops"] > 0 and report["copy_bandwidth_gbs"] > 0
    assert report["matmul_peak_dtype"] == "float32" and report["tf32"] is None  # CPU: fp32, no TF32 question
    assert report["eval_batch_size"] == 32  # the config's own number (auto would be 16 on CPU)
    assert report["precision"] == "fp32"  # what `job run` trains with on CPU
    for numbers in runs.values():  # every ratio rebuilt from its parts: values carry 4 significant figures
        assert numbers["timed_steps"] == 20
        assert numbers["median_ms_per_step"] > 0 and numbers["gflop_per_step"] > 0 and numbers["optimizer_ms"] > 0
        share = numbers["achieved_gflops"] / report["matmul_peak_gflops"]
        assert share == pytest.approx(numbers["fraction_of_matmul_peak"], rel=0.005)
        floor = (numbers["matmul_floor_ms"] + numbers["optimizer_floor_ms"]) / numbers["median_ms_per_step"]
        assert floor == pytest.approx(numbers["fraction_of_floor"], rel=0.005)
        assert numbers["matmul_floor_ms"] > 0 and numbers["optimizer_floor_ms"] > 0
    # The optimizer's floor is a fixed number of bytes per trainable parameter: it scales with them.
    lora, full = runs[("lora", 0)], runs[("full_finetune", 0)]
    assert lora["optimizer_floor_ms"] / full["optimizer_floor_ms"] == pytest.approx(
        lora["trainable_params"] / full["trainable_params"], rel=0.005
    )
    for group in ("lora", "full_finetune"):  # evaluation is timed once per row
        evaluated = runs[(group, 0)]
        assert evaluated["eval_samples_per_second"] > 0 and "eval_samples_per_second" not in runs[(group, 16)]
        assert report["eval_matmul_peak_gflops"] == report["matmul_peak_gflops"]  # fp32 training: one peak
        assert evaluated["eval_achieved_gflops"] / report["eval_matmul_peak_gflops"] == pytest.approx(
            evaluated["eval_fraction_of_matmul_peak"], rel=0.005
        )
    assert runs[("lora", 0)]["trainable_params"] < runs[("full_finetune", 0)]["trainable_params"]
    checked = {(t["run"], t["length_bucket_window"], t["measure"]): t for t in report["targets"]}
    assert set(checked) == {
        *{("lora", w, "fraction_of_matmul_peak") for w in (0, 16)},
        *{("full_finetune", w, "fraction_of_floor") for w in (0, 16)},
        ("lora", 0, "eval_fraction_of_matmul_peak"), ("full_finetune", 0, "eval_fraction_of_matmul_peak"),
    }  # fmt: skip
    for target in checked.values():
        assert target["met"] == (target["value"] >= target["target"])
        assert ("met   " if target["met"] else "MISSED") in result.output
    assert report["end_to_end_seconds"] > 0
    assert "ms/step" in result.output and "lora (r=4, α=8, dropout=0.1, lr=0.005)" in result.output
    assert "targets (shares of this machine's own floors" in result.output


def test_bench_with_capacity_gives_each_strategys_largest_batch_within_the_budget(write_config, tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    config = write_config(capacity=True, memory_budget_mb=8, max_seq_length=32)
    result = CliRunner().invoke(main, ["bench", "--config", str(config), "--steps", "20", "--warmup", "1", "--output",
                                       str(output), "--no-e2e"])  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = {(run["group"], run["length_bucket_window"]): run for run in json.loads(output.read_text())["runs"]}
    for group in ("lora", "full_finetune"):
        measured, other = runs[(group, 0)], runs[(group, 16)]
        assert measured["capacity_budget_mb"] == 8 and measured["capacity_batch"] >= 1
        assert measured["capacity_peak_allocated_mb"] <= 8 and measured["capacity_samples_per_second"] > 0
        assert "capacity_peak_reserved_mb" not in measured and "capacity_batch" not in other  # CPU; window 0 only
        assert f"batch {measured['capacity_batch']:>6} ({measured['capacity_peak_allocated_mb']} MiB allocated)" in (
            result.output
        )
    assert "capacity (largest batch within 8 MiB allocated, titles of 32 tokens):" in result.output


def test_flop_count_follows_the_formula() -> None:
    # One batch of 8 x 25 tokens, 1,000 non-embedding parameters, 2 layers of width 4.
    attention = 2 * 2 * 2 * 8 * 25 * 25 * 4
    assert step_flops([(8, 25)], 1000, 2, 4, passes=3) == 6 * 1000 * 200 + 3 * attention
    assert step_flops([(8, 25)], 1000, 2, 4, passes=2) == 4 * 1000 * 200 + 2 * attention
    assert step_flops([(8, 25)], 1000, 2, 4, passes=1) == 2 * 1000 * 200 + 1 * attention  # the head alone


def test_eval_flops_count_the_last_layer_on_cls_only() -> None:
    # Two sequences of 3 tokens, 2 layers of width 4, feed-forward width 8.
    first_layer = 3 * (4 * 2 * 16 + 2 * 2 * 4 * 8) + 2 * 2 * 3 * 3 * 4  # every position
    last_layer = 3 * 2 * 2 * 16 + (2 * 2 * 16 + 2 * 2 * 4 * 8) + 2 * 2 * 3 * 4  # keys/values for 3, the rest for 1
    pooler = 2 * 16
    assert eval_flops([(2, 3)], 2, 4, 8) == 2 * (first_layer + last_layer + pooler) == 2752
    # On one-token sequences the shortcut does the full work.
    assert eval_flops([(1, 1)], 2, 4, 8) == 2 * (4 * 2 * 16 + 2 * 2 * 4 * 8 + 2 * 2 * 4) + 2 * 16


def test_matmul_peak_is_measured() -> None:
    assert matmul_peak_gflops(sizes=(64, 256), seconds=0.01) > 0


def test_the_peak_is_measured_in_the_training_dtype_at_gpu_sizes_on_a_gpu_and_as_before_on_cpu() -> None:
    from job.bench import peak_setup

    assert peak_setup("fp32", gpu=False) == peak_setup("auto", gpu=False) == ((1536, 1920, 2048), "float32")
    sizes, dtype = peak_setup("bf16", gpu=True)
    assert dtype == "bfloat16" and min(sizes) >= 4096 and max(sizes) >= 8192
    assert peak_setup("fp16", gpu=True)[1] == "float16" and peak_setup("fp32", gpu=True)[1] == "float32"
    assert matmul_peak_gflops(sizes=(64,), seconds=0.01, dtype="float64") > 0  # the dtype is the one measured


def test_on_a_gpu_the_bandwidth_is_the_devices_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forced GPU path on CPU: no NumPy (host) copy is timed, only Paddle's in-place scale on the device."""
    import numpy as np
    import paddle

    import job.bench
    import job.runtime.device

    copied, synced, read = [], [], []
    monkeypatch.setattr(np, "copyto", lambda *a, **k: copied.append(1))
    monkeypatch.setattr(job.bench, "on_gpu", lambda: True)
    monkeypatch.setattr(job.runtime.device, "on_gpu", lambda: True)  # synchronize() asks there
    monkeypatch.setattr(paddle.device, "synchronize", lambda *a: synced.append(1))  # a CPU build has none
    monkeypatch.setattr(paddle.Tensor, "__float__", lambda self: read.append(1) or 0.0)
    assert job.bench.copy_bandwidth_gbs(megabytes=8, repeats=2) > 0 and copied == []
    assert len(synced) == 2 * 2 + 1 and read == []  # timed between two syncs, never through a host read
    monkeypatch.setattr(job.bench, "on_gpu", lambda: False)
    monkeypatch.setattr(job.runtime.device, "on_gpu", lambda: False)
    job.bench.copy_bandwidth_gbs(megabytes=8, repeats=2)
    assert copied  # on CPU the NumPy copy still counts


def test_peer_batches_are_the_batches_the_bench_times_at_window_0(write_config, tmp_path: Path) -> None:
    """make bench-peer times torch + PEFT on exactly the work `job bench` times with plain shuffled
    batches: the same padded token ids, segment ids and labels, step by step, warm-up first."""
    from job.bench import WINDOWS, bench_titles, bench_tokenizer, one_run_per_group, timed_batches
    from job.config.schema import load_config
    from job.data.batches import encode, iterate_batches

    config_file = write_config()
    exported = tmp_path / "batches.json"
    result = CliRunner().invoke(
        main, ["bench", "--config", str(config_file), "--steps", "20", "--warmup", "2", "--peer-batches", str(exported)]
    )
    assert result.exit_code == 0, result.output
    spec = json.loads(exported.read_text(encoding="utf-8"))
    config = load_config(config_file)
    rows = encode(bench_titles(config)[0], bench_tokenizer(config), config.max_seq_length)
    assert spec["warmup"] == 2 and spec["model"]["num_hidden_layers"] == 2 and spec["model"]["hidden_size"] == 32
    assert [row["group"] for row in spec["rows"]] == ["lora", "full_finetune"]
    for row, run in zip(spec["rows"], one_run_per_group(config), strict=True):
        assert run.settings.bucket_window != WINDOWS[0]  # the config's window is 16: the export sets 0
        plain = replace(run, settings=replace(run.settings, bucket_window=WINDOWS[0]))
        expected = list(iterate_batches(rows, timed_batches(rows, plain, 20, 2), 0))
        assert len(row["batches"]) == 22
        for batch, wanted in zip(row["batches"], expected, strict=True):
            for key in ("input_ids", "token_type_ids", "labels"):
                assert batch[key] == wanted[key].tolist()
    assert spec["rows"][0]["adapter"] == {"r": 4, "alpha": 8, "dropout": 0.1, "targets": "attention_qv"}
    assert spec["rows"][1]["adapter"] is None


def test_peer_ratios_are_peer_time_over_job_time_per_padded_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.fixtures import ROOT

    timed = {"group": "lora", "median_ms_per_step": 300.0, "tokens_per_step": 250.0}
    runs = [{**timed, "length_bucket_window": 0}, {**timed, "length_bucket_window": 16, "median_ms_per_step": 200.0}]
    (tmp_path / "bench-round1.json").write_text(json.dumps({"runs": runs}))
    (tmp_path / "peer-round1.jsonl").write_text(json.dumps({"group": "lora", "ms_per_token": 1.8}) + "\n")
    printed = subprocess.run([sys.executable, str(ROOT / "peer" / "ratios.py"), str(tmp_path)], capture_output=True,
                             text=True, check=True).stdout  # fmt: skip
    assert "1.2000" in printed and "1.8000" in printed and "1.50x" in printed  # 1.8 / (300 / 250)


def test_evaluation_on_a_mixed_precision_gpu_is_measured_against_the_fp32_peak(monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 training, fp32 evaluation: two peaks, each in its own dtype (this CPU build has no bf16 matmul,
    so the bf16 one is timed as fp32 here; what is checked is which dtype each share is of)."""
    import job.bench

    asked: list[str] = []

    def timed(sizes: tuple[int, ...], seconds: float = 3.0, dtype: str = "float32") -> float:
        asked.append(dtype)
        return 100.0 * (2.0 if dtype == "bfloat16" else 1.0)  # fixed figures: two timings under load can differ 2x

    monkeypatch.setattr(job.bench, "matmul_peak_gflops", timed)
    train, evaluation = job.bench.measure_peaks((64,), "bfloat16")
    assert asked == ["bfloat16", "float32"] and train > evaluation > 0
    asked.clear()
    train, evaluation = job.bench.measure_peaks((64,), "float32")
    assert asked == ["float32"] and train == evaluation
