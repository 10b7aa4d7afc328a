"""Hostile inputs, round 5: links and modes across `run`, `report`, `demo` and `launch`, locks that are not
files, records read by `job report`, numbers and records read with bounds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example-report"


@pytest.mark.timeout(60)
def test_a_copied_record_is_refused_not_counted_as_one_more_seed(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE / "results", tmp_path / "results")
    record = tmp_path / "results" / "lora_r16_a32_lr0.003_s1.json"
    shutil.copy(record, tmp_path / "results" / "lora_r16_a32_lr0.003_s1 (copy).json")
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert (
        "lora_r16_a32_lr0.003_s1 (copy).json and lora_r16_a32_lr0.003_s1.json in " in result.output
        and "both hold run 'lora_r16_a32_lr0.003_s1': one run counts once" in result.output
    )
    assert not (tmp_path / "results.json").exists()
    (tmp_path / "results" / "lora_r16_a32_lr0.003_s1 (copy).json").unlink()
    whole = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert whole.exit_code == 0, whole.output


@pytest.mark.timeout(60)
def test_report_reads_no_records_through_a_results_link_that_run_would_refuse(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE / "results", tmp_path / "elsewhere")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results").symlink_to(tmp_path / "elsewhere")
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'out' / 'results'} is a symbolic link: the job reads and writes nothing through a link" in (
        result.output
    )
    assert not (tmp_path / "out" / "results.json").exists() and not (tmp_path / "out" / "report.md").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "folder", "link"])
def test_a_lock_that_is_not_a_file_exits_2_at_once_and_names_it(tmp_path: Path, kind: str) -> None:
    shutil.copytree(EXAMPLE / "results", tmp_path / "results")
    lock = tmp_path / ".lock"
    if kind == "fifo":
        os.mkfifo(lock)  # opened for writing it blocked the merge for ever
    elif kind == "folder":
        lock.mkdir()  # exited 75: a queue retried it
    else:
        lock.symlink_to(tmp_path / "elsewhere")
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert f"{lock} is not the job's lock file (" in result.output and "): remove it" in result.output
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "elsewhere").exists()


def launch(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key not in ("JOB_REPORTS_DIR", "OMP_NUM_THREADS")}
    return subprocess.run([sys.executable, "-m", "job", "launch", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False, env={**environment, "PYTHONPATH": str(ROOT), **env})  # fmt: skip


@pytest.mark.timeout(120)
def test_launch_refuses_a_planted_log_link_an_empty_log_dir_and_an_object_store_output_with_no_log_home(
    write_config, tmp_path: Path
) -> None:
    config = write_config()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "launch-logs").symlink_to(tmp_path / "elsewhere")
    planted = launch(["--nproc_per_node", "1", "run", "--config", str(config)], tmp_path)
    assert planted.returncode == 2, planted.stderr[-2000:]
    assert f"{tmp_path / 'out' / 'launch-logs'} is a symbolic link" in planted.stderr
    assert not (tmp_path / "elsewhere").exists()
    empty = launch(["--log_dir=", "--nproc_per_node", "1", "run", "--config", str(config)], tmp_path)
    assert empty.returncode == 2 and "Traceback" not in empty.stderr, empty.stderr[-2000:]
    assert "error: job launch: --log_dir names no folder" in empty.stderr
    remote = write_config(output_dir="s3://bucket/prefix")
    s3 = launch(["--nproc_per_node", "1", "run", "--config", str(remote)], tmp_path)
    assert s3.returncode == 2 and "have no local home: give --log_dir FOLDER" in s3.stderr, s3.stderr[-2000:]
    assert not (tmp_path / "reports").exists()


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_launch_logs_holding_the_environment_are_700_and_600_under_any_umask(write_config, tmp_path: Path) -> None:
    config = write_config(model_name=str(tmp_path / "no-model"))  # each rank fails fast, after the launcher's dumps
    logs = tmp_path / "out" / "launch-logs"
    logs.mkdir(parents=True, mode=0o755)
    os.chmod(logs, 0o755)
    (logs / "backup_env.0.json").write_text("{}", encoding="utf-8")
    os.chmod(logs / "backup_env.0.json", 0o644)  # an older launch's copy
    old = os.umask(0)
    try:
        result = launch(["--nproc_per_node", "1", "run", "--config", str(config)], tmp_path,
                        AWS_SECRET_ACCESS_KEY="do-not-share")  # fmt: skip
    finally:
        os.umask(old)
    assert result.returncode == 2, result.stderr[-2000:]
    assert oct(logs.stat().st_mode & 0o777) == "0o700"
    files = sorted(path for path in logs.iterdir() if path.is_file())
    assert any("do-not-share" in path.read_text(encoding="utf-8") for path in files)  # the launcher's copy
    assert {oct(path.stat().st_mode & 0o777) for path in files} == {"0o600"}, [p.name for p in files]


@pytest.mark.timeout(60)
def test_the_demo_refuses_a_planted_inputs_link_an_object_store_output_and_another_configs_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "planted").mkdir()
    (tmp_path / "planted" / "demo-inputs").symlink_to(tmp_path / "elsewhere")
    linked = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "planted")])
    assert linked.exit_code == 2 and "demo-inputs is a symbolic link" in linked.output, linked.output
    assert not (tmp_path / "elsewhere").exists()
    remote = CliRunner().invoke(main, ["demo", "--output-dir", "s3://bucket/demo"])
    assert remote.exit_code == 2 and "the demo builds its model and data beside its report, so it needs a local" in (
        remote.output
    ), remote.output
    assert not (tmp_path / "s3:").exists()
    shutil.copytree(EXAMPLE, tmp_path / "theirs")
    before = {path.name: path.read_bytes() for path in (tmp_path / "theirs").iterdir() if path.is_file()}
    theirs = CliRunner().invoke(main, ["demo", "--output-dir", str(tmp_path / "theirs")])
    assert theirs.exit_code == 2, theirs.output
    assert "holds runs of another config (full_finetune_lr0.0003_s1.json and 15 more): the demo would replace" in (
        theirs.output
    )
    assert {path.name: path.read_bytes() for path in (tmp_path / "theirs").iterdir() if path.is_file()} == before
    assert not (tmp_path / "theirs" / "demo-inputs").exists()


@pytest.mark.timeout(120)
def test_demo_inputs_are_built_whole_with_the_jobs_modes_and_a_half_built_folder_is_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import job.demo

    pretrain = job.demo.pretrain_tiny_encoder
    monkeypatch.setattr(job.demo, "pretrain_tiny_encoder", lambda folder, titles: pretrain(folder, titles, steps=3))
    out = tmp_path / "demo"
    (out / "demo-inputs" / "data").mkdir(parents=True)
    (out / "demo-inputs" / "data" / "dev.json").write_text('{"label": "1', encoding="utf-8")  # a killed demo's
    old = os.umask(0)
    try:
        inputs = job.demo.build_inputs(str(out))
    finally:
        os.umask(old)
    assert inputs == out / "demo-inputs" and (inputs / ".complete").is_file()
    dev = (inputs / job.demo.DATA / "dev.json").read_text(encoding="utf-8")
    assert len(dev.splitlines()) == job.demo.DEV_TITLES
    modes = {oct(path.stat().st_mode & 0o777) for path in inputs.rglob("*") if path.is_file()}
    folders = {oct(path.stat().st_mode & 0o777) for path in [inputs, *inputs.rglob("*")] if path.is_dir()}
    assert modes == {"0o644"} and folders == {"0o755"}, (modes, folders)
    assert sorted(path.name for path in out.iterdir()) == ["demo-inputs"]  # no scratch left
    weights = (inputs / job.demo.MODEL / "model_state.pdparams").stat().st_mtime_ns
    monkeypatch.setattr(job.demo, "pretrain_tiny_encoder", lambda folder, titles: pytest.fail("built again"))
    assert job.demo.build_inputs(str(out)) == inputs  # whole: reused
    assert (inputs / job.demo.MODEL / "model_state.pdparams").stat().st_mtime_ns == weights

    def killed(folder: Path, titles: list[str]) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(job.demo, "pretrain_tiny_encoder", killed)
    with pytest.raises(KeyboardInterrupt):
        job.demo.build_inputs(str(tmp_path / "killed"))
    assert sorted(os.listdir(tmp_path / "killed")) == []


def small_grid(tiny_model: Path, tnews_dir: Path, out: Path, **values) -> dict:
    return {"model_name": str(tiny_model), "data_dir": str(tnews_dir), "max_seq_length": 32, "batch_size": 16,
            "learning_rate": 5e-3, "seed": [1, 2], "num_epochs": 1, "max_train_samples": 48, "max_eval_samples": 32,
            "output_dir": str(out), "lora_r": 4, "lora_alpha": 8, "eval_batch_size": 32, **values}  # fmt: skip


@pytest.mark.timeout(400)
def test_workers_train_a_config_read_once_from_stdin(tmp_path: Path, tiny_model: Path, tnews_dir: Path) -> None:
    import yaml

    text = yaml.safe_dump(small_grid(tiny_model, tnews_dir, tmp_path / "out", device="cpu"))
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "job", "run", "--config", "/dev/stdin", "--workers", "2"],
                            input=text, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=380,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "out" / "results").iterdir())) == 4 and "report: " in result.stdout


BIG = "9" * 5000  # Python's int() refuses 4,300 digits and more with a ValueError


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["plan", "--config", "{config}"], "is not valid YAML: line 1, column 9: an integer of 5,000 characters"),
        (["plan", "--set", f"lora_r={BIG}"], "not valid YAML: line 1, column 1: an integer of 5,000 characters"),
        (["run", "--workers", BIG], "--workers: config key 'workers': Input should be a valid integer, or 'auto'"),
        (["plan", "--set", "lora_r=" + "[" * 100_000], "value is not valid YAML: nested too deep"),
        (["plan", "--config", "{deep}"], "is not valid YAML: nested too deep"),
    ],
    ids=["yaml", "set", "workers", "set-nested", "yaml-nested"],
)
def test_numbers_too_long_for_python_and_values_nested_too_deep_exit_2_with_a_short_line(
    tmp_path: Path, args: list[str], fragment: str
) -> None:
    (tmp_path / "big.yaml").write_text(f"lora_r: {BIG}\n", encoding="utf-8")
    (tmp_path / "deep.yaml").write_text("lora_r: " + "[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    args = [arg.format(config=tmp_path / "big.yaml", deep=tmp_path / "deep.yaml") for arg in args]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output[:600]
    assert fragment in result.output and len(result.output) < 600, result.output[:600]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda text: text.replace('"seed": 1,', f'"seed": {BIG},', 1), "Exceeds the limit (4300 digits)"),
        (
            lambda text: text.replace('"git_commit": ', f'"nested": {"[" * 100_000}{"]" * 100_000}, "git_commit": ', 1),
            "nested too deep",
        ),
        (
            lambda text: text.replace('"planned_runs": [', '"planned_runs": [' + '"x", ' * 200_000, 1),
            "field 'run.planned_runs' lists 200,016 runs; a plan has at most 10,000",
        ),
        (
            lambda text: text.replace('"planned_runs": [', '"planned_runs": ["lora_r16_a32_lr0.003_s2", ', 1),
            "field 'run.planned_runs' lists a run twice, or not this record's run",
        ),
    ],
    ids=["long-integer", "nested", "planned-runs", "planned-twice"],
)
def test_a_record_edited_beyond_any_runs_bounds_is_refused_by_report(tmp_path: Path, edit, fragment: str) -> None:
    shutil.copytree(EXAMPLE / "results", tmp_path / "results")
    record = tmp_path / "results" / "lora_r16_a32_lr0.003_s1.json"
    text = record.read_text(encoding="utf-8")
    changed = edit(text)
    assert changed != text
    record.write_text(changed, encoding="utf-8")
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output[-2000:]
    assert f"{record} is not a result file of this job: " in result.output and fragment in result.output
    assert len(result.output) < 800 and not (tmp_path / "results.json").exists()


@pytest.mark.timeout(120)
def test_one_test_title_stops_the_run_before_training_not_in_the_report(write_config, tmp_path: Path) -> None:
    config = write_config(max_eval_samples=1, seed=[1, 2])
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output[-2000:]
    assert "error: the test split has 1 title after sampling (" in result.output
    assert "a comparison needs 2 or more" in result.output
    assert not (tmp_path / "out" / "results").exists()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("vocab", ["", "no-unk"])
def test_a_model_folder_whose_vocab_is_empty_or_lacks_unk_exits_2_in_run_and_predict(
    write_config, tiny_model: Path, tmp_path: Path, vocab: str
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    tokens = (tiny_model / "vocab.txt").read_text(encoding="utf-8").splitlines()
    (model / "vocab.txt").write_text("" if not vocab else "\n".join(t for t in tokens if t != "[UNK]") + "\n", "utf-8")
    run = CliRunner().invoke(main, ["run", "--config", str(write_config(model_name=str(model)))])
    assert run.exit_code == 2 and isinstance(run.exception, SystemExit), run.output[-2000:]
    assert f"model folder {model} has no usable tokenizer files: " in run.output
    predict = CliRunner().invoke(main, ["predict", "--device", "cpu", "--model", str(model), "好"])
    assert predict.exit_code == 2 and isinstance(predict.exception, SystemExit), predict.output[-2000:]
    assert f"model folder {model} has no usable tokenizer files: " in predict.output


@pytest.mark.timeout(120)
def test_learning_curve_sizes_that_train_the_same_rows_are_refused_before_training(
    write_config, tmp_path: Path
) -> None:
    config = write_config(max_train_samples=[100, 5000, 10000], max_eval_samples=60)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2, result.output[-2000:]
    assert "config key 'max_train_samples': 5,000 and 10,000 all train the same 540 rows (every row train has" in (
        result.output
    )
    assert not (tmp_path / "out" / "results").exists()


@pytest.mark.timeout(200)
def test_an_array_task_tokenises_only_its_own_training_size(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import job.pipeline
    from job.config.plan import plan_runs
    from job.config.schema import load_config

    config = write_config(max_train_samples=[100, 200, 300], strategies=["lora"], num_epochs=1)
    keys = [run.key for run in plan_runs(load_config(config))]
    encoded: list[int] = []
    real = job.pipeline.encode
    monkeypatch.setattr(job.pipeline, "encode", lambda examples, *args: encoded.append(len(examples)) or real(
        examples, *args))  # fmt: skip
    for index, rows in ((0, [100]), (2, [])):  # the largest size's rows are the shared ones: tokenised once
        encoded.clear()
        monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", str(index))
        result = CliRunner().invoke(main, ["run", "--config", str(config), "--run-from-index"])
        assert result.exit_code == 0, result.output[-2000:]
        assert encoded == rows, (keys[index], encoded)


@pytest.mark.timeout(60)
def test_a_stray_opening_quote_in_plain_tsv_keeps_every_row_its_own(tmp_path: Path) -> None:
    from job.data.sources import DataSpec, read_source

    rows = [f"标题{index}\t{'ab'[index % 2]}" for index in range(30)]
    rows[10] = '"开头有引号的标题\ta'  # a quote that opens no quoted field: rows 11-21 became one text
    rows[20] = '结尾的引号"\ta'  # closes it: the 11 rows parsed as one quoted text and its label
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.tsv").write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (folder / "dev.tsv").write_text("text\tlabel\n好\ta\n坏\tb\n", encoding="utf-8")
    train = read_source(DataSpec(dataset="own", data_dir=str(folder), text_column="text")).train
    assert [example.text for example in train] == [row.split("\t")[0] for row in rows]
    quoted = 'text\tlabel\n"两\n行"\tb\n好\ta\n"带\t制表符"\ta\n'  # pandas' quoting: still read as quoting
    (folder / "train.tsv").write_text(quoted, encoding="utf-8")
    train = read_source(DataSpec(dataset="own", data_dir=str(folder), text_column="text")).train
    assert [example.text for example in train] == ["两\n行", "好", "带\t制表符"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "kind"), [("results", "file"), ("artifacts", "file"), ("results.json", "folder"),
                                            ("pareto.png", "folder")])  # fmt: skip
def test_a_file_where_a_folder_must_be_or_the_reverse_exits_2_before_training(
    write_config, tmp_path: Path, name: str, kind: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    if kind == "file":
        (out / name).write_text("mine", encoding="utf-8")
    else:
        (out / name).mkdir()
    result = CliRunner().invoke(main, ["run", "--config", str(write_config())])
    assert result.exit_code == 2, result.output[-2000:]  # 75: a queue retried a fault no retry mends
    assert f"{out / name} is a {kind} where the job " in result.output and ": move it away" in result.output
    assert "step " not in result.output  # nothing trained


@pytest.mark.timeout(60)
def test_a_folder_where_report_writes_a_file_exits_2_naming_it(tmp_path: Path) -> None:
    shutil.copytree(EXAMPLE / "results", tmp_path / "results")
    (tmp_path / "ernie_lora_vs_full_report.md").mkdir()
    result = CliRunner().invoke(main, ["report", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2, result.output[-2000:]
    assert "Is a directory (a folder stands where the job writes a file: move it away)" in result.output


@pytest.mark.timeout(60)
def test_a_header_name_holding_a_nul_byte_is_quoted_in_the_message_and_never_suggested(tmp_path: Path) -> None:
    from job.data.sources import DataSpec, read_source
    from job.errors import UserError

    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "train.csv").write_text("ti\x00tle,label\n好,a\n坏,b\n", encoding="utf-8")
    (folder / "dev.csv").write_text("text,label\n好,a\n坏,b\n", encoding="utf-8")
    with pytest.raises(UserError) as caught:
        read_source(DataSpec(dataset="own", data_dir=str(folder), text_column="text"))
    message = str(caught.value)
    assert "\x00" not in message and "'ti\\x00tle'" in message, message
    assert message.endswith("(set config key 'text_column' to the column's name)"), message


@pytest.mark.timeout(120)
@pytest.mark.parametrize("poisoned", [False, True])
def test_a_pissa_svd_the_gpu_cannot_converge_exits_2_naming_the_layer(
    write_config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, poisoned: bool
) -> None:
    """Paddle's GPU SVD raises PreconditionNotMet (a RuntimeError in Python) when cuSOLVER's gesvdj reports
    info != 0 (svd_kernel.cu); raised here in its words. Before, a traceback."""
    import paddle

    def svd(x, *args, **kwargs):
        raise RuntimeError("(PreconditionNotMet) For batch [0]: CUSolver SVD is not zero. [17] (at "
                           "/paddle/paddle/phi/kernels/gpu/svd_kernel.cu:208)")  # fmt: skip

    monkeypatch.setattr(paddle.linalg, "svd", svd)
    if poisoned:  # a weight holding NaN: Paddle's own check answers so
        monkeypatch.setattr(paddle, "isfinite", lambda tensor: paddle.to_tensor([False]))
    config = write_config(strategies=["lora"], lora_pissa=True)
    result = CliRunner().invoke(main, ["run", "--config", str(config)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output[-2000:]
    assert "error: PiSSA could not take the SVD of " in result.output and ".weight: " in result.output
    assert ("the checkpoint is damaged" in result.output) is poisoned
    assert ("set lora_pissa: false, or run this strategy with --device cpu" in result.output) is not poisoned
