"""The docs are checked: docs/configuration.md is generated from the config schema (the page and the
schema never disagree), every page is linked, and every relative link and #anchor resolves."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from job.cli import main
from job.config.schema import describe_fields
from tests.fixtures import ROOT


def test_the_configuration_page_is_the_one_the_schema_generates() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    generated = CliRunner().invoke(main, ["config-reference", "--markdown"])
    assert generated.exit_code == 0, generated.output
    assert page == generated.output, "docs/configuration.md is out of date with the schema: run `make docs`"


def test_the_configuration_page_names_every_key_with_its_default_and_meaning() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = {line.split(" | ")[0].strip("| `"): line for line in page.splitlines() if line.startswith("| `")}
    for key, description, _ in describe_fields():
        assert key in rows, f"{key} is missing from docs/configuration.md"
        assert description.split(";")[0].strip() in rows[key].replace("\\|", "|"), key


def test_every_page_in_docs_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = sorted(path.name for path in (ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds no page"
    assert [page for page in pages if f"](docs/{page})" not in readme] == []


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")  # [text](target); an image's ![..](..) is its own file


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)  # no headings in code
    return {slug(line.lstrip("#")) for line in text.splitlines() if re.match(r"#{1,6} ", line)}


def test_every_relative_link_and_anchor_in_the_docs_resolves() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_the_anchor_rule_is_githubs() -> None:
    assert slug("Devices, threads and GPUs") == "devices-threads-and-gpus"
    assert slug("Checking a node (`job doctor`)") == "checking-a-node-job-doctor"
    assert slug("Several GPUs: several runs at once, or one run on several GPUs") == (
        "several-gpus-several-runs-at-once-or-one-run-on-several-gpus"
    )


def test_the_docs_state_the_schema_version_the_code_writes() -> None:
    from job.results.schema import SCHEMA_VERSION

    page = (ROOT / "docs" / "how-it-works.md").read_text(encoding="utf-8")
    assert re.findall(r"`schema_version` (\d+)", page) == [str(SCHEMA_VERSION)]


def test_the_layout_in_development_md_names_every_module_and_config() -> None:
    page = (ROOT / "docs" / "development.md").read_text(encoding="utf-8")
    layout = page.split("```")[1]
    modules = sorted(path.stem for path in (ROOT / "job").rglob("*.py") if path.stem not in ("__init__", "__main__"))
    assert [name for name in modules if not re.search(rf"\b{name}\b", layout)] == []
    configs = sorted(path.name for path in (ROOT / "configs").glob("*.yaml"))
    assert [name for name in configs if name not in page] == []


def test_the_config_table_gives_each_shipped_config_its_run_count() -> None:
    from job.config.plan import plan_runs
    from job.config.schema import load_config

    page = (ROOT / "docs" / "config-guide.md").read_text(encoding="utf-8")
    table = dict(re.findall(r"^\| `([\w.]+\.yaml)` \| (\d+) \|", page, flags=re.M))
    planned = {path.name: str(len(plan_runs(load_config(path)))) for path in (ROOT / "configs").glob("*.yaml")}
    assert table == planned


def test_the_two_set_up_commands_stand_in_the_readmes_first_40_lines() -> None:
    head = "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:40])
    assert "```bash\nmake venv\n```" in head and "```bash\nmake test\n```" in head


def test_the_demo_time_the_docs_quote_is_the_one_measured_for_this_version() -> None:
    """`make timings` runs the demo end to end and writes docs/timings.json and the figure quoted; the figure
    must be that measurement's, and the measurement this version's (a test may not time: it checks)."""
    import json
    import tomllib

    from job.example import DEMO_TIME, TIMINGS

    timings = json.loads((ROOT / "docs" / TIMINGS).read_text(encoding="utf-8"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert timings["job_version"] == version, "run `make timings` for this version"
    assert timings["cores"] == 2 and 0 < timings["demo_seconds"] < 60  # "in under a minute ... on 2 cores"
    for page in ("README.md", "Makefile"):
        quoted = [int(seconds) for seconds in DEMO_TIME.findall((ROOT / page).read_text(encoding="utf-8"))]
        assert quoted == [round(timings["demo_seconds"])], page
