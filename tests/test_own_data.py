"""A user's own labelled data: CSV, TSV and JSON lines with their own columns and label names, which
reach the classifier, the report, results.json, every saved model and `job predict`; sentence pairs
reach the tokenizer as pairs; every bad file stops the job with its file and line."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from job.data.batches import encode
from job.data.sources import DataSpec, read_source
from job.errors import UserError
from tests.fixtures import make_sentence, write_jsonl

NAMES = ("正面", "负面", "中性")  # label i is learnable from keywords_for(i)
ROOT = Path(__file__).resolve().parents[1]


def reviews(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(make_sentence(index % 3, rng), NAMES[index % 3]) for index in range(count)]


def write_csv(path: Path, header: list[str], rows: list[tuple], delimiter: str = ",") -> Path:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def review_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reviews")
    write_csv(folder / "train.csv", ["text", "category"], reviews(240, 1))
    write_csv(folder / "dev.csv", ["text", "category"], reviews(30, 2))
    return folder


def run_config(folder: Path, tiny_model: Path, **values) -> tuple[int, str, Path]:
    config = {
        "model_name": str(tiny_model), "max_seq_length": 32, "batch_size": 16, "device": "cpu", "lora_r": 4,
        "lora_alpha": 8, "eval_batch_size": 32, "output_dir": str(folder / "out"), "max_eval_samples": 30, **values,
    }  # fmt: skip
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    return result.exit_code, result.output, folder / "out"


def test_a_three_class_csv_with_its_own_columns_trains_both_strategies_and_predict_prints_its_label_names(
    tmp_path: Path, tiny_model: Path, review_dir: Path
) -> None:
    code, log, out = run_config(
        tmp_path, tiny_model, dataset="own", data_dir=str(review_dir), text_column="text", label_column="category",
        learning_rate=5e-3, lora_learning_rate=3e-2, num_epochs=4, max_train_samples=None, save_artifacts=True,
    )  # fmt: skip
    assert code == 0, log
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    expected = sorted(NAMES)  # no label_names: the sorted distinct labels of train
    assert results["run"]["data"]["labels"] == expected and results["run"]["data"]["label_descriptions"] is None
    assert [run["strategy"] for run in results["runs"]] == ["lora", "full_finetune"]
    assert all(len(run["test"]["per_class_accuracy"]) == 3 for run in results["runs"])
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert report.startswith(f"# `{tiny_model.name}`: LoRA vs Full Fine-Tuning on {review_dir.name}\n")
    assert f"the labelled data in `{review_dir}` (text `text`, label `category`) (3 classes)" in report
    table = report.split("### Test accuracy per class")[1].split("![")[0]
    assert [line.split(" | ")[0].strip("| ") for line in table.strip().splitlines()[2:]] == expected
    assert "news_" not in report and "TNEWS" not in report

    for folder in ("lora/adapter", "lora/merged", "full_finetune/model"):
        saved = json.loads((out / "artifacts" / folder / "config.json").read_text(encoding="utf-8"))
        assert saved["id2label"] == {str(i): name for i, name in enumerate(expected)}
        assert saved["job_labels"] == expected and saved["job_text_columns"] == ["text"]
    # Fresh texts made like the training ones: the full fine-tuned model names most of them right.
    rng = random.Random(99)
    fresh = [(make_sentence(index % 3, rng), NAMES[index % 3]) for index in range(30)]
    listing = write_jsonl(tmp_path / "new.jsonl", [{"text": text} for text, _ in fresh])
    for folder in ("full_finetune/model", "lora/adapter"):
        result = CliRunner(mix_stderr=False).invoke(
            main, ["predict", "--model", str(out / "artifacts" / folder), "--device", "cpu", "--input", str(listing)]
        )
        assert result.exit_code == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert all(set(line) == {"text", "label", "probability"} for line in lines)
        assert {line["label"] for line in lines} <= set(NAMES)
        if folder == "full_finetune/model":
            right = sum(line["label"] == gold for line, (_, gold) in zip(lines, fresh, strict=True))
            assert right >= 24, f"{right} of 30"


def test_label_names_fix_the_class_order(tmp_path: Path, review_dir: Path) -> None:
    raw = read_source(DataSpec(dataset="own", data_dir=str(review_dir), text_column="text", label_column="category",
                               label_names=NAMES))  # fmt: skip
    assert raw.labels.names == NAMES
    first = next(line for line in (review_dir / "train.csv").read_text(encoding="utf-8").splitlines()[1:])
    assert raw.train[0].label == NAMES.index(first.rsplit(",", 1)[1])


def test_a_tsv_pair_task_reaches_the_tokenizer_as_a_pair(tmp_path: Path, tiny_model: Path) -> None:
    from job.training.model import load_tokenizer

    rng = random.Random(3)
    rows = []
    for index in range(120):
        same = index % 2
        first = make_sentence(index % 5, rng)
        second = make_sentence(index % 5 if same else (index + 1) % 5, rng)
        rows.append((first, second, "same" if same else "different"))
    folder = tmp_path / "pairs"
    folder.mkdir()
    write_csv(folder / "train.tsv", ["question", "answer", "label"], rows[:96], delimiter="\t")
    write_csv(folder / "dev.tsv", ["question", "answer", "label"], rows[96:], delimiter="\t")
    spec = DataSpec(dataset="own", data_dir=str(folder), text_column="question", text_pair_column="answer")
    raw = read_source(spec)
    assert (raw.train[0].text, raw.train[0].text_pair) == rows[0][:2] and raw.text_columns == ("question", "answer")

    tokenizer = load_tokenizer(str(tiny_model))
    (row,) = encode([raw.train[0]], tokenizer, max_seq_length=64)
    first_ids = tokenizer(rows[0][0])["input_ids"]  # [CLS] a [SEP]
    second_ids = tokenizer(rows[0][1])["input_ids"][1:]  # b [SEP]
    assert row.input_ids == first_ids + second_ids
    assert row.token_type_ids == [0] * len(first_ids) + [1] * len(second_ids)
    (short,) = encode([raw.train[0]], tokenizer, max_seq_length=12)  # truncated, still both segments
    assert len(short.input_ids) == 12 and short.token_type_ids.count(1) >= 2 and short.input_ids[-1] == 2

    code, log, out = run_config(tmp_path, tiny_model, dataset="own", data_dir=str(folder), text_column="question",
                                text_pair_column="answer", max_train_samples=None, save_artifacts=True)  # fmt: skip
    assert code == 0, log
    assert "sentence pairs that never occur in the training sample" in log
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert "(text `question` and `answer` (sentence pairs), label `label`) (2 classes)" in report
    listing = write_jsonl(tmp_path / "ask.jsonl", [{"question": rows[0][0], "answer": rows[0][1]}])
    result = CliRunner(mix_stderr=False).invoke(
        main, ["predict", "--model", str(out / "artifacts/full_finetune/model"), "--input", str(listing)]
    )
    assert result.exit_code == 0, result.stderr
    line = json.loads(result.stdout)
    assert (line["question"], line["answer"]) == rows[0][:2] and line["label"] in {"same", "different"}
    lone = CliRunner().invoke(main, ["predict", "--model", str(out / "artifacts/full_finetune/model"), "一句"])
    assert lone.exit_code == 2 and "classifies sentence pairs" in lone.output


def test_csv_quoting_a_byte_order_mark_and_json_lines_read_as_written(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text(
        '\ufefftext,label\n"第一行\n第二行",a\n"有逗号, 和""引号""",b\n普通,a\n', encoding="utf-8"
    )
    write_jsonl(tmp_path / "dev.jsonl", [{"text": "开发", "label": "b"}, {"text": "集", "label": "a"}])
    raw = read_source(DataSpec(dataset="own", data_dir=str(tmp_path), text_column="text"))
    assert [e.text for e in raw.train] == ["第一行\n第二行", '有逗号, 和"引号"', "普通"]
    assert raw.labels.names == ("a", "b") and [e.label for e in raw.dev] == [1, 0]
    numbers = tmp_path / "numbers"
    numbers.mkdir()
    write_jsonl(numbers / "train.jsonl", [{"sentence": f"s{i}", "label": i % 11} for i in range(22)])
    write_jsonl(numbers / "dev.jsonl", [{"sentence": "d", "label": 10}])
    raw = read_source(DataSpec(dataset="own", data_dir=str(numbers)))
    assert raw.labels.names == tuple(str(i) for i in range(11))  # integers sort as numbers: 2 before 10
    assert raw.dev[0].label == 10


def bad(tmp_path: Path, train: str, dev: str = "text,label\n好,a\n坏,b\n", name: str = "train.csv", **keys) -> str:
    (tmp_path / name).write_text(train, encoding="utf-8")
    (tmp_path / "dev.csv").write_text(dev, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_source(DataSpec(dataset="own", data_dir=str(tmp_path), text_column="text", **keys))
    return str(caught.value)


@pytest.mark.parametrize(
    ("train", "dev", "fragment"),
    [
        ("title,label\n好,a\n", None, "train.csv: no column 'text'; the header has 'title', 'label'"),
        ("text,label\n好,a\n坏,b,额外\n", None, "train.csv:3: 3 fields, but the header has 2 (text, label)"),
        ("text,label\n好,a\n ,b\n", None, "train.csv:3: record has no 'text' text"),
        ("text,label\n好,a\n坏,\n", None, "train.csv:3: record has no label"),
        ('text,label\n"多行\n文本",a\n好,b\n坏,a,x\n', None, "train.csv:5: 3 fields"),  # lines count past the quote
        ('text,label\n好,a\n"没有结束,b\n', None, "train.csv:3: malformed CSV"),
        ("text,label\n好,a\n坏,b\n", "text,label\n好,a\n坏,c\n", "dev.csv:3: label 'c' is not one of the labels of "
         "train.csv (a, b)"),
        ("text,label\n好,a\n坏,a\n", None, "every row has label 'a'; a classifier needs at least two labels"),
        ("", None, "train.csv is empty"),
        ("text,text\n好,a\n", None, "train.csv:1: the header names column 'text' more than once"),
    ],
    ids=["missing-column", "ragged-row", "empty-text", "empty-label", "line-after-quoted-newline", "open-quote",
         "dev-label-not-in-train", "one-class", "empty-file", "repeated-column"],
)  # fmt: skip
def test_bad_csv_names_file_and_line(tmp_path: Path, train: str, dev: str | None, fragment: str) -> None:
    message = bad(tmp_path, train, **({"dev": dev} if dev is not None else {}))
    assert fragment in message and str(tmp_path) in message


def test_bad_json_lines_and_folders_are_named(tmp_path: Path) -> None:
    assert "dev.csv:3: label 'b' is not one of label_names (a, c)" in bad(
        tmp_path, "text,label\n好,a\n坏,c\n", label_names=("a", "c")
    )
    (tmp_path / "train.csv").unlink()
    array = '[{"text": "好", "label": "a"},\n{"text": "坏", "label": "b"}]\n'
    assert "train.json:1: malformed JSON" in bad(tmp_path, "[\n" + array[1:], name="train.json")
    assert "not a JSON array" in bad(tmp_path, "[\n" + array[1:], name="train.json")
    (tmp_path / "train.json").unlink()
    assert "train.jsonl:1: expected a JSON object, got list (the job reads JSON lines" in bad(
        tmp_path, array.replace("\n", ""), name="train.jsonl"
    )
    (tmp_path / "train.jsonl").unlink()
    assert "train.json:2: label 1.5 must be a string or an integer" in bad(
        tmp_path, '{"text": "a", "label": "x"}\n{"text": "b", "label": 1.5}\n', name="train.json"
    )
    (tmp_path / "train.csv").write_text("text,label\n好,a\n", encoding="utf-8")
    assert "holds train.json and train.csv: keep one file per split" in bad(tmp_path, "{}", name="train.json")
    for name in ("train.csv", "train.json"):
        (tmp_path / name).unlink()
    assert "has no train file (train.jsonl, train.json, train.csv, train.tsv)" in bad(tmp_path, "", name="x.txt")
    (tmp_path / "train.csv").write_text("text,label\n好,a\n坏,b\n", encoding="utf-8")
    (tmp_path / "test.csv").write_text("text\n没有标签\n", encoding="utf-8")
    assert "test.csv: no column 'label'; the header has 'text' (set config key 'label_column'" in bad(
        tmp_path, "text,label\n好,a\n坏,b\n"
    )


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"dataset": "own"}, "dataset': own reads your files from data_dir; set data_dir"),
        ({"text_column": "text"}, "config key 'text_column' is read only with dataset: own"),
        ({"dataset": "tnews", "label_names": ["a", "b"]}, "config key 'label_names' is read only with dataset: own"),
        ({"dataset": "own", "data_dir": "d", "label_names": ["a", "a"]}, "names 'a' more than once"),
        ({"dataset": "own", "data_dir": "d", "label_names": ["a"]}, "label_names"),
        ({"dataset": "own", "data_dir": "d", "label_column": "sentence"}, "the same column as a text column"),
        ({"dataset": "tnew"}, "config key 'dataset'"),
    ],
    ids=["own-needs-data-dir", "column-without-own", "label-names-without-own", "repeated-label", "one-label",
         "label-is-text", "unknown-dataset"],
)  # fmt: skip
def test_data_keys_are_checked_before_anything_loads(tmp_path: Path, values: dict, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    result = CliRunner().invoke(main, ["validate", "--config", str(path)])
    assert result.exit_code == 2 and fragment in result.output, result.output


def test_label_names_may_be_integers(tmp_path: Path) -> None:
    from job.config.schema import validate_config

    assert validate_config({"dataset": "own", "data_dir": "d", "label_names": [0, 1]}).label_names == ["0", "1"]


def test_a_clue_folder_holding_own_files_says_how_to_read_them(tmp_path: Path) -> None:
    (tmp_path / "train.csv").write_text("text,label\n好,a\n", encoding="utf-8")
    with pytest.raises(
        UserError,
        match=r"holds train\.csv, not TNEWS.s train\.json; for your own data set dataset: own",
    ):
        read_source(DataSpec(data_dir=str(tmp_path)))


def test_the_example_config_and_its_data_read_as_documented() -> None:
    from job.config.schema import load_config

    config = load_config(ROOT / "configs" / "own_data_example.yaml")
    spec = config.data_spec()
    raw = read_source(DataSpec(**{**spec.__dict__, "data_dir": str(ROOT / spec.data_dir)}))
    assert (len(raw.train), len(raw.dev), len(raw.test or [])) == (36, 12, 12)
    assert sorted(raw.labels.names) == sorted(NAMES)
    assert not {e.text for e in raw.train} & {e.text for e in [*raw.dev, *(raw.test or [])]}


def test_run_stops_with_exit_2_at_a_dev_label_train_does_not_have(tmp_path: Path, tiny_model: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train.csv", ["text", "category"], reviews(30, 1))
    write_csv(folder / "dev.csv", ["text", "category"], [*reviews(4, 2), ("未知类别的评论", "其他")])
    code, log, out = run_config(tmp_path, tiny_model, dataset="own", data_dir=str(folder), text_column="text",
                                label_column="category")  # fmt: skip
    assert code == 2 and f"{folder / 'dev.csv'}:6: label '其他' is not one of the labels of train.csv" in log
    assert "Traceback" not in log and not (out / "results").exists()


def test_the_log_says_how_much_of_train_was_carved_for_test(tmp_path: Path) -> None:
    """240 train rows, no test file, max_eval_samples 120: half of train becomes test. The train line said
    "120 of 240 rows" as if the rest were merely unused."""
    from job.data.sampling import draw_samples

    folder = tmp_path / "data"
    folder.mkdir()
    write_csv(folder / "train.csv", ["sentence", "label"], [(f"{text}{i}", label) for i, (text, label) in
                                                             enumerate(reviews(240, 1))])  # fmt: skip
    write_csv(folder / "dev.csv", ["sentence", "label"], reviews(30, 2))
    raw = read_source(DataSpec(dataset="own", data_dir=str(folder)))
    splits = draw_samples(raw, 1000, 120, seed=1)
    assert len(splits.test.examples) == 120 and len(splits.train.examples) == 120
    assert splits.train.source.endswith(
        "train, 120 of 240 rows (not the 120 carved for test or sharing a test title) (max_train_samples is 1,000: "
        "fewer rows exist, all are used)"
    ), splits.train.source
    assert "carved from train" in splits.test.source and "120 rows" in splits.test.source
