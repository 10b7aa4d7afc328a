"""Hostile inputs, round 4: own data files and CLUE folders read only as regular files inside their
folder, with bounded reads and bounded quotes; JSON lines split only at newlines; labels read as one
class per class; method keys refused where no strategy reads them; launch, compile and the model cache
checked before anything trains; the report's tables and a killed save left whole."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.data.sources import DataSpec, read_source
from job.errors import UserError


def own(folder: Path, train: str, dev: str = "text,label\n好,a\n坏,b\n", name: str = "train.csv", **keys) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    if train is not None:
        (folder / name).write_text(train, encoding="utf-8")
    (folder / "dev.csv").write_text(dev, encoding="utf-8")
    return folder


def refused(folder: Path, **keys) -> str:
    spec = DataSpec(dataset="own", data_dir=str(folder), text_column=keys.pop("text_column", "text"), **keys)
    with pytest.raises(UserError) as caught:
        read_source(spec)
    return str(caught.value)


# ---------------------------------------------------------------- R1, R3: what a data file may be


def test_a_data_file_linked_to_the_environment_exits_2_without_printing_it(
    tmp_path: Path, write_config, monkeypatch
) -> None:
    monkeypatch.setenv("JOB_TEST_SECRET", "AKIA-very-secret-value")
    data = own(tmp_path / "d", None)
    (data / "train.tsv").symlink_to("/proc/self/environ")
    config = write_config(dataset="own", data_dir=str(data), text_column="text")
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "train.tsv is a symbolic link to a file outside" in result.output
    assert "AKIA" not in result.output and "PATH=" not in result.output and result.exc_info[0] is SystemExit


def test_links_out_of_data_dir_are_refused_and_links_inside_it_are_read(tmp_path: Path) -> None:
    data = own(tmp_path / "d", None)
    (data / "train.csv").symlink_to("/etc/passwd")
    message = refused(data)
    assert "is a symbolic link to a file outside" in message and "/bin/" not in message and "root:" not in message
    (data / "train.csv").unlink()
    (data / "real.csv").write_text("text,label\n好,a\n坏,b\n", encoding="utf-8")
    (data / "train.csv").symlink_to(data / "real.csv")  # inside the folder: followed
    linked = tmp_path / "linked"
    linked.symlink_to(data, target_is_directory=True)  # data_dir itself may be a link
    raw = read_source(DataSpec(dataset="own", data_dir=str(linked), text_column="text"))
    assert [example.text for example in raw.train] == ["好", "坏"]


@pytest.mark.timeout(30)
def test_a_fifo_a_device_and_a_folder_named_as_data_files_exit_2_at_once(tmp_path: Path) -> None:
    clue = tmp_path / "clue"
    clue.mkdir()
    os.mkfifo(clue / "train.json")  # a read would block for ever
    (clue / "dev.json").write_text('{"sentence": "好", "label": "100"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"train.json is a FIFO \(named pipe\), not a file of records"):
        read_source(DataSpec(dataset="tnews", data_dir=str(clue)))
    (clue / "train.json").unlink()
    (clue / "zero").symlink_to("/dev/zero")  # the link stays inside; its target does not
    (clue / "train.json").symlink_to(clue / "zero")
    with pytest.raises(UserError, match="symbolic link to a file outside"):
        read_source(DataSpec(dataset="tnews", data_dir=str(clue)))
    data = own(tmp_path / "d", None)
    (data / "train.csv").mkdir()
    assert "train.csv is a folder, not a file of records" in refused(data)
    (data / "train.csv").rmdir()
    os.mkfifo(data / "train.csv")
    assert "train.csv is a FIFO" in refused(data)


def test_a_data_file_larger_than_the_limit_is_refused_before_it_is_read(tmp_path: Path, monkeypatch) -> None:
    import job.data.textfiles as textfiles

    data = own(tmp_path / "d", "text,label\n" + "好,a\n坏,b\n" * 100)
    monkeypatch.setattr(textfiles.read_data_file, "__defaults__", ("data file", 500, None))
    assert "train.csv is 1,211 bytes, more than the 500 the job reads" in refused(data)


# ---------------------------------------------------------------- R2, R4, R5: sizes and separators


@pytest.mark.timeout(60)
def test_a_header_of_200000_columns_is_refused_fast_with_a_short_message(tmp_path: Path) -> None:
    header = ",".join(f"c{i}" for i in range(200_000)) + ",c7"
    data = own(tmp_path / "d", header + "\n")
    started = time.monotonic()
    message = refused(data)
    assert time.monotonic() - started < 10  # quadratic took more than 4 minutes
    assert "names column 'c7' more than once" in message and len(message) < 400
    data = own(tmp_path / "e", ",".join(f"c{i}" for i in range(200_000)) + "\n")
    message = refused(data)
    assert "no column 'text'" in message and "(200,000 in all)" in message and len(message) < 500


@pytest.mark.timeout(120)
def test_a_text_of_17_million_characters_is_cut_before_it_is_tokenised(tiny_model: Path) -> None:
    from job.data.batches import encode
    from job.data.sources import Example
    from job.training.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    title = "天地玄黄宇宙洪荒日月盈昃" * 40
    huge = title + "  \n " * 10 + "宇宙" * 8_500_000
    started = time.monotonic()
    rows = encode([Example(huge, 0), Example(title, 1)], tokenizer, max_seq_length=32)
    assert time.monotonic() - started < 30  # whole: 292 s and a MemoryError
    assert rows[0].input_ids == rows[1].input_ids and len(rows[0].input_ids) == 32


@pytest.mark.parametrize("name", ["train.csv", "train.tsv"])
def test_a_text_longer_than_the_csv_modules_field_limit_is_read(tmp_path: Path, name: str) -> None:
    long = "宇宙" * 100_000  # 200,000 characters: Python's csv refuses more than 131,072 by default
    separator = "," if name.endswith(".csv") else "\t"
    rows = f"text{separator}label\n{long}{separator}a\n坏{separator}b\n中{separator}a\n"
    spec = DataSpec(dataset="own", data_dir=str(own(tmp_path / "d", rows, name=name)), text_column="text")
    train = read_source(spec).train
    assert [len(example.text) for example in train] == [200_000, 1, 1]


def test_a_tsv_title_that_starts_with_a_quote_is_read_as_written_and_quoted_fields_still_unquote(
    tmp_path: Path,
) -> None:
    raw = 'text\tlabel\n"一带一路"倡议\ta\n坏\tb\n他说"好"\ta\n'  # TSV proper: no quoting, quotes are text
    spec = DataSpec(dataset="own", data_dir=str(own(tmp_path / "raw", raw, name="train.tsv")), text_column="text")
    assert [example.text for example in read_source(spec).train] == ['"一带一路"倡议', "坏", '他说"好"']
    quoted = 'text\tlabel\n"""一带一路""倡议"\ta\n"两\n行"\tb\n好\ta\n'  # as pandas' to_csv(sep="\t") writes
    spec = DataSpec(dataset="own", data_dir=str(own(tmp_path / "quoted", quoted, name="train.tsv")), text_column="text")
    assert [example.text for example in read_source(spec).train] == ['"一带一路"倡议', "两\n行", "好"]
    broken = own(tmp_path / "csv", 'text,label\n"一带一路"倡议,a\n坏,b\n')  # CSV has quoting: still an error
    assert refused(broken).endswith("train.csv:2: malformed CSV (',' expected after '\"')")


def test_json_lines_holding_raw_line_separators_are_read_as_written(tmp_path: Path) -> None:
    lines = [{"text": "一\u2028二", "label": "a"}, {"text": "三\x85四\u2029", "label": "b"}, {"text": "五", "label": 7}]
    data = own(tmp_path / "d", "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines),
               name="train.jsonl", dev='{"text": "好", "label": "a"}\n{"text": "x", "label": "zz"}\n')  # fmt: skip
    (data / "dev.csv").unlink()
    (data / "dev.jsonl").write_text('{"text": "好", "label": "a"}\r\n\n{"text": "x", "label": "zz"}\n', "utf-8")
    message = refused(data)
    assert "dev.jsonl:3: label 'zz' is not one of" in message  # the line number counts only newlines
    (data / "dev.jsonl").write_text('{"text": "好", "label": "a"}\n', encoding="utf-8")
    raw = read_source(DataSpec(dataset="own", data_dir=str(data), text_column="text"))
    assert [example.text for example in raw.train] == ["一\u2028二", "三\x85四\u2029", "五"]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [('{"text": "好", "label": ' + "9" * 5000 + "}", "unreadable JSON (Exceeds the limit"),
     ("[" * 100_000, "unreadable JSON (nested too deeply)"),
     ('{"text": "好", "label": ' + "9" * 40 + "}", "label 99999999999999999999999999999999999"
     "99999 is not a class name (40 digits)")],
    ids=["5000-digit-label", "deep-nesting", "40-digit-label"],
)  # fmt: skip
def test_json_a_parser_cannot_hold_exits_2_naming_the_line(tmp_path: Path, line: str, fragment: str) -> None:
    data = own(tmp_path / "d", '{"text": "坏", "label": "a"}\n' + line + "\n", name="train.jsonl")
    message = refused(data)
    assert f"train.jsonl:2: {fragment}" in message and len(message) < 400


# ---------------------------------------------------------------- R6, R7, R8, R10: labels and columns


def test_labels_that_are_digits_only_in_unicode_sort_as_text(tmp_path: Path) -> None:
    for odd in ("²", "--1"):
        data = own(tmp_path / odd.replace("-", "m"), f"text,label\n好,1\n坏,{odd}\n", dev="text,label\n好,1\n")
        raw = read_source(DataSpec(dataset="own", data_dir=str(data), text_column="text"))
        assert sorted(raw.labels.names) == sorted(["1", odd])


def test_one_class_written_two_ways_is_refused_and_spaces_around_a_label_are_dropped(tmp_path: Path) -> None:
    data = own(tmp_path / "d", "text,label\n好,1\n坏,1.0\n中,2\n")
    assert "labels '1' and '1.0' are one number written two ways" in refused(data)
    data = own(tmp_path / "e", "text,label\n好,1\n坏, 1\n中,2 \n", dev="text,label\n好, 2\n")
    raw = read_source(DataSpec(dataset="own", data_dir=str(data), text_column="text"))
    assert raw.labels.names == ("1", "2") and [e.label for e in raw.train] == [0, 0, 1]
    data = own(tmp_path / "f", "text,label\n好,1\n坏,   \n中,2\n")
    assert "train.csv:3: record has no label (an empty or blank label)" in refused(data)


def test_an_ocnli_folder_whose_train_rows_are_all_unlabelled_exits_2(tmp_path: Path) -> None:
    folder = tmp_path / "ocnli"
    folder.mkdir()
    row = {"sentence1": "我们", "sentence2": "你们", "label": "-"}
    (folder / "train.50k.json").write_text((json.dumps(row, ensure_ascii=False) + "\n") * 3, encoding="utf-8")
    (folder / "dev.json").write_text(json.dumps({**row, "label": "neutral"}, ensure_ascii=False) + "\n", "utf-8")
    with pytest.raises(UserError, match=r"train.50k.json: none of its 3 records has a label \(every one is '-'\)"):
        read_source(DataSpec(dataset="ocnli", data_dir=str(folder)))


def test_a_missing_label_column_lists_the_columns_and_names_the_key(tmp_path: Path) -> None:
    data = own(tmp_path / "d", "text,category\n好,a\n坏,b\n")
    assert "no column 'label'; the header has 'text', 'category' (set label_column: category)" in refused(data)
    data = own(tmp_path / "e", '{"text": "好", "category": "a"}\n', name="train.jsonl")
    message = refused(data)
    assert "train.jsonl:1: record has no label (no 'label' key; its keys are 'text', 'category'" in message
    assert "config key 'label_column'" in message
    data = own(tmp_path / "f", "review,label\n好,a\n坏,b\n")
    assert "(set text_column: review)" in refused(data)
    data = own(tmp_path / "g", "review,title,label\n好,a,a\n坏,b,b\n")
    assert "(set config key 'text_column' to the column's name)" in refused(data)  # two candidates: no guess


# ---------------------------------------------------------------- R9: a test carved from too little


def test_too_few_train_rows_to_carve_a_test_split_says_so(tmp_path: Path) -> None:
    from job.data.sampling import draw_samples

    data = own(tmp_path / "d", "text,label\n好,a\n")
    raw = read_source(DataSpec(dataset="own", data_dir=str(data), text_column="text", label_names=("a", "b")))
    with pytest.raises(UserError, match=r"train has 1 row\(s\), too few to carve a test split"):
        draw_samples(raw, None, 100, seed=1)


def test_a_carved_test_split_leaves_every_class_rows_to_train_on(tmp_path: Path) -> None:
    from job.data.sampling import draw_samples

    rows = "".join(f"句子{i},a\n" for i in range(18)) + "少见,b\n另一个,c\n"
    data = own(tmp_path / "d", "text,label\n" + rows, dev="text,label\n好,a\n")
    raw = read_source(DataSpec(dataset="own", data_dir=str(data), text_column="text"))
    for seed in range(20):
        splits = draw_samples(raw, None, 100, seed=seed)
        assert {example.label for example in splits.train.examples} == {0, 1, 2}
        assert len(splits.test) == 10 and "max_eval_samples asks 100; at most half of train is carved" in (
            splits.test.source
        )


# ---------------------------------------------------------------- R11, R12, R13: method keys


@pytest.mark.parametrize(
    ("values", "fragment"),
    [({"strategies": ["lokr"], "lora_rslora": True}, "config key 'lora_rslora' is read only by lora, and "
      "strategies are lokr"),
     ({"strategies": ["bitfit", "full_finetune"], "lora_pissa": True}, "config key 'lora_pissa' is read only by lora"),
     ({"strategies": ["head_only"], "lora_plus_ratio": 16}, "config key 'lora_plus_ratio' is read only by lora"),
     ({"strategies": ["head_only"], "lora_targets": "all_linear"}, "config key 'lora_targets' is read only by "
      "lora, lokr, vera"),
     ({"strategies": ["full_finetune"], "lora_target_modules": [".*q_proj"]}, "config key 'lora_target_modules'")],
    ids=["lokr-rslora", "bitfit-pissa", "head-only-plus", "head-only-targets", "full-target-modules"],
)  # fmt: skip
def test_a_method_key_no_listed_strategy_reads_exits_2(write_config, values: dict, fragment: str) -> None:
    result = CliRunner().invoke(main, ["validate", "--config", str(write_config(**values))])
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_strategy_picks_from_a_config_whose_keys_its_strategies_read(write_config) -> None:
    """--strategy lokr on a lora + lokr config with lora_rslora: the whole config reads the key."""
    config = write_config(strategies=["lora", "lokr"], lora_rslora=True)
    result = CliRunner().invoke(main, ["plan", "--config", str(config), "--strategy", "lokr"])
    assert result.exit_code == 0, result.output
    assert "lokr  strategy=lokr dim=4" in result.output and "strategy=lora " not in result.output


def test_targets_that_match_layers_no_adapter_wraps_stop_before_anything_trains(write_config, tmp_path: Path) -> None:
    config = write_config(strategies=["full_finetune", "lora"], lora_target_modules=[".*"], num_epochs=1)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "'.*' matches" in result.output and "that are not Linear" in result.output
    assert "Embedding" in result.output and result.exc_info[0] is SystemExit
    assert not (tmp_path / "out" / "results").exists()  # full fine-tuning never trained


@pytest.mark.timeout(300)
def test_pissa_trains_with_the_forward_compiled(write_config, tmp_path: Path) -> None:
    config = write_config(strategies=["lora"], lora_pissa=True, compile="on", num_epochs=1, max_train_samples=64)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "results" / "lora.json").read_text("utf-8"))["result"]
    assert record["compiled"] is True and all(loss == loss for loss in record["step_losses"])


# ---------------------------------------------------------------- R14: the model cache


def test_a_model_cache_that_is_a_file_exits_2_in_run_and_fails_in_doctor(
    write_config, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "cache").write_text("x")
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path / "cache"))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config())])
    assert result.exit_code == 2 and result.exc_info[0] is SystemExit
    assert f"PPNLP_HOME {tmp_path / 'cache'} is a file, not a folder: point PPNLP_HOME" in result.output


@pytest.mark.timeout(300)
def test_doctor_with_a_missing_model_cache_leaves_nothing_behind(tmp_path: Path, write_config) -> None:
    import subprocess
    import sys

    home = tmp_path / "missing" / "cache"
    env = {**os.environ, "PPNLP_HOME": str(home)}
    result = subprocess.run([sys.executable, "-m", "job", "doctor", "--config", str(write_config()), "--device",
                             "cpu", "--output-dir", str(tmp_path / "out")], env=env, capture_output=True, text=True,
                            timeout=280,
                            cwd=Path(__file__).resolve().parents[1], check=False)  # fmt: skip
    assert f"PASS  model cache: {home} ($PPNLP_HOME) does not exist yet" in result.stdout, result.stdout + result.stderr
    assert not (tmp_path / "missing").exists() and not (tmp_path / "out").exists()


def test_a_read_only_cache_without_paddlenlp_folders_is_a_problem_and_with_them_is_not(
    tmp_path: Path, monkeypatch
) -> None:
    from job.data.cache import cache_problem

    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    home = tmp_path / "cache"
    home.mkdir()
    monkeypatch.setenv("PPNLP_HOME", str(home))
    home.chmod(0o555)
    try:
        assert cache_problem() == f"PPNLP_HOME {home} is read-only"
        home.chmod(0o755)
        for name in ("models", "datasets", "packages"):
            (home / name).mkdir()
        home.chmod(0o555)
        assert cache_problem() is None
    finally:
        home.chmod(0o755)


# ---------------------------------------------------------------- R17, R18: the report's tables


def test_label_names_holding_a_bar_or_a_newline_stay_in_their_cell() -> None:
    from types import SimpleNamespace

    from job.data.labels import Labels
    from job.results.tables import per_class_table

    rows = [SimpleNamespace(label="lora", test_per_class_accuracy=[0.5, 0.25]),
            SimpleNamespace(label="full | ft", test_per_class_accuracy=[0.75, 1.0])]  # fmt: skip
    table = per_class_table(rows, Labels(("a|b", "c\nd")))
    lines = table.splitlines()
    assert len(lines) == 4 and all(len(re.findall(r"(?<!\\)\|", line)) == 4 for line in lines)
    assert "| a\\|b | 0.50 | 0.75 |" in table and "| c d | 0.25 | 1.00 |" in table and "full \\| ft" in table


def test_fewer_classes_in_test_than_the_table_shows_lists_each_once() -> None:
    from types import SimpleNamespace

    from job.data.labels import Labels
    from job.results.tables import per_class_table

    names = tuple(f"c{i}" for i in range(50))
    present = [0.1 * (i % 7) if i < 15 else None for i in range(50)]
    table = per_class_table([SimpleNamespace(label="lora", test_per_class_accuracy=present)], Labels(names))
    shown = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()[2:] if line.startswith("| c")]
    assert sorted(shown) == sorted(f"c{i}" for i in range(15)) and len(shown) == 15
    assert "The 15 of 50 classes that have test examples." in table


# ---------------------------------------------------------------- R19: what a killed save left


def test_a_rerun_removes_what_a_killed_save_left_and_keeps_what_a_live_writer_holds(tmp_path: Path) -> None:
    import subprocess
    import sys

    from job.output.storage import STALE_SECONDS, LocalOutput, scratch_prefix

    out = tmp_path / "out"
    (out / "results").mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = scratch_prefix("loss_curves.png").replace(f"~{os.getpid()}.", f"~{dead.pid}.")
    (out / f"{mine}abc.tmp").write_bytes(b"half a plot")
    (out / "artifacts" / f"{mine.replace('loss_curves.png', 'lora')}x.tmp").mkdir(parents=True)
    live = out / "results" / f"{scratch_prefix('lora.json')}def.tmp"
    live.write_text("{")
    old_elsewhere = out / ".report.md.otherhost~12.xyz.tmp"
    old_elsewhere.write_text("x")
    os.utime(old_elsewhere, (time.time() - STALE_SECONDS - 5,) * 2)
    fresh_elsewhere = out / ".report.md.otherhost~13.xyz.tmp"
    fresh_elsewhere.write_text("x")
    LocalOutput(out).check_writable()
    left = sorted(p.name for p in out.rglob("*.tmp"))
    assert left == sorted([live.name, fresh_elsewhere.name])


# ---------------------------------------------------------------- R20: a subset after the data changed


@pytest.mark.timeout(400)
def test_a_strategy_alone_after_the_data_changed_stops_before_training_and_keeps_the_pair(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    import shutil

    import yaml

    data = tmp_path / "data"
    shutil.copytree(tnews_dir, data)
    values = {"model_name": str(tiny_model), "data_dir": str(data), "max_seq_length": 32, "batch_size": 16,
              "num_epochs": 1, "max_train_samples": 64, "max_eval_samples": 32, "output_dir": str(tmp_path / "out"),
              "device": "cpu", "lora_r": 4, "lora_alpha": 8}  # fmt: skip
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(values), encoding="utf-8")
    assert CliRunner().invoke(main, ["run", "--config", str(config)]).exit_code == 0
    saved = {p.name: p.read_bytes() for p in (tmp_path / "out" / "results").iterdir()}
    train = data / "train.json"
    train.write_text(train.read_text(encoding="utf-8").replace("的", "地", 1), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--strategy", "lora"])
    assert result.exit_code == 2, result.output
    assert "full_finetune) was made on other data" in result.output and "drop --strategy" in result.output
    assert "training lora alone" in result.output and "[lora] step" not in result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "results").iterdir()} == saved
