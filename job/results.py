"""Result records: one typed schema for what a run measured and for results.json, written and read
through the same pydantic models. One JSON file per run (results/<key>.json), written whole (job.storage)
as soon as that run finishes, so `job report` can merge them and a killed run never leaves half a file.
Run-level facts (versions, commit, device, data) are gathered here too."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from job.config import JobConfig, StrategyName
from job.data import Splits
from job.device import DeviceChoice, cpu_vendor, strided_views
from job.errors import UserError
from job.layout import RESULTS_FOLDER
from job.stats import encode_classes
from job.storage import Output
from job.strategies import STRATEGY_NAMES

SCHEMA_VERSION = 4  # 2: grid runs (seed, learning rate), predictions, macro-F1, comparison; 3: sample; 4: eval batch


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# ---------------------------------------------------------------- one run


class SplitResult(Record):
    accuracy: float
    loss: float  # mean cross-entropy per example
    examples: int
    macro_f1: float
    per_class_accuracy: list[float | None]  # by class id; None where the split has no example of it
    predictions: str  # predicted class id per example, in the split's order (job.stats.encode_classes)


class RunResult(Record):
    key: str
    index: int  # position in the run plan (the array task index)
    group: str  # headline row
    strategy: StrategyName
    label: str
    seed: int
    learning_rate: float
    batch_size: int
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # training; evaluation is fp32 (older records: fp32)
    eval_batch_size: int  # as resolved for the device (config `auto`: job.device.resolve_eval_batch_size)
    dropout: str = "paddle"  # the dropout training used (job.dropout; older records: Paddle's)
    lora_r: int | None
    lora_alpha: int | None
    initial_weights: str  # fingerprint of the weights training started from
    sample: str  # identity of the train, dev and test rows the run saw (job.data.Splits.identity)
    trainable_params: int
    total_params: int
    training_seconds: float
    steps: int
    samples_per_second: float
    tokens_per_second: float
    peak_memory_mb: float
    optimizer_state_mb: float
    checkpoint_mb: float
    dev: SplitResult
    test: SplitResult
    step_losses: list[float]
    reinitialised_parameters: list[str]
    artifacts: list[str]
    finished_at: str


# ---------------------------------------------------------------- what every run of a process shares


class SplitFacts(Record):
    source: str
    examples: int
    labels: str | None = None  # gold class ids (dev and test), in the split's order


class DataFacts(Record):
    train: SplitFacts
    dev: SplitFacts
    test: SplitFacts
    sample_seed: int
    files: dict[str, str]  # file -> sha256 (or PaddleNLP's md5 note)


class DeviceFacts(Record):
    name: str
    description: str
    reason: str


class CpuFacts(Record):
    vendor: str
    strided_views: bool


class RunFacts(Record):
    config: dict[str, Any]
    config_hash: str
    planned_runs: list[str]  # every run key of this config's plan, in order
    device: DeviceFacts
    data: DataFacts
    versions: dict[str, str]
    git_commit: str | None
    threads: dict[str, str | None]
    cpu: CpuFacts
    uid: int | None  # the user the job ran as (never 0 in the images)


class ResultRecord(Record):
    """results/<key>.json"""

    schema_version: Literal[4] = SCHEMA_VERSION
    run: RunFacts
    result: RunResult


# ---------------------------------------------------------------- results.json


class Stat(Record):
    mean: float
    std: float  # sample standard deviation over seeds (0 for one seed)
    n: int


class HeadlineRow(Record):
    """One strategy (and LoRA shape) at the learning rate with the best mean dev accuracy."""

    group: str
    strategy: StrategyName
    label: str
    learning_rate: float
    keys: list[str]  # the runs (one per seed) behind the row
    seeds: list[int]
    dev_accuracy_by_rate: dict[str, float]  # mean dev accuracy of each rate tried: how the rate was chosen
    trainable_params: int
    total_params: int
    training_seconds: Stat
    dev_accuracy: Stat
    test_accuracy: Stat
    dev_loss: Stat
    test_loss: Stat
    dev_macro_f1: Stat
    test_macro_f1: Stat
    test_per_class_accuracy: list[float | None]  # mean over seeds
    step_losses: list[float]  # mean over seeds, per step


class Comparison(Record):
    """The selected LoRA row against the selected full fine-tuning row, on the same test titles."""

    selected: dict[str, list[str]]  # strategy -> the run keys compared (one per seed)
    labels: dict[str, str]
    seeds: list[int]
    test_examples: int
    accuracy_difference: float  # LoRA minus full fine-tuning, mean over seeds
    accuracy_difference_ci95: tuple[float, float]
    bootstrap_resamples: int
    bootstrap_seed: int
    mcnemar_p: dict[str, float]  # seed -> exact two-sided p
    discordant: dict[str, tuple[int, int]]  # seed -> (only LoRA right, only full fine-tuning right)
    significant: bool  # the interval excludes 0 and McNemar p < 0.05 on most seeds
    verdict: str


class Combined(Record):
    schema_version: Literal[4] = SCHEMA_VERSION
    run: RunFacts
    headline: list[HeadlineRow]
    comparison: Comparison | None
    missing_runs: list[str] = Field(default_factory=list)  # planned but not (yet) in the folder
    runs: list[RunResult]


# ---------------------------------------------------------------- files


def result_name(key: str) -> str:
    return f"{RESULTS_FOLDER}/{key}.json"


def save_result(output: Output, record: ResultRecord) -> str:
    return output.write_text(result_name(record.result.key), record.model_dump_json(indent=2) + "\n")


def read_record(name: str, content: bytes) -> ResultRecord:
    """One results/<key>.json, validated; a file that is not a record of this schema is a UserError
    naming the file and the first field at fault."""
    try:
        text = content.decode("utf-8")
        data = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{name} is not a result file of this job: {exc}") from None
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{name} was written by another version of this job (result schema {version}, this job reads "
            f"{SCHEMA_VERSION}); move it away or use another output_dir"
        )
    try:
        return ResultRecord.model_validate_json(text)  # JSON mode: arrays are tuples, nothing else coerced
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise UserError(f"{name} is not a result file of this job: field '{field}': {error['msg']}") from None


def read_records(output: Output) -> dict[str, ResultRecord]:
    """Every record in the output's results folder, by name, validated (see read_record)."""
    return {name: read_record(name, content) for name, content in output.record_files().items()}


def load_results(output: Output, config_hash: str | None = None) -> list[ResultRecord]:
    """Every saved record of the output. With `config_hash`, records of other configs are skipped (with
    a message); without it, they must all come from one config. Ordered as the run plan."""
    records = read_records(output)
    folder = output.where(RESULTS_FOLDER)
    if config_hash is not None:
        for file in [f for f, r in records.items() if r.run.config_hash != config_hash]:
            print(f"ignoring {file}: it comes from another config", file=sys.stderr)
            del records[file]
    if not records:
        raise UserError(f"no saved run results in {folder}; run `python -m job run` first")
    hashes = {record.run.config_hash for record in records.values()}
    if len(hashes) > 1:
        listing = ", ".join(f"{f.rsplit('/', 1)[-1]}={r.run.config_hash}" for f, r in records.items())
        raise UserError(f"results in {folder} come from different configs ({listing}); rerun or remove the stale ones")
    return sorted(records.values(), key=lambda record: row_order(record.result))


def row_order(result: RunResult) -> tuple[int, int, int, int]:
    """As the run plan: strategies in the registry's order (LoRA first), a rank sweep by rank, then
    the plan index (learning rate, seed)."""
    return STRATEGY_NAMES.index(result.strategy), result.lora_r or 0, result.lora_alpha or 0, result.index


# ---------------------------------------------------------------- what the run records about itself


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for package in ("paddlepaddle", "paddlepaddle-gpu", "paddlenlp"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def git_commit() -> str | None:
    """The project's commit: from the image (JOB_GIT_COMMIT) or a git checkout, else None."""
    if os.environ.get("JOB_GIT_COMMIT"):
        return os.environ["JOB_GIT_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def current_uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run_facts(
    config: JobConfig, planned: list[str], device: DeviceChoice, splits: Splits, files: dict[str, str]
) -> RunFacts:
    """What every run of this process shares: config, plan, device, data, versions."""
    split_facts = {
        split.name: SplitFacts(
            source=split.source,
            examples=len(split),
            labels=encode_classes([e.label for e in split.examples]) if split.name != "train" else None,
        )
        for split in splits.all()
    }
    return RunFacts(
        config=config.model_dump(),
        config_hash=config.config_hash(),
        planned_runs=planned,
        device=DeviceFacts(name=device.name, description=device.description, reason=device.reason),
        data=DataFacts(**split_facts, sample_seed=config.sample_seed(), files=files),
        versions=package_versions(),
        git_commit=git_commit(),
        threads={key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")},
        cpu=CpuFacts(vendor=cpu_vendor(), strided_views=strided_views()),
        uid=current_uid(),
    )
