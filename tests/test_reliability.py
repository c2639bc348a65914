"""`serve` under bad requests, slow models and faults, with the real nginx and gunicorn on
loopback: every error any layer sends is one line of JSON; compressed bodies are inflated
within the payload limit; a request past the timeout frees its worker; a killed worker, a
killed nginx and SIGTERM under load lose no request that was not in flight.

The soak and the slow-client timeout take minutes: they run in `make reliability` only
(SAGE_KMEANS_RELIABILITY=1), which also gathers the figures recorded here.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import IRIS, Server, free_port
from figures import record
from slow_estimator import BUSY, SLEEP, write_model
from test_serve import alive, csv_of_size, request_bodies
from threads import Threads

from kmeans import supervisor
from kmeans.environment import Environment

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
    reason="nginx is not installed (the README's test command installs it)",
)
LONG = pytest.mark.skipif(
    os.environ.get("SAGE_KMEANS_RELIABILITY") != "1",
    reason="takes minutes: runs in `make reliability` (SAGE_KMEANS_RELIABILITY=1)",
)
TESTS = Path(__file__).resolve().parent
ROWS = np.loadtxt(IRIS, delimiter=",")
ROW = b"5.1,3.5,1.4,0.2"


def exchange(port: int, raw: bytes, timeout: float = 30) -> tuple[int | None, dict, bytes]:
    """Send raw bytes; read one response, or up to the server's close. (None, {}, b"")
    when the server closed without a byte."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        # nginx may answer and close before the end of a request it refuses
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.sendall(raw)
        while True:
            try:
                chunk = connection.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, found, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if found and length and len(body) >= int(length.group(1)):
                break
    if not data:
        return None, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status.split()[1]), headers, body


def post(headers: bytes, body: bytes = ROW, path: bytes = b"/invocations") -> bytes:
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
        + headers
        + b"\r\n"
        + body
    )


def assert_json_error(status: int | None, headers: dict, body: bytes, expected: int) -> str:
    assert status == expected, (status, body[:300])
    assert headers["content-type"] == "application/json", (headers, body[:300])
    document = json.loads(body)
    assert list(document) == ["error"] and document["error"], document
    assert "\n" not in document["error"] and "<" not in document["error"]
    return document["error"]


def answered_json_error(response: requests.Response, expected: int) -> str:
    headers = {"content-type": response.headers["Content-Type"]}
    return assert_json_error(response.status_code, headers, response.content, expected)


def process_tree(root: int) -> dict[int, str]:
    """`root` and all its descendants, read from /proc, each named by its role in the
    stack: serve, gunicorn master or worker, nginx master or worker."""
    parents, names = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            state, parent = text.rsplit(")", 1)[1].split()[:2]
            if state != "Z":
                pid = int(stat.parent.name)
                parents[pid], names[pid] = int(parent), text[text.index("(") + 1 : text.rindex(")")]
    roles = {root: "serve"}
    frontier = [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        for pid in children:
            above = roles[parents[pid]]
            kind = "nginx" if names[pid].startswith("nginx") else "gunicorn"
            roles[pid] = f"{kind} master" if above == "serve" else f"{above.split()[0]} worker"
        frontier = children
    return roles


def memory_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory: pytest.TempPathFactory):
    """One server for the tests that only send requests (module scope: fast)."""
    running = Server(trained, tmp_path_factory.mktemp("reliability") / "serve.log")
    yield running.wait_ready()
    assert running.stop() == 0


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An /opt/ml tree whose model is a user's SlowKMeans in model.joblib, alone."""
    base = tmp_path_factory.mktemp("slow") / "ml"
    write_model(base / "model", ROWS)
    return base


def slow_server(start_server, base: Path, wait: bool = True, **env: str) -> Server:
    return start_server(base, wait, PYTHONPATH=str(TESTS), **env)


def invoke(url: str, body: bytes = ROW, timeout: float = 120, **headers: str) -> requests.Response:
    return requests.post(
        url + "/invocations",
        data=body,
        headers={"Content-Type": "text/csv", **headers},
        timeout=timeout,
    )


# --- every error is one line of JSON ---------------------------------------------------

BIG = 7 << 20
REFUSED = {
    "garbage request line": (b"GARBAGE\r\n\r\n", 400),
    "non-numeric Content-Length": (post(b"Content-Length: abc\r\n"), 400),
    "two Content-Lengths": (post(b"Content-Length: 15\r\nContent-Length: 16\r\n"), 400),
    "Transfer-Encoding and Content-Length": (
        post(
            b"Transfer-Encoding: chunked\r\nContent-Length: 15\r\n",
            b"f\r\n" + ROW + b"\r\n0\r\n\r\n",
        ),
        400,
    ),
    "bad chunk size": (post(b"Transfer-Encoding: chunked\r\n", b"zz\r\n1\r\n0\r\n\r\n"), 400),
    "HTTP/1.1 without Host": (b"GET /ping HTTP/1.1\r\n\r\n", 400),
    "folded header": (post(b"Content-Length: 15\r\nX-A: a\r\n b\r\n"), 400),
    "bad percent escape": (b"GET /pi%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "lower-case method": (b"get /ping HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "64 KB header": (post(b"X-Big: " + b"a" * 65536 + b"\r\nContent-Length: 15\r\n"), 431),
    "20 KB request line": (b"GET /ping?" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "HTTP/2.0 request line": (b"GET /ping HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "unknown Transfer-Encoding": (post(b"Transfer-Encoding: gzip\r\n"), 501),
    "TRACE": (b"TRACE /ping HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    "7 MB body": (post(f"Content-Length: {BIG}\r\n".encode(), b"1" * BIG), 413),
    "unknown path": (b"GET /models HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "the error pages themselves": (b"GET /.error/400 HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    "GET /invocations (Flask)": (b"GET /invocations HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    # nginx lets these through and gunicorn refuses them: its answer must be JSON too
    "control byte in Accept (gunicorn)": (
        post(b"Content-Length: 15\r\nAccept: text/\x01csv\r\n"),
        400,
    ),
    "DEL byte in a header (gunicorn)": (post(b"Content-Length: 15\r\nX-A: a\x7fb\r\n"), 400),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_every_refusal_is_one_line_of_json(server, name) -> None:
    raw, expected = REFUSED[name]
    status, headers, body = exchange(server.port, raw)
    error = assert_json_error(status, headers, body, expected)
    if expected == 405:
        assert headers["allow"]
    record("refusal", case=name, status=status, error=error)


ACCEPTED = {  # within nginx's limits, so gunicorn must not refuse them with its smaller ones
    "6 KB query string": b"GET /ping?" + b"a" * 6000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "200 headers": post(
        b"".join(b"X-H%d: 1\r\n" % i for i in range(200)) + b"Content-Length: 15\r\n"
    ),
    "8000-byte header": post(b"X-Big: " + b"a" * 8000 + b"\r\nContent-Length: 15\r\n"),
    "27 KB of headers": post(
        b"".join(b"X-H%d: %s\r\n" % (i, b"a" * 6000) for i in range(4)) + b"Content-Length: 15\r\n"
    ),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_what_nginx_accepts_gunicorn_accepts(server, name) -> None:
    status, _, body = exchange(server.port, ACCEPTED[name])
    assert status == 200, body[:300]


def test_a_server_without_gunicorn_answers_502_json(tmp_path: Path) -> None:
    """nginx with serve's own configuration and nothing behind it."""
    port = free_port()
    env = Environment.read(
        {"SAGEMAKER_BIND_TO_HOST": "127.0.0.1", "SAGEMAKER_BIND_TO_PORT": str(port)}
    )
    config = supervisor.write_nginx_config(env, tmp_path)
    nginx = subprocess.Popen(
        [
            supervisor._nginx_binary(),
            "-e",
            "stderr",
            "-p",
            str(tmp_path),
            "-c",
            str(config),
            "-g",
            "daemon off;",
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, headers, body = exchange(port, post(b"Content-Length: 15\r\n"))
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert "not available" in assert_json_error(status, headers, body, 502)
    finally:
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait(30)


# --- compressed bodies -----------------------------------------------------------------


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODED = {
    "gzip": lambda body: gzip.compress(body),
    "x-gzip": lambda body: gzip.compress(body),
    "deflate": zlib.compress,  # zlib-wrapped, as RFC 9110 says
    "deflate (raw)": deflate_raw,  # as some clients send it
    "GZIP, identity": lambda body: gzip.compress(body),
    "gzip (two members)": lambda body: gzip.compress(body[:100]) + gzip.compress(body[100:]),
}


@pytest.mark.parametrize("name", list(ENCODED))
@pytest.mark.parametrize(
    "content_type,body",
    [request_bodies(ROWS[::3])[n] for n in ("csv", "json-instances-features", "npy")],
)
def test_compressed_bodies_answer_as_plain_ones(server, name, content_type, body) -> None:
    body = body.encode() if isinstance(body, str) else body
    coding = name.split(" (")[0]
    plain = invoke(server.url, body, **{"Content-Type": content_type})
    compressed = invoke(
        server.url,
        ENCODED[name](body),
        **{"Content-Type": content_type, "Content-Encoding": coding},
    )
    assert plain.status_code == 200 and compressed.status_code == 200, compressed.text
    assert compressed.content == plain.content


def test_a_5_mb_csv_sent_gzipped_passes(server) -> None:
    body = csv_of_size(5 << 20)
    response = invoke(
        server.url, gzip.compress(body), **{"Content-Encoding": "gzip", "Accept": "text/csv"}
    )
    assert response.status_code == 200, response.text[:300]
    assert response.text.count("\n") + 1 == body.count(b"\n")


def test_a_decompression_bomb_gets_413_without_being_inflated(server) -> None:
    """1 GiB of zeros in 1 MB of gzip: refused once 6 MB are out, worker memory flat."""
    member = gzip.compress(b"0" * (16 << 20))
    bomb = member * 64
    workers = server.pids()["workers"]
    before = {pid: memory_kb(pid, "VmHWM") for pid in workers}
    response = invoke(server.url, bomb, **{"Content-Encoding": "gzip"})
    error = answered_json_error(response, 413)
    assert "SAGEMAKER_MAX_PAYLOAD_IN_MB" in error
    grown = max((memory_kb(pid, "VmHWM") - before[pid]) / 1024 for pid in workers)
    assert grown < 64, f"a worker's peak memory grew by {grown:.0f} MB"
    record(
        "bomb",
        compressed_mb=len(bomb) / 2**20,
        inflated_mb=1024,
        worker_peak_growth_mb=round(grown, 1),
    )


@pytest.mark.parametrize(
    "coding,body,status,message",
    [
        ("br", ROW, 415, "Content-Encoding 'br' is not supported; use gzip, deflate or identity"),
        ("gzip, compress", gzip.compress(ROW), 415, "Content-Encoding 'compress' is not supported"),
        ("gzip", ROW, 400, "body is not valid gzip data"),
        (
            "gzip",
            gzip.compress(ROW * 100)[:40],
            400,
            "body is not valid gzip data: it ends too soon",
        ),
        ("deflate", b"\x00" * 20, 400, "body is not valid deflate data"),
    ],
)
def test_bad_encodings_are_refused_with_one_line(server, coding, body, status, message) -> None:
    response = invoke(server.url, body, **{"Content-Encoding": coding})
    error = answered_json_error(response, status)
    assert error.startswith(message), error


# --- timeouts --------------------------------------------------------------------------


def wait_for_log(server: Server, text: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while server.output().count(text) < count:
        assert time.monotonic() < deadline, (
            f"{count} x {text!r} not in the log:\n{server.output()[-3000:]}"
        )
        time.sleep(0.1)


def seconds_until_answered(url: str, limit: float = 60) -> float:
    """Send a one-record request each second (giving up on each after 1 s) until one is
    answered 200: how long the server took to have a free worker again."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        with contextlib.suppress(requests.Timeout):
            if invoke(url, timeout=1).status_code == 200:
                return time.monotonic() - started
    raise AssertionError(f"no worker free within {limit} s")


def test_requests_past_the_timeout_free_their_workers(slow_model, start_server) -> None:
    """Six requests to a user's estimator that sleeps a minute, on 2 workers with a 4 s
    timeout: all six get 504 at 4 s, both workers are replaced soon after, the four that
    waited in the queue are never worked on, and every later request is answered."""
    timeout = 4
    server = slow_server(
        start_server,
        slow_model,
        SAGEMAKER_MODEL_SERVER_WORKERS="2",
        SAGEMAKER_MODEL_SERVER_TIMEOUT=str(timeout),
    )
    slow = f"{SLEEP + 60},3,1,0.2".encode()
    started = time.monotonic()
    answers: list[tuple[float, requests.Response]] = []

    def call() -> None:
        response = invoke(server.url, slow)
        answers.append((time.monotonic() - started, response))

    callers = Threads()
    for _ in range(6):
        callers.start(call)
    callers.join(180)
    assert len(answers) == 6
    for elapsed, response in answers:
        error = answered_json_error(response, 504)
        assert "SAGEMAKER_MODEL_SERVER_TIMEOUT" in error
        assert elapsed >= timeout - 0.5
    freed = seconds_until_answered(server.url)
    statuses = [invoke(server.url, timeout=30).status_code for _ in range(20)]
    assert statuses == [200] * 20
    wait_for_log(server, "WORKER TIMEOUT", 2)
    wait_for_log(server, "the model server timeout is 4 s (SAGEMAKER_MODEL_SERVER_TIMEOUT)", 2)
    wait_for_log(server, "invocation refused (499)", 4)
    record(
        "timeout",
        timeout_s=timeout,
        slow_requests=6,
        workers=2,
        freed_after_504_s=round(freed, 2),
        skipped=4,
    )


def test_a_worker_stuck_in_c_code_is_killed_and_replaced(slow_model, start_server) -> None:
    server = slow_server(
        start_server,
        slow_model,
        SAGEMAKER_MODEL_SERVER_WORKERS="1",
        SAGEMAKER_MODEL_SERVER_TIMEOUT="3",
    )
    stuck = invoke(server.url, f"{BUSY},3,1,0.2".encode())
    assert stuck.status_code == 504
    freed = seconds_until_answered(server.url)
    assert [invoke(server.url, timeout=30).status_code for _ in range(10)] == [200] * 10
    wait_for_log(server, "was sent SIGKILL")
    record("timeout_c_code", timeout_s=3, freed_after_504_s=round(freed, 2))


def test_sigterm_with_abandoned_work_exits_0_within_15_s(slow_model, start_server) -> None:
    """Clients that gave up on requests still computing (default 60 s timeout): nginx has
    nothing left in flight, so gunicorn is stopped at once instead of waiting for them."""
    server = slow_server(start_server, slow_model, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    for _ in range(2):
        with pytest.raises(requests.Timeout):
            invoke(server.url, f"{SLEEP + 120},3,1,0.2".encode(), timeout=1)
    time.sleep(0.5)
    stopping = time.monotonic()
    code = server.stop()
    took = time.monotonic() - stopping
    assert code == 0
    assert took < 15, f"serve took {took:.1f} s to stop"
    assert set(process_tree(server.process.pid)) <= {server.process.pid}
    record("sigterm_abandoned", seconds=round(took, 2), abandoned_requests=2)


# --- faults under load -----------------------------------------------------------------


class Load:
    """Client threads sending one-record requests until stopped; the outcome of every
    request counted: answered (with its status), cut short, closed unanswered, timed out
    (no answer within `timeout` seconds), or refused (no connection)."""

    def __init__(
        self,
        url: str,
        threads: int,
        body: bytes = ROW,
        fresh_connections: bool = False,
        timeout: float = 60,
    ) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.address, self.body, self.fresh = (host, int(port)), body, fresh_connections
        self.timeout = timeout
        self.outcomes: list[tuple[str, int | None, bytes]] = []
        self.attempts = [0] * threads  # one count per client: no two threads add to one
        self.running = True
        self.clients = Threads()
        for client in range(threads):
            self.clients.start(self._client, client)

    def _client(self, client: int) -> None:
        connection = None
        while self.running:
            self.attempts[client] += 1
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(*self.address, timeout=self.timeout)
                    connection.connect()
            except TimeoutError:
                self.outcomes.append(("timed out", None, b""))
                connection = None
                continue
            except OSError:
                self.outcomes.append(("refused", None, b""))
                connection = None
                time.sleep(0.01)
                continue
            try:
                headers = {"Content-Type": "text/csv", "User-Agent": "reliability-load"}
                if self.fresh:
                    headers["Connection"] = "close"
                connection.request("POST", "/invocations", self.body, headers)
                response = connection.getresponse()
                self.outcomes.append(("answered", response.status, response.read()))
                if self.fresh or response.will_close:
                    connection.close()
                    connection = None
            except http.client.IncompleteRead as error:  # the answer stopped part way
                self.outcomes.append(("cut short", response.status, error.partial))
                connection.close()
                connection = None
            except TimeoutError:
                self.outcomes.append(("timed out", None, b""))
                connection.close()
                connection = None
            except (http.client.HTTPException, ConnectionResetError, BrokenPipeError):
                self.outcomes.append(("closed unanswered", None, b""))
                connection.close()
                connection = None

    def stop(self) -> list[tuple[str, int | None, bytes]]:
        """Every client's outcomes, once each has finished its request in flight (a
        connection and a request, each within the timeout) and none was lost."""
        self.running = False
        self.clients.join(3 * self.timeout)
        assert len(self.outcomes) == sum(self.attempts), (len(self.outcomes), self.attempts)
        return self.outcomes


def test_load_counts_a_request_that_times_out() -> None:
    """A loopback listener that takes connections and never answers: every request the
    load sends is counted as timed out, none is lost, and every client stops."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        load = Load(f"http://127.0.0.1:{silent.getsockname()[1]}", threads=2, timeout=0.5)
        time.sleep(1.6)
        outcomes = load.stop()
    assert len(outcomes) >= 2 * 3, outcomes  # 1.6 s of 0.5 s timeouts, in each client
    assert {kind for kind, _, _ in outcomes} == {"timed out"}


def test_a_worker_killed_under_load_loses_only_its_request_in_flight(trained, start_server) -> None:
    server = start_server(trained, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    load = Load(server.url, threads=6)
    time.sleep(1.5)
    victim = server.pids()["workers"][0]
    os.kill(victim, signal.SIGKILL)
    time.sleep(1.5)
    outcomes = load.stop()
    answered = [status for kind, status, _ in outcomes if kind == "answered"]
    failed = [outcome for outcome in outcomes if outcome[:2] != ("answered", 200)]
    assert len(failed) <= 1, failed[:5]  # a sync worker holds one request at a time
    for kind, status, body in failed:
        # nginx answers 502 for it; or, if the worker died between writing the answer's
        # headers and its body, the client sees that answer cut short
        assert kind == "cut short" or (status == 502 and json.loads(body)["error"]), failed
    assert answered.count(200) > 100 and server.process.poll() is None
    record("worker_killed", requests=len(outcomes), failed=len(failed))


def test_killing_nginx_under_load_stops_serve_and_everything_it_started(
    trained, start_server
) -> None:
    server = start_server(trained, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    tree = process_tree(server.process.pid)
    load = Load(server.url, threads=4)
    time.sleep(1)
    killed = time.monotonic()
    os.kill(server.pids()["nginx"][0], signal.SIGKILL)
    code = server.process.wait(60)
    took = time.monotonic() - killed
    outcomes = load.stop()
    assert code != 0 and "nginx exited unexpectedly" in server.output()
    kinds = [kind for kind, _, _ in outcomes]
    assert ("answered", 200) in [outcome[:2] for outcome in outcomes], "no load was served"
    assert "timed out" not in kinds, kinds.count("timed out")  # every socket closed with nginx
    time.sleep(0.5)
    left = {pid: name for pid, name in tree.items() if pid != server.process.pid and alive(pid)}
    assert left == {}, f"left running: {left}"
    record("nginx_killed", exit_code=code, seconds_to_exit=round(took, 2))


def test_sigterm_under_load_answers_every_accepted_request(slow_model, start_server) -> None:
    """New connections keep coming when SIGTERM arrives, and one request then in flight
    takes 3 s: every request nginx accepted is answered 200, the others are refused."""
    server = slow_server(start_server, slow_model, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    load = Load(server.url, threads=4, fresh_connections=True)
    time.sleep(2)
    in_flight: list[requests.Response] = []
    slow = Threads()
    slow.start(lambda: in_flight.append(invoke(server.url, f"{SLEEP + 3},3,1,0.2".encode())))
    time.sleep(1)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(30) == 0
    took = time.monotonic() - signalled
    slow.join(150)
    outcomes = load.stop()
    assert len(in_flight) == 1, in_flight
    assert in_flight[0].status_code == 200, in_flight[0].text
    answered = [status for kind, status, _ in outcomes if kind == "answered"]
    assert set(answered) == {200} and len(answered) >= 10, answered
    # nginx's access log holds every request it accepted, with the status it sent
    logged = re.findall(r'"POST /invocations HTTP/1.1" (\d+) .*"reliability-load"', server.output())
    assert set(logged) == {"200"} and len(logged) == len(answered), (len(logged), len(answered))
    kinds = [kind for kind, _, _ in outcomes]
    assert "timed out" not in kinds, kinds.count("timed out")
    record(
        "sigterm_under_load",
        answered=len(answered),
        refused=kinds.count("refused"),
        closed_before_read=kinds.count("closed unanswered"),
        seconds_to_exit=round(took, 2),
    )


# --- long runs: `make reliability` ------------------------------------------------------


@LONG
def test_slow_clients_are_disconnected_without_an_html_answer(server) -> None:
    """nginx waits 60 s for a request's headers or body, then closes: no 408 page."""
    results = {}

    def slow_client(name: str, raw: bytes) -> None:
        started = time.monotonic()
        results[name] = (exchange(server.port, raw, timeout=120), time.monotonic() - started)

    clients = Threads()
    clients.start(slow_client, "headers", b"POST /invocations HTTP/1.1\r\nHost: x\r\n")
    clients.start(slow_client, "body", post(b"Content-Length: 100\r\n", b"1,2"))
    clients.join(180)  # a client still waiting after 120 s has raised TimeoutError
    assert sorted(results) == ["body", "headers"]
    for name, ((status, _, body), took) in results.items():
        assert status is None and body == b"", (name, status, body[:200])
        assert 55 < took < 120, (name, took)
        record("slow_client", part=name, seconds_to_close=round(took, 1))


SOAK_SECONDS = float(os.environ.get("SAGE_KMEANS_SOAK_SECONDS", "300"))
SOAK_CLIENTS, SOAK_REQUEST_TIMEOUT = 4, 60


def soak_bodies() -> list[tuple[str, dict[str, str], bytes, int]]:
    """(name, headers, body, records) of mixed sizes, types and encodings."""
    rng = np.random.default_rng(5)
    out = []
    for rows in (1, 100, 5000, 20000):
        batch = ROWS[rng.integers(0, len(ROWS), rows)] + rng.normal(0, 0.01, (rows, 4))
        for name, (content_type, body) in request_bodies(batch).items():
            if rows == 20000 and name not in ("csv", "json-instances-features"):
                continue
            body = body.encode() if isinstance(body, str) else body
            out.append((f"{name} x{rows}", {"Content-Type": content_type}, body, rows))
        csv = request_bodies(batch)["csv"][1].encode()
        out.append(
            (
                f"csv gzip x{rows}",
                {"Content-Type": "text/csv", "Content-Encoding": "gzip"},
                gzip.compress(csv),
                rows,
            )
        )
    return out


@LONG
def test_soak_mixed_traffic_no_errors_and_flat_memory(trained, start_server) -> None:
    server = start_server(trained, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    bodies = soak_bodies()
    accepts = ["application/json", "text/csv", "application/jsonlines", "*/*"]
    errors: list[str] = []
    tallies = [{"requests": 0, "records": 0, "bytes": 0} for _ in range(SOAK_CLIENTS)]
    running = True

    def client(seed: int) -> None:
        chooser, counts = random.Random(seed), tallies[seed]
        with requests.Session() as session:
            while running:
                name, headers, body, rows = chooser.choice(bodies)
                accept = chooser.choice(accepts)
                response = session.post(
                    server.url + "/invocations",
                    data=body,
                    headers={**headers, "Accept": accept, "User-Agent": "reliability-soak"},
                    timeout=SOAK_REQUEST_TIMEOUT,
                )
                answers = (
                    len(response.json()["predictions"])
                    if response.headers.get("Content-Type") == "application/json" and response.ok
                    else response.text.count("\n") + 1
                )
                if response.status_code != 200 or answers != rows:
                    errors.append(f"{name} {accept}: {response.status_code}, {answers} answers")
                counts["requests"] += 1
                counts["records"] += rows
                counts["bytes"] += len(body)

    clients = Threads()
    for seed in range(SOAK_CLIENTS):
        clients.start(client, seed)
    samples: dict[int, list[tuple[float, int]]] = {}
    names = process_tree(server.process.pid)
    started = time.monotonic()
    while time.monotonic() - started < SOAK_SECONDS:
        for pid in names:
            try:
                samples.setdefault(pid, []).append((time.monotonic() - started, memory_kb(pid)))
            except (OSError, AssertionError):
                errors.append(f"process {pid} ({names[pid]}) disappeared")
        time.sleep(5)
    running = False
    clients.join(2 * SOAK_REQUEST_TIMEOUT)
    assert errors == [], errors[:10]
    # Each client sends one request after another, each ending within its timeout, for
    # the whole soak: it cannot have sent fewer than this unless it stopped.
    least = max(1, math.ceil(SOAK_SECONDS / SOAK_REQUEST_TIMEOUT))
    sent = [counts["requests"] for counts in tallies]
    assert min(sent) >= least, (sent, least)
    served = lambda: len(  # noqa: E731
        re.findall(r'"POST /invocations HTTP/1.1" 200 .*"reliability-soak"', server.output())
    )
    deadline = time.monotonic() + 10  # nginx logs a request once its answer is sent
    while served() != sum(sent) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert served() == sum(sent), (served(), sent)
    warm = min(60.0, SOAK_SECONDS / 5)  # allocators settle on the first large bodies
    drift = {}
    for pid, series in samples.items():
        settled = [kb / 1024 for at, kb in series if at >= warm]
        window = max(1, len(settled) // 5)  # medians of the first and last fifths
        first, last = np.median(settled[:window]), np.median(settled[-window:])
        drift[pid] = {
            "process": names[pid],
            "first_mb": round(float(first), 1),
            "last_mb": round(float(last), 1),
            "growth_mb": round(float(last - first), 1),
            "range_mb": round(max(settled) - min(settled), 1),
        }
    record(
        "soak",
        seconds=SOAK_SECONDS,
        warm_up_s=warm,
        errors=len(errors),
        **{key: sum(counts[key] for counts in tallies) for key in tallies[0]},
        processes=list(drift.values()),
    )
    for pid, figures in drift.items():
        assert figures["growth_mb"] <= 16, (pid, figures)
