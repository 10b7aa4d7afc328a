"""Dev during training: the dev curve every eval_steps, the checkpoint chosen on dev (never on test) and
the one scored and saved, early stopping, and the keys' checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.training.checkpoint import BestCheckpoint
from tests.fixtures import run_tiny

OVERSHOOT = {  # full fine-tuning of the tiny model at a rate that overshoots: the best dev is not the last
    "strategies": ["full_finetune"], "eval_steps": 2, "num_epochs": 2, "max_train_samples": 96,
    "max_eval_samples": 48, "full_finetune_learning_rate": 2e-2,
}  # fmt: skip


def record(out: Path, key: str = "full_finetune") -> dict:
    return json.loads((out / "results" / f"{key}.json").read_text(encoding="utf-8"))["result"]


def test_the_best_checkpoint_keeps_the_weights_of_the_best_evaluation_and_puts_them_back(tiny_model: Path) -> None:
    import paddle

    from job.training.model import load_model

    model = load_model(str(tiny_model), 15).model
    weight = next(p for name, p in model.named_parameters() if name.endswith("classifier.weight"))
    best = BestCheckpoint(keep=True)
    assert best.offer(2, 0.40, model) and best.step == 2
    kept = weight.numpy().copy()
    with paddle.no_grad():
        weight.set_value(weight + 1.0)
    assert best.offer(4, 0.55, model) and best.step == 4  # better: its weights now
    better = weight.numpy().copy()
    with paddle.no_grad():
        weight.set_value(weight * 3.0)
    assert not best.offer(6, 0.55, model) and best.since_best == 1  # equal is not better: the first stays
    assert not best.offer(8, 0.10, model) and best.since_best == 2
    best.restore(model)
    np.testing.assert_array_equal(weight.numpy(), better)
    assert not np.array_equal(better, kept)
    tracking = BestCheckpoint(keep=False)  # select_checkpoint: last tracks the scores and copies nothing
    assert tracking.offer(2, 0.3, model) and tracking.weights == {}


def test_dev_is_scored_every_eval_steps_and_test_on_the_best_devs_weights_which_are_saved(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    from paddlenlp.transformers import AutoModelForSequenceClassification

    from job.data.batches import encode
    from job.data.sampling import draw_samples
    from job.data.sources import DataSpec, read_source
    from job.results.stats import decode_classes
    from job.training.evaluate import evaluate
    from job.training.model import load_tokenizer

    out = run_tiny(tmp_path, tiny_model, tnews_dir, select_checkpoint="best_dev", save_artifacts=True, **OVERSHOOT)
    r = record(out)
    curve = r["dev_curve"]
    assert [p["step"] for p in curve] == [2, 4, 6, 8, 10, 12] and r["steps"] == 12
    accuracies = [p["accuracy"] for p in curve]
    chosen = curve[accuracies.index(max(accuracies))]  # the first of the best, on dev alone
    assert r["selected_step"] == chosen["step"]
    assert r["dev"]["accuracy"] == pytest.approx(chosen["accuracy"])
    # The saved model is the chosen checkpoint: scored again, it gives the record's dev and test numbers.
    saved = AutoModelForSequenceClassification.from_pretrained(str(out / "artifacts" / "full_finetune" / "model"))
    tokenizer = load_tokenizer(str(tiny_model))
    splits = draw_samples(read_source(DataSpec(data_dir=str(tnews_dir))), 96, 48, 42)
    for split in ("dev", "test"):
        rows = encode(getattr(splits, split).examples, tokenizer, 32)
        scored = evaluate(saved, rows, 16, int(tokenizer.pad_token_id))
        assert scored.predictions == decode_classes(r[split]["predictions"])
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert f"full_finetune (lr=0.02): step {chosen['step']} of 12" in report
    png = (out / "loss_curves.png").read_bytes()
    width = struct.unpack(">I", png[16:20])[0]
    assert width == 14 * 110  # two panels: the loss curves and, beside them, dev accuracy


def test_select_last_scores_the_last_weights_and_keeps_the_same_curve(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, **OVERSHOOT)
    r = record(out)
    assert r["selected_step"] == 12 and r["dev"]["accuracy"] == pytest.approx(r["dev_curve"][-1]["accuracy"])
    assert len(r["dev_curve"]) == 6 and not r["stopped_early"]


def test_early_stopping_ends_a_run_after_patience_evaluations_without_a_better_dev(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, early_stopping_patience=1, select_checkpoint="best_dev",
                   **OVERSHOOT)  # fmt: skip
    r = record(out)
    curve = [p["accuracy"] for p in r["dev_curve"]]
    # It stops at the first evaluation that is not better than the best before it.
    first_worse = next(i for i in range(1, len(curve)) if curve[i] <= max(curve[:i]))
    assert len(curve) == first_worse + 1 and r["steps"] == 2 * len(curve) < 12
    assert r["stopped_early"] and r["selected_step"] == 2 * (curve.index(max(curve)) + 1)
    assert len(r["step_losses"]) == r["steps"]


def test_the_seed_config_scores_dev_once_at_the_end(tmp_path: Path, tiny_model: Path, tnews_dir: Path) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, strategies=["lora"], max_train_samples=48, max_eval_samples=16)
    r = record(out, "lora")
    assert r["dev_curve"] == [{"step": r["steps"], "accuracy": r["dev"]["accuracy"],
                               "loss": pytest.approx(r["dev"]["loss"], abs=1e-6)}]  # fmt: skip
    assert r["selected_step"] == r["steps"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["--set", "early_stopping_patience=2"], "config key 'early_stopping_patience' counts evaluations"),
        (["--set", "select_checkpoint=best_dev"], "config key 'select_checkpoint': best_dev chooses among"),
        (["--set", "select_checkpoint=best"], "select_checkpoint"),
        (["--set", "eval_steps=0"], "eval_steps"),
    ],
)
def test_evaluation_keys_are_checked_before_anything_runs(settings: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["validate", *settings])
    assert result.exit_code == 2 and message in result.output
    assert CliRunner().invoke(main, ["validate", "--set", "eval_steps=100", "--set",
                                     "select_checkpoint=best_dev"]).exit_code == 0  # fmt: skip


@pytest.mark.parametrize("strategy", ["lora", "full_finetune"])
def test_scoring_dev_during_training_leaves_training_as_it_was(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path, strategy: str
) -> None:
    """Evaluation draws no dropout mask and touches no weight: the same losses and last weights with
    eval_steps as without."""
    settings = {**OVERSHOOT, "strategies": [strategy], "eval_steps": None}
    (tmp_path / "once").mkdir()
    (tmp_path / "often").mkdir()
    once = record(run_tiny(tmp_path / "once", tiny_model, tnews_dir, **settings), strategy)
    often = record(run_tiny(tmp_path / "often", tiny_model, tnews_dir, **{**settings, "eval_steps": 2}), strategy)
    assert often["step_losses"] == once["step_losses"]
    assert often["test"]["predictions"] == once["test"]["predictions"] and len(often["dev_curve"]) == 6


def test_the_best_dev_copy_takes_no_memory_the_runs_peak_counts() -> None:
    """The copy lives outside Paddle's allocator: the peak a run reports (job.runtime.memory) is its
    weights, gradients, optimizer state and activations, with or without best_dev; the weights put back
    are the copied ones."""
    import paddle

    from job.runtime.memory import _allocated_now

    model = paddle.nn.Sequential(paddle.nn.Linear(512, 512), paddle.nn.Linear(512, 512))  # 2 MiB of weights
    before = _allocated_now()
    best = BestCheckpoint(keep=True)
    assert best.offer(1, 0.5, model)
    assert _allocated_now() - before < 2**16  # not the 2 MiB a copy on the allocator would take
    assert all(isinstance(value, np.ndarray) for value in best.weights.values())
    expected = {name: p.numpy().copy() for name, p in model.named_parameters()}
    with paddle.no_grad():
        for p in model.parameters():
            p.set_value(p * 0.0)
    best.restore(model)
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.numpy(), expected[name])


@pytest.mark.timeout(300)
def test_a_runs_peak_memory_is_the_same_with_best_dev_as_with_last(write_config, tmp_path: Path) -> None:
    """Full fine-tuning of the tiny model, dev scored every 4 steps: the best-dev copy (a whole copy of the
    trained weights) must not enter the peak the report prints."""
    import json

    from click.testing import CliRunner

    from job.cli import main

    peaks = {}
    for select in ("last", "best_dev"):
        config = write_config(strategies=["full_finetune"], num_epochs=1, eval_steps=4, select_checkpoint=select,
                              output_dir=str(tmp_path / select))  # fmt: skip
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
        assert result.exit_code == 0, result.output[-2000:]
        record = json.loads((tmp_path / select / "results" / "full_finetune.json").read_text(encoding="utf-8"))
        peaks[select] = record["result"]["peak_memory_mb"]
    assert peaks["best_dev"] == pytest.approx(peaks["last"], rel=0.05), peaks
