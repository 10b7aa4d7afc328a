"""Every CLUE classification task by name, end to end: each is downloaded from a local HTTP server
standing in for PaddleNLP's store (PPNLP_ENDPOINT) as a small archive in the task's real format,
md5-checked against PaddleNLP's table (here pointed at the test files' own md5), read, trained with
both strategies and reported under its own name and labels."""

from __future__ import annotations

import hashlib
import json
import random
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from job.cli import main
from tests.fixtures import make_sentence, original_paddlenlp_urls, serve

IFLYTEK_DESCRIPTIONS = [f"类别{i}" for i in range(119)]


def records(task: str, count: int, seed: int, unlabelled: int = 0) -> list[dict]:
    """Rows as the task's public files write them; `unlabelled` NLI rows carry CLUE's "-" label."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        text, other = make_sentence(index % 5, rng), make_sentence((index + index // 2) % 5, rng)
        if task == "iflytek":
            label = str(index % 119)
            rows.append({"label": label, "label_des": IFLYTEK_DESCRIPTIONS[int(label)], "sentence": text})
        elif task == "afqmc":
            rows.append({"sentence1": text, "sentence2": other, "label": str(index % 2)})
        elif task == "ocnli":
            label = ("entailment", "contradiction", "neutral")[index % 3]
            rows.append({"level": "medium", "sentence1": text, "sentence2": other, "label": label,
                         "label0": label, "label1": label, "label2": label, "label3": label, "label4": label,
                         "genre": "news", "prem_id": f"news_{index}", "id": index})  # fmt: skip
        else:  # cmnli
            rows.append(
                {"sentence1": text, "sentence2": other, "label": ("contradiction", "entailment", "neutral")[index % 3]}
            )
    for row in rows[:unlabelled]:
        row["label"] = "-"
    return rows


def lines(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode()


@pytest.fixture
def clue_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Build `task`'s archive in the store, point PaddleNLP's md5 table at its files, serve it."""
    from paddlenlp.datasets.clue import Clue

    store = tmp_path / "store"
    (store / "datasets").mkdir(parents=True)
    servers = []

    def build(task: str, files: dict[str, bytes]) -> tuple[str, object]:
        spec = Clue.BUILDER_CONFIGS[task]
        with zipfile.ZipFile(store / "datasets" / f"{task}_public.zip", "w") as bundle:
            for part, content in files.items():
                member = spec["splits"][part][0]
                bundle.writestr(member, content)
                md5 = hashlib.md5(content, usedforsecurity=False).hexdigest()
                monkeypatch.setitem(spec["splits"], part, [spec["splits"][part][0], md5])
        server = serve(store)
        endpoint, gets = next(server)
        servers.append(server)
        monkeypatch.setenv("PPNLP_ENDPOINT", endpoint)
        return endpoint, gets

    with original_paddlenlp_urls():  # the job points PaddleNLP's model URLs at the mirror, in place
        yield build
    for server in servers:
        server.close()


def run(tmp_path: Path, tiny_model: Path, task: str) -> tuple[int, str, Path]:
    config = {
        "model_name": str(tiny_model), "dataset": task, "max_seq_length": 32, "batch_size": 16,
        "max_train_samples": 48, "max_eval_samples": 16, "device": "cpu", "lora_r": 4, "lora_alpha": 8,
        "eval_batch_size": 32, "output_dir": str(tmp_path / "out"),
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    return result.exit_code, result.output, tmp_path / "out"


@pytest.mark.parametrize(
    ("task", "title", "labels", "pair"),
    [
        ("iflytek", "IFLYTEK", [str(i) for i in range(119)], False),
        ("afqmc", "AFQMC", ["0", "1"], True),
        ("ocnli", "OCNLI", ["entailment", "contradiction", "neutral"], True),
        ("cmnli", "CMNLI", ["contradiction", "entailment", "neutral"], True),
    ],
)
def test_each_clue_task_downloads_trains_and_reports_under_its_own_name_and_labels(
    tmp_path: Path, tiny_model: Path, clue_store, task: str, title: str, labels: list[str], pair: bool
) -> None:
    skipped = 5 if task in ("ocnli", "cmnli") else 0  # NLI rows without an agreed label: PaddleNLP skips them
    files = {"train": lines(records(task, 160, 1, unlabelled=skipped)), "dev": lines(records(task, 40, 2, skipped))}
    if task == "iflytek":
        files["labels"] = lines([{"label": str(i), "label_des": d} for i, d in enumerate(IFLYTEK_DESCRIPTIONS)])
    _, gets = clue_store(task, files)

    code, log, out = run(tmp_path, tiny_model, task)
    assert code == 0, log
    assert gets[f"datasets/{task}_public.zip"] == 1
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    data = results["run"]["data"]
    assert data["labels"] == labels and [r["strategy"] for r in results["runs"]] == ["lora", "full_finetune"]
    assert (
        f"PaddleNLP clue/{task}" in data["train"]["source"] and f"of {160 - skipped:,} rows" in data["train"]["source"]
    )
    assert f"16 of {40 - skipped:,} rows" in data["dev"]["source"]
    assert ("sentence pairs that never occur" in data["test"]["source"]) == pair
    report = (out / "ernie_lora_vs_full_report.md").read_text(encoding="utf-8")
    assert report.splitlines()[0].endswith(f"LoRA vs Full Fine-Tuning on {title}")
    assert f"({len(labels)} classes)" in report and "news_" not in report
    table = report.split("### Test accuracy per class")[1].split("![")[0]
    if task == "iflytek":
        assert data["label_descriptions"] == IFLYTEK_DESCRIPTIONS
        rows = [line.split(" | ")[0] for line in table.splitlines() if line.startswith("| ") and "类别" in line]
        # 16 test titles cover fewer classes than the 20 the worst and best would show: each once
        assert f"The {len(rows)} of 119 classes that have test examples." in table
        assert 0 < len(rows) <= 16 and len(set(rows)) == len(rows)
        assert " 类别" in table  # each class named by its code and its description
    else:
        assert data["label_descriptions"] is None
        assert [line.split(" | ")[0].strip("| ") for line in table.strip().splitlines()[2:]] == labels

    again, log, _ = run(tmp_path, tiny_model, task)  # the cache serves it now
    assert again == 0 and gets[f"datasets/{task}_public.zip"] == 1


def test_a_corrupt_archive_member_is_refused_by_its_md5(
    tmp_path: Path, tiny_model: Path, clue_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from paddlenlp.datasets.clue import Clue

    clue_store("afqmc", {"train": lines(records("afqmc", 40, 1)), "dev": lines(records("afqmc", 20, 2))})
    splits = Clue.BUILDER_CONFIGS["afqmc"]["splits"]
    # PaddleNLP expects other bytes than the mirror serves
    monkeypatch.setitem(splits, "dev", [splits["dev"][0], "0" * 32])
    code, log, _ = run(tmp_path, tiny_model, "afqmc")
    assert code == 75 and "afqmc_public/dev.json has md5" in log and "PaddleNLP expects 00000000" in log
