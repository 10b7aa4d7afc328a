"""Seeded samples of the splits, and the test split carved from train when the public test has no labels."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from job.data.sources import Example, RawSplits, Split, Splits
from job.errors import UserError

MIN_TEST_TITLES = 2  # the fewest a difference and its interval can be computed on


def draw_samples(raw: RawSplits, max_train: int | None, max_eval: int | None, seed: int) -> Splits:
    """Seeded samples. Without a labelled test split, test is carved from train, disjoint by text.
    Each split keeps the row numbers it took from its source file (Splits.identity)."""

    def sampled(name: str, source: list[Example], pool: Sequence[int], limit: int | None, key: str) -> Split:
        rows = _seeded_subset(pool, limit, random.Random(f"{seed}-{name}"))
        left = len(source) - len(pool)  # rows carved for test, or sharing a test title: never trained on
        kept = f" (not the {left:,} carved for test or sharing a test title)" if left else ""
        note = f"{raw.origin}: {name}, {len(rows):,} of {len(source):,} rows{kept}" + _short(rows, limit, key)
        return Split(name, [source[i] for i in rows], note, rows)

    dev = sampled("dev", raw.dev, range(len(raw.dev)), max_eval, "max_eval_samples")
    if raw.test is not None:
        test = sampled("test", raw.test, range(len(raw.test)), max_eval, "max_eval_samples")
        train_pool: Sequence[int] = range(len(raw.train))
    else:
        asked = max_eval if max_eval is not None else len(raw.dev)
        test_size = min(asked, len(raw.train) // 2)  # at least half of train stays to train on
        if test_size == 0:
            raise UserError(f"{raw.origin}: train has {len(raw.train)} row(s), too few to carve a test split from "
                            "and keep rows to train on; add a labelled test file")  # fmt: skip
        test_rows, train_pool = _carve_test(raw.train, test_size, random.Random(f"{seed}-carve"))
        capped = f" (max_eval_samples asks {asked:,}; at most half of train is carved)" if test_size < asked else ""
        test = Split(
            "test",
            [raw.train[i] for i in test_rows],
            f"{raw.origin}: carved from train ({raw.why_carved}), {len(test_rows):,} rows{capped} "
            f"with {'sentence pairs' if raw.train[0].text_pair is not None else 'sentences'} that never occur in the "
            "training sample",
            test_rows,
        )
    train = sampled("train", raw.train, train_pool, max_train, "max_train_samples")
    for split in (train, dev, test):
        if not split.examples:
            raise UserError(f"the {split.name} split is empty after sampling ({split.source})")
    if len(test.examples) < MIN_TEST_TITLES:  # found after training, in the report's statistics, before
        raise UserError(f"the test split has {len(test.examples)} title after sampling ({test.source}): a comparison "
                        f"needs {MIN_TEST_TITLES} or more (256 or more to measure much); add test rows or raise "
                        "max_eval_samples")  # fmt: skip
    return Splits(train=train, dev=dev, test=test, files=dict(raw.files))


def _short(rows: Sequence[int], limit: int | None, key: str) -> str:
    """A note when the split has fewer rows than asked for: all of them are used, and the report says so."""
    return f" ({key} is {limit:,}: fewer rows exist, all are used)" if limit is not None and len(rows) < limit else ""


def _seeded_subset(rows: Sequence[int], limit: int | None, rng: random.Random) -> list[int]:
    """`limit` of the row numbers `rows`, drawn with `rng`, in file order (all of them when there are fewer)."""
    if limit is None or limit >= len(rows):
        return list(rows)
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]


def _texts(example: Example) -> tuple[str, str | None]:
    return example.text, example.text_pair


def _carve_test(rows: Sequence[Example], size: int, rng: random.Random) -> tuple[list[int], list[int]]:
    """Take `size` rows with distinct texts (a pair task: distinct pairs) for test; the rest, minus any
    row sharing a test text, stays for training (train.json repeats some titles). A text whose rows are
    the last training rows of a class is not taken: every class of train keeps a row to train on.
    Returns both as row numbers."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    by_text: dict[tuple[str, str | None], list[int]] = {}
    for index, row in enumerate(rows):
        by_text.setdefault(_texts(row), []).append(index)
    left = Counter(row.label for row in rows)  # training rows of each class not yet carved
    test_indices: list[int] = []
    test_texts: set[tuple[str, str | None]] = set()
    for index in order:
        if len(test_indices) == size:
            break
        texts = _texts(rows[index])
        if texts in test_texts:
            continue
        taken = Counter(rows[i].label for i in by_text[texts])
        if any(left[label] <= count for label, count in taken.items()):
            continue  # the class's last training rows
        left.subtract(taken)
        test_texts.add(texts)
        test_indices.append(index)
    remaining = [i for i, row in enumerate(rows) if _texts(row) not in test_texts]
    return sorted(test_indices), remaining
