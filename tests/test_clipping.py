"""The training loop's gradient clipping (job.train.build_optimizer): a global norm above max_grad_norm
is scaled down to it; a norm below is left exactly as it is."""

from __future__ import annotations

import numpy as np
import pytest

from job.train import TrainSettings, build_optimizer


def clipped(norm: float, max_grad_norm: float) -> tuple[float, np.ndarray, np.ndarray]:
    import paddle

    layer = paddle.nn.Linear(4, 3)
    settings = TrainSettings(1e-3, 8, 1, 0.0, 0.0, max_grad_norm, seed=0, logging_steps=1)
    optimizer, _ = build_optimizer(layer, settings, 10)
    grads = [paddle.randn(p.shape) for p in layer.parameters()]
    total = float(np.sqrt(sum(float((g * g).sum()) for g in grads)))
    grads = [g * (norm / total) for g in grads]
    before = np.concatenate([g.numpy().ravel() for g in grads])
    out = optimizer._grad_clip([(p, g) for p, g in zip(layer.parameters(), grads, strict=True)])
    after = np.concatenate([g.numpy().ravel() for _, g in out])
    return float(np.linalg.norm(after)), before, after


def test_a_norm_above_the_limit_is_scaled_down_to_it() -> None:
    norm, before, after = clipped(10.0, 1.0)
    assert norm == pytest.approx(1.0, rel=1e-5)
    np.testing.assert_allclose(after, before / 10.0, rtol=1e-5)


def test_a_norm_below_the_limit_is_left_exactly_alone() -> None:
    norm, before, after = clipped(0.5, 1.0)
    assert norm == pytest.approx(0.5, rel=1e-6)
    assert np.array_equal(after, before)


def test_max_grad_norm_zero_turns_clipping_off() -> None:
    import paddle

    settings = TrainSettings(1e-3, 8, 1, 0.0, 0.0, 0.0, seed=0, logging_steps=1)
    optimizer, _ = build_optimizer(paddle.nn.Linear(4, 3), settings, 10)
    assert optimizer._grad_clip is None
