"""Every exit code the README promises, through the CLI: 75 when a retry can help (a read that
failed, a full disk), 2 for input that can never work, 130 for Ctrl-C."""

from __future__ import annotations

import errno
import os
import shutil
import signal
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from tests.fixtures import run_and_signal_on

ROOT = Path(__file__).resolve().parents[1]


def test_a_failed_read_of_a_data_file_exits_75(write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import job.data.textfiles

    real = os.open

    def flaky(path, *args, **kwargs):  # a data file is opened once, as a regular file inside its folder
        if Path(path).name == "train.json":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(job.data.textfiles.os, "open", flaky)
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
    left = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".lock"]
    assert [p.name for p in left] == ["lora.safetensors"]  # no half-written record, results.json or report
    from safetensors.numpy import load_file

    assert left[0].parent.parent.name == "directions" and load_file(left[0])  # the update's directions, whole


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


def test_sigterm_while_the_last_run_saves_exits_143_and_keeps_its_record(write_config, tmp_path: Path) -> None:
    """The signal lands after the last run's scores are printed, while it saves: the record is written
    whole, then the job stops with 143 (no report: the retry, finding every run done, writes it)."""
    config = write_config(num_epochs=1, strategies=["lora"], save_artifacts=True)
    process, log = run_and_signal_on(config, "[lora] trained in", signal.SIGTERM)
    assert process.returncode == 143, log[-3000:]
    assert "[lora] saved" in log and (tmp_path / "out" / "results" / "lora.json").is_file()
    assert not (tmp_path / "out" / "ernie_lora_vs_full_report.md").exists()
