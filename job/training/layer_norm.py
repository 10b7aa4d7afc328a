"""Exact LayerNorm gradients on CPU when a LayerNorm's scale is frozen.

Paddle 3.3.1's CPU layer_norm_grad kernel (paddle/phi/kernels/cpu/layer_norm_grad_kernel.cc) multiplies
the output's gradient by the scale only `if (d_scale)`, that is when the scale itself needs a gradient.
With the scale frozen, which is every strategy that trains some weights below a LayerNorm but not its
scale (LoRA and its options, VeRA, LoKr, BitFit), the input's gradient is computed as if the scale were 1.
Measured: 27% off against the formula on a random LayerNorm, 5 to 14% off in every layer below the last
LayerNorm of the pretrained stand-in at the first step, and the job's LoRA 2% apart in loss from
transformers + PEFT within 60 steps (docs/how-it-works.md, "Parity"). Full fine-tuning (every scale
trains) and head only (no gradient reaches a LayerNorm) were never affected. The GPU kernel reads the
scale whenever there is one (LayerNormBackwardGradientOnlyDX takes it): it needs no correction.

While `exact_layer_norm_grad()` is active on CPU, a LayerNorm whose scale is frozen and whose input needs
a gradient normalises without its scale and bias and applies them after, `layer_norm(x) * weight + bias`:
the same forward up to rounding, and autograd multiplies the gradient by the scale. It costs 2% of a LoRA
step's forward and backward on the stand-in (137.7 against 134.9 ms, batch 16 x 40 tokens, 2 cores,
interleaved)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _normalised_then_scaled(original: Any) -> Any:
    def layer_norm(x: Any, normalized_shape: Any, weight: Any = None, bias: Any = None, epsilon: float = 1e-05,
                   name: str | None = None) -> Any:  # fmt: skip
        if weight is None or not weight.stop_gradient or x.stop_gradient:
            return original(x, normalized_shape, weight=weight, bias=bias, epsilon=epsilon, name=name)
        out = original(x, normalized_shape, weight=None, bias=None, epsilon=epsilon, name=name) * weight
        return out if bias is None else out + bias

    return layer_norm


@contextlib.contextmanager
def exact_layer_norm_grad() -> Iterator[bool]:
    """Inside the block, on CPU, nn.LayerNorm layers (they look `layer_norm` up at call time) take the
    corrected path above; yields whether it is active (False on a GPU)."""
    from paddle.nn.layer import norm

    from job.runtime.device import on_gpu

    if on_gpu():
        yield False
        return
    original = norm.layer_norm
    norm.layer_norm = _normalised_then_scaled(original)
    try:
        yield True
    finally:
        norm.layer_norm = original
