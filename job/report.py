"""Results -> the Markdown report in the seed's layout. Every sentence in Observations is computed
from the measured numbers."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from job.data import NUM_CLASSES
from job.plot import LOSS_PLOT

TITLE = "# ERNIE 3.0 Medium: LoRA vs Full Fine-Tuning"
COLUMNS = (
    "Trainable Params", "Total Params", "Training Time (s)", "Dev Accuracy", "Test Accuracy", "Dev Loss", "Test Loss",
)  # fmt: skip


def render_report(combined: dict[str, Any], output_dir: Path) -> str:
    run, results = combined["run"], combined["strategies"]
    sections = [
        TITLE,
        _summary(run, results),
        "## Configuration\n\n```json\n" + _json(run["config"]) + "\n```",
        "## Results\n\n"
        + results_table(results)
        + "\n\n"
        + efficiency_table(results)
        + f"\n\n![Training loss per step]({LOSS_PLOT})",
        "## Observations\n\n" + "\n".join(f"- {line}" for line in observations(results, run)),
        "## Artifacts\n\n" + "\n".join(f"- {line}" for line in artifact_lines(results, output_dir)),
    ]
    return "\n\n".join(sections) + "\n"


def _json(data: Any) -> str:
    import json

    return json.dumps(data, indent=2, ensure_ascii=False)


def _start_note(results: list[dict[str, Any]]) -> str:
    """Said only when the recorded fingerprints show it."""
    fingerprints = {r["initial_weights"] for r in results}
    if len(fingerprints) == 1:
        return (
            f"Every row started from the same initial weights (fingerprint `{fingerprints.pop()}`) and saw the "
            "same batches in the same order."
        )
    listing = ", ".join(f"{r['label']} `{r['initial_weights']}`" for r in results)
    return f"The rows did NOT start from the same initial weights: {listing}."


def _summary(run: dict[str, Any], results: list[dict[str, Any]]) -> str:
    data = run["data"]
    lines = [
        "This report compares low-rank adaptation (LoRA) with full-parameter fine-tuning of the ERNIE 3.0 Medium "
        f"model (`{run['config']['model_name']}`) on the Chinese TNEWS news-title classification task "
        f"({NUM_CLASSES} classes). {_start_note(results)}",
        "",
        f"- Device: {run['device']['description']} ({run['device']['reason']})",
        f"- Train: {data['train']['source']}",
        f"- Dev: {data['dev']['source']}",
        f"- Test: {data['test']['source']}",
        "- Data files: " + ", ".join(_file_check(name, check) for name, check in run["data"]["files"].items()),
        f"- Config hash `{run['config_hash']}`, "
        + ", ".join(f"{name} {version}" for name, version in run["versions"].items())
        + (f", commit `{run['git_commit'][:12]}`" if run.get("git_commit") else ""),
    ]
    return "\n".join(lines)


def _file_check(name: str, check: str) -> str:
    """A sha256 shortened to 12 hex digits; any other check (PaddleNLP's md5) as it is."""
    is_sha256 = len(check) == 64 and all(c in "0123456789abcdef" for c in check)
    return f"{name} sha256 `{check[:12]}`" if is_sha256 else f"{name} ({check})"


def results_table(results: list[dict[str, Any]]) -> str:
    header = "| Strategy | " + " | ".join(COLUMNS) + " |"
    rule = "|----------|" + "|".join("-" * max(len(c), 3) + ":" for c in COLUMNS) + "|"
    rows = [
        "| "
        + " | ".join(
            [
                r["label"],
                f"{r['trainable_params']:,}",
                f"{r['total_params']:,}",
                f"{r['training_seconds']:.1f}",
                f"{r['dev']['accuracy']:.4f}",
                f"{r['test']['accuracy']:.4f}",
                f"{r['dev']['loss']:.4f}",
                f"{r['test']['loss']:.4f}",
            ]
        )
        + " |"
        for r in results
    ]
    return "\n".join([header, rule, *rows])


EFFICIENCY_COLUMNS = (
    "Samples/s", "Peak Memory (MB)", "Optimizer State (MB)", "Checkpoint Size (MB)", "Parameters Trained",
)  # fmt: skip


def efficiency_table(results: list[dict[str, Any]]) -> str:
    """What each strategy costs: speed, memory, optimizer state, and the weights it must store."""
    header = "| Efficiency | " + " | ".join(EFFICIENCY_COLUMNS) + " |"
    rule = "|------------|" + "|".join("-" * max(len(c), 3) + ":" for c in EFFICIENCY_COLUMNS) + "|"
    rows = [
        f"| {r['label']} | {r['samples_per_second']:.1f} | {r['peak_memory_mb']:,.0f} | "
        f"{_megabytes(r['optimizer_state_mb'])} | {_megabytes(r['checkpoint_mb'])} | "
        f"{100 * r['trainable_params'] / r['total_params']:.3f}% |"
        for r in results
    ]
    note = (
        "Peak memory: resident memory of the process during training (CPU) or Paddle's peak allocation (GPU). "
        "Checkpoint size: the trained weights a strategy must store beyond the base model (fp32)."
    )
    return "\n".join([header, rule, *rows, "", note])


def _megabytes(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:,.1f}"


def standard_error(accuracy: float, examples: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / examples)


def _points(value: float) -> str:
    return f"{abs(value) * 100:.1f} points"


def observations(results: list[dict[str, Any]], run: dict[str, Any]) -> list[str]:
    lines = [
        f"{r['label']} trained {r['trainable_params']:,} of {r['total_params']:,} parameters "
        f"({100 * r['trainable_params'] / r['total_params']:.3f}%) in {r['training_seconds']:.1f} s "
        f"({r['samples_per_second']:.1f} samples/s, {r['steps']} steps) on {run['device']['name']}."
        for r in results
    ]
    loras = [r for r in results if r["strategy"] == "lora"]
    full = next((r for r in results if r["strategy"] == "full_finetune"), None)
    if full is not None:
        for lora in loras:
            lines.extend(_compare(lora, full, "LoRA" if len(loras) == 1 else lora["label"]))
    chance = 1 / NUM_CLASSES
    near_chance = [
        r["label"]
        for r in results
        if r["test"]["accuracy"] < chance + 2 * standard_error(chance, r["test"]["examples"])
    ]
    if near_chance:
        lines.append(
            f"Test accuracy of {', '.join(near_chance)} is within two standard errors of chance "
            f"({100 * chance:.1f}% for {NUM_CLASSES} classes): the model has not learned the task in this run "
            "(too few steps, a too-low learning rate, or weights that are not pretrained)."
        )
    return lines


def _compare(lora: dict[str, Any], full: dict[str, Any], name: str) -> list[str]:
    lines = [
        f"{name} trained {lora['trainable_params'] / full['trainable_params']:.2%} as many parameters as full "
        f"fine-tuning ({lora['trainable_params']:,} vs {full['trainable_params']:,})."
    ]
    for split in ("dev", "test"):
        gap = lora[split]["accuracy"] - full[split]["accuracy"]
        n = lora[split]["examples"]
        noise = math.sqrt(
            standard_error(lora[split]["accuracy"], n) ** 2 + standard_error(full[split]["accuracy"], n) ** 2
        )
        direction = "above" if gap > 0 else "below" if gap < 0 else "level with"
        verdict = "within the sampling noise" if abs(gap) < 2 * noise else "larger than the sampling noise"
        amount = "" if gap == 0 else f"{_points(gap)} "
        lines.append(
            f"{split.capitalize()} accuracy: {name} is {amount}{direction} full fine-tuning "
            f"({lora[split]['accuracy']:.2%} vs {full[split]['accuracy']:.2%} on {n} examples); the gap is "
            f"{verdict} (two standard errors of the difference: {_points(2 * noise)})."
        )
    ratio = full["training_seconds"] / lora["training_seconds"] if lora["training_seconds"] else float("nan")
    faster = "faster" if ratio >= 1 else "slower"
    lines.append(
        f"Training time: {name} {lora['training_seconds']:.1f} s vs full fine-tuning "
        f"{full['training_seconds']:.1f} s ({name} {max(ratio, 1 / ratio):.2f}x {faster})."
    )
    return lines


def artifact_lines(results: list[dict[str, Any]], output_dir: Path) -> list[str]:
    lines = [
        "`results.json`: every number above plus per-step losses, device, versions and data checksums",
        f"`{LOSS_PLOT}`: training loss per step",
    ]
    lines += [f"`results/{r['key']}.json`: {r['label']} on its own" for r in results]
    saved = [(r["label"], path) for r in results for path in r.get("artifacts", [])]
    if saved:
        lines += [f"`{path}`: {label}" for label, path in saved]
    else:
        lines.append("No model files were saved (`save_artifacts: false`).")
    return lines
