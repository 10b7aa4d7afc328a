"""Result records: one JSON file per strategy, written atomically as soon as that strategy finishes,
so `job report` can merge them, and a killed run never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
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
    path = strategy_result_path(output_dir, record["result"]["strategy"])
    write_json(path, record)
    return path


def load_strategy_results(output_dir: Path) -> list[dict[str, Any]]:
    """Every saved per-strategy record in output_dir, checked to come from one config."""
    folder = output_dir / RESULTS_FOLDER
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        raise UserError(f"no saved strategy results in {folder}; run `python -m job run` first")
    records = []
    for file in files:
        try:
            records.append(json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{file} is not a valid result file: {exc}") from None
    hashes = {record["run"]["config_hash"] for record in records}
    if len(hashes) > 1:
        listing = ", ".join(f"{f.name}={r['run']['config_hash']}" for f, r in zip(files, records, strict=True))
        raise UserError(f"results in {folder} come from different configs ({listing}); rerun or remove the stale ones")
    return sorted(records, key=lambda record: STRATEGY_NAMES.index(record["result"]["strategy"]))


def combined_results(records: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json: the run's metadata once, then every strategy's numbers."""
    run = dict(records[0]["run"])
    run["config"] = {**run["config"], "strategies": [record["result"]["strategy"] for record in records]}
    return {"run": run, "strategies": [record["result"] for record in records]}
