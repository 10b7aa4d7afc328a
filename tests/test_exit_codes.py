"""Every exit code the README promises, through the CLI: 75 when a retry can help (a read that
failed, a full disk), 2 for input that can never work, 130 for Ctrl-C."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from tests.fixtures import run_and_signal_on

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_read_of_a_data_file_exits_75(write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = Path.read_bytes

    def flaky(path: Path) -> bytes:
        if path.name == "train.json":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", flaky)
    result = CliRunner().invoke(main, ["run", "--config", str(write_config())])
    assert result.exit_code == 75, result.output
    assert "could not read data file" in result.output and "train.json" in result.output
    assert not (tmp_path / "out" / "results").exists()


def test_a_full_disk_exits_75_and_keeps_no_partial_file(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.fsync

    def full(descriptor: int) -> None:
        real(descriptor)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # every atomic write fails at its flush to disk
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(num_epochs=1, strategies=["lora"]))])
    assert result.exit_code == 75, result.output
    assert "I/O error: [Errno 28] No space left on device" in result.output
    left = [p.name for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".lock"]
    assert left == []  # no half-written record, results.json or report


def test_a_model_folder_without_a_tokenizer_exits_2(write_config, tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for item in tiny_model.iterdir():
        if item.name in ("config.json", "model_state.pdparams"):
            shutil.copy(item, folder / item.name)
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(model_name=str(folder)))])
    assert result.exit_code == 2, result.output
    assert f"model folder {folder} has no usable tokenizer files" in result.output


def test_ctrl_c_stops_at_a_step_boundary_with_exit_130(write_config, tmp_path: Path) -> None:
    config = write_config(num_epochs=50, full_finetune_batch_size=1, strategies=["full_finetune"], logging_steps=5)
    process, log = run_and_signal_on(config, "step 10/", signal.SIGINT)  # mid-training
    assert process.returncode == 130, log[-2000:]
    assert "stopping: finished runs' results are kept" in log and "Traceback" not in log
    assert not (tmp_path / "out" / "results").exists()


def write_record(folder: Path, key: str, template: dict) -> None:
    record = json.loads(json.dumps(template))
    record["result"].update(key=key, index=int(key.rsplit("_s", 1)[1]), seed=int(key.rsplit("_s", 1)[1]))
    record["run"]["planned_runs"] = [f"lora_s{i}" for i in range(8)]
    (folder / "staged" / f"{key}.json").write_text(json.dumps(record), encoding="utf-8")


MERGE = """
import sys, time
from pathlib import Path
import job.runner
folder, key, start, slow = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4] == "slow"
if slow:  # this task is slow between reading the records and writing results.json (inside the lock)
    draw = job.runner.plot_losses
    job.runner.plot_losses = lambda *args: (time.sleep(4), draw(*args))[1]
time.sleep(max(0.0, start - time.time()))
(folder / "staged" / f"{key}.json").rename(folder / "results" / f"{key}.json")  # this task's record lands
job.runner.write_report(job.runner.open_output(folder))
"""


@pytest.mark.slow
def test_array_tasks_merging_at_the_same_time_leave_a_complete_report(write_config, tmp_path: Path) -> None:
    """Task A adds its record and starts merging, but is slow to write; task B adds its record a second
    later and merges at once. Without the lock, A's results.json (read before B's record existed)
    lands last and B's run is lost; with it, B merges after A and sees both."""
    import time

    config = str(write_config(num_epochs=1, strategies=["lora"]))
    assert CliRunner().invoke(main, ["run", "--config", config]).exit_code == 0
    template = json.loads((tmp_path / "out" / "results" / "lora.json").read_text(encoding="utf-8"))
    folder = tmp_path / "merge"
    (folder / "results").mkdir(parents=True)
    (folder / "staged").mkdir()
    keys = [f"lora_s{i}" for i in range(8)]
    for key in keys:
        write_record(folder, key, template)
    for key in keys[:6]:  # runs that finished earlier
        (folder / "staged" / f"{key}.json").rename(folder / "results" / f"{key}.json")
    start = time.time() + 5  # after both interpreters have imported the job
    tasks = [
        subprocess.Popen([sys.executable, "-c", MERGE, str(folder), key, str(start + delay), speed], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.PIPE, text=True)
        for key, delay, speed in ((keys[6], 0.0, "slow"), (keys[7], 1.5, "fast"))
    ]  # fmt: skip
    for task in tasks:
        _, err = task.communicate(timeout=300)
        assert task.returncode == 0, err
    merged = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    assert sorted(run["key"] for run in merged["runs"]) == keys and merged["missing_runs"] == []
    report = (folder / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert all(f"`{key}`" in report for key in keys)


@pytest.mark.slow
@pytest.mark.parametrize(
    "marker",
    ["device: cpu", "[lora] saved", "[full_finetune] evaluating on dev and test"],
    ids=["after-imports-before-model-load", "between-runs", "during-evaluation"],
)
def test_sigterm_at_every_phase_stops_cleanly_and_keeps_finished_runs(write_config, tmp_path: Path, marker) -> None:
    config = write_config(num_epochs=1, max_eval_samples=150, eval_batch_size=1)  # evaluation takes a while
    process, log = run_and_signal_on(config, marker, signal.SIGTERM)
    assert process.returncode == 143, log[-3000:]
    assert "stopping: finished runs' results are kept" in log
    assert "Traceback" not in log and "C++ Traceback" not in log
    results = tmp_path / "out" / "results"
    saved = sorted(p.name for p in results.glob("*.json")) if results.is_dir() else []
    assert saved == ([] if marker == "device: cpu" else ["lora.json"])
    assert not (tmp_path / "out" / "ernie_lora_vs_full_report.md").exists()
