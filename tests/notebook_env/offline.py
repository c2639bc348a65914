"""The environment for SageMaker SDK runs that must reach no AWS service and no internet host.

Dummy credentials and a region (botocore wants both even when nothing is sent), no AWS
config files, the SDK's telemetry off, and a dead HTTP(S) proxy for every host but
loopback. The Docker engine (DOCKER_HOST, a unix socket) is still reachable.
"""

from __future__ import annotations

import json
from pathlib import Path

REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::111111111111:role/SageKmeansLocal"  # local mode only checks its form


def offline_environment(scratch: Path) -> dict[str, str]:
    config = scratch / "sagemaker-config.yaml"
    telemetry_off = {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}
    config.write_text(json.dumps({"SchemaVersion": "1.0", "SageMaker": telemetry_off}))
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(config),
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
    }
