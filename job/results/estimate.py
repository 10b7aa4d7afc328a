"""`job plan`'s estimate of the plan's training time, from the speed earlier runs measured: the records in
the config's output_dir (a rerun's, or another config's on the same model) give each strategy's samples
per second on the device they ran on. Without such records the time is not guessed: the line says how to
learn it."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path

from job.config.plan import Run
from job.config.schema import JobConfig
from job.errors import UserError
from job.output.log import duration
from job.output.storage import open_output, url_scheme
from job.results.records import read_records
from job.results.tables import money


def plan_time(config: JobConfig, runs: Sequence[Run]) -> str:
    """One line: the plan's training time from earlier runs' speed per strategy, each run's steps times
    its batch over that speed, in all and (on a GPU) in GPU-hours; or why there is no estimate."""
    speeds, device = measured_speeds(config)
    missing = sorted({run.strategy.name for run in runs} - set(speeds))
    if not speeds or missing or any(run.train_rows is None and not run.settings.max_steps for run in runs):
        return (
            "time: no estimate (no earlier run of "
            + (", ".join(missing) if missing and speeds else "these strategies")
            + f" on {config.model_name} in {config.output_dir}); each finished run prints the time left "
            "([run k/N done]), and `make bench` measures each strategy's speed"
        )
    seconds = {}
    for run in runs:
        steps = run.settings.max_steps or math.ceil(run.train_rows / run.settings.batch_size) * run.settings.num_epochs  # type: ignore[operator]
        seconds.setdefault(run.strategy.name, []).append(steps * run.settings.batch_size / speeds[run.strategy.name])
    total = sum(sum(values) for values in seconds.values())
    each = ", ".join(f"{duration(statistics.fmean(values))} a {name} run" for name, values in seconds.items())
    gpu = f" ({total / 3600:.2f} GPU-hours)" if device.startswith("gpu") else ""
    if config.price_per_hour is not None:
        price = config.price_per_hour
        gpu += f", about {money(total / 3600 * price, config.currency)} at {money(price, config.currency)} an hour"
    return (
        f"time: about {each}: {duration(total)} of training for the plan{gpu}, one run at a time, from the speed "
        f"of earlier runs on {device} in {config.output_dir} (loading and evaluation come on top)"
    )


def measured_speeds(config: JobConfig) -> tuple[dict[str, float], str]:
    """Each strategy's median samples/s over the records of this model in the config's local output_dir,
    and the device they ran on ({}: none, or an object-store output_dir, which the plan does not read)."""
    if url_scheme(config.output_dir) is not None or not Path(config.output_dir).is_dir():
        return {}, ""
    try:
        records = read_records(open_output(config.output_dir))
    except UserError:
        return {}, ""
    same = [r for r in records.values() if r.run.config.model_name == config.model_name and r.result.samples_per_second]
    if not same:
        return {}, ""
    device = statistics.mode(r.run.device.name for r in same)
    by_strategy: dict[str, list[float]] = {}
    for record in same:
        if record.run.device.name == device:
            by_strategy.setdefault(record.result.strategy, []).append(record.result.samples_per_second)
    return {name: statistics.median(values) for name, values in by_strategy.items()}, device
