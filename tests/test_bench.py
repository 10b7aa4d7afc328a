"""`job bench` runs the real training step and evaluation and reports consistent numbers (no timing
assertions: speed targets live in the benchmark's output, not in tests)."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert set(report["strategies"]) == {"lora", "full_finetune"}
    assert report["model"].endswith("(checkpoint)")
    assert report["matmul_peak_gflops"] > 0
    for numbers in report["strategies"].values():
        assert numbers["timed_steps"] == 20
        assert numbers["median_ms_per_step"] > 0 and numbers["eval_samples_per_second"] > 0
        assert numbers["gflop_per_step"] > 0 and numbers["eval_achieved_gflops"] > 0
        assert abs(numbers["eval_achieved_gflops"] / report["matmul_peak_gflops"]
                   - numbers["eval_fraction_of_matmul_peak"]) < 0.01  # fmt: skip
        assert (
            abs(numbers["achieved_gflops"] / report["matmul_peak_gflops"] - numbers["fraction_of_matmul_peak"]) < 0.01
        )
    full, lora = report["strategies"]["full_finetune"], report["strategies"]["lora"]
    assert lora["trainable_params"] < full["trainable_params"]
    assert report["end_to_end_seconds"] > 0
    assert "ms/step" in result.output and "lora (r=4, α=8, dropout=0.1, lr=0.005)" in result.output


def test_flop_count_follows_the_formula() -> None:
    # One batch of 8 x 25 tokens, 1,000 non-embedding parameters, 2 layers of width 4.
    attention = 2 * 2 * 2 * 8 * 25 * 25 * 4
    assert step_flops([(8, 25)], 1000, 2, 4, full=True) == 6 * 1000 * 200 + 3 * attention
    assert step_flops([(8, 25)], 1000, 2, 4, full=False) == 4 * 1000 * 200 + 2 * attention


def test_eval_flops_count_the_last_layer_on_cls_only() -> None:
    # Two sequences of 3 tokens, 2 layers of width 4, feed-forward width 8.
    first_layer = 3 * (4 * 2 * 16 + 2 * 2 * 4 * 8) + 2 * 2 * 3 * 3 * 4  # every position
    last_layer = 3 * 2 * 2 * 16 + (2 * 2 * 16 + 2 * 2 * 4 * 8) + 2 * 2 * 3 * 4  # keys/values for 3, the rest for 1
    pooler = 2 * 16
    assert eval_flops([(2, 3)], 2, 4, 8) == 2 * (first_layer + last_layer + pooler) == 2752
    # On one-token sequences the shortcut does the full work.
    assert eval_flops([(1, 1)], 2, 4, 8) == 2 * (4 * 2 * 16 + 2 * 2 * 4 * 8 + 2 * 2 * 4) + 2 * 16


def test_matmul_peak_is_measured() -> None:
    assert matmul_peak_gflops(size=256, repeats=2) > 0
