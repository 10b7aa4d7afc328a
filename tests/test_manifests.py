"""The batch-queue manifests agree with docker-compose.yml and the CLI, so they cannot drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from job.cli import main

ROOT = Path(__file__).resolve().parents[1]
BATCH = ROOT / "configs" / "batch"


def compose_mounts() -> dict[str, str]:
    """Container path -> what is mounted there, for the gpu-job service."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = {}
    for volume in compose["services"]["gpu-job"]["volumes"]:
        match = re.fullmatch(r"(.+):(/[^:]*)(?::(ro|rw))?", volume)  # the source may hold ${VAR:-default}
        assert match, volume
        mounts[match.group(2)] = match.group(1)
    return mounts


def aws() -> dict:
    definition = json.loads((BATCH / "aws-batch-job-definition.json").read_text(encoding="utf-8"))
    container = definition["containerProperties"]
    return {
        "image": container["image"],
        "args": container["command"],
        "config": {e["name"]: e["value"] for e in container["environment"]}["JOB_CONFIG"],
        "mounts": {m["containerPath"]: m.get("readOnly", False) for m in container["mountPoints"]},
    }


def gcp() -> dict:
    job = json.loads((BATCH / "gcp-batch-job.json").read_text(encoding="utf-8"))
    runnable = job["taskGroups"][0]["taskSpec"]["runnables"][0]
    mounts = {}
    for volume in runnable["container"]["volumes"]:
        _, target, *mode = volume.split(":")
        mounts[target] = mode == ["ro"]
    return {
        "image": runnable["container"]["imageUri"],
        "args": runnable["container"]["commands"],
        "config": runnable["environment"]["variables"]["JOB_CONFIG"],
        "mounts": mounts,
    }


def kubernetes() -> dict:
    job = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))
    container = job["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"] if m["mountPath"] != "/tmp"}
    return {
        "image": container["image"],
        "args": container["args"],
        "config": {e["name"]: e["value"] for e in container["env"]}["JOB_CONFIG"],
        "mounts": mounts,
    }


@pytest.mark.parametrize("manifest", [aws, gcp, kubernetes], ids=["aws", "gcp", "kubernetes"])
def test_manifest_agrees_with_compose_and_cli(manifest) -> None:
    spec = manifest()
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    image_name = compose["services"]["gpu-job"]["image"].split(":-", 1)[1].rstrip("}")
    assert spec["image"].endswith("/" + image_name), spec["image"]
    # The arguments parse with the real CLI, and pick the strategy from the queue's task index.
    command = main.commands[spec["args"][0]]
    parsed = command.make_context(command.name, list(spec["args"][1:]))
    assert parsed.params["strategy_from_index"] is True
    mounts = compose_mounts()
    assert set(spec["mounts"]) == set(mounts), "mount paths differ from docker-compose.yml"
    assert spec["mounts"]["/app/configs"] is True and spec["mounts"]["/app/reports"] is False
    config = Path(spec["config"])
    assert config.parent == Path("/app/configs")
    assert (ROOT / "configs" / config.name).is_file()


def test_retries_only_for_retryable_exit_codes() -> None:
    definition = json.loads((BATCH / "aws-batch-job-definition.json").read_text(encoding="utf-8"))
    rules = definition["retryStrategy"]["evaluateOnExit"]
    retried = {rule["onExitCode"] for rule in rules if rule["action"] == "RETRY" and "onExitCode" in rule}
    assert retried == {"75", "143"}
    assert rules[-1] == {"onExitCode": "*", "action": "EXIT"}
    job = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))
    fail_rule = job["spec"]["podFailurePolicy"]["rules"][0]
    assert fail_rule["action"] == "FailJob" and fail_rule["onExitCodes"]["values"] == [1, 2]
    gcp_job = json.loads((BATCH / "gcp-batch-job.json").read_text(encoding="utf-8"))
    policy = gcp_job["taskGroups"][0]["taskSpec"]["lifecyclePolicies"][0]
    assert policy["actionCondition"]["exitCodes"] == [1, 2]


def test_array_sizes_match_the_default_strategies() -> None:
    from job.config import JobConfig

    count = len(JobConfig.model_fields["strategies"].default)
    gcp_job = json.loads((BATCH / "gcp-batch-job.json").read_text(encoding="utf-8"))
    assert gcp_job["taskGroups"][0]["taskCount"] == count
    job = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))
    assert job["spec"]["completions"] == count
