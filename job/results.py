"""Result records: one JSON file per strategy, written atomically as soon as that strategy finishes,
so `job report` can merge them, and a killed run never leaves a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from job.config import STRATEGY_NAMES
from job.errors import UserError

RESULTS_FOLDER = "results"
RESULTS_FILE = "results.json"


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)  # readable by the host user when written from a container
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def strategy_result_path(output_dir: Path, strategy: str) -> Path:
    return output_dir / RESULTS_FOLDER / f"{strategy}.json"


def save_strategy_result(output_dir: Path, record: dict[str, Any]) -> Path:
    path = strategy_result_path(output_dir, record["result"]["key"])
    write_json(path, record)
    return path


def finished_result(output_dir: Path, key: str, config_hash: str) -> Path | None:
    """The saved result file of run `key` for this config hash, if there is one."""
    path = strategy_result_path(output_dir, key)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return path if record["run"]["config_hash"] == config_hash else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


@contextlib.contextmanager
def output_lock(output_dir: Path) -> Iterator[None]:
    """An exclusive lock on output_dir (flock: works across processes and containers sharing a volume)."""
    import fcntl

    output_dir.mkdir(parents=True, exist_ok=True)
    with (output_dir / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_strategy_results(output_dir: Path, config_hash: str | None = None) -> list[dict[str, Any]]:
    """Every saved per-strategy record in output_dir. With `config_hash`, records of other configs are
    skipped (with a message); without it, they must all come from one config."""
    folder = output_dir / RESULTS_FOLDER
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    records = {file: _read_record(file) for file in files}
    if config_hash is not None:
        for file in [f for f, r in records.items() if r["run"]["config_hash"] != config_hash]:
            print(f"ignoring {file}: it comes from another config", file=sys.stderr)
            del records[file]
    if not records:
        raise UserError(f"no saved strategy results in {folder}; run `python -m job run` first")
    hashes = {record["run"]["config_hash"] for record in records.values()}
    if len(hashes) > 1:
        listing = ", ".join(f"{f.name}={r['run']['config_hash']}" for f, r in records.items())
        raise UserError(f"results in {folder} come from different configs ({listing}); rerun or remove the stale ones")
    return sorted(records.values(), key=lambda record: row_order(record["result"]))


def row_order(result: dict[str, Any]) -> tuple[int, int, int]:
    """LoRA rows first (a sweep by rank, then alpha), then full fine-tuning, as in the seed report."""
    return STRATEGY_NAMES.index(result["strategy"]), result.get("lora_r") or 0, result.get("lora_alpha") or 0


def _read_record(file: Path) -> dict[str, Any]:
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
        _ = record["run"]["config_hash"], record["result"]["strategy"], record["result"]["key"]  # fail early
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"{file} is not a result file of this job: {exc}") from None
    if record["result"]["strategy"] not in STRATEGY_NAMES:
        raise UserError(f"{file}: unknown strategy {record['result']['strategy']!r}")
    return record


def combined_results(records: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json: the run's metadata once, then every strategy's numbers."""
    run = dict(records[0]["run"])
    strategies = dict.fromkeys(record["result"]["strategy"] for record in records)
    run["config"] = {**run["config"], "strategies": list(strategies)}
    return {"run": run, "strategies": [record["result"] for record in records]}
