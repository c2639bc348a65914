"""The SageMaker runtime's data plane, in front of real `serve` processes.

botocore sends InvokeEndpoint as `POST /endpoints/<name>/invocations` to
AWS_ENDPOINT_URL_SAGEMAKER_RUNTIME. This server finds the endpoint's model through the
control plane (moto), has a real `serve` for it (FakeSageMaker.serve_model), forwards the
body with Content-Type, Accept and custom attributes to its /invocations, and answers
the way SageMaker does: the container's body on 2xx, a ModelError (424) otherwise.
"""

from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fake_sagemaker import FakeSageMaker

PATH = re.compile(r"^/endpoints/([^/]+)/invocations$")
CUSTOM = "X-Amzn-SageMaker-Custom-Attributes"
FORWARDED = ("Content-Type", "Accept", CUSTOM, "X-Amzn-SageMaker-Target-Model")


class RuntimeFront(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeSageMaker) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fake = fake
        self.invocations = 0
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: RuntimeFront

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        match = PATH.match(self.path.split("?")[0])
        if not match:
            return self.error(404, "UnknownOperationException", f"no route for {self.path}")
        name = urllib.parse.unquote(match.group(1))
        sagemaker = self.server.fake.client("sagemaker")
        try:
            endpoint = sagemaker.describe_endpoint(EndpointName=name)
        except sagemaker.exceptions.ClientError:
            return self.error(400, "ValidationError", f"Endpoint {name} not found.")
        if endpoint["EndpointStatus"] != "InService":
            return self.error(400, "ValidationError", f"Endpoint {name} is not InService.")
        config = sagemaker.describe_endpoint_config(
            EndpointConfigName=endpoint["EndpointConfigName"]
        )
        variant = config["ProductionVariants"][0]
        port = self.server.fake.serve_model(variant["ModelName"])
        headers = {h: self.headers[h] for h in FORWARDED if self.headers.get(h)}
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", data=body, headers=headers
        )
        self.server.invocations += 1
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                status, reply, reply_headers = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as error:
            message = error.read().decode(errors="replace")
            return self.error(
                424,
                "ModelError",
                f'Received client error ({error.code}) from primary with message "{message}"',
                OriginalStatusCode=error.code,
                OriginalMessage=message,
            )
        self.send_response(status)
        self.send_header("Content-Type", reply_headers.get("Content-Type", "application/json"))
        self.send_header("x-Amzn-Invoked-Production-Variant", variant["VariantName"])
        if reply_headers.get(CUSTOM):
            self.send_header(CUSTOM, reply_headers[CUSTOM])
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def error(self, status: int, code: str, message: str, **extra) -> None:
        payload = json.dumps({"message": message, **extra}).encode()
        self.send_response(status)
        self.send_header("x-amzn-ErrorType", code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args) -> None:
        pass
