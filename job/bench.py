"""`python -m job bench`: how fast each strategy trains and evaluates the full-size model here, and
how that compares with this machine's own fp32 matmul peak (the figure to compare across machines).

Uses the cached pretrained weights when present, else a random init of the same architecture; the
first 512 TNEWS training titles; the config's batch size and sequence length; the job's own batching
(length buckets) and training step. Timing is a benchmark, never a test.
"""

from __future__ import annotations

import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from job.config.plan import Run, plan_runs
from job.config.schema import JobConfig
from job.data.batches import Encoded, encode, epoch_batches, iterate_batches
from job.data.labels import TNEWS
from job.data.sources import clue_split, read_source
from job.data.tasks import CLUE_TASKS
from job.errors import RetryableError, UserError
from job.runtime.cpu import available_cpus
from job.runtime.device import (
    batch_on_device,
    on_gpu,
    resolve_compile,
    resolve_eval_batch_size,
    resolve_precision,
    select_device,
    synchronize,
)
from job.runtime.memory import peak_memory_mb, start_memory_meter
from job.training.capacity import device_budget_mb, largest_batch
from job.training.dropout import training_dropout
from job.training.evaluate import evaluate, length_sorted_batches
from job.training.loop import build_optimizer, compiled_forward, loss_scaler, train_step
from job.training.model import LoadedModel, classify, count_parameters, load_model, load_tokenizer, quiet_paddlenlp
from job.training.strategies import STRATEGIES

BENCH_DATA_VARIABLE = "JOB_BENCH_DATA"  # a folder with tnews/train.json and ernie-3.0-medium-zh/vocab.txt


def bench_data() -> Path | None:
    """Where the bench finds TNEWS titles and the vocabulary offline, when neither is configured or
    cached: $JOB_BENCH_DATA (`make bench` sets it to ../shared/data when that folder exists)."""
    value = os.environ.get(BENCH_DATA_VARIABLE)
    return Path(value) if value else None


BENCH_ROWS = 512


WINDOWS = (0, 16)  # plain shuffled batches (the harder case: more padding) and length buckets
# Targets as shares of what this machine can do, measured in the same run (absolute times differ
# between machines of the same kind).
# A strategy that trains every weight is bound by the optimizer's memory traffic too: its target is a
# share of the matmul + optimizer floor. One that trains few weights is bound by its matmuls.
FULL_PASSES = 3  # a strategy that trains every weight (its optimizer step is the floor that matters)
TARGETS = {True: ("fraction_of_floor", 0.90), False: ("fraction_of_matmul_peak", 0.80)}
EVAL_TARGET = ("eval_fraction_of_matmul_peak", 0.85)
# Bytes a training step must move through memory per trainable fp32 parameter, at least: AdamW reads
# the parameter, its gradient and both moments and writes back the parameter and moments (7 x 4), and
# clipping reads every gradient once for the global norm (4). Clipping's rescale (8 more) only runs on
# steps whose norm is above max_grad_norm, so the floor leaves it out.
FLOOR_BYTES_PER_PARAMETER = 7 * 4 + 4


def copy_bandwidth_gbs(megabytes: int = 256, repeats: int = 5) -> float:
    """The training device's memory bandwidth: bytes read plus written per second. On CPU the best of a
    NumPy copy (one thread) and an in-place Paddle scale with the job's threads over a large fp32 array
    (measured here: 23 and 17 GB/s; AdamW reached about the first); on a GPU the in-place scale alone, on
    the device (host memory is not what AdamW reads there), timed between two device syncs: reading an
    element back to the host would time the copy and its launch too."""
    import numpy as np
    import paddle

    tensor = paddle.ones([megabytes << 18])

    def scale() -> None:
        tensor.scale_(1.0)
        synchronize()  # the scale has run (a CPU op has when it returns)

    copies = [scale]
    if not on_gpu():
        source = np.ones(megabytes << 18, dtype=np.float32)
        target = np.empty_like(source)
        copies.insert(0, lambda: np.copyto(target, source))
    best = float("inf")
    with paddle.no_grad():
        for copy in copies:
            copy()  # warm-up: every page touched
            for _ in range(repeats):
                synchronize()
                started = time.perf_counter()
                copy()
                best = min(best, time.perf_counter() - started)
    return 2 * (megabytes << 20) / best / 1e9


CPU_PEAK_SIZES = (1536, 1920, 2048)
GPU_PEAK_SIZES = (4096, 6144, 8192)  # large enough to fill an H100's SMs; 2048 leaves them part idle


def peak_setup(precision: str, gpu: bool) -> tuple[tuple[int, ...], str]:
    """Sizes and dtype of the matmul peak: on CPU fp32 (Paddle trains fp32 there); on a GPU the training
    dtype, so bf16/fp16 runs are measured against the tensor cores they use."""
    if not gpu:
        return CPU_PEAK_SIZES, "float32"
    return GPU_PEAK_SIZES, {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def tf32_matmuls() -> bool:
    """Whether fp32 matmuls may run as TF32 on a GPU (Paddle's cuBLAS switch, unless NVIDIA_TF32_OVERRIDE=0)."""
    import paddle

    return bool(paddle.base.core.get_cublas_switch()) and os.environ.get("NVIDIA_TF32_OVERRIDE") != "0"


def matmul_peak_gflops(sizes: tuple[int, ...] = CPU_PEAK_SIZES, seconds: float = 3.0, dtype: str = "float32") -> float:
    """What this device reaches with the job's threads: the best rate of large matmuls of a few sizes,
    timed over and over for a few seconds, each between device syncs. Both matter on CPU: the first
    second ran at about two thirds of the rate reached later (200-235 against about 300 GFLOP/s), and a
    power-of-two size alone sometimes stayed 10-15% below its neighbours."""
    import paddle

    operands = [(paddle.randn([size, size]).astype(dtype), paddle.randn([size, size]).astype(dtype)) for size in sizes]
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        for a, b in operands:
            synchronize()
            started = time.perf_counter()
            paddle.matmul(a, b)
            synchronize()  # the product has run; no host read in the timing
            best = max(best, 2 * a.shape[0] ** 3 / (time.perf_counter() - started) / 1e9)
        if time.perf_counter() >= deadline:
            return best


def measure_peaks(sizes: tuple[int, ...], dtype: str) -> tuple[float, float]:
    """Training's matmul peak (in its dtype) and evaluation's: evaluation runs in fp32 whatever training's
    precision, so on a bf16 or fp16 GPU its share is of the fp32 peak (against bf16's it always missed)."""
    peak = matmul_peak_gflops(sizes, dtype=dtype)
    return peak, peak if dtype == "float32" else matmul_peak_gflops(sizes, dtype="float32")


def bench_model(config: JobConfig) -> tuple[LoadedModel, str]:
    """The cached or local checkpoint when there is one, else a random init of the same architecture;
    seeded, so every call gives the same weights. Never waits on a download."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification
    from paddlenlp.utils.env import MODEL_HOME

    paddle.seed(config.seeds()[0])
    if Path(config.model_name).is_dir() or (Path(MODEL_HOME) / config.model_name / "model_state.pdparams").is_file():
        return load_model(config.model_name, len(TNEWS)), f"{config.model_name} (checkpoint)"
    model = ErnieForSequenceClassification(ErnieConfig.from_pretrained(config.model_name, num_classes=len(TNEWS)))
    head = [name for name, _ in model.named_parameters() if not name.startswith("ernie.")]
    loaded = LoadedModel(model, head, reinitialised=[], source=config.model_name)
    return loaded, f"{config.model_name} (random init: no checkpoint here)"


def bench_tokenizer(config: JobConfig) -> Any:
    try:
        return load_tokenizer(config.model_name)
    except (RetryableError, UserError):
        from paddlenlp.transformers import ErnieTokenizer

        folder = bench_data()
        vocab = folder / "ernie-3.0-medium-zh" / "vocab.txt" if folder else None
        if vocab is None or not vocab.is_file():
            raise UserError(
                f"no tokenizer for {config.model_name}: not in $PPNLP_HOME, and no ernie-3.0-medium-zh/vocab.txt "
                f"under ${BENCH_DATA_VARIABLE}"
            ) from None
        return ErnieTokenizer(str(vocab))


def bench_titles(config: JobConfig) -> tuple[list, str]:
    """The first 512 training titles: from the configured folder or PaddleNLP's cache, else ../shared."""
    from paddlenlp.utils.env import DATA_HOME

    if config.data_dir or (Path(DATA_HOME) / "Clue" / "tnews_public" / "train.json").is_file():
        return read_source(config.data_spec()).train[:BENCH_ROWS], config.data_dir or "PaddleNLP clue/tnews"
    folder = bench_data()
    local = folder / "tnews" / "train.json" if folder else None
    if local is None or not local.is_file():
        raise UserError(
            f"no TNEWS data: not configured, not in $PPNLP_HOME, and no tnews/train.json under ${BENCH_DATA_VARIABLE}"
        )
    return (clue_split(CLUE_TASKS["tnews"], local.parent, "train", TNEWS, True) or [])[:BENCH_ROWS], str(local)


def step_flops(batch_shapes: list[tuple[int, int]], non_embedding: int, layers: int, hidden: int, passes: int) -> float:
    """Model FLOPs of one step: 2 x params x tokens per pass over the matmuls (job.training.runs.Strategy
    .step_passes: 3 for full FT, forward, input and weight grads; 2 for LoRA, no weight grads for frozen
    layers; 1 for the head alone), plus attention's two L x L matmuls per layer and pass."""
    per_token = 2 * passes
    total = 0.0
    for batch, length in batch_shapes:
        tokens = batch * length
        attention = layers * 2 * 2 * batch * length * length * hidden  # QK^T and AV, forward
        total += per_token * non_embedding * tokens + passes * attention
    return total / len(batch_shapes)


def eval_flops(batch_shapes: list[tuple[int, int]], layers: int, hidden: int, intermediate: int) -> float:
    """FLOPs of evaluation as it runs: a forward pass in which the last layer computes keys and values
    for every position but its query, attention, output projection and feed-forward for [CLS] only,
    plus the pooler."""
    feed_forward = 2 * 2 * hidden * intermediate
    total = 0.0
    for batch, length in batch_shapes:
        full_layer = length * (4 * 2 * hidden**2 + feed_forward) + 2 * 2 * length * length * hidden
        last_layer = length * 2 * 2 * hidden**2 + 2 * 2 * hidden**2 + feed_forward + 2 * 2 * length * hidden
        total += batch * ((layers - 1) * full_layer + last_layer + 2 * hidden**2)
    return total


def time_evaluation(model: Any, model_config: Any, rows: list[Encoded], batch_size: int) -> tuple[float, float]:
    """Seconds for one evaluation of `rows` after a warm-up, and its FLOPs."""
    evaluate(model, rows[:32], batch_size, 0)  # warm-up, like the training steps
    started = time.perf_counter()
    evaluate(model, rows, batch_size, 0)
    seconds = time.perf_counter() - started
    shapes = [
        (len(batch), max(len(rows[i].input_ids) for i in batch)) for batch in length_sorted_batches(rows, batch_size)
    ]
    flops = eval_flops(shapes, model_config.num_hidden_layers, model_config.hidden_size, model_config.intermediate_size)
    return seconds, flops


def time_optimizer_step(model: Any, rows: list[Encoded], run: Run, repeats: int = 5) -> float:
    """Seconds of one optimizer step (clipping and AdamW) on the gradients of one real batch, best of a
    few; each repeat starts from those same gradients, so it clips whenever that batch's norm is above
    max_grad_norm, as in training (a repeat on already clipped gradients would time the cheaper skip)."""
    import paddle
    import paddle.nn.functional as F

    optimizer, _ = build_optimizer(model, run.settings, 100)
    batch = next(iterate_batches(rows, [list(range(run.settings.batch_size))], 0))
    tensors = batch_on_device(batch)
    F.cross_entropy(classify(model, tensors), tensors["labels"]).backward()
    gradients = [(p.grad, p.grad.clone()) for p in model.parameters() if p.grad is not None]
    best = float("inf")
    for _ in range(repeats):
        with paddle.no_grad():
            for grad, original in gradients:
                paddle.assign(original, output=grad)
        synchronize()
        started = time.perf_counter()
        optimizer.step()
        synchronize()
        best = min(best, time.perf_counter() - started)
    optimizer.clear_grad()
    return best


def timed_batches(rows: list[Encoded], run: Run, steps: int, warmup: int) -> list[list[int]]:
    """The row indices of each step the bench runs for `run`: warm-up steps first, as `job run` would
    draw them at its seed and length-bucket window (repeated when the rows give fewer batches)."""
    settings = run.settings
    batches = epoch_batches(
        [len(r.input_ids) for r in rows], settings.batch_size, settings.seed, 0, settings.bucket_window
    )
    return (batches * (1 + (steps + warmup) // len(batches)))[: steps + warmup]


def time_training(model: Any, rows: list[Encoded], run: Run, steps: int, warmup: int) -> Timing:
    import paddle

    settings = run.settings
    batches = timed_batches(rows, run, steps, warmup)
    optimizer, schedule = build_optimizer(model, settings, len(batches))
    model.train()
    paddle.seed(settings.seed)
    memory_start = start_memory_meter()  # the loaded model is below it: bench meters training alone
    times, shapes = [], []
    scaler = loss_scaler(settings.precision)
    forward = compiled_forward(model) if settings.compiled else None
    with training_dropout(settings.seed, in_graph=settings.compiled):  # the dropout `job run` trains with
        for index, batch in enumerate(iterate_batches(rows, batches, 0)):
            started = time.perf_counter()
            float(train_step(model, batch, optimizer, schedule, settings.precision, scaler, forward=forward))
            if index >= warmup:
                times.append(time.perf_counter() - started)
                shapes.append(batch["input_ids"].shape)
    return Timing(times=times, shapes=[tuple(s) for s in shapes], peak_memory_mb=peak_memory_mb(memory_start))


class BenchRecord(BaseModel):
    """bench.json's typed parts; a value left None is left out of the file (job bench writes `to_json`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in self.model_dump().items() if value is not None or key in KEPT_NONE}


KEPT_NONE = {"tf32", "threads"}  # None says something there: no TF32 question on CPU; threads left unset


class RunBench(BenchRecord):
    """One benched headline row at one length-bucket window."""

    group: str
    strategy: str
    label: str
    length_bucket_window: int
    trainable_params: int
    total_params: int
    timed_steps: int
    median_ms_per_step: float
    samples_per_second: float
    tokens_per_second: float
    tokens_per_step: float
    gflop_per_step: float
    achieved_gflops: float
    fraction_of_matmul_peak: float
    optimizer_ms: float
    optimizer_floor_ms: float
    matmul_floor_ms: float
    fraction_of_floor: float
    peak_memory_mb: float
    eval_samples_per_second: float | None = None  # evaluation: timed at window 0 only
    eval_achieved_gflops: float | None = None
    eval_fraction_of_matmul_peak: float | None = None
    eval_vs_train_throughput: float | None = None
    compiled: bool = False  # the training forward ran as a static graph (config `compile`)
    # `capacity: true` (window 0 only): the largest batch within the memory budget (job.training.capacity)
    capacity_budget_mb: float | None = None
    capacity_batch: int | None = None
    capacity_peak_allocated_mb: float | None = None
    capacity_peak_reserved_mb: float | None = None
    capacity_samples_per_second: float | None = None


class TargetCheck(BenchRecord):
    run: str
    length_bucket_window: int
    measure: str
    value: float
    target: float
    met: bool


class BenchReport(BenchRecord):
    device: str
    threads: str | None
    model: str
    data: str
    batch_size: int
    max_seq_length: int
    precision: str
    eval_batch_size: int
    matmul_peak_gflops: float
    matmul_peak_dtype: str
    eval_matmul_peak_gflops: float  # fp32: evaluation's own peak (the training peak on CPU and in fp32)
    tf32: bool | None
    copy_bandwidth_gbs: float
    runs: list[RunBench]
    targets: list[TargetCheck]
    end_to_end_seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        data["runs"] = [run.to_json() for run in self.runs]
        data["targets"] = [target.to_json() for target in self.targets]
        return data


@dataclass(frozen=True)
class Timing:
    times: list[float]  # seconds of each timed step
    shapes: list[tuple[int, int]]  # (batch, length) of each timed step
    peak_memory_mb: float


def bench_strategy(run: Run, rows: list[Encoded], config: JobConfig, *, steps: int, warmup: int, peak: float,
                   eval_peak: float, bandwidth: float, with_eval: bool) -> RunBench:  # fmt: skip
    """Training speed of `run` (and, with `with_eval`, evaluation speed) against this machine's floors."""
    loaded, _ = bench_model(config)
    model = run.strategy.prepare(loaded, run)
    trainable, total = count_parameters(model)
    model_config = loaded.model.config
    non_embedding = sum(
        int(p.numel()) for n, p in loaded.model.named_parameters() if "embeddings" not in n and "lora_" not in n
    )
    timing = time_training(model, rows, run, steps, warmup)
    median = statistics.median(timing.times)
    batch = run.settings.batch_size
    tokens = statistics.mean(b * length for b, length in timing.shapes)
    flops = step_flops(timing.shapes, non_embedding, model_config.num_hidden_layers, model_config.hidden_size,
                       passes=run.strategy.step_passes)  # fmt: skip
    achieved = flops / median / 1e9
    matmul_floor = flops / (peak * 1e9)
    optimizer_floor = FLOOR_BYTES_PER_PARAMETER * trainable / (bandwidth * 1e9)
    evaluation: dict[str, float] = {}
    if with_eval:
        eval_rows = rows[:256]
        eval_seconds, eval_work = time_evaluation(model, model_config, eval_rows, int(run.eval_batch_size))
        eval_rate = len(eval_rows) / eval_seconds
        evaluation = {
            "eval_samples_per_second": figures(eval_rate),
            "eval_achieved_gflops": figures(eval_work / eval_seconds / 1e9),
            "eval_fraction_of_matmul_peak": figures(eval_work / eval_seconds / 1e9 / eval_peak),
            "eval_vs_train_throughput": figures(eval_rate / (batch / median)),
        }  # fmt: skip
    capacity: dict[str, Any] = {}
    budget, _ = device_budget_mb(config.memory_budget_mb) if config.capacity and with_eval else (None, "")
    if budget is not None:
        found = largest_batch(lambda: run.strategy.prepare(bench_model(config)[0], run), rows, run.settings,
                              budget_mb=budget, sequence_length=config.max_seq_length)  # fmt: skip
        capacity = {"capacity_budget_mb": budget, "capacity_batch": found.largest_batch,
                    "capacity_peak_allocated_mb": found.peak_mb, "capacity_peak_reserved_mb": found.reserved_mb,
                    "capacity_samples_per_second": found.samples_per_second}  # fmt: skip
    return RunBench(
        **capacity, group=run.group, strategy=run.strategy.name, label=run.label,
        length_bucket_window=run.settings.bucket_window,
        trainable_params=trainable, total_params=total, timed_steps=len(timing.times),
        median_ms_per_step=figures(1000 * median), samples_per_second=figures(batch / median),
        tokens_per_second=figures(tokens / median), tokens_per_step=figures(tokens),
        gflop_per_step=figures(flops / 1e9), achieved_gflops=figures(achieved),
        fraction_of_matmul_peak=figures(achieved / peak),
        optimizer_ms=figures(1000 * time_optimizer_step(model, rows, run)),
        optimizer_floor_ms=figures(1000 * optimizer_floor), matmul_floor_ms=figures(1000 * matmul_floor),
        fraction_of_floor=figures((matmul_floor + optimizer_floor) / median),
        peak_memory_mb=timing.peak_memory_mb, **evaluation, compiled=run.settings.compiled,
    )  # fmt: skip


def figures(value: float, significant: int = 4) -> float:
    """`value` to `significant` figures: a tiny model's 0.04 ms stays 0.04, never 0.0, on a fast CPU, and
    every ratio in bench.json can be rebuilt from its parts to 0.1%."""
    return float(f"{value:.{significant}g}")


def targets(runs: list[RunBench]) -> list[TargetCheck]:
    """Each target of TARGETS / EVAL_TARGET for each benched run that has the measure: met or missed."""
    checked = []
    for result in runs:
        wanted = [TARGETS[STRATEGIES[result.strategy].step_passes == FULL_PASSES]]
        wanted += [EVAL_TARGET] if getattr(result, EVAL_TARGET[0]) is not None else []
        for measure, target in wanted:
            value = getattr(result, measure)
            checked.append(TargetCheck(run=result.group, length_bucket_window=result.length_bucket_window,
                                       measure=measure, value=value, target=target, met=value >= target))  # fmt: skip
    return checked


def saved_model(folder: Path, model: Any, tokenizer: Any) -> Path:
    """The bench's model and tokenizer as a local model folder `job run` can load."""
    model_dir = folder / "model"
    model.save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(model_dir))
    return model_dir


def shared_data_dir(config: JobConfig, source: str) -> str | None:
    """The folder of the bench's titles when they came from $JOB_BENCH_DATA, for `job run`'s data_dir."""
    return None if config.data_dir or source == "PaddleNLP clue/tnews" else str(Path(source).parent)


def end_to_end_seconds(config_path: Path | None, model: Any, tokenizer: Any, data_dir: str | None) -> float:
    """Wall time of `python -m job run` on the config with the bench's model saved as a local folder."""
    with tempfile.TemporaryDirectory() as folder:
        model_dir = saved_model(Path(folder), model, tokenizer)
        command = [sys.executable, "-m", "job", "run", "--set", f"model_name={model_dir}",
                   "--output-dir", str(Path(folder) / "out"), "--force"]  # fmt: skip
        if config_path is not None:
            command += ["--config", str(config_path)]
        if data_dir is not None:
            command += ["--set", f"data_dir={data_dir}"]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(os.environ))
        if result.returncode != 0:
            raise RetryableError(f"end-to-end run failed: {result.stderr[-2000:]}")
        return time.perf_counter() - started


# The grid `--workers-ab` times: 2 strategies x 3 seeds of small runs on the full-size model, the case
# workers are for (many short runs; a large one is data parallelism's).
WORKER_GRID = ("strategies=[lora, full_finetune]", "seed=[1, 2, 3]", "max_train_samples=128",
               "max_eval_samples=128", "num_epochs=1", "max_seq_length=64", "eval_steps=null")  # fmt: skip


def workers_ab(config: JobConfig, config_path: Path | None, rounds: int = 2, workers: int = 2) -> dict[str, Any]:
    """Wall time of `job run` of WORKER_GRID with `workers` workers (the cores shared out) against one
    process with every core, interleaved (A B, then B A, ...) so that a machine's drift falls on both."""
    loaded, _ = bench_model(config)
    tokenizer = bench_tokenizer(config)
    local_data = shared_data_dir(config, bench_titles(config)[1])
    threads = os.environ.get("OMP_NUM_THREADS") or str(available_cpus())
    times: dict[int, list[float]] = {1: [], workers: []}
    with tempfile.TemporaryDirectory() as folder:
        model_dir = saved_model(Path(folder), loaded.model, tokenizer)
        for round_ in range(rounds):
            for count in (workers, 1) if round_ % 2 == 0 else (1, workers):
                command = [sys.executable, "-m", "job", "run", "--set", f"model_name={model_dir}", "--force",
                           "--output-dir", str(Path(folder) / f"out-{count}-{round_}"), "--workers", str(count),
                           *(arg for item in WORKER_GRID for arg in ("--set", item))]  # fmt: skip
                command += ["--config", str(config_path)] if config_path is not None else []
                command += ["--set", f"data_dir={local_data}"] if local_data is not None else []
                started = time.perf_counter()
                result = subprocess.run(command, capture_output=True, text=True, check=False,
                                        env={**os.environ, "OMP_NUM_THREADS": threads})  # fmt: skip
                if result.returncode != 0:
                    raise RetryableError(f"the {count}-worker run failed: {result.stderr[-2000:]}")
                times[count].append(round(time.perf_counter() - started, 1))
    one, several = statistics.median(times[1]), statistics.median(times[workers])
    return {"grid": list(WORKER_GRID), "threads": int(threads), "workers": workers, "rounds": rounds,
            "one_process_seconds": times[1], "workers_seconds": times[workers],
            "speedup": figures(one / several)}  # fmt: skip


def one_run_per_group(config: JobConfig) -> list[Run]:
    """The first planned run of each headline row: rates and seeds do not change a step's cost."""
    firsts: dict[str, Run] = {}
    for run in plan_runs(config):
        firsts.setdefault(run.group, run)
    return list(firsts.values())


def run_bench(config: JobConfig, config_path: Path | None, steps: int, warmup: int, e2e: bool) -> BenchReport:
    """One run per headline row, each with plain shuffled batches and with length buckets (WINDOWS),
    evaluation once per row; then the targets, and optionally `job run` end to end."""
    quiet_paddlenlp()
    device = select_device(config.device)
    precision = resolve_precision(config.precision, device)  # what `job run` would train with here
    eval_batch_size = resolve_eval_batch_size(config.eval_batch_size, device)
    gpu = device.name == "gpu"
    sizes, dtype = peak_setup(precision, gpu)
    peak, eval_peak = measure_peaks(sizes, dtype)
    bandwidth = copy_bandwidth_gbs()
    tokenizer = bench_tokenizer(config)
    titles, source = bench_titles(config)
    rows = encode(titles, tokenizer, config.max_seq_length)
    _, model_source = bench_model(config)
    results = [
        bench_strategy(
            replace(
                run,
                settings=replace(
                    run.settings,
                    bucket_window=window,
                    precision=precision,
                    compiled=resolve_compile(config.compile),
                ),
                eval_batch_size=eval_batch_size,
            ),
            rows,
            config,
            steps=steps,
            warmup=warmup,
            peak=peak,
            eval_peak=eval_peak,
            bandwidth=bandwidth,
            with_eval=window == WINDOWS[0],
        )
        for run in one_run_per_group(config)
        for window in WINDOWS
    ]
    end_to_end = None
    if e2e:
        local_data = shared_data_dir(config, source)
        loaded, _ = bench_model(config)
        end_to_end = round(end_to_end_seconds(config_path, loaded.model, tokenizer, local_data), 1)
    return BenchReport(
        device=device.description, threads=os.environ.get("OMP_NUM_THREADS"), model=model_source,
        data=f"{source}, first {len(rows)} training titles", batch_size=config.batch_size,
        max_seq_length=config.max_seq_length, precision=precision, eval_batch_size=eval_batch_size,
        matmul_peak_gflops=figures(peak), matmul_peak_dtype=dtype, eval_matmul_peak_gflops=figures(eval_peak),
        tf32=tf32_matmuls() if gpu and dtype == "float32" else None,
        copy_bandwidth_gbs=figures(bandwidth), runs=results, targets=targets(results), end_to_end_seconds=end_to_end,
    )  # fmt: skip


def percent(result: RunBench, key: str) -> str:
    value = getattr(result, key)
    return f"{100 * value:.0f}%" if value is not None else "-"


def format_table(report: BenchReport) -> str:
    columns = ("window", "ms/step", "samples/s", "tokens/s", "GFLOP/s", "of peak", "optim ms", "optim floor",
               "of floor", "eval samples/s", "eval of peak", "peak MB")  # fmt: skip
    lines = [
        f"device {report.device}, matmul peak {report.matmul_peak_gflops} GFLOP/s "
        f"({report.matmul_peak_dtype}{', TF32 on' if report.tf32 else ''}), copy bandwidth "
        f"{report.copy_bandwidth_gbs} GB/s, model {report.model}",
        f"data {report.data}, batch {report.batch_size}, max_seq_length {report.max_seq_length}",
        "",
        f"{'run':44}" + "".join(f"{c:>15}" for c in columns),
    ]
    for result in report.runs:
        share = functools.partial(percent, result)
        evaluated = result.eval_samples_per_second
        values = (result.length_bucket_window, result.median_ms_per_step, result.samples_per_second,
                  result.tokens_per_second, result.achieved_gflops, share("fraction_of_matmul_peak"),
                  result.optimizer_ms, result.optimizer_floor_ms, share("fraction_of_floor"),
                  "-" if evaluated is None else evaluated, share("eval_fraction_of_matmul_peak"),
                  result.peak_memory_mb)  # fmt: skip
        label = result.label + (" [static graph]" if result.compiled else "")
        lines.append(f"{label:44}" + "".join(f"{v!s:>15}" for v in values))
    lines += ["", "targets (shares of this machine's own floors, measured above):"]
    for target in report.targets:
        lines.append(
            f"  {'met   ' if target.met else 'MISSED'} {target.run:16} "
            f"window {target.length_bucket_window:>2}  {target.measure:30} "
            f"{100 * target.value:.0f}% (target {100 * target.target:.0f}%)"
        )
    capacity = [r for r in report.runs if r.capacity_batch is not None]
    if capacity:
        lines += ["", f"capacity (largest batch within {capacity[0].capacity_budget_mb:,.0f} MiB allocated, titles of "
                  f"{report.max_seq_length} tokens):"]  # fmt: skip
        for r in capacity:
            reserved = f", {r.capacity_peak_reserved_mb:,.0f} MiB reserved" if r.capacity_peak_reserved_mb else ""
            lines.append(f"  {r.label:42} batch {r.capacity_batch:>6} ({r.capacity_peak_allocated_mb} MiB allocated"
                         f"{reserved}), {r.capacity_samples_per_second} samples/s")  # fmt: skip
    if report.end_to_end_seconds is not None:
        lines += ["", f"end to end (load, train, evaluate, report; every strategy): {report.end_to_end_seconds} s"]
    return "\n".join(lines)


PEER_SHAPE_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "max_position_embeddings", "type_vocab_size", "task_type_vocab_size", "use_task_id", "hidden_act",
                   "hidden_dropout_prob")  # fmt: skip


def export_peer_batches(config: JobConfig, *, steps: int, warmup: int) -> dict[str, Any]:
    """What peer/torch_peft.py needs to time the torch + PEFT peer on exactly the work the bench times at
    window 0 (plain shuffled batches): the model's shape, and per headline row its settings and its
    padded batches (token ids, segment ids, labels), warm-up steps first."""
    quiet_paddlenlp()
    tokenizer = bench_tokenizer(config)
    titles, _ = bench_titles(config)
    rows = encode(titles, tokenizer, config.max_seq_length)
    loaded, _ = bench_model(config)
    shape = {key: getattr(loaded.model.config, key) for key in PEER_SHAPE_KEYS if hasattr(loaded.model.config, key)}
    exported = []
    for run in one_run_per_group(config):
        run = replace(run, settings=replace(run.settings, bucket_window=WINDOWS[0]))
        batches = [
            {key: batch[key].tolist() for key in ("input_ids", "token_type_ids", "labels")}
            for batch in iterate_batches(
                rows, timed_batches(rows, run, steps, warmup), 0
            )  # padded as time_training pads
        ]
        lora = run.lora
        exported.append({
            "group": run.group, "strategy": run.strategy.name, "seed": run.seed, "classes": len(TNEWS),
            "learning_rate": run.learning_rate, "weight_decay": run.settings.weight_decay,
            "max_grad_norm": run.settings.max_grad_norm, "dropout": shape.get("hidden_dropout_prob", 0.1),
            "adapter": None if lora is None else {"r": lora.r, "alpha": lora.alpha, "dropout": lora.dropout,
                                                "targets": lora.targets},
            "batches": batches,
        })  # fmt: skip
    threads = int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count() or 1)
    return {"threads": threads, "warmup": warmup, "model": shape, "rows": exported}
