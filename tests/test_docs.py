"""docs/configuration.md is generated from the config schema: the page and the schema never disagree."""

from __future__ import annotations

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
