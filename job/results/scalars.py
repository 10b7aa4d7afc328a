"""Training scalars for PaddlePaddle's VisualDL (`visualdl: true`): loss and learning rate per step,
dev accuracy and loss at the end, under output_dir/vdl/<run key>."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from job.config.schema import JobConfig
from job.output.layout import VISUALDL_FOLDER
from job.output.storage import Output
from job.runtime.ranks import Ranks


class ScalarLog:
    """Training scalars for VisualDL (`visualdl: true`); without it every call does nothing."""

    def __init__(self, writer: Any = None) -> None:
        self.writer = writer

    def step(self, step: int, loss: float, learning_rate: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag="train/loss", step=step, value=loss)
            self.writer.add_scalar(tag="train/learning_rate", step=step, value=learning_rate)

    def evaluated(self, step: int, accuracy: float, loss: float) -> None:
        if self.writer is not None:
            self.writer.add_scalar(tag="dev/accuracy", step=step, value=accuracy)
            self.writer.add_scalar(tag="dev/loss", step=step, value=loss)


@contextlib.contextmanager
def scalar_log(config: JobConfig, output: Output, key: str, ranks: Ranks) -> Iterator[ScalarLog]:
    """VisualDL's LogWriter on output_dir/vdl/<run key> (rank 0 only), closed when the run ends."""
    if not (config.visualdl and ranks.is_main):
        yield ScalarLog()
        return
    from visualdl import LogWriter

    with output.folder(f"{VISUALDL_FOLDER}/{key}") as folder:  # on object storage: uploaded when the run ends
        writer = LogWriter(logdir=str(folder))
        try:
            yield ScalarLog(writer)
        finally:
            writer.close()
