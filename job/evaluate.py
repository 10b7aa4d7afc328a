"""Accuracy and mean cross-entropy on a split, without gradients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from job.data import Encoded, iterate_batches


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float  # mean cross-entropy per example
    examples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def length_sorted_batches(rows: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Order does not change the metrics; grouping similar lengths wastes less padding."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def evaluate(model: Any, rows: Sequence[Encoded], batch_size: int, pad_id: int) -> EvalResult:
    import paddle
    import paddle.nn.functional as F

    model.eval()
    correct = 0
    loss_sum = 0.0
    with paddle.no_grad():
        for batch in iterate_batches(rows, length_sorted_batches(rows, batch_size), pad_id):
            logits = model(
                input_ids=paddle.to_tensor(batch["input_ids"]), token_type_ids=paddle.to_tensor(batch["token_type_ids"])
            )
            labels = paddle.to_tensor(batch["labels"])
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(axis=-1) == labels).astype("int64").sum())
    model.train()
    return EvalResult(accuracy=correct / len(rows), loss=loss_sum / len(rows), examples=len(rows))
