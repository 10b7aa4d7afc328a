"""A learning curve: max_train_samples as a list trains every run at each size on the same dev and test
titles, compares each size's rows with full fine-tuning at that size, and says from which size LoRA is
good enough."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.plan import plan_runs
from job.config.schema import validate_config
from job.results.report import learning_curve_line
from job.results.verdict import combine
from tests.fixtures import run_tiny
from tests.records import records, result

LABELS_15 = [i % 15 for i in range(1000)]


def test_every_size_is_its_own_rows_in_the_plan_and_the_array_covers_them() -> None:
    runs = plan_runs(validate_config({"max_train_samples": [500, 2000, None], "seed": [1, 2]}))
    assert len(runs) == 2 * 3 * 2
    assert [run.key for run in runs[:3]] == ["lora_r16_a32_n500_lr5e-05_s1", "lora_r16_a32_n500_lr5e-05_s2",
                                             "lora_r16_a32_n2000_lr5e-05_s1"]  # fmt: skip
    assert runs[-1].key == "full_finetune_nall_lr5e-05_s2" and runs[-1].train_rows is None
    groups = {f"{name}_n{size}" for name in ("lora_r16_a32", "full_finetune") for size in (500, 2000, "all")}
    assert {run.group for run in runs} == groups
    assert runs[0].label == "lora (r=16, α=32, dropout=0.1, lr=5e-05, 500 rows)"
    assert runs[-1].label == "full_finetune (lr=5e-05, all rows)" and "train_rows=all" in runs[-1].describe()
    plan = CliRunner().invoke(main, ["plan", "--set", "max_train_samples=[500, 2000, null]"])
    assert plan.output.splitlines()[-1] == "array size: 6"
    assert "x 1 seed: detects" in plan.output and "Holm" not in plan.output  # one compared row per size
    for bad in ("[]", "[500, 500]"):
        refused = CliRunner().invoke(main, ["validate", "--set", f"max_train_samples={bad}"])
        assert refused.exit_code == 2 and "max_train_samples" in refused.output


def curve_records(answers: dict[int, int]) -> list:
    """LoRA and full fine-tuning at each size (key: training rows), LoRA right on `answers[size]` of 1,000
    test titles where full fine-tuning is right on 600."""
    runs = []
    for index, (size, right) in enumerate(answers.items()):
        for strategy, test in (("lora", right), ("full_finetune", 600)):
            r = result(strategy, lr=5e-4 if strategy == "lora" else 5e-5, seed=1, dev_right=500, test_right=test,
                       labels=LABELS_15, index=2 * index + (strategy != "lora"))  # fmt: skip
            group = f"{r.group}_n{size}"
            label = r.label[:-1] + f", {size} rows)"
            update = {"key": f"{group}_s1", "group": group, "train_examples": size, "sample": f"sample-{size}"}
            runs.append(r.model_copy(update={**update, "label": label}))
    return runs


@pytest.mark.parametrize(
    ("answers", "sentence"),
    [
        ({500: 300, 2000: 560, 8000: 600}, "LoRA is good enough (within 1.0 point) from 8,000 training rows on"),
        ({500: 600, 2000: 600}, "LoRA is good enough (within 1.0 point) at every training size"),
        ({500: 300, 2000: 400}, "LoRA is good enough (within 1.0 point) at none of the training sizes"),
    ],
)
def test_one_comparison_per_size_and_the_size_from_which_lora_is_good_enough(answers, sentence: str) -> None:
    combined = combine(records(curve_records(answers), LABELS_15))
    assert [c.group for c in combined.comparisons] == [f"lora_n{size}" for size in answers]
    assert [c.baseline_group for c in combined.comparisons] == [f"full_finetune_n{size}" for size in answers]
    assert all(c.compared_rows == 1 for c in combined.comparisons)  # Holm within a size
    for c, (size, right) in zip(combined.comparisons, answers.items(), strict=True):
        assert c.accuracy_difference == pytest.approx((right - 600) / 1000), size
    assert combined.comparison is not None and combined.comparison.group == f"lora_n{max(answers)}"
    line = learning_curve_line(combined)
    assert line is not None and line.startswith(f"Learning curve: {sentence} (")
    listing = ", ".join(f"{size:,} rows: {c.answer}" for size, c in zip(answers, combined.comparisons, strict=True))
    assert listing in line


def test_runs_of_different_sizes_must_share_their_dev_and_test_rows() -> None:
    from job.errors import UserError

    runs = curve_records({500: 300, 2000: 560})
    stale = runs[3].model_copy(update={"eval_sample": "other-dev-and-test"})
    with pytest.raises(UserError, match="not all scored on the same dev and test rows"):
        combine(records([*runs[:3], stale], LABELS_15))


def test_a_learning_curve_trains_each_size_on_the_same_dev_and_test_and_plots_it(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, max_train_samples=[32, 96], max_eval_samples=32,
                   lora_learning_rate=3e-2, full_finetune_learning_rate=1e-2)  # fmt: skip
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    runs = {r["key"]: r for r in results["runs"]}
    assert sorted(runs) == ["full_finetune_n32_lr0.01_s42", "full_finetune_n96_lr0.01_s42",
                            "lora_r4_a8_n32_lr0.03_s42", "lora_r4_a8_n96_lr0.03_s42"]  # fmt: skip
    assert {r["train_examples"] for r in runs.values()} == {32, 96}
    assert len({r["eval_sample"] for r in runs.values()}) == 1 and len({r["sample"] for r in runs.values()}) == 2
    assert [r["steps"] for key, r in sorted(runs.items())] == [2, 6, 2, 6]  # batch 16
    assert [c["group"] for c in results["comparisons"]] == ["lora_r4_a8_n32", "lora_r4_a8_n96"]
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "- Learning curve: LoRA is good enough" in report and "(learning_curve.png)" in report
    png = (out / "learning_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">I", png[16:20])[0] == 8 * 110
    # A rerun finds every size done on its own sample.
    again = run_tiny(tmp_path, tiny_model, tnews_dir, max_train_samples=[32, 96], max_eval_samples=32,
                     lora_learning_rate=3e-2, full_finetune_learning_rate=1e-2)  # fmt: skip
    assert json.loads((again / "results.json").read_text(encoding="utf-8"))["runs"] == results["runs"]
