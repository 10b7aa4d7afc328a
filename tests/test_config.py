"""Config: the seed's values, typed overrides, and one clear message + exit 2 for each bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from job.cli import main
from job.config.schema import JobConfig, load_config, parse_override, validate_config
from job.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SEED_CONFIG = ROOT / "configs" / "tnews_lora_vs_full.yaml"
SEED_REPORT = ROOT.parent / "shared" / "reference" / "seed_report.md"
SEED_VALUES = {
    "model_name": "ernie-3.0-medium-zh", "max_seq_length": 128, "batch_size": 8, "learning_rate": 5e-05,
    "weight_decay": 0.01, "num_epochs": 1, "max_train_samples": 512, "max_eval_samples": 256, "seed": 42,
    "output_dir": "reports", "report_file": "ernie_lora_vs_full_report.md", "save_artifacts": False,
    "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.1,
}  # fmt: skip


def test_seed_config_holds_the_seed_values() -> None:
    config = load_config(SEED_CONFIG).model_dump()
    assert {key: config[key] for key in SEED_VALUES} == SEED_VALUES
    assert config["strategies"] == ["lora", "full_finetune"]
    assert config["lora_learning_rate"] is None and config["full_finetune_learning_rate"] is None


def test_seed_config_matches_the_seed_report_when_present() -> None:
    if not SEED_REPORT.is_file():
        pytest.skip("seed report not present")
    block = re.search(r"```json\n(.*?)\n```", SEED_REPORT.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None
    seed = json.loads(block.group(1))
    config = load_config(SEED_CONFIG).model_dump()
    assert {key: config[key] for key in seed} == seed


def test_every_seed_config_key_has_a_comment() -> None:
    for line in SEED_CONFIG.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            assert "#" in line, f"uncommented key: {line}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("lora_r=8", ("lora_r", 8)), ("learning_rate=5e-4", ("learning_rate", 5e-4)),
     ("strategies=[lora]", ("strategies", ["lora"])), ("max_train_samples=null", ("max_train_samples", None)),
     ("report_file=a.md", ("report_file", "a.md"))],
)  # fmt: skip
def test_overrides_are_typed(text: str, expected: tuple) -> None:
    assert parse_override(text) == expected


def test_override_changes_the_config_and_its_hash() -> None:
    base = load_config(SEED_CONFIG)
    changed = load_config(SEED_CONFIG, {"lora_r": 8})
    assert changed.lora_r == 8
    assert changed.config_hash() != base.config_hash()
    # Where results go and which strategies run do not change the numbers, so not the hash either.
    moved = load_config(SEED_CONFIG, {"output_dir": "/elsewhere", "strategies": ["lora"]})
    assert moved.config_hash() == base.config_hash()


def test_per_strategy_overrides_apply_to_their_strategy_only() -> None:
    from job.config.plan import plan_runs

    config = validate_config({"learning_rate": 3e-5, "lora_learning_rate": 5e-4, "lora_batch_size": 16})
    lora, full = plan_runs(config)
    assert (lora.key, lora.learning_rate, lora.settings.batch_size) == ("lora", 5e-4, 16)
    assert (full.key, full.learning_rate, full.settings.batch_size) == ("full_finetune", 3e-5, 8)


BAD_VALUES = [
    ({"lora_rr": 8}, "lora_rr", "did you mean 'lora_r'"),
    ({"batch_size": "eight"}, "batch_size", "integer"),
    ({"batch_size": True}, "batch_size", "integer"),
    ({"lora_r": 0}, "lora_r", "greater than or equal to 1"),
    ({"learning_rate": 0}, "learning_rate", "greater than 0"),
    ({"learning_rate": -1e-5}, "learning_rate", "greater than 0"),
    ({"lora_dropout": 1.0}, "lora_dropout", "less than 1"),
    ({"report_file": "../../x.md"}, "report_file", "plain file name"),
    ({"report_file": "/tmp/x.md"}, "report_file", "plain file name"),
    ({"report_file": "sub/x.md"}, "report_file", "plain file name"),
    ({"strategies": ["lora", "lora"]}, "strategies", "more than once"),
    ({"strategies": ["prefix"]}, "strategies", "lora"),
    ({"strategies": []}, "strategies", "at least 1"),
    ({"device": "tpu"}, "device", "auto"),
    ({"lora_target_modules": ["(unclosed"]}, "lora_target_modules", "not a valid regex"),
    ({"seed": []}, "seed", "an empty list"),
    ({"seed": [42, 43, 42]}, "seed", "the list repeats 42"),
    ({"seed": 2**32}, "seed", "less than or equal to 4294967295"),
    ({"seed": [1, -1]}, "seed", "greater than or equal to 0"),
    ({"data_seed": 2**64}, "data_seed", "less than or equal to 4294967295"),
    ({"learning_rate": []}, "learning_rate", "an empty list"),
    ({"lora_learning_rate": [1e-4, 1e-4]}, "lora_learning_rate", "the list repeats 0.0001"),
    ({"full_finetune_learning_rate": [5e-5, 2]}, "full_finetune_learning_rate", "less than or equal to 1"),
]


@pytest.mark.parametrize(("values", "key", "fragment"), BAD_VALUES)
def test_bad_values_name_the_key(values: dict, key: str, fragment: str) -> None:
    with pytest.raises(UserError) as caught:
        validate_config(values)
    assert f"'{key}'" in str(caught.value)
    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "empty"), ("- a\n- b\n", "mapping"),
     ("lora_r: [1\n", "not valid YAML: line 2, column 1: while parsing a flow sequence; expected ',' or ']'"),
     ("lora_r: !!python/object/apply:os.system ['echo hi']\n", "not valid YAML: line 1, column 9: could not "
      "determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"),
     ("seed: 1\nlora_r: 8\nnum_epochs: 1\nlora_r: 4\n", "not valid YAML: line 4, column 1: key 'lora_r' is "
      "written twice (lines 2 and 4); keep one"),
     ("lora_targets:\n  qkv: 1\n  qkv: 2\n", "key 'qkv' is written twice (lines 2 and 3)"),
     ("seed: 1\nnote: \"\x00\"\n", "not valid YAML: character 16: special characters are not allowed, #x0000")],
)  # fmt: skip
def test_bad_files_exit_2_in_one_line_and_write_nothing(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(path), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert fragment in result.output and result.output.count("\n") == 1, result.output
    assert not (tmp_path / "out").exists()


def test_keys_merged_in_with_an_anchor_may_be_overridden() -> None:
    from job.config.schema import safe_load

    assert safe_load("a: &x {p: 1, q: 2}\nb:\n  <<: *x\n  p: 3\n") == {"a": {"p": 1, "q": 2}, "b": {"p": 3, "q": 2}}


def test_unknown_key_exits_2_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("lerning_rate: 0.1\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["run", "--config", str(path), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "unknown config key 'lerning_rate'; did you mean 'learning_rate'?" in result.output
    assert not (tmp_path / "out").exists()


def test_max_seq_length_above_the_model_limit_exits_2(write_config, tmp_path: Path) -> None:
    path = write_config(max_seq_length=4096)  # the tiny model has 128 positions
    result = CliRunner().invoke(main, ["run", "--config", str(path)])
    assert result.exit_code == 2
    assert "'max_seq_length': 4096 is above the model's limit of 128" in result.output
    assert not (tmp_path / "out" / "results").exists()


def test_lora_rank_above_hidden_size_exits_2(write_config) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(lora_r=64))])  # hidden size 32
    assert result.exit_code == 2
    assert "'lora_r': 64 is larger than the model's hidden size 32" in result.output


def test_validate_prints_the_resolved_config_and_reads_job_config_env() -> None:
    result = CliRunner(mix_stderr=False).invoke(
        main, ["validate", "--set", "lora_r=4"], env={"JOB_CONFIG": str(SEED_CONFIG)}
    )
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.stdout)
    assert resolved["lora_r"] == 4
    assert resolved["max_train_samples"] == 512


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", "--config", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_every_key_is_documented() -> None:
    for name, field in JobConfig.model_fields.items():
        assert field.description, name


def test_tuned_config_differs_from_the_seed_only_in_the_lora_rate_and_folder() -> None:
    seed = load_config(SEED_CONFIG).model_dump()
    tuned = load_config(ROOT / "configs" / "tnews_lora_tuned.yaml").model_dump()
    changed = {key for key in seed if seed[key] != tuned[key]}
    assert changed == {"lora_learning_rate", "output_dir"}
    assert tuned["lora_learning_rate"] == 10 * tuned["learning_rate"]


@pytest.mark.parametrize("override", ["seed=[]", "seed=[1, 1]", "seed=4294967296", "lora_learning_rate=[]"])
def test_bad_grid_values_exit_2_before_anything_is_loaded(write_config, tmp_path: Path, override: str) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config()), "--set", override])
    assert result.exit_code == 2, result.output
    assert f"config key '{override.split('=')[0]}'" in result.output
    assert not (tmp_path / "out").exists()


def test_config_files_that_can_never_be_read_exit_2_at_once(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    cases = [
        ("/dev/zero", "config file /dev/zero is larger than 1,048,576 bytes"),
        (str(loop), f"config file {loop} cannot be read"),
        (str(tmp_path), "is a directory"),  # click's own check of --config
    ]
    for path, message in cases:
        for command in ("run", "validate"):
            result = CliRunner().invoke(main, [command, "--config", path, "--set", f"output_dir={tmp_path / 'out'}"])
            assert result.exit_code == 2, (command, path, result.output)
            assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_grad_norm": float("inf")}, "config key 'max_grad_norm': Input should be a finite number"),
        ({"learning_rate": float("nan")}, "config key 'learning_rate'"),
        ({"output_dir": "out\0put"}, "config key 'output_dir': contains a NUL byte"),
        ({"report_file": "r\0.md"}, "config key 'report_file': contains a NUL byte"),
    ],
)
def test_values_that_would_fail_later_are_refused_now(values: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        validate_config(values)


@pytest.mark.parametrize(
    ("model_name", "message"),
    [
        ("./no/such/model", "model folder ./no/such/model does not exist"),
        ("/no/such/model", "model folder /no/such/model does not exist"),
        ("https://example.invalid/ernie", "is a URL; give a PaddleNLP model name"),
    ],
)
def test_a_model_name_that_is_a_missing_path_or_a_url_exits_2(
    write_config, tmp_path: Path, model_name, message
) -> None:
    result = CliRunner().invoke(main, ["run", "--config", str(write_config(model_name=model_name))])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out" / "results").exists()


def test_keys_of_other_trainers_are_answered_with_what_the_job_has_instead() -> None:
    import re

    from job.config.habits import FOREIGN_KEYS
    from job.config.schema import FIELD_NAMES, validate_config
    from job.errors import UserError

    for key, hint in FOREIGN_KEYS.items():
        assert key not in FIELD_NAMES, key
        named = [name for name in re.findall(r"'([a-z_<>]+)[':]", hint) if "<" not in name]
        assert all(name in FIELD_NAMES for name in named), (key, named)
    for key, expected in [("save_total_limit", "removes it once the run's record is saved"),
                          ("lr_scheduler_type", "linear warm-up"),
                          ("resume_from_checkpoint", "goes on from its checkpoint")]:  # fmt: skip
        with pytest.raises(UserError) as raised:
            validate_config({key: 1})
        assert "(a key of another trainer)" in str(raised.value) and expected in str(raised.value)
        assert "did you mean" not in str(raised.value)


@pytest.mark.timeout(60)
def test_validate_checks_model_name_as_run_does_and_names_the_two_accepted_forms(
    tmp_path: Path, tiny_model: Path
) -> None:
    """`validate` passed `model_name=nghuyong/ernie-3.0-medium-zh` and `run` failed 12 s later."""
    hub = CliRunner().invoke(main, ["validate", "--set", "model_name=nghuyong/ernie-3.0-medium-zh"])
    assert hub.exit_code == 2, hub.output
    assert ("model_name is a PaddleNLP name, such as ernie-3.0-medium-zh, or a local folder of a Paddle model saved "
            "with save_pretrained: config.json, the weights and vocab.txt; a Hugging Face name (org/model) is "
            "neither") in hub.output  # fmt: skip
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(main, ["validate", "--set", f"model_name={tmp_path / 'empty'}"])
    assert empty.exit_code == 2 and f"model folder {tmp_path / 'empty'} has no config.json" in empty.output
    good = CliRunner().invoke(main, ["validate", "--set", f"model_name={tiny_model}"])
    assert good.exit_code == 0 and f"model: local folder {tiny_model}" in good.output
