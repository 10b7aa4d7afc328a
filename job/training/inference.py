"""Shortcuts that make evaluation cheaper without changing its numbers beyond float rounding (tested):
LoRA adapters are folded into their frozen weights for the duration; the last encoder layer computes
only the first position, the one the classifier reads; each linear layer adds its bias inside the
matmul; and dropout, an identity in evaluation, is skipped instead of copied."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator
from typing import Any

from job.training.model import classifier_of


@contextlib.contextmanager
def lora_merged(model: Any) -> Iterator[None]:
    """Fold each LoRA adapter into its frozen weight (one matmul per layer instead of three), and put
    the exact original weights back afterwards so training and saving see them bit for bit."""
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    layers = [layer for layer in model.sublayers() if isinstance(layer, LoRALinear) and not layer.merged]
    originals = [layer.weight.clone() for layer in layers]
    for layer in layers:
        layer.merge()
    try:
        yield
    finally:
        for layer, weight in zip(layers, originals, strict=True):
            layer.weight.set_value(weight)
            layer.merged = False


def _first_position_forward(self: Any, src: Any, src_mask: Any = None, cache: Any = None,
                            output_attentions: bool = False) -> Any:  # fmt: skip
    """paddle.nn.TransformerEncoderLayer's forward (as PaddleNLP patches it) for the first position
    only: attention still reads every position, but the query, output projection and feed-forward
    run on one token instead of all of them."""
    if cache is not None or output_attentions:
        return type(self).forward(self, src, src_mask, cache, output_attentions)
    from paddle.nn.layer.transformer import _convert_attention_mask

    self.self_attn.need_weights = False
    src_mask = _convert_attention_mask(src_mask, src.dtype)
    keys = self.norm1(src) if self.normalize_before else src
    hidden = src[:, :1] + self.dropout1(self.self_attn(keys[:, :1], keys, keys, src_mask))
    if not self.normalize_before:
        hidden = self.norm1(hidden)
    feed = self.norm2(hidden) if self.normalize_before else hidden
    hidden = hidden + self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(feed)))))
    return hidden if self.normalize_before else self.norm2(hidden)


def _bias_in_matmul(linear: Any) -> Any:
    """paddle.nn.functional.linear as one addmm: the bias is the matmul's initial value instead of a
    separate broadcast add, one more pass over the output (addmm took the matmul's own time here)."""
    import paddle

    def fused(x: Any, weight: Any, bias: Any = None, name: str | None = None) -> Any:
        if bias is None or len(weight.shape) != 2 or len(bias.shape) != 1 or len(x.shape) < 2:
            return linear(x, weight, bias, name)
        out = paddle.addmm(bias, x.reshape([-1, x.shape[-1]]), weight)
        return out.reshape([*x.shape[:-1], weight.shape[-1]])

    return fused


def _dropout_skipped(dropout: Any) -> Any:
    """paddle.nn.functional.dropout that returns its input when not training (Paddle's copies it)."""

    def skipped(x: Any, p: Any = 0.5, axis: Any = None, training: bool = True, inplace: bool = False,
                mode: str = "upscale_in_train", name: str | None = None) -> Any:  # fmt: skip
        if not training and mode == "upscale_in_train":
            return x
        return dropout(x, p=p, axis=axis, training=training, inplace=inplace, mode=mode, name=name)

    return skipped


@contextlib.contextmanager
def inference_kernels() -> Iterator[None]:
    """Within the block (gradients off), linear layers add their bias inside the matmul and dropout in
    evaluation mode is skipped; Paddle's own functions are back afterwards. Training never sees these:
    addmm's gradient kernel crashes on a frozen bias (Paddle 3.3.1)."""
    import paddle.nn.functional as functional

    linear, dropout = functional.linear, functional.dropout
    functional.linear, functional.dropout = _bias_in_matmul(linear), _dropout_skipped(dropout)
    try:
        yield
    finally:
        functional.linear, functional.dropout = linear, dropout


def last_encoder_layer(model: Any) -> Any | None:
    """The last layer of an ERNIE sequence classifier (bare or inside a LoRAModel), else None."""
    import paddle
    from paddlenlp.transformers import ErnieForSequenceClassification

    model = classifier_of(model)
    if not isinstance(model, ErnieForSequenceClassification):
        return None
    layer = model.ernie.encoder.layers[-1]
    return layer if type(layer) is paddle.nn.TransformerEncoderLayer else None


@contextlib.contextmanager
def last_layer_first_position_only(model: Any) -> Iterator[None]:
    """ERNIE's classifier reads only the first ([CLS]) position of the last layer's output, so that
    layer skips the others (about 1/7 of the matmul work at six layers). Other models run unchanged."""
    layer = last_encoder_layer(model)
    if layer is None:
        yield
        return
    layer.forward = types.MethodType(_first_position_forward, layer)
    try:
        yield
    finally:
        del layer.forward
