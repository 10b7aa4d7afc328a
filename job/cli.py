"""Command line: `python -m job run|plan|replay|validate|prefetch|report|predict|bench|doctor|launch|config-reference`.
Options only; errors become exit codes: 0 success, 1 training failed (NaN loss), 2 bad input (config, data,
model, device, a GPU node or image that must change), 75 retryable (download, I/O, a passing GPU fault),
128+N killed by signal N (143 for SIGTERM, 130 for Ctrl-C)."""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from job.config.schema import (
    JobConfig,
    config_reference_markdown,
    describe_fields,
    load_config,
    parse_override,
    report_file_problem,
)
from job.data.cache import check_cache_home
from job.data.tasks import OWN
from job.errors import Interrupted, RetryableError, TrainingDiverged, UserError, redacted
from job.exit_codes import failure
from job.launch import record_rank_exit
from job.predict import check_model_folder, load_saved_model, predictions, read_inputs
from job.training.strategies import STRATEGY_NAMES

CONFIG_OPTION = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="JOB_CONFIG",
    show_envvar=True,
    help="YAML config file (see configs/). Without one, every key takes its default.",
)
SET_OPTION = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any config key, value read as YAML (repeatable): --set lora_r=8 --set 'strategies=[lora]'.",
)


# Array-task index variables of AWS Batch, Google Cloud Batch and Kubernetes Indexed Jobs.
INDEX_VARIABLES = ("AWS_BATCH_JOB_ARRAY_INDEX", "BATCH_TASK_INDEX", "JOB_COMPLETION_INDEX")


def run_for_task(runs: list[str], environ: dict[str, str]) -> str:
    """The run an array task trains: task index i trains the i-th run of `job plan`."""
    found = [(name, environ[name]) for name in INDEX_VARIABLES if environ.get(name, "") != ""]
    if not found:
        raise UserError(f"--run-from-index: none of {', '.join(INDEX_VARIABLES)} is set")
    name, raw = found[0]
    # ASCII digits only: str.isdigit() also accepts '²', which int() refuses; and no more digits than
    # the plan's size has (int() refuses 4,300 digits and more with a ValueError).
    digits = raw.isascii() and raw.isdigit() and len(raw.lstrip("0") or "0") <= len(str(len(runs)))
    if not digits or int(raw) >= len(runs):
        listing = ", ".join(runs[:4]) + (", ..." if len(runs) > 4 else "")
        shown = raw if len(raw) <= 40 else f"{raw[:20]}...({len(raw):,} characters)"
        raise UserError(
            f"--run-from-index: {name}={shown} is not a task index of the {len(runs)} planned runs ({listing}; "
            f"0 to {len(runs) - 1}); set the array size to {len(runs)} (`python -m job plan` lists them)"
        )
    return runs[int(raw)]


class Points(click.FloatRange):
    """A number of points in its range; not a number (nan, which every comparison with a bound lets through)
    is refused like any other value out of range."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if number != number:
            self.fail(f"{value!r} is not a number of points (0 to 100)", param, ctx)
        return number


def fail(exc: Exception, code: int) -> None:
    click.echo(redacted(f"error: {exc}"), err=True)
    record_rank_exit(code, redacted(str(exc)))  # under `job launch`: the command returns the most telling rank's code
    sys.exit(code)


def exit_codes(io_where: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Every command's failures as the exit codes of the module docstring (job.exit_codes.failure); an
    OSError that is no device fault is I/O on `io_where` (formatted with the command's options)."""

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(command)
        def guarded(*args: Any, **kwargs: Any) -> None:
            try:
                command(*args, **kwargs)
            except (Interrupted, UserError, RetryableError, TrainingDiverged, MemoryError, OSError,
                    RuntimeError) as exc:  # fmt: skip
                mapped = failure(exc, io_where.format(**kwargs))
                if mapped is None:
                    raise
                if isinstance(exc, Interrupted):
                    click.echo("stopping: finished runs' results are kept; rerun to complete", err=True)
                fail(*mapped)

        return guarded

    return decorate


def resolve_config(config_path: Path | None, overrides: tuple[str, ...], **options: Any) -> JobConfig:
    """YAML, then --set, then the dedicated options (which win)."""
    parsed = [(item, *parse_override(item)) for item in overrides]
    values = {key: value for _, key, value in parsed}
    strategies = options.pop("strategies", None)
    given = {key: value for key, value in options.items() if value not in (None, ())}
    values.update(given)
    origins = {key: f"--set {item}" for item, key, _ in parsed}
    origins.update({key: option_origin(key) for key in given})
    return load_config(config_path, values, strategies=strategies, origins=origins)


def option_origin(key: str) -> str:
    """Where an option's value came from, for a message: `--workers`, or `JOB_WORKERS` when click read it
    from its environment variable."""
    name = f"--{key.replace('_', '-')}"
    context = click.get_current_context(silent=True)
    if context is None or context.get_parameter_source(key) is not click.core.ParameterSource.ENVIRONMENT:
        return name
    option = next((param for param in context.command.params if param.name == key), None)
    return f"{option.envvar} (environment variable of {name})" if option is not None and option.envvar else name


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Fine-tune ERNIE 3.0 Medium on CLUE TNEWS (or another CLUE task, or your own labelled data) with
    LoRA and with full fine-tuning, and write a report comparing them (parameters, time, accuracy, loss)."""


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Override config key 'device'.")
@click.option("--output-dir", type=str, help="Override config key 'output_dir' (report and results go here).")
@click.option(
    "--strategy",
    "strategies",
    type=click.Choice(STRATEGY_NAMES),
    multiple=True,
    help="Run only this strategy (repeatable). Default: config key 'strategies'.",
)
@click.option(
    "--run-from-index", "--strategy-from-index", "run_from_index", is_flag=True,
    help=f"Array task: train run i of `job plan`, i from {', '.join(INDEX_VARIABLES)}.",
)  # fmt: skip
@click.option("--force", is_flag=True, help="Retrain strategies whose result for this config already exists.")
@click.option("--workers", type=str, default=None, envvar="JOB_WORKERS", show_envvar=True,
              help="Override config key 'workers': N processes train the pending runs side by side (one per GPU, "
                   "or a share of the cores each); auto: one per visible GPU.")  # fmt: skip
@click.option("--serve-runs", is_flag=True, hidden=True, help="Be a worker of `--workers`: train the keys on stdin.")
@exit_codes("the output folder")  # disk full, a vanished mount: worth a retry, never a traceback
def run(
    config_path: Path | None, overrides: tuple[str, ...], device: str | None, output_dir: str | None,
    strategies: tuple[str, ...], run_from_index: bool, force: bool, workers: str | None, serve_runs: bool,
) -> None:  # fmt: skip
    """Train every planned run (`job plan`), then write the report and results.json to output_dir.

    A run whose result for the same config is already in output_dir is skipped, so rerunning an
    interrupted command resumes it. Each finished run's result is saved at once; the report merges
    all results of this config found in output_dir."""
    from job.runtime.signals import StopRequest, import_paddle

    stop = StopRequest()
    stop.install()
    check_cache_home()
    if serve_runs:  # a worker of `--workers`: the command's config, as the command resolved it
        from job.workers import serve, worker_config

        config = worker_config()
        import_paddle(stop)
        serve(config, stop)
        return
    number = workers is not None and re.fullmatch(r"\s*-?[0-9]{1,18}\s*", workers)  # longer: the schema says why
    chosen_workers = int(workers) if number else workers  # "auto", or refused with the schema's message
    config = resolve_config(
        config_path, overrides, device=device, output_dir=output_dir, strategies=list(strategies) or None,
        workers=chosen_workers,
    )  # fmt: skip
    import_paddle(stop)
    from job.config.plan import plan_runs
    from job.pipeline import run_job
    from job.results.power import margin_warning

    warning = margin_warning(config)
    if warning:
        click.echo(warning, err=True)
    keys = None
    if run_from_index:
        keys = [run_for_task([run.key for run in plan_runs(config)], os.environ)]
    count = 1
    launched = int(os.environ.get("PADDLE_TRAINERS_NUM", "1") or 1) > 1  # a rank of `job launch`: auto is 1
    if keys is None and config.workers != 1 and not (launched and config.workers == "auto"):
        from job.workers import worker_count

        count = worker_count(config.workers, config.device)
    if count > 1:
        from job.workers import RunsFailed, run_parallel

        command = [sys.executable, "-m", "job", "run", "--workers", "1", "--serve-runs"]  # the config: in its env
        try:
            report = run_parallel(config=config, stop=stop, force=force, count=count, command=command)
        except RunsFailed as exc:
            fail(exc, exc.exit_code)
    else:
        report = run_job(config, stop, force=force, keys=keys)
    if report is None:  # a data-parallel rank other than 0, or runs still missing on object storage
        return
    click.echo(f"report: {report}")


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--strategy", "strategies", type=click.Choice(STRATEGY_NAMES), multiple=True,
              help="Only this strategy's runs (repeatable), as `job run --strategy`.")  # fmt: skip
@exit_codes("the config")
def plan(config_path: Path | None, overrides: tuple[str, ...], strategies: tuple[str, ...]) -> None:
    """Print the planned runs, one line each (array index, key, settings), the work and, from earlier runs'
    speed, the time they take, what the planned comparison can detect, then, last, the array size a batch
    queue needs. Writes nothing; reads only records already in output_dir."""
    config = resolve_config(config_path, overrides, strategies=list(strategies) or None)
    from job.config.plan import format_plan, plan_runs, plan_work
    from job.results.estimate import plan_time
    from job.results.power import plan_comparison

    runs = plan_runs(config)
    notes = plan_work(runs, config.max_eval_samples) + "\n" + plan_time(config, runs) + "\n" + plan_comparison(config)
    click.echo(format_plan(runs, notes=notes))


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--run", "key", default=None, help="The planned run's key (`job plan` lists them); needed when "
              "the plan has more than one.")  # fmt: skip
@click.option("--output", "folder", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for replay.json and initial.safetensors (created).")  # fmt: skip
@exit_codes("{folder}")
def replay(config_path: Path | None, overrides: tuple[str, ...], key: str | None, folder: Path) -> None:
    """Train one planned run as `job run` would, with every dropout off, and export it for another
    framework to replay step by step: the prepared model's initial weights, the padded batches in training
    order, the resolved settings, and the job's per-step losses and learning rates and final dev
    predictions (peer/replay.py replays it with transformers + PEFT + torch; `make parity`)."""
    from job.runtime.signals import StopRequest

    stop = StopRequest()
    stop.install()
    check_cache_home()
    config = resolve_config(config_path, overrides)
    from job.replay import export_replay

    click.echo(f"replay: {export_replay(config, key, folder, stop)}")


@main.command()
@CONFIG_OPTION
@SET_OPTION
@exit_codes("the config")
def validate(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Check the config and print it resolved (JSON), without loading or writing anything. With your own
    data (dataset: own), each file's header or first record is read too: a missing column or an unreadable
    file stops here, not after the imports of `job run`."""
    config = resolve_config(config_path, overrides)
    from job.training.model import check_model_folder

    click.echo(f"model: {check_model_folder(config.model_name)}", err=True)  # as `run` checks it, before the imports
    if config.data_dir and config.dataset == OWN:
        from job.data.sources import peek_own_folder

        for line in peek_own_folder(Path(config.data_dir), config.data_spec()):
            click.echo(f"data: {line}", err=True)
    click.echo(json.dumps(config.model_dump(), indent=2, ensure_ascii=False))
    click.echo(f"config hash: {config.config_hash()}", err=True)


@main.command()
@CONFIG_OPTION
@SET_OPTION
@exit_codes("the PaddleNLP cache ($PPNLP_HOME)")  # a full or read-only cache
def prefetch(config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Download and check everything the config needs (model weights, tokenizer, the CLUE task) into the
    PaddleNLP cache ($PPNLP_HOME), then exit. Run it once before an array job that shares the cache.
    PPNLP_ENDPOINT points every download at a mirror."""
    config = resolve_config(config_path, overrides)
    check_cache_home()
    from job.pipeline import prefetch as fetch_all

    for line in fetch_all(config):
        click.echo(redacted(line))


@main.command(name="import-hf")
@click.option("--from", "source", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A Hugging Face-format ERNIE folder (transformers' ErnieModel layout).")  # fmt: skip
@click.option("--to", "target", required=True, type=click.Path(path_type=Path),
              help="The PaddleNLP model folder to write (must not exist); then set `model_name` to it.")  # fmt: skip
@exit_codes("{target}")
def import_hf(source: Path, target: Path) -> None:
    """Convert a Hugging Face-format ERNIE checkpoint (such as nghuyong/ernie-3.0-medium-zh, downloaded with
    its tokenizer) into a PaddleNLP model folder the job trains: set `model_name` to it. Needs no network."""
    from job.training.model import import_hf_folder, quiet_paddlenlp

    quiet_paddlenlp()
    folder = import_hf_folder(source, target)
    click.echo(f"model folder: {folder}; set model_name: {folder}")


@main.command(name="export-model")
@CONFIG_OPTION
@SET_OPTION
@click.option("--to", "target", required=True, type=click.Path(path_type=Path),
              help="The model folder to write (must not exist); then set `model_name` to it.")  # fmt: skip
@exit_codes("{target}")
def export_model(config_path: Path | None, overrides: tuple[str, ...], target: Path) -> None:
    """Write the config's model, from the PaddleNLP cache `job prefetch` filled, as a model folder of its own:
    carry it into an air-gapped cluster and set `model_name` to it. Needs no network."""
    config = resolve_config(config_path, overrides)
    check_cache_home()
    from job.training.model import export_model_folder, quiet_paddlenlp

    quiet_paddlenlp()
    folder = export_model_folder(config.model_name, target)
    click.echo(f"model folder: {folder}; set model_name: {folder}")


@main.command()
@click.option(
    "--output-dir", required=True,
    help="Folder (or s3:// / gs:// prefix) of a previous run (holds results/<run>.json).",
)  # fmt: skip
@click.option("--report-file", default=None, help="Report file name (default: the one the run used).")
@click.option("--margin", type=Points(min=0, max=100), default=None,
              help="Non-inferiority margin in accuracy points (default: the runs' config `margin`).")  # fmt: skip
@click.option("--price-per-hour", type=click.FloatRange(min=0, min_open=True, max=1e6), default=None,
              help="The device's hourly price: the cost table gives training time as money (default: the runs' "
                   "config `price_per_hour`).")  # fmt: skip
@click.option("--currency", default=None, help="The currency of --price-per-hour (default: the runs' config's).")
@exit_codes("{output_dir}")
def report(output_dir: str, report_file: str | None, margin: float | None, price_per_hour: float | None,
           currency: str | None) -> None:  # fmt: skip
    """Rebuild the report, results.json and the plots from the run results saved in output_dir, also
    when some planned runs are missing (they are listed in the report)."""
    from job.output.storage import open_output, output_dir_problem
    from job.pipeline import write_report

    problem = report_file_problem(report_file) if report_file is not None else None
    if problem:
        raise UserError(f"--report-file {report_file!r}: {problem.replace('output_dir', '--output-dir')}")
    if output_dir_problem(output_dir):
        raise UserError(f"--output-dir {output_dir!r}: {output_dir_problem(output_dir)}")
    output = open_output(output_dir)
    if not output.exists():  # never create it: a typo must not leave a folder behind
        raise UserError(f"--output-dir {output_dir} is not a folder of a previous run")
    price = {key: value for key, value in (("price_per_hour", price_per_hour), ("currency", currency)) if value}
    if price:
        from job.config.schema import validate_config

        validate_config(price, source="--price-per-hour / --currency", subset=True)  # the config's own checks
    path = write_report(output, report_file, margin=None if margin is None else margin / 100, price=price)
    click.echo(f"report: {path}")


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("bench.json"),
              show_default=True, help="Where to write the numbers as JSON.")  # fmt: skip
@click.option("--steps", type=click.IntRange(min=20), default=20, show_default=True, help="Timed steps per strategy.")
@click.option("--warmup", type=click.IntRange(min=1), default=3, show_default=True, help="Untimed steps first.")
@click.option("--e2e/--no-e2e", default=True, show_default=True,
              help="Also time `job run` of the whole config end to end (a few minutes).")  # fmt: skip
@click.option("--peer-batches", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Only write the batches the bench times at window 0, with the model's shape and each row's "
                   "settings, for the torch + PEFT peer (peer/torch_peft.py; make bench-peer), and stop.")  # fmt: skip
@click.option("--workers-ab", is_flag=True,
              help="Only time `job run` of a grid of 6 small runs with 2 workers against one process, interleaved, "
                   "and write the ratio (make bench-workers).")  # fmt: skip
@exit_codes("{output}")
def bench(
    config_path: Path | None, overrides: tuple[str, ...], output: Path, steps: int, warmup: int, e2e: bool,
    peer_batches: Path | None, workers_ab: bool,
) -> None:  # fmt: skip
    """Measure training and evaluation speed of each strategy on the full-size model, as a table and JSON."""
    config = resolve_config(config_path, overrides)
    check_cache_home()
    from job.bench import export_peer_batches, format_table, run_bench
    from job.bench import workers_ab as time_workers
    from job.output.storage import write_atomic

    if workers_ab:
        numbers = time_workers(config, config_path)
        write_atomic(output, json.dumps(numbers, indent=2) + "\n")
        click.echo(f"{numbers['workers']} workers of {numbers['threads'] // numbers['workers']} thread(s) against one "
                   f"process of {numbers['threads']}: {numbers['workers_seconds']} s against "
                   f"{numbers['one_process_seconds']} s, speedup {numbers['speedup']}x\nwritten: {output}")  # fmt: skip
        return

    if peer_batches is not None:
        write_atomic(peer_batches, json.dumps(export_peer_batches(config, steps=steps, warmup=warmup)) + "\n")
        click.echo(f"written: {peer_batches}")
        return

    report = run_bench(config, config_path, steps, warmup, e2e)
    write_atomic(output, json.dumps(report.to_json(), indent=2, ensure_ascii=False) + "\n")
    click.echo(format_table(report))
    click.echo(f"\nwritten: {output}")


@main.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="A saved model folder: artifacts/<run>/model, .../merged or .../adapter.")  # fmt: skip
@click.argument("titles", nargs=-1)
@click.option("--input", "input_file", type=click.Path(path_type=Path), default=None,
              help="A file of texts: one per line, or JSON lines with the model's text keys ('sentence' for "
                   "TNEWS; both texts of a sentence-pair model).")  # fmt: skip
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Titles per forward pass. Default: 16 on CPU, 128 on a GPU (as eval_batch_size: auto).")  # fmt: skip
@click.option("--max-seq-length", type=click.IntRange(min=8), default=128, show_default=True)
@exit_codes("{model_dir}")
def predict(
    model_dir: Path, titles: tuple[str, ...], input_file: Path | None, device: str, batch_size: int | None,
    max_seq_length: int,
) -> None:  # fmt: skip
    """Classify texts with a saved model; prints one JSON line per text: its text keys, the label as
    the training data spells it, its description where the task has one, and the probability. TNEWS:
    {"sentence", "label", "label_desc", "probability"}."""
    if not titles and input_file is None:
        raise UserError("no titles: give them as arguments or with --input FILE")
    check_model_folder(model_dir)  # before Paddle's import: a typo costs no seconds
    check_cache_home()
    from job.runtime.device import resolve_eval_batch_size, select_device
    from job.training.model import quiet_paddlenlp

    quiet_paddlenlp()
    chosen = select_device(device)
    batch_size = resolve_eval_batch_size(batch_size or "auto", chosen)
    click.echo(f"device: {chosen.description} ({chosen.reason}); batch size {batch_size}", err=True)
    saved = load_saved_model(model_dir)
    if titles and saved.is_pair:
        raise UserError(f"{model_dir} classifies sentence pairs: give them as JSON lines with "
                        f"'{saved.text_columns[0]}' and '{saved.text_columns[1]}' in --input FILE")  # fmt: skip
    texts = [(title,) for title in titles] + (read_inputs(input_file, saved.text_columns) if input_file else [])
    for line in predictions(saved, texts, batch_size, max_seq_length):
        click.echo(json.dumps(line, ensure_ascii=False))


@main.command()
@CONFIG_OPTION
@SET_OPTION
@click.option("--device", type=click.Choice(["auto", "cpu", "gpu"]), help="Override config key 'device'.")
@click.option("--output-dir", type=str, help="Override config key 'output_dir'.")
@exit_codes("{output_dir}")
def doctor(config_path: Path | None, overrides: tuple[str, ...], device: str | None, output_dir: str | None) -> None:
    """Check this node and image: the Paddle build, driver, devices and compute capability, one tiny
    training step of each strategy in each precision the device supports, an all-reduce across several
    GPUs, output_dir and the model cache writable; on CPU the threads, MKL and matmul peak. One line per
    check, PASS or FAIL with the fix; exit 0 when all pass, 2 otherwise."""
    config = resolve_config(config_path, overrides, device=device, output_dir=output_dir)
    from job.doctor import isolated_cache, run_checks
    from job.training.model import quiet_paddlenlp

    failed = 0
    with isolated_cache() as cache_check:  # importing PaddleNLP must not create or need the cache checked
        quiet_paddlenlp()
        for check in run_checks(config, cache_check):
            click.echo(redacted(check.line()))
            failed += not check.passed
    click.echo(f"{'all checks passed' if not failed else f'{failed} check(s) failed'}")
    if failed:
        sys.exit(UserError.exit_code)


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("launcher_args", nargs=-1, type=click.UNPROCESSED)
@exit_codes("the launch log folder")
def launch(launcher_args: tuple[str, ...]) -> None:
    """Data-parallel training: paddle.distributed.launch's options, then the job's command (e.g. `--gpus
    0,1 run --config C`); each rank runs `python -m job run ...`. The ranks' logs go to
    <output_dir>/launch-logs unless --log_dir is given. Exit: the most telling rank's code (2, then 75,
    then any other); 143 when stopped by SIGTERM (130 for Ctrl-C), as `job run` does."""
    from job.launch import default_log_dir, parse_launch
    from job.launch import launch as run_launcher
    from job.runtime.cpu import CHOSEN

    plan = parse_launch(list(launcher_args))
    output_dir = None
    if plan.job_args is not None and not plan.log_dir_given:
        command = main.get_command(click.get_current_context(), plan.job_args[0])
        assert command is not None  # parse_launch takes only the job's own commands
        params = command.make_context(plan.job_args[0], plan.job_args[1:]).params
        output_dir = resolve_config(params["config_path"], params["overrides"],
                                    output_dir=params.get("output_dir")).output_dir  # fmt: skip
    sys.exit(run_launcher(plan, None if plan.log_dir_given else default_log_dir(output_dir), set(CHOSEN)))


@main.command()
@click.option("--output-dir", default="reports/demo", show_default=True, help="Where the demo's report goes.")
@exit_codes("{output_dir}")
def demo(output_dir: str) -> None:
    """A complete report in under a minute with no network: a tiny ERNIE pretrained here for a few seconds
    on synthetic TNEWS-format titles (so LoRA has features to adapt), trained with LoRA and full
    fine-tuning over 5 seeds by the job's own code. The report says it is a demo; its numbers say nothing
    about ERNIE 3.0 Medium (make run-local does)."""
    from job.runtime.signals import StopRequest

    stop = StopRequest()
    stop.install()
    check_cache_home()
    from job.config.schema import validate_config
    from job.demo import build_inputs, check_demo_folder, demo_config
    from job.output.storage import open_output
    from job.pipeline import check_output_dir, run_job

    config = validate_config(demo_config(output_dir), source="the demo")
    check_demo_folder(output_dir)
    check_output_dir(open_output(config.output_dir))  # before the inputs are built in it: exit 2, not 75
    build_inputs(output_dir)
    report = run_job(config, stop)
    click.echo(f"report: {report}")


@main.command(name="config-reference")
@click.option("--markdown", is_flag=True, help="As the Markdown page docs/configuration.md (make docs writes it).")
def config_reference(markdown: bool) -> None:
    """Print every config key with its default and meaning."""
    if markdown:
        click.echo(config_reference_markdown(), nl=False)
        return
    for key, description, default in describe_fields():
        click.echo(f"{key:30} {json.dumps(default, ensure_ascii=False):32} {description}")
