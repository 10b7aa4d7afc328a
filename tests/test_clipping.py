"""The training loop's gradient clipping (job.training.loop.build_optimizer): a global norm above max_grad_norm
is scaled down to it; a norm below is left exactly as it is; the clipped gradients are Paddle's own, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from job.training.loop import TrainSettings, build_optimizer


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


def paddle_and_ours(norm: float, dtype: str = "float32") -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The same gradients (a large one among them) clipped to norm 1 by Paddle's ClipGradByGlobalNorm
    and by job.training.clipping.GlobalNormClip."""
    import paddle

    from job.training.clipping import GlobalNormClip

    paddle.seed(3)
    shapes = [[300_000], [768, 768], [768], [3, 5]]
    params = [paddle.create_parameter(shape, dtype) for shape in shapes]
    grads = [paddle.randn(shape).astype(dtype) for shape in shapes]
    total = float(np.sqrt(sum(float((g.astype("float32") ** 2).sum()) for g in grads)))
    grads = [(g.astype("float32") * (norm / total)).astype(dtype) for g in grads]
    results = []
    for clip in (paddle.nn.ClipGradByGlobalNorm(1.0), GlobalNormClip(1.0)):
        copies = [g.clone() for g in grads]
        results.append([g.astype("float32").numpy() for _, g in clip(list(zip(params, copies, strict=True)))])
    return results[0], results[1]


@pytest.mark.parametrize("norm", [7.3, 1.0001, 0.999])
def test_clipped_gradients_equal_paddles_bit_for_bit(norm: float) -> None:
    theirs, ours = paddle_and_ours(norm)
    assert all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    if norm > 1:  # it did clip
        assert float(np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in ours))) == pytest.approx(1.0)


def test_gradients_it_does_not_cover_go_to_paddles_clipping() -> None:
    theirs, ours = paddle_and_ours(4.0, dtype="float64")
    assert all(np.array_equal(a, b) for a, b in zip(theirs, ours, strict=True))
    assert not np.array_equal(ours[1], paddle_and_ours(0.5, dtype="float64")[1][1])
