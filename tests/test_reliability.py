"""Bad inputs and runtime failures: each gets a clear message and the right exit code, and nothing
half-written is left behind."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from job.cli import main
from job.config.schema import FIELD_NAMES, validate_config
from job.errors import UserError
from job.output.storage import LocalOutput, write_atomic

yaml_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True), st.text(max_size=20)
)
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=5), inner, max_size=3), max_leaves=6)  # fmt: skip
config_keys = st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=15))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(config_keys, yaml_values, max_size=6))
def test_validator_raises_only_its_own_error(values: dict) -> None:
    try:
        validate_config(values)
    except UserError as exc:
        assert str(exc)


def test_nan_loss_stops_with_strategy_and_step_and_keeps_earlier_results(
    write_config, tiny_model: Path, tmp_path: Path
) -> None:
    import paddle

    earlier = CliRunner().invoke(main, ["run", "--config", str(write_config(num_epochs=1)), "--strategy", "lora"])
    assert earlier.exit_code == 0, earlier.output
    broken = tmp_path / "nan-model"
    broken.mkdir()
    for item in tiny_model.iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    weights = paddle.load(str(broken / "model_state.pdparams"))
    weights["classifier.weight"][0, 0] = float("nan")
    paddle.save(weights, str(broken / "model_state.pdparams"))
    config = write_config(model_name=str(broken), num_epochs=1)
    result = CliRunner().invoke(main, ["run", "--config", str(config), "--strategy", "full_finetune"])
    assert result.exit_code == 1
    assert "full_finetune: loss became nan at step 1" in result.output
    out = tmp_path / "out"
    assert json.loads((out / "results" / "lora.json").read_text(encoding="utf-8"))["result"]["strategy"] == "lora"
    assert not (out / "results" / "full_finetune.json").exists()


def test_unwritable_output_dir_exits_2_before_training(write_config, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"  # root can write anywhere: use a path under a regular file
        blocker.write_text("")
        output = blocker / "out"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        output = locked / "out"
    result = CliRunner().invoke(main, ["run", "--config", str(write_config()), "--output-dir", str(output)])
    assert result.exit_code == 2
    assert "config key 'output_dir': cannot write to" in result.output


def test_a_failed_atomic_write_leaves_the_old_file_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.md"
    target.write_text("old report", encoding="utf-8")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_atomic(target, "new report")
    assert target.read_text(encoding="utf-8") == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_model_folder_without_weights_exits_2(write_config, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden_size": 32, "max_position_embeddings": 128}))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(model_name=str(folder)))])
    assert result.exit_code == 2
    assert "has no weights" in result.output


def test_model_folder_without_config_exits_2(write_config, tmp_path: Path) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(model_name=str(folder)))])
    assert result.exit_code == 2
    assert "has no config.json" in result.output


def test_checkpoint_with_another_head_size_is_reinitialised_and_reported(write_config, tmp_path: Path) -> None:
    from tests.fixtures import build_tiny_model

    two_class = build_tiny_model(tmp_path / "two-class", num_classes=2)
    config = write_config(model_name=str(two_class), num_epochs=1, strategies=["full_finetune"])
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "newly initialised (not in the checkpoint): classifier.bias, classifier.weight" in result.output


def test_checkpoint_of_another_encoder_size_is_an_error(write_config, tmp_path: Path) -> None:
    from paddlenlp.transformers import ErnieConfig, ErnieForSequenceClassification

    from tests.fixtures import TINY_ERNIE, build_tiny_model

    folder = build_tiny_model(tmp_path / "wider")
    # Same config.json, but weights of a wider encoder: the encoder must not be silently re-initialised.
    wider = ErnieForSequenceClassification(
        ErnieConfig(vocab_size=80, num_classes=15, **{**TINY_ERNIE, "hidden_size": 64})
    )
    import paddle

    paddle.save(wider.state_dict(), str(folder / "model_state.pdparams"))
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(model_name=str(folder)))])
    assert result.exit_code == 2
    assert "encoder weights are not in the checkpoint or have another shape" in result.output


OOM_RUNNER = """
import resource, sys
import paddle, paddlenlp.transformers, paddlenlp.peft  # load the libraries before the cap
from job.cli import main
size = int(open('/proc/self/status').read().split('VmSize:')[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + 1536 * 2**20, resource.RLIM_INFINITY))
main(sys.argv[1:], prog_name='job')
"""


@pytest.mark.slow
def test_out_of_memory_names_the_batch_size_to_try(write_config, tmp_path: Path) -> None:
    """A real allocation failure: the address space is capped 1.5 GB above what the libraries use, and
    one batch of 2,048 titles of 128 tokens needs more (attention scores alone are 268 MB a layer)."""
    import subprocess
    import sys

    from tests.fixtures import FILLER, KEYWORDS, build_tnews_folder, write_jsonl

    data = build_tnews_folder(tmp_path / "long-data", train=2200, dev=30)
    long_title = (KEYWORDS + FILLER) * 3
    write_jsonl(data / "train.json", [{"label": "100", "sentence": f"{long_title}{i}"} for i in range(2200)])
    config = write_config(data_dir=str(data), max_seq_length=128, batch_size=2048, max_train_samples=2100,
                          max_eval_samples=20, strategies=["full_finetune"])  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", OOM_RUNNER, "run", "--config", str(config)], cwd=root, capture_output=True,
        text=True, timeout=600, check=False, env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "[full_finetune] training at batch size 2048 ran out of memory" in result.stderr
    assert "try --set full_finetune_batch_size=1024" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["result"].pop("step_losses"), "field 'result.step_losses': Field required"),
        (lambda r: r["run"].update(config_hash=["not", "a", "hash"]), "field 'run.config_hash'"),
        (lambda r: r.pop("schema_version"), "result schema 1, this job reads 6"),
        (
            lambda r: r["result"]["test"].update(predictions=r["result"]["test"]["predictions"][1:]),
            "field 'result.test.predictions' has 59 class ids for 60 examples",
        ),
        (
            lambda r: r["result"]["dev"].update(predictions="!" + r["result"]["dev"]["predictions"][1:]),
            "field 'result.dev.predictions' is not class ids in base 36",
        ),
        (
            lambda r: r["result"]["test"].update(predictions="z" + r["result"]["test"]["predictions"][1:]),
            "field 'result.test.predictions' holds class id 35, but the run has 15 labels",
        ),
        (
            lambda r: r["run"]["data"]["test"].update(labels=r["run"]["data"]["test"]["labels"] + "0"),
            "field 'run.data.test.labels' has 61 class ids for 60 examples",
        ),
        (
            lambda r: r["result"]["dev"].update(per_class_accuracy=[0.5]),
            "field 'result.dev.per_class_accuracy' has 1 entries for 15 labels",
        ),
        (lambda r: r["result"]["test"].update(accuracy=2.0), "field 'result.test.accuracy': Input should be less"),
        (lambda r: r["result"]["dev"].update(accuracy=float("nan")), "field 'result.dev.accuracy': Input should be"),
        (
            lambda r: r["result"]["test"].update(accuracy=0.987),
            "field 'result.test.accuracy' is 0.987, but the record's predictions score 0.",
        ),
        (lambda r: r["result"]["dev"].update(macro_f1=0.987), "field 'result.dev.macro_f1' is 0.987, but the record"),
        (
            lambda r: r["result"]["test"]["per_class_accuracy"].__setitem__(3, 0.987),
            "field 'result.test.per_class_accuracy' entry 3 is 0.987; the predictions give",
        ),
        (lambda r: r["result"].update(training_seconds=-5.0), "field 'result.training_seconds': Input should be"),
        (
            lambda r: r["result"].update(peak_memory_mb=float("inf")),
            "field 'result.peak_memory_mb': Input should be a finite",
        ),
        (
            lambda r: r["result"].update(trainable_params=r["result"]["total_params"] + 1),
            "field 'result.trainable_params' is ",
        ),
    ],
    ids=[
        "missing-field",
        "wrong-type",
        "older-schema",
        "short-predictions",
        "not-base-36",
        "unknown-class",
        "gold-of-another-length",
        "per-class-of-another-length",
        "accuracy-above-1",
        "accuracy-nan",
        "accuracy-edited",
        "macro-f1-edited",
        "per-class-edited",
        "negative-seconds",
        "infinite-memory",
        "more-trainable-than-total",
    ],
)
def test_a_bad_result_record_exits_2_naming_file_and_field_before_training(
    write_config, tmp_path: Path, change, message: str
) -> None:
    config = str(write_config(num_epochs=1, strategies=["lora"]))
    assert CliRunner().invoke(main, ["run", "--config", config]).exit_code == 0
    record_file = tmp_path / "out" / "results" / "lora.json"
    record = json.loads(record_file.read_text(encoding="utf-8"))
    change(record)
    record_file.write_text(json.dumps(record), encoding="utf-8")
    for args in (
        ["report", "--output-dir", str(tmp_path / "out")],
        ["run", "--config", config, "--strategy", "full_finetune"],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert str(record_file) in result.output and message in result.output
        assert "Traceback" not in result.output and "[full_finetune]" not in result.output
    assert not (tmp_path / "out" / "results" / "full_finetune.json").exists()


def test_the_write_probe_follows_no_planted_link_and_leaves_nothing(tmp_path: Path) -> None:
    from job.pipeline import check_output_dir

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me", encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    for pid in range(1, 200):  # what a name from the process id would be, in a container or not
        (out / f".write-test-{pid}").symlink_to(victim)
    (out / f".write-test-{os.getpid()}").unlink(missing_ok=True)
    (out / f".write-test-{os.getpid()}").symlink_to(victim)
    check_output_dir(LocalOutput(out))
    assert victim.read_text(encoding="utf-8") == "keep me"
    assert sorted(p.name for p in out.iterdir() if not p.is_symlink()) == []


@pytest.mark.parametrize(
    ("error", "fix"),
    [
        (errno.EROFS, "it is mounted read-only: mount it read-write"),
        (errno.EACCES, f"the job runs as UID {os.getuid()}: run `sudo chown -R {os.getuid()}:{os.getgid()} "),
    ],
)
def test_an_unwritable_output_dir_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error, fix) -> None:
    import tempfile

    from job.errors import UserError
    from job.pipeline import check_output_dir

    def refuse(*args, **kwargs):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(UserError) as caught:
        check_output_dir(LocalOutput(tmp_path))
    assert f"cannot write to {tmp_path}: {os.strerror(error)}; " in str(caught.value) and fix in str(caught.value)


def test_a_lora_target_that_matches_nothing_stops_before_full_finetuning_trains(write_config, tmp_path: Path) -> None:
    config = write_config(strategies=["full_finetune", "lora"], lora_target_modules=[".*query"])
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "config key 'lora_target_modules': '.*query' matches no layer of the model" in result.output
    assert "[full_finetune]" not in result.output
    assert not (tmp_path / "out" / "results").exists()


@pytest.mark.parametrize(("last", "accepted"), [("e", True), ("f", False), ("g", False)])
def test_class_ids_stop_at_one_below_the_number_of_labels(last: str, accepted: bool) -> None:
    """15 labels: ids 0 to 14 (base 36: 0-e). Id 15 ("f"), one past the end, is refused like any other."""
    from job.results.records import inconsistency
    from job.results.stats import decode_classes
    from tests.records import records, result, split

    labels = [i % 15 for i in range(30)]
    record = records([result("lora", lr=5e-4, seed=1, dev_right=20, test_right=20, labels=labels)], labels)[0]
    if accepted:  # the split scored again with the last answer changed, so its figures agree with it
        test = split([*decode_classes(record.result.test.predictions)[:-1], int(last, 36)], labels, 1.1)
    else:
        test = record.result.test.model_copy(update={"predictions": record.result.test.predictions[:-1] + last})
    changed = record.model_copy(update={"result": record.result.model_copy(update={"test": test})})
    problem = inconsistency(changed)
    if accepted:
        assert problem is None
    else:
        assert problem == f"field 'result.test.predictions' holds class id {int(last, 36)}, but the run has 15 labels"
