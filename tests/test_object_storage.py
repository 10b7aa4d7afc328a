"""output_dir on object storage (s3://), against a real S3-compatible server on 127.0.0.1 (SeaweedFS,
started by the `object_store` fixture): array tasks merge without a lock, reruns resume, a killed task
leaves only whole objects, and a missing bucket, denied access or an unreachable endpoint exit with the
code a queue needs, naming the URL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.results.records import read_record
from tests.fixtures import ROOT, run_and_signal_on
from tests.object_store import READER, ObjectStore, free_port_pair, running_object_store

# Slow enough to be killed mid-run, small enough to stay fast: the tiny model trains a few seconds.
FAST = {"num_epochs": 1, "max_train_samples": 96, "max_eval_samples": 32, "logging_steps": 1}


@pytest.fixture(scope="module")
def object_store(tmp_path_factory: pytest.TempPathFactory):
    with running_object_store(tmp_path_factory.mktemp("seaweedfs")) as store:
        yield store


@pytest.fixture
def bucket(object_store: ObjectStore) -> str:
    name = f"job-{uuid.uuid4().hex[:12]}"
    object_store.filesystem().mkdir(name)
    return name


@pytest.fixture
def store_env(object_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The store's endpoint and credentials, in this process (for CliRunner) and for children."""
    environment = object_store.environment()
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return environment


def objects(store: ObjectStore, prefix: str) -> dict[str, bytes]:
    fs = store.filesystem()
    keys = [key for key in fs.find(prefix) if not key.endswith("/")]
    return {key.removeprefix(prefix + "/"): fs.cat_file(key) for key in keys}


def run_task(config: Path, index: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "job", "run", "--config", str(config), "--run-from-index"], cwd=ROOT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **env, "PYTHONPATH": str(ROOT), "JOB_COMPLETION_INDEX": str(index)},
    )  # fmt: skip


@pytest.mark.slow
def test_two_array_tasks_in_parallel_into_one_prefix_leave_the_complete_report(
    write_config, object_store: ObjectStore, bucket: str, store_env: dict[str, str], tmp_path: Path
) -> None:
    prefix = f"{bucket}/grid"
    config = write_config(output_dir=f"s3://{prefix}", **FAST)
    tasks = [run_task(config, index, store_env) for index in (0, 1)]
    logs = [task.communicate(timeout=300)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], "\n".join(logs)[-3000:]

    stored = objects(object_store, prefix)
    assert {"results/lora.json", "results/full_finetune.json", "results.json", "ernie_lora_vs_full_report.md",
            "loss_curves.png", "pareto.png"} <= set(stored)  # fmt: skip
    assert not [name for name in stored if ".write-test-" in name]
    combined = json.loads(stored["results.json"])
    assert combined["missing_runs"] == [] and [run["key"] for run in combined["runs"]] == ["lora", "full_finetune"]
    # A task that saw one record wrote nothing else; a task that saw both wrote the merge; one of them did.
    for log in logs:
        assert ("1 of 2 planned runs are in" in log) != ("report: s3://" in log), log[-2000:]
    assert any("report: s3://" in log for log in logs)

    # Any writer that sees the full set writes the same bytes: merge the records again locally.
    local = tmp_path / "local"
    (local / "results").mkdir(parents=True)
    for name in ("lora", "full_finetune"):
        (local / "results" / f"{name}.json").write_bytes(stored[f"results/{name}.json"])
    for name, data in stored.items():  # the updates' directions, which the subspace overlap reads
        if name.startswith("directions/"):
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            (local / name).write_bytes(data)
    assert CliRunner().invoke(main, ["report", "--output-dir", str(local)]).exit_code == 0
    assert (local / "results.json").read_bytes() == stored["results.json"]
    assert (local / "ernie_lora_vs_full_report.md").read_bytes() == stored["ernie_lora_vs_full_report.md"]


@pytest.mark.slow
def test_a_task_that_sees_an_incomplete_set_writes_only_its_own_record(
    write_config, object_store: ObjectStore, bucket: str, store_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"{bucket}/one-by-one"
    config = write_config(output_dir=f"s3://{prefix}", **FAST)
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    first = CliRunner().invoke(main, ["run", "--config", str(config), "--run-from-index"])
    assert first.exit_code == 0, first.output
    assert "1 of 2 planned runs are in" in first.output
    assert {name for name in objects(object_store, prefix) if not name.startswith("directions/")} == {
        "results/full_finetune.json"
    }

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    second = CliRunner().invoke(main, ["run", "--config", str(config), "--run-from-index"])
    assert second.exit_code == 0 and f"report: s3://{prefix}/ernie_lora_vs_full_report.md" in second.output
    assert json.loads(objects(object_store, prefix)["results.json"])["missing_runs"] == []


@pytest.mark.slow
def test_a_killed_task_leaves_only_whole_objects_and_the_rerun_resumes(
    write_config, object_store: ObjectStore, bucket: str, store_env: dict[str, str]
) -> None:
    prefix = f"{bucket}/resume"
    config = write_config(output_dir=f"s3://{prefix}", save_artifacts=True, **FAST)
    process, log = run_and_signal_on(config, "[full_finetune] step 2/", signal.SIGKILL, env=store_env)
    assert process.returncode == -signal.SIGKILL, log[-2000:]

    stored = objects(object_store, prefix)
    assert set(stored) == {"results/lora.json"} | {name for name in stored if name.startswith("artifacts/lora/")} | {
        name
        for name in stored
        if name.startswith("directions/")  # lora's, written before its record
    }
    read_record("lora.json", stored["results/lora.json"])  # whole and valid
    artifacts = json.loads(stored["results/lora.json"])["result"]["artifacts"]  # uploaded before the record
    assert artifacts and all(any(name.startswith(f"{folder}/") for name in stored) for folder in artifacts)

    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "[lora] already done for config" in result.output and "[full_finetune] trained in" in result.output
    assert "[lora] trained in" not in result.output
    stored_again = objects(object_store, prefix)
    assert stored_again["results/lora.json"] == stored["results/lora.json"]  # kept, not retrained
    assert json.loads(stored_again["results.json"])["missing_runs"] == []

    again = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert again.exit_code == 0 and "[full_finetune] already done" in again.output, again.output
    assert objects(object_store, prefix)["results/full_finetune.json"] == stored_again["results/full_finetune.json"]


def test_job_report_rebuilds_from_a_prefix_and_refuses_an_empty_one(
    object_store: ObjectStore, bucket: str, store_env: dict[str, str]
) -> None:
    result = CliRunner().invoke(main, ["report", "--output-dir", f"s3://{bucket}/nothing-here"])
    assert result.exit_code == 2 and f"s3://{bucket}/nothing-here is not a folder of a previous run" in result.output
    assert objects(object_store, bucket) == {}


def run_into(config: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    return result.exit_code, result.output


def test_a_missing_bucket_exits_2_naming_it(write_config, object_store: ObjectStore, store_env, tmp_path) -> None:
    code, output = run_into(write_config(output_dir="s3://no-such-bucket-here/x"))
    assert code == 2 and "s3://no-such-bucket-here: not found" in output and "create the bucket" in output, output
    assert not object_store.filesystem().exists("no-such-bucket-here")
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()  # never taken for a local folder


def test_denied_access_exits_2_naming_the_url_and_writes_nothing(
    write_config, object_store: ObjectStore, bucket: str, store_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in object_store.environment(READER).items():
        monkeypatch.setenv(name, value)
    code, output = run_into(write_config(output_dir=f"s3://{bucket}/denied"))
    assert code == 2 and f"s3://{bucket}/denied/.write-test-" in output and "access denied" in output, output
    assert objects(object_store, bucket) == {}


def test_an_unreachable_endpoint_exits_75_naming_the_url(
    write_config, store_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port_pair()}")  # nothing listens there
    code, output = run_into(write_config(output_dir="s3://some-bucket/x"))
    assert code == 75 and "s3://some-bucket: object store unreachable or failing" in output, output
    assert "Traceback" not in output


@pytest.mark.slow  # gcsfs retries for about a minute before it gives up
def test_gs_output_goes_through_gcsfs_and_an_unreachable_endpoint_exits_75(
    write_config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{free_port_pair()}")  # gcsfs's test endpoint
    code, output = run_into(write_config(output_dir="gs://some-bucket/x"))
    assert code == 75 and "gs://some-bucket: object store unreachable or failing" in output, output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("http://example.com/out", "http:// is not supported"),
        ("s3://", "names no bucket"),
        ("gs:///prefix", "names no bucket"),
        ("s3://My_Bucket/out", "'My_Bucket' is not a valid s3:// bucket name (3-63 characters"),
        ("gs://ab/out", "'ab' is not a valid gs:// bucket name"),
        ("s3://bucket/../out", "an object-store prefix has no '.' or '..' parts"),
    ],
)
def test_output_dir_urls_other_than_a_bucket_prefix_are_refused(write_config, value: str, message: str) -> None:
    code, output = run_into(write_config(output_dir=value))
    assert code == 2 and "output_dir" in output and message in output, output


def test_a_prefix_with_doubled_or_trailing_slashes_saves_and_merges_under_one_prefix(
    write_config, object_store: ObjectStore, bucket: str, store_env
) -> None:
    """The store writes b//x as b/x: the job normalises the prefix once, so the records it saves are
    the ones its merge lists (else it trained, found "no saved run results", and retrained on every retry)."""
    config = write_config(output_dir=f"s3://{bucket}//double//", **FAST)
    code, output = run_into(config)
    assert code == 0 and f"report: s3://{bucket}/double/ernie_lora_vs_full_report.md" in output, output
    stored = objects(object_store, f"{bucket}/double")
    assert json.loads(stored["results.json"])["missing_runs"] == []
    code, output = run_into(config)
    assert code == 0 and "[lora] already done" in output and "[full_finetune] already done" in output, output


def test_objects_stored_under_a_record_name_exit_2_naming_it(object_store: ObjectStore, bucket: str, store_env) -> None:
    object_store.filesystem().pipe_file(f"{bucket}/out/results/lora.json/stray", b"{}")
    result = CliRunner().invoke(main, ["report", "--output-dir", f"s3://{bucket}/out"])
    assert result.exit_code == 2, result.output
    assert f"s3://{bucket}/out/results/lora.json is a folder (other objects are stored under" in result.output
    assert "create the bucket" not in result.output


@pytest.mark.slow
def test_a_run_stopped_mid_way_resumes_from_its_checkpoint_in_the_prefix(
    write_config, object_store: ObjectStore, bucket: str, store_env: dict[str, str]
) -> None:
    from tests.test_resume import RESUMABLE, assert_same_training

    prefix = f"{bucket}/checkpointed"
    config = write_config(output_dir=f"s3://{prefix}", strategies=["lora"], **RESUMABLE, save_steps=100)
    process, log = run_and_signal_on(config, "[lora] step 6/12", signal.SIGTERM, env=store_env)
    assert process.returncode == 143, log[-2000:]
    stored = objects(object_store, prefix)
    assert "checkpoints/lora.safetensors" in stored and "results/lora.json" not in stored

    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert f"[lora] resuming from step 6: s3://{prefix}/checkpoints/lora.safetensors" in result.output
    stored = objects(object_store, prefix)
    assert not any(name.startswith("checkpoints/") for name in stored)  # removed with the record saved
    reference = write_config(output_dir=f"s3://{prefix}-reference", strategies=["lora"], **RESUMABLE)
    assert CliRunner().invoke(main, ["run", "--config", str(reference)]).exit_code == 0
    resumed = json.loads(stored["results/lora.json"])["result"]
    assert_same_training(
        resumed, json.loads(objects(object_store, f"{prefix}-reference")["results/lora.json"])["result"]
    )
