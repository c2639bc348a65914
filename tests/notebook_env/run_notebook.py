"""Execute kmeans-BYOD.ipynb top to bottom, with no AWS account, one of two ways.

    .venv-notebook/bin/python tests/notebook_env/run_notebook.py --runtime-bin .venv/bin
    .venv-notebook/bin/python tests/notebook_env/run_notebook.py --local-image IMAGE

With --runtime-bin, against local stand-ins for AWS:
- AWS_ENDPOINT_URL: moto's server, on a free 127.0.0.1 port, wrapped by FakeSageMaker,
  which runs training and transform jobs with the real `kmeans/train` and `kmeans/serve`.
- AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME: RuntimeFront, which forwards InvokeEndpoint to a
  real `kmeans/serve` holding the model the notebook trained.
With --local-image, in the notebook's own local mode (KMEANS_LOCAL_MODE=1): the SDK runs
that image through docker-compose on the Docker engine, serving on a free port that the
kernel publishes on loopback only (loopback_ports, loaded by an IPython startup file).

Either way: fake credentials, region us-east-1, no AWS config files, the SDK's telemetry
off, and a dead HTTP(S) proxy for every host but loopback, so nothing can leave the
machine (offline.py). Then checks that the notebook really trained, served, transformed
and cleaned up. Exit 0 on success; the executed notebook is written to --output if given.
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
from collections.abc import Callable
from pathlib import Path

import boto3
import nbformat
from compose import containers, remove_containers
from doors import ROOT, Doors, free_port
from fake_sagemaker import FakeSageMaker
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from offline import REGION, offline_environment
from runtime_front import RuntimeFront
from werkzeug.serving import make_server

NOTEBOOK = ROOT / "kmeans-BYOD.ipynb"
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
    return {
        **offline_environment(scratch),
        "AWS_ENDPOINT_URL": aws_url,
        "AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME": runtime_url,
        # moto has no IAM policy simulator, which the SDK's role check calls.
        "SAGEMAKER_VALIDATE_ROLE": "false",
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


def execute(args: argparse.Namespace, check: Callable[[], list[str]]) -> list[str]:
    """Run every cell in this process's environment; then `check` what it left."""
    notebook = nbformat.read(args.notebook, as_version=4)
    runner = NotebookClient(
        notebook,
        timeout=args.cell_timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    try:
        runner.execute()
        return check()
    except CellExecutionError as error:
        return [f"a cell failed:\n{error}"]
    finally:
        if args.output:
            nbformat.write(notebook, args.output)


def with_moto(args: argparse.Namespace, scratch: Path) -> list[str]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per request
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
        problems = execute(args, lambda: check_aftermath(client, fake, front))
        if problems:
            print(f"serve logs:\n{doors.serve_logs()}", file=sys.stderr)
        return problems
    finally:
        front.shutdown()
        aws.shutdown()
        doors.stop()


def in_local_mode(args: argparse.Namespace, scratch: Path) -> list[str]:
    startup = scratch / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    here = Path(__file__).resolve().parent
    (startup / "00-loopback.py").write_text(
        f"import sys\nsys.path.insert(0, {str(here)!r})\nimport loopback_ports\n"
    )
    (scratch / "tmp").mkdir()
    os.environ.update(
        {
            **offline_environment(scratch),
            "KMEANS_LOCAL_MODE": "1",
            "KMEANS_IMAGE_URI": args.local_image,
            "KMEANS_LOCAL_PORT": str(free_port()),
            "IPYTHONDIR": str(scratch / "ipython"),
            "TMPDIR": str(scratch / "tmp"),  # the notebook's WORK folder goes there
        }
    )

    def check() -> list[str]:
        problems = [
            f"container {c['name']} still runs after the clean-up"
            for c in containers(scratch)
            if c["running"]
        ]
        if not any(c["exit_code"] == 0 for c in containers(scratch)):
            problems.append("no container of the SDK's exited 0: did anything run?")
        left = list((scratch / "tmp").glob("sage-kmeans-local-*"))
        if left:
            problems.append(f"the clean-up left {left}")
        return problems

    try:
        return execute(args, check)
    finally:
        remove_containers(scratch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    way = parser.add_mutually_exclusive_group(required=True)
    way.add_argument("--runtime-bin", type=Path, help="against moto: bin/ of the runtime venv")
    way.add_argument("--local-image", help="in local mode, with this image")
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--output", type=Path, help="write the executed notebook here")
    parser.add_argument("--cell-timeout", type=int, default=180)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up below, then go

    scratch = Path(tempfile.mkdtemp(prefix="kmeans-notebook-"))
    try:
        run = in_local_mode if args.local_image else with_moto
        problems = run(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for problem in problems:
        print(f"notebook check failed: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
