"""Mid-run checkpoints (job.training.resume): a run stopped mid-way by SIGTERM or SIGKILL goes on, on a
rerun of the same command, from its last checkpoint, and its record equals an uninterrupted run's (step
losses, dev curve, predictions); a checkpoint that is corrupt or another run's is refused with a line and
never half-loaded; checkpoints are removed once the run's record is saved."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from job.cli import main
from job.training.resume import Checkpoints, LoopState
from job.training.strategies import STRATEGY_NAMES
from tests.fixtures import run_and_signal_on

pytestmark = pytest.mark.timeout(600)

# 12 steps of batch 16 over 96 titles (two epochs), dev scored every 4 steps and the best one kept: the
# checkpoint carries a dev curve, a best-dev copy and an epoch boundary behind it.
RESUMABLE = {
    "max_train_samples": 96, "max_eval_samples": 48, "max_steps": 12, "logging_steps": 1, "eval_steps": 4,
    "select_checkpoint": "best_dev", "save_minutes": None, "learning_rate": 5e-3,
}  # fmt: skip


def record(out: Path, key: str) -> dict:
    return json.loads((out / "results" / f"{key}.json").read_text(encoding="utf-8"))["result"]


def run_in_process(config: Path) -> str:
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return result.output


def assert_same_training(resumed: dict, reference: dict) -> None:
    assert resumed["step_losses"] == reference["step_losses"]  # every step, bit for bit on CPU
    assert resumed["dev_curve"] == reference["dev_curve"]
    assert resumed["selected_step"] == reference["selected_step"]
    for split in ("dev", "test"):
        assert resumed[split]["predictions"] == reference[split]["predictions"]
        assert resumed[split]["accuracy"] == reference[split]["accuracy"]
    assert resumed["steps"] == reference["steps"] and resumed["samples_per_second"] > 0


def reference_run(write_config, tmp_path: Path, strategy: str) -> dict:
    config = write_config(strategies=[strategy], **RESUMABLE, output_dir=str(tmp_path / "reference"))
    run_in_process(config)
    return record(tmp_path / "reference", strategy)


@pytest.mark.parametrize("strategy", [pytest.param(name, marks=[] if name in ("lora", "full_finetune")
                                                   else pytest.mark.slow) for name in STRATEGY_NAMES])  # fmt: skip
def test_a_run_stopped_by_sigterm_goes_on_from_its_step_and_equals_an_uninterrupted_run(
    write_config, tmp_path: Path, strategy: str
) -> None:
    reference = reference_run(write_config, tmp_path, strategy)
    config = write_config(strategies=[strategy], **RESUMABLE, save_steps=100)  # no periodic save before the stop
    process, log = run_and_signal_on(config, f"[{strategy}] step 6/12", signal.SIGTERM)
    assert process.returncode == 143, log[-3000:]
    assert f"[{strategy}] checkpoint at step 6 saved" in log
    checkpoint = tmp_path / "out" / "checkpoints" / f"{strategy}.safetensors"
    assert checkpoint.is_file() and not (tmp_path / "out" / "results").exists()

    output = run_in_process(config)
    assert f"[{strategy}] resuming from step 6" in output
    resumed = record(tmp_path / "out", strategy)
    assert resumed["resumed_from_step"] == 6 and reference["resumed_from_step"] is None
    assert_same_training(resumed, reference)
    assert not checkpoint.exists()  # removed once the record is saved


@pytest.mark.parametrize(
    ("marker", "step"),
    [("[lora] step 8/12", 8), ("[lora] evaluating on dev and test", 12)],
    ids=["during-a-dev-evaluation", "during-the-final-evaluation"],
)
def test_a_stop_while_dev_is_scored_keeps_the_training_and_the_rerun_scores_it(
    write_config, tmp_path: Path, marker: str, step: int
) -> None:
    reference = reference_run(write_config, tmp_path, "lora")
    config = write_config(strategies=["lora"], **RESUMABLE, save_steps=100)
    process, log = run_and_signal_on(config, marker, signal.SIGTERM)  # dev is scored right after the marker
    assert process.returncode == 143, log[-3000:]
    assert f"[lora] checkpoint at step {step} saved" in log and f"[lora] step {step}: dev accuracy" not in log

    output = run_in_process(config)
    assert f"[lora] resuming from step {step}" in output
    assert f"[lora] step {step}: dev accuracy" in output  # scored after the resume, once
    assert_same_training(record(tmp_path / "out", "lora"), reference)


def test_a_run_killed_with_sigkill_goes_on_from_its_last_periodic_checkpoint(write_config, tmp_path: Path) -> None:
    reference = reference_run(write_config, tmp_path, "lora")
    config = write_config(strategies=["lora"], **RESUMABLE, save_steps=3)
    # killed right after the step-9 checkpoint: no handler runs, the file written at step 9 is what is left
    process, log = run_and_signal_on(config, "[lora] checkpoint at step 9 saved", signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL, log[-3000:]
    assert "[lora] checkpoint at step 6 saved" in log  # every 3 steps (none at the last step: the record is next)

    output = run_in_process(config)
    assert "[lora] resuming from step 9" in output
    assert_same_training(record(tmp_path / "out", "lora"), reference)
    assert "[lora] checkpoint at step 12" not in output
    assert list((tmp_path / "out" / "checkpoints").iterdir()) == []


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("flip", "it is corrupt (its CRC-32 does not match its tensors)"),
        ("truncate", "it cannot be read"),
        ("empty", "it cannot be read"),
    ],
)
def test_a_corrupt_checkpoint_is_refused_whole_and_the_run_trains_from_step_0(
    write_config, tmp_path: Path, damage: str, reason: str
) -> None:
    reference = reference_run(write_config, tmp_path, "lora")
    config = write_config(strategies=["lora"], **RESUMABLE, save_steps=100)
    process, log = run_and_signal_on(config, "[lora] step 6/12", signal.SIGTERM)
    assert process.returncode == 143, log[-3000:]
    checkpoint = tmp_path / "out" / "checkpoints" / "lora.safetensors"
    data = bytearray(checkpoint.read_bytes())
    if damage == "flip":  # one bit in the last tensor's bytes: the header still parses
        data[-5] ^= 0x10
    checkpoint.write_bytes(bytes(data) if damage == "flip" else bytes(data[: len(data) // 2]) if damage == "truncate"
                           else b"")  # fmt: skip

    output = run_in_process(config)
    assert f"[lora] not resuming from {checkpoint}: {reason}" in output and "training from step 0" in output
    resumed = record(tmp_path / "out", "lora")
    assert resumed["resumed_from_step"] is None
    assert_same_training(resumed, reference)  # nothing of the refused file was loaded


def test_another_configs_checkpoint_is_refused_naming_what_differs(write_config, tmp_path: Path) -> None:
    config = write_config(strategies=["lora"], **RESUMABLE, save_steps=100)
    process, log = run_and_signal_on(config, "[lora] step 6/12", signal.SIGTERM)
    assert process.returncode == 143, log[-3000:]
    other = write_config(strategies=["lora"], **{**RESUMABLE, "learning_rate": 1e-3}, save_steps=100)
    output = run_in_process(other)
    assert "[lora] not resuming from" in output and "it belongs to another run (config_hash" in output
    assert record(tmp_path / "out", "lora")["resumed_from_step"] is None


def test_a_run_that_finishes_leaves_no_checkpoint_and_a_checkpoint_free_config_writes_none(
    write_config, tmp_path: Path
) -> None:
    config = write_config(strategies=["lora"], **RESUMABLE, save_steps=2)
    output = run_in_process(config)
    assert output.count("[lora] checkpoint at step") == 5  # steps 2, 4, 6, 8, 10: not 12, the record follows
    assert list((tmp_path / "out" / "checkpoints").iterdir()) == []

    none = write_config(strategies=["lora"], **RESUMABLE, output_dir=str(tmp_path / "none"))  # save_minutes: null
    process, log = run_and_signal_on(none, "[lora] step 6/12", signal.SIGTERM)
    assert process.returncode == 143 and "checkpoint" not in log, log[-2000:]
    assert not (tmp_path / "none" / "checkpoints").exists()


def test_checkpoints_fall_due_by_steps_and_by_minutes_never_twice_at_one_step() -> None:
    written: list[int] = []
    state = LoopState(step=0, samples=0, tokens=0, seconds=0.0, step_losses=[], schedule={}, scaler={}, rng={})
    by_steps = Checkpoints(save_steps=5, save_seconds=None, write=lambda s: written.append(s.step))
    assert [step for step in range(1, 16) if by_steps.due(step)] == [5, 10, 15]
    by_time = Checkpoints(save_steps=None, save_seconds=0.05, write=lambda s: written.append(s.step))
    assert not by_time.due(1)
    time.sleep(0.06)
    assert by_time.due(2)
    by_time.save(LoopState(**{**state.__dict__, "step": 2}))
    assert written == [2] and not by_time.due(2) and not by_time.due(3)  # the clock starts again at a save
    resumed = Checkpoints(save_steps=5, save_seconds=None, write=written.append,
                          resumed=LoopState(**{**state.__dict__, "step": 10}))  # fmt: skip
    assert not resumed.due(10) and resumed.due(15)


def test_random_generators_go_on_from_where_they_were() -> None:
    import paddle

    from job.training.dropout import bulk_dropout
    from job.training.resume import random_state, set_random_state

    with bulk_dropout(7) as dropout:
        paddle.seed(3)
        paddle.rand([4])
        dropout.mask((8,), 0.5)
        saved = json.loads(json.dumps(random_state()))  # through JSON, as the checkpoint holds it
        expected = (paddle.rand([4]).numpy(), dropout.mask((64,), 0.5))
        paddle.seed(99)
        dropout.mask((5,), 0.5)
        set_random_state(saved)
        np.testing.assert_array_equal(paddle.rand([4]).numpy(), expected[0])
        np.testing.assert_array_equal(dropout.mask((64,), 0.5), expected[1])
