"""Hostile but fair inputs: each stops with the job's own message and exit code, and writes nothing
it should not."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.output.layout import RESERVED_NAMES

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
lora_target_modules: *f
"""


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS, encoding="utf-8")
    for command in ("run", "validate"):
        result = CliRunner().invoke(main, [command, "--config", str(bomb), "--set", f"output_dir={tmp_path / 'out'}"])
        assert result.exit_code == 2, result.output
        assert "more than 16 aliases" in result.output and len(result.output) < 2000
    assert not (tmp_path / "out").exists()


def test_error_messages_quote_a_bounded_excerpt_of_the_input(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("lora_target_modules: " + "[" * 50 + "x" + "]" * 50 + "\nseed: '" + "9" * 100_000 + "'\n", "utf-8")
    result = CliRunner().invoke(main, ["validate", "--config", str(deep)])
    assert result.exit_code == 2
    assert "config key 'lora_target_modules'" in result.output and "config key 'seed'" in result.output
    assert len(result.output) < 2000


@pytest.mark.parametrize("name", sorted(RESERVED_NAMES))
def test_a_report_file_named_like_the_jobs_own_files_exits_2_before_anything(
    write_config, tmp_path: Path, name: str
) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(report_file=name))])
    assert result.exit_code == 2, result.output
    assert f"config key 'report_file': {name!r} is one of the job's own files or folders" in result.output
    assert not (tmp_path / "out").exists()


def test_job_report_refuses_reserved_names_and_missing_folders(write_config, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    result = CliRunner().invoke(main, ["report", "--output-dir", str(missing)])
    assert result.exit_code == 2 and "is not a folder of a previous run" in result.output
    assert not missing.exists()
    assert (
        CliRunner().invoke(main, ["run", "--config", str(write_config(num_epochs=1, strategies=["lora"]))]).exit_code
        == 0
    )
    out = tmp_path / "out"
    before = (out / "results.json").read_bytes()
    clash = CliRunner().invoke(main, ["report", "--output-dir", str(out), "--report-file", "results.json"])
    assert clash.exit_code == 2 and "is one of the job's own files" in clash.output
    assert (out / "results.json").read_bytes() == before


@pytest.mark.parametrize(("error", "code"), [(errno.EROFS, 2), (errno.EACCES, 2), (errno.ENOSPC, 75)])
def test_job_report_maps_write_failures_to_exit_codes(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: int, code: int
) -> None:
    assert (
        CliRunner().invoke(main, ["run", "--config", str(write_config(num_epochs=1, strategies=["lora"]))]).exit_code
        == 0
    )

    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "fsync", refuse)
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == code, result.output
    assert os.strerror(error) in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("weights", ["model_state.pdparams", "model.safetensors"])
def test_truncated_weights_exit_2_naming_the_file(write_config, tiny_model: Path, tmp_path: Path, weights: str) -> None:
    folder = tmp_path / "truncated"
    shutil.copytree(tiny_model, folder)
    if weights == "model.safetensors":  # the same weights in the format that is read first
        from paddlenlp.transformers import AutoModelForSequenceClassification

        AutoModelForSequenceClassification.from_pretrained(str(tiny_model)).save_pretrained(
            str(folder), safe_serialization=True
        )
        (folder / "model_state.pdparams").unlink()
    data = (folder / weights).read_bytes()
    (folder / weights).write_bytes(data[: len(data) // 2])
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(model_name=str(folder)))])
    assert result.exit_code == 2, result.output
    assert f"model folder {folder}: its weights ({weights}) cannot be read" in result.output


def test_bad_data_leaves_no_empty_output_folder(write_config, tmp_path: Path) -> None:
    data = tmp_path / "bad-data"
    data.mkdir()
    (data / "train.json").write_text('{"sentence": "x", "label": "999"}\n', encoding="utf-8")
    (data / "dev.json").write_text('{"sentence": "x", "label": "100"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(data_dir=str(data)))])
    assert result.exit_code == 2 and "label '999' is not one of the 15 TNEWS labels" in result.output
    assert not (tmp_path / "out").exists()


def test_under_umask_000_nothing_the_job_writes_is_world_writable(write_config, tmp_path: Path) -> None:
    import stat

    config = write_config(
        num_epochs=1, save_artifacts=True, visualdl=True, output_dir=str(tmp_path / "a" / "b" / "out")
    )
    previous = os.umask(0)
    try:
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    paths = [tmp_path / "a", tmp_path / "a" / "b", *(tmp_path / "a").rglob("*")]
    modes = {path: stat.S_IMODE(path.stat().st_mode) for path in paths}
    assert any(p.name == ".lock" for p in modes) and any("artifacts" in p.parts for p in modes)
    wrong = {str(p): oct(m) for p, m in modes.items() if m != (0o755 if p.is_dir() else 0o644)}
    assert wrong == {}


def test_a_planted_lock_link_creates_nothing_outside(write_config, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "elsewhere.txt"
    (out / ".lock").symlink_to(target)
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(num_epochs=1, strategies=["lora"]))])
    assert result.exit_code == 2, result.output
    assert "Too many levels of symbolic links" in result.output
    assert not target.exists()
