"""The job, step by step: preflight, device, data, then per planned run load -> prepare -> train ->
evaluate -> save, then the report. Each step lives in its own module; this file only wires them."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from job.config.plan import Run, plan_runs
from job.config.schema import JobConfig, check_against_model, own_key
from job.data.batches import Encoded, EncodedSplits, encode, encode_splits
from job.data.download import fetch_model, use_mirror
from job.data.labels import Labels
from job.data.sampling import draw_samples
from job.data.sources import RawSplits, Splits, read_source
from job.errors import RetryableError, UserError
from job.output.layout import (
    ARTIFACTS_FOLDER,
    LEARNING_PLOT,
    LOSS_PLOT,
    PARETO_PLOT,
    RESULTS_FILE,
    RESULTS_FOLDER,
    SPECTRUM_PLOT,
)
from job.output.log import run_done, say, set_position
from job.output.storage import Output, open_output
from job.results.facts import now, run_facts
from job.results.overlap import spectrum_curves, with_overlaps, write_directions
from job.results.plot import plot_learning_curve, plot_losses, plot_pareto, plot_update_spectrum
from job.results.records import load_results, read_records, save_result
from job.results.report import render_report, subject
from job.results.schema import (
    CapacityResult,
    Combined,
    Comparison,
    DevPoint,
    MergeAgreement,
    ResultRecord,
    RunFacts,
    RunResult,
    ServingForm,
    SplitResult,
)
from job.results.stats import encode_classes, macro_f1, per_class_accuracy
from job.results.tracking import RunLog, check_trackers, log_report, open_tracking_store, run_log
from job.results.verdict import combine
from job.runtime.device import (
    DeviceChoice,
    resolve_compile,
    resolve_eval_batch_size,
    resolve_precision,
    select_device,
    tf32_matmuls,
)
from job.runtime.device_faults import out_of_memory, raise_if_device_fault
from job.runtime.memory import peak_memory_mb, peak_reserved_mb, start_memory_meter
from job.runtime.ranks import Ranks, process_ranks
from job.runtime.signals import StopRequest
from job.training.capacity import device_budget_mb, largest_batch
from job.training.checkpoint import BestCheckpoint
from job.training.evaluate import EvalResult, evaluate
from job.training.loop import train
from job.training.model import (
    LoadedModel,
    check_model_name,
    classifier_of,
    count_parameters,
    layer_names,
    load_model,
    load_tokenizer,
    model_limits,
    quiet_paddlenlp,
    trainable_bytes,
    weights_fingerprint,
)
from job.training.resume import (
    Checkpoints,
    LoopState,
    RunState,
    checkpoint_name,
    checkpoint_on_stop,
    read_checkpoint,
    remove_checkpoint,
    write_checkpoint,
)
from job.training.serving import merge_agreement, serving_costs
from job.training.strategies import baseline, check_targets_match
from job.training.update_rank import trained_weights, update_analysis

WORKER_VARIABLE = "JOB_WORKER"  # set by `job run --workers` in each worker: its name and device
SHARED_VARIABLE = "JOB_GPU_SHARED_BY"  # set there too: how many workers share its GPU (1: its own)


def check_output_dir(output: Output) -> list[Path]:
    """The output folder (or bucket) must exist or be creatable, and be writable, before any compute is
    spent. Returns the local folders it created."""
    try:
        return output.check_writable()
    except OSError as exc:
        raise UserError(
            f"config key 'output_dir': cannot write to {output.where()}: {exc.strerror}{_fix(exc, output.where())}"
        ) from None


def _fix(exc: OSError, output_dir: str) -> str:
    """The command that makes the folder writable, for the two causes a user can fix. In the images
    (JOB_IMAGE is set) the folder is a mount, so the fix names the host side."""
    in_image = bool(os.environ.get("JOB_IMAGE"))
    if exc.errno == errno.EROFS:
        where = "drop ':ro' from the reports volume, e.g. -v ./reports:/app/reports" if in_image else "remount it"
        return f"; it is mounted read-only: mount it read-write: {where}"
    if exc.errno == errno.EACCES and hasattr(os, "getuid"):
        owner = f"{os.getuid()}:{os.getgid()}"
        folder = "./reports" if in_image else str(output_dir)
        host = " on the host (./reports, or the folder mounted at /app/reports)" if in_image else ""
        return f"; the job runs as UID {os.getuid()}: run `sudo chown -R {owner} {folder}`{host}"
    return ""


def pending_runs(config: JobConfig, output: Output, runs: list[Run], force: bool, planned: set[str]) -> list[Run]:
    """Runs still to train: a saved result of the same config hash and the same data sample counts as
    done (a rerun after a preemption resumes), unless `force`. A record made on other data (the files
    under data_dir, or the cache, changed since) is trained again. Every record is read and validated
    once, here: a corrupt or foreign record stops the job now, not after training.

    A record of this config outside the `planned` keys (another strategy, left out by --strategy) made
    on other data would never be trained again by this command, and the runs trained now could not be
    compared with it: UserError before anything trains, and every saved record stays as it was."""
    config_hash = config.config_hash()
    records = read_records(output)
    done = {
        record.result.key: (path, record.result.sample)
        for path, record in records.items()
        if record.run.config_hash == config_hash
    }
    others = {key: saved for key, saved in done.items() if key not in planned}
    needed = (not force and any(run.key in done for run in runs)) or (others and runs)
    samples = current_samples(config) if needed else {}
    for key, (path, saved) in others.items():
        if samples and saved not in samples.values():
            raise UserError(
                f"{path} ({key}) was made on other data (sample {saved}, now {', '.join(sorted(samples.values()))}): "
                f"training {', '.join(run.key for run in runs)} alone would leave runs that cannot be compared; run "
                "every strategy again (drop --strategy), or restore the data"
            )
    pending = []
    for run in runs:
        path, saved = done.get(run.key, (None, None))
        sample = samples.get(run.train_rows)
        if path is not None and not force and saved == sample:
            say(f"[{run.key}] already done for config {config_hash} ({path}); skipping (--force recomputes)")
            continue
        if path is not None and not force:
            say(f"[{run.key}] {path} was made on other data (sample {saved}, now {sample}); training it again")
        pending.append(run)
    return pending


def current_samples(config: JobConfig) -> dict[int | None, str]:
    """Each training size -> the identity of the rows (and files) it trains on now
    (job.data.sources.Splits.identity)."""
    use_mirror()
    return {size: sample.identity() for size, sample in draw_sizes(config, read_source(config.data_spec())).items()}


def run_job(config: JobConfig, stop: StopRequest, force: bool = False, keys: list[str] | None = None) -> str | None:
    """Train every planned run (or those named in `keys`) not yet done and write the report. Under a
    data-parallel launch only rank 0 evaluates and writes; the other ranks return None."""
    output = open_output(config.output_dir)
    check_trackers(config, output)
    created = check_output_dir(output)
    open_tracking_store(config, output)
    plan = plan_runs(config)
    runs = [run for run in plan if keys is None or run.key in keys]
    pending = pending_runs(config, output, runs, force, {run.key for run in plan})
    ranks = process_ranks() if pending else Ranks()
    if pending:
        try:
            train_runs(config, output, pending, [run.key for run in plan], stop, ranks)
        except BaseException:  # bad data or model, a failed download: leave no empty output folder behind
            for folder in reversed(created):
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when nothing was written into it
            raise
    if not ranks.is_main:
        return None
    return write_report(output, config.report_file, config.config_hash(), complete_only=output.lock_free)


@dataclass(frozen=True)
class Session:
    """What every run of one job shares, built once by `setup_session`; each run is then
    `train_one(session, run)`."""

    config: JobConfig
    output: Output
    stop: StopRequest
    ranks: Ranks
    device: DeviceChoice
    tokenizer: Any
    pad_id: int
    labels: Labels  # the task's classes: the classifier's outputs
    text_columns: tuple[str, ...]  # the record keys of the text (and its pair), for saved models
    facts: RunFacts
    drawn: dict[int | None, Splits]  # each training size's sample (max_train_samples; one unless it is a list)
    largest: int | None  # the size with the most training rows: the run facts name its sample
    shared: EncodedSplits  # the largest size's rows, tokenised: its dev and test titles are every size's
    sizes: dict[int | None, Sized] = field(default_factory=dict)  # the sizes tokenised so far

    def rows_for(self, run: Run) -> Sized:
        """The rows of the run's training size, tokenised the first time a run of that size asks: an array
        task or a worker tokenises the sizes it trains, not every size of a learning curve."""
        size = run.train_rows
        if size not in self.sizes:
            sample, tokenizer, length = self.drawn[size], self.tokenizer, self.config.max_seq_length
            encoded = (self.shared if size == self.largest
                       else replace(self.shared, train=encode(sample.train.examples, tokenizer, length)))  # fmt: skip
            self.sizes[size] = Sized(encoded, sample.identity(), sample.eval_identity())
        return self.sizes[size]


@dataclass(frozen=True)
class Sized:
    """The rows of one training size: its own train sample, the dev and test titles every size shares."""

    encoded: EncodedSplits
    sample: str  # identity of those rows (job.data.sources.Splits.identity)
    eval_sample: str  # identity of the dev and test rows alone (the same for every size)


def train_runs(
    config: JobConfig, output: Output, runs: list[Run], planned: list[str], stop: StopRequest, ranks: Ranks
) -> None:
    """Train `runs` (pending runs of the plan whose keys are `planned`) and save each one's record."""
    session, runs = setup_session(config=config, output=output, runs=runs, planned=planned, stop=stop, ranks=ranks)
    started, timed = time.monotonic(), []
    for number, run in enumerate(runs, start=1):
        stop.raise_if_requested()
        set_position(f"[run {number}/{len(runs)}] " if len(runs) > 1 else "")
        began = time.monotonic()
        try:
            result = train_one(session, run)
            if result is None:  # not rank 0
                continue
            path = save_run(session, run, result)
            say(f"[{run.key}] saved {path}")
        finally:
            set_position("")
        timed.append((run.strategy.name, time.monotonic() - began))
        if len(runs) > 1:
            say(run_done(key=run.key, code=0, seconds=timed[-1][1], done=number, total=len(runs), timed=timed,
                         remaining=[left.strategy.name for left in runs[number:]], parallel=1,
                         elapsed=time.monotonic() - started))  # fmt: skip
    stop.raise_if_requested()  # a signal during the last run's saves: its record is kept, the job exits 143


def setup_session(
    *, config: JobConfig, output: Output, runs: list[Run], planned: list[str], stop: StopRequest, ranks: Ranks
) -> tuple[Session, list[Run]]:
    """The named steps before any run trains: the model's limits and LoRA targets, the data sample,
    the device (and with it each run's precision and evaluation batch), the tokenised rows."""
    quiet_paddlenlp()
    stop.checkpoint()  # importing PaddleNLP resets SIGTERM to the default action (measured): take it back
    fetch_model(config.model_name)
    _check_model(config, runs)
    raw = read_source(config.data_spec())
    drawn = draw_sizes(config, raw)
    largest = max(drawn, key=lambda size: len(drawn[size].train.examples))
    splits = drawn[largest]  # the run facts name the largest
    device, runs = _setup_device(config, runs)
    stop.checkpoint()
    say(
        f"device: {device.description} ({device.reason}), precision {runs[0].settings.precision}, evaluation batch "
        f"{runs[0].eval_batch_size}" + (f", rank {ranks.rank} of {ranks.world}" if ranks.world > 1 else "")
    )
    for sample in drawn.values():
        say(f"train: {sample.train.source}")
    for split in (splits.dev, splits.test):
        say(f"{split.name}: {split.source}")
    tokenizer = load_tokenizer(config.model_name)
    stop.checkpoint()
    shared = encode_splits(splits, tokenizer, config.max_seq_length)  # dev and test: the same for every size
    stop.checkpoint()
    session = Session(
        config=config, output=output, stop=stop, ranks=ranks, device=device, tokenizer=tokenizer,
        pad_id=int(tokenizer.pad_token_id), labels=raw.labels, text_columns=raw.text_columns,
        facts=run_facts(config, planned, device, splits, raw), drawn=drawn, largest=largest, shared=shared,
    )  # fmt: skip
    return session, runs


def draw_sizes(config: JobConfig, raw: RawSplits) -> dict[int | None, Splits]:
    """The data sample of each training size. Two sizes that leave the same rows (both at or above what
    train has after the test split) would train the same rows and be reported as two sizes: UserError."""
    seed = config.sample_seed()
    drawn = {size: draw_samples(raw, size, config.max_eval_samples, seed) for size in config.train_sizes()}
    by_rows: dict[int, list[int | None]] = {}
    for size, sample in drawn.items():
        by_rows.setdefault(len(sample.train.examples), []).append(size)
    for rows, sizes in by_rows.items():
        if len(sizes) > 1:
            named = " and ".join("null (all)" if size is None else f"{size:,}" for size in sizes)
            raise UserError(f"config key 'max_train_samples': {named} all train the same {rows:,} rows (every row "
                            "train has after the test split): keep one of them")  # fmt: skip
    return drawn


def _check_model(config: JobConfig, runs: list[Run]) -> None:
    """Before any run trains: a LoRA target typo must not surface after full fine-tuning."""
    check_against_model(config, model_limits(config.model_name))
    targets = list(dict.fromkeys(run.lora.target_modules for run in runs if run.lora is not None))
    names = layer_names(config.model_name) if targets else None
    if names is not None:
        for modules in targets:
            check_targets_match(names, modules)


def _setup_device(config: JobConfig, runs: list[Run]) -> tuple[DeviceChoice, list[Run]]:
    """Pick the device, and resolve what depends on it in every run (precision, the static graph,
    evaluation batch)."""
    device = select_device(config.device)
    precision = resolve_precision(config.precision, device)
    compiled = resolve_compile(config.compile)
    runs = [
        replace(run, settings=replace(run.settings, precision=precision, compiled=compiled),
                eval_batch_size=resolve_eval_batch_size(run.eval_batch_size, device))
        for run in runs
    ]  # fmt: skip
    return device, runs


def prepare_model(run: Run, loaded: LoadedModel) -> Any:
    """The strategy's model over the freshly loaded one (the caller seeded Paddle with the run's seed first:
    the head's and the adapters' initialisation)."""
    if loaded.reinitialised:
        say(f"[{run.key}] newly initialised (not in the checkpoint): {', '.join(loaded.reinitialised)}")
    return run.strategy.prepare(loaded, run)


def train_one(session: Session, run: Run) -> RunResult | None:
    """Load the model, let the strategy prepare it, train, evaluate: one run of the plan, on the
    session's rows, tracked as `report_to` asks. None on a data-parallel rank other than 0."""
    with run_log(session.config, session.output, run, session.ranks) as log:
        result = trained_run(session, run, log)
        if result is not None:
            log.finished(result)
        return result


def trained_run(session: Session, run: Run, log: RunLog) -> RunResult | None:
    """`train_one` with its trackers open."""
    import paddle

    key, name, settings = run.key, run.strategy.name, run.settings
    paddle.seed(run.seed)  # the same head initialisation for every run of this seed
    config, stop, ranks, pad_id = session.config, session.stop, session.ranks, session.pad_id
    rows = session.rows_for(run)
    encoded = rows.encoded
    started = now()
    memory_start = start_memory_meter()  # the run's own weights, gradients, optimizer state and activations
    loaded = load_model(config.model_name, len(session.labels))
    stop.checkpoint()
    fingerprint = weights_fingerprint(loaded.model)
    model = prepare_model(run, loaded)
    trainable, total = count_parameters(model)
    say(f"[{key}] {run.label}, seed {run.seed}: {trainable:,} of {total:,} parameters trainable "
        f"({100 * trainable / total:.3f}%)")  # fmt: skip
    initial = trained_weights(model)  # full fine-tuning's encoder weights before training (host copy)
    paddle.seed(run.seed)  # the same dropout masks for every run of this seed
    curve: list[DevPoint] = []
    latest: list[EvalResult] = []  # the last dev evaluation, reused when its weights are the ones scored
    best = BestCheckpoint(keep=config.select_checkpoint == "best_dev")
    identity = {"config_hash": config.config_hash(), "key": key, "sample": rows.sample, "initial_weights": fingerprint}
    checkpoints = run_checkpoints(session, run, model, identity, curve, best)

    def evaluate_dev(step: int) -> bool:
        """Score dev at `step`; True when early stopping says to stop (every rank decides alike)."""
        with out_of_memory_advice(f"[{key}] evaluation", "eval_batch_size", run.eval_batch_size):
            scored = evaluate(model, encoded.dev, run.eval_batch_size, pad_id, stop, progress(key, "dev"))
        latest[:] = [scored]
        curve.append(DevPoint(step=step, accuracy=scored.accuracy, loss=round(scored.loss, 6)))
        log.evaluated(step, scored.accuracy, scored.loss)
        improved = best.offer(step, scored.accuracy, model)
        if ranks.is_main and settings.eval_steps is not None:
            say(f"[{key}] step {step}: dev accuracy {scored.accuracy:.4f} loss {scored.loss:.4f}"
                + (" (the best so far)" if improved and len(curve) > 1 else ""))  # fmt: skip
        patience = config.early_stopping_patience
        return patience is not None and best.since_best >= patience

    with out_of_memory_advice(f"[{key}] training", own_key(name, "batch_size"), settings.batch_size):
        outcome = train(model, encoded.train, settings, pad_id=pad_id, label=key, stop=stop, ranks=ranks,
                        on_step=log.step, evaluate_at=evaluate_dev, checkpoints=checkpoints)  # fmt: skip
    if not ranks.is_main:
        return None
    peak_memory, reserved = peak_memory_mb(memory_start), peak_reserved_mb()
    say(f"[{key}] evaluating on dev and test")
    with checkpoint_on_stop(checkpoints, outcome.state):  # the trained weights are still in the model
        if not latest or curve[-1].step != outcome.steps:
            if curve and curve[-1].step == outcome.steps:  # resumed after its final dev score: scored again
                curve.pop()
            evaluate_dev(outcome.steps)
        dev = latest[0]
        restoring = best.keep and best.step != outcome.steps  # best_dev chose an earlier evaluation
        if not restoring:
            with out_of_memory_advice(f"[{key}] evaluation", "eval_batch_size", run.eval_batch_size):
                test = evaluate(model, encoded.test, run.eval_batch_size, pad_id, stop, progress(key, "test"))
    if restoring:
        best.restore(model)
        say(f"[{key}] scoring the weights of step {best.step}, the best dev accuracy ({best.accuracy:.4f})")
        with out_of_memory_advice(f"[{key}] evaluation", "eval_batch_size", run.eval_batch_size):
            dev = evaluate(model, encoded.dev, run.eval_batch_size, pad_id, stop, progress(key, "dev"))
            test = evaluate(model, encoded.test, run.eval_batch_size, pad_id, stop, progress(key, "test"))
    serving, agreement = measure_serving(session, run, model)
    if initial and config.analysis:  # seconds on the full-size model: the log says what it is doing meanwhile
        say(
            f"[{key}] measuring each weight's learned update: its rank and intruder dimensions ({len(initial)} weights)"
        )
    ranks = config.lora_r if isinstance(config.lora_r, list) else [config.lora_r]
    analysis = update_analysis(initial if config.analysis else {}, model,
                               config.intruder_threshold if config.analysis else None,
                               directions=max(ranks) if config.analysis else 0)  # once, at the end  # fmt: skip
    if analysis.directions:  # beside the record, for the report's subspace overlap (job.results.overlap)
        write_directions(session.output, config.config_hash(), key, analysis.directions, analysis.spectra)
    del initial
    selected = best.step if best.keep else outcome.steps
    say(
        f"[{key}] trained in {outcome.seconds:.1f} s"
        + (f" (stopped early at step {outcome.steps})" if outcome.stopped_early else "")
        + f"; dev accuracy {dev.accuracy:.4f} loss {dev.loss:.4f}; test accuracy {test.accuracy:.4f} loss "
        f"{test.loss:.4f}" + (f" (weights of step {selected})" if selected != outcome.steps else "")
    )
    checkpoint_bytes = trainable_bytes(model)  # before saving: saving LoRA's merged model folds its adapters in
    artifacts = save_artifacts(session, run, model) if config.save_artifacts else []
    return RunResult(
        key=key,
        index=run.index,
        group=run.group,
        strategy=name,
        label=run.label,
        seed=run.seed,
        learning_rate=settings.learning_rate,
        batch_size=settings.batch_size,
        precision=settings.precision,
        tf32=tf32_matmuls(session.device),
        eval_batch_size=run.eval_batch_size,
        dropout=outcome.dropout,
        compiled=outcome.compiled,
        lora_r=run.lora.r if run.lora else None,
        lora_alpha=run.lora.alpha if run.lora else None,
        initial_weights=fingerprint,
        sample=rows.sample,
        eval_sample=rows.eval_sample,
        train_examples=len(encoded.train),
        trainable_params=trainable,
        total_params=total,
        training_seconds=round(outcome.seconds, 3),
        steps=outcome.steps,
        samples_per_second=round(outcome.samples_per_second, 3),
        tokens_per_second=round(outcome.tokens / outcome.seconds, 1) if outcome.seconds else 0.0,
        peak_memory_mb=float(peak_memory),
        optimizer_state_mb=round(outcome.optimizer_state_bytes / 2**20, 3),
        checkpoint_mb=round(checkpoint_bytes / 2**20, 3),
        dev=split_record(dev, encoded.dev, len(session.labels)),
        test=split_record(test, encoded.test, len(session.labels)),
        step_losses=[round(loss, 6) for loss in outcome.step_losses],
        dev_curve=curve,
        selected_step=selected,
        stopped_early=outcome.stopped_early,
        resumed_from_step=checkpoints.resumed.step if checkpoints and checkpoints.resumed else None,
        update_rank=analysis.ranks,
        update_stable_rank=analysis.stable,
        update_rank_random=analysis.random,
        intruder_dimensions=analysis.intruders,
        reinitialised_parameters=loaded.reinitialised,
        artifacts=artifacts,
        started_at=started,
        finished_at=now(),
        worker=os.environ.get(WORKER_VARIABLE, ""),
        gpu_shared_by=int(os.environ.get(SHARED_VARIABLE, "1") or 1) if session.device.name == "gpu" else 1,
        serving=serving,
        merge_agreement=agreement,
        capacity=measure_capacity(session, run),
        peak_reserved_mb=reserved,
    )


def measure_serving(session: Session, run: Run, model: Any) -> tuple[list[ServingForm], list[MergeAgreement]]:
    """With `serving: true`, what serving the scored model costs, and whether LoRA's two forms agree
    (job.training.serving); before the artifacts are saved (saving LoRA's merged model folds it in)."""
    if not session.config.serving:
        return [], []
    rows, pad_id = session.rows_for(run).encoded.test, session.pad_id
    forms = [ServingForm(**asdict(cost)) for cost in serving_costs(model, rows, pad_id)]
    agreement = [
        MergeAgreement(**asdict(found)) for found in merge_agreement(model, rows, pad_id, run.settings.precision)
    ]
    say(f"[{run.key}] serving: " + "; ".join(f"{f.form} {f.ms_per_title:.2f} ms a title, {f.titles_per_second:,.0f} "
                                             "titles/s at 32" for f in forms)
        + "".join(f"; merged vs unmerged ({a.precision}): largest logit difference {a.max_logit_difference:.2g}, "
                  f"{a.prediction_agreement:.1%} equal predictions" for a in agreement))  # fmt: skip
    return forms, agreement


def measure_capacity(session: Session, run: Run) -> CapacityResult | None:
    """With `capacity: true`, on the first seed's runs: the largest batch the run's strategy fits in the
    memory budget (job.training.capacity), on a fresh copy of its model."""
    config = session.config
    seeds = config.seed if isinstance(config.seed, list) else [config.seed]
    if not config.capacity or run.seed != seeds[0]:
        return None
    budget, source = device_budget_mb(config.memory_budget_mb)
    if budget is None:
        say(f"[{run.key}] capacity: skipped (on CPU there is no memory budget unless memory_budget_mb sets one)")
        return None
    say(f"[{run.key}] capacity: the largest batch within {budget:,.0f} MiB ({source})")
    rows = session.rows_for(run).encoded.train
    found = largest_batch(lambda: run.strategy.prepare(load_model(config.model_name, len(session.labels)), run),
                          rows, run.settings, budget_mb=budget, sequence_length=config.max_seq_length)  # fmt: skip
    say(f"[{run.key}] capacity: batch {found.largest_batch} fits ({found.peak_mb:,.1f} MiB allocated), "
        f"{found.samples_per_second:,.1f} samples/s there, {found.configured_samples_per_second:,.1f} at batch "
        f"{found.configured_batch}")  # fmt: skip
    return CapacityResult(
        budget_mb=budget, budget_source=source, sequence_length=found.sequence_length,
        largest_batch=found.largest_batch, granule=found.granule, peak_allocated_mb=found.peak_mb,
        peak_reserved_mb=found.reserved_mb, samples_per_second=found.samples_per_second,
        configured_batch=found.configured_batch, configured_samples_per_second=found.configured_samples_per_second,
        probes=[(batch, None if peak == float("inf") else peak) for batch, peak in found.probes],
    )  # fmt: skip


def run_checkpoints(session: Session, run: Run, model: Any, identity: dict[str, Any], curve: list[DevPoint],
                    best: BestCheckpoint) -> Checkpoints | None:  # fmt: skip
    """The run's mid-run checkpoints (job.training.resume), None when the config writes none. A checkpoint
    this run left is read now: its weights go into `model`, its dev scoring into `curve` and `best`, and
    the loop goes on from its step."""
    config, output, key = session.config, session.output, run.key
    if config.save_steps is None and config.save_minutes is None:
        return None
    if session.ranks.world > 1:
        if session.ranks.is_main:
            say(f"[{key}] no mid-run checkpoints under a data-parallel launch: a rerun trains this run from step 0")
        return None
    parameters = {name: p for name, p in model.named_parameters() if not p.stop_gradient}
    state = read_checkpoint(output, key, identity, {name: tuple(p.shape) for name, p in parameters.items()})
    if state is not None:
        import paddle

        with paddle.no_grad():
            for name, parameter in parameters.items():
                parameter.set_value(state.weights[name])
        curve[:] = [DevPoint.model_validate(point) for point in state.curve]
        best.load_state(state.best, state.best_weights)
        say(f"[{key}] resuming from step {state.loop.step}: {output.where(checkpoint_name(key))}")

    def write(loop: LoopState) -> None:
        began = time.monotonic()
        weights = {name: p.numpy() for name, p in parameters.items()}
        saved = RunState(loop=loop, weights=weights, curve=[point.model_dump() for point in curve], best=best.state(),
                         best_weights=best.weights)  # fmt: skip
        where, size = write_checkpoint(output, key, identity, saved)
        say(f"[{key}] checkpoint at step {loop.step} saved: {where} ({size / 2**20:,.1f} MB, "
            f"{time.monotonic() - began:.1f} s)")  # fmt: skip

    minutes = config.save_minutes
    return Checkpoints(save_steps=config.save_steps, save_seconds=None if minutes is None else 60 * minutes,
                       write=write, resumed=state.loop if state is not None else None)  # fmt: skip


def save_run(session: Session, run: Run, result: RunResult) -> str:
    """Save a finished run's record; its checkpoint, if any, goes then."""
    path = save_result(session.output, ResultRecord(run=session.facts, result=result))
    if session.config.save_steps is not None or session.config.save_minutes is not None:
        remove_checkpoint(session.output, run.key)
    return path


EVAL_PROGRESS_ROWS = 2000  # an evaluation of at least this many titles says how far it has got


def progress(key: str, split: str) -> Callable[[int, int], None] | None:
    """Lines at a quarter, a half and three quarters of a long evaluation (10,000 dev titles in the
    reference config take minutes on CPU)."""
    marks: list[int] = []

    def report(done: int, total: int) -> None:
        if total < EVAL_PROGRESS_ROWS:
            return
        quarter = 4 * done // total
        if 0 < quarter < 4 and quarter not in marks:
            marks.append(quarter)
            say(f"[{key}] evaluating {split}: {done:,} of {total:,} titles")

    return report


def split_record(evaluation: EvalResult, rows: list[Encoded], classes: int) -> SplitResult:
    """The record of one evaluated split: accuracy and loss, macro-F1, per-class accuracy, predictions."""
    labels = [row.label for row in rows]
    return SplitResult(
        accuracy=evaluation.accuracy,
        loss=evaluation.loss,
        examples=evaluation.examples,
        macro_f1=macro_f1(evaluation.predictions, labels, classes),
        per_class_accuracy=per_class_accuracy(evaluation.predictions, labels, classes),
        predictions=encode_classes(evaluation.predictions, classes),
    )


@contextlib.contextmanager
def out_of_memory_advice(what: str, key: str, batch_size: int) -> Iterator[None]:
    """Paddle reports an exhausted allocator as MemoryError; say which batch size to lower.
    Exit 2: retrying the same config on the same hardware would fail the same way."""
    try:
        yield
    except MemoryError as exc:
        smaller = max(1, batch_size // 2)
        advice = f"try --set {key}={smaller}, or stop another process holding the device's memory (nvidia-smi)"
        raise out_of_memory(exc, f"{what} at batch size {batch_size}", advice) from None


def save_artifacts(session: Session, run: Run, model: Any) -> list[str]:
    """The run's models under artifacts/<key>/, each carrying the task's labels; returns their names
    relative to the output."""
    output = session.output
    name = f"{ARTIFACTS_FOLDER}/{run.key}"
    session.labels.name_model(classifier_of(model).config, session.text_columns)
    try:
        with output.folder(name, whole=True) as folder:
            paths = run.strategy.save_artifacts(model, session.tokenizer, folder)
    except OSError as exc:
        raise_if_device_fault(exc)  # the weights are copied from the GPU as they are saved
        raise RetryableError(f"could not save artifacts to {output.where(name)}: {exc}") from None
    except SafetensorError as exc:  # safetensors' own error for a failed write (a full disk), not an OSError
        raise RetryableError(f"could not save artifacts to {output.where(name)}: {exc}") from None
    return [f"{name}/{path.relative_to(folder).as_posix()}" for path in paths]


def write_report(
    output: Output, report_file: str | None = None, config_hash: str | None = None, complete_only: bool = False,
    margin: float | None = None, price: dict[str, Any] | None = None,
) -> str | None:  # fmt: skip
    """Merge the saved run records (of `config_hash`, when given) into results.json, the plots and the
    report (named `report_file`, or as in the runs' config); returns where the report went. `margin` (a
    fraction) replaces the config's for the non-inferiority answers, `price` its price_per_hour and currency.

    A local folder merges under a lock: when array tasks finish together, the last writer has seen
    every result. With `complete_only` (object storage, no lock), nothing is written unless every
    planned run is present: writers that see the full set all write the same content, so their order
    does not matter, and a writer that saw fewer cannot overwrite a complete report with a partial one."""
    with output.merge_lock():
        combined = combine(load_results(output, config_hash), margin)
        combined = with_overlaps(output, combined, baseline().name)
        if price:  # `job report --price-per-hour`: the money of runs already made
            config = combined.run.config.model_copy(update=price)
            combined = combined.model_copy(update={"run": combined.run.model_copy(update={"config": config})})
        if complete_only and combined.missing_runs:
            done, planned = len(combined.runs), len(combined.runs) + len(combined.missing_runs)
            say(f"{done} of {planned} planned runs are in {output.where(RESULTS_FOLDER)}; "
                "the task that saves the last one writes the report")  # fmt: skip
            return None
        results = combined.model_dump_json(indent=2) + "\n"
        output.write_text(RESULTS_FILE, results)
        with output.file(LOSS_PLOT) as path:
            plot_losses(combined.headline, path, subject(combined.run.config))
        classes = len(combined.run.data.labels)
        with output.file(PARETO_PLOT) as path:
            plot_pareto(combined.headline, path, subject(combined.run.config), classes)
        if (spectra := first_spectra(output, combined)) is not None:
            kind, comparison, curves = spectra
            rank = next((r.lora_r for r in combined.runs if r.key in next(iter(comparison.selected.values()))), None)
            with output.file(SPECTRUM_PLOT) as path:
                plot_update_spectrum(curves, path, subject(combined.run.config), kind, comparison.subject,
                                     baseline().title, rank)  # fmt: skip
        if len({row.train_examples for row in combined.headline}) > 1:
            with output.file(LEARNING_PLOT) as path:
                plot_learning_curve(combined.headline, path, subject(combined.run.config), classes)
        report_name = report_file or combined.run.config.report_file
        report = render_report(combined)
        where = output.write_text(report_name, report)
    log_report(combined.run.config, output, {report_name: report, RESULTS_FILE: results})
    return where


def first_spectra(output: Output, combined: Combined) -> tuple[str, Comparison, dict[str, Any]] | None:
    """The first compared row with a subspace overlap, its first kind of weight, and the spectra curves of
    that kind (job.results.overlap.spectrum_curves); None when no run stored them."""
    for comparison in combined.comparisons:
        for kind in comparison.subspace_overlap:
            curves = spectrum_curves(output, combined, comparison, baseline().name, kind)
            if curves:
                return kind, comparison, curves
    return None


# ---------------------------------------------------------------- prefetch


def prefetch(config: JobConfig) -> list[str]:
    """Download (if needed) and load everything `config` needs: model weights, tokenizer, and the CLUE
    task unless data_dir is set. Returns one line per item for the log."""
    quiet_paddlenlp()
    check_model_name(config.model_name)
    fetch_model(config.model_name)
    lines = []
    tokenizer = load_tokenizer(config.model_name)
    lines.append(f"tokenizer: {config.model_name} ({len(tokenizer.vocab):,} tokens)")
    raw = read_source(config.data_spec())
    loaded = load_model(config.model_name, len(raw.labels))
    lines.append(f"model: {config.model_name} ({count_parameters(loaded.model)[1]:,} parameters, {loaded.source})")
    lines.append(f"data: {raw.origin}: train {len(raw.train):,} rows, dev {len(raw.dev):,} rows, "
                 f"{len(raw.labels)} labels")  # fmt: skip
    return lines
