"""The first-run download, served from a local HTTP server on 127.0.0.1 standing in for PaddleNLP's
store (PPNLP_ENDPOINT): a built-in ERNIE 3.0 model (nano: the same tables and code as medium, a
smaller file), its vocab, and CLUE TNEWS as a zip of the real train/dev/labels files from ../shared, so
PaddleNLP's own md5 list checks them. What stays untested here: Baidu's host itself and the official
zip's own bytes (its md5 is not checked; every file the job reads is)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.fixtures import ROOT, serve

pytestmark = pytest.mark.slow  # every test starts job processes with a cache of their own

MODEL = "ernie-3.0-nano-zh"
WEIGHTS = "models/transformers/ernie_3.0/ernie_3.0_nano_zh.pdparams"
VOCAB = "models/transformers/ernie_3.0/ernie_3.0_nano_zh_vocab.txt"
TNEWS_ZIP = "datasets/tnews_public.zip"


@pytest.fixture(scope="module")
def store_files(tmp_path_factory: pytest.TempPathFactory, shared_tnews: Path) -> Path:
    """What the mirror serves: random nano weights, the ERNIE 3.0 vocab, TNEWS re-zipped."""
    import paddle
    from paddlenlp.transformers import ErnieConfig, ErnieModel

    root = tmp_path_factory.mktemp("store")
    (root / WEIGHTS).parent.mkdir(parents=True)
    paddle.seed(0)
    encoder = ErnieModel(ErnieConfig(**ErnieModel.pretrained_init_configuration[MODEL]))
    paddle.save(encoder.state_dict(), str(root / WEIGHTS))
    vocab = shared_tnews.parent / "ernie-3.0-medium-zh" / "vocab.txt"
    if not vocab.is_file():
        pytest.skip(f"the ERNIE 3.0 vocab is not present at {vocab}")
    (root / VOCAB).write_bytes(vocab.read_bytes())
    (root / TNEWS_ZIP).parent.mkdir(parents=True)
    with zipfile.ZipFile(root / TNEWS_ZIP, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name in ("train.json", "dev.json", "labels.json"):
            bundle.write(shared_tnews / name, f"tnews_public/{name}")
    return root


@pytest.fixture
def mirror(store_files: Path) -> Iterator[tuple[str, Counter]]:
    yield from serve(store_files)


def job(*args: str, cache: Path, endpoint: str) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "PPNLP_HOME": str(cache), "PPNLP_ENDPOINT": endpoint}
    return subprocess.Popen([sys.executable, "-m", "job", *args], cwd=ROOT, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip


def write_config(folder: Path, **values) -> Path:
    config = {
        "model_name": MODEL, "max_seq_length": 32, "batch_size": 16, "max_train_samples": 48,
        "max_eval_samples": 16, "device": "cpu", "lora_r": 4, "lora_alpha": 8, "output_dir": str(folder / "out"),
        **values,
    }  # fmt: skip
    path = folder / "config.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def test_two_jobs_on_an_empty_cache_both_finish_and_download_each_file_once(
    mirror: tuple[str, Counter], store_files: Path, shared_tnews: Path, tmp_path: Path
) -> None:
    endpoint, gets = mirror
    cache = tmp_path / "cache"
    tasks = [job("run", "--config", str(write_config(tmp_path / name)), cache=cache, endpoint=endpoint)
             for name in ("a", "b")]  # fmt: skip
    logs = [task.communicate(timeout=600)[0] for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], "\n".join(log[-2500:] for log in logs)
    assert gets[TNEWS_ZIP] == 1 and gets[WEIGHTS] == 1, gets

    tnews = cache / "datasets" / "Clue" / "tnews_public"
    for name in ("train.json", "dev.json", "labels.json"):
        assert md5_of(tnews / name) == md5_of(shared_tnews / name)
    weights = cache / "models" / MODEL / "model_state.pdparams"
    assert weights.read_bytes() == (store_files / WEIGHTS).read_bytes()
    leftovers = [p.name for p in (cache / "datasets").rglob("*") if p.name.startswith(".download-")]
    assert leftovers == [] and not list((cache / "models").rglob("*.incomplete"))
    for name in ("a", "b"):
        assert (tmp_path / name / "out" / "results.json").is_file()


def test_prefetch_fills_the_cache_once_and_then_downloads_nothing(mirror: tuple[str, Counter], tmp_path: Path) -> None:
    endpoint, gets = mirror
    config = write_config(tmp_path)
    first = job("prefetch", "--config", str(config), cache=tmp_path / "cache", endpoint=endpoint)
    output = first.communicate(timeout=300)[0]
    assert first.returncode == 0, output[-2500:]
    assert f"model: {MODEL} (" in output and "data: PaddleNLP clue/tnews" in output and "train 53,360 rows" in output
    downloaded = sum(gets.values())

    again = job("prefetch", "--config", str(config), cache=tmp_path / "cache", endpoint=endpoint)
    assert again.communicate(timeout=300)[0] and again.returncode == 0
    assert sum(gets.values()) == downloaded  # everything came from the cache
    assert not (tmp_path / "out").exists()  # prefetch writes no report folder


def prefetch_from(store: Path, tmp_path: Path) -> tuple[int, str, str]:
    """`job prefetch` on an empty cache against a server of `store`: exit code, log, endpoint."""
    for endpoint, _ in serve(store):
        process = job("prefetch", "--config", str(write_config(tmp_path)), cache=tmp_path / "cache", endpoint=endpoint)
        output = process.communicate(timeout=300)[0]
    return process.returncode, output, endpoint


def with_the_model(store: Path, store_files: Path) -> Path:
    """`store` serving the model files of `store_files`."""
    for name in (WEIGHTS, VOCAB):
        (store / name).parent.mkdir(parents=True, exist_ok=True)
        (store / name).write_bytes((store_files / name).read_bytes())
    return store


def test_a_corrupt_archive_exits_75_naming_the_file_and_installs_nothing(
    store_files: Path, shared_tnews: Path, tmp_path: Path
) -> None:
    bad = with_the_model(tmp_path / "bad-store", store_files)
    (bad / TNEWS_ZIP).parent.mkdir(parents=True)
    with zipfile.ZipFile(bad / TNEWS_ZIP, "w") as bundle:
        bundle.write(shared_tnews / "train.json", "tnews_public/train.json")
        bundle.writestr("tnews_public/dev.json", (shared_tnews / "dev.json").read_bytes()[:-100])  # cut short
        bundle.write(shared_tnews / "labels.json", "tnews_public/labels.json")
    code, output, _ = prefetch_from(bad, tmp_path)
    assert code == 75, output[-2500:]
    assert "tnews_public/dev.json has md5" in output and "PaddleNLP expects f0660a3339a32e764075c801b42ece3c" in output
    assert not (tmp_path / "cache" / "datasets" / "Clue" / "tnews_public").exists()


def test_a_mirror_without_the_file_exits_2_naming_the_endpoint(store_files: Path, tmp_path: Path) -> None:
    empty = with_the_model(tmp_path / "empty-store", store_files)  # the model is there, the dataset is not
    code, output, endpoint = prefetch_from(empty, tmp_path)
    assert code == 2, output[-2500:]
    assert f"{endpoint}/{TNEWS_ZIP}: not found (404); check PPNLP_ENDPOINT={endpoint}" in output


PAGE = b"<!DOCTYPE html><html><body>Mirror under maintenance</body></html>\n"


@pytest.mark.parametrize("served_as", [VOCAB, WEIGHTS], ids=["vocab", "weights"])
def test_a_page_served_instead_of_a_model_file_is_never_cached_and_exits_75(
    store_files: Path, tmp_path: Path, served_as: str
) -> None:
    """A captive portal or a mirror in maintenance answers 200 with a page: the job checks each model
    file before it goes into the cache (PaddleNLP would keep the page as the vocab or the weights, and
    every later run would fail on it, even from a good mirror, without a request); it exits 75, and the
    retry from a good mirror succeeds."""
    bad = with_the_model(tmp_path / "bad-store", store_files)
    (bad / served_as).write_bytes(PAGE)
    (bad / TNEWS_ZIP).parent.mkdir(parents=True)
    (bad / TNEWS_ZIP).write_bytes((store_files / TNEWS_ZIP).read_bytes())
    code, output, endpoint = prefetch_from(bad, tmp_path)
    assert code == 75, output[-2500:]
    assert f"{endpoint}/{served_as} is not " in output and "nothing was cached, a retry downloads it" in output
    assert "Traceback" not in output
    cached = tmp_path / "cache" / "models" / MODEL
    assert not any(b"Mirror under maintenance" in path.read_bytes() for path in cached.rglob("*") if path.is_file())
    code, output, _ = prefetch_from(store_files, tmp_path)  # the good mirror, the same cache
    assert code == 0, output[-2500:]


@pytest.mark.parametrize("cached_as", ["ernie_3.0_nano_zh_vocab.txt", "model_state.pdparams"])
def test_a_page_already_in_the_cache_is_replaced_from_the_mirror(
    store_files: Path, tmp_path: Path, cached_as: str
) -> None:
    """A cache an earlier version filled with a page (or a copy damaged since) does not fail every run
    for good: the file is fetched again."""
    code, output, _ = prefetch_from(store_files, tmp_path)
    assert code == 0, output[-2500:]
    poisoned = tmp_path / "cache" / "models" / MODEL / cached_as
    poisoned.write_bytes(PAGE)
    code, output, _ = prefetch_from(store_files, tmp_path)
    assert code == 0, output[-2500:]
    assert b"Mirror under maintenance" not in poisoned.read_bytes()


def test_cached_weights_damaged_since_they_were_checked_are_removed_and_exit_75(
    store_files: Path, tmp_path: Path
) -> None:
    """Weights cut short in the cache (a full disk, a copy by hand) fail to load: the job removes them
    and exits 75, and the retry downloads them again."""
    code, output, _ = prefetch_from(store_files, tmp_path)
    assert code == 0, output[-2500:]
    weights = tmp_path / "cache" / "models" / MODEL / "model_state.pdparams"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, output, _ = prefetch_from(store_files, tmp_path)
    assert code == 75, output[-2500:]
    assert "could not be read" in output and "removed from the cache, a retry downloads it again" in output
    assert not weights.exists()
    code, output, _ = prefetch_from(store_files, tmp_path)
    assert code == 0, output[-2500:]
