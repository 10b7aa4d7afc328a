"""The one training loop every strategy uses: AdamW (no decay on bias/LayerNorm), linear warm-up
and decay, global-norm clipping, a progress bar, wall-clock timing, stop on signal or NaN."""

from __future__ import annotations

import itertools
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from job.data.batches import Encoded, epoch_batches, iterate_batches
from job.errors import Interrupted, TrainingDiverged
from job.output.log import say
from job.runtime import device
from job.runtime.device import batch_on_device
from job.runtime.ranks import Ranks, shard_batches, usable_batches
from job.runtime.signals import StopRequest
from job.training.dropout import PADDLE, training_dropout
from job.training.layer_norm import exact_layer_norm_grad
from job.training.model import classify
from job.training.resume import (
    Checkpoints,
    LoopState,
    optimizer_moments,
    random_state,
    scaler_state,
    set_optimizer_moments,
    set_random_state,
    set_scaler_state,
)


@dataclass(frozen=True)
class TrainSettings:
    learning_rate: float
    batch_size: int
    num_epochs: int
    weight_decay: float
    warmup_ratio: float
    max_grad_norm: float
    seed: int
    logging_steps: int
    bucket_window: int = 0
    precision: str = "fp32"  # resolved (job.runtime.device.resolve_precision): fp32, bf16 or fp16
    compiled: bool = False  # resolved (job.runtime.device.resolve_compile): the forward as a static graph
    eval_steps: int | None = None  # dev is scored every this many steps (the caller's `evaluate_at`)
    max_steps: int | None = None  # exactly this many steps, over as many epochs as they take (num_epochs ignored)
    accumulation: int = 1  # micro-batches each batch is cut into, their gradients summed before the step


@dataclass
class TrainOutcome:
    steps: int
    samples: int
    tokens: int
    seconds: float
    step_losses: list[float] = field(default_factory=list)
    optimizer_state_bytes: int = 0
    dropout: str = PADDLE  # which dropout ran (job.training.dropout)
    compiled: bool = False  # whether the forward ran as a static graph
    stopped_early: bool = False  # evaluate_at asked to stop before the last step
    state: Callable[..., Any] | None = None  # the loop's LoopState at its end, for a checkpoint written later

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0


def no_weight_decay(parameter_name: str) -> bool:
    return "bias" in parameter_name or "norm" in parameter_name


def decayed_parameters(model: Any) -> set[str]:
    """The trainable parameters AdamW decays, by name: all but biases and norms (transformers' Trainer
    rule), and but the weights a strategy marks as not to be pulled toward zero (PiSSA's principal
    factors)."""
    return {
        name for name, p in model.named_parameters()
        if not p.stop_gradient and not no_weight_decay(name) and not getattr(p, "no_weight_decay", False)
    }  # fmt: skip


def planned_batches(rows: Sequence[Encoded], settings: TrainSettings, ranks: Ranks = Ranks()) -> list[list[list[int]]]:  # noqa: B008
    """Each epoch's global batches (row indices), in the order `train` takes them: `num_epochs` epochs, or
    with `max_steps` as many epochs as those steps take, the last one cut where they end."""

    def epoch(number: int) -> list[list[int]]:
        return usable_batches(epoch_batches(lengths, settings.batch_size, settings.seed, number,
                                            settings.bucket_window), ranks)  # fmt: skip

    lengths = [len(row.input_ids) for row in rows]
    if settings.max_steps is None:
        return [epoch(number) for number in range(settings.num_epochs)]
    epochs, left = [], settings.max_steps
    for number in itertools.count():
        batches = epoch(number)
        if not batches:
            break
        epochs.append(batches[:left])
        left -= len(epochs[-1])
        if left == 0:
            break
    return epochs


def gradient_clip(max_norm: float) -> Any:
    """Global-norm clipping (None for max_norm 0). On CPU the job's in-place rescale (job.training.clipping), which
    reads the norm on the host to skip unclipped steps; on a GPU that read would wait for the device every
    step, so Paddle's own ClipGradByGlobalNorm without auto_skip_clip: it multiplies every gradient by
    max_norm / max(norm, max_norm), on the device, with no read (paddle/nn/clip.py). Both give the same
    gradients: the factor is exactly 1 when the norm is within the limit (tested)."""
    import paddle

    from job.training.clipping import GlobalNormClip

    if max_norm <= 0:
        return None
    return paddle.nn.ClipGradByGlobalNorm(max_norm) if device.on_gpu() else GlobalNormClip(max_norm)


def warmup_steps(ratio: float, total_steps: int) -> int:
    """Warm-up steps as transformers' and PaddleNLP's Trainers count them, rounded up: LinearDecayWithWarmup
    given the ratio itself rounds down (66 steps at 0.1: 6, where both Trainers warm up for 7)."""
    return math.ceil(ratio * total_steps)


def build_optimizer(model: Any, settings: TrainSettings, total_steps: int) -> tuple[Any, Any]:
    """AdamW over the trainable parameters only: frozen weights get no gradient and no state."""
    import paddle
    from paddlenlp.transformers import LinearDecayWithWarmup

    trainable = [(name, p) for name, p in model.named_parameters() if not p.stop_gradient]
    named = decayed_parameters(model)
    decayed = {p.name for name, p in trainable if name in named}  # AdamW asks by Paddle's internal name
    schedule = LinearDecayWithWarmup(
        settings.learning_rate, total_steps, warmup_steps(settings.warmup_ratio, total_steps)
    )
    clip = gradient_clip(settings.max_grad_norm)
    optimizer = paddle.optimizer.AdamW(
        learning_rate=schedule,
        parameters=[p for _, p in trainable],
        weight_decay=settings.weight_decay,
        apply_decay_param_fun=lambda name: name in decayed,
        grad_clip=clip,
    )
    return optimizer, schedule


AMP_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}


def loss_scaler(precision: str) -> Any:
    """fp16 needs loss scaling (its range is small: gradients would underflow); bf16 and fp32 do not."""
    import paddle

    return paddle.amp.GradScaler(init_loss_scaling=2.0**15) if precision == "fp16" else None


def compiled_forward(model: Any) -> Callable[[dict[str, Any]], Any]:
    """`classify` traced into Paddle's static graph (paddle.jit.to_static, SOT: Python bytecode
    translation, falling back to eager where it cannot trace; tracing the batch lengths of a run took
    10-20 s here). The model itself is left as it is (evaluation and saving run eagerly)."""
    import paddle

    def forward(input_ids: Any, token_type_ids: Any) -> Any:
        return classify(model, {"input_ids": input_ids, "token_type_ids": token_type_ids})

    static = paddle.jit.to_static(forward, full_graph=False)
    return lambda tensors: static(tensors["input_ids"], tensors["token_type_ids"])


def train_step(
    model: Any, batch: dict[str, Any], optimizer: Any, schedule: Any, precision: str = "fp32", scaler: Any = None,
    share: float = 1.0, forward: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:  # fmt: skip
    """One optimizer step on one padded batch; returns the loss as a tensor on the device, unread
    (reading it waits for the step). Under data parallelism `share` is this rank's rows over the global
    batch's, times the number of ranks: paddle.DataParallel averages the ranks' gradients with equal
    weights, so a rank holding 4 of 7 rows must count for 4/7 of the step, as in one process."""
    return accumulated_step(model, [(batch, share)], optimizer, schedule, precision, scaler, forward)


def accumulated_step(
    model: Any, micro: Sequence[tuple[dict[str, Any], float]], optimizer: Any, schedule: Any, precision: str = "fp32",
    scaler: Any = None, forward: Callable[[dict[str, Any]], Any] | None = None,
) -> Any:  # fmt: skip
    """One optimizer step over the micro-batches of one batch (gradient accumulation), each weighted by its
    share of the batch's rows: the gradients add up to the whole batch's, as if it had fit at once. Returns
    the batch's loss (the weighted sum), unread. Mixed precision is autocast O1: the weights, their
    gradients and AdamW's state stay fp32 (LoRA adapters included), and only the white-listed ops (matmuls)
    run in bf16/fp16; fp16's loss scaler scales each backward and steps once."""
    import contextlib

    total = None
    for index, (batch, share) in enumerate(micro):
        last = index == len(micro) - 1
        sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
        with sync:  # under DataParallel the gradients are all-reduced once, at the last micro-batch
            loss = _weighted_loss(model, batch, precision, share, forward)
            (loss if scaler is None else scaler.scale(loss)).backward()
        total = loss.detach() if total is None else total + loss.detach()
    if scaler is None:
        optimizer.step()
    else:  # unscales the gradients before the optimizer clips and steps; skips the step on inf/NaN
        scaler.step(optimizer)
        scaler.update()
    schedule.step()
    optimizer.clear_grad()
    return total


def _weighted_loss(model: Any, batch: dict[str, Any], precision: str, share: float,
                   forward: Callable[[dict[str, Any]], Any] | None) -> Any:  # fmt: skip
    import paddle
    import paddle.nn.functional as F

    tensors = batch_on_device(batch)
    with (
        exact_layer_norm_grad(),  # Paddle's CPU kernel drops a frozen LayerNorm scale from the gradient
        paddle.amp.auto_cast(enable=precision in AMP_DTYPES, dtype=AMP_DTYPES.get(precision, "float16"), level="O1"),
    ):
        logits = classify(model, tensors) if forward is None else forward(tensors)
    if logits.dtype != paddle.float32:  # the loss and its softmax in fp32
        logits = logits.astype("float32")
    loss = F.cross_entropy(logits, tensors["labels"])
    return loss * share if share != 1.0 else loss


def micro_batches(batch: Sequence[int], count: int) -> list[list[int]]:
    """A batch's row indices cut into `count` contiguous parts as even as can be (none empty)."""
    size, extra = divmod(len(batch), count)
    parts, start = [], 0
    for index in range(count):
        end = start + size + (index < extra)
        if end > start:
            parts.append(list(batch[start:end]))
        start = end
    return parts


def train(
    model: Any,
    rows: Sequence[Encoded],
    settings: TrainSettings,
    *,
    pad_id: int,
    label: str,
    stop: StopRequest,
    ranks: Ranks = Ranks(),  # noqa: B008 - a frozen value
    on_step: Callable[[int, float, float], None] | None = None,
    evaluate_at: Callable[[int], bool] | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainOutcome:
    """Train in place. Under a data-parallel launch every rank takes its share of each global batch,
    gradients are averaged by paddle.DataParallel, and only rank 0 shows progress.

    With `settings.eval_steps`, `evaluate_at(step)` runs after every eval_steps-th step before the last
    (the caller scores dev; the last step's evaluation is the caller's own), off the training clock;
    it returns True to stop training there (early stopping).

    With `checkpoints`, training goes on from `checkpoints.resumed` (the caller restored the weights), and
    the loop's state goes to `checkpoints.save` when it is due and when a stop is requested, off the clock."""
    lengths = [len(row.input_ids) for row in rows]
    epochs = planned_batches(rows, settings, ranks)
    total_steps = sum(len(batches) for batches in epochs)
    optimizer, schedule = build_optimizer(model, settings, total_steps)
    scaler = loss_scaler(settings.precision)
    resumed = checkpoints.resumed if checkpoints is not None else None
    outcome = TrainOutcome(steps=0, samples=0, tokens=0, seconds=0.0)
    if resumed is not None:
        set_optimizer_moments(optimizer, model, resumed.moments)
        schedule.set_state_dict(resumed.schedule)
        set_scaler_state(scaler, resumed.scaler)
        outcome.steps, outcome.samples, outcome.tokens = resumed.step, resumed.samples, resumed.tokens
        outcome.step_losses = list(resumed.step_losses)
        outcome.stopped_early = resumed.stopped_early
    model.train()
    stepped = model if ranks.world == 1 else _data_parallel(model)
    outcome.compiled = settings.compiled and ranks.world == 1  # DataParallel syncs gradients in eager hooks
    forward = compiled_forward(stepped) if outcome.compiled else None
    stop.install()
    progress = tqdm(total=total_steps, initial=outcome.steps, desc=f"train {label}", unit="step", file=sys.stderr,
                    disable=not (sys.stderr.isatty() and ranks.is_main), dynamic_ncols=True)  # fmt: skip
    # Losses stay on the device and are read in one go every `read_every` steps: every step on CPU (a
    # read is free there), every logging_steps on a GPU (each read waits for the device).
    read_every = settings.logging_steps if device.on_gpu() else 1
    unread: list[tuple[Any, float]] = []  # (loss tensor, learning rate) of the steps not read yet
    if ranks.world > 1:  # each rank its own dropout masks (Paddle's GPU generator, or job.training.dropout's on CPU)
        import paddle

        paddle.seed(rank_seed(settings.seed, ranks))
    paused = 0.0  # dev evaluations and checkpoint writes during training, left out of the training time
    steps = [(epoch, batch, shard) for epoch, batches in enumerate(epochs)
             for batch, shard in zip(batches, shard_batches(batches, ranks), strict=True)]  # fmt: skip

    def read_unread() -> float:
        """Read the unread steps' losses (NaN stops the run), log them; returns the last."""
        first = outcome.steps - len(unread) + 1
        rates = [rate for _, rate in unread]
        for step, (value, step_rate) in enumerate(zip(read_losses(unread, ranks), rates, strict=True), first):
            if not math.isfinite(value):
                raise TrainingDiverged(f"{label}: loss became {value} at step {step}; lower the learning rate")
            outcome.step_losses.append(value)
            if on_step is not None:
                on_step(step, value, step_rate)
        progress.update(len(unread))
        unread.clear()
        return outcome.step_losses[-1]

    def state(evaluated: bool = True) -> LoopState:
        """Where the loop stands now (`evaluated`: the dev evaluation due at this step, if any, is done)."""
        seconds = outcome.seconds if outcome.seconds else time.perf_counter() - started - paused
        return LoopState(
            step=outcome.steps, samples=outcome.samples, tokens=outcome.tokens, seconds=seconds,
            step_losses=list(outcome.step_losses), schedule=schedule.state_dict(), scaler=scaler_state(scaler),
            rng=random_state(), moments=optimizer_moments(optimizer, model), evaluated=evaluated,
            stopped_early=outcome.stopped_early,
        )  # fmt: skip

    def save_checkpoint(evaluated: bool = True) -> float:
        """Hand the loop's state to `checkpoints`; returns the seconds it took."""
        began = time.perf_counter()
        checkpoints.save(state(evaluated))  # type: ignore[union-attr]
        return time.perf_counter() - began

    def evaluate_now() -> float:
        """Score dev at this step (off the clock) and decide on early stopping; returns the seconds it took.
        A stop requested during the evaluation writes the checkpoint without it: the resumed run scores dev
        at this step first, as this one would have."""
        began = time.perf_counter()
        try:
            outcome.stopped_early = rank0_decision(bool(evaluate_at(outcome.steps)), ranks)  # type: ignore[misc]
        except Interrupted:
            if checkpoints is not None and outcome.steps > checkpoints.last_step:
                save_checkpoint(evaluated=False)
            raise
        return time.perf_counter() - began

    with training_dropout(rank_seed(settings.seed, ranks), in_graph=outcome.compiled) as outcome.dropout:
        if resumed is not None:
            set_random_state(resumed.rng)  # after the bulk dropout's generator exists
        started = time.perf_counter() - (resumed.seconds if resumed is not None else 0.0)
        if resumed is not None and not (resumed.evaluated or resumed.stopped_early) and resumed.step < total_steps:
            paused += evaluate_now()
        for epoch, global_batch, shard in [] if outcome.stopped_early else steps[outcome.steps :]:
            if stop.signum is not None and checkpoints is not None and outcome.steps > checkpoints.last_step:
                if unread:
                    read_unread()
                paused += save_checkpoint()  # the queue's grace period: the state so far, then exit 143
            stop.raise_if_requested()
            rate = schedule.last_lr  # the rate this step uses (the step advances the schedule)
            parts = micro_batches(shard, settings.accumulation)
            micro = [(batch, len(part) * ranks.world / len(global_batch))
                     for part, batch in zip(parts, iterate_batches(rows, parts, pad_id), strict=True)]  # fmt: skip
            loss = accumulated_step(stepped, micro, optimizer, schedule, settings.precision, scaler, forward)
            unread.append((loss, rate))
            outcome.steps += 1
            outcome.samples += len(global_batch)
            outcome.tokens += sum(lengths[i] for i in global_batch)
            evaluation = (
                evaluate_at is not None
                and settings.eval_steps is not None
                and outcome.steps % settings.eval_steps == 0
                and outcome.steps < total_steps
            )
            saving = checkpoints is not None and outcome.steps < total_steps and checkpoints.due(outcome.steps)
            logged = outcome.steps % settings.logging_steps == 0 or outcome.steps == total_steps or evaluation
            if len(unread) < read_every and not (logged or saving):
                continue
            value = read_unread()
            elapsed = time.perf_counter() - started - paused
            progress.set_postfix(epoch=epoch + 1, loss=f"{value:.4f}", samples_s=f"{outcome.samples / elapsed:.1f}")
            if ranks.is_main and logged and progress.disable:  # on a terminal the bar says it
                say(f"[{label}] step {outcome.steps}/{total_steps} epoch {epoch + 1} loss {value:.4f} "
                    f"lr {schedule.get_lr():.2e} {outcome.samples / elapsed:.1f} samples/s")  # fmt: skip
            if evaluation:
                paused += evaluate_now()
                if outcome.stopped_early:
                    break
            if saving:
                paused += save_checkpoint()
        outcome.seconds = time.perf_counter() - started - paused
    progress.close()
    outcome.optimizer_state_bytes = state_bytes(optimizer)
    outcome.state = state
    return outcome


def _data_parallel(model: Any) -> Any:
    import paddle

    return paddle.DataParallel(model)


def rank_seed(seed: int, ranks: Ranks) -> int:
    """The dropout seed of this rank: the run's seed on rank 0 (so one process draws what it always
    drew), a seed derived from (seed, rank) on the others; the same masks on every rank would drop the
    same positions of different rows together."""
    if ranks.rank == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, ranks.rank]).generate_state(1)[0])


def rank0_decision(decision: bool, ranks: Ranks) -> bool:
    """Rank 0's early-stopping decision, on every rank. Each rank scores dev itself, alike in exact arithmetic
    but not always bit for bit: ranks that decided differently would leave one waiting for ever in the next
    step's all-reduce. Rank 0's is the decision its record and dev curve show."""
    if ranks.world == 1:
        return decision
    import paddle
    import paddle.distributed as dist

    flag = paddle.to_tensor([int(decision)], dtype="int32")
    dist.broadcast(flag, src=0)
    return bool(flag.numpy()[0])


def read_losses(unread: list[tuple[Any, float]], ranks: Ranks) -> list[float]:
    """The losses of the unread steps, as the mean over ranks (so every rank stops on NaN together), in
    one host read: the tensors are stacked on the device and, under data parallelism, averaged with one
    all-reduce for the whole window."""
    import paddle

    if len(unread) == 1 and ranks.world == 1:
        return [float(unread[0][0])]
    stacked = paddle.stack([loss.reshape([]) for loss, _ in unread]).astype("float32")
    if ranks.world > 1:
        import paddle.distributed as dist

        dist.all_reduce(stacked)
    return [value / ranks.world for value in stacked.numpy().tolist()]


def state_bytes(optimizer: Any) -> int:
    """Bytes held by the optimizer's state (AdamW: two moments per trainable element, and scalars)."""
    total = 0
    for value in optimizer.state_dict().values():
        if hasattr(value, "numel") and hasattr(value, "element_size"):
            total += int(value.numel()) * int(value.element_size())
    return total
