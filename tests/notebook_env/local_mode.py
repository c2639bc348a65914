"""Drive an image with the SageMaker SDK's local mode, as a user trying a BYOC image does.

    .venv-notebook/bin/python tests/notebook_env/local_mode.py SPEC.json REPORT.json

SPEC says what to do ("action") and with what; REPORT gets what happened, for the test
to judge (tests/test_sdk_local.py). Everything happens under SPEC's "root" folder:
- train: SDK v3 `ModelTrainer(training_mode=Mode.LOCAL_CONTAINER)` with `instance_count`
  hosts, `channels` {name: [folder, content type or null]} and `hyperparameters`; the SDK
  starts the image with no argument through docker-compose, one container per host. Reports
  the model.tar.gz and output.tar.gz it assembled, the error if any, and how each host ended.
- endpoint: sagemaker-core's `LocalSession`: create_model (`model`, a model.tar.gz),
  create_endpoint_config, create_endpoint, one invoke_endpoint per entry of `requests`
  ({body, content_type, accept, custom_attributes}), then delete all three. Reports the
  answers and how the serving containers ended.
- transform: the same model, then create_transform_job on the `input` folder with
  `settings` (BatchStrategy, MaxPayloadInMB, SplitType, AssembleWith, ContentType, Accept)
  into the `output` folder. Reports the job's status, the size of each request the SDK
  sent, and the containers' ends.
Serving uses `port` on loopback (loopback_ports). No AWS service is called (offline.py).
Containers the SDK leaves behind (it never removes them) are removed at the end.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import traceback
from pathlib import Path

import loopback_ports  # noqa: F401  (serving ports on 127.0.0.1)
from compose import containers, remove_containers
from offline import ROLE_ARN, offline_environment
from sagemaker.core.local.local_session import LocalSession
from sagemaker.train import ModelTrainer
from sagemaker.train.configs import Compute, InputData
from sagemaker.train.model_trainer import Mode


def train(spec: dict, root: Path) -> dict:
    trainer = ModelTrainer(
        training_image=spec["image"],
        role=ROLE_ARN,
        training_mode=Mode.LOCAL_CONTAINER,
        local_container_root=str(root),
        compute=Compute(instance_type="local", instance_count=spec["instance_count"]),
        hyperparameters=spec["hyperparameters"],
        base_job_name="sage-kmeans-local",
    )
    channels = [
        InputData(channel_name=name, data_source=folder, content_type=content_type)
        if content_type
        else InputData(channel_name=name, data_source=folder)
        for name, (folder, content_type) in spec["channels"].items()
    ]
    artifacts = root / "compressed_artifacts"
    report = {"model": str(artifacts / "model.tar.gz"), "output": str(artifacts / "output.tar.gz")}
    try:
        trainer.train(input_data_config=channels, wait=True, logs=True)
    except Exception as error:  # a failed job: the test reads output.tar.gz's failure file
        report["error"] = f"{type(error).__name__}: {error}"
    return {**report, "containers": containers(root)}


def local_session(spec: dict, root: Path) -> LocalSession:
    session = LocalSession()
    session.config = {"local": {"serving_port": spec["port"], "container_root": str(root)}}
    client = session.sagemaker_client
    client.create_model(
        ModelName="sage-kmeans",
        ExecutionRoleArn=ROLE_ARN,
        PrimaryContainer={
            "Image": spec["image"],
            "ModelDataUrl": f"file://{spec['model']}",
            "Environment": spec.get("environment", {}),
        },
    )
    return session


def endpoint(spec: dict, root: Path) -> dict:
    session = local_session(spec, root)
    client, runtime = session.sagemaker_client, session.sagemaker_runtime_client
    client.create_endpoint_config(
        EndpointConfigName="sage-kmeans",
        ProductionVariants=[
            {
                "VariantName": "AllTraffic",
                "ModelName": "sage-kmeans",
                "InitialInstanceCount": 1,
                "InstanceType": "local",
            }
        ],
    )
    answers = []
    try:
        client.create_endpoint(EndpointName="sage-kmeans", EndpointConfigName="sage-kmeans")
        status = client.describe_endpoint(EndpointName="sage-kmeans")["EndpointStatus"]
        for request in spec["requests"]:
            options = {
                "ContentType": request["content_type"],
                "Accept": request.get("accept"),
                "CustomAttributes": request.get("custom_attributes"),
            }
            reply = runtime.invoke_endpoint(
                Body=request["body"],
                EndpointName="sage-kmeans",
                **{key: value for key, value in options.items() if value is not None},
            )
            headers = {k.lower(): v for k, v in reply["ResponseMetadata"]["HTTPHeaders"].items()}
            answers.append(
                {
                    "status": reply["ResponseMetadata"]["HTTPStatusCode"],
                    "content_type": reply["ContentType"],
                    "custom_attributes": headers.get("x-amzn-sagemaker-custom-attributes"),
                    "body": reply["Body"].read().decode(),
                }
            )
    finally:
        client.delete_endpoint(EndpointName="sage-kmeans")
        client.delete_endpoint_config(EndpointConfigName="sage-kmeans")
        client.delete_model(ModelName="sage-kmeans")
    return {"status": status, "answers": answers, "containers": containers(root)}


def transform(spec: dict, root: Path) -> dict:
    session = local_session(spec, root)
    client, runtime = session.sagemaker_client, session.sagemaker_runtime_client
    settings = spec["settings"]
    sizes = []  # of the request bodies the SDK sent, as it split the input
    invoke = runtime.invoke_endpoint

    def counted(Body, *args, **kwargs):
        sizes.append(len(Body.encode() if isinstance(Body, str) else Body))
        return invoke(Body, *args, **kwargs)

    runtime.invoke_endpoint = counted
    try:
        client.create_transform_job(
            TransformJobName="sage-kmeans-transform",
            ModelName="sage-kmeans",
            BatchStrategy=settings["BatchStrategy"],
            MaxPayloadInMB=settings["MaxPayloadInMB"],
            TransformInput={
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"file://{spec['input']}"}
                },
                "ContentType": settings["ContentType"],
                "SplitType": settings["SplitType"],
            },
            TransformOutput={
                "S3OutputPath": f"file://{spec['output']}",
                "Accept": settings["Accept"],
                "AssembleWith": settings["AssembleWith"],
            },
            TransformResources={"InstanceType": "local", "InstanceCount": 1},
        )
        job = client.describe_transform_job(TransformJobName="sage-kmeans-transform")
    finally:
        client.delete_model(ModelName="sage-kmeans")
    return {
        "status": job["TransformJobStatus"],
        "request_sizes": sizes,
        "containers": containers(root),
    }


def main() -> int:
    spec_file, report_file = (Path(arg) for arg in sys.argv[1:3])
    spec = json.loads(spec_file.read_text())
    root = Path(spec["root"]).resolve()
    root.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up below, then go
    os.environ.update(offline_environment(root))
    action = {"train": train, "endpoint": endpoint, "transform": transform}[spec["action"]]
    try:
        report = action(spec, root)
    except Exception as error:
        traceback.print_exc()
        report = {"error": f"{type(error).__name__}: {error}", "containers": containers(root)}
    finally:
        remove_containers(root)
    report_file.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
