"""What serving a run's model costs, measured at the end of the run on its device (`serving: true`): the
latency of one title at a time, of a batch of 32, and titles per second at 32, for each form the model can
be served in: LoRA's adapter unmerged (its A and B applied at every call) and merged into the weights (one
matmul per layer), any other strategy's model as trained. And whether LoRA's two forms agree: the largest
logit difference and the share of equal predictions over the first test titles, in fp32 and, after a bf16
or fp16 run, at that precision too (merging in bf16 rounds the weights: huggingface/peft#1388).

The forward is the plain one a server runs (eval mode, no gradients), not evaluation's shortcuts
(job.training.inference). Timing is the median of repeated calls after a warm-up."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from job.data.batches import Encoded, iterate_batches
from job.runtime.device import batch_on_device, synchronize
from job.training.inference import lora_merged
from job.training.model import classify

LATENCY_TITLES = 32  # batch-1 calls timed (after WARMUP)
BATCH = 32
THROUGHPUT_BATCHES = 4  # batches of BATCH timed
AGREEMENT_TITLES = 512  # test titles both LoRA forms score
WARMUP = 2
AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


@dataclass(frozen=True)
class FormCost:
    form: str  # "unmerged", "merged" or "model"
    ms_per_title: float  # one title per call
    ms_per_batch: float  # a batch of BATCH titles
    titles_per_second: float  # at batch BATCH


@dataclass(frozen=True)
class Agreement:
    precision: str  # fp32, or the run's bf16 / fp16
    titles: int
    max_logit_difference: float
    prediction_agreement: float  # share of the titles with the same predicted class


def has_unmerged_lora(model: Any) -> bool:
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    return any(isinstance(layer, LoRALinear) and not layer.merged for layer in model.sublayers())


def forms(model: Any) -> list[tuple[str, Any]]:
    """(name, a context that puts the model in that form) for each form it can be served in."""
    if has_unmerged_lora(model):
        return [("unmerged", contextlib.nullcontext), ("merged", lambda: lora_merged(model))]
    return [("model", contextlib.nullcontext)]


def _timed(model: Any, batches: Sequence[dict[str, Any]]) -> list[float]:
    """Seconds of each call on `batches` (the first WARMUP calls untimed)."""
    import paddle

    times = []
    with paddle.no_grad():
        for index, batch in enumerate([batches[0]] * WARMUP + list(batches)):
            tensors = batch_on_device(batch)
            synchronize()
            began = time.perf_counter()
            classify(model, tensors)
            synchronize()
            if index >= WARMUP:
                times.append(time.perf_counter() - began)
    return times


def serving_costs(model: Any, rows: Sequence[Encoded], pad_id: int) -> list[FormCost]:
    """Each form's latency and throughput on the first test titles."""
    singles = list(iterate_batches(rows, [[i] for i in range(min(LATENCY_TITLES, len(rows)))], pad_id))
    groups = [list(range(start, min(start + BATCH, len(rows)))) for start in range(0, len(rows), BATCH)]
    batches = list(iterate_batches(rows, groups[:THROUGHPUT_BATCHES], pad_id))
    found = []
    was_training = model.training
    model.eval()
    try:
        for name, form in forms(model):
            with form():
                single = statistics.median(_timed(model, singles))
                times = _timed(model, batches)
            batch = statistics.median(times)
            titles = sum(len(group) for group in groups[:THROUGHPUT_BATCHES])
            found.append(FormCost(name, round(1000 * single, 3), round(1000 * batch, 3), round(titles / sum(times), 1)))
    finally:
        model.train() if was_training else model.eval()
    return found


@contextlib.contextmanager
def _precision(precision: str) -> Iterator[None]:
    import paddle

    enabled = precision in AMP_DTYPES
    with paddle.amp.auto_cast(enable=enabled, dtype=AMP_DTYPES.get(precision, "float16"), level="O1"):
        yield


def _logits(model: Any, rows: Sequence[Encoded], pad_id: int, precision: str) -> Any:
    import numpy as np
    import paddle

    groups = [list(range(start, min(start + BATCH, len(rows)))) for start in range(0, len(rows), BATCH)]
    out = []
    with paddle.no_grad(), _precision(precision):
        for batch in iterate_batches(rows, groups, pad_id):
            out.append(classify(model, batch_on_device(batch)).astype("float32").numpy())
    return np.concatenate(out)


def merge_agreement(model: Any, rows: Sequence[Encoded], pad_id: int, precision: str) -> list[Agreement]:
    """LoRA's unmerged and merged forms on the first AGREEMENT_TITLES test titles, in fp32 and at the run's
    training precision when that is bf16 or fp16; [] for a model without unmerged LoRA layers."""
    import numpy as np

    if not has_unmerged_lora(model):
        return []
    titles = list(rows[:AGREEMENT_TITLES])
    found = []
    was_training = model.training
    model.eval()
    try:
        for kind in dict.fromkeys(["fp32", precision]):
            unmerged = _logits(model, titles, pad_id, kind)
            with lora_merged(model):
                merged = _logits(model, titles, pad_id, kind)
            same = float((unmerged.argmax(axis=1) == merged.argmax(axis=1)).mean())
            found.append(Agreement(kind, len(titles), float(np.abs(unmerged - merged).max()), same))
    finally:
        model.train() if was_training else model.eval()
    return found
