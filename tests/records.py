"""Typed result records made in memory, for tests of selection, statistics and the report."""

from __future__ import annotations

from job.config.schema import JobConfig
from job.data.labels import TNEWS
from job.results.schema import (
    CpuFacts,
    DataFacts,
    DeviceFacts,
    ResultRecord,
    RunFacts,
    RunResult,
    SplitFacts,
    SplitResult,
)
from job.results.stats import encode_classes, macro_f1, per_class_accuracy

CLASSES = 15


def split(predictions: list[int], labels: list[int], loss: float = 1.0) -> SplitResult:
    correct = sum(p == g for p, g in zip(predictions, labels, strict=True))
    return SplitResult(
        accuracy=correct / len(labels),
        loss=loss,
        examples=len(labels),
        macro_f1=macro_f1(predictions, labels, CLASSES),
        per_class_accuracy=per_class_accuracy(predictions, labels, CLASSES),
        predictions=encode_classes(predictions, len(TNEWS)),
    )


def answers(labels: list[int], right: int, start: int = 0) -> list[int]:
    """Predictions right on `right` examples from `start` on (wrapping around), wrong on the rest."""
    hits = {(start + i) % len(labels) for i in range(right)}
    return [g if i in hits else (g + 1) % CLASSES for i, g in enumerate(labels)]


def result(
    strategy: str, *, lr: float, seed: int, dev_right: int, test_right: int, labels: list[int], index: int = 0,
    seconds: float = 50.0, trainable: int | None = None, total: int = 75_734_031, dev_loss: float = 1.0,
    test_predictions: list[int] | None = None, test_start: int = 0, sample: str = "5a3e1f0c9b7d2468",
    rank: int | None = None, memory: float | None = None,
) -> RunResult:  # fmt: skip
    """One run's record. `rank` makes it a row of a LoRA rank sweep (group lora_r<rank>_a<2 rank>).

    Every run has costs of its own (peak memory, optimizer state, checkpoint size, time), different for
    each strategy, rank, rate and seed, so a report cell taken from the wrong run shows a wrong number."""
    lora = strategy == "lora"
    r = rank or 16
    label = f"lora (r={r}, α={2 * r}, dropout=0.1, lr={lr:g})" if lora else f"full_finetune (lr={lr:g})"
    group = f"lora_r{r}_a{2 * r}" if rank else strategy
    own = seed % 100 + 1000 * lr + (r if lora else 0) / 100  # a run's own offset
    return RunResult(
        key=f"{group}_lr{lr:g}_s{seed}",
        index=index,
        group=group,
        strategy=strategy,
        label=label,
        seed=seed,
        learning_rate=lr,
        batch_size=8,
        eval_batch_size=16,
        lora_r=r if lora else None,
        lora_alpha=2 * r if lora else None,
        initial_weights=f"weights-of-seed-{seed}",
        sample=sample,
        trainable_params=trainable if trainable is not None else (306_447 if lora else 75_439_119),
        total_params=total if lora else 75_439_119,
        training_seconds=seconds + own / 10_000,
        steps=64,
        samples_per_second=512 / (seconds + own / 10_000),
        tokens_per_second=1000.0,
        peak_memory_mb=memory if memory is not None else (1000.0 if lora else 2300.0) + 10 * own,
        optimizer_state_mb=(2.3 if lora else 575.5) + own / 100,
        checkpoint_mb=(1.2 if lora else 287.7) + own / 1000,
        dev=split(answers(labels, dev_right), labels, dev_loss),
        test=split(test_predictions or answers(labels, test_right, test_start), labels, 1.1),
        step_losses=[2.7, 2.5, 2.0],
        reinitialised_parameters=[],
        artifacts=[],
        finished_at="2026-01-01T00:00:00+00:00",
    )


def facts(labels: list[int], planned: list[str]) -> RunFacts:
    def split_facts(name: str) -> SplitFacts:
        return SplitFacts(source=f"{name} rows", examples=len(labels), labels=encode_classes(labels, len(TNEWS)))

    return RunFacts(
        config=JobConfig(model_name="ernie-3.0-medium-zh", report_file="report.md"),
        config_hash="0123456789abcdef",
        planned_runs=planned,
        device=DeviceFacts(name="cpu", description="CPU (2 threads)", reason="no GPU"),
        data=DataFacts(
            train=SplitFacts(source="train rows", examples=512),
            dev=split_facts("dev"),
            test=split_facts("test"),
            sample_seed=42,
            files={"train.json": "0" * 64},
            labels=list(TNEWS.names),
            label_descriptions=list(TNEWS.descriptions or ()),
        ),
        versions={"python": "3.11"},
        git_commit=None,
        threads={},
        cpu=CpuFacts(vendor="GenuineIntel", strided_views=False),
        uid=1000,
    )


def records(results: list[RunResult], labels: list[int], planned: list[str] | None = None) -> list[ResultRecord]:
    keys = planned if planned is not None else [r.key for r in results]
    return [ResultRecord(run=facts(labels, keys), result=r) for r in results]
