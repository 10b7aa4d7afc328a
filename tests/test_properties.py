"""Property-based: whatever a record file or a path key holds, only the job's own errors come out
(exit 0, 2 or 75, never a traceback), and nothing is written outside the folders given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from job.cli import main
from tests.fixtures import run_tiny

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=10,
)
# Relative, path-like text: separators, dots, spaces, a NUL, non-ASCII; never an absolute path.
PATH_TEXT = st.text(alphabet="ab./\\ ~-_é\0", min_size=1, max_size=12).filter(lambda p: not p.startswith(("/", "\\")))


@pytest.fixture(scope="module")
def record(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tnews_dir: Path) -> dict:
    out = run_tiny(tmp_path_factory.mktemp("record"), tiny_model, tnews_dir, num_epochs=1, max_train_samples=32,
                   max_eval_samples=16, strategies=["lora"])  # fmt: skip
    return json.loads((out / "results" / "lora.json").read_text(encoding="utf-8"))


def corrupt(record: dict, path: list[str], value: object, delete: bool) -> dict:
    """The record with the value at `path` (as far as it leads) replaced or deleted."""
    copy = json.loads(json.dumps(record))
    node = copy
    for key in path[:-1]:
        if not isinstance(node, dict) or key not in node or not isinstance(node[key], dict):
            break
        node = node[key]
    if isinstance(node, dict) and node:
        target = path[-1] if path[-1] in node else sorted(node)[len(path) % len(node)]
        if delete:
            del node[target]
        else:
            node[target] = value
    return copy


def listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.lists(
        st.sampled_from(
            [
                "run",
                "result",
                "dev",
                "test",
                "data",
                "config",
                "key",
                "strategy",
                "seed",
                "config_hash",
                "step_losses",
                "predictions",
                "labels",
                "schema_version",
            ]
        ),
        min_size=1,
        max_size=3,
    ),
    value=JSON_VALUES,
    delete=st.booleans(),
    cut=st.one_of(st.none(), st.integers(min_value=0, max_value=4000)),
)
def test_job_report_on_any_corrupted_record_gives_only_the_jobs_own_errors(
    record: dict, tmp_path_factory: pytest.TempPathFactory, path, value, delete, cut
) -> None:
    base = tmp_path_factory.mktemp("report")
    folder = base / "out"
    (folder / "results").mkdir(parents=True)
    text = json.dumps(corrupt(record, path, value, delete))
    (folder / "results" / "lora.json").write_text(text if cut is None else text[:cut], encoding="utf-8")
    result = CliRunner().invoke(main, ["report", "--output-dir", str(folder)])
    assert result.exit_code in (0, 2, 75), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert listing(base) <= {"out", *(f"out/{name}" for name in listing(folder))}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["model_name", "data_dir", "output_dir", "report_file"]), value=PATH_TEXT)
def test_run_and_validate_with_any_path_like_value_give_only_the_jobs_own_errors(
    tmp_path_factory: pytest.TempPathFactory, key: str, value: str
) -> None:
    base = tmp_path_factory.mktemp("paths")
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=base) as cwd:
        # No model can load from a missing folder: `run` must stop before training, whatever the key.
        options = ["--set", f"{key}={json.dumps(value)}"]
        if key != "model_name":
            options += ["--set", "model_name=./no-model-here"]
        before = set(os.listdir(base))
        for command in ("validate", "run"):
            result = runner.invoke(main, [command, *options])
            assert result.exit_code in (0, 2, 75), (command, result.output)
            assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
            assert "Traceback" not in result.output
        assert set(os.listdir(base)) == before  # nothing beside the working folder
        assert list(Path(cwd).iterdir()) == []  # a run that stopped on bad input left nothing, not even folders
