"""The bulk-drawn seeded dropout (job.training.dropout): the same seed gives the same masks, the kept fraction
is 1 - p within sampling error, the expectation is preserved, gradients flow through the mask, and
every dropout of the model goes through it while training (and only then)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from job.training.dropout import LEVELS, NAME, BulkDropout, bulk_dropout, training_dropout


def dropped(seed: int, shape=(64, 33, 768), p: float = 0.1) -> np.ndarray:
    import paddle
    import paddle.nn.functional as F

    paddle.set_device("cpu")
    with bulk_dropout(seed):
        return F.dropout(paddle.ones(shape), p=p, training=True).numpy()


def test_the_same_seed_gives_the_same_masks_and_another_seed_others() -> None:
    first, again, other = dropped(7), dropped(7), dropped(8)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.02])
def test_the_kept_fraction_is_one_minus_p_and_the_expectation_is_preserved(p: float) -> None:
    out = dropped(3, p=p)
    n = out.size
    kept = float((out != 0).mean())
    quantised = round(p * LEVELS) / LEVELS  # the drop probability the 16-bit draws give
    sampling_error = math.sqrt(p * (1 - p) / n)
    assert abs(kept - (1 - p)) < 5 * sampling_error
    # Every kept value is scaled so that E[out] = input exactly (ones in, mean 1 out).
    assert abs(float(out.mean()) - 1.0) < 5 * sampling_error / (1 - p)
    assert set(np.unique(out)) == {0.0, np.float32(1 / (1 - quantised))}


def test_gradients_flow_through_the_same_mask() -> None:
    import paddle
    import paddle.nn.functional as F

    x = paddle.randn([16, 128])
    x.stop_gradient = False
    with bulk_dropout(11):
        y = F.dropout(x, p=0.3, training=True)
    y.sum().backward()
    mask = y.numpy() / np.where(x.numpy() == 0, 1, x.numpy())
    np.testing.assert_allclose(x.grad.numpy(), mask, rtol=1e-5)


def test_evaluation_and_other_modes_go_to_paddle_and_paddle_is_restored_after() -> None:
    import paddle
    import paddle.nn.functional as F

    original = F.dropout
    x = paddle.ones([4, 8])
    with bulk_dropout(1) as bulk:
        assert isinstance(F.dropout, BulkDropout)
        assert np.array_equal(F.dropout(x, p=0.5, training=False).numpy(), x.numpy())  # evaluation: identity
        assert np.array_equal(paddle.nn.Dropout(0.0)(x).numpy(), x.numpy())
        downscaled = F.dropout(x, p=0.5, training=True, mode="downscale_in_infer")  # Paddle's own
        assert set(np.unique(downscaled.numpy())) <= {0.0, 1.0}
        positional = F.dropout(x, 0.5, None, True, False, "downscale_in_infer")  # Paddle's argument order
        assert set(np.unique(positional.numpy())) <= {0.0, 1.0}
        assert bulk.fallback is original
    assert F.dropout is original


def test_every_dropout_of_the_tiny_model_draws_from_it_while_training(tiny_model: Path) -> None:
    """Embeddings, attention weights, both residual dropouts and the classifier: one model forward
    draws every mask from the job's generator (counted), and Paddle's kernel is never called."""
    import paddle

    from job.data.labels import TNEWS
    from job.training.model import load_model

    model = load_model(str(tiny_model), len(TNEWS)).model
    model.train()
    calls = []
    with bulk_dropout(5) as bulk:
        draw = bulk.mask
        bulk.mask = lambda shape, p: calls.append(shape) or draw(shape, p)
        bulk.fallback = lambda *args, **kwargs: pytest.fail("Paddle's dropout ran")
        model(input_ids=paddle.to_tensor([[1, 5, 6, 7, 2]]))
    layers = 2
    assert len(calls) == 1 + layers * 3 + 1  # embeddings; per layer attention, dropout1, dropout2; classifier
    assert (1, 2, 5, 5) in calls  # the attention weights (batch, heads, query, key)


def test_training_on_cpu_uses_the_dropout_it_names_and_restores_paddles_after() -> None:
    import paddle
    import paddle.nn.functional as F

    paddle.set_device("cpu")
    paddles = F.dropout
    with training_dropout(1) as name:
        inside = F.dropout(paddle.ones([4, 1000]), p=0.5, training=True).numpy()
    assert name == NAME  # what the run's record says
    assert np.array_equal(inside, dropped(1, shape=(4, 1000), p=0.5))  # is what ran: the seeded bulk masks
    assert F.dropout is paddles
