"""The data: examples and splits, read from a CLUE task (PaddleNLP's download or a local copy in its
format) or from a user's own labelled files (JSON lines, CSV, TSV), each record checked. Every
message names the file and line at fault."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.data.labels import TNEWS, Labels
from job.data.tasks import CLUE_TASKS, OWN, ClueTask
from job.data.textfiles import read_text
from job.errors import UserError

SPLITS = ("train", "dev", "test")
OWN_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")  # what a split's file may be in `dataset: own`
SHOWN_LABELS = 20  # a message lists at most this many labels


@dataclass(frozen=True)
class Example:
    text: str
    label: int  # class id: the index into the task's Labels
    text_pair: str | None = None  # the second text of a sentence-pair task


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
    labels: Labels = TNEWS
    text_columns: tuple[str, ...] = ("sentence",)  # the record keys of the text (and of its pair)
    why_carved: str = "the public test split has no labels"  # why test comes from train, when it does


@dataclass
class Splits:
    train: Split
    dev: Split
    test: Split
    files: dict[str, str] = field(default_factory=dict)  # the source's files and their checks (RawSplits.files)

    def all(self) -> list[Split]:
        return [self.train, self.dev, self.test]

    def identity(self) -> str:
        """sha256 (16 hex digits) of the train, dev and test row numbers and of the files' checksums:
        runs with the same identity trained and were scored on the same rows of the same files. Changed
        data under the same file names (a refreshed folder between array tasks) gives another identity,
        so its runs are never compared with the earlier ones."""
        return self._identity(self.all())

    def eval_identity(self) -> str:
        """The same over dev and test alone: what runs of different training sizes must share to be
        compared (a learning curve)."""
        return self._identity([self.dev, self.test])

    def _identity(self, splits: list[Split]) -> str:
        rows = ";".join(f"{split.name}:{','.join(map(str, split.rows))}" for split in splits)
        files = ";".join(f"{name}={check}" for name, check in sorted(self.files.items()))
        return hashlib.sha256(f"{rows}|{files}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DataSpec:
    """What to read, from the config: a dataset name, an optional local folder, and for `own` data its
    column keys and label names."""

    dataset: str = "tnews"
    data_dir: str | None = None
    text_column: str = "sentence"
    text_pair_column: str | None = None
    label_column: str = "label"
    label_names: tuple[str, ...] | None = None

    def text_columns(self) -> tuple[str, ...]:
        if self.dataset in CLUE_TASKS:
            return CLUE_TASKS[self.dataset].text_fields
        return (self.text_column, *([self.text_pair_column] if self.text_pair_column else []))


@dataclass(frozen=True)
class Row:
    """One record as read, before its label is given a class id."""

    texts: tuple[str, ...]
    label: str | None
    where: str  # file:line


# ---------------------------------------------------------------- records


def record_row(record: Any, where: str, text_columns: Sequence[str], label_column: str) -> Row:
    """One JSON object (or CSV row as a dict) -> Row. Texts must be non-empty strings; a label is a
    string or an integer (JSON lines may write `1`); an absent or empty label is None."""
    if not isinstance(record, dict):
        hint = " (the job reads JSON lines: one object per line, not a JSON array)" if isinstance(record, list) else ""
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}{hint}")
    texts = []
    for column in text_columns:
        text = record.get(column)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: record has no '{column}' text")
        texts.append(text)
    label = record.get(label_column)
    if isinstance(label, bool) or not isinstance(label, str | int | None):
        raise UserError(f"{where}: label {label!r} must be a string or an integer, not {type(label).__name__}")
    label = None if label is None or label == "" else str(label)
    return Row(tuple(texts), label, where)


def json_rows(path: Path, text_columns: Sequence[str], label_column: str) -> Iterator[Row]:
    """The records of a JSON-lines file (CLUE's format: one object per line; blank lines skipped)."""
    text = read_text(path, "data file").removeprefix("\ufeff")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "; the job reads JSON lines (one object per line), not a JSON array" if line.strip() == "[" else ""
            raise UserError(f"{where}: malformed JSON ({exc.msg}){hint}") from None
        yield record_row(record, where, text_columns, label_column)


def delimited_rows(path: Path, text_columns: Sequence[str], label_column: str, delimiter: str) -> Iterator[Row]:
    """The rows of a CSV or TSV file with a header line. Quoted fields may hold newlines and delimiters
    (the record's line is where it starts); a UTF-8 byte-order mark is dropped."""
    text = read_text(path, "data file").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    start = 1
    try:
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise UserError(f"data file {path} is empty (a header line names the columns)")
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise UserError(f"{path}:1: the header names column {', '.join(map(repr, repeated))} more than once")
        for column in text_columns:
            if column not in header:
                raise UserError(f"{path}: no column '{column}'; the header has {', '.join(map(repr, header))}")
        start = reader.line_num + 1
        for fields in reader:
            where = f"{path}:{start}"
            start = reader.line_num + 1
            if not fields:  # a blank line
                continue
            if len(fields) != len(header):
                raise UserError(f"{where}: {len(fields)} fields, but the header has {len(header)} "
                                f"({', '.join(header)}); a field holding the delimiter must be quoted")  # fmt: skip
            yield record_row(dict(zip(header, fields, strict=True)), where, text_columns, label_column)
    except csv.Error as exc:
        raise UserError(f"{path}:{start}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({exc})") from None


def read_rows(path: Path, text_columns: Sequence[str], label_column: str) -> list[Row]:
    if path.suffix in (".csv", ".tsv"):
        rows = list(delimited_rows(path, text_columns, label_column, "," if path.suffix == ".csv" else "\t"))
    else:
        rows = list(json_rows(path, text_columns, label_column))
    if not rows:
        raise UserError(f"data file {path} is empty")
    return rows


def labelled(rows: list[Row], path: Path, require_label: bool) -> list[Row] | None:
    """The rows, all labelled; None for a file with no labels at all when labels are optional."""
    unlabelled = [row for row in rows if row.label is None]
    if not unlabelled:
        return rows
    if require_label:
        raise UserError(f"{unlabelled[0].where}: record has no label")
    if len(unlabelled) < len(rows):
        raise UserError(f"{path}: {len(unlabelled)} records have no label while {len(rows) - len(unlabelled)} do")
    return None


def to_examples(rows: Sequence[Row], labels: Labels, unknown: str) -> list[Example]:
    """Rows -> Examples with class ids; a label outside `labels` stops the job at its file:line."""
    index = labels.index()
    examples = []
    for row in rows:
        class_id = index.get(row.label)  # type: ignore[arg-type]
        if class_id is None:
            raise UserError(f"{row.where}: label {row.label!r} is not one of {unknown}")
        examples.append(Example(row.texts[0], class_id, row.texts[1] if len(row.texts) > 1 else None))
    return examples


def listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_LABELS])
    return shown + (f", … ({len(names)} in all)" if len(names) > SHOWN_LABELS else "")


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ---------------------------------------------------------------- CLUE tasks


def clue_spec(task: ClueTask) -> dict[str, Any]:
    from paddlenlp.datasets.clue import Clue

    return Clue.BUILDER_CONFIGS[task.name]


def clue_file(task: ClueTask, split: str) -> str:
    """The file name of a split in the task's archive (OCNLI's train is train.50k.json)."""
    return os.path.basename(clue_spec(task)["splits"][split][0])


def clue_labels(task: ClueTask, folder: Path) -> Labels:
    """PaddleNLP's label order; TNEWS's descriptions are the job's own table, IFLYTEK's come from
    labels.json when the folder has it."""
    if task.name == "tnews":
        return TNEWS
    names = tuple(clue_spec(task)["labels"])
    described = folder / "labels.json"
    if not (task.has_label_file and described.is_file()):
        return Labels(names)
    descriptions = {}
    for number, line in enumerate(read_text(described, "label file").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
                descriptions[str(record["label"])] = str(record["label_des"])
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f'{described}:{number}: expected {{"label": ..., "label_des": ...}}') from None
    if set(descriptions) != set(names):
        return Labels(names)
    return Labels(names, tuple(descriptions[name] for name in names))


def clue_split(task: ClueTask, folder: Path, split: str, labels: Labels, require_label: bool) -> list[Example] | None:
    path = folder / clue_file(task, split)
    rows = [row for row in read_rows(path, task.text_fields, "label")
            if not (task.skips_unlabelled and row.label == "-")]  # fmt: skip
    kept = labelled(rows, path, require_label)
    if kept is None:
        return None
    what = f"the {len(labels)} {task.title} labels {listing(labels.names)}"
    return to_examples(kept, labels, what)


def read_clue_folder(folder: Path, task: ClueTask, origin: str, read_test: bool) -> RawSplits:
    """A CLUE task's files in `folder` (as in its archive: train.json, dev.json, an optional test.json)."""
    if not folder.is_dir():
        raise UserError(f"config key 'data_dir': {folder} is not a folder")
    train_path = folder / clue_file(task, "train")
    if not train_path.exists():
        own = [f"train{suffix}" for suffix in OWN_SUFFIXES if (folder / f"train{suffix}").is_file()]
        if own and own != [train_path.name]:
            raise UserError(
                f"config key 'data_dir': {folder} holds {own[0]}, not {task.title}'s {train_path.name}; "
                f"for your own data set dataset: {OWN} (and text_column, label_column)"
            )
    labels = clue_labels(task, folder)
    train = clue_split(task, folder, "train", labels, True)
    dev = clue_split(task, folder, "dev", labels, True)
    test_path = folder / clue_file(task, "test")
    test = clue_split(task, folder, "test", labels, False) if read_test and test_path.exists() else None
    files = {p.name: sha256_file(p) for p in (train_path, folder / clue_file(task, "dev"), test_path)
             if p.exists() and (read_test or p != test_path)}  # fmt: skip
    return RawSplits(train=train or [], dev=dev or [], test=test, origin=origin, files=files, labels=labels,
                     text_columns=task.text_fields)  # fmt: skip


def read_paddlenlp_task(task: ClueTask) -> RawSplits:
    """A CLUE task through PaddleNLP's store: downloaded once into $PPNLP_HOME/datasets, md5-checked,
    then read as a local copy. Its public test split has no labels, so it is never read: the test set
    is carved from train."""
    from job.data.download import clue_archive, fetch_archive

    archive = clue_archive(task.name)
    fetch_archive(archive)  # locked and md5-checked: array tasks may share the cache
    folder = archive.folder / Path(clue_spec(task)["splits"]["train"][0]).parent
    raw = read_clue_folder(folder, task, f"PaddleNLP clue/{task.name} ({folder})", read_test=False)
    raw.files = {name: "md5 checked by PaddleNLP" for name in raw.files}
    return raw


# ---------------------------------------------------------------- a user's own files


def own_file(folder: Path, split: str, required: bool) -> Path | None:
    found = [folder / f"{split}{suffix}" for suffix in OWN_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    if len(found) > 1:
        raise UserError(f"data_dir {folder} holds {' and '.join(p.name for p in found)}: keep one file per split")
    if not found and required:
        raise UserError(f"data_dir {folder} has no {split} file ({', '.join(split + s for s in OWN_SUFFIXES)})")
    return found[0] if found else None


def sorted_labels(values: set[str]) -> tuple[str, ...]:
    """The distinct labels of train in order: numerically when every one is an integer, else as text."""
    if all(value.lstrip("-").isdigit() for value in values):
        return tuple(sorted(values, key=int))
    return tuple(sorted(values))


def read_own_folder(folder: Path, spec: DataSpec) -> RawSplits:
    """train and dev (and an optional labelled test) in `folder`, each .jsonl/.json, .csv or .tsv, read
    with the config's column keys. The labels are `label_names`, else the distinct labels of train."""
    if not folder.is_dir():
        raise UserError(f"config key 'data_dir': {folder} is not a folder")
    columns = spec.text_columns()
    paths = {split: own_file(folder, split, required=split != "test") for split in SPLITS}
    rows = {split: labelled(read_rows(path, columns, spec.label_column), path, True)
            for split, path in paths.items() if path is not None}  # fmt: skip
    if spec.label_names is not None:
        labels = Labels(spec.label_names)
        unknown = f"label_names ({listing(labels.names)})"
    else:
        labels = Labels(sorted_labels({row.label for row in rows["train"]}))  # type: ignore[misc]
        unknown = f"the labels of {paths['train'].name} ({listing(labels.names)})"  # type: ignore[union-attr]
        if len(labels) < 2:
            raise UserError(
                f"{paths['train']}: every row has label {labels.names[0]!r}; a classifier needs at least two labels"
            )
    examples = {split: to_examples(split_rows or [], labels, unknown) for split, split_rows in rows.items()}
    return RawSplits(
        train=examples["train"], dev=examples["dev"], test=examples.get("test"), origin=f"own data in {folder}",
        files={path.name: sha256_file(path) for path in paths.values() if path is not None}, labels=labels,
        text_columns=columns, why_carved=f"{folder} has no test file",
    )  # fmt: skip


def read_source(spec: DataSpec) -> RawSplits:
    if spec.dataset == OWN:
        assert spec.data_dir is not None  # the config requires it
        return read_own_folder(Path(spec.data_dir), spec)
    task = CLUE_TASKS[spec.dataset]
    if spec.data_dir:
        folder = Path(spec.data_dir)
        return read_clue_folder(folder, task, f"local folder {folder}", read_test=True)
    return read_paddlenlp_task(task)
