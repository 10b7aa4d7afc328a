"""Merging run records into results.json and the report: a local folder merges under its lock, so the
last task to finish has seen every record; a lock-free output (object storage) writes nothing until
every planned run is present. Races are provoked by construction (events, and the kernel's own list of
lock waiters), never by guessing with a sleep."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import job.pipeline
from job.output.layout import LOCK_FILE, RESULTS_FILE
from job.output.storage import open_output
from job.results.records import save_result
from tests.records import records, result

LABELS = [i % 15 for i in range(200)]
REPORT = "report.md"  # the report_file of the records' config (tests.records)


def planned_records(count: int):
    runs = [result("lora", lr=5e-4, seed=s, dev_right=100, test_right=100, labels=LABELS, index=s) for s in
            range(count)]  # fmt: skip
    return records(runs, LABELS)


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.005)


def someone_waits_for(lock: Path) -> bool:
    """The kernel lists a blocked flock as '-> FLOCK ... <pid> <major>:<minor>:<inode> ...'."""
    inode = os.stat(lock).st_ino
    lines = Path("/proc/locks").read_text(encoding="ascii").splitlines()
    return any(line.split()[1] == "->" and line.split()[6].endswith(f":{inode}") for line in lines)


def test_array_tasks_merging_at_the_same_time_leave_a_complete_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Task A has read the 7 records present and is about to write results.json when task B's record
    lands and B merges. Without the lock, B writes the full merge and A's stale one lands last: B's run
    is lost. With it, B waits (seen in /proc/locks) until A is done, then merges all 8."""
    if not Path("/proc/locks").is_file():
        pytest.skip("no /proc/locks to see a waiting lock in")
    folder = tmp_path / "merge"
    output = open_output(folder)
    every = planned_records(8)
    for record in every[:7]:
        save_result(output, record)
    a_has_read, b_finished = threading.Event(), threading.Event()
    real_combine = job.pipeline.combine

    def combine(loaded, *args):
        combined = real_combine(loaded, *args)
        if threading.current_thread().name == "A":  # inside A's merge: records read, nothing written yet
            a_has_read.set()
            wait_until(lambda: b_finished.is_set() or someone_waits_for(folder / LOCK_FILE), "task B")
        return combined

    monkeypatch.setattr(job.pipeline, "combine", combine)
    errors: list[BaseException] = []

    def task_a() -> None:
        try:
            job.pipeline.write_report(output)
        except BaseException as exc:  # reported by the test's thread
            errors.append(exc)

    def task_b() -> None:
        try:
            wait_until(a_has_read.is_set, "task A")
            save_result(output, every[7])  # B's record lands while A merges
            job.pipeline.write_report(output)
        except BaseException as exc:
            errors.append(exc)
        finally:
            b_finished.set()

    tasks = [threading.Thread(target=task_a, name="A"), threading.Thread(target=task_b, name="B")]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join(timeout=300)
    assert not errors, errors
    merged = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    assert sorted(run["key"] for run in merged["runs"]) == sorted(r.result.key for r in every)
    assert merged["missing_runs"] == []
    report = (folder / REPORT).read_text(encoding="utf-8")
    assert all(f"`{record.result.key}`" in report for record in every)


def test_a_lock_free_merge_writes_nothing_until_every_planned_run_is_present(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "prefix"
    output = open_output(folder)
    every = planned_records(3)
    for record in every[:2]:
        save_result(output, record)
    assert job.pipeline.write_report(output, complete_only=True) is None
    assert "2 of 3 planned runs are in" in capsys.readouterr().err
    written = sorted(p.name for p in folder.rglob("*") if p.is_file() and p.name != LOCK_FILE)
    assert written == sorted(f"{record.result.key}.json" for record in every[:2])
    save_result(output, every[2])  # the last task's record: it writes the merge
    assert job.pipeline.write_report(output, complete_only=True) == str(folder / REPORT)
    assert json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))["missing_runs"] == []


def test_a_local_merge_with_runs_missing_writes_a_partial_report_naming_them(tmp_path: Path) -> None:
    folder = tmp_path / "local"
    output = open_output(folder)
    every = planned_records(4)
    for record in every[:2]:
        save_result(output, record)
    job.pipeline.write_report(output)
    missing = [record.result.key for record in every[2:]]
    assert json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))["missing_runs"] == missing
    report = (folder / REPORT).read_text(encoding="utf-8")
    assert f"**Partial report:** 2 planned runs have no result yet ({', '.join(missing)})" in report
