"""Experiment tracking (`report_to`): each run's training loss and learning rate per step, dev accuracy and
loss at each evaluation, and its final figures, for VisualDL (output_dir/vdl/<run>), TensorBoard
(output_dir/tensorboard/<run>, event files a stock TensorBoard reads, written by tensorboardX) and MLflow
(a run per job run in a tracking store; the report and results.json as artifacts of a run named for the
report). Only rank 0 of a data-parallel launch writes."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from job.config.plan import Run
from job.config.schema import JobConfig
from job.errors import Interrupted, RetryableError, UserError
from job.output.layout import MLFLOW_ARTIFACTS_FOLDER, MLFLOW_DATABASE, TENSORBOARD_FOLDER, VISUALDL_FOLDER
from job.output.log import say
from job.output.storage import LocalOutput, Output
from job.results.schema import RunResult
from job.runtime.ranks import Ranks

EXPERIMENT = "ernie-lora-vs-full"  # MLflow's experiment unless MLFLOW_EXPERIMENT_NAME names one
INSTALL = {"visualdl": "visualdl", "tensorboard": "tensorboardX", "mlflow": "mlflow-skinny sqlalchemy alembic"}


class RunLog:
    """One run's scalars, sent to every tracker the config names (none: every call does nothing). A tracker
    that fails mid-run (its server gone) is dropped with one line: the run trains on and its record holds
    every scalar anyway."""

    def __init__(self, writers: list[Any] | None = None) -> None:
        self.writers = writers or []

    def _send(self, step: int, values: dict[str, float]) -> None:
        for writer in list(self.writers):
            try:
                writer.scalars(step, values)
            except Exception as exc:
                self.writers.remove(writer)
                say(f"warning: {type(writer).__name__} failed at step {step} ({type(exc).__name__}: "
                    f"{str(exc)[:200]}); the run goes on without it (results.json has every scalar)")  # fmt: skip

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        self._send(step, {"train/loss": loss, "train/learning_rate": learning_rate})

    def evaluated(self, step: int, accuracy: float, loss: float) -> None:
        self._send(step, {"dev/accuracy": accuracy, "dev/loss": loss})

    def finished(self, result: RunResult) -> None:
        final = {
            "test/accuracy": result.test.accuracy, "test/macro_f1": result.test.macro_f1,
            "train/samples_per_second": result.samples_per_second, "train/seconds": result.training_seconds,
            "memory/peak_mb": result.peak_memory_mb,
        }  # fmt: skip
        self._send(result.steps, final)


class VisualDL:
    def __init__(self, folder: Path) -> None:
        from visualdl import LogWriter

        self.writer = LogWriter(logdir=str(folder))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag=tag, step=step, value=value)

    def close(self, failed: BaseException | None) -> None:
        self.writer.close()


class TensorBoard:
    def __init__(self, folder: Path) -> None:
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(folder))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed: BaseException | None) -> None:
        self.writer.close()


class MLflow:
    """A run in the tracking store, named and tagged by the job's run key and config hash: a resumed run
    (job.training.resume) logs on into the run it began."""

    def __init__(self, config: JobConfig, output: Output, run: Run) -> None:
        from mlflow.entities import Param

        self.client, experiment = mlflow_experiment(config, output)
        tags = {"job.run": run.key, "job.config_hash": config.config_hash(), "job.strategy": run.strategy.name}
        self.run_id = (
            reusable_run(self.client, experiment, tags)
            or self.client.create_run(experiment, run_name=run.key, tags=tags).info.run_id
        )
        settings = run.settings
        params = {"strategy": run.strategy.name, "seed": run.seed, "learning_rate": settings.learning_rate,
                  "batch_size": settings.batch_size, "num_epochs": settings.num_epochs, "max_steps": settings.max_steps,
                  "gradient_accumulation_steps": settings.accumulation, "precision": settings.precision,
                  "max_seq_length": config.max_seq_length, "model_name": config.model_name,
                  "lora_r": run.lora.r if run.lora else None,
                  "lora_alpha": run.lora.alpha if run.lora else None}  # fmt: skip
        known = self.client.get_run(self.run_id).data.params
        fresh = [Param(name, str(value)) for name, value in params.items() if name not in known]
        self.client.log_batch(self.run_id, params=fresh)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(tag, float(value), now, step) for tag, value in values.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def close(self, failed: BaseException | None) -> None:
        status = "FINISHED" if failed is None else "KILLED" if isinstance(failed, Interrupted) else "FAILED"
        self.client.set_terminated(self.run_id, status=status)


def reusable_run(client: Any, experiment: str, tags: dict[str, str]) -> str | None:
    """The latest unfinished MLflow run with these tags (a run the job began and was stopped in)."""
    query = " and ".join(f"tags.`{name}` = '{value}'" for name, value in tags.items())
    found = client.search_runs([experiment], query, order_by=["attributes.start_time DESC"], max_results=5)
    unfinished = [run for run in found if run.info.status != "FINISHED"]
    return unfinished[0].info.run_id if unfinished else None


def tracking_uri(output: Output) -> str:
    """MLFLOW_TRACKING_URI when set (a tracking server: what array tasks on several nodes need), else an
    SQLite store in a local output_dir."""
    given = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if given:
        return given
    if not isinstance(output, LocalOutput):
        raise UserError(
            f"config key 'report_to': mlflow with output_dir {output.where()} needs a tracking server: set "
            "MLFLOW_TRACKING_URI (an SQLite store is kept only in a local output_dir)"
        )
    return f"sqlite:///{output.inside(MLFLOW_DATABASE).resolve()}"


def mlflow_experiment(config: JobConfig, output: Output) -> tuple[Any, str]:
    """The client and the experiment's id (created when missing; its artifacts in output_dir/mlartifacts
    with the local store)."""
    for name in ("mlflow", "alembic", "databricks"):  # MLflow's store setup logs each migration at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(output)
    client = MlflowClient(tracking_uri=uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "").strip() or EXPERIMENT
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return client, experiment.experiment_id
    location = None
    if not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        location = output.inside(MLFLOW_ARTIFACTS_FOLDER).resolve().as_uri()  # type: ignore[attr-defined]
    return client, client.create_experiment(name, artifact_location=location)


def check_trackers(config: JobConfig, output: Output) -> None:
    """Before any run trains: every tracker of `report_to` can be imported, and MLflow has a store."""
    modules = {"visualdl": "visualdl", "tensorboard": "tensorboardX", "mlflow": "mlflow"}
    for tracker in config.report_to:
        try:
            __import__(modules[tracker])
        except ImportError as exc:
            raise UserError(f"config key 'report_to': {tracker} is not installed here ({exc}); install it with "
                            f"`pip install {INSTALL[tracker]}`, or drop it from report_to") from None  # fmt: skip
    if "mlflow" in config.report_to:
        tracking_uri(output)


def open_tracking_store(config: JobConfig, output: Output) -> None:
    """After output_dir exists and before any run trains: MLflow's store answers and holds the experiment.
    A store that cannot be reached exits 75 (a retry may find it up), naming it."""
    if "mlflow" not in config.report_to:
        return
    try:
        mlflow_experiment(config, output)
    except UserError:
        raise
    except Exception as exc:
        raise RetryableError(f"config key 'report_to': the MLflow tracking store {tracking_uri(output)} cannot be "
                             f"reached or written ({type(exc).__name__}: {str(exc)[:300]})") from None  # fmt: skip


@contextlib.contextmanager
def run_log(config: JobConfig, output: Output, run: Run, ranks: Ranks) -> Iterator[RunLog]:
    """The trackers of `report_to` for one run (rank 0 only), closed when the run ends: an MLflow run is
    then FINISHED, KILLED (stopped by a signal) or FAILED. On object storage the VisualDL and TensorBoard
    folders are uploaded when the run ends."""
    if not (config.report_to and ranks.is_main):
        yield RunLog()
        return
    with contextlib.ExitStack() as stack:
        writers: list[Any] = []
        for tracker in config.report_to:
            if tracker == "visualdl":
                writers.append(VisualDL(stack.enter_context(output.folder(f"{VISUALDL_FOLDER}/{run.key}"))))
            elif tracker == "tensorboard":
                writers.append(TensorBoard(stack.enter_context(output.folder(f"{TENSORBOARD_FOLDER}/{run.key}"))))
            else:
                writers.append(MLflow(config, output, run))
        failed: BaseException | None = None
        try:
            yield RunLog(writers)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            for writer in writers:
                with contextlib.suppress(Exception):  # a tracker that fails to close never hides the run's outcome
                    writer.close(failed)


def log_report(config: JobConfig, output: Output, files: dict[str, str]) -> None:
    """With MLflow in `report_to`: the report and results.json as artifacts of one MLflow run per config
    (named for the report; a rewritten report replaces them)."""
    if "mlflow" not in config.report_to:
        return
    import tempfile

    client, experiment = mlflow_experiment(config, output)
    tags = {"job.report": config.report_file, "job.config_hash": config.config_hash()}
    query = " and ".join(f"tags.`{name}` = '{value}'" for name, value in tags.items())
    found = client.search_runs([experiment], query, max_results=1)
    run_id = found[0].info.run_id if found else client.create_run(experiment, run_name="report", tags=tags).info.run_id
    with tempfile.TemporaryDirectory(prefix="job-mlflow-") as folder:
        for name, text in files.items():
            path = Path(folder) / name
            path.write_text(text, encoding="utf-8")
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status="FINISHED")
