"""Hostile inputs, round 3 (the causes fixed so far): rates that agree to 6 significant digits keep
their own runs, YAML 1.1 number forms are not read silently, and path or index values no file system
or plan can hold exit 2 at once."""

from __future__ import annotations

import errno
import json
from pathlib import Path

from click.testing import CliRunner

from job.cli import main
from job.config.plan import plan_runs
from job.config.schema import load_config
from job.exit_codes import io_failure


def test_rates_that_agree_to_six_digits_keep_their_own_runs_records_and_scores(write_config, tmp_path: Path) -> None:
    config = write_config(learning_rate=[0.0005, 0.00050000001], strategies=["lora"], num_epochs=1,
                          max_train_samples=64, max_eval_samples=32)  # fmt: skip
    keys = [run.key for run in plan_runs(load_config(config))]
    assert keys == ["lora_r4_a8_lr0.0005_s42", "lora_r4_a8_lr0.00050000001_s42"]
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    saved = sorted(p.name for p in (tmp_path / "out" / "results").iterdir())
    assert saved == [f"{key}.json" for key in sorted(keys)]
    combined = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert combined["missing_runs"] == [] and len(combined["runs"]) == 2
    assert set(combined["headline"][0]["dev_accuracy_by_rate"]) == {"0.0005", "0.00050000001"}


def test_rates_keep_the_text_they_always_had(write_config) -> None:
    """Keys of rates with up to 6 significant digits are what `:g` wrote: saved records still match."""
    config = load_config(write_config(learning_rate=[5e-5, 0.0001, 0.001, 2.5e-05], strategies=["full_finetune"]))
    assert [run.key for run in plan_runs(config)] == [
        "full_finetune_lr5e-05_s42", "full_finetune_lr0.0001_s42", "full_finetune_lr0.001_s42",
        "full_finetune_lr2.5e-05_s42",
    ]  # fmt: skip


def test_yaml_numbers_are_read_as_yaml_1_2_not_as_octal_or_base_60(write_config, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    written = write_config().read_text(encoding="utf-8").replace("max_train_samples: 300\n", "")
    config.write_text(written + "seed: 010\nmax_train_samples: 10_000\n")
    result = CliRunner(mix_stderr=False).invoke(main, ["validate", "--config", str(config)])
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)  # stderr carries the model and config hash lines
    assert values["seed"] == 10 and values["max_train_samples"] == 10000  # YAML 1.1 would give 8
    config.write_text(write_config().read_text(encoding="utf-8").replace("lora_r: 4", "lora_r: 1:30"))
    result = CliRunner().invoke(main, ["validate", "--config", str(config)])
    assert result.exit_code == 2 and "config key 'lora_r'" in result.output and "'1:30'" in result.output


def test_an_array_index_of_thousands_of_digits_exits_2_without_a_traceback(write_config, monkeypatch) -> None:
    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "9" * 5000)
    result = CliRunner().invoke(main, ["run", "--config", str(write_config()), "--run-from-index"])
    assert result.exit_code == 2, result.output
    assert "is not a task index of the 2 planned runs" in result.output and "(5,000 characters)" in result.output
    assert result.exc_info[0] is SystemExit


def test_an_output_dir_too_long_for_the_files_below_it_exits_2_before_anything_runs(write_config, tmp_path) -> None:
    deep = str(tmp_path) + ("/" + "d" * 203) * 19  # about 3,950 characters: the probe alone would pass
    result = CliRunner().invoke(main, ["run", "--config", str(write_config()), "--output-dir", deep])
    assert result.exit_code == 2, result.output
    assert "config key 'output_dir'" in result.output and "beyond the 4,096 a Linux path may have" in result.output
    assert len(deep) < 4096 and not (tmp_path / ("d" * 203)).exists()


def test_a_name_too_long_is_permanent() -> None:
    error, code = io_failure(OSError(errno.ENAMETOOLONG, "File name too long"), "/some/where")
    assert code == 2 and "File name too long" in str(error)


def test_a_resume_after_the_data_changed_trains_the_saved_run_again(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    """The same config, the same file names and row counts, one title edited between two runs: the
    saved record was made on other data, so it is not skipped as done, and every record ends on the
    new data's sample."""
    import shutil

    import yaml

    data = tmp_path / "data"
    shutil.copytree(tnews_dir, data)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "model_name": str(tiny_model), "data_dir": str(data), "max_seq_length": 32, "batch_size": 16,
        "num_epochs": 1, "max_train_samples": 48, "max_eval_samples": 16, "device": "cpu", "lora_r": 4,
        "lora_alpha": 8, "output_dir": str(tmp_path / "out"), "strategies": ["lora", "full_finetune"],
    }), encoding="utf-8")  # fmt: skip
    first = CliRunner().invoke(main, ["run", "--config", str(config), "--strategy", "lora"])
    assert first.exit_code == 0, first.output
    before = json.loads((tmp_path / "out" / "results" / "lora.json").read_text(encoding="utf-8"))["result"]["sample"]
    again = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert again.exit_code == 0 and "[lora] already done" in again.output  # the same data: resumed

    lines = (data / "dev.json").read_text(encoding="utf-8").splitlines()
    record = json.loads(lines[0])
    lines[0] = json.dumps({**record, "sentence": record["sentence"] + "改"}, ensure_ascii=False)
    (data / "dev.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    changed = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert changed.exit_code == 0, changed.output
    assert "[lora] " in changed.output and "was made on other data" in changed.output
    combined = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    samples = {run["sample"] for run in combined["runs"]}
    assert len(samples) == 1 and before not in samples


def test_a_second_config_in_the_same_output_dir_keeps_the_first_ones_records(write_config, tmp_path: Path) -> None:
    config = write_config(num_epochs=1, max_train_samples=48, max_eval_samples=16, strategies=["lora"])
    assert CliRunner().invoke(main, ["run", "--config", str(config)]).exit_code == 0
    results = tmp_path / "out" / "results"
    saved = (results / "lora.json").read_bytes()
    second = CliRunner().invoke(main, ["run", "--config", str(config), "--set", "seed=43"])
    assert second.exit_code == 0, second.output
    assert (results / "lora.json").read_bytes() == saved and json.loads(saved)["result"]["seed"] == 42
    (other,) = results.glob("lora.*.json")
    assert json.loads(other.read_text(encoding="utf-8"))["result"]["seed"] == 43
    assert f"ignoring {results / 'lora.json'}: it comes from another config" in second.output
    combined = json.loads((tmp_path / "out" / "results.json").read_text(encoding="utf-8"))
    assert [run["seed"] for run in combined["runs"]] == [43]  # the report of the config that ran last
    again = CliRunner().invoke(main, ["run", "--config", str(config), "--set", "seed=43"])
    assert again.exit_code == 0 and "[lora] already done" in again.output  # found by its content


def test_a_record_another_config_saved_while_this_one_trained_is_not_overwritten(write_config, tmp_path: Path) -> None:
    """Two configs started together into one folder: the one that saves second finds the other's
    record under its key and saves its own beside it, named with its config hash."""
    import os
    import subprocess
    import sys

    from tests.fixtures import HOLD_AT_MARKER, ROOT

    values = {"num_epochs": 1, "max_train_samples": 48, "max_eval_samples": 16, "strategies": ["lora"]}
    other = write_config(**values, seed=43, output_dir=str(tmp_path / "other"))
    assert CliRunner().invoke(main, ["run", "--config", str(other)]).exit_code == 0
    foreign = (tmp_path / "other" / "results" / "lora.json").read_bytes()
    config = write_config(**values)
    go = tmp_path / "go"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD_AT_MARKER, "[lora] evaluating on dev and test", str(go), "run", "--config",
         str(config)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert child.stderr is not None
    seen = []
    for line in child.stderr:
        seen.append(line)
        if "[lora] evaluating on dev and test" in line:
            break
    results = tmp_path / "out" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "lora.json").write_bytes(foreign)  # the other config's task saved first
    go.touch()
    log = "".join(seen) + child.communicate(timeout=300)[1]
    assert child.returncode == 0, log[-3000:]
    assert (results / "lora.json").read_bytes() == foreign
    (mine,) = results.glob("lora.*.json")
    assert json.loads(mine.read_text(encoding="utf-8"))["result"]["seed"] == 42


def test_record_files_that_are_not_regular_files_or_too_large_exit_2_naming_them(tmp_path: Path) -> None:
    import os

    results = tmp_path / "out" / "results"

    def planted(make) -> str:
        if results.exists():
            for entry in results.iterdir():
                entry.rmdir() if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        results.mkdir(parents=True, exist_ok=True)
        make(results / "x.json")
        result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path / "out")])
        assert result.exit_code == 2, result.output
        assert str(results / "x.json") in result.output and "Traceback" not in result.output
        return result.output

    assert "is a FIFO, not a result file" in planted(os.mkfifo)  # would block the merge under its lock
    assert "is a symbolic link" in planted(lambda path: path.symlink_to("/dev/zero"))  # would fill memory
    assert "is a folder" in planted(lambda path: path.mkdir()) or "not a result file" in planted(lambda p: p.mkdir())
    big = planted(lambda path: os.truncate(path.open("wb").name, (64 << 20) + 1))  # sparse: no disk used
    assert "larger than any result file" in big


def test_a_save_that_fails_half_way_leaves_the_earlier_models_whole_and_exits_75(
    write_config, tmp_path: Path, monkeypatch
) -> None:
    """The rerun saves its adapter, then the merged model fails as a full disk does in safetensors (its
    own error type, not an OSError): exit 75, and artifacts/lora still holds the first run's adapter
    and merged model, both, unchanged."""
    from safetensors import SafetensorError

    from job.training.strategies import STRATEGIES

    config = write_config(num_epochs=1, max_train_samples=48, max_eval_samples=16, strategies=["lora"],
                          save_artifacts=True)  # fmt: skip
    assert CliRunner().invoke(main, ["run", "--config", str(config)]).exit_code == 0
    artifacts = tmp_path / "out" / "artifacts" / "lora"
    before = {p.relative_to(artifacts): p.read_bytes() for p in artifacts.rglob("*") if p.is_file()}
    assert any(p.parts[0] == "adapter" for p in before) and any(p.parts[0] == "merged" for p in before)

    lora = type(STRATEGIES["lora"])

    def fails_half_way(self, model, tokenizer, folder: Path) -> list[Path]:
        model.save_pretrained(str(folder / "adapter"))
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(lora, "save_artifacts", fails_half_way)
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--force"])
    assert result.exit_code == 75, result.output
    assert f"could not save artifacts to {tmp_path / 'out' / 'artifacts' / 'lora'}" in result.output
    after = {p.relative_to(artifacts): p.read_bytes() for p in artifacts.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in artifacts.parent.iterdir()] == ["lora"]  # no half-written folder beside it


def test_no_write_and_no_chmod_follows_a_link_planted_inside_output_dir(write_config, tmp_path: Path) -> None:
    """On a shared folder anyone who can make a link could redirect the job: results/, artifacts/<run>
    and vdl/<run> planted as links to a folder elsewhere, holding a private file. The job stops (2)
    naming the link; the folder elsewhere and its file's mode are as they were."""
    import os
    import stat

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    private = elsewhere / "private.txt"
    private.write_text("secret", encoding="utf-8")
    os.chmod(private, 0o600)
    config = write_config(num_epochs=1, max_train_samples=48, max_eval_samples=16, strategies=["lora"],
                          save_artifacts=True, visualdl=True)  # fmt: skip
    out = tmp_path / "out"
    for planted in ("results", "artifacts/lora", "vdl/lora"):
        if out.exists():
            import shutil

            shutil.rmtree(out)
        (out / planted).parent.mkdir(parents=True, exist_ok=True)
        (out / planted).symlink_to(elsewhere, target_is_directory=True)
        result = CliRunner().invoke(main, ["run", "--config", str(config)])
        assert result.exit_code == 2, (planted, result.output)
        assert f"{out / planted} is a symbolic link" in result.output
        assert ("[lora] step" in result.output) == (planted == "artifacts/lora")  # the others: before training
        assert sorted(p.name for p in elsewhere.iterdir()) == ["private.txt"]
        assert stat.S_IMODE(private.stat().st_mode) == 0o600
