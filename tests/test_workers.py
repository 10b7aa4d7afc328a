"""`job run --workers N`: the plan's pending runs in N worker processes on one machine, each pinned to a GPU
or given its share of the cores, with the same records as one process, failures kept to their run, the
most telling exit code, a stop that keeps what finished, and a report written once."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.output.log import run_done
from job.workers import plan_slots, worker_count

ROOT = Path(__file__).resolve().parents[1]
# What differs between two trainings of the same run by design: when, how fast, on which worker.
NOT_COMPARED = {"training_seconds", "samples_per_second", "tokens_per_second", "started_at", "finished_at",
                "worker", "peak_memory_mb", "serving"}  # fmt: skip


def grid(tmp_path: Path, tiny_model: Path, tnews_dir: Path, name: str, **values) -> Path:
    config = {
        "model_name": str(tiny_model), "data_dir": str(tnews_dir), "max_seq_length": 32, "batch_size": 16,
        "learning_rate": [5e-3, 1e-3], "seed": [1, 2], "num_epochs": 1, "max_train_samples": 96,
        "max_eval_samples": 32, "output_dir": str(tmp_path / name), "device": "cpu", "lora_r": 4, "lora_alpha": 8,
        "eval_batch_size": 32, **values,
    }  # fmt: skip
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def job(*args: str, threads: int, timeout: float = 500) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "job", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


def records(out: Path) -> dict[str, dict]:
    return {path.stem: json.loads(path.read_text(encoding="utf-8"))["result"] for path in (out / "results").iterdir()}


@pytest.mark.timeout(560)
def test_two_workers_write_the_records_of_one_process_run_by_run(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    """8 runs (2 strategies x 2 rates x 2 seeds): one process with 1 thread, and 2 workers of 1 thread
    each (OMP_NUM_THREADS=2 shared out). Every number of every run is the same; only when, how fast and
    where differ."""
    one = job("run", "--config", str(grid(tmp_path, tiny_model, tnews_dir, "one")), threads=1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = job("run", "--config", str(grid(tmp_path, tiny_model, tnews_dir, "two")), "--workers", "2", threads=2)
    assert two.returncode == 0, two.stderr[-3000:]
    single, parallel = records(tmp_path / "one"), records(tmp_path / "two")
    assert sorted(single) == sorted(parallel) and len(single) == 8
    for key, record in single.items():
        other = parallel[key]
        assert {k: v for k, v in record.items() if k not in NOT_COMPARED} == {
            k: v for k, v in other.items() if k not in NOT_COMPARED
        }, key
        assert record["worker"] == "" and other["worker"] in ("w0 cpu (1 threads)", "w1 cpu (1 threads)")
    assert {record["worker"] for record in parallel.values()} == {"w0 cpu (1 threads)", "w1 cpu (1 threads)"}
    assert len(re.findall(r"\[run \d/8 done\]", two.stderr)) == 8 and "all 8 finished in" in two.stderr
    assert "[run 1/8 done]" in two.stderr and "about " in two.stderr.split("[run 2/8 done]")[1].splitlines()[0]
    for worker in ("w0", "w1"):  # each line tagged, then stamped with the time since the worker started
        assert re.search(rf"\[{worker} cpu \(1 threads\)\] \+0:\d\d:\d\d device: cpu \(1 threads\)", two.stderr)
    assert re.search(r"\+0:\d\d:\d\d \[run \d/8\] \[lora_r4_a8_lr0.005_s1\] step 6/6", two.stderr)
    for name in ("one", "two"):  # the verdict's numbers are the same: results.json's headline rows
        combined = json.loads((tmp_path / name / "results.json").read_text(encoding="utf-8"))
        if name == "one":
            headline = [{k: v for k, v in row.items() if "seconds" not in k and "memory" not in k
                         and "per_second" not in k} for row in combined["headline"]]  # fmt: skip
        else:
            assert headline == [{k: v for k, v in row.items() if "seconds" not in k and "memory" not in k
                                 and "per_second" not in k} for row in combined["headline"]]  # fmt: skip
    report = (tmp_path / "two" / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "Plan time: the 8 runs took" in report and "trained by 2 workers (w0 cpu (1 threads); w1 cpu" in report
    assert two.stdout.count("report: ") == 1  # written once, by the command


@pytest.mark.timeout(400)
def test_a_failed_run_leaves_the_others_and_the_command_exits_with_its_code(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    config = grid(tmp_path, tiny_model, tnews_dir, "out", learning_rate=5e-3, seed=[1, 2], save_artifacts=True)
    planted = tmp_path / "out" / "artifacts" / "full_finetune_lr0.005_s1"
    planted.parent.mkdir(parents=True)
    planted.symlink_to(tmp_path, target_is_directory=True)  # the job writes nothing through a link: exit 2
    failed = job("run", "--config", str(config), "--workers", "2", threads=2)
    assert failed.returncode == 2, failed.stderr[-3000:]
    assert sorted(records(tmp_path / "out")) == ["full_finetune_lr0.005_s2", "lora_r4_a8_lr0.005_s1",
                                                  "lora_r4_a8_lr0.005_s2"]  # fmt: skip
    assert "FAILED (exit 2)] full_finetune_lr0.005_s1 on w" in failed.stderr
    assert "failed: full_finetune_lr0.005_s1 (exit 2, w" in failed.stderr and "is a symbolic link" in failed.stderr
    assert "1 of 4 run(s) failed (full_finetune_lr0.005_s1): " in failed.stderr
    planted.unlink()
    rerun = job("run", "--config", str(config), "--workers", "2", threads=2)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "workers: 1 (w0 cpu (2 threads)); 1 run(s) to train" in rerun.stderr  # only what was missing
    # Paddle's OMP_NUM_THREADS warning, in the parent (the user set 2) but not in the worker (its share, the job's)
    assert "WARNING: OMP_NUM_THREADS" in rerun.stderr and "threads)] WARNING: OMP_NUM_THREADS" not in rerun.stderr
    assert len(records(tmp_path / "out")) == 4


@pytest.mark.timeout(200)
def test_data_every_worker_refuses_exits_2_naming_its_error_and_leaves_no_output_folder(
    tmp_path: Path, tiny_model: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("text,label\n好,a\n坏,b\n", encoding="utf-8")  # too few to carve a test split
    (data / "dev.csv").write_text("text,label\n好,a\n坏,b\n", encoding="utf-8")
    config = grid(tmp_path, tiny_model, data, "out", dataset="own", text_column="text", learning_rate=5e-3, seed=1)
    failed = job("run", "--config", str(config), "--workers", "2", threads=2)
    assert failed.returncode == 2, failed.stderr[-3000:]
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith("error: 2 of 2 run(s) failed (lora, full_finetune): "), last  # one rate, one seed
    assert "the test split is empty after sampling" in last  # the cause, on the line a queue shows
    assert not (tmp_path / "out").exists()  # made by the command, nothing written in it: not left behind
    assert failed.stderr.count("the test split is empty after sampling") >= 2 and "Traceback" not in failed.stderr


@pytest.mark.parametrize(("args", "env", "message"), [
    (["--workers", "0"], {}, "error: --workers: config key 'workers': Input should be greater than or equal to 1, "
                             "or 'auto' (got 0)"),
    (["--workers", "-3"], {}, "Input should be greater than or equal to 1, or 'auto' (got -3)"),
    ([], {"JOB_WORKERS": "two"}, "error: JOB_WORKERS (environment variable of --workers): config key 'workers': "
                                 "Input should be a valid integer, or 'auto' (got 'two')"),
])  # fmt: skip
def test_a_worker_count_that_is_not_one_says_what_it_may_be_and_where_it_came_from(
    write_config, args: list[str], env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config()), *args], env=env)
    assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output


def test_the_gpu_branch_pins_one_gpu_to_each_worker(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node with GPUs 3 and 5 visible (the GPU count forced on this CPU build): each worker is given one
    of them, and its records say which."""
    import job.workers

    monkeypatch.setattr(job.workers, "visible_gpus", lambda: ["3", "5"])
    config = grid(tmp_path, tiny_model, tnews_dir, "out", device="auto", learning_rate=5e-3, seed=1)
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--workers", "auto"])
    assert result.exit_code == 0, result.output
    saved = records(tmp_path / "out")
    assert {record["worker"] for record in saved.values()} == {"w0 gpu:3", "w1 gpu:5"}


def test_slots_share_out_gpus_and_cores() -> None:
    gpus = plan_slots(3, ["0", "1"], list(range(8)), 8)
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in gpus] == ["0", "1", "0"]  # round robin past the GPUs
    assert [slot.device for slot in gpus] == ["gpu:0", "gpu:1", "gpu:0"]
    cpus = plan_slots(4, [], list(range(8)), 8)
    assert [slot.cpus for slot in cpus] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert {slot.env["OMP_NUM_THREADS"] for slot in cpus} == {"2"} and cpus[0].device == "cpu (2 threads)"
    quota = plan_slots(2, [], list(range(64)), 8)  # a cgroup quota of 8 cores on a 64-core node
    assert [slot.cpus for slot in quota] == [tuple(range(4)), tuple(range(4, 8))]
    few = plan_slots(3, [], [0, 1], 2)  # more workers than cores: 1 thread each, no affinity of their own
    assert [slot.cpus for slot in few] == [None, None, None] and {s.env["OMP_NUM_THREADS"] for s in few} == {"1"}
    assert worker_count("auto", "auto", lambda: ["0", "1", "2"]) == 3
    assert worker_count("auto", "cpu", lambda: ["0"]) == 1 and worker_count("auto", "auto", lambda: []) == 1
    assert worker_count(4, "auto", lambda: []) == 4


def test_progress_gives_an_eta_from_each_strategys_own_speed_once_a_run_has_finished() -> None:
    line = run_done(key="lora_s1", code=0, seconds=30.0, done=1, total=9, timed=[("lora", 30.0)], parallel=2,
                    elapsed=31.0, where="w0 gpu:0")  # fmt: skip
    assert line == "[run 1/9 done] lora_s1 on w0 gpu:0 in 30.0 s; 8 left, about 2 min to go (31 s so far)"
    failed = run_done(key="full_s1", code=2, seconds=1.0, done=2, total=9, timed=[("lora", 30.0)], parallel=2,
                      elapsed=32.0)  # fmt: skip
    assert failed.startswith("[run 2/9 FAILED (exit 2)] full_s1 in 1.0 s; 7 left")
    assert run_done(key="x", code=0, seconds=5.0, done=3, total=3, timed=[("lora", 5.0)], parallel=1,
                    elapsed=3725.0) == "[run 3/3 done] x in 5.0 s; all 3 finished in 62 min"  # fmt: skip
    # One LoRA run of 78 s done; the next is full fine-tuning, which took 204 s: one mean said "about 78 s".
    timed = [("lora", 78.0), ("full_finetune", 204.0)]
    left = run_done(key="lora_s2", code=0, seconds=78.0, done=2, total=4, timed=timed,
                    remaining=["full_finetune", "full_finetune"], parallel=1, elapsed=282.0)  # fmt: skip
    assert left.endswith("2 left, about 6 min to go (4 min so far)")  # 2 x 204 s (408 s), not 2 x 141 s (282 s)


def start_workers(config: Path, log: IO[str]) -> subprocess.Popen:
    """`job run --workers 2` of `config` with 2 threads, its output into `log`."""
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "job", "run", "--config", str(config), "--workers", "2"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip


def wait_for(text: str, log: Path, process: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in log.read_text(encoding="utf-8"):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text(encoding="utf-8")[-3000:]
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(560)
def test_sigterm_stops_every_worker_keeps_finished_records_and_exits_143(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    config = grid(tmp_path, tiny_model, tnews_dir, "out", learning_rate=5e-3, seed=[1, 2, 3], num_epochs=40,
                  logging_steps=1)  # fmt: skip
    log = tmp_path / "log"
    with log.open("w") as handle:
        process = start_workers(config, handle)
        wait_for("[run 1/6 done]", log, process, seconds=400)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 143
    text = log.read_text(encoding="utf-8")
    assert "stopping: finished runs' results are kept" in text
    saved = records(tmp_path / "out")
    assert 1 <= len(saved) < 6 and not (tmp_path / "out" / "ernie_lora_vs_full_report.md").exists()
    assert not [p for p in (tmp_path / "out" / "results").iterdir() if p.suffix == ".tmp"]


@pytest.mark.timeout(120)
def test_after_a_failed_run_a_worker_holds_nothing_of_it(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that fails in a worker (here at its first step, as a device running out would) leaves no
    reference to its model, gradients or optimizer behind: the next run loads into the memory it freed."""
    import weakref

    import job.pipeline as pipeline
    from job.config.schema import load_config
    from job.errors import RetryableError
    from job.runtime.signals import StopRequest
    from job.workers import STATUS_FD_VARIABLE, serve

    values = {"model_name": str(tiny_model), "data_dir": str(tnews_dir), "device": "cpu",
              "output_dir": str(tmp_path / "out"), "max_train_samples": 32, "batch_size": 16}  # fmt: skip
    config = load_config(None, values)
    models: list[weakref.ref] = []
    original = pipeline.train

    def train(model, *args, **kwargs):
        models.append(weakref.ref(model))
        if len(models) == 1:
            raise RetryableError("the device went away for a moment")
        assert models[0]() is None, "the failed run's model is still held"
        return original(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train", train)
    read, write = os.pipe()
    monkeypatch.setenv(STATUS_FD_VARIABLE, str(write))
    serve(config, StopRequest(), keys=["lora", "full_finetune"])
    with os.fdopen(read, encoding="utf-8") as status:
        reports = [json.loads(line) for line in status]
    assert [(r["key"], r["code"]) for r in reports] == [("lora", 75), ("full_finetune", 0)]
    assert len(models) == 2


def test_on_a_gpu_a_failed_runs_cached_memory_goes_back_to_the_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import paddle

    import job.runtime.device as device
    from job.workers import release_memory

    emptied = []
    monkeypatch.setattr(device, "on_gpu", lambda: True)
    monkeypatch.setattr(paddle.device.cuda, "empty_cache", lambda: emptied.append(True))
    release_memory()
    assert emptied == [True]
    monkeypatch.setattr(device, "on_gpu", lambda: False)
    release_memory()
    assert emptied == [True]


def test_a_worker_inherits_no_launchers_variables_and_gets_its_slots_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell that once ran Paddle's launcher (or a scheduler that sets its variables) must not pin every
    worker to one GPU or make it wait for ranks: the worker's device is its slot's."""
    from job.workers import plan_slots, worker_environment

    monkeypatch.setenv("FLAGS_selected_gpus", "3")
    monkeypatch.setenv("PADDLE_TRAINER_ID", "1")
    monkeypatch.setenv("PADDLE_TRAINER_ENDPOINTS", "10.0.0.1:6170,10.0.0.2:6170")
    monkeypatch.setenv("PPNLP_HOME", "/cache/paddlenlp")
    slot = plan_slots(2, ["0", "1"], list(range(8)), 8)[1]
    env = worker_environment(slot, 9)
    assert not {"FLAGS_selected_gpus", "PADDLE_TRAINER_ID", "PADDLE_TRAINER_ENDPOINTS"} & set(env)
    assert env["PPNLP_HOME"] == "/cache/paddlenlp" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert env["JOB_WORKER"] == f"{slot.name} {slot.device}" and env["JOB_WORKER_STATUS_FD"] == "9"


CUDA_700 = ("(External) CUDA error(700), an illegal memory access was encountered. [Hint: 'cudaErrorIllegalAddress'. "
            "The device encountered a load or store instruction on an invalid memory address.] (at "
            "/paddle/paddle/phi/backends/gpu/cuda/cuda_info.cc:279)")  # fmt: skip


@pytest.mark.timeout(400)
def test_a_worker_whose_device_faults_stops_and_the_healthy_worker_trains_the_rest(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """The GPU branch forced (two slots, CUDA_VISIBLE_DEVICES 0 and 1), and Paddle's own CUDA error 700
    raised in w0's first run: w0 reports it and stops (its context is lost, every later run would fail in
    a second); w1 trains the other three."""
    import job.workers
    from job.config.schema import load_config
    from job.runtime.signals import StopRequest
    from job.workers import RunsFailed, run_parallel

    wrapper = tmp_path / "worker.py"
    wrapper.write_text(
        "import os, runpy, sys\n"
        f"sys.path[0] = {str(ROOT)!r}\n"
        "if os.environ['JOB_WORKER'].startswith('w0'):\n"
        "    import job.pipeline\n"
        "    def faulted(*args, **kwargs):\n"
        f"        raise OSError({CUDA_700!r})\n"
        "    job.pipeline.train = faulted\n"
        "sys.argv = ['job', 'run', '--workers', '1', '--serve-runs']\n"
        "runpy.run_module('job', run_name='__main__', alter_sys=True)\n",
        encoding="utf-8",
    )
    config = load_config(grid(tmp_path, tiny_model, tnews_dir, "out", learning_rate=5e-3, seed=[1, 2], device="auto"))
    monkeypatch.setattr(job.workers, "visible_gpus", lambda: ["0", "1"])
    monkeypatch.setattr(job.workers, "cpu_share", lambda: ([0, 1], 2))
    with pytest.raises(RunsFailed) as failed:
        run_parallel(config=config, stop=StopRequest(), force=False, count=2, command=[sys.executable, str(wrapper)])
    err = capsys.readouterr().err
    assert failed.value.exit_code == 75, err[-3000:]  # a passing GPU fault: the queue may retry the run
    assert str(failed.value).startswith("1 of 4 run(s) failed (lora_r4_a8_lr0.005_s1): GPU fault (retrying may help)")
    assert "w0 gpu:0 stops after a device fault; 1 worker(s) take the remaining runs" in err
    assert "this worker's device context is lost after that fault: it stops" in err
    assert sorted(records(tmp_path / "out")) == ["full_finetune_lr0.005_s1", "full_finetune_lr0.005_s2",
                                                  "lora_r4_a8_lr0.005_s2"]  # fmt: skip
    assert {record["worker"] for record in records(tmp_path / "out").values()} == {"w1 gpu:1"}


NVIDIA_SMI_L = """GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77)
  MIG 3g.20gb     Device  0: (UUID: MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f)
  MIG 3g.20gb     Device  1: (UUID: MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb)
GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-0a1b2c3d-0000-1111-2222-333344445555)
  MIG 7g.40gb     Device  0: (UUID: MIG-11111111-2222-3333-4444-555555555555)
"""


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, ["MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f", "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb",
                "MIG-11111111-2222-3333-4444-555555555555"]),
        ("1", ["MIG-11111111-2222-3333-4444-555555555555"]),
        ("GPU-5d5ba0d6-d33d-2b2c-524d-9e3d8d2b8a77", ["MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f",
                                                      "MIG-cba663e8-9bed-5b25-b243-5985ef7c9beb"]),
        ("MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f", ["MIG-c6d4f1ef-42e4-5de3-91c7-45d71c87eb3f"]),
    ],
)  # fmt: skip
def test_mig_slices_are_found_and_each_worker_is_pinned_to_its_own(
    monkeypatch: pytest.MonkeyPatch, visible: str | None, expected: list[str]
) -> None:
    """CUDA shows a process one MIG slice (device_count 1): `workers: auto` found one GPU and `--workers N`
    put every worker on the first slice. The GPU branch forced, `nvidia-smi -L`'s MIG lines as input."""
    import paddle

    import job.runtime.device as device
    import job.workers
    from job.runtime.device import GpuCheck
    from job.workers import visible_gpus

    monkeypatch.setattr(device, "gpu_available", lambda: GpuCheck(True, "1 GPU(s) visible"))
    monkeypatch.setattr(paddle.device.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(job.workers, "nvidia_smi_list", lambda: NVIDIA_SMI_L)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus() == expected
    assert worker_count("auto", "auto") == len(expected)
    slots = plan_slots(len(expected), expected, [0, 1], 2)
    assert [slot.env["CUDA_VISIBLE_DEVICES"] for slot in slots] == expected
    monkeypatch.setattr(job.workers, "nvidia_smi_list", lambda: NVIDIA_SMI_L.split("\n")[0] + "\n")  # no MIG
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert visible_gpus() == ["0"]


def test_workers_sharing_a_gpu_each_get_a_memory_cap_and_their_runs_are_marked() -> None:
    """3 workers on 2 GPUs of 40 GB: the two on GPU 0 each get half of it (less a CUDA context), the one on
    GPU 1 no cap; the report says which runs shared a GPU, whose times do not compare."""
    from job.results.tables import plan_time
    from tests.records import result

    slots = plan_slots(3, ["0", "1"], list(range(8)), 8, memory_mb=[40960, 40960])
    assert [slot.env.get("FLAGS_gpu_memory_limit_mb") for slot in slots] == ["19968", None, "19968"]
    assert [slot.env["JOB_GPU_SHARED_BY"] for slot in slots] == ["2", "1", "2"]
    assert "FLAGS_gpu_memory_limit_mb" not in plan_slots(2, ["0", "1"], [0, 1], 2, memory_mb=[40960, 40960])[0].env
    labels = [i % 15 for i in range(100)]
    runs = [result(name, lr=5e-4, seed=seed, dev_right=50, test_right=50, labels=labels).model_copy(
        update={"started_at": f"2026-01-01T00:0{seed}:00+00:00", "gpu_shared_by": 2 if seed == 1 else 1})
        for name in ("lora", "full_finetune") for seed in (1, 2)]  # fmt: skip
    assert "2 of the runs trained on a GPU shared by up to 2 workers (more workers than GPUs)" in plan_time(runs)
    alone = [run.model_copy(update={"gpu_shared_by": 1}) for run in runs]
    assert "shared by" not in plan_time(alone) and "Plan time: the 4 runs took" in plan_time(alone)


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("signum", ["SIGTERM", "SIGKILL"])
def test_a_workers_command_stopped_while_its_workers_import_paddle_leaves_no_crash_dump_and_no_orphan(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path, signum: str
) -> None:
    """With the default device the command imports Paddle to count GPUs, and each worker imports it on
    start: Paddle's own SIGTERM handler turned a stop into a crash dump and death by the signal, and the
    workers trained on as orphans."""
    config = grid(tmp_path, tiny_model, tnews_dir, "out", device="auto", learning_rate=5e-3, num_epochs=50)
    log = tmp_path / "log"
    with log.open("w") as handle:
        process = start_workers(config, handle)
        wait_for("run(s) to train", log, process, seconds=200)
        workers: list[int] = []
        while len(workers) < 2:  # the line comes just before the workers are started
            assert process.poll() is None, log.read_text(encoding="utf-8")[-3000:]
            workers = [int(pid) for pid in subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                                                          text=True, check=False).stdout.split()]  # fmt: skip
        process.send_signal(getattr(signal, signum))
        code = process.wait(timeout=120)
    deadline = time.monotonic() + 120
    while [pid for pid in workers if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status")
           .read_text()]:  # fmt: skip
        assert time.monotonic() < deadline, "a worker outlived its command"
        time.sleep(0.2)
    text = log.read_text(encoding="utf-8")
    assert len(workers) == 2 and "Termination signal" not in text and "C++ Traceback" not in text, text[-3000:]
    assert code == (143 if signum == "SIGTERM" else -9), text[-3000:]
