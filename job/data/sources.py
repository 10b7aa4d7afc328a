"""The data: examples and splits, read from a CLUE task (PaddleNLP's download or a local copy in its
format) or from a user's own labelled files (JSON lines, CSV, TSV), each record checked. Every
message names the file and line at fault."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.data.labels import TNEWS, Labels
from job.data.tasks import CLUE_TASKS, OWN, ClueTask
from job.data.textfiles import DATA_LIMIT, excerpt, lines_of, read_data_file
from job.errors import UserError

# Python's csv module refuses a field longer than 131,072 characters as an error, so one long article in
# a CSV was "malformed" while the same text in JSON lines was read (and cut before tokenising). A field
# is bounded by the file's own limit instead.
csv.field_size_limit(DATA_LIMIT)

SPLITS = ("train", "dev", "test")
OWN_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")  # what a split's file may be in `dataset: own`
SHOWN_LABELS = 20  # a message lists at most this many labels
INTEGER = re.compile(r"-?[0-9]+")  # ASCII digits: str.isdigit() also takes '²', which int() refuses


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
    no_label: str = ""  # why the label is None: the record has no such key (its keys), for the message


# ---------------------------------------------------------------- records


def record_row(record: Any, where: str, text_columns: Sequence[str], label_column: str, keyed: bool = True) -> Row:
    """One JSON object (or CSV row as a dict) -> Row. Texts must be non-empty strings; a label is a
    string or an integer (JSON lines may write `1`); an absent or empty label is None."""
    if not isinstance(record, dict):
        hint = " (the job reads JSON lines: one object per line, not a JSON array)" if isinstance(record, list) else ""
        raise UserError(f"{where}: expected a JSON object, got {type(record).__name__}{hint}")
    texts = []
    for column in text_columns:
        text = record.get(column)
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"{where}: record has no '{column}' text{_keys_hint(record, column)}"
                            + (" (config key 'text_column')" if keyed and column not in record else ""))  # fmt: skip
        texts.append(text)
    label = record.get(label_column)
    if isinstance(label, bool) or not isinstance(label, str | int | None):
        raise UserError(f"{where}: label {excerpt(label)} must be a string or an integer, not {type(label).__name__}")
    if isinstance(label, int) and len(str(abs(label))) > 18:  # JSON may write a 5,000-digit integer
        raise UserError(f"{where}: label {excerpt(label)} is not a class name ({len(str(label)):,} digits)")
    # ` 1` and `1` are one class; a cell of spaces is an empty label
    label = None if label is None or not str(label).strip() else str(label).strip()
    missing = f"no '{label_column}' key{_keys_hint(record, label_column)}" + (
        " (config key 'label_column')" if keyed else ""
    )
    return Row(tuple(texts), label, where, missing if label_column not in record else "")


def _keys_hint(record: dict, column: str) -> str:
    """Where a record lacks a key: the keys it has (a few), and the config key that names the column."""
    if column in record:
        return ""
    keys = ", ".join(excerpt(key, 30) for key in list(record)[:8]) + (", …" if len(record) > 8 else "")
    return f"; its keys are {keys or 'none'}"


def json_rows(
    path: Path, folder: Path, text_columns: Sequence[str], label_column: str, keyed: bool = True
) -> Iterator[Row]:
    """The records of a JSON-lines file (CLUE's format: one object per line; blank lines skipped).
    `keyed`: the columns are config keys (own data), which a message about a missing one names."""
    text = read_data_file(path, folder).removeprefix("\ufeff")
    return json_rows_of(path, text, text_columns, label_column, keyed)


def json_rows_of(
    path: Path, text: str, text_columns: Sequence[str], label_column: str, keyed: bool = True
) -> Iterator[Row]:
    for number, line in enumerate(lines_of(text), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = "; the job reads JSON lines (one object per line), not a JSON array" if line.strip() == "[" else ""
            raise UserError(f"{where}: malformed JSON ({exc.msg}){hint}") from None
        except (ValueError, RecursionError) as exc:  # an integer of 4,300+ digits; 100,000 nested '['
            why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
            raise UserError(f"{where}: unreadable JSON ({why})") from None
        yield record_row(record, where, text_columns, label_column, keyed)


def delimited_rows(
    path: Path, folder: Path, text_columns: Sequence[str], label_column: str, delimiter: str, require_label: bool
) -> Iterator[Row]:
    """The rows of a CSV or TSV file with a header line. Quoted fields may hold newlines and delimiters
    (the record's line is where it starts); a UTF-8 byte-order mark is dropped."""
    text = read_data_file(path, folder).removeprefix("\ufeff")
    return delimited_rows_of(path, text, text_columns, label_column, delimiter, require_label)


def delimited_rows_of(
    path: Path, text: str, text_columns: Sequence[str], label_column: str, delimiter: str, require_label: bool
) -> Iterator[Row]:
    records = _field_rows(path, text, delimiter)
    header = [name.strip() for name in records[0][1]] if records else []
    if not any(header):
        raise UserError(f"data file {path} is empty (a header line names the columns)")
    repeated = sorted(name for name, count in Counter(header).items() if count > 1)  # linear: 200,000 columns
    if repeated:
        raise UserError(f"{path}:1: the header names column {_names(repeated)} more than once")
    wanted = [*text_columns, *([label_column] if require_label else [])]
    for column in wanted:
        if column not in header:
            key = "label_column" if column == label_column and column not in text_columns else "text_column"
            others = [name for name in header if name not in (*text_columns, label_column)]
            named = len(others) == 1 and others[0].isprintable() and others[0].strip() == others[0]  # no NUL, no tab
            fix = f"set {key}: {others[0]}" if named else f"set config key '{key}' to the column's name"
            raise UserError(f"{path}: no column '{column}'; the header has {_names(header)} ({fix})")
    for line, fields in records[1:]:
        where = f"{path}:{line}"
        if not fields:  # a blank line
            continue
        if len(fields) != len(header):
            columns = _names(header, quoted=False)
            raise UserError(f"{where}: {len(fields)} fields, but the header has {len(header)} "
                            f"({columns}); a field holding the delimiter must be quoted")  # fmt: skip
        yield record_row(dict(zip(header, fields, strict=True)), where, text_columns, label_column)


def _field_rows(path: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """(line where the record starts, its fields) of every record. CSV quoting is read in both formats (a
    spreadsheet's or pandas' TSV quotes a field holding a quote). A TSV whose quotes are not CSV quoting
    (a title that starts with one: `"一带一路"倡议`, which TSV proper, having no quoting, allows) is read
    again with no quoting at all, rather than refused as malformed; so is one where quoting would join
    lines that are each a whole row, when read without it."""
    line = 1

    def parse(quoting: int) -> list[tuple[int, list[str]]]:
        nonlocal line
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True, quoting=quoting)
        records, line = [], 1
        for fields in reader:
            records.append((line, fields))
            line = reader.line_num + 1
        return records

    try:
        quoted = parse(csv.QUOTE_MINIMAL)
    except csv.Error as exc:
        error = exc
    else:
        if delimiter != "\t":
            return quoted
        with contextlib.suppress(csv.Error):
            plain = parse(csv.QUOTE_NONE)
            width = len(plain[0][1]) if plain else 0
            # Quoting that joined lines which are each a whole row of plain TSV: a stray quote at the start
            # of a title (rows 11-21 became one text), not a pandas-quoted field (whose lines are not).
            if len(plain) != len(quoted) and all(len(fields) in (0, width) for _, fields in plain):
                return plain
        return quoted
    if delimiter == "\t":
        with contextlib.suppress(csv.Error):
            return parse(csv.QUOTE_NONE)
    raise UserError(f"{path}:{line}: malformed {'TSV' if delimiter == chr(9) else 'CSV'} ({error})") from None


def _names(names: Sequence[str], quoted: bool = True) -> str:
    """Column names for a message: a few, each cut short (a header may be a whole file's first line)."""
    shown = ", ".join(excerpt(name, 30) if quoted or len(name) > 25 or not name.isprintable() else name
                      for name in names[:8])  # fmt: skip
    return shown + (f", … ({len(names):,} in all)" if len(names) > 8 else "")


def read_rows(path: Path, folder: Path, text_columns: Sequence[str], label_column: str,
              require_label: bool = True, keyed: bool = True) -> list[Row]:  # fmt: skip
    if path.suffix in (".csv", ".tsv"):
        delimiter = "," if path.suffix == ".csv" else "\t"
        rows = list(delimited_rows(path, folder, text_columns, label_column, delimiter, require_label))
    else:
        rows = list(json_rows(path, folder, text_columns, label_column, keyed))
    if not rows:
        raise UserError(f"data file {path} is empty")
    return rows


def labelled(rows: list[Row], path: Path, require_label: bool) -> list[Row] | None:
    """The rows, all labelled; None for a file with no labels at all when labels are optional."""
    unlabelled = [row for row in rows if row.label is None]
    if not unlabelled:
        return rows
    if require_label:
        why = unlabelled[0].no_label or "an empty or blank label"
        raise UserError(f"{unlabelled[0].where}: record has no label ({why})")
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
            raise UserError(f"{row.where}: label {excerpt(row.label)} is not one of {unknown}")
        examples.append(Example(row.texts[0], class_id, row.texts[1] if len(row.texts) > 1 else None))
    return examples


def listing(names: Sequence[str]) -> str:
    shown = ", ".join(excerpt(name, 30)[1:-1] if len(name) > 25 else name for name in names[:SHOWN_LABELS])
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
    for number, line in enumerate(lines_of(read_data_file(described, folder, "label file")), start=1):
        if line.strip():
            try:
                record = json.loads(line)
                descriptions[str(record["label"])] = str(record["label_des"])
            except (ValueError, RecursionError, KeyError, TypeError):
                raise UserError(f'{described}:{number}: expected {{"label": ..., "label_des": ...}}') from None
    if set(descriptions) != set(names):
        return Labels(names)
    return Labels(names, tuple(descriptions[name] for name in names))


def clue_split(task: ClueTask, folder: Path, split: str, labels: Labels, require_label: bool) -> list[Example] | None:
    path = folder / clue_file(task, split)
    read = read_rows(path, folder, task.text_fields, "label", require_label, keyed=False)
    rows = [row for row in read if not (task.skips_unlabelled and row.label == "-")]
    if not rows:  # OCNLI writes '-' where its annotators disagreed
        raise UserError(f"{path}: none of its {len(read):,} records has a label (every one is '-')")
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
    if not _present(train_path):
        own = [f"train{suffix}" for suffix in OWN_SUFFIXES if _present(folder / f"train{suffix}")]
        if own and own != [train_path.name]:
            raise UserError(
                f"config key 'data_dir': {folder} holds {own[0]}, not {task.title}'s {train_path.name}; "
                f"for your own data set dataset: {OWN} (and text_column, label_column)"
            )
    labels = clue_labels(task, folder)
    train = clue_split(task, folder, "train", labels, True)
    dev = clue_split(task, folder, "dev", labels, True)
    test_path = folder / clue_file(task, "test")
    test = clue_split(task, folder, "test", labels, False) if read_test and _present(test_path) else None
    files = {p.name: sha256_file(p) for p in (train_path, folder / clue_file(task, "dev"), test_path)
             if _present(p) and (read_test or p != test_path)}  # fmt: skip
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


def _present(path: Path) -> bool:
    """Anything by that name, a folder, a FIFO or a dangling link included: reading it says what it is."""
    return path.is_symlink() or path.exists()


def own_file(folder: Path, split: str, required: bool) -> Path | None:
    found = [folder / f"{split}{suffix}" for suffix in OWN_SUFFIXES if _present(folder / f"{split}{suffix}")]
    if len(found) > 1:
        raise UserError(f"data_dir {folder} holds {' and '.join(p.name for p in found)}: keep one file per split")
    if not found and required:
        raise UserError(f"data_dir {folder} has no {split} file ({', '.join(split + s for s in OWN_SUFFIXES)})")
    return found[0] if found else None


def sorted_labels(values: set[str], path: Path) -> tuple[str, ...]:
    """The distinct labels of train in order: numerically when every one is an integer, else as text.
    Two spellings of one number (`1` and `1.0`, `1` and `01`) would silently be two classes: refused."""
    numbers: dict[float, str] = {}
    for value in sorted(values):
        try:
            number = float(value) if len(value) < 40 else None
        except ValueError:
            number = None
        if number is not None and number in numbers:
            raise UserError(f"{path}: labels {excerpt(numbers[number])} and {excerpt(value)} are one number "
                            "written two ways, and would be two classes: write each class one way")  # fmt: skip
        if number is not None:
            numbers[number] = value
    if all(INTEGER.fullmatch(value) for value in values):
        return tuple(sorted(values, key=int))
    return tuple(sorted(values))


PEEK_BYTES = 1 << 16  # what a preflight reads of each file: its header and first records


def peek_own_folder(folder: Path, spec: DataSpec) -> list[str]:
    """The preflight of `job validate` for own data: each split's file found and of the right kind, and
    its header (CSV, TSV) or first record (JSON lines) holding the configured columns, from the file's
    first 64 KiB alone. UserError (the run's own message) for what `job run` would stop on there; one
    line per file otherwise."""
    if not folder.is_dir():
        raise UserError(f"config key 'data_dir': {folder} is not a folder")
    columns, lines = spec.text_columns(), []
    for split in SPLITS:
        path = own_file(folder, split, required=split != "test")
        if path is None:
            continue
        text = read_data_file(path, folder, head=PEEK_BYTES).removeprefix("\ufeff")
        first = next((line for line in lines_of(text) if line.strip()), None)
        if first is None:
            raise UserError(f"data file {path} is empty")
        if path.suffix in (".csv", ".tsv"):  # the header alone: a cut may fall inside a quoted field
            list(delimited_rows_of(path, first, columns, spec.label_column, _delimiter(path), require_label=True))
            lines.append(f"{path.name}: columns {_names(next(csv.reader([first], delimiter=_delimiter(path))))}")
        else:
            row = next(json_rows_of(path, first, columns, spec.label_column))
            labelled([row], path, require_label=True)
            lines.append(f"{path.name}: first record has {', '.join(map(repr, (*columns, spec.label_column)))}")
    return lines


def peek_clue_folder(folder: Path, task: ClueTask) -> list[str]:
    """The preflight for a CLUE task's local folder (`job doctor`): train and dev there, regular files,
    each first record holding the task's text fields and a label, from the first 64 KiB alone."""
    if not folder.is_dir():
        raise UserError(f"config key 'data_dir': {folder} is not a folder")
    lines = []
    for split in ("train", "dev"):
        path = folder / clue_file(task, split)
        text = read_data_file(path, folder, head=PEEK_BYTES).removeprefix("\ufeff")
        first = next((line for line in lines_of(text) if line.strip()), None)
        if first is None:
            raise UserError(f"data file {path} is empty")
        row = next(json_rows_of(path, first, task.text_fields, "label", keyed=False))
        labelled([row], path, require_label=True)
        lines.append(f"{path.name}: first record has {', '.join(map(repr, (*task.text_fields, 'label')))}")
    return lines


def _delimiter(path: Path) -> str:
    return "," if path.suffix == ".csv" else "\t"


def read_own_folder(folder: Path, spec: DataSpec) -> RawSplits:
    """train and dev (and an optional labelled test) in `folder`, each .jsonl/.json, .csv or .tsv, read
    with the config's column keys. The labels are `label_names`, else the distinct labels of train."""
    if not folder.is_dir():
        raise UserError(f"config key 'data_dir': {folder} is not a folder")
    columns = spec.text_columns()
    paths = {split: own_file(folder, split, required=split != "test") for split in SPLITS}
    rows = {split: labelled(read_rows(path, folder, columns, spec.label_column), path, True)
            for split, path in paths.items() if path is not None}  # fmt: skip
    if spec.label_names is not None:
        labels = Labels(spec.label_names)
        unknown = f"label_names ({listing(labels.names)})"
    else:
        labels = Labels(sorted_labels({row.label for row in rows["train"]}, paths["train"]))  # type: ignore[misc,arg-type]
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
