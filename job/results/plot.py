"""The report's figures as PNGs next to it (matplotlib, no display needed): training-loss curves and
the accuracy/cost trade-off (Pareto) of the headline rows."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from job.results.schema import HeadlineRow


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average: per-step losses of small batches are noisy."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


@contextlib.contextmanager
def figure_to(path: Path, **options: Any) -> Iterator[tuple[Any, Any]]:
    """A matplotlib figure saved to `path` as PNG when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(**options)
    try:
        yield figure, axes
        figure.tight_layout()
        figure.savefig(path, format="png")
    finally:
        plt.close(figure)


def _seeds_note(row: HeadlineRow) -> str:
    return f", mean of {len(row.seeds)} seeds" if len(row.seeds) > 1 else ""


def plot_losses(rows: Sequence[HeadlineRow], path: Path, subject: str) -> Path:
    """Each headline row's per-step training loss (the mean over its seeds), raw and smoothed; beside it,
    when dev was scored during training (eval_steps), each row's dev accuracy at every evaluation."""
    curves = any(len(row.dev_curve) > 1 for row in rows)
    shape = {"nrows": 1, "ncols": 2 if curves else 1, "figsize": (14 if curves else 8, 4.5), "dpi": 110}
    with figure_to(path, **shape) as (_, panels):
        axes = panels[0] if curves else panels
        for row in rows:
            losses = row.step_losses
            steps = range(1, len(losses) + 1)
            window = max(1, len(losses) // 20)
            (line,) = axes.plot(steps, losses, alpha=0.25, linewidth=0.8)
            axes.plot(steps, smoothed(losses, window), color=line.get_color(), linewidth=2,
                      label=f"{row.label} (moving average of {window}{_seeds_note(row)})")  # fmt: skip
            if curves:
                panels[1].plot([p.step for p in row.dev_curve], [100 * p.accuracy for p in row.dev_curve],
                               marker="o", color=line.get_color(), label=f"{row.label}{_seeds_note(row)}")  # fmt: skip
        axes.set_xlabel("training step")
        axes.set_ylabel("training loss (cross-entropy)")
        axes.set_title(f"{subject}: training loss per step")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
        if curves:
            panels[1].set_xlabel("training step")
            panels[1].set_ylabel("dev accuracy (%)")
            panels[1].set_title("dev accuracy at each evaluation")
            panels[1].grid(alpha=0.3)
            panels[1].legend(fontsize="small")
    return path


def plot_pareto(rows: Sequence[HeadlineRow], path: Path, subject: str, classes: int) -> Path:
    """Test accuracy (mean, error bars: std over seeds) against trainable parameters (log scale) and
    against training time: one point per headline row, with the chance line (1 / classes) so a gap of
    two points on an axis that starts near chance reads as what it is."""
    with figure_to(path, nrows=1, ncols=2, figsize=(11, 4.5), dpi=110) as (figure, (by_params, by_time)):
        for row in rows:
            accuracy, spread = 100 * row.test_accuracy.mean, 100 * row.test_accuracy.std
            for axes, x in ((by_params, row.trainable_params), (by_time, row.training_seconds.mean)):
                xerr = row.training_seconds.std if axes is by_time else None
                axes.errorbar(x, accuracy, yerr=spread, xerr=xerr, fmt="o", capsize=4, label=row.label)
                axes.annotate(row.label.split(" (")[0], (x, accuracy), textcoords="offset points", xytext=(6, 6),
                              fontsize="small")  # fmt: skip
        by_params.set_xscale("log")
        by_params.set_xlabel("trainable parameters (log scale)")
        by_time.set_xlabel("training time (s)")
        for axes in (by_params, by_time):
            chance_line(axes, classes)
            axes.margins(x=0.2, y=0.15)  # room for the point labels
            axes.set_ylabel("test accuracy (%)")
            axes.grid(alpha=0.3, which="both")
        by_params.legend(fontsize="small", loc="best")
        seeds = max(len(row.seeds) for row in rows)
        spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed: no spread shown, n = 1"
        figure.suptitle(f"{subject}: test accuracy against cost ({spread})", fontsize="medium")
    return path


def chance_line(axes: Any, classes: int) -> None:
    """A dashed line at chance, 100 / classes %, inside the axis's range."""
    chance = 100 / classes
    axes.axhline(chance, color="grey", linestyle="--", linewidth=1, label=f"chance ({chance:.1f}%)")


def plot_learning_curve(rows: Sequence[HeadlineRow], path: Path, subject: str, classes: int) -> Path:
    """Test accuracy (mean, error bars: std over seeds) against the training rows, one line per strategy
    and shape (its rows at each size, each at the rate chosen on dev there)."""
    import re

    lines: dict[str, list[HeadlineRow]] = {}
    for row in rows:  # one line per group without its size suffix (_n2000, _nall): the rate may differ by size
        lines.setdefault(re.sub(r"_n(?:\d+|all)$", "", row.group), []).append(row)
    with figure_to(path, figsize=(8, 4.5), dpi=110) as (_, axes):
        for label, members in lines.items():
            members = sorted(members, key=lambda row: row.train_examples)
            axes.errorbar([row.train_examples for row in members], [100 * row.test_accuracy.mean for row in members],
                          yerr=[100 * row.test_accuracy.std for row in members], fmt="o-", capsize=4,
                          label=label + _seeds_note(members[0]))  # fmt: skip
        chance_line(axes, classes)
        axes.set_xscale("log")
        axes.set_xlabel("training rows (log scale)")
        axes.set_ylabel("test accuracy (%)")
        axes.set_title(f"{subject}: test accuracy against training rows")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize="small")
    return path


def plot_update_spectrum(curves: dict[str, Any], path: Path, subject: str, kind: str, row: str, full: str,
                         rank: int | None) -> Path:  # fmt: skip
    """The share of each learned update's energy held by its top k directions, k on a log scale: full
    fine-tuning's, the compared row's (LoRA's reaches 1 at its rank) and a random matrix's of the same
    shape (what an update with no structure would need)."""
    with figure_to(path, figsize=(7, 4.5), dpi=110) as (figure, axes):
        steps = range(1, len(curves["full"]) + 1)
        axes.plot(steps, 100 * curves["full"], label=f"{full} (median over layers and seeds)")
        axes.plot(steps, 100 * curves["row"], label=f"{row} (median over layers and seeds)")
        axes.plot(steps, 100 * curves["random"], linestyle=":", color="grey", label="a random matrix of the shape")
        axes.axhline(90, color="grey", linestyle="--", linewidth=1, label="90% (the effective rank)")
        if rank:
            axes.axvline(rank, color="grey", linestyle="-.", linewidth=1, label=f"LoRA's rank r = {rank}")
        axes.set_xscale("log")
        axes.set_xlabel("top k singular directions (log scale)")
        axes.set_ylabel("share of the update's energy (%)")
        axes.grid(alpha=0.3, which="both")
        axes.legend(fontsize="small", loc="lower right")
        figure.suptitle(f"{subject}: what the {kind} weights' updates are made of", fontsize="medium")
    return path
