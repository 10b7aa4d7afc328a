"""Data-parallel training: batch sharding, and a real two-process launch on CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.exit_codes import most_telling
from job.launch import default_log_dir, entry_point, launcher_command, parse_launch
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


def test_the_launcher_logs_under_the_output_folder_and_each_rank_runs_the_package(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JOB_REPORTS_DIR", "/app/reports")
    plan = parse_launch(["--gpus", "0,1", "job/__main__.py", "run", "--config", "c.yaml"])
    assert plan.options == ["--gpus", "0,1"] and plan.job_args == ["run", "--config", "c.yaml"]
    assert parse_launch(["--gpus", "0,1", "run", "--config", "c.yaml"]) == plan
    entry = entry_point(tmp_path)
    command = launcher_command(plan, default_log_dir("/data/out"), entry)
    assert command[1:5] == ["-m", "paddle.distributed.launch", "--log_dir", "/data/out/launch-logs"]
    assert command[5:] == ["--gpus", "0,1", str(entry), "run", "--config", "c.yaml"]
    assert default_log_dir("s3://bucket/x") == Path("/app/reports/launch-logs")
    given = parse_launch(["--log_dir=/x", "run"])
    assert given.log_dir_given and launcher_command(given, Path("unused"), entry).count("--log_dir=/x") == 1
    assert "unused" not in launcher_command(given, Path("unused"), entry)
    probe = subprocess.run([sys.executable, str(entry), "--help"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120, check=False, env={**os.environ, "PYTHONPATH": ""})  # fmt: skip
    assert probe.returncode == 0 and "Usage: python -m job" in probe.stdout, probe.stderr
    sys_path = subprocess.run(
        [sys.executable, "-c", f"import runpy, sys; sys.argv = [{str(entry)!r}]; exec(open({str(entry)!r}).read()"
         ".replace('runpy.run_module', 'print(sys.path[0]) or (lambda *a, **k: None)'))"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert sys_path.stdout.strip() == str(ROOT)  # not ROOT/job: its config, data, results shadow nothing


@pytest.mark.parametrize(
    ("args", "fragment"),
    [(["--nproc_per_node", "0", "run"], "--nproc_per_node 0 starts no process"),
     (["--bogus", "1", "run"], "'--bogus' is not an option of paddle.distributed.launch"),
     (["--gpus", "0", "job/__main__.py"], "needs the job's command after it"),
     (["--gpus", "0", "train.py"], "train.py is not the job's own command; give --log_dir"),
     (["--rank", "5", "--nnodes", "2", "run"], "--rank 5 is not a node of --nnodes 2 (ranks run from 0 to 1)"),
     (["--rank", "2", "--nnodes", "1:2", "run"], "--rank 2 is not a node of --nnodes 1:2"),
     (["--gpus", "0,1", "run"], "--devices 0,1: this node has no GPU the launcher can use; for CPU ranks leave "
                                "--devices (--gpus) out and give --nproc_per_node N"),
     (["--log_dir", "/proc/no-such/logs", "run"], "cannot create the log folder /proc/no-such/logs: No such file")],
    ids=["no-process", "unknown-option", "no-command", "own-script-without-log-dir", "rank-beyond-nodes",
         "rank-beyond-elastic-nodes", "gpus-on-a-cpu-node", "log-dir-impossible"],
)  # fmt: skip
def test_launcher_options_that_would_train_nothing_exit_2(args: list[str], fragment: str) -> None:
    from click.testing import CliRunner

    from job.cli import main

    result = CliRunner().invoke(main, ["launch", *args])
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_devices_the_launcher_does_not_see_exit_2_naming_the_visible_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GPU node with GPUs 0-3 (the launcher reads CUDA_VISIBLE_DEVICES first, context/device.py): `--gpus 5`
    ended in the launcher's ValueError traceback; `--gpus 1,3` passes to the launcher."""
    from click.testing import CliRunner

    from job.cli import main

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    started: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda command, **k: started.append(command) or pytest.fail("started"))
    result = CliRunner().invoke(main, ["launch", "--gpus", "1,5", "--log_dir", "/tmp/unused-logs", "run"])
    assert result.exit_code == 2 and not started, result.output
    assert "--devices 1,5: '5' is not one of the visible GPUs (0,1,2,3; CUDA_VISIBLE_DEVICES renumbers" in result.output
    from job.launch import check_devices

    check_devices("1,3")  # seen: no error


def test_the_command_returns_the_most_telling_rank_code() -> None:
    assert most_telling([143, 2]) == 2 and most_telling([1, 75]) == 75 and most_telling([0, 1]) == 1
    assert most_telling([0, 0]) == 0 and most_telling([]) == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_rank_that_exits_2_makes_the_launch_exit_2_and_each_rank_takes_its_share_of_threads(
    write_config, tmp_path: Path, tiny_model: Path
) -> None:
    """Two CPU ranks through `python -m job launch`; rank 1's model folder has no tokenizer, so it exits 2
    after choosing its device while rank 0 waits for it in the first collective. Paddle's launcher stops
    rank 0 and exits with rank 0's code; the command must exit 2 and name rank 1's error."""
    import shutil

    broken = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_model, broken)
    for path in broken.iterdir():
        if "vocab" in path.name or "tokenizer" in path.name:
            path.unlink()
    wrapper = tmp_path / "rank.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"sys.path[0] = {str(ROOT)!r}\n"
        f"if os.environ['PADDLE_TRAINER_ID'] == '1': sys.argv += ['--set', 'model_name={broken}']\n"
        "runpy.run_module('job', run_name='__main__', alter_sys=True)\n",
        encoding="utf-8",
    )
    config = write_config(num_epochs=1, max_train_samples=64, strategies=["lora"])
    env = {key: value for key, value in os.environ.items() if key != "OMP_NUM_THREADS"}
    result = subprocess.run(
        [sys.executable, "-m", "job", "launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "out" /
         "launch-logs"), str(wrapper), "run", "--config", str(config)],
        cwd=ROOT, capture_output=True, text=True, timeout=560, check=False, env=env,
    )  # fmt: skip
    logs = tmp_path / "out" / "launch-logs"
    assert result.returncode == 2, result.stderr[-3000:]
    assert "rank 1 exited 2: model folder" in result.stderr and "has no usable tokenizer files" in result.stderr
    for rank in (0, 1):
        assert "cpu (1 threads)" in (logs / f"workerlog.{rank}").read_text(encoding="utf-8")
    assert oct(logs.stat().st_mode & 0o777) == "0o700"


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
    log = tmp_path / "out" / "launch-logs" / "workerlog.0"  # under the config's output_dir
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


def test_a_driver_too_old_stops_the_launch_before_the_launcher_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher counts the GPUs first (paddle/distributed/launch/context/device.py) and crashes there
    with a traceback on a driver too old; the command counts them first and exits 2 with the fix."""
    import paddle
    from click.testing import CliRunner

    from job.cli import main

    def insufficient() -> int:
        raise OSError(
            "(External) CUDA error(35), CUDA driver version is insufficient for CUDA runtime version. "
            "[Hint: 'cudaErrorInsufficientDriver'. This indicates that the installed NVIDIA CUDA driver is older "
            "than the CUDA runtime library.] (at /paddle/paddle/phi/backends/gpu/cuda/cuda_info.cc:67)"
        )

    monkeypatch.setattr(paddle, "is_compiled_with_cuda", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "device_count", insufficient)
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("the launcher started"))
    result = CliRunner().invoke(main, ["launch", "--gpus", "0,1", "--log_dir", "/tmp/unused-logs", "run"])
    assert result.exit_code == 2, result.output
    assert "CUDA error(35)" in result.output and "install driver >=" in result.output


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_ranks_whose_dev_scores_differ_stop_early_together_on_rank_0s_decision(write_config, tmp_path: Path) -> None:
    """Rank 0 scores dev flat (a rate of 1e-9 changes no prediction: it stops after `early_stopping_patience`
    evaluations), rank 1 better each time (it would train on): each deciding alone, rank 0 left and rank 1
    waited for ever in the next step's all-reduce."""
    wrapper = tmp_path / "rank.py"
    wrapper.write_text(
        "import dataclasses, os, runpy, sys\n"
        f"sys.path[0] = {str(ROOT)!r}\n"
        "import job.pipeline\n"
        "real, calls = job.pipeline.evaluate, []\n"
        "def evaluate(*args, **kwargs):\n"
        "    calls.append(1)\n"
        "    scored = real(*args, **kwargs)\n"
        "    if os.environ['PADDLE_TRAINER_ID'] == '0':\n"
        "        return scored  # rank 0 writes the record: its own scores\n"
        "    return dataclasses.replace(scored, accuracy=len(calls) / 100)\n"
        "job.pipeline.evaluate = evaluate\n"
        "runpy.run_module('job', run_name='__main__', alter_sys=True)\n",
        encoding="utf-8",
    )
    config = write_config(num_epochs=2, max_train_samples=300, strategies=["lora"], eval_steps=4,
                          early_stopping_patience=1, learning_rate=1e-9)  # fmt: skip
    logs = tmp_path / "launch-logs"
    result = subprocess.run(
        [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(logs),
         str(wrapper), "run", "--config", str(config)],
        cwd=tmp_path, capture_output=True, text=True, timeout=500, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, (logs / "workerlog.1").read_text(encoding="utf-8")[-3000:]
    record = json.loads((tmp_path / "out" / "results" / "lora.json").read_text(encoding="utf-8"))["result"]
    assert record["stopped_early"] is True and record["steps"] == 8, record["steps"]  # evaluations at 4 and 8
