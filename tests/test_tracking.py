"""Experiment tracking (`report_to`), read back by each tracker's own reader: TensorBoard's event
accumulator on the event files, MLflow's client on its store; VisualDL's reader is in test_predict."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from tests.fixtures import run_and_signal_on

pytestmark = pytest.mark.timeout(600)

TRACKED = {"num_epochs": 1, "max_train_samples": 96, "max_eval_samples": 48, "eval_steps": 3, "warmup_ratio": 0.0}


def mlflow_client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def records(out: Path) -> dict[str, dict]:
    return {run["key"]: run for run in json.loads((out / "results.json").read_text(encoding="utf-8"))["runs"]}


def test_tensorboard_and_mlflow_hold_each_runs_losses_rates_and_scores(write_config, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = write_config(**TRACKED, report_to=["tensorboard", "mlflow"])
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    runs = records(out)
    assert set(runs) == {"lora", "full_finetune"}

    for key, record in runs.items():
        events = EventAccumulator(str(out / "tensorboard" / key))
        events.Reload()
        losses = [event.value for event in events.Scalars("train/loss")]
        assert losses == pytest.approx(record["step_losses"], rel=1e-6)
        assert [event.step for event in events.Scalars("train/loss")] == list(range(1, record["steps"] + 1))
        rates = [event.value for event in events.Scalars("train/learning_rate")]
        assert rates[0] == pytest.approx(record["learning_rate"]) and rates[-1] < rates[0]  # linear decay
        dev = {event.step: event.value for event in events.Scalars("dev/accuracy")}
        assert dev == pytest.approx({point["step"]: point["accuracy"] for point in record["dev_curve"]})
        (test,) = events.Scalars("test/accuracy")
        assert test.value == pytest.approx(record["test"]["accuracy"])
        (speed,) = events.Scalars("train/samples_per_second")
        assert speed.value == pytest.approx(record["samples_per_second"])

    client = mlflow_client(out)
    experiment = client.get_experiment_by_name("ernie-lora-vs-full")
    found = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    assert set(found) == {"lora", "full_finetune", "report"}
    for key, record in runs.items():
        tracked = found[key]
        assert tracked.info.status == "FINISHED"
        assert (
            tracked.data.tags["job.config_hash"] == json.loads((out / "results.json").read_text())["run"]["config_hash"]
        )
        assert float(tracked.data.params["learning_rate"]) == record["learning_rate"]
        assert tracked.data.params["strategy"] == record["strategy"]
        history = client.get_metric_history(tracked.info.run_id, "train/loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            record["step_losses"], rel=1e-6
        )
        assert tracked.data.metrics["test/accuracy"] == pytest.approx(record["test"]["accuracy"])
    report = found["report"].info.run_id
    assert sorted(a.path for a in client.list_artifacts(report)) == ["ernie_lora_vs_full_report.md", "results.json"]
    copy = Path(client.download_artifacts(report, "results.json", str(tmp_path)))
    assert copy.read_bytes() == (out / "results.json").read_bytes()

    again = CliRunner().invoke(main, ["report", "--output-dir", str(out)])  # a rewritten report replaces them
    assert again.exit_code == 0, again.output
    assert len(client.search_runs([experiment.experiment_id], "attributes.run_name = 'report'")) == 1


def test_a_stopped_run_is_killed_in_mlflow_and_its_resumed_run_logs_on_into_it(write_config, tmp_path: Path) -> None:
    config = write_config(**{**TRACKED, "max_steps": 12, "logging_steps": 1}, strategies=["lora"], report_to="mlflow",
                          save_minutes=None, save_steps=100)  # fmt: skip
    process, log = run_and_signal_on(config, "[lora] step 6/12", signal.SIGTERM)
    assert process.returncode == 143, log[-3000:]
    out = tmp_path / "out"
    client = mlflow_client(out)
    experiment = client.get_experiment_by_name("ernie-lora-vs-full").experiment_id
    (stopped,) = client.search_runs([experiment])
    assert stopped.info.status == "KILLED"

    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0 and "[lora] resuming from step 6" in result.output, result.output
    runs = {run.info.run_name: run for run in client.search_runs([experiment])}
    assert set(runs) == {"lora", "report"} and runs["lora"].info.run_id == stopped.info.run_id
    assert runs["lora"].info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(stopped.info.run_id, "train/loss")})
    assert steps == list(range(1, 13))


def test_visualdl_true_is_report_to_visualdl_and_a_missing_tracker_exits_2_before_training(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from job.config.schema import JobConfig

    assert JobConfig.model_validate({"visualdl": True, "report_to": "mlflow"}).report_to == ["mlflow", "visualdl"]
    assert JobConfig.model_validate({"visualdl": False}).report_to == []
    assert "visualdl" not in JobConfig().model_dump()

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # `import tensorboardX` raises ImportError
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(report_to="tensorboard"))])
    assert result.exit_code == 2, result.output
    assert "config key 'report_to': tensorboard is not installed here" in result.output
    assert "pip install tensorboardX" in result.output and not (tmp_path / "out").exists()


def test_mlflow_with_an_object_store_output_needs_a_tracking_server(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_config(report_to=["mlflow"], output_dir="s3://bucket/prefix")
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "mlflow with output_dir s3://bucket/prefix needs a tracking server: set MLFLOW_TRACKING_URI" in result.output


def test_an_mlflow_server_that_does_not_answer_exits_75_naming_it_before_training(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's own retries, minutes by default
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(report_to="mlflow"))])
    assert result.exit_code == 75, result.output
    assert f"the MLflow tracking store http://127.0.0.1:{port} cannot be reached" in result.output
    assert "step 1/" not in result.output and not (tmp_path / "out" / "results").exists()


def test_a_tracker_that_fails_mid_run_is_dropped_with_a_line_and_the_run_finishes(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from job.results import tracking

    calls = []

    def failing(self, step: int, values: dict) -> None:
        calls.append(step)
        if step >= 3:
            raise ConnectionError("tracking server went away")

    monkeypatch.setattr(tracking.TensorBoard, "scalars", failing)
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(**TRACKED, report_to="tensorboard"))])
    assert result.exit_code == 0, result.output
    assert (
        result.output.count("warning: TensorBoard failed at step 3 (ConnectionError: tracking server went away)") == 2
    )
    assert calls.count(3) == 2 and max(calls) == 3  # each run's writer dropped at its failure, never called again
    assert len(records(tmp_path / "out")) == 2
