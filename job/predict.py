"""`python -m job predict`: run a saved model on new texts. The folder may be a full fine-tuning
model, a merged LoRA model, or a LoRA adapter (its base model is found from lora_config.json). The
model carries its task's labels and text keys (job.data.labels), so it prints the user's own label names."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from job.data.batches import encode
from job.data.download import fetch_model
from job.data.labels import SAVED_TEXT_COLUMNS, Labels, saved_labels
from job.data.sources import Example
from job.data.textfiles import lines_of, read_text
from job.errors import RetryableError, UserError
from job.runtime.device_faults import raise_if_device_fault
from job.training.model import classifier_of, load_tokenizer, looks_like_a_path

ADAPTER_CONFIG = "lora_config.json"
INPUT_LIMIT = 256 << 20  # texts to classify; `--input /dev/zero` ends here instead of filling memory
SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")


@dataclass
class SavedModel:
    model: Any
    tokenizer: Any
    labels: Labels
    text_columns: tuple[str, ...]  # the keys of a JSON input line: the text, and its pair for a pair task
    max_positions: int | None = None  # the model's position limit: the longest --max-seq-length

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


def read_inputs(path: Path, text_columns: Sequence[str]) -> list[tuple[str, ...]]:
    """One text per line, or JSON lines with the model's text keys ({"sentence": ...}; a pair model:
    both of its keys). Blank lines are skipped."""
    text = read_text(path, "--input", limit=INPUT_LIMIT)
    rows = [_row(line, path, number, text_columns)
            for number, line in enumerate(lines_of(text), start=1) if line.strip()]  # fmt: skip
    if not rows:
        raise UserError(f"--input {path} has no titles (one per line, or JSON lines with '{text_columns[0]}')")
    return rows


def _row(line: str, path: Path, number: int, text_columns: Sequence[str]) -> tuple[str, ...]:
    stripped = line.strip()
    record = None
    if stripped.startswith("{"):
        try:
            record = json.loads(stripped)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; 4,300+ digits; deep nesting
            record = None  # a title that happens to start with a brace
    if record is None:
        if len(text_columns) == 2:
            raise UserError(f"--input {path}:{number}: this sentence-pair model reads JSON lines with "
                            f"'{text_columns[0]}' and '{text_columns[1]}'")  # fmt: skip
        return (stripped,)
    texts = []
    for column in text_columns:
        value = record.get(column) if isinstance(record, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"--input {path}:{number}: a JSON line needs a '{column}' text")
        texts.append(value)
    return tuple(texts)


def check_model_folder(folder: Path) -> None:
    """A saved model's folder, checked before anything heavy is imported. Exit-2 errors name the folder."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--model {folder} is a file; give the model's folder (a folder under artifacts/)")
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist")
    if not (folder / "config.json").is_file():
        try:
            inside = sorted(sub.name for sub in folder.iterdir() if (sub / "config.json").is_file())[:4]
        except OSError:  # a folder it may not list
            inside = []
        hint = (f"the models in it are {', '.join(inside)}: --model {folder / inside[0]}" if inside
                else "use a run's model folder: artifacts/<run>/model, .../merged or .../adapter")  # fmt: skip
        raise UserError(f"{folder} is not a saved model: it has no config.json ({hint})")


def load_saved_model(folder: Path) -> SavedModel:
    """The classifier saved in `folder`, with its tokenizer and labels. Exit-2 errors name the folder."""
    check_model_folder(folder)
    from paddlenlp.transformers import AutoConfig, AutoModelForSequenceClassification

    try:
        saved_config = AutoConfig.from_pretrained(str(folder))
        labels = _labels_of(saved_config, folder)
        if (folder / ADAPTER_CONFIG).is_file():
            model = _adapter(folder, saved_config, len(labels))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(str(folder))
        tokenizer = load_tokenizer(str(folder))  # an empty vocab.txt, or one without [UNK]: exit 2
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise_if_device_fault(exc)
        raise UserError(f"{folder} is not a model this job can load: {exc}") from None
    outputs = int(getattr(classifier_of(model).config, "num_labels", len(labels)))
    if outputs != len(labels):
        raise UserError(f"{folder}: the classifier has {outputs} outputs but the model names {len(labels)} labels")
    columns = tuple(getattr(saved_config, SAVED_TEXT_COLUMNS, None) or ("sentence",))
    positions = getattr(classifier_of(model).config, "max_position_embeddings", None)
    return SavedModel(model, tokenizer, labels, columns, positions)


def _labels_of(config: Any, folder: Path) -> Labels:
    """The labels the job saved with the model; a model saved elsewhere: its own id2label names."""
    labels = saved_labels(config)
    if labels is not None:
        return labels
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), ""))) for i in range(len(id2label))]
    if len(names) < 2 or not all(names) or len(set(names)) != len(names):
        raise UserError(f"{folder} is not a classifier this job saved: its config.json names no labels")
    return Labels(tuple(names))


def _adapter(folder: Path, saved_config: Any, classes: int) -> Any:
    """The base model named in lora_config.json with the adapter (and the trained head) loaded on top.
    The base must have the shape the adapter was trained on: PaddleNLP would skip every tensor that
    does not fit, and predict with a random head."""
    from paddlenlp.peft import LoRAConfig, LoRAModel
    from paddlenlp.transformers import AutoConfig, AutoModelForSequenceClassification

    base = LoRAConfig.from_pretrained(str(folder)).base_model_name_or_path
    if not base:
        raise UserError(f"adapter {folder} does not name its base model (lora_config.json base_model_name_or_path)")
    if looks_like_a_path(base) and not Path(base).is_dir():
        raise UserError(f"adapter {folder} adapts {base}, which does not exist here")
    fetch_model(base)  # a built-in base: fetched and checked as `run` fetches it
    with _base_errors(folder, base):
        base_config = AutoConfig.from_pretrained(base)
    differ = [f"{key} {getattr(base_config, key, None)} (the adapter's: {getattr(saved_config, key, None)})"
              for key in SHAPE_KEYS if getattr(base_config, key, None) != getattr(saved_config, key, None)]  # fmt: skip
    if differ:
        raise UserError(f"adapter {folder} was trained on another base than {base}: {'; '.join(differ)}")
    with _base_errors(folder, base):
        # the base's own head (if any) may have another size: the adapter folder holds the trained head
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_classes=classes, ignore_mismatched_sizes=True
        )
    return LoRAModel.from_pretrained(model, str(folder))


@contextlib.contextmanager
def _base_errors(folder: Path, base: str) -> Iterator[None]:
    """A local base that cannot be loaded is the user's to fix (2); a base from PaddleNLP's store that
    does not arrive is a download to retry (75)."""
    try:
        yield
    except (OSError, ValueError) as exc:
        raise_if_device_fault(exc)
        if looks_like_a_path(base):
            raise UserError(f"adapter {folder}: its base {base} cannot be loaded: {exc}") from None
        raise RetryableError(f"could not download the base model '{base}' of adapter {folder}: {exc}") from None


def predictions(
    saved: SavedModel, inputs: list[tuple[str, ...]], batch_size: int, max_seq_length: int
) -> Iterator[dict]:
    """One JSON-ready line per input: its text keys, the label as the data spells it, its description
    where the task has one (TNEWS: label_desc), and the probability."""
    from job.training.evaluate import predict

    if saved.max_positions and max_seq_length > saved.max_positions:
        raise UserError(f"--max-seq-length {max_seq_length} is above the model's limit of {saved.max_positions}")
    examples = [Example(text=texts[0], label=0, text_pair=texts[1] if saved.is_pair else None) for texts in inputs]
    rows = encode(examples, saved.tokenizer, max_seq_length)
    descriptions = saved.labels.descriptions
    for texts, (class_id, probability) in zip(
        inputs, predict(saved.model, rows, batch_size, int(saved.tokenizer.pad_token_id)), strict=True
    ):
        yield {
            **dict(zip(saved.text_columns, texts, strict=True)),
            "label": saved.labels.names[class_id],
            **({"label_desc": descriptions[class_id]} if descriptions else {}),
            "probability": round(probability, 6),
        }
