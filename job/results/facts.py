"""What a run records about the process that made it: config, plan, device, data, package versions,
the commit, thread settings, the UID."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

from job.config.schema import JobConfig
from job.data.sources import RawSplits, Splits
from job.results.schema import CpuFacts, DataFacts, DeviceFacts, RunFacts, SplitFacts
from job.results.stats import encode_classes
from job.runtime.cpu import cpu_vendor
from job.runtime.device import DeviceChoice, strided_views


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


def run_facts(config: JobConfig, planned: list[str], device: DeviceChoice, splits: Splits, raw: RawSplits) -> RunFacts:
    """What every run of this process shares: config, plan, device, data, versions."""
    classes = len(raw.labels)
    split_facts = {
        split.name: SplitFacts(
            source=split.source,
            examples=len(split),
            labels=None if split.name == "train" else encode_classes([e.label for e in split.examples], classes),
        )
        for split in splits.all()
    }
    return RunFacts(
        config=config,
        config_hash=config.config_hash(),
        planned_runs=planned,
        device=DeviceFacts(name=device.name, description=device.description, reason=device.reason),
        data=DataFacts(
            **split_facts,
            sample_seed=config.sample_seed(),
            files=raw.files,
            labels=list(raw.labels.names),
            label_descriptions=list(raw.labels.descriptions) if raw.labels.descriptions else None,
        ),
        versions=package_versions(),
        git_commit=git_commit(),
        threads={key: os.environ.get(key) for key in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")},
        cpu=CpuFacts(vendor=cpu_vendor(), strided_views=strided_views()),
        uid=current_uid(),
    )
