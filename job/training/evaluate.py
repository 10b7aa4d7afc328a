"""Accuracy and mean cross-entropy on a split, and predictions, without gradients and with the
shortcuts of job.training.inference (same numbers up to float rounding, tested)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from job.data.batches import Encoded, iterate_batches
from job.runtime.device import batch_on_device
from job.training.inference import inference_kernels, last_layer_first_position_only, lora_merged
from job.training.model import classify


@dataclass(frozen=True)
class EvalResult:
    accuracy: float
    loss: float  # mean cross-entropy per example
    examples: int
    predictions: list[int]  # predicted class id per row, in the rows' order


def length_sorted_batches(rows: Sequence[Encoded], batch_size: int) -> list[list[int]]:
    """Order does not change the metrics; grouping similar lengths wastes less padding."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i].input_ids))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def batched_logits(
    model: Any, rows: Sequence[Encoded], batch_size: int, pad_id: int, stop: Any = None
) -> Iterator[tuple[list[int], Any]]:
    """(row indices, logits) for length-sorted batches of `rows`, in eval mode, without gradients, with
    every shortcut; the model is back in training mode afterwards."""
    import paddle

    model.eval()
    batches = length_sorted_batches(rows, batch_size)
    try:
        with paddle.no_grad(), lora_merged(model), last_layer_first_position_only(model), inference_kernels():
            for indices, batch in zip(batches, iterate_batches(rows, batches, pad_id), strict=True):
                if stop is not None:  # a SIGTERM during a long evaluation stops it at the next batch
                    stop.raise_if_requested()
                yield indices, classify(model, batch_on_device(batch))
    finally:
        model.train()


def evaluate(
    model: Any, rows: Sequence[Encoded], batch_size: int, pad_id: int, stop: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> EvalResult:  # fmt: skip
    """`progress(rows done, rows)` after each batch, when given."""
    import paddle
    import paddle.nn.functional as F

    # The losses and predicted classes stay on the device and are read once at the end: on a GPU each
    # read waits for the device (two a batch before), on CPU it changes nothing.
    losses, classes, order = [], [], []
    done = 0
    for indices, logits in batched_logits(model, rows, batch_size, pad_id, stop):
        done += len(indices)
        if progress is not None:
            progress(done, len(rows))
        labels = paddle.to_tensor([rows[i].label for i in indices], dtype="int64")
        losses.append(F.cross_entropy(logits, labels, reduction="sum").reshape([1]))
        classes.append(logits.argmax(axis=-1))
        order.extend(indices)
    predictions = [0] * len(rows)
    loss_sum = 0.0
    if order:
        read = paddle.concat([paddle.concat(losses).astype("float64"), paddle.concat(classes).astype("float64")])
        values = read.numpy()  # one read for the whole split
        loss_sum = float(values[: len(losses)].sum())
        for index, predicted in zip(order, values[len(losses) :].tolist(), strict=True):
            predictions[index] = int(predicted)
    correct = sum(int(predicted == row.label) for predicted, row in zip(predictions, rows, strict=True))
    return EvalResult(
        accuracy=correct / len(rows), loss=loss_sum / len(rows), examples=len(rows), predictions=predictions
    )


def predict(model: Any, rows: Sequence[Encoded], batch_size: int, pad_id: int) -> list[tuple[int, float]]:
    """(class id, probability) of every row, in the rows' order."""
    import paddle.nn.functional as F

    out: list[tuple[int, float]] = [(0, 0.0)] * len(rows)
    for indices, logits in batched_logits(model, rows, batch_size, pad_id):
        probabilities = F.softmax(logits, axis=-1).numpy()
        for index, row in zip(indices, probabilities, strict=True):
            out[index] = (int(row.argmax()), float(row.max()))
    return out
