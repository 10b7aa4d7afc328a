"""The package's shape: no import cycles (every import statement counted), strategy names written
only in the registry, and a new strategy added by registering it alone: its runs appear in the plan,
the report and results.json."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from job.training.strategies import STRATEGY_NAMES
from tests import import_graph

ROOT = Path(__file__).resolve().parents[1]


def test_the_job_package_has_no_import_cycle() -> None:
    assert import_graph.cycles(import_graph.graph()) == []


def test_imports_run_only_downwards_through_the_layers() -> None:
    assert import_graph.upward_imports(import_graph.graph()) == []
    assert import_graph.upward_imports({"job.data.sources": {"job.training.model"}}) == [
        "job.data.sources -> job.training.model"
    ]


def test_the_cycle_check_counts_imports_inside_functions_and_under_type_checking(tmp_path: Path) -> None:
    package = tmp_path / "job"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from job.b import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from job import c\n")
    (package / "c.py").write_text("from . import a\n")
    (package / "d.py").write_text("import job.a\n")
    assert import_graph.cycles(import_graph.graph(package)) == [["job.a", "job.b", "job.c"]]


def test_no_module_but_the_registry_writes_a_strategy_name() -> None:
    found = []
    for path in sorted((ROOT / "job").rglob("*.py")):
        if path.name == "strategies.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in STRATEGY_NAMES:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []


# A throw-away strategy, registered before the job's modules are imported, exactly as a new entry of
# job.training.strategies.STRATEGIES would be: only the LayerNorm weights and the classifier head train.
THIRD_STRATEGY = """
import sys
import job.training.strategies as registry
from job.training.strategies import FullFinetune

class NormOnly(FullFinetune):
    name = "norm_only"
    title = "norm-only"
    is_baseline = False
    in_default_plan = False
    step_passes = 2

    def label(self, run):
        return f"norm_only (lr={run.learning_rate:g})"

    def prepare(self, loaded, run):
        for name, parameter in loaded.model.named_parameters():
            parameter.stop_gradient = not (name in loaded.head_parameter_names or "norm" in name)
        return loaded.model

registry.STRATEGIES = {**registry.STRATEGIES, "norm_only": NormOnly()}
registry.STRATEGY_NAMES = tuple(registry.STRATEGIES)
from job.cli import main
main(sys.argv[1:], prog_name="job")
"""


def test_a_strategy_added_to_the_registry_alone_gets_its_keys_runs_rows_and_records(
    write_config, tmp_path: Path
) -> None:
    config = write_config(strategies=["lora", "norm_only", "full_finetune"], norm_only_learning_rate=0.01,
                          num_epochs=1, max_train_samples=64, max_eval_samples=32)  # fmt: skip

    def job(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", THIRD_STRATEGY, *args], cwd=ROOT, capture_output=True, text=True,
                              check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip

    plan = job("plan", "--config", str(config))
    assert plan.returncode == 0, plan.stderr
    assert " 1  norm_only " in plan.stdout and "strategy=norm_only lr=0.01 " in plan.stdout
    reference = job("config-reference")
    assert "norm_only_learning_rate" in reference.stdout and "norm-only's own batch size" in reference.stdout
    run = job("run", "--config", str(config))
    assert run.returncode == 0, run.stderr[-3000:]
    out = tmp_path / "out"
    combined = json.loads((out / "results.json").read_text(encoding="utf-8"))
    norm_only = next(r for r in combined["runs"] if r["strategy"] == "norm_only")
    assert norm_only["learning_rate"] == 0.01 and norm_only["trainable_params"] < norm_only["total_params"] / 10
    assert [row["strategy"] for row in combined["headline"]] == ["lora", "full_finetune", "norm_only"]  # registry order
    assert combined["comparison"]["labels"].keys() == {"lora", "full_finetune"}  # the verdict: LoRA against full FT
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "| norm_only (lr=0.01) |" in report
