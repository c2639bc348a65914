"""Execute kmeans-BYOD.ipynb top to bottom, with AWS replaced by local stand-ins.

    .venv-notebook/bin/python tests/notebook_env/run_notebook.py --runtime-bin .venv/bin

- AWS_ENDPOINT_URL: moto's server, on a free 127.0.0.1 port, wrapped by FakeSageMaker,
  which runs training and transform jobs with the real `kmeans/train` and `kmeans/serve`.
- AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME: RuntimeFront, which forwards InvokeEndpoint to a
  real `kmeans/serve` holding the model the notebook trained.
- Fake credentials, region us-east-1, no AWS config files, the SDK's telemetry off, and a
  dead HTTP(S) proxy for every host but loopback, so nothing can leave the machine.

Then checks that the notebook really trained, served, transformed and cleaned up.
Exit 0 on success; the executed notebook is written to --output when given.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path

import boto3
import nbformat
from doors import ROOT, Doors
from fake_sagemaker import FakeSageMaker
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from runtime_front import RuntimeFront
from werkzeug.serving import make_server

NOTEBOOK = ROOT / "kmeans-BYOD.ipynb"
REGION = "us-east-1"
BUCKET = "sage-kmeans-notebook-test"
TRUST = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Principal": {"Service": "sagemaker.amazonaws.com"},
            "Action": "sts:AssumeRole",
        }
    ],
}


def fake_aws_environment(scratch: Path, aws_url: str, runtime_url: str) -> dict[str, str]:
    config = scratch / "sagemaker-config.yaml"
    telemetry_off = {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}
    config.write_text(json.dumps({"SchemaVersion": "1.0", "SageMaker": telemetry_off}))
    return {
        "AWS_ENDPOINT_URL": aws_url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": runtime_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": str(scratch / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(scratch / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(config),
        # moto has no IAM policy simulator, which the SDK's role check calls.
        "SAGEMAKER_VALIDATE_ROLE": "false",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "NO_PROXY": "127.0.0.1,localhost",
        "KMEANS_BUCKET": BUCKET,
    }


def check_aftermath(client, fake: FakeSageMaker, front: RuntimeFront) -> list[str]:
    """What the notebook should have done for real, and left behind: problems found."""
    problems = []
    for status in ("TrainingJobStatus", "TransformJobStatus"):
        runs = [job[status] for job in fake.jobs.values() if status in job]
        if runs != ["Completed"]:
            problems.append(f"expected one job with {status} Completed, found {runs}")
    if front.invocations < 2:
        problems.append(f"expected CSV and JSON invocations, the front saw {front.invocations}")
    sagemaker = client("sagemaker")
    for listing, key in [
        (sagemaker.list_endpoints, "Endpoints"),
        (sagemaker.list_endpoint_configs, "EndpointConfigs"),
        (sagemaker.list_models, "Models"),
    ]:
        if listing()[key]:
            problems.append(f"left behind: {key} {listing()[key]}")
    objects = client("s3").list_objects_v2(Bucket=BUCKET).get("Contents", [])
    if objects:
        problems.append(f"left behind in s3://{BUCKET}: {[o['Key'] for o in objects]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-bin", type=Path, required=True, help="bin/ of the runtime venv")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--output", type=Path, help="write the executed notebook here")
    parser.add_argument("--cell-timeout", type=int, default=180)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up below, then go

    scratch = Path(tempfile.mkdtemp(prefix="kmeans-notebook-"))
    doors = Doors(scratch, args.runtime_bin.resolve())
    moto = DomainDispatcherApplication(create_backend_app)
    # Port 0: the system picks a free one. The app is set below, once the URL is known.
    aws = make_server("127.0.0.1", 0, None, threaded=True, request_handler=MotoRequestHandler)
    aws_url = f"http://127.0.0.1:{aws.server_address[1]}"

    def client(service: str):
        return boto3.client(
            service,
            endpoint_url=aws_url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    fake = FakeSageMaker(moto, doors, client)
    aws.app = fake
    front = RuntimeFront(fake)
    threading.Thread(target=aws.serve_forever, daemon=True).start()
    front.thread.start()
    os.environ.update(fake_aws_environment(scratch, aws_url, front.url))
    try:
        role = client("iam").create_role(
            RoleName="SageKmeansNotebook", AssumeRolePolicyDocument=json.dumps(TRUST)
        )
        os.environ["KMEANS_ROLE_ARN"] = role["Role"]["Arn"]
        notebook = nbformat.read(args.notebook, as_version=4)
        runner = NotebookClient(
            notebook,
            timeout=args.cell_timeout,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT)}},
        )
        try:
            runner.execute()
            problems = check_aftermath(client, fake, front)
        except CellExecutionError as error:
            problems = [f"a cell failed:\n{error}"]
        finally:
            if args.output:
                nbformat.write(notebook, args.output)
        for problem in problems:
            print(f"notebook check failed: {problem}", file=sys.stderr)
        if problems:
            print(f"serve logs:\n{doors.serve_logs()}", file=sys.stderr)
        return 1 if problems else 0
    finally:
        front.shutdown()
        aws.shutdown()
        doors.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
