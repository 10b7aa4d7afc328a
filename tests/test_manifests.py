"""The batch-queue manifests agree with docker-compose.yml and the CLI, so they cannot drift."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from google.protobuf.json_format import ParseError

from job.cli import main
from job.output.storage import OBJECT_STORE_SCHEMES, output_dir_problem, url_scheme
from tests import manifest_schemas

ROOT = Path(__file__).resolve().parents[1]
BATCH = ROOT / "configs" / "batch"


def user_docs() -> str:
    """What users read: the README and every page in docs/ (the README links each)."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


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
    runnable = next(r for r in job["taskGroups"][0]["taskSpec"]["runnables"] if r["container"]["commands"][0] == "run")
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
    scratch = {"/tmp", "/home/job"}  # emptyDirs, as compose's tmpfs
    mounts = {
        m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"] if m["mountPath"] not in scratch
    }
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
    # The arguments parse with the real CLI, and pick the run from the queue's task index.
    command = main.commands[spec["args"][0]]
    parsed = command.make_context(command.name, list(spec["args"][1:]))
    assert parsed.params["run_from_index"] is True
    assert parsed.params["device"] == "gpu"  # a node without a usable GPU fails at once, never trains on CPU
    # Results go to object storage: no shared reports volume, every other mount as in compose.
    assert url_scheme(parsed.params["output_dir"]) in OBJECT_STORE_SCHEMES
    # The upper-case placeholder (the README: replace them) is refused at once, never retried; a real name passes.
    assert "is not a valid" in output_dir_problem(parsed.params["output_dir"])
    assert output_dir_problem(parsed.params["output_dir"].replace("BUCKET", "my-team-bucket")) is None
    mounts = compose_mounts()
    assert set(spec["mounts"]) == set(mounts) - {"/app/reports"}, "mount paths differ from docker-compose.yml"
    assert spec["mounts"]["/app/configs"] is True and spec["mounts"]["/cache"] is False
    config = Path(spec["config"])
    assert config.parent == Path("/app/configs")
    assert (ROOT / "configs" / config.name).is_file()


def test_every_manifest_warms_the_shared_cache_with_prefetch() -> None:
    """Kubernetes: an init container; Cloud Batch: a runnable before the run; both as the CLI parses them,
    with the job's image, config and cache. (AWS Batch: a prefetch job the array depends on, in the README.)"""
    job = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))
    pod = job["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["args"] == ["prefetch"] and init["image"] == pod["containers"][0]["image"]
    # The download needs no GPU: where nvidia is containerd's default runtime it would see every one.
    assert init["env"] == [*pod["containers"][0]["env"], {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]
    assert "NVIDIA_VISIBLE_DEVICES" not in {item["name"] for item in pod["containers"][0]["env"]}
    assert {m["mountPath"] for m in init["volumeMounts"]} == {
        m["mountPath"] for m in pod["containers"][0]["volumeMounts"]
    }
    gcp_job = json.loads((BATCH / "gcp-batch-job.json").read_text(encoding="utf-8"))
    first, second = gcp_job["taskGroups"][0]["taskSpec"]["runnables"]
    assert first["container"]["commands"] == ["prefetch"]
    assert {k: v for k, v in first["container"].items() if k != "commands"} == {
        k: v for k, v in second["container"].items() if k != "commands"
    }
    assert first["environment"] == second["environment"]
    main.commands["prefetch"].make_context("prefetch", [])  # a command the CLI has
    assert "--depends-on" in user_docs()


def test_retries_only_for_retryable_exit_codes() -> None:
    definition = json.loads((BATCH / "aws-batch-job-definition.json").read_text(encoding="utf-8"))
    rules = definition["retryStrategy"]["evaluateOnExit"]
    retried = {rule["onExitCode"] for rule in rules if rule["action"] == "RETRY" and "onExitCode" in rule}
    assert retried == {"75", "143"}
    assert rules[-1] == {"onExitCode": "*", "action": "EXIT"}
    job = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))
    fail_rule = job["spec"]["podFailurePolicy"]["rules"][0]
    # Only the failing run's index fails: a diverged full fine-tuning does not stop the LoRA runs.
    assert fail_rule["action"] == "FailIndex" and fail_rule["onExitCodes"]["values"] == [1, 2]
    assert job["spec"]["backoffLimitPerIndex"] >= 1 and "backoffLimit" not in job["spec"]
    assert job["spec"]["podFailurePolicy"]["rules"][1] == {
        "action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]
    }  # fmt: skip
    gcp_job = json.loads((BATCH / "gcp-batch-job.json").read_text(encoding="utf-8"))
    policy = gcp_job["taskGroups"][0]["taskSpec"]["lifecyclePolicies"][0]
    assert policy["actionCondition"]["exitCodes"] == [1, 2]


def planned_count(config_name: str) -> int:
    from job.config.plan import plan_runs
    from job.config.schema import load_config

    return len(plan_runs(load_config(ROOT / "configs" / config_name)))


def test_array_sizes_match_the_plan_of_the_shipped_config() -> None:
    """Each manifest's array size is `job plan`'s for the config it names."""
    runs = planned_count(Path(kubernetes()["config"]).name)
    assert planned_count(Path(gcp()["config"]).name) == planned_count(Path(aws()["config"]).name) == runs
    gcp_job = json.loads((BATCH / "gcp-batch-job.json").read_text(encoding="utf-8"))
    assert gcp_job["taskGroups"][0]["taskCount"] == runs
    job = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))
    assert job["spec"]["completions"] == runs
    assert readme_submit_job()["arrayProperties"] == {"size": runs}


# ---------------------------------------------------------------- the services' own schemas


@pytest.mark.parametrize("manifest", manifest_schemas.kubernetes_manifests(), ids=lambda path: path.name)
def test_kubernetes_manifests_validate_strictly_for_every_supported_version(manifest: Path) -> None:
    versions = manifest_schemas.kubernetes_versions()
    assert versions[0] == manifest_schemas.OLDEST_KUBERNETES and len(versions) >= 2
    errors = {version: manifest_schemas.kubernetes_errors(manifest, version) for version in versions}
    assert errors == {version: [] for version in versions}


def test_kubernetes_validation_catches_a_missing_condition_status(tmp_path: Path) -> None:
    """The check itself can fail: the DisruptionTarget rule without `status` is refused by 1.29."""
    text = (BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8")
    broken = tmp_path / "job.yaml"
    broken.write_text(text.replace('            status: "True"\n', ""), encoding="utf-8")
    assert broken.read_text(encoding="utf-8") != text
    errors = manifest_schemas.kubernetes_errors(broken, manifest_schemas.OLDEST_KUBERNETES)
    assert errors and "'status' is a required property" in errors[0]


def test_aws_job_definition_is_a_valid_register_job_definition_input(tmp_path: Path) -> None:
    assert manifest_schemas.aws_errors(BATCH / "aws-batch-job-definition.json") == ""
    definition = json.loads((BATCH / "aws-batch-job-definition.json").read_text(encoding="utf-8"))
    definition["containerProperties"]["mountPoint"] = []  # a typo the service would refuse
    broken = tmp_path / "definition.json"
    broken.write_text(json.dumps(definition), encoding="utf-8")
    assert 'Unknown parameter in containerProperties: "mountPoint"' in manifest_schemas.aws_errors(broken)


LIST_PARAMETERS = {"dependsOn"}  # the CLI's shorthand gives one item of a list


def readme_submit_jobs() -> list[dict]:
    """Every `aws batch submit-job` command of the README as SubmitJob parameters (CLI shorthand or
    JSON -> parameters)."""
    readme = user_docs()
    commands = re.findall(r"`aws batch submit-job ([^`]+)`", readme)
    assert commands, "the docs show no `aws batch submit-job` command"
    return [submit_job_parameters(command) for command in commands]


def submit_job_parameters(command: str) -> dict:
    words = command.split()
    params: dict = {}
    for flag, value in zip(words[::2], words[1::2], strict=True):
        first, *rest = flag.removeprefix("--").split("-")
        name = first + "".join(part.capitalize() for part in rest)
        if value.startswith("'"):  # JSON
            value = json.loads(value.strip("'"))
        elif "=" in value:  # shorthand: key=value[,key=value]
            value = {k: int(v) if v.isdigit() else v for k, v in (pair.split("=") for pair in value.split(","))}
        params[name] = [value] if name in LIST_PARAMETERS else value
    return params


def readme_submit_job() -> dict:
    """The README's array submission."""
    (array,) = [params for params in readme_submit_jobs() if "arrayProperties" in params]
    return array


def test_readme_submit_jobs_are_valid_submit_job_inputs(tmp_path: Path) -> None:
    """The prefetch job, then the array that depends on it."""
    prefetch, array = readme_submit_jobs()
    definition = json.loads((BATCH / "aws-batch-job-definition.json").read_text(encoding="utf-8"))
    assert prefetch["containerOverrides"] == {"command": ["prefetch"]} and "arrayProperties" not in prefetch
    assert array["dependsOn"] == [{"jobId": "PREFETCH_JOB_ID"}]
    for params in (prefetch, array):
        assert params["jobDefinition"] == definition["jobDefinitionName"]
        path = tmp_path / "submit.json"
        path.write_text(json.dumps(params), encoding="utf-8")
        assert manifest_schemas.aws_errors(path, "SubmitJob") == ""


def test_gcp_job_parses_as_a_cloud_batch_job_with_the_expected_tasks(tmp_path: Path) -> None:
    job = manifest_schemas.gcp_job(BATCH / "gcp-batch-job.json")
    group = job.task_groups[0]
    runs = planned_count(Path(gcp()["config"]).name)
    assert (group.task_count, group.parallelism) == (runs, runs)
    # Batch may start a GPU task's container without the image's ENTRYPOINT (nextflow-io/nextflow#7315):
    # each runnable names it, as the GPU image's Dockerfile does.
    dockerfile = (ROOT / "Dockerfile.gpu").read_text(encoding="utf-8")
    for runnable in group.task_spec.runnables:
        assert f'ENTRYPOINT ["{runnable.container.entrypoint}"]' in dockerfile
    commands = [list(runnable.container.commands) for runnable in group.task_spec.runnables]
    assert commands == [
        ["prefetch"],
        ["run", "--run-from-index", "--device", "gpu", "--output-dir", "gs://BUCKET/ernie-tnews"],
    ]
    broken = tmp_path / "job.json"
    broken.write_text(
        (BATCH / "gcp-batch-job.json").read_text(encoding="utf-8").replace('"taskCount"', '"taskCnt"'), encoding="utf-8"
    )
    with pytest.raises(ParseError, match="taskCnt"):
        manifest_schemas.gcp_job(broken)


def test_schema_check_command_passes_on_the_shipped_manifests() -> None:
    """What `make lint` runs."""
    assert manifest_schemas.main() == 0


def test_containers_are_hardened_in_kubernetes_and_compose() -> None:
    job = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = pod["containers"][0]["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}
    }  # fmt: skip
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    for name in ("cpu-job", "gpu-job"):
        service = compose["services"][name]
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert set(service["cap_add"]) == {"CHOWN", "SETUID", "SETGID"}  # the entrypoint's hand-over only
        assert "no-new-privileges:true" in service["security_opt"]


# ---------------------------------------------------------------- the GPU platforms


def dockerfile_env(path: Path) -> dict[str, str]:
    """The ENV values a Dockerfile sets (continuation lines joined)."""
    text = path.read_text(encoding="utf-8").replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_the_gpu_image_finds_the_driver_where_gke_and_the_nvidia_runtime_put_it() -> None:
    env = dockerfile_env(ROOT / "Dockerfile.gpu")
    assert env["LD_LIBRARY_PATH"].split(":")[:2] == ["/usr/local/nvidia/lib64", "/usr/local/nvidia/lib"]
    assert env["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")


def test_the_driver_floor_and_the_blackwell_build_arg_are_stated_where_users_read_them() -> None:
    from job.runtime.device_faults import DRIVER_FLOORS, NEWEST_BUILD, PADDLE_INDEX

    dockerfile = (ROOT / "Dockerfile.gpu").read_text(encoding="utf-8")
    readme = user_docs()
    default_index = re.search(r"ARG PADDLE_INDEX_URL=(\S+)", dockerfile).group(1)
    assert default_index == PADDLE_INDEX.format(build="cu126")
    for text in (dockerfile, readme):
        assert f">= {DRIVER_FLOORS['12.6']}" in text
        assert "525.60.13" not in text or "minor-version compatibility" in text  # never as the floor itself
        assert PADDLE_INDEX.format(build=NEWEST_BUILD) in text and "Blackwell" in text


def test_the_kubernetes_job_tolerates_the_gpu_taint_and_says_when_to_name_the_runtime() -> None:
    text = (BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8")
    pod = yaml.safe_load(text)["spec"]["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert "# runtimeClassName: nvidia" in text
    assert "runtimeClassName: nvidia" in user_docs()


def test_multi_gpu_runs_keep_their_logs_in_the_reports_folder() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--log_dir /tmp" not in makefile and "launch --gpus $(GPUS)" in makefile
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text(encoding="utf-8")
    assert 'set -- -m job launch "$@"' in entrypoint  # through the job's launcher: exit 143, logs kept


def test_each_manifest_bounds_the_jobs_threads_to_the_cpus_it_requests() -> None:
    """A CPU request reserves cores but sets no quota (Kubernetes requests, AWS Batch VCPU, Cloud Batch
    cpuMilli): the job's default of a thread per visible core would start one per core of the node."""
    definition = json.loads((BATCH / "aws-batch-job-definition.json").read_text(encoding="utf-8"))[
        "containerProperties"
    ]
    requested = {r["type"]: r["value"] for r in definition["resourceRequirements"]}["VCPU"]
    assert {e["name"]: e["value"] for e in definition["environment"]}["OMP_NUM_THREADS"] == requested
    job = json.loads((BATCH / "gcp-batch-job.json").read_text(encoding="utf-8"))["taskGroups"][0]["taskSpec"]
    cores = str(job["computeResource"]["cpuMilli"] // 1000)
    assert [r["environment"]["variables"]["OMP_NUM_THREADS"] for r in job["runnables"]] == [cores] * len(
        job["runnables"]
    )
    pod = yaml.safe_load((BATCH / "kubernetes-job.yaml").read_text(encoding="utf-8"))["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {e["name"]: e["value"] for e in container["env"]}["OMP_NUM_THREADS"] == container["resources"]["requests"][
        "cpu"
    ]
