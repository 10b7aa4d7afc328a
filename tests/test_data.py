"""Data: labels, readers and their errors, seeded samples, the carved test split, padding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from job.data.batches import Encoded, collate, epoch_batches
from job.data.labels import TNEWS, TNEWS_LABELS
from job.data.sampling import draw_samples
from job.data.sources import DataSpec, Example, RawSplits, clue_split, read_source
from job.data.tasks import CLUE_TASKS
from job.errors import UserError
from tests.fixtures import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def read_clue_file(path: Path) -> list[Example] | None:
    return clue_split(CLUE_TASKS["tnews"], path.parent, path.stem, TNEWS, True)


def read_local_folder(folder: Path) -> RawSplits:
    return read_source(DataSpec(data_dir=str(folder)))


def test_fifteen_labels_in_fixed_order() -> None:
    from paddlenlp.datasets.clue import Clue

    assert len(TNEWS_LABELS) == 15
    assert "105" not in TNEWS_LABELS and "111" not in TNEWS_LABELS
    assert TNEWS.index()["100"] == 0 and TNEWS.index()["116"] == 14
    assert list(TNEWS_LABELS) == Clue.BUILDER_CONFIGS["tnews"]["labels"]  # PaddleNLP's order


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"label": "100", "sentence": "a"}\n{"label": "100", "sent', ":2: malformed JSON"),
        (b'{"label": "100"}\n', ":1: record has no 'sentence'"),
        (b'{"sentence": "x"}\n', ":1: record has no label"),
        (b'{"label": "105", "sentence": "x"}\n', "label '105' is not one of the 15 TNEWS labels"),
        (b'{"label": "100", "sentence": "ok"}\n{"label": "100", "sentence": "\xff\xfe"}\n', ":2: not UTF-8"),
        (b"", "is empty"),
        (b"[1, 2]\n", "expected a JSON object"),
    ],
)
def test_bad_data_names_file_and_line(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "train.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as caught:
        read_clue_file(path)
    assert str(path) in str(caught.value)
    assert fragment in str(caught.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"train\.json does not exist"):
        read_local_folder(tmp_path)


def test_unlabelled_test_file_is_ignored_and_labelled_one_used(tmp_path: Path, tnews_dir: Path) -> None:
    for name in ("train.json", "dev.json"):
        (tmp_path / name).write_bytes((tnews_dir / name).read_bytes())
    write_jsonl(tmp_path / "test.json", [{"id": 1, "sentence": "无标签"}])
    assert read_local_folder(tmp_path).test is None
    write_jsonl(tmp_path / "test.json", [{"label": "101", "sentence": "有标签"}])
    assert read_local_folder(tmp_path).test == [Example("有标签", 1)]
    write_jsonl(tmp_path / "test.json", [{"label": "101", "sentence": "有标签"}, {"sentence": "无标签"}])
    with pytest.raises(UserError, match=r"test\.json: 1 records have no label while 1 do"):
        read_local_folder(tmp_path)


def _raw(train_sentences: list[str], dev: int = 20) -> RawSplits:
    train = [Example(s, i % 15) for i, s in enumerate(train_sentences)]
    return RawSplits(train=train, dev=[Example(f"d{i}", i % 15) for i in range(dev)], test=None, origin="mem")


def test_samples_are_seeded_and_the_carved_test_is_disjoint_by_text() -> None:
    sentences = [f"s{i % 150}" for i in range(400)]  # every sentence repeats
    first = draw_samples(_raw(sentences), max_train=100, max_eval=30, seed=7)
    again = draw_samples(_raw(sentences), max_train=100, max_eval=30, seed=7)
    other = draw_samples(_raw(sentences), max_train=100, max_eval=30, seed=8)
    assert first.train.examples == again.train.examples and first.test.examples == again.test.examples
    assert first.train.examples != other.train.examples
    assert (len(first.train), len(first.dev), len(first.test)) == (100, 20, 30)
    train_text = {e.text for e in first.train.examples}
    test_text = [e.text for e in first.test.examples]
    assert not train_text & set(test_text)
    assert len(set(test_text)) == len(test_text)
    assert "carved from train" in first.test.source


def test_all_training_rows_with_null_limit_still_leave_a_disjoint_test() -> None:
    splits = draw_samples(_raw([f"s{i}" for i in range(100)]), max_train=None, max_eval=10, seed=1)
    assert (len(splits.train), len(splits.test)) == (90, 10)


def test_empty_split_after_sampling_is_an_error() -> None:
    with pytest.raises(UserError, match="dev split is empty"):
        draw_samples(_raw(["a", "b", "c"], dev=0), max_train=2, max_eval=1, seed=1)


def test_batches_depend_only_on_seed_and_epoch() -> None:
    lengths = [5] * 50
    assert epoch_batches(lengths, 8, seed=3, epoch=0) == epoch_batches(lengths, 8, seed=3, epoch=0)
    assert epoch_batches(lengths, 8, seed=3, epoch=0) != epoch_batches(lengths, 8, seed=3, epoch=1)
    batches = epoch_batches(lengths, 8, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(50))
    assert [len(b) for b in batches] == [8] * 6 + [2]


def test_collate_pads_to_the_longest_in_the_batch() -> None:
    rows = [Encoded([1, 5, 2], [0, 0, 0], 3), Encoded([1, 6, 7, 8, 2], [0, 0, 0, 0, 0], 4)]
    batch = collate(rows, pad_id=0)
    assert batch["input_ids"].shape == (2, 5)
    assert batch["input_ids"][0].tolist() == [1, 5, 2, 0, 0]
    assert batch["labels"].tolist() == [3, 4]


def test_tokenizer_truncates_to_max_seq_length(tiny_model: Path) -> None:
    from job.data.batches import encode
    from job.training.model import load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model))
    rows = encode([Example("天地玄黄宇宙洪荒日月盈昃", 0)], tokenizer, max_seq_length=8)
    assert len(rows[0].input_ids) == 8
    assert rows[0].input_ids[0] == tokenizer.cls_token_id and rows[0].input_ids[-1] == tokenizer.sep_token_id


# ------------------------------------------------------------- the real TNEWS files in ../shared


@pytest.mark.slow
def test_real_tnews_local_folder(shared_tnews: Path, tmp_path: Path) -> None:
    raw = read_local_folder(shared_tnews)  # the folder as it is: it has no test.json
    assert (len(raw.train), len(raw.dev), raw.test) == (53_360, 10_000, None)
    assert {e.label for e in raw.train} == set(range(15))
    assert len({e.text for e in raw.train}) == 49_726
    splits = draw_samples(raw, max_train=512, max_eval=256, seed=42)
    assert not {e.text for e in splits.train.examples} & {e.text for e in splits.test.examples}
    assert (len(splits.train), len(splits.dev), len(splits.test)) == (512, 256, 256)
    labels = json.loads("[" + ",".join((shared_tnews / "labels.json").read_text().split("\n")) + "]")
    assert [r["label"] for r in labels] == list(TNEWS_LABELS)


@pytest.mark.slow
def test_real_tnews_through_the_paddlenlp_cache(shared_tnews: Path, tmp_path: Path) -> None:
    """The job reads the md5-checked files in $PPNLP_HOME (where load_dataset('clue', 'tnews') looks too)
    and downloads nothing."""
    cache = tmp_path / "ppnlp" / "datasets" / "Clue" / "tnews_public"
    cache.parent.mkdir(parents=True)
    cache.symlink_to(shared_tnews, target_is_directory=True)  # a linked folder is read; a link out of it is not
    code = (
        "from job.data.sources import read_paddlenlp_task\nfrom job.data.sampling import draw_samples\n"
        "from job.data.tasks import CLUE_TASKS\nraw = read_paddlenlp_task(CLUE_TASKS['tnews'])\n"
        "s = draw_samples(raw, 512, 256, 42)\n"
        "print(len(raw.train), len(raw.dev), raw.test, len(s.test), s.train.examples[0].label)\n"
    )
    env = {**os.environ, "PPNLP_HOME": str(tmp_path / "ppnlp")}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert result.returncode == 0, result.stderr
    train, dev, test, carved, label = result.stdout.split()
    assert (train, dev, test, carved) == ("53360", "10000", "None", "256")
    assert 0 <= int(label) < 15


def test_asking_for_more_rows_than_exist_uses_all_and_says_so() -> None:
    splits = draw_samples(_raw([f"s{i}" for i in range(50)], dev=10), max_train=1000, max_eval=20, seed=1)
    assert len(splits.dev) == 10
    assert "max_eval_samples is 20: fewer rows exist, all are used" in splits.dev.source
    assert len(splits.train) == 30  # 50 minus the 20 carved for test
    assert "max_train_samples is 1,000: fewer rows exist, all are used" in splits.train.source
    assert "fewer rows" not in splits.test.source


def test_length_buckets_cut_padding_and_keep_every_row_once() -> None:
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(512)]

    def padded_tokens(batches: list[list[int]]) -> int:
        return sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)

    plain = epoch_batches(lengths, 8, seed=42, epoch=0)
    bucketed = epoch_batches(lengths, 8, seed=42, epoch=0, bucket_window=16)
    assert sorted(i for b in bucketed for i in b) == list(range(512))
    assert padded_tokens(bucketed) < 0.8 * padded_tokens(plain)
    # Windows follow the seeded order: the first window holds the first 128 rows of the plain order.
    assert {i for b in bucketed[:16] for i in b} == {i for b in plain[:16] for i in b}
    assert bucketed == epoch_batches(lengths, 8, seed=42, epoch=0, bucket_window=16)
    assert bucketed != epoch_batches(lengths, 8, seed=43, epoch=0, bucket_window=16)
