"""TNEWS data: the examples and splits, read from a local folder or PaddleNLP's download, each record checked."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.data.labels import LABEL_TO_ID, TNEWS_LABELS
from job.data.textfiles import read_text
from job.errors import RetryableError, UserError


@dataclass(frozen=True)
class Example:
    sentence: str
    label: int  # index into TNEWS_LABELS


@dataclass
class Split:
    name: str
    examples: list[Example]
    source: str  # where the rows came from, for the report
    rows: list[int]  # each example's row number in its source file

    def __len__(self) -> int:
        return len(self.examples)


@dataclass
class RawSplits:
    """Full splits as read from the source; `test` is None when the source has no labelled test."""

    train: list[Example]
    dev: list[Example]
    test: list[Example] | None
    origin: str
    files: dict[str, str] = field(default_factory=dict)  # file -> sha256 (or md5 check note)


@dataclass
class Splits:
    train: Split
    dev: Split
    test: Split

    def all(self) -> list[Split]:
        return [self.train, self.dev, self.test]

    def identity(self) -> str:
        """sha256 (16 hex digits) of the train, dev and test row numbers: runs with the same identity
        trained and were scored on the same rows of the same files (the files' own hashes are recorded)."""
        text = ";".join(f"{split.name}:{','.join(map(str, split.rows))}" for split in self.all())
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def parse_record(record: Any, where: str, require_label: bool = True) -> Example | None:
    """One CLUE TNEWS record -> Example. Returns None for an unlabelled record when labels are optional."""
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}")
    sentence = record.get("sentence")
    if not isinstance(sentence, str) or not sentence.strip():
        raise UserError(f"{where}: record has no 'sentence' text")
    label = record.get("label")
    if label is None:
        if require_label:
            raise UserError(f"{where}: record has no 'label'")
        return None
    label = str(label)
    if label not in LABEL_TO_ID:
        raise UserError(f"{where}: label {label!r} is not one of the 15 TNEWS labels {', '.join(TNEWS_LABELS)}")
    return Example(sentence=sentence, label=LABEL_TO_ID[label])


def read_clue_file(path: Path, require_label: bool = True) -> list[Example] | None:
    """Read a CLUE JSON-lines file. For an optional test file, returns None when it has no labels."""
    text = read_text(path, "data file")
    examples: list[Example] = []
    unlabelled = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: malformed JSON ({exc.msg})") from None
        example = parse_record(record, where, require_label=require_label)
        if example is None:
            unlabelled += 1
        else:
            examples.append(example)
    if not examples and not unlabelled:
        raise UserError(f"data file {path} is empty")
    if unlabelled:
        if examples:
            raise UserError(f"{path}: {unlabelled} records have no 'label' while {len(examples)} do")
        return None
    return examples


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_local_folder(folder: Path) -> RawSplits:
    if not folder.is_dir():
        raise UserError(f"config key 'data_dir': {folder} is not a folder")
    train = read_clue_file(folder / "train.json")
    dev = read_clue_file(folder / "dev.json")
    test_path = folder / "test.json"
    test = read_clue_file(test_path, require_label=False) if test_path.exists() else None
    files = {p.name: sha256_file(p) for p in (folder / "train.json", folder / "dev.json", test_path) if p.exists()}
    return RawSplits(train=train or [], dev=dev or [], test=test, origin=f"local folder {folder}", files=files)


def read_paddlenlp_tnews() -> RawSplits:
    """CLUE TNEWS through PaddleNLP: downloads once into $PPNLP_HOME/datasets, md5-checked."""
    from paddlenlp.datasets import load_dataset
    from paddlenlp.utils.env import DATA_HOME

    from job.data.download import fetch_archive, tnews_archive

    fetch_archive(tnews_archive())  # locked and md5-checked: array tasks may share the cache
    try:
        train_ds, dev_ds = load_dataset("clue", "tnews", splits=("train", "dev"))
    except (OSError, RuntimeError) as exc:
        raise RetryableError(f"could not load PaddleNLP dataset clue/tnews: {exc}") from None
    labels = train_ds.label_list

    def convert(dataset: Any, split: str) -> list[Example]:
        return [
            parse_record({**row, "label": labels[row["label"]]}, f"clue/tnews {split} row {index}")
            for index, row in enumerate(dataset)
        ]

    # CLUE's public test split has no labels, so it is never read: the test set is carved from train.
    files = {f"{split}.json": "md5 checked by PaddleNLP" for split in ("train", "dev")}
    return RawSplits(
        train=convert(train_ds, "train"),
        dev=convert(dev_ds, "dev"),
        test=None,
        origin=f"PaddleNLP clue/tnews ({Path(DATA_HOME) / 'Clue' / 'tnews_public'})",
        files=files,
    )


def read_source(data_dir: str | None) -> RawSplits:
    return read_local_folder(Path(data_dir)) if data_dir else read_paddlenlp_tnews()
