"""The record files: results/<key>.json, one per run, written whole (job.output.storage) and read back strictly
through the schema of job.results.schema."""

from __future__ import annotations

import json
import math
import sys

from pydantic import ValidationError

from job.config.plan import MAX_RUNS
from job.data.sampling import MIN_TEST_TITLES
from job.data.textfiles import excerpt
from job.errors import UserError
from job.output.layout import RESULTS_FOLDER
from job.output.storage import Output
from job.results.schema import SCHEMA_VERSION, ResultRecord, RunResult, SplitResult
from job.results.stats import decode_classes, macro_f1, per_class_accuracy
from job.training.strategies import STRATEGY_NAMES


def result_name(key: str) -> str:
    return f"{RESULTS_FOLDER}/{key}.json"


def save_result(output: Output, record: ResultRecord) -> str:
    """results/<key>.json, unless a record of another config holds that name: then
    results/<key>.<config hash>.json beside it, so a second config in the same output_dir never
    replaces the first one's records (the merge reads every record by its content, and leaves out
    those of another config, naming them). The check and the write happen under the merge lock, so
    two configs saving the same key at once do not race (a local folder; object storage has no lock)."""
    text = record.model_dump_json(indent=2) + "\n"
    with output.merge_lock():
        name = result_name(record.result.key)
        held = output.record_files().get(output.where(name))
        if held is not None and _config_of(held) not in (None, record.run.config_hash):
            name = f"{RESULTS_FOLDER}/{record.result.key}.{record.run.config_hash}.json"
        return output.write_text(name, text)


def _config_of(content: bytes) -> str | None:
    """The config hash a record file names, or None when it names none (not a record: replaced)."""
    try:
        data = json.loads(content)
        return str(data["run"]["config_hash"])
    except (ValueError, KeyError, TypeError):
        return None


def read_record(name: str, content: bytes) -> ResultRecord:
    """One results/<key>.json, validated; a file that is not a record of this schema is a UserError
    naming the file and the first field at fault."""
    try:
        text = content.decode("utf-8")
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # ValueError: also an integer of 4,300 digits or more
        raise UserError(f"{name} is not a result file of this job: {excerpt(str(exc), 200)}") from None
    except RecursionError:
        raise UserError(f"{name} is not a result file of this job: nested too deep") from None
    version = data.get("schema_version", 1) if isinstance(data, dict) else None
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{name} was written by another version of this job (result schema {version}, this job reads "
            f"{SCHEMA_VERSION}); move it away or use another output_dir"
        )
    try:
        record = ResultRecord.model_validate_json(text)  # JSON mode: arrays are tuples, nothing else coerced
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise UserError(f"{name} is not a result file of this job: field '{field}': {error['msg']}") from None
    problem = inconsistency(record)
    if problem:
        raise UserError(f"{name} is not a result file of this job: {problem}")
    return record


def inconsistency(record: ResultRecord) -> str | None:
    """What the schema cannot see: predictions and gold labels that are class ids of the record's own
    labels, one per example of their split, and a per-class accuracy per label. None when it holds."""
    classes = len(record.run.data.labels)
    for split in ("dev", "test"):
        measured = getattr(record.result, split)
        gold = getattr(record.run.data, split)
        for field, text, count in (
            (f"result.{split}.predictions", measured.predictions, measured.examples),
            (f"run.data.{split}.labels", gold.labels, gold.examples),
        ):
            if text is None:
                continue
            try:
                ids = decode_classes(text)
            except ValueError:
                return f"field '{field}' is not class ids in base 36"
            if len(ids) != count:
                return f"field '{field}' has {len(ids)} class ids for {count} examples"
            if ids and max(ids) >= classes:
                return f"field '{field}' holds class id {max(ids)}, but the run has {classes} labels"
        if measured.examples != gold.examples:
            return (
                f"field 'result.{split}.examples' is {measured.examples}, the run's {split} split has {gold.examples}"
            )
        if len(measured.per_class_accuracy) != classes:
            entries = len(measured.per_class_accuracy)
            return f"field 'result.{split}.per_class_accuracy' has {entries} entries for {classes} labels"
        if gold.labels is not None:
            problem = rescored(f"result.{split}", measured, decode_classes(gold.labels), classes)
            if problem:
                return problem
    if record.run.data.test.examples < MIN_TEST_TITLES:
        return f"field 'run.data.test.examples' is {record.run.data.test.examples}; a run is tested on 2 or more"
    planned = record.run.planned_runs
    if len(planned) > MAX_RUNS:  # 200,000 edited-in keys made a 3.5 MB report
        return f"field 'run.planned_runs' lists {len(planned):,} runs; a plan has at most {MAX_RUNS:,}"
    if len(set(planned)) != len(planned) or record.result.key not in planned:
        return f"field 'run.planned_runs' lists a run twice, or not this record's run {excerpt(record.result.key)}"
    if record.result.trainable_params > record.result.total_params:
        return f"field 'result.trainable_params' is {record.result.trainable_params:,}, more than the model's total"
    return None


def rescored(field: str, measured: SplitResult, labels: list[int], classes: int) -> str | None:
    """A split's figures against its own predictions and the split's labels, both in the record: an
    accuracy, macro-F1 or per-class accuracy they do not give was edited or is from another run."""
    predictions = decode_classes(measured.predictions)
    correct = sum(p == g for p, g in zip(predictions, labels, strict=True))
    expected = {
        "accuracy": correct / len(labels) if labels else 0.0,
        "macro_f1": macro_f1(predictions, labels, classes),
    }
    for name, value in expected.items():
        if not math.isclose(getattr(measured, name), value, rel_tol=1e-9, abs_tol=1e-12):
            return (f"field '{field}.{name}' is {getattr(measured, name)!r}, but the record's predictions score "
                    f"{value!r} against the split's labels")  # fmt: skip
    by_class = per_class_accuracy(predictions, labels, classes)
    for index, (stored, value) in enumerate(zip(measured.per_class_accuracy, by_class, strict=True)):
        if (stored is None) != (value is None) or (stored is not None and not math.isclose(stored, value or 0.0)):
            return f"field '{field}.per_class_accuracy' entry {index} is {stored!r}; the predictions give {value!r}"
    return None


def read_records(output: Output) -> dict[str, ResultRecord]:
    """Every record in the output's results folder, by name, validated (see read_record)."""
    return {name: read_record(name, content) for name, content in output.record_files().items()}


def load_results(output: Output, config_hash: str | None = None) -> list[ResultRecord]:
    """Every saved record of the output. With `config_hash`, records of other configs are skipped (with
    a message); without it, they must all come from one config. Ordered as the run plan."""
    records = read_records(output)
    folder = output.where(RESULTS_FOLDER)
    if config_hash is not None:
        for file in [f for f, r in records.items() if r.run.config_hash != config_hash]:
            print(f"ignoring {file}: it comes from another config", file=sys.stderr)
            del records[file]
    if not records:
        raise UserError(f"no saved run results in {folder}; run `python -m job run` first")
    files_of: dict[str, list[str]] = {}
    for file, record in records.items():
        files_of.setdefault(record.result.key, []).append(file.rsplit("/", 1)[-1])
    twice = {key: sorted(files) for key, files in files_of.items() if len(files) > 1}
    if twice:  # a copied record would count as one more seed
        key, files = next(iter(sorted(twice.items())))
        raise UserError(
            f"{' and '.join(files)} in {folder} both hold run {key!r}: one run counts once; keep {key}.json and "
            "remove the other" + (f" ({len(twice) - 1} more runs are held twice)" if len(twice) > 1 else "")
        )
    hashes = {record.run.config_hash for record in records.values()}
    if len(hashes) > 1:
        listing = ", ".join(f"{f.rsplit('/', 1)[-1]}={r.run.config_hash}" for f, r in records.items())
        raise UserError(f"results in {folder} come from different configs ({listing}); rerun or remove the stale ones")
    return sorted(records.values(), key=lambda record: row_order(record.result))


def row_order(result: RunResult) -> tuple[int, int, int, int]:
    """As the run plan: strategies in the registry's order (LoRA first), a rank sweep by rank, then
    the plan index (learning rate, seed)."""
    return STRATEGY_NAMES.index(result.strategy), result.lora_r or 0, result.lora_alpha or 0, result.index
