"""Training-loss curves as a PNG next to the report (matplotlib, no display needed)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

LOSS_PLOT = "loss_curves.png"


def smoothed(values: list[float], window: int) -> list[float]:
    """Trailing moving average: per-step losses of small batches are noisy."""
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


def plot_losses(results: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    for result in results:
        losses = result["step_losses"]
        steps = range(1, len(losses) + 1)
        window = max(1, len(losses) // 20)
        (line,) = axes.plot(steps, losses, alpha=0.25, linewidth=0.8)
        axes.plot(steps, smoothed(losses, window), color=line.get_color(), linewidth=2,
                  label=f"{result['label']} (moving average of {window})")  # fmt: skip
    axes.set_xlabel("training step")
    axes.set_ylabel("training loss (cross-entropy)")
    axes.set_title("ERNIE 3.0 Medium on TNEWS: training loss per step")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        figure.savefig(temporary, format="png")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        Path(temporary).unlink(missing_ok=True)
    return path
