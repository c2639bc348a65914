"""moto's SageMaker, plus the parts of the service the notebook needs and moto lacks.

moto records a training or transform job as Completed at once and runs nothing. Wrapped
by this WSGI middleware, CreateTrainingJob also runs the real `kmeans/train` in a thread
(channels from moto's S3, model.tar.gz and output.tar.gz back to it, the log to
CloudWatch Logs, metrics scraped with the job's own MetricDefinitions), and
CreateTransformJob sends the input through a real `kmeans/serve` and writes the `.out`
objects. Describe* calls then report that run: InProgress, then Completed or Failed with
the FailureReason the container wrote. Also, SageMaker leaves out optional structures that
are not set where moto answers `{}`, which the SDK's models reject: those are dropped.
Everything else is moto's.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from doors import Doors
from werkzeug.test import run_wsgi_app

LOG_GROUP = "/aws/sagemaker/TrainingJobs"


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def drop_empty(value):
    if isinstance(value, dict):
        return {k: drop_empty(v) for k, v in value.items() if v != {}}
    if isinstance(value, list):
        return [drop_empty(v) for v in value]
    return value


def tar_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


class FakeSageMaker:
    def __init__(self, moto_app, doors: Doors, client: Callable[[str], object]) -> None:
        self.moto_app = moto_app
        self.doors = doors
        self.client = client  # service name -> boto3 client for this same server
        self.jobs: dict[str, dict] = {}  # job name -> the fields its run decides
        self.servers: dict[tuple, int] = {}  # (model name, batch env) -> serve's port
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        if not target.startswith("SageMaker."):
            return self.moto_app(environ, start_response)
        action = target.removeprefix("SageMaker.")
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        answer, status, headers = run_wsgi_app(self.moto_app, environ, buffered=True)
        payload = b"".join(answer)
        if status.startswith("200"):
            request, response = json.loads(body or b"{}"), json.loads(payload or b"{}")
            if action in ("CreateTrainingJob", "CreateTransformJob"):
                self.start(action, request)
            elif action in ("DescribeTrainingJob", "DescribeTransformJob"):
                name = response.get("TrainingJobName") or response.get("TransformJobName")
                response.update(self.jobs.get(name, {}))
            payload = json.dumps(drop_empty(response)).encode()
        headers = [(k, v) for k, v in headers.items() if k.lower() != "content-length"]
        start_response(status, [*headers, ("Content-Length", str(len(payload)))])
        return [payload]

    def start(self, action: str, request: dict) -> None:
        if action == "CreateTrainingJob":
            name, run = request["TrainingJobName"], self.train
            self.jobs[name] = {"TrainingJobStatus": "InProgress", "SecondaryStatus": "Starting"}
        else:
            name, run = request["TransformJobName"], self.transform
            self.jobs[name] = {"TransformJobStatus": "InProgress"}

        def target() -> None:
            status = action.removeprefix("Create") + "Status"
            try:
                self.jobs[name].update(run(request))
            except Exception:  # whatever goes wrong fails the job, as on SageMaker
                reason = f"emulation error: {traceback.format_exc(limit=3)}"[:1024]
                self.jobs[name].update({status: "Failed", "FailureReason": reason})

        threading.Thread(target=target, name=name, daemon=True).start()

    # -- training ---------------------------------------------------------------------

    def train(self, job: dict) -> dict:
        name, s3 = job["TrainingJobName"], self.client("s3")
        base = self.doors.scratch / name
        channels = {}
        for channel in job.get("InputDataConfig", []):
            source = channel["DataSource"]["S3DataSource"]
            bucket, prefix = split_s3(source["S3Uri"])
            folder = base / "input" / "data" / channel["ChannelName"]
            for key in self.keys(bucket, prefix):
                target = folder / (key[len(prefix) :].lstrip("/") or Path(key).name)
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, key, str(target))
            mode = channel.get("InputMode") or job["AlgorithmSpecification"]["TrainingInputMode"]
            if mode == "Pipe":
                raise NotImplementedError("Pipe mode is not emulated, only File and FastFile")
            channels[channel["ChannelName"]] = {
                "TrainingInputMode": mode,
                "S3DistributionType": source.get("S3DataDistributionType", "FullyReplicated"),
                "RecordWrapperType": channel.get("RecordWrapperType", "None"),
                **({"ContentType": channel["ContentType"]} if "ContentType" in channel else {}),
            }
        self.jobs[name]["SecondaryStatus"] = "Training"
        limit = job.get("StoppingCondition", {}).get("MaxRuntimeInSeconds", 86400)
        env = {
            **job.get("Environment", {}),
            "TRAINING_JOB_NAME": name,
            "TRAINING_JOB_ARN": f"arn:aws:sagemaker:us-east-1:123456789012:training-job/{name}",
        }
        code, log, base = self.doors.train(
            name, job.get("HyperParameters", {}), channels, env, timeout=min(limit, 120)
        )
        self.put_log(name, log)
        output = job["OutputDataConfig"]["S3OutputPath"].rstrip("/") + f"/{name}/output"
        bucket, prefix = split_s3(output)
        if code != 0:
            failure = base / "output" / "failure"
            reason = failure.read_text() if failure.exists() else f"exit code {code}"
            return {
                "TrainingJobStatus": "Failed",
                "SecondaryStatus": "Failed",
                "FailureReason": f"AlgorithmError: {reason}"[:1024],
            }
        s3.put_object(Bucket=bucket, Key=f"{prefix}/model.tar.gz", Body=tar_folder(base / "model"))
        s3.put_object(
            Bucket=bucket,
            Key=f"{prefix}/output.tar.gz",
            Body=tar_folder(base / "output" / "data"),
        )
        metrics = []
        for definition in job["AlgorithmSpecification"].get("MetricDefinitions", []):
            found = re.findall(definition["Regex"], log)
            if found:
                metrics.append(
                    {
                        "MetricName": definition["Name"],
                        "Value": float(found[-1]),
                        "Timestamp": time.time(),
                    }
                )
        return {
            "TrainingJobStatus": "Completed",
            "SecondaryStatus": "Completed",
            "FinalMetricDataList": metrics,
            # moto puts a canned definition of its own here; SageMaker echoes the job's.
            "AlgorithmSpecification": job["AlgorithmSpecification"],
        }

    def put_log(self, name: str, log: str) -> None:
        logs, now = self.client("logs"), int(time.time() * 1000)
        with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
            logs.create_log_group(logGroupName=LOG_GROUP)
        stream = f"{name}/algo-1-{now // 1000}"
        logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        events = [{"timestamp": now, "message": line} for line in log.splitlines() if line]
        if events:
            logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream, logEvents=events)

    def keys(self, bucket: str, prefix: str) -> list[str]:
        pages = (
            self.client("s3")
            .get_paginator("list_objects_v2")
            .paginate(Bucket=bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    # -- hosting and batch transform --------------------------------------------------

    def serve_model(self, model_name: str, env: dict[str, str] | None = None) -> int:
        """The port of a real `serve` for this SageMaker model, started on first use."""
        env = env or {}
        with self.lock:
            key = (model_name, tuple(sorted(env.items())))
            if key not in self.servers:
                model = self.client("sagemaker").describe_model(ModelName=model_name)
                container = model.get("PrimaryContainer") or model["Containers"][0]
                bucket, key_ = split_s3(container["ModelDataUrl"])
                archive = self.client("s3").get_object(Bucket=bucket, Key=key_)["Body"].read()
                folder = f"serve-{model_name}-{len(self.servers)}"
                self.servers[key] = self.doors.serve(
                    folder, archive, {**container.get("Environment", {}), **env}
                )
            return self.servers[key]

    def transform(self, job: dict) -> dict:
        source = job["TransformInput"]["DataSource"]["S3DataSource"]
        output = job["TransformOutput"]
        env = {"SAGEMAKER_BATCH": "true", **job.get("Environment", {})}
        if "BatchStrategy" in job:
            strategy = {"MultiRecord": "MULTI_RECORD", "SingleRecord": "SINGLE_RECORD"}
            env["SAGEMAKER_BATCH_STRATEGY"] = strategy[job["BatchStrategy"]]
        if "MaxPayloadInMB" in job:
            env["SAGEMAKER_MAX_PAYLOAD_IN_MB"] = str(job["MaxPayloadInMB"])
        if "MaxConcurrentTransforms" in job:
            env["SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"] = str(job["MaxConcurrentTransforms"])
        port = self.serve_model(job["ModelName"], env)
        single = job.get("BatchStrategy") == "SingleRecord"
        limit = job.get("MaxPayloadInMB", 6) * 1024 * 1024
        joiner = b"\n" if output.get("AssembleWith") == "Line" else b""
        headers = {"Content-Type": job["TransformInput"].get("ContentType", "")}
        if output.get("Accept"):
            headers["Accept"] = output["Accept"]
        s3 = self.client("s3")
        in_bucket, prefix = split_s3(source["S3Uri"])
        out_bucket, out_prefix = split_s3(output["S3OutputPath"])
        for key in self.keys(in_bucket, prefix):
            body = s3.get_object(Bucket=in_bucket, Key=key)["Body"].read()
            answers = []
            for chunk in self.batches(body, job["TransformInput"].get("SplitType"), single, limit):
                request = urllib.request.Request(
                    f"http://127.0.0.1:{port}/invocations", data=chunk, headers=headers
                )
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        reply = answer.read()
                except urllib.error.HTTPError as error:
                    message = error.read().decode(errors="replace")
                    reason = f"ClientError: {key}: the container answered {error.code}: {message}"
                    return {"TransformJobStatus": "Failed", "FailureReason": reason[:1024]}
                answers.append(reply.rstrip(b"\n") if joiner else reply)
            name = key[len(prefix) :].lstrip("/") or Path(key).name
            out_key = f"{out_prefix.rstrip('/')}/{name}.out".lstrip("/")
            s3.put_object(Bucket=out_bucket, Key=out_key, Body=joiner.join(answers) + joiner)
        return {"TransformJobStatus": "Completed"}

    @staticmethod
    def batches(body: bytes, split: str | None, single: bool, limit: int) -> list[bytes]:
        if split != "Line":
            return [body]
        records = [line + b"\n" for line in body.splitlines() if line.strip()]
        if single:
            return records
        chunks, current = [], b""
        for record in records:
            if current and len(current) + len(record) > limit:
                chunks.append(current)
                current = b""
            current += record
        return [*chunks, current] if current else chunks
