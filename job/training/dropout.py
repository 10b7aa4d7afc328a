"""A seeded dropout for CPU training that draws its random numbers in bulk.

Paddle's CPU dropout kernel draws one random number at a time (measured here: 11 ns an element);
NumPy's SFC64 generator fills a mask of 16-bit draws at under 1 ns an element, and the whole dropout
(draws, mask, shared with Paddle without a copy, multiply) takes about 3. While
`bulk_dropout(seed)` is active, every `paddle.nn.functional.dropout` call in training mode (nn.Dropout
in the embeddings, the encoder layers and the classifier, the attention-weight dropout, LoRA's
dropout) draws its mask from one NumPy generator seeded with `seed`: the same seed gives the same
masks, run after run. The drop probability is quantised to 1/65536 (p = 0.1 drops with probability
6554/65536 = 0.1000061) and the kept values are scaled by 65536/kept_levels, so the expectation is
exactly preserved."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

LEVELS = 1 << 16  # one uint16 per element
NAME = "numpy-sfc64-bulk"  # what results record for this dropout
PADDLE = "paddle"


class BulkDropout:
    def __init__(self, seed: int, fallback: Any) -> None:
        self.generator = np.random.Generator(np.random.SFC64(seed))  # NumPy's fastest bit generator
        self.fallback = fallback

    def __call__(self, x: Any, p: float = 0.5, axis: Any = None, training: bool = True, inplace: bool = False,
                 mode: str = "upscale_in_train", name: str | None = None) -> Any:  # fmt: skip
        """paddle.nn.functional.dropout's signature; what this class does not cover goes to Paddle's."""
        if isinstance(p, float | int) and p == 0:  # as Paddle's: the input itself
            return x
        import paddle

        covered = training and not inplace and axis is None and mode == "upscale_in_train" and x.dtype == paddle.float32
        if not (covered and isinstance(p, float | int) and 0 < p < 1):
            return self.fallback(x, p=p, axis=axis, training=training, inplace=inplace, mode=mode, name=name)

        # from_dlpack shares the mask's memory (to_tensor would copy it: about 1.7 ns an element here).
        return x * paddle.from_dlpack(self.mask(tuple(x.shape), float(p)))

    def mask(self, shape: tuple[int, ...], p: float) -> np.ndarray:
        """0 where dropped, LEVELS/kept elsewhere, for one tensor of `shape`."""
        dropped_levels = round(p * LEVELS)
        draws = self.generator.integers(0, LEVELS, size=shape, dtype=np.uint16)  # raw 16-bit draws
        scale = np.float32(LEVELS / (LEVELS - dropped_levels))
        return np.multiply(draws >= dropped_levels, scale, dtype=np.float32)


@contextlib.contextmanager
def training_dropout(seed: int, in_graph: bool = False) -> Iterator[str]:
    """The dropout training uses, by name: BulkDropout on CPU; Paddle's own on a GPU (a parallel kernel
    on the device, where a mask drawn on the host would only add a copy) and in a static graph
    (`in_graph`: a mask drawn on the host would break the graph at every dropout)."""
    import paddle

    if in_graph or paddle.get_device() != "cpu":
        yield PADDLE
        return
    with bulk_dropout(seed):
        yield NAME


def active_bulk_dropout() -> BulkDropout | None:
    """The BulkDropout in use (inside `bulk_dropout`), or None: Paddle's own dropout is."""
    import paddle.nn.functional as functional

    return functional.dropout if isinstance(functional.dropout, BulkDropout) else None


@contextlib.contextmanager
def bulk_dropout(seed: int) -> Iterator[BulkDropout]:
    """Route paddle.nn.functional.dropout through a BulkDropout seeded with `seed` inside the block
    (the layers look it up at call time), and restore Paddle's own afterwards."""
    import paddle.nn.functional as functional

    original = functional.dropout
    replacement = BulkDropout(seed, original)
    functional.dropout = replacement
    try:
        yield replacement
    finally:
        functional.dropout = original
