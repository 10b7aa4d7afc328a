"""The job's log lines on stderr. On a terminal they are as written; in a batch log (no terminal) each
starts with the time since the process started (`+0:12:31`), so a log read later says when each step
happened. While a run of the plan trains, its lines carry its place in the plan (`[run 3/12]`)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from job.errors import redacted

STARTED = time.monotonic()
_position = ""  # "[run 3/12] " while a run trains


def set_position(text: str) -> None:
    global _position
    _position = text


def line(text: str) -> str:
    stamp = "" if sys.stderr.isatty() else f"+{clock(time.monotonic() - STARTED)} "
    return redacted(f"{stamp}{_position}{text}")


def say(text: str) -> None:
    print(line(text), file=sys.stderr, flush=True)


def clock(seconds: float) -> str:
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 120:
        return f"{seconds} s"
    minutes = seconds // 60
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


def run_done(*, key: str, code: int, seconds: float, done: int, total: int, timed: Sequence[tuple[str, float]],
             remaining: Sequence[str] = (), parallel: int, elapsed: float, where: str = "") -> str:  # fmt: skip
    """The line for a finished run of the plan, with an ETA once one run has finished: for each run left
    (`remaining`: their strategies) the mean time of the finished runs of its strategy (of all finished runs
    while its strategy has none), summed, over the processes training them. `timed`: (strategy, seconds)
    of the runs finished so far. A full fine-tuning run can take twice a LoRA run: one mean misled."""
    what = "done" if code == 0 else f"FAILED (exit {code})"
    text = f"[run {done}/{total} {what}] {key}{' on ' + where if where else ''} in {seconds:.1f} s"
    left = total - done
    if left and timed:
        overall = sum(value for _, value in timed) / len(timed)
        by_kind: dict[str, list[float]] = {}
        for kind, value in timed:
            by_kind.setdefault(kind, []).append(value)
        means = {kind: sum(values) / len(values) for kind, values in by_kind.items()}
        work = sum(means.get(kind, overall) for kind in remaining) if len(remaining) == left else left * overall
        eta = work / min(parallel, left)
        return text + f"; {left} left, about {duration(eta)} to go ({duration(elapsed)} so far)"
    if not left:
        return text + f"; all {total} finished in {duration(elapsed)}"
    return text
