"""Batch-queue behaviour: array tasks, resuming after preemption, SIGTERM, concurrent merges."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import INDEX_VARIABLES, main, run_for_task
from job.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
BOTH = ["lora", "full_finetune"]


def job_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "job", *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def numbers(results_json: Path) -> list[tuple]:
    data = json.loads(results_json.read_text(encoding="utf-8"))
    return [(r["key"], r["dev"], r["test"], r["step_losses"], r["trainable_params"]) for r in data["runs"]]


def run_array_and_single(config: str, shared: Path, single: Path, size: int, variable: str, flag: str) -> None:
    """Every array index at once into `shared`, then one process into `single`: the same numbers."""
    tasks = [
        job_process("run", "--config", config, "--output-dir", str(shared), flag, env={variable: str(index)})
        for index in range(size)
    ]
    for task in tasks:
        _, err = task.communicate(timeout=600)
        assert task.returncode == 0, err
    alone = CliRunner().invoke(main, ["run", "--config", config, "--output-dir", str(single)])
    assert alone.exit_code == 0, alone.output
    assert numbers(shared / "results.json") == numbers(single / "results.json")


@pytest.mark.parametrize("variable", INDEX_VARIABLES)
def test_each_queue_index_variable_picks_a_run(variable: str) -> None:
    assert run_for_task(BOTH, {variable: "0"}) == "lora"
    assert run_for_task(BOTH, {variable: "1"}) == "full_finetune"


@pytest.mark.parametrize(
    "environ", [{"BATCH_TASK_INDEX": "2"}, {"JOB_COMPLETION_INDEX": "-1"}, {"BATCH_TASK_INDEX": "²"}, {}]
)
def test_bad_or_missing_index_is_a_user_error(environ: dict[str, str]) -> None:
    with pytest.raises(UserError, match="--run-from-index"):
        run_for_task(BOTH, environ)


def test_out_of_range_index_exits_2_and_writes_nothing(write_config, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["run", "--config", str(write_config()), "--strategy-from-index"], env={"AWS_BATCH_JOB_ARRAY_INDEX": "5"}
    )
    assert result.exit_code == 2
    assert "AWS_BATCH_JOB_ARRAY_INDEX=5 is not a task index of the 2 planned runs" in result.output
    assert "set the array size to 2" in result.output
    assert not (tmp_path / "out").exists()


def test_a_rerun_skips_finished_strategies_and_force_retrains(write_config, tmp_path: Path) -> None:
    config = str(write_config(num_epochs=1))
    assert CliRunner().invoke(main, ["run", "--config", config, "--strategy", "lora"]).exit_code == 0
    lora_file = tmp_path / "out" / "results" / "lora.json"
    first = lora_file.read_text(encoding="utf-8")
    both = CliRunner().invoke(main, ["run", "--config", config])
    assert both.exit_code == 0, both.output
    assert "[lora] already done for config" in both.output
    assert "[full_finetune] saved" in both.output and "[lora] saved" not in both.output
    assert lora_file.read_text(encoding="utf-8") == first
    forced = CliRunner().invoke(main, ["run", "--config", config, "--force"])
    assert "[lora] saved" in forced.output and "[full_finetune] saved" in forced.output


def test_two_concurrent_array_tasks_merge_to_the_single_process_result(write_config, tmp_path: Path) -> None:
    config = str(write_config(num_epochs=2))
    shared = tmp_path / "shared-out"
    # The flag's older name still works.
    run_array_and_single(config, shared, tmp_path / "single", 2, "JOB_COMPLETION_INDEX", "--strategy-from-index")
    report = (shared / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "| lora (r=4, α=8, dropout=0.1, lr=0.005) |" in report and "| full_finetune (lr=0.005) |" in report


@pytest.mark.slow
def test_sigterm_mid_training_keeps_finished_results_and_a_rerun_completes(write_config, tmp_path: Path) -> None:
    # Full fine-tuning at one example per step for 5 epochs: thousands of steps, seconds of training.
    config = str(write_config(num_epochs=5, full_finetune_batch_size=1, max_train_samples=600, logging_steps=50))
    out = tmp_path / "out"
    process = job_process("run", "--config", config)
    assert process.stderr is not None
    seen = []
    for line in process.stderr:  # read as it comes (the pipe never fills); signal on a log line, not a timer
        seen.append(line)
        if "[full_finetune] step 50/" in line:  # LoRA is saved, full fine-tuning is training
            process.send_signal(signal.SIGTERM)
            break
    _, rest = process.communicate(timeout=120)
    err = "".join(seen) + rest
    assert process.returncode == 143, err
    assert "stopping: finished runs' results are kept" in err
    assert not (out / "ernie_lora_vs_full_report.md").exists()
    assert not (out / "results" / "full_finetune.json").exists()
    lora_before = (out / "results" / "lora.json").read_text(encoding="utf-8")

    rerun = CliRunner().invoke(main, ["run", "--config", config])
    assert rerun.exit_code == 0, rerun.output
    assert "[lora] already done" in rerun.output and "[full_finetune] saved" in rerun.output
    assert (out / "results" / "lora.json").read_text(encoding="utf-8") == lora_before
    assert (out / "ernie_lora_vs_full_report.md").is_file()


@pytest.mark.slow
def test_every_array_index_of_a_grid_in_parallel_merges_to_the_single_process_report(
    write_config, tmp_path: Path
) -> None:
    config = str(write_config(num_epochs=1, seed=[1, 2], lora_learning_rate=[5e-3, 2e-2], max_train_samples=120))
    listing = CliRunner().invoke(main, ["plan", "--config", config])
    size = int(listing.output.splitlines()[-1].removeprefix("array size: "))
    assert size == 6
    shared = tmp_path / "grid-out"
    run_array_and_single(config, shared, tmp_path / "single", size, "BATCH_TASK_INDEX", "--run-from-index")
    merged = json.loads((shared / "results.json").read_text(encoding="utf-8"))
    assert merged["missing_runs"] == [] and len(merged["runs"]) == 6 and merged["comparison"]["seeds"] == [1, 2]
    # With the clock's numbers set equal, the two folders give the same results.json and report.
    assert same_but_timing(shared, tmp_path / "a") == same_but_timing(tmp_path / "single", tmp_path / "b")


def same_but_timing(folder: Path, copy: Path) -> tuple[dict, str]:
    """results.json and the report rebuilt by `job report` from the folder's records, with every
    wall-clock measurement set to 1 and the folder's path removed."""
    (copy / "results").mkdir(parents=True)
    for file in (folder / "results").glob("*.json"):
        record = json.loads(file.read_text(encoding="utf-8"))
        clocked = ("training_seconds", "samples_per_second", "tokens_per_second", "peak_memory_mb")
        record["result"].update(dict.fromkeys(clocked, 1.0), started_at="", finished_at="")
        for form in record["result"]["serving"]:  # the serving forms' latencies: the clock's too
            form.update(ms_per_title=1.0, ms_per_batch=1.0, titles_per_second=1.0)
        record["run"]["config"]["output_dir"] = "OUT"
        (copy / "results" / file.name).write_text(json.dumps(record), encoding="utf-8")
    if (folder / "directions").is_dir():  # the updates' directions the subspace overlap reads
        shutil.copytree(folder / "directions", copy / "directions")
    rebuilt = CliRunner().invoke(main, ["report", "--output-dir", str(copy)])
    assert rebuilt.exit_code == 0, rebuilt.output
    combined = json.loads((copy / "results.json").read_text(encoding="utf-8"))
    return combined, (copy / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")


def test_a_rerun_with_a_changed_setting_retrains_and_shows_it(write_config, tmp_path: Path) -> None:
    first = CliRunner().invoke(main, ["run", "--config", str(write_config(num_epochs=1, lora_r=4, lora_alpha=8))])
    assert first.exit_code == 0, first.output
    changed = CliRunner().invoke(main, ["run", "--config", str(write_config(num_epochs=1, lora_r=2, lora_alpha=8))])
    assert changed.exit_code == 0, changed.output
    assert "already done" not in changed.output
    assert "[lora] saved" in changed.output and "[full_finetune] saved" in changed.output
    report = (tmp_path / "out" / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "| lora (r=2, α=8, dropout=0.1, lr=0.005) |" in report and "r=4" not in report
    results = tmp_path / "out" / "results"
    first_record = json.loads((results / "lora.json").read_text(encoding="utf-8"))  # kept: nothing is lost
    (second,) = results.glob("lora.*.json")  # the changed config's record, named with its config hash
    record = json.loads(second.read_text(encoding="utf-8"))
    assert first_record["result"]["lora_r"] == 4 and record["result"]["lora_r"] == 2
    assert second.name == f"lora.{record['run']['config_hash']}.json"
