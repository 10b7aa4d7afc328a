"""Hostile inputs, round 5: records read by `job report` count each run once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "example-report"


@pytest.mark.timeout(60)
def test_a_copied_record_is_refused_not_counted_as_one_more_seed(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE / "results", tmp_path / "results")
    record = tmp_path / "results" / "lora_r16_a32_lr0.003_s1.json"
    shutil.copy(record, tmp_path / "results" / "lora_r16_a32_lr0.003_s1 (copy).json")
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert (
        "lora_r16_a32_lr0.003_s1 (copy).json and lora_r16_a32_lr0.003_s1.json in " in result.output
        and "both hold run 'lora_r16_a32_lr0.003_s1': one run counts once" in result.output
    )
    assert not (tmp_path / "results.json").exists()
    (tmp_path / "results" / "lora_r16_a32_lr0.003_s1 (copy).json").unlink()
    whole = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert whole.exit_code == 0, whole.output
