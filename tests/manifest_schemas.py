"""The batch manifests checked against each service's own published schema, offline:
Kubernetes through kubernetes-validate (strict, per minor version), AWS Batch through botocore's
service model, Google Cloud Batch through its protobuf message. `make lint` runs this module;
tests/test_manifests.py calls the same functions.

`python -m tests.manifest_schemas` prints one line per check and exits 1 when any fails.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
BATCH = ROOT / "configs" / "batch"
OLDEST_KUBERNETES = "1.29.0"  # the oldest minor still offered by the big managed services


def kubernetes_manifests() -> list[Path]:
    return sorted(BATCH.glob("*.yaml"))


def kubernetes_versions() -> list[str]:
    """Every minor version from OLDEST_KUBERNETES to the newest kubernetes-validate ships."""
    from kubernetes_validate.utils import all_versions

    def key(version: str) -> tuple[int, ...]:
        return tuple(int(part) for part in version.split("."))

    return sorted({version for version in all_versions() if key(version) >= key(OLDEST_KUBERNETES)}, key=key)


def kubernetes_errors(path: Path, version: str) -> list[str]:
    """Schema errors of every document in a Kubernetes YAML file for one version (strict: no unknown keys)."""
    import kubernetes_validate

    errors = []
    for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if document is None:
            continue
        try:
            kubernetes_validate.validate(document, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            errors.append(f"{document.get('kind')}/{document.get('metadata', {}).get('name')}: {where}: {exc.message}")
    return errors


def aws_errors(path: Path, operation: str = "RegisterJobDefinition") -> str:
    """botocore's validation report of the file as the input of an AWS Batch operation ('' when valid)."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("batch").operation_model(operation)
    report = ParamValidator().validate(json.loads(path.read_text(encoding="utf-8")), model.input_shape)
    return report.generate_report() if report.has_errors() else ""


def gcp_job(path: Path) -> Any:
    """The file parsed as a google.cloud.batch_v1.Job; an unknown or mistyped field raises ParseError."""
    from google.cloud import batch_v1

    return batch_v1.Job.from_json(path.read_text(encoding="utf-8"), ignore_unknown_fields=False)


def main() -> int:
    failures = 0
    for path in kubernetes_manifests():
        for version in kubernetes_versions():
            for error in kubernetes_errors(path, version):
                failures += 1
                print(f"FAIL {path.name} (Kubernetes {version}): {error}")
        print(f"checked {path.name} against Kubernetes {', '.join(kubernetes_versions())}")
    aws = BATCH / "aws-batch-job-definition.json"
    report = aws_errors(aws)
    failures += bool(report)
    checked = f"checked {aws.name} against botocore batch RegisterJobDefinition"
    print(f"FAIL {aws.name}: {report}" if report else checked)
    gcp = BATCH / "gcp-batch-job.json"
    try:
        gcp_job(gcp)
        print(f"checked {gcp.name} against google.cloud.batch_v1.Job")
    except Exception as exc:  # ParseError or TypeError from protobuf: report every kind the same way
        failures += 1
        print(f"FAIL {gcp.name}: {exc}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
