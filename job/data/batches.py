"""Tokenised rows, the epoch's batches (length buckets within seeded windows), and padded batches."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from job.data.sources import Example, Splits


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int]
    label: int


@dataclass(frozen=True)
class EncodedSplits:
    """The train, dev and test rows of a sample, tokenised."""

    train: list[Encoded]
    dev: list[Encoded]
    test: list[Encoded]


def encode_splits(splits: Splits, tokenizer: Any, max_seq_length: int) -> EncodedSplits:
    return EncodedSplits(**{split.name: encode(split.examples, tokenizer, max_seq_length) for split in splits.all()})


# ERNIE's WordPiece reads at most 100 characters as one token (a longer word is one [UNK]), so no text of
# more than 100 x max_seq_length characters, whitespace collapsed, can give a token past the cut.
CHARACTERS_PER_TOKEN = 100


def cut(text: str, bound: int) -> str:
    """`text` cut to `bound` characters before it is tokenised, with the same tokens up to max_seq_length:
    the tokenizer splits at whitespace, so runs of it are collapsed first. A 17-million-character title
    took 292 s and a MemoryError to tokenise whole; cut, it takes milliseconds."""
    if len(text) <= bound:
        return text
    return " ".join(text.split())[:bound]


def encode(examples: Sequence[Example], tokenizer: Any, max_seq_length: int) -> list[Encoded]:
    """Token ids of each text; a sentence pair is encoded as one: [CLS] a [SEP] b [SEP], with segment
    ids 0 for the first text and 1 for the second, truncated longest-first to `max_seq_length`."""
    bound = CHARACTERS_PER_TOKEN * max_seq_length
    texts = [cut(example.text, bound) for example in examples]
    pairs = [None if example.text_pair is None else cut(example.text_pair, bound) for example in examples]
    if any(pair is not None for pair in pairs):
        assert all(pair is not None for pair in pairs), "a split mixes single texts and pairs"
        tokens = tokenizer(texts, text_pair=pairs, max_length=max_seq_length, truncation=True,
                           return_token_type_ids=True)  # fmt: skip
    else:
        tokens = tokenizer(texts, max_length=max_seq_length, truncation=True, return_token_type_ids=True)
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
