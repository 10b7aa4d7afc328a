"""In-process guards of behaviour the slow end-to-end tests also cover, so `make test-fast` catches
their breakage: a page in the model cache is fetched again, weights that hold no tensor are never
cached, `job launch` passes SIGTERM on to its child, and each data-parallel rank weights its shard's
loss by its share of the global batch."""

from __future__ import annotations

import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fixtures import original_paddlenlp_urls, serve, write_vocab

PAGE = b"<!DOCTYPE html><html><body>Mirror under maintenance</body></html>\n"
MODEL = "ernie-3.0-nano-zh"
VOCAB = "models/transformers/ernie_3.0/ernie_3.0_nano_zh_vocab.txt"
WEIGHTS = "models/transformers/ernie_3.0/ernie_3.0_nano_zh.pdparams"


@pytest.mark.parametrize("poisoned", ["ernie_3.0_nano_zh_vocab.txt", "model_state.pdparams"])
def test_a_page_in_the_model_cache_is_fetched_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   poisoned: str) -> None:  # fmt: skip
    import paddle
    import paddlenlp.utils.env

    from job.data.download import fetch_model

    store = tmp_path / "store"
    (store / VOCAB).parent.mkdir(parents=True)
    write_vocab(store / VOCAB)
    paddle.save({"w": paddle.zeros([4])}, str(store / WEIGHTS))
    monkeypatch.setattr(paddlenlp.utils.env, "MODEL_HOME", str(tmp_path / "cache"))
    server = serve(store)
    endpoint, gets = next(server)
    monkeypatch.setenv("PPNLP_ENDPOINT", endpoint)
    try:
        with original_paddlenlp_urls():
            fetch_model(MODEL)
            assert gets == {VOCAB: 1, WEIGHTS: 1}
            cached = tmp_path / "cache" / MODEL / poisoned
            cached.write_bytes(PAGE)
            fetch_model(MODEL)
            fetched_again = VOCAB if poisoned.endswith(".txt") else WEIGHTS
            assert gets[fetched_again] == 2 and sum(gets.values()) == 3  # that file, and only it
            assert b"Mirror under maintenance" not in cached.read_bytes()
    finally:
        server.close()


CHILD = """
import signal, sys, time, pathlib
ready, got = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
signal.signal(signal.SIGTERM, lambda signum, frame: (got.write_text(str(signum)), sys.exit(0)))
ready.write_text("ready")
time.sleep(20)  # a signal that never arrives ends the test by this deadline, not by hanging it
"""


def test_job_launch_passes_sigterm_on_to_its_child_and_ends_with_143(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import job.launch

    ready, got = tmp_path / "ready", tmp_path / "got"
    monkeypatch.setattr(
        job.launch, "launcher_command", lambda *args: [sys.executable, "-c", CHILD, str(ready), str(got)]
    )
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}

    def signal_when_ready() -> None:
        deadline = time.monotonic() + 20
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # as a queue stops the container's PID 1

    sender = threading.Thread(target=signal_when_ready, daemon=True)
    sender.start()
    try:
        code = job.launch.launch(job.launch.parse_launch(["job/__main__.py", "run"]), tmp_path / "logs", set())
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    sender.join(timeout=20)
    assert got.read_text() == str(int(signal.SIGTERM))  # the child received SIGTERM and stopped cleanly
    assert code == 143


def test_each_rank_weights_its_shard_loss_by_its_share_of_the_global_batch(
    tiny_model: Path, tnews_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two ranks trained in one process (DataParallel and the all-reduce stood in for): with 5-title
    global batches the shards hold 3 and 2 titles, and their shares are 6/5 and 4/5, so the mean over
    ranks of share x shard mean loss is the global batch's mean loss."""
    import paddle
    import paddle.distributed

    import job.training.loop
    from job.config.plan import plan_runs
    from job.config.schema import JobConfig
    from job.data.batches import encode
    from job.data.sampling import draw_samples
    from job.data.sources import DataSpec, read_source
    from job.runtime.ranks import Ranks
    from job.runtime.signals import StopRequest
    from job.training.model import load_model, load_tokenizer
    from job.training.strategies import STRATEGIES

    monkeypatch.setattr(job.training.loop, "_data_parallel", lambda model: model)
    monkeypatch.setattr(paddle.distributed, "all_reduce", lambda tensor, *args, **kwargs: None)
    tokenizer = load_tokenizer(str(tiny_model))
    rows = encode(draw_samples(read_source(DataSpec(data_dir=str(tnews_dir))), 25, 8, 0).train.examples, tokenizer, 32)
    run = plan_runs(JobConfig(strategies=["lora"], lora_r=4, lora_alpha=8))[0]
    settings = job.training.loop.TrainSettings(5e-3, 5, 1, 0.01, 0.1, 1.0, seed=0, logging_steps=5)
    original = job.training.loop.accumulated_step
    seen: dict[int, list[tuple[int, float]]] = {0: [], 1: []}
    for rank in (0, 1):

        def step(model, micro, optimizer, schedule, precision="fp32", scaler=None, forward=None, _rank=rank):
            seen[_rank].extend((len(batch["labels"]), share) for batch, share in micro)
            return original(model, micro, optimizer, schedule, precision, scaler, forward)

        monkeypatch.setattr(job.training.loop, "accumulated_step", step)
        paddle.seed(0)
        model = STRATEGIES["lora"].prepare(load_model(str(tiny_model), 15), run)
        job.training.loop.train(model, rows, settings, pad_id=int(tokenizer.pad_token_id), label="lora",
                                stop=StopRequest(), ranks=Ranks(rank, 2))  # fmt: skip
    assert len(seen[0]) == len(seen[1]) == 5
    for (first_rows, first_share), (second_rows, second_share) in zip(seen[0], seen[1], strict=True):
        assert (first_rows, second_rows) == (3, 2)
        assert (first_share, second_share) == pytest.approx((6 / 5, 4 / 5))


def test_weights_that_load_as_an_empty_mapping_are_not_weights(tmp_path: Path) -> None:
    """`paddle.save({})` loads without error but holds no tensor: refused like any file that is not
    weights, so it is never renamed into the model cache; one tensor is enough to pass."""
    import paddle

    from job.data.download import weights_problem

    empty, one = tmp_path / "empty.pdparams", tmp_path / "one.pdparams"
    paddle.save({}, str(empty))
    paddle.save({"w": paddle.zeros([2])}, str(one))
    assert weights_problem(empty) == "not Paddle weights (it loads as dict, not a name -> tensor mapping)"
    assert weights_problem(one) is None
