"""`python -m job predict`: run a saved model on new titles. The folder may be a full fine-tuning
model, a merged LoRA model, or a LoRA adapter (its base model is found from lora_config.json)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.data.batches import encode
from job.data.labels import NUM_CLASSES, TNEWS_LABEL_DESC, TNEWS_LABELS
from job.data.sources import Example
from job.data.textfiles import read_text
from job.errors import UserError
from job.training.device_faults import raise_if_device_fault
from job.training.model import classifier_of, looks_like_a_path

ADAPTER_CONFIG = "lora_config.json"


@dataclass
class SavedModel:
    model: Any
    tokenizer: Any
    codes: list[str]  # TNEWS code of each class id
    descriptions: list[str]  # label_desc of each class id


def read_titles(path: Path) -> list[str]:
    """One title per line, or CLUE JSON lines ({"sentence": ...}); blank lines are skipped."""
    text = read_text(path, "--input")
    titles = [_title(line, path, number) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not titles:
        raise UserError(f"--input {path} has no titles (one per line, or CLUE JSON lines)")
    return titles


def _title(line: str, path: Path, number: int) -> str:
    stripped = line.strip()
    if not stripped.startswith("{"):
        return stripped
    try:
        record = json.loads(stripped)
    except json.JSONDecodeError:
        return stripped  # a title that happens to start with a brace
    sentence = record.get("sentence") if isinstance(record, dict) else None
    if not isinstance(sentence, str) or not sentence.strip():
        raise UserError(f"--input {path}:{number}: a JSON line needs a 'sentence' text")
    return sentence


def load_saved_model(folder: Path) -> SavedModel:
    """The classifier saved in `folder`, with its tokenizer and label names. Exit-2 errors name the folder."""
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise UserError(f"{folder} is not a saved model: it has no config.json (use a folder under artifacts/)")
    from paddlenlp.transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        if (folder / ADAPTER_CONFIG).is_file():
            model = _adapter(folder)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(folder))
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise_if_device_fault(exc)
        raise UserError(f"{folder} is not a model this job can load: {exc}") from None
    config = classifier_of(model).config
    codes = list(getattr(config, "tnews_label_codes", None) or TNEWS_LABELS)
    if len(codes) != NUM_CLASSES or not hasattr(config, "id2label"):
        raise UserError(f"{folder} is not a TNEWS classifier of {NUM_CLASSES} classes")
    return SavedModel(model, tokenizer, codes, [TNEWS_LABEL_DESC.get(code, code) for code in codes])


def _adapter(folder: Path) -> Any:
    """The base model named in lora_config.json with the adapter (and the trained head) loaded on top."""
    from paddlenlp.peft import LoRAConfig, LoRAModel
    from paddlenlp.transformers import AutoModelForSequenceClassification

    base = LoRAConfig.from_pretrained(str(folder)).base_model_name_or_path
    if not base:
        raise UserError(f"adapter {folder} does not name its base model (lora_config.json base_model_name_or_path)")
    if looks_like_a_path(base) and not Path(base).is_dir():
        raise UserError(f"adapter {folder} adapts {base}, which does not exist here")
    model = AutoModelForSequenceClassification.from_pretrained(base, num_classes=NUM_CLASSES)
    return LoRAModel.from_pretrained(model, str(folder))


def predictions(saved: SavedModel, titles: list[str], batch_size: int, max_seq_length: int) -> Iterator[dict]:
    """One JSON-ready line per title: sentence, TNEWS label code, label_desc, probability."""
    from job.training.evaluate import predict

    rows = encode([Example(sentence=title, label=0) for title in titles], saved.tokenizer, max_seq_length)
    for title, (class_id, probability) in zip(
        titles, predict(saved.model, rows, batch_size, int(saved.tokenizer.pad_token_id)), strict=True
    ):
        yield {
            "sentence": title,
            "label": saved.codes[class_id],
            "label_desc": saved.descriptions[class_id],
            "probability": round(probability, 6),
        }
