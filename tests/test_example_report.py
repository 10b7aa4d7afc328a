"""The example report (docs/example-report) and every excerpt of it in the docs: what this version of
the code builds from the example's committed records, so the docs cannot drift from the report's format;
and the example answers the question on a model where LoRA learns (the pretrained stand-in)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from job.example import (
    EXAMPLE,
    REPORT,
    body,
    doc_pages,
    marked_blocks,
    plan_blocks,
    report_excerpts,
)
from job.output.storage import open_output
from job.pipeline import write_report

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLE_DIR = DOCS / EXAMPLE


def example_report() -> str:
    return body((EXAMPLE_DIR / REPORT).read_text(encoding="utf-8"))


def records() -> list[dict]:
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted((EXAMPLE_DIR / "results").glob("*.json"))]


@pytest.mark.timeout(120)
def test_the_example_report_is_the_one_this_version_builds_from_its_records(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE_DIR / "results", tmp_path / "results")
    shutil.copytree(EXAMPLE_DIR / "directions", tmp_path / "directions")  # the subspace overlap reads them
    write_report(open_output(str(tmp_path)), REPORT)
    rebuilt = (tmp_path / REPORT).read_text(encoding="utf-8")
    assert rebuilt == example_report(), "the report's format changed: python -m job.example --refresh docs"


@pytest.mark.timeout(120)
def test_every_excerpt_of_the_example_in_the_docs_is_the_reports_own() -> None:
    expected = {f"report-{name}": text for name, text in report_excerpts(example_report()).items()}
    expected.update(plan_blocks())
    seen: set[str] = set()
    for page in doc_pages(DOCS):
        for name, texts in marked_blocks(page.read_text(encoding="utf-8")).items():
            seen.add(name)
            if name in expected:
                assert texts == [expected[name]] * len(texts), (
                    f"{page.name}: {name}: python -m job.example --refresh docs"
                )
    assert seen >= {
        "report-answer",
        "report-headline",
        "report-observations",
        "report-capacity",
        "plan",
        "plan-grid",
        "log",
        "predict",
    }, seen
    readme = marked_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert {"report-answer", "report-headline"} <= set(readme)


@pytest.mark.timeout(60)
def test_the_example_is_the_default_config_on_the_stand_in_where_lora_learns() -> None:
    runs = records()
    assert len(runs) == 16 and {run["run"]["config"]["model_name"] for run in runs} == {
        "../shared/data/ernie-standin-tnews"
    }
    report = (EXAMPLE_DIR / REPORT).read_text(encoding="utf-8")
    assert report.startswith("> **Conditions of this example.**") and "**a stand-in, not ERNIE 3.0 Medium**" in report
    conditions = report.split("<!-- /conditions -->", 1)[0]
    assert conditions.count("`make example` on ") == 1 and conditions.count("threads, no GPU)") == 1
    lora = [run["result"] for run in runs if run["result"]["strategy"] == "lora"]
    full = [run["result"] for run in runs if run["result"]["strategy"] == "full_finetune"]
    assert len(lora) == len(full) == 8
    chance = 1 / 15
    assert min(run["test"]["accuracy"] for run in lora) > 4 * chance  # chance is 6.7%; LoRA learns
    assert min(run["test"]["accuracy"] for run in full) > 4 * chance
    assert lora[0]["trainable_params"] / lora[0]["total_params"] < 0.02


@pytest.mark.timeout(60)
def test_the_first_screen_of_the_example_report_answers_the_question() -> None:
    """The first 40 lines a reader sees (after the example's conditions): both rows' test accuracy with
    its spread over seeds, LoRA's difference with its interval, the plain answer, and what LoRA saves;
    the 69-line configuration comes last."""
    import statistics

    runs = [record["result"] for record in records()]
    screen = "\n".join(example_report().splitlines()[:40])
    for strategy in ("lora", "full_finetune"):
        accuracies = [100 * run["test"]["accuracy"] for run in runs if run["strategy"] == strategy]
        assert f"{statistics.fmean(accuracies):.1f}% ± {statistics.stdev(accuracies):.1f}" in screen, strategy
    combined = write_report_combined()
    low, high = (
        f"{100 * value:+.1f}".replace("-", "−") for value in combined["comparison"]["accuracy_difference_ci95"]
    )
    assert f"({low} to {high})" in screen
    assert f"**{combined['comparison']['labels']['lora']}**: {combined['comparison']['answer']}: " in screen
    assert "It trains 1.60% of the weights, in " in screen and "## Configuration" not in screen
    assert example_report().rstrip().endswith("```")  # the configuration closes the report


def write_report_combined() -> dict:
    from job.results.records import load_results
    from job.results.verdict import combine

    return json.loads(combine(load_results(open_output(str(EXAMPLE_DIR)))).model_dump_json())
