"""Mid-run checkpoints: a run's whole training state in one file, written every `save_steps` steps or
`save_minutes` minutes of training and when the job is asked to stop (SIGTERM from a queue reclaiming a
spot node, Ctrl-C), read back by a rerun of the same command, which goes on from that step; removed once
the run's record is saved.

The state is everything the rest of the run depends on: the trained weights, AdamW's moments and the
schedule's step, the loss scaler, every random generator the loop draws from (Paddle's, and the bulk
dropout's on CPU), the losses and counters so far, the dev curve and the best-dev copy. The batch order
is a function of the seed and the epoch (job.data.batches), so the step count is the position in it. A
resumed run's step losses and predictions are those of an uninterrupted run (tested on CPU).

One safetensors file per run (checkpoints/<run>.safetensors): one object, so one PUT on object storage
and one rename in a folder, never half-written. Its metadata names the run it belongs to (config hash,
run key, data sample, initial weights, planned steps) and a CRC-32 of every tensor: a file that is not
this run's, or corrupt, is refused whole with a line saying why, and the run trains from step 0."""

from __future__ import annotations

import contextlib
import json
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from job.errors import Interrupted
from job.output.layout import CHECKPOINTS_FOLDER
from job.output.log import say
from job.output.storage import Output

FORMAT = "job-checkpoint/1"
METADATA_KEY = "job_checkpoint"
WEIGHT, MOMENT, BEST = "weight/", "optimizer/", "best/"


def checkpoint_name(key: str) -> str:
    return f"{CHECKPOINTS_FOLDER}/{key}.safetensors"


@dataclass
class LoopState:
    """Where the training loop stands after `step` steps: what it needs to go on from there."""

    step: int
    samples: int
    tokens: int
    seconds: float  # training time so far (evaluations and checkpoint writes left out)
    step_losses: list[float]
    schedule: dict[str, Any]  # the learning-rate schedule's state_dict
    scaler: dict[str, Any]  # fp16's loss scaler (empty otherwise)
    rng: dict[str, Any]  # job.training.resume.random_state
    moments: dict[str, np.ndarray] = field(default_factory=dict)  # "<accumulator>/<parameter name>"
    evaluated: bool = True  # False: stopped during the dev evaluation at `step`, which the resumed run does first
    stopped_early: bool = False  # early stopping ended training at `step`


@dataclass
class RunState:
    """A checkpoint: the loop's state, the trained weights, and the run's dev scoring so far."""

    loop: LoopState
    weights: dict[str, np.ndarray]  # the trainable parameters, by name
    curve: list[dict[str, Any]]  # DevPoint dumps
    best: dict[str, Any]  # BestCheckpoint's step, accuracy, since_best
    best_weights: dict[str, np.ndarray] = field(default_factory=dict)


# ---------------------------------------------------------------- random generators


def random_state() -> dict[str, Any]:
    """Every generator training draws from, as JSON: Paddle's on the current device (dropout on a GPU and
    in a static graph) and the bulk dropout's NumPy generator on CPU (job.training.dropout)."""
    import paddle

    from job.training.dropout import active_bulk_dropout

    bulk = active_bulk_dropout()
    state = {"paddle": [list(s.__getstate__()) for s in paddle.get_rng_state()]}
    if bulk is not None:
        numpy_state = bulk.generator.bit_generator.state
        state["dropout"] = {**numpy_state, "state": {"state": [int(x) for x in numpy_state["state"]["state"]]}}
    return state


def set_random_state(state: dict[str, Any]) -> None:
    import paddle
    from paddle.base.libpaddle import GeneratorState

    from job.training.dropout import active_bulk_dropout

    restored = []
    for saved in state["paddle"]:  # GeneratorState has no constructor; pickle's route: __new__, __setstate__
        generator = GeneratorState.__new__(GeneratorState)
        generator.__setstate__(tuple(saved))
        restored.append(generator)
    paddle.set_rng_state(restored)
    bulk = active_bulk_dropout()
    if bulk is not None and "dropout" in state:
        saved = state["dropout"]
        bulk.generator.bit_generator.state = {
            **saved,
            "state": {"state": np.array(saved["state"]["state"], dtype=np.uint64)},
        }


# ---------------------------------------------------------------- the optimizer


def optimizer_moments(optimizer: Any, model: Any) -> dict[str, np.ndarray]:
    """AdamW's accumulators (moments, beta powers) by accumulator and parameter name: Paddle keys them by
    the parameter's internal name (linear_12.w_0), which a new process numbers differently."""
    internal = {p.name: name for name, p in model.named_parameters()}
    moments = {}
    for accumulator, by_parameter in optimizer._accumulators.items():  # Paddle has no public reader by parameter
        for internal_name, tensor in by_parameter.items():
            moments[f"{accumulator}/{internal[internal_name]}"] = tensor.numpy()
    return moments


def set_optimizer_moments(optimizer: Any, model: Any, moments: dict[str, np.ndarray]) -> None:
    """Create AdamW's accumulators now (Paddle makes them at the first step) and fill them from `moments`."""
    import paddle

    trainable = [(name, p) for name, p in model.named_parameters() if not p.stop_gradient]
    optimizer._create_accumulators(paddle.static.default_main_program().global_block(), [p for _, p in trainable])
    for accumulator, by_parameter in optimizer._accumulators.items():
        for name, p in trainable:
            by_parameter[p.name].set_value(moments[f"{accumulator}/{name}"])


def scaler_state(scaler: Any) -> dict[str, Any]:
    if scaler is None:
        return {}
    return {k: (np.asarray(v).tolist() if isinstance(v, np.ndarray) else v) for k, v in scaler.state_dict().items()}


def set_scaler_state(scaler: Any, state: dict[str, Any]) -> None:
    if scaler is not None and state:
        scaler.load_state_dict({**state, "scale": np.array(state["scale"], dtype=np.float32).reshape([-1])})


# ---------------------------------------------------------------- when to write


@dataclass
class Checkpoints:
    """When a run writes its checkpoint, and the state it resumed from. The loop asks `due` after each
    step (and its evaluation) and hands `save` its state; `write` adds the run's part and stores the file."""

    save_steps: int | None
    save_seconds: float | None
    write: Callable[[LoopState], None]
    resumed: LoopState | None = None
    last_step: int = 0
    last_time: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.resumed is not None:
            self.last_step = self.resumed.step

    def due(self, step: int) -> bool:
        by_steps = self.save_steps is not None and step % self.save_steps == 0
        by_time = self.save_seconds is not None and time.monotonic() - self.last_time >= self.save_seconds
        return step > self.last_step and (by_steps or by_time)

    def save(self, state: LoopState) -> None:
        self.write(state)
        self.last_step, self.last_time = state.step, time.monotonic()


@contextlib.contextmanager
def checkpoint_on_stop(checkpoints: Checkpoints | None, state: Callable[..., LoopState] | None) -> Iterator[None]:
    """After training: a stop requested in the block (during the final evaluation, minutes on CPU for a
    large dev set) writes the trained state first, so the rerun only scores it."""
    try:
        yield
    except Interrupted:
        if checkpoints is not None and state is not None:
            final = state(evaluated=False)
            if final.step > checkpoints.last_step:
                checkpoints.save(final)
        raise


# ---------------------------------------------------------------- the file


def _checksum(tensors: dict[str, np.ndarray]) -> int:
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(name.encode("utf-8"), crc)
        crc = zlib.crc32(memoryview(np.ascontiguousarray(tensors[name])).cast("B"), crc)
    return crc


def write_checkpoint(output: Output, key: str, identity: dict[str, Any], state: RunState) -> tuple[str, int]:
    """Store `state` as checkpoints/<key>.safetensors, whole or not at all; returns where and its bytes."""
    from safetensors.numpy import save_file

    tensors = {f"{WEIGHT}{name}": value for name, value in state.weights.items()}
    tensors.update({f"{MOMENT}{name}": value for name, value in state.loop.moments.items()})
    tensors.update({f"{BEST}{name}": value for name, value in state.best_weights.items()})
    tensors = {name: np.ascontiguousarray(value) for name, value in tensors.items()}
    loop = {k: v for k, v in asdict(state.loop).items() if k != "moments"}
    metadata = {"format": FORMAT, "identity": identity, "loop": loop, "curve": state.curve, "best": state.best,
                "crc32": _checksum(tensors)}  # fmt: skip
    name = checkpoint_name(key)
    with output.file(name) as path:
        save_file(tensors, str(path), metadata={METADATA_KEY: json.dumps(metadata)})
        size = path.stat().st_size
    return output.where(name), size


class Refused(Exception):
    """A checkpoint that is not this run's, or cannot be read: the message says why."""


def read_checkpoint(output: Output, key: str, identity: dict[str, Any], trainable: dict[str, tuple[int, ...]]
                    ) -> RunState | None:  # fmt: skip
    """This run's checkpoint, checked whole before anything is used; None when there is none, or when it is
    refused (a line says why, and the run trains from step 0). `trainable`: each trained parameter's shape."""
    name = checkpoint_name(key)
    with output.fetched(name) as path:
        if path is None:
            return None
        try:
            return _load(path, identity, trainable)
        except Refused as exc:
            say(f"[{key}] not resuming from {output.where(name)}: {exc}; training from step 0")
            return None


def _load(path: Path, identity: dict[str, Any], trainable: dict[str, tuple[int, ...]]) -> RunState:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = json.loads((handle.metadata() or {}).get(METADATA_KEY, "null"))
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RecursionError) as exc:
        raise Refused(f"it cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise Refused(f"it is not a checkpoint of this job (format {FORMAT} expected)")
    theirs = metadata.get("identity") or {}
    for field_name, value in identity.items():
        if theirs.get(field_name) != value:
            raise Refused(f"it belongs to another run ({field_name} {theirs.get(field_name)!r}, this run's {value!r})")
    if metadata.get("crc32") != _checksum(tensors):
        raise Refused("it is corrupt (its CRC-32 does not match its tensors)")
    try:
        state = _state(metadata, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise Refused(f"its state is incomplete ({type(exc).__name__}: {exc})") from None
    shapes = {name: tuple(value.shape) for name, value in state.weights.items()}
    if shapes != trainable:
        missing = sorted(set(trainable) - set(shapes)) or sorted(set(shapes) - set(trainable))
        raise Refused(f"its weights are not this run's trainable parameters ({', '.join(missing[:3]) or 'shapes'})")
    for moment_name, value in state.loop.moments.items():
        parameter = moment_name.split("/", 1)[1]
        if parameter not in trainable or value.shape not in (trainable[parameter], (1,)):
            raise Refused(f"its optimizer state {moment_name} does not fit this run's parameters")
    if state.best_weights and set(state.best_weights) != set(trainable):
        raise Refused("its best-dev copy does not hold this run's trainable parameters")
    return state


def _state(metadata: dict[str, Any], tensors: dict[str, np.ndarray]) -> RunState:
    def part(prefix: str) -> dict[str, np.ndarray]:
        return {name[len(prefix) :]: value for name, value in tensors.items() if name.startswith(prefix)}

    loop = dict(metadata["loop"])
    loop_state = LoopState(
        step=int(loop["step"]), samples=int(loop["samples"]), tokens=int(loop["tokens"]),
        seconds=float(loop["seconds"]), step_losses=[float(x) for x in loop["step_losses"]],
        schedule=dict(loop["schedule"]), scaler=dict(loop["scaler"]), rng=dict(loop["rng"]), moments=part(MOMENT),
        evaluated=bool(loop.get("evaluated", True)), stopped_early=bool(loop.get("stopped_early", False)),
    )  # fmt: skip
    if len(loop_state.step_losses) != loop_state.step or loop_state.step < 1:
        raise ValueError(f"{len(loop_state.step_losses)} losses for {loop_state.step} steps")
    best = dict(metadata["best"])
    return RunState(loop=loop_state, weights=part(WEIGHT), curve=list(metadata["curve"]), best=best,
                    best_weights=part(BEST))  # fmt: skip


def remove_checkpoint(output: Output, key: str) -> None:
    """The run's record is saved: its checkpoint has no more use."""
    output.remove(checkpoint_name(key))
