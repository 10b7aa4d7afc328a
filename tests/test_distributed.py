"""Data-parallel training: batch sharding, and a real two-process launch on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.launch import launcher_command
from job.runtime.cpu import set_cpu_thread_defaults
from job.runtime.ranks import Ranks, shard_batches, usable_batches
from job.training.loop import rank_seed

ROOT = Path(__file__).resolve().parents[1]


def test_each_rank_takes_its_share_of_every_global_batch() -> None:
    batches = [[0, 1, 2, 3], [4, 5, 6], [7]]
    first, second = shard_batches(batches, Ranks(0, 2)), shard_batches(batches, Ranks(1, 2))
    assert first == [[0, 2], [4, 6]] and second == [[1, 3], [5]]
    # Together the ranks cover every usable batch exactly; a batch smaller than the world is dropped by all.
    assert usable_batches(batches, Ranks(0, 2)) == [[0, 1, 2, 3], [4, 5, 6]]
    assert [sorted(a + b) for a, b in zip(first, second, strict=True)] == usable_batches(batches, Ranks(1, 2))
    assert shard_batches(batches, Ranks()) == batches


@pytest.mark.parametrize(("cores", "local", "threads"), [(8, "2", "4"), (8, "3", "2"), (2, "4", "1"), (8, "", "8")])
def test_each_local_rank_takes_its_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch, cores: int, local: str, threads: str
) -> None:
    import job.runtime.cpu

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PADDLE_LOCAL_SIZE", local)
    monkeypatch.setattr(job.runtime.cpu, "available_cpus", lambda: cores)
    assert set_cpu_thread_defaults("GenuineIntel") is True
    assert os.environ["OMP_NUM_THREADS"] == threads


def test_each_rank_draws_its_own_dropout_masks_and_rank_0_those_of_one_process() -> None:
    seeds = [rank_seed(42, Ranks(rank, 4)) for rank in range(4)]
    assert seeds[0] == 42 == rank_seed(42, Ranks())
    assert len(set(seeds)) == 4 and seeds == [rank_seed(42, Ranks(rank, 4)) for rank in range(4)]
    assert rank_seed(43, Ranks(1, 4)) != seeds[1]


def test_the_launcher_logs_into_the_reports_folder_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_REPORTS_DIR", "/app/reports")
    command = launcher_command(["--gpus", "0,1", "job/__main__.py", "run"])
    assert command[1:5] == ["-m", "paddle.distributed.launch", "--log_dir", "/app/reports/launch-logs"]
    assert command[-4:] == ["--gpus", "0,1", "job/__main__.py", "run"]
    assert launcher_command(["--log_dir=/x", "job/__main__.py"]).count("--log_dir=/x") == 1
    assert "/app/reports/launch-logs" not in launcher_command(["--log_dir", "/x", "job/__main__.py"])


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_the_ranks_cleanly_with_exit_143(write_config, tmp_path: Path) -> None:
    import signal
    import time

    config = write_config(num_epochs=200, strategies=["lora"], logging_steps=1)
    reports = tmp_path / "reports"
    process = subprocess.Popen(
        [sys.executable, "-m", "job", "launch", "--nproc_per_node", "1", str(ROOT / "job" / "__main__.py"), "run",
         "--config", str(config)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JOB_REPORTS_DIR": str(reports)},
    )  # fmt: skip
    log = reports / "launch-logs" / "workerlog.0"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "[lora] step 2/" in log.read_text(encoding="utf-8")):
        assert process.poll() is None and time.monotonic() < deadline, "the rank never trained"
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 143
    assert "stopping: finished runs' results are kept" in log.read_text(encoding="utf-8")


@pytest.mark.slow
def test_two_process_launch_trains_in_step_and_only_rank_0_writes(write_config, tmp_path: Path) -> None:
    config = write_config(num_epochs=2, max_train_samples=300)
    out, logs = tmp_path / "out", tmp_path / "launch-logs"
    result = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
         str(ROOT / "job" / "__main__.py"), "run", "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = (logs / "workerlog.0").read_text(encoding="utf-8")
    rank1 = (logs / "workerlog.1").read_text(encoding="utf-8")
    assert "rank 0 of 2" in rank0 and "rank 1 of 2" in rank1
    assert "[lora] saved" in rank0 and "saved" not in rank1
    assert "step " not in rank1  # progress is rank 0's alone
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]
    # The training sample is 300 rows: 19 global batches of 16 an epoch, whatever the number of ranks.
    for record in results:
        assert record["steps"] == 2 * 19
        assert record["samples_per_second"] > 0
    assert sorted(p.name for p in (out / "results").iterdir()) == ["full_finetune.json", "lora.json"]


@pytest.mark.slow
def test_two_processes_end_with_the_weights_of_one_process_over_the_same_global_batches(
    write_config, tmp_path: Path
) -> None:
    """Without dropout, data-parallel training is the same computation as one process: gradients of
    the two half-batches, averaged, are the full batch's gradient. Fails without the averaging."""
    import numpy as np
    import paddle

    from tests.fixtures import build_tiny_model

    model = build_tiny_model(tmp_path / "no-dropout", dropout=0.0)
    # Batches of 15 on two ranks: shards of 8 and 7 rows, weighted by rows to equal the one-process step.
    config = write_config(model_name=str(model), num_epochs=2, max_train_samples=96, batch_size=15,
                          strategies=["full_finetune"], save_artifacts=True)  # fmt: skip
    launched = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir",
         str(tmp_path / "logs"), str(ROOT / "job" / "__main__.py"), "run", "--config", str(config),
         "--output-dir", str(tmp_path / "two")],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "job", "run", "--config", str(config), "--output-dir", str(tmp_path / "one")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    def weights(folder: str) -> dict:
        from safetensors.numpy import load_file

        saved = load_file(str(tmp_path / folder / "artifacts" / "full_finetune" / "model" / "model.safetensors"))
        return {name: paddle.to_tensor(value) for name, value in saved.items()}

    def losses(folder: str) -> list[float]:
        return json.loads((tmp_path / folder / "results.json").read_text(encoding="utf-8"))["runs"][0]["step_losses"]

    two, one = weights("two"), weights("one")
    assert two.keys() == one.keys()
    initial = paddle.load(str(model / "model_state.pdparams"))
    moved = [name for name in one if name in initial and not np.allclose(one[name].numpy(), initial[name].numpy())]
    assert len(moved) > 10  # training changed the weights, so equal weights mean equal steps
    for name in one:
        np.testing.assert_allclose(two[name].numpy(), one[name].numpy(), rtol=1e-4, atol=1e-6, err_msg=name)
    assert losses("two") == pytest.approx(losses("one"), rel=1e-4)
