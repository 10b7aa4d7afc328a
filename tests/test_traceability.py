"""What a record says traces back to the rows and the model it came from: every run of a grid saw the
sample `data_seed` draws (recorded as its identity), and its dev and test numbers are those of its
saved model on the dev and test rows of that sample."""

from __future__ import annotations

import json
from pathlib import Path

from job.data.sampling import draw_samples
from job.data.sources import DataSpec, read_source
from job.predict import load_saved_model, predictions
from job.results.stats import decode_classes
from tests.fixtures import run_tiny

TRAIN, EVAL = 64, 40


def test_every_run_records_the_sample_data_seed_draws_and_is_scored_on_its_own_dev_and_test_rows(
    tmp_path: Path, tiny_model: Path, tnews_dir: Path
) -> None:
    out = run_tiny(tmp_path, tiny_model, tnews_dir, strategies=["full_finetune"], seed=[1, 2], data_seed=7,
                   num_epochs=1, max_train_samples=TRAIN, max_eval_samples=EVAL, save_artifacts=True)  # fmt: skip
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    raw = read_source(DataSpec(data_dir=str(tnews_dir)))
    splits = draw_samples(raw, TRAIN, EVAL, seed=7)
    assert [run["sample"] for run in results["runs"]] == [splits.identity()] * 2
    assert splits.identity() != draw_samples(raw, TRAIN, EVAL, seed=1).identity()
    assert f"Every run saw the same training, dev and test rows (sample `{splits.identity()}`)." in (
        out / "ernie_lora_vs_full_report.md"
    ).read_text(encoding="utf-8")

    for name, split in (("dev", splits.dev), ("test", splits.test)):
        assert decode_classes(results["run"]["data"][name]["labels"]) == [e.label for e in split.examples]
    for run in results["runs"]:
        saved = load_saved_model(out / folder_of(run))
        for name, split in (("dev", splits.dev), ("test", splits.test)):
            gold = [example.label for example in split.examples]
            titles = [(example.text,) for example in split.examples]
            again = [saved.labels.index()[line["label"]] for line in predictions(saved, titles, 16, 32)]
            assert decode_classes(run[name]["predictions"]) == again, (run["key"], name)
            assert run[name]["accuracy"] == sum(p == g for p, g in zip(again, gold, strict=True)) / len(gold)


def folder_of(run: dict) -> str:
    """The saved model's folder (a full fine-tuning run saves one)."""
    (folder,) = run["artifacts"]
    return folder
