"""What a strategy's memory buys (`capacity: true`): the largest training batch that fits a memory budget,
and its speed there against the configured batch. The budget is `memory_budget_mb` (on CPU there is no
default: the search is skipped), else on a GPU the device's memory as Paddle may use it.

Found without running out of memory: a real training step's peak allocated memory at two batch sizes (the
configured one and twice it; every title padded to max_seq_length, the longest a batch can be), the line
through them (weights, gradients and optimizer state are the constant; activations grow with the batch),
the largest batch the line allows, then one real step at that batch to check it; over the budget, or out
of memory on a GPU, it backs off a granule at a time. Each probe trains a fresh copy of the strategy's
model (the caller's `fresh`), never the run's own weights."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from job.data.batches import Encoded, iterate_batches
from job.runtime.device import synchronize
from job.runtime.memory import peak_memory_mb, peak_reserved_mb, reset_peak, start_memory_meter
from job.training.dropout import training_dropout
from job.training.loop import TrainSettings, build_optimizer, loss_scaler, train_step

TIMED_STEPS = 3  # timed after one untimed step, at each batch compared
MAX_BATCH = 8192
BACK_OFF_TRIES = 14  # bisection steps: from 8,192 to a granule of 8 takes 10


@dataclass(frozen=True)
class Capacity:
    budget_mb: float
    sequence_length: int
    probes: list[tuple[int, float]]  # (batch, peak allocated MiB) of every step measured, in order
    largest_batch: int  # 0: not even one title fits
    peak_mb: float  # allocated at the largest batch
    reserved_mb: float | None  # reserved by Paddle's GPU allocator there (None on CPU)
    samples_per_second: float  # at the largest batch
    configured_batch: int
    configured_samples_per_second: float
    granule: int = 1
    notes: list[str] = field(default_factory=list)


def full_length_rows(rows: Sequence[Encoded], length: int, count: int) -> list[Encoded]:
    """`count` training rows, each `length` tokens (a title's own tokens repeated): the batch's worst case."""
    made = []
    for index in range(count):
        row = rows[index % len(rows)]
        ids = (row.input_ids * (length // max(1, len(row.input_ids)) + 1))[:length]
        made.append(Encoded(input_ids=ids, token_type_ids=[0] * length, label=row.label))
    return made


class Probe:
    """One fresh model and optimizer stepping at any batch size, metering each step's peak."""

    def __init__(self, fresh: Callable[[], Any], settings: TrainSettings, rows: list[Encoded]) -> None:
        self.base = start_memory_meter()  # below the fresh model: its weights count
        self.model = fresh()
        self.model.train()
        self.settings = settings
        self.optimizer, self.schedule = build_optimizer(self.model, replace(settings, warmup_ratio=0.0), 10**6)
        self.scaler = loss_scaler(settings.precision)
        self.rows = rows

    def step(self, batch: int) -> float:
        """Seconds of one training step at `batch`, after which `peak` holds its memory."""
        reset_peak()
        tensors = next(iterate_batches(self.rows, [list(range(batch))], 0))
        synchronize()
        began = time.perf_counter()
        float(train_step(self.model, tensors, self.optimizer, self.schedule, self.settings.precision, self.scaler))
        synchronize()
        return time.perf_counter() - began

    def peak(self) -> float:
        return peak_memory_mb(self.base)

    def fits(self, batch: int, budget: float, probes: list[tuple[int, float]]) -> bool:
        try:
            self.step(batch)
        except MemoryError:  # Paddle's out of memory on a GPU: the step's tensors are freed as it unwinds
            gc.collect()
            probes.append((batch, float("inf")))
            return False
        probes.append((batch, self.peak()))
        return probes[-1][1] <= budget

    def speed(self, batch: int) -> float:
        self.step(batch)
        return batch / statistics.median(self.step(batch) for _ in range(TIMED_STEPS))


def largest_batch(fresh: Callable[[], Any], rows: Sequence[Encoded], settings: TrainSettings, *, budget_mb: float,
                  sequence_length: int) -> Capacity:  # fmt: skip
    """The largest batch of `sequence_length`-token titles whose training step stays within `budget_mb` of
    allocated memory, and the samples/s there and at the configured batch."""
    configured = settings.batch_size
    probes: list[tuple[int, float]] = []
    notes: list[str] = []
    probe = Probe(fresh, settings, full_length_rows(rows, sequence_length, 2 * configured))
    with training_dropout(settings.seed):
        probe.step(configured)  # AdamW's moments are made at the first step: every later peak holds them
        low = probe.fits(configured, budget_mb, probes)
        high_batch = 2 * configured
        probe.fits(high_batch, budget_mb, probes)
        (b1, p1), (b2, p2) = probes[0], probes[1]
        slope = (p2 - p1) / (b2 - b1) if p2 != float("inf") else float("inf")
        if slope <= 0 or slope == float("inf"):
            predicted = configured if low else configured // 2
            notes.append("the peak did not grow linearly with the batch: searched down from the configured batch")
        else:
            predicted = int((budget_mb - (p1 - slope * b1)) / slope)
        predicted = max(0, min(predicted, MAX_BATCH))
        granule = 8 if predicted >= 64 else 1
        batch = max(1, predicted // granule * granule)
        probe.rows = full_length_rows(rows, sequence_length, max(batch, 2 * configured))
        fitted = [b for b, peak in probes if peak <= budget_mb]
        found = batch if probe.fits(batch, budget_mb, probes) else 0
        if not found:  # over the budget or out of memory: bisect between the largest batch known to fit and it
            low, high = max(fitted, default=0), batch
            for _ in range(BACK_OFF_TRIES):
                if high - low <= granule:
                    break
                middle = max(low + 1, (low + high) // 2 // granule * granule)
                low, high = (middle, high) if probe.fits(middle, budget_mb, probes) else (low, middle)
            found = low
        if found and probes[-1][0] != found:
            probe.fits(found, budget_mb, probes)  # its own peak last
        peak = probes[-1][1] if found else 0.0
        reserved = peak_reserved_mb()
        speed = probe.speed(found) if found else 0.0
        configured_speed = probe.speed(configured) if low else 0.0
    del probe
    gc.collect()
    return Capacity(budget_mb=budget_mb, sequence_length=sequence_length, probes=probes, largest_batch=found,
                    peak_mb=peak, reserved_mb=reserved, samples_per_second=round(speed, 2),
                    configured_batch=configured, configured_samples_per_second=round(configured_speed, 2),
                    granule=granule, notes=notes)  # fmt: skip


def device_budget_mb(given: int | None) -> tuple[float | None, str]:
    """The budget and where it comes from: `memory_budget_mb` when set; on a GPU the device's memory as
    Paddle may take it (FLAGS_gpu_memory_limit_mb when workers share the GPU, else the total times
    FLAGS_fraction_of_gpu_memory_to_use, 0.92 by default), less what the process holds already; on CPU
    none (the caller skips the search)."""
    import os

    from job.runtime.device import on_gpu
    from job.runtime.memory import allocated_mb

    if given is not None:
        return float(given), "memory_budget_mb"
    if not on_gpu():
        return None, ""
    import paddle

    limit = int(os.environ.get("FLAGS_gpu_memory_limit_mb", "0") or 0)  # noqa: SIM112 - Paddle spells it so
    if limit:
        usable = float(limit)
    else:
        total = paddle.device.cuda.get_device_properties().total_memory / 2**20
        usable = total * float(os.environ.get("FLAGS_fraction_of_gpu_memory_to_use", "0.92") or 0.92)  # noqa: SIM112
    return round(usable - allocated_mb(), 1), "the GPU's memory"
