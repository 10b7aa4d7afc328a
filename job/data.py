"""TNEWS data: sources, the label map, seeded samples, the carved test split, tokenization, batches."""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from job.errors import RetryableError, UserError
from job.textfiles import read_text

# CLUE TNEWS labels in PaddleNLP's fixed order ("105" and "111" do not exist). Index = class id.
TNEWS_LABELS: tuple[str, ...] = (
    "100", "101", "102", "103", "104", "106", "107", "108", "109", "110", "112", "113", "114", "115", "116",
)  # fmt: skip
TNEWS_LABEL_DESC: dict[str, str] = {
    "100": "news_story", "101": "news_culture", "102": "news_entertainment", "103": "news_sports",
    "104": "news_finance", "106": "news_house", "107": "news_car", "108": "news_edu", "109": "news_tech",
    "110": "news_military", "112": "news_travel", "113": "news_world", "114": "news_stock",
    "115": "news_agriculture", "116": "news_game",
}  # fmt: skip
LABEL_TO_ID = {label: index for index, label in enumerate(TNEWS_LABELS)}
NUM_CLASSES = len(TNEWS_LABELS)


def name_labels(model_config: Any) -> None:
    """Write the label names into a model's config before it is saved: id2label/label2id with the
    TNEWS descriptions (news_tech), and `tnews_label_codes`, the TNEWS code of each class id (109)."""
    model_config.id2label = {index: TNEWS_LABEL_DESC[code] for index, code in enumerate(TNEWS_LABELS)}
    model_config.label2id = {TNEWS_LABEL_DESC[code]: index for index, code in enumerate(TNEWS_LABELS)}
    model_config.tnews_label_codes = list(TNEWS_LABELS)


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


# ---------------------------------------------------------------- reading


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

    from job.download import fetch_archive, tnews_archive

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


# ---------------------------------------------------------------- sampling


def draw_samples(raw: RawSplits, max_train: int | None, max_eval: int | None, seed: int) -> Splits:
    """Seeded samples. Without a labelled test split, test is carved from train, disjoint by text.
    Each split keeps the row numbers it took from its source file (Splits.identity)."""

    def sampled(name: str, source: list[Example], pool: Sequence[int], limit: int | None, key: str) -> Split:
        rows = _seeded_subset(pool, limit, random.Random(f"{seed}-{name}"))
        note = f"{raw.origin}: {name}, {len(rows):,} of {len(source):,} rows" + _short(rows, limit, key)
        return Split(name, [source[i] for i in rows], note, rows)

    dev = sampled("dev", raw.dev, range(len(raw.dev)), max_eval, "max_eval_samples")
    if raw.test is not None:
        test = sampled("test", raw.test, range(len(raw.test)), max_eval, "max_eval_samples")
        train_pool: Sequence[int] = range(len(raw.train))
    else:
        test_size = max_eval if max_eval is not None else len(raw.dev)
        test_rows, train_pool = _carve_test(raw.train, test_size, random.Random(f"{seed}-carve"))
        test = Split(
            "test",
            [raw.train[i] for i in test_rows],
            f"{raw.origin}: carved from train (the public test split has no labels), {len(test_rows):,} rows "
            "with sentences that never occur in the training sample",
            test_rows,
        )
    train = sampled("train", raw.train, train_pool, max_train, "max_train_samples")
    for split in (train, dev, test):
        if not split.examples:
            raise UserError(f"the {split.name} split is empty after sampling ({split.source})")
    return Splits(train=train, dev=dev, test=test)


def _short(rows: Sequence[int], limit: int | None, key: str) -> str:
    """A note when the split has fewer rows than asked for: all of them are used, and the report says so."""
    return f" ({key} is {limit:,}: fewer rows exist, all are used)" if limit is not None and len(rows) < limit else ""


def _seeded_subset(rows: Sequence[int], limit: int | None, rng: random.Random) -> list[int]:
    """`limit` of the row numbers `rows`, drawn with `rng`, in file order (all of them when there are fewer)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]


def _carve_test(rows: Sequence[Example], size: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Take `size` rows with distinct sentences for test; the rest, minus any row sharing a test
    sentence, stays for training (train.json repeats some sentences). Returns both as row numbers."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    test_indices: list[int] = []
    test_sentences: set[str] = set()
    for index in order:
        if len(test_indices) == size:
            break
        if rows[index].sentence not in test_sentences:
            test_sentences.add(rows[index].sentence)
            test_indices.append(index)
    remaining = [i for i, row in enumerate(rows) if row.sentence not in test_sentences]
    return sorted(test_indices), remaining


# ---------------------------------------------------------------- tokens and batches


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    label: int


def encode(examples: Sequence[Example], tokenizer: Any, max_seq_length: int) -> list[Encoded]:
    sentences = [example.sentence for example in examples]
    tokens = tokenizer(sentences, max_length=max_seq_length, truncation=True, return_token_type_ids=True)
    return [
        Encoded(ids, types, example.label)
        for ids, types, example in zip(tokens["input_ids"], tokens["token_type_ids"], examples, strict=True)
    ]


def epoch_batches(
    lengths: Sequence[int], batch_size: int, seed: int, epoch: int, bucket_window: int = 0
) -> list[list[int]]:
    """Index batches for one epoch; the order depends only on (seed, epoch), so every strategy sees
    the same batches in the same order.

    With `bucket_window` > 0, rows are sorted by length within each window of that many batches of the
    seeded order, cut into batches, and those batches shuffled within the window: batches of similar
    lengths waste less padding, while every window still draws from the whole seeded order."""
    rng = random.Random(f"{seed}-epoch-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if bucket_window <= 0:
        return _chunks(order, batch_size)
    batches: list[list[int]] = []
    span = bucket_window * batch_size
    for start in range(0, len(order), span):
        window = sorted(order[start : start + span], key=lambda index: lengths[index])
        window_batches = _chunks(window, batch_size)
        rng.shuffle(window_batches)
        batches.extend(window_batches)
    return batches


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


def collate(rows: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Pad to the longest sentence in this batch (dynamic padding), as numpy arrays."""
    import numpy as np

    width = max(len(row.input_ids) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype="int64")
    token_type_ids = np.zeros((len(rows), width), dtype="int64")
    for i, row in enumerate(rows):
        input_ids[i, : len(row.input_ids)] = row.input_ids
        token_type_ids[i, : len(row.token_type_ids)] = row.token_type_ids
    labels = np.array([row.label for row in rows], dtype="int64")
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "labels": labels}


def iterate_batches(rows: Sequence[Encoded], batches: Sequence[Sequence[int]], pad_id: int) -> Iterator[dict[str, Any]]:
    for batch in batches:
        yield collate([rows[i] for i in batch], pad_id)
