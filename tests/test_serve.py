"""`kmeans/serve` with real nginx and gunicorn, on loopback, against a model `train` made;
and the helper (tests/threads.py) its concurrent tests join their client threads with."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import joblib
import numpy as np
import protobuf_records
import pytest
import requests
from conftest import IRIS, SERVE, entrypoint_env, free_port
from threads import Threads

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
    reason="nginx is not installed (the README's test command installs it)",
)

ROWS = np.loadtxt(IRIS, delimiter=",")[::7]
CSV_BODY = "\n".join(",".join(f"{v:g}" for v in row) for row in ROWS)


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory: pytest.TempPathFactory):
    from conftest import Server

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    running = Server(trained, log, SAGEMAKER_MODEL_SERVER_WORKERS="2").wait_ready()
    yield running
    assert running.stop() == 0


def model_says(trained: Path, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What the saved model itself says for `rows`: their clusters, and the float64
    distance to each one's centre (answers carry it rounded to float32)."""
    estimator = joblib.load(trained / "model" / "model.joblib")
    labels = estimator.predict(rows)
    return labels, np.linalg.norm(rows - estimator.cluster_centers_[labels], axis=1)


@pytest.fixture(scope="module")
def expected(trained: Path) -> tuple[np.ndarray, np.ndarray]:
    return model_says(trained, ROWS)


def invoke(server, body: bytes | str, content_type: str, accept: str | None = None, **headers):
    if accept is not None:
        headers["Accept"] = accept
    return requests.post(
        server.url + "/invocations",
        data=body,
        headers={"Content-Type": content_type, **headers},
        timeout=30,
    )


def parse_answer(response: requests.Response) -> tuple[np.ndarray, np.ndarray]:
    kind = response.headers["Content-Type"]
    if kind == "text/csv":
        pairs = [line.split(",") for line in response.text.split("\n")]
    elif kind == "application/json":
        pairs = [
            (p["closest_cluster"], p["distance_to_cluster"]) for p in response.json()["predictions"]
        ]
    else:
        assert kind == "application/jsonlines"
        pairs = [
            (o["closest_cluster"], o["distance_to_cluster"])
            for o in map(json.loads, response.text.split("\n"))
        ]
    labels = np.array([int(p[0]) for p in pairs])
    return labels, np.array([float(p[1]) for p in pairs])


def npy(rows: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, rows)
    return buffer.getvalue()


def request_bodies(rows: np.ndarray) -> dict[str, tuple[str, str | bytes]]:
    csv_body = "\n".join(",".join(f"{v:g}" for v in row) for row in rows)
    listed = rows.tolist()
    return {
        "csv": ("text/csv", csv_body),
        "csv-charset": ("text/csv; charset=utf-8", csv_body),
        "csv-header": ("Text/CSV; header=present", "a,b,c,d\n" + csv_body),
        "csv-labels": (
            "text/csv;label_size=1",
            "\n".join("7," + line for line in csv_body.split("\n")),
        ),
        "json-instances-features": (
            "application/json",
            json.dumps({"instances": [{"features": row} for row in listed]}),
        ),
        "json-instances-lists": ("application/json", json.dumps({"instances": listed})),
        "json-list-of-lists": ("application/json", json.dumps(listed)),
        "jsonlines-features": (
            "application/jsonlines",
            "\n".join(json.dumps({"features": row}) for row in listed),
        ),
        "jsonlines-lists": ("application/jsonlines", "\n".join(map(json.dumps, listed))),
        "npy": ("application/x-npy", npy(rows)),
        "recordio-protobuf": ("application/x-recordio-protobuf", protobuf_records.body(rows)),
    }


# Small bodies take the exact parsers; large ones (over 4 KB) the fast paths.
REQUESTS = request_bodies(ROWS)
LARGE_REQUESTS = request_bodies(np.tile(ROWS, (40, 1)))


@pytest.mark.parametrize("accept", ["application/json", "application/jsonlines", "text/csv"])
@pytest.mark.parametrize("size", ["small", "large"])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_every_format_matches_the_model(server, trained, name, size, accept) -> None:
    content_type, body = (REQUESTS if size == "small" else LARGE_REQUESTS)[name]
    assert (len(body) > 4096) == (size == "large")
    response = invoke(server, body, content_type, accept)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == accept
    labels, distances = parse_answer(response)
    repeat = 1 if size == "small" else 40
    sent = ROWS.astype(np.float32) if name.startswith("recordio") else ROWS  # float32 tensors
    expected = model_says(trained, sent.astype(np.float64))
    np.testing.assert_array_equal(labels, np.tile(expected[0], repeat))
    float32 = np.tile(expected[1], repeat).astype(np.float32)  # as the built-in answers
    np.testing.assert_array_equal(distances.astype(np.float32), float32)


def test_recordio_answers_as_the_built_in_algorithm(server, expected) -> None:
    accept = "application/x-recordio-protobuf"
    response = invoke(server, CSV_BODY, "text/csv", accept)
    assert response.status_code == 200 and response.headers["Content-Type"] == accept
    answers = protobuf_records.labels(response.content)
    assert [a["closest_cluster"] for a in answers] == expected[0].tolist()
    distances = np.array([a["distance_to_cluster"] for a in answers], np.float32)
    np.testing.assert_array_equal(distances, expected[1].astype(np.float32))


@pytest.mark.parametrize(
    "accept",
    ["text/csv", "application/json", "application/jsonlines", "application/x-recordio-protobuf"],
)
def test_each_single_csv_record_matches_the_model(server, expected, accept) -> None:
    """One record a request, the real-time endpoint's usual traffic, takes its own path
    (plain Python, no arrays): every record of the set comes back as the model says, in
    every format, and is logged as one record."""
    for index, row in enumerate(ROWS):
        body = ",".join(f"{v:g}" for v in row) + "\n"
        response = invoke(server, body, "text/csv", accept)
        assert response.status_code == 200, response.text
        if accept == "application/x-recordio-protobuf":
            (answer,) = protobuf_records.labels(response.content)
            label, distance = answer["closest_cluster"], answer["distance_to_cluster"]
        else:
            (label,), (distance,) = parse_answer(response)
        assert label == expected[0][index]
        assert np.float32(distance) == np.float32(expected[1][index])
    line = f"invocation: 1 records, {len(body)} bytes text/csv -> {len(response.content)} bytes"
    deadline = time.monotonic() + 5
    while line not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in server.output()


def test_single_features_object_is_one_record(server, expected) -> None:
    response = invoke(server, json.dumps({"features": ROWS[0].tolist()}), "application/json")
    assert response.json()["predictions"][0]["closest_cluster"] == expected[0][0]


@pytest.mark.parametrize(
    "content_type,accept,default,answer",
    [
        ("text/csv", None, None, "text/csv"),
        ("application/jsonlines", "*/*", None, "application/jsonlines"),
        ("application/x-npy", None, None, "application/json"),
        ("text/csv", "text/html;q=0.9, application/jsonlines;q=0.5", None, "application/jsonlines"),
        ("text/csv", "application/json;q=0.2, text/csv;q=0.8", None, "text/csv"),
        ("text/csv", "application/*", None, "application/json"),
    ],
)
def test_response_type_follows_accept_then_request(server, content_type, accept, default, answer):
    body = {"text/csv": CSV_BODY, "application/jsonlines": REQUESTS["jsonlines-lists"][1]}.get(
        content_type, npy(ROWS)
    )
    response = invoke(server, body, content_type, accept)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == answer


def test_default_accept_and_custom_attributes(trained, start_server) -> None:
    server = start_server(trained, SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT="application/jsonlines")
    attributes = "trace=abc-123,user=7"
    response = invoke(
        server, CSV_BODY, "text/csv", **{"X-Amzn-SageMaker-Custom-Attributes": attributes}
    )
    assert response.headers["Content-Type"] == "application/jsonlines"
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == attributes
    assert len(response.text.split("\n")) == len(ROWS)
    size = len(CSV_BODY)
    line = (
        f"invocation: {len(ROWS)} records, {size} bytes text/csv -> {len(response.content)} bytes"
    )
    deadline = time.monotonic() + 5
    while line not in server.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert line in server.output()  # one line per request, with its size and time


def test_ping_and_execution_parameters(server) -> None:
    ping = requests.get(server.url + "/ping", timeout=2)
    assert ping.status_code == 200 and ping.content == b""
    parameters = requests.get(server.url + "/execution-parameters", timeout=2).json()
    assert parameters == {
        "MaxConcurrentTransforms": 2,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 6,
    }


ERRORS = [
    ("text/csv", "1,2,3,4\n5,6,abc,8\n", None, 400, "row 2, column 3: 'abc' is not a number"),
    ("text/csv", "1,2,3,4\n5,6,7,8,9\n", None, 400, "expected 4 features, got 5 in row 2"),
    (
        "text/csv",
        "1,2,3,4\n5,6,nan,8\n",
        None,
        400,
        "1 rows hold NaN or infinite values; first at row 2, column 3",
    ),
    ("text/csv", "1,,3,4\n", None, 400, "row 1, column 2: empty cell, expected a number"),
    ("text/csv", "", None, 400, "empty request body"),
    (
        "application/json",
        '{"instances": [[1,2,3,4], [1,2]]}',
        None,
        400,
        "expected 4 features, got 2 in instance 2",
    ),
    ("application/json", '{"instances": [1,2', None, 400, "body is not valid JSON"),
    (
        "application/json",
        '{"instances": [{"feature": [1,2,3,4]}]}',
        None,
        400,
        "instance 1: expected a list of numbers or an object with 'features'",
    ),
    ("application/json", '[[1,2,"x",4]]', None, 400, "instance 1, feature 3: 'x' is not a number"),
    (
        "application/jsonlines",
        '[1,2,3,4]\n{"features": [1,2,3]}',
        None,
        400,
        "expected 4 features, got 3 in line 2",
    ),
    ("application/x-npy", "not npy", None, 400, "body is not a .npy array"),
    (
        "application/xml",
        "<a/>",
        None,
        415,
        "Content-Type 'application/xml' is not supported; use one of text/csv, "
        "application/json, application/jsonlines, application/x-npy, "
        "application/x-recordio-protobuf",
    ),
    (
        "text/csv",
        "1,2,3,4",
        "text/html",
        406,
        "cannot answer with Accept 'text/html'; this endpoint answers application/json, "
        "application/jsonlines, text/csv, application/x-recordio-protobuf",
    ),
]


@pytest.mark.parametrize("content_type,body,accept,status,message", ERRORS)
def test_errors_are_one_line_of_json(server, content_type, body, accept, status, message) -> None:
    response = invoke(server, body, content_type, accept)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.json()["error"]
    assert error.startswith(message), error
    assert "\n" not in error


def test_unknown_paths_are_404_json_from_nginx(server) -> None:
    response = requests.get(server.url + "/models", timeout=2)
    assert response.status_code == 404
    assert "serves" in response.json()["error"] or "answers" in response.json()["error"]
    assert response.headers["Server"] == "nginx"  # no version: server_tokens off


def csv_of_size(size: int) -> bytes:
    """Whole CSV lines, `size` bytes to within one line."""
    line = b"5.123456,3.512345,1.412345,0.212345\n"
    return line * (size // len(line))


def test_a_6_mb_body_passes_and_a_larger_one_gets_413_json(server) -> None:
    limit = 6 << 20
    body = csv_of_size(limit)
    assert limit - len(body) < 40
    ok = invoke(server, body, "text/csv", "text/csv")
    assert ok.status_code == 200, ok.text[:200]
    assert ok.text.count("\n") + 1 == body.count(b"\n")
    refused = invoke(server, csv_of_size(limit + 4096), "text/csv")
    assert refused.status_code == 413
    assert refused.json()["error"].startswith("request body too large: the limit is 6 MB")


def test_max_payload_setting_admits_a_15_mb_body(trained, start_server) -> None:
    server = start_server(trained, SAGEMAKER_MAX_PAYLOAD_IN_MB="20")
    body = csv_of_size(15 << 20)
    response = invoke(server, body, "text/csv", "text/csv")
    assert response.status_code == 200, response.text[:200]
    assert response.text.count("\n") + 1 == body.count(b"\n")


def test_two_servers_side_by_side(trained, start_server) -> None:
    first, second = start_server(trained), start_server(trained)
    for server in (first, second):
        assert invoke(server, CSV_BODY, "text/csv").status_code == 200
    assert first.stop() == 0
    assert invoke(second, CSV_BODY, "text/csv").status_code == 200


def test_no_5xx_while_starting(trained, start_server) -> None:
    server = start_server(trained, wait=False)
    statuses = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = requests.get(server.url + "/ping", timeout=2).status_code
        except requests.ConnectionError:
            status = None  # not listening yet: the platform retries
        statuses.append(status)
        if status == 200:
            break
        time.sleep(0.001)
    assert statuses[-1] == 200
    assert not [s for s in statuses if s is not None and s != 200], statuses


def sigterm_in_flight(server, path: str, body: bytes) -> bytes:
    """Send half a CSV request, SIGTERM serve, send the rest: the answer serve gave."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as connection:
        connection.sendall(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[:10]
        )
        time.sleep(0.3)  # the request is now in flight, half uploaded
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.process.poll() is None, "serve quit with a request in flight"
        connection.sendall(body[10:])
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_sigterm_finishes_the_request_in_flight_then_exits_0(trained, start_server) -> None:
    server = start_server(trained)
    answer = sigterm_in_flight(server, "/invocations", CSV_BODY.encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert server.process.wait(30) == 0
    assert not server.pids()["nginx"] and not server.pids()["gunicorn"]


def test_a_killed_worker_loses_no_later_request(trained, start_server) -> None:
    server = start_server(trained, SAGEMAKER_MODEL_SERVER_WORKERS="2")
    session = requests.Session()  # keep-alive, like SageMaker's front end
    for _ in range(10):
        assert session.post(
            server.url + "/invocations", data=CSV_BODY, headers={"Content-Type": "text/csv"}
        ).ok
    victim = server.pids()["workers"][0]
    os.kill(victim, signal.SIGKILL)
    statuses = [
        session.post(
            server.url + "/invocations",
            data=CSV_BODY,
            headers={"Content-Type": "text/csv"},
            timeout=10,
        ).status_code
        for _ in range(100)
    ]
    assert statuses == [200] * 100
    assert server.process.poll() is None


def alive(pid: int) -> bool:
    """Running, not merely a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_serve_exits_when_nginx_dies(trained, start_server) -> None:
    server = start_server(trained)
    nginx = server.pids()["nginx"]
    os.kill(nginx[0], signal.SIGKILL)
    assert server.process.wait(30) != 0
    assert "nginx exited unexpectedly" in server.output()
    time.sleep(0.5)
    left = [pid for pid in nginx if alive(pid)]
    assert left == [], "nginx workers outlived their master"


def test_missing_model_stops_serve_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    started = time.monotonic()
    result = subprocess.run(
        [str(SERVE)],
        env=entrypoint_env(
            tmp_path, SAGEMAKER_BIND_TO_PORT=str(free_port()), SAGEMAKER_BIND_TO_HOST="127.0.0.1"
        ),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 30
    lines = [line for line in result.stderr.splitlines() if line.startswith("serve:")]
    missing = tmp_path / "model" / "model.npz"
    assert lines == [
        f"serve: cannot start: model file {missing} (or model_algo-1, model.joblib) not found "
        "(the folder is empty or missing)"
    ]


def test_model_from_another_scikit_learn_version_logs_a_warning(
    trained, tmp_path, start_server
) -> None:
    base = tmp_path / "ml"
    shutil.copytree(trained / "model", base / "model")
    for name in ("model.npz", "model_algo-1"):  # scikit-learn's versions matter to model.joblib
        (base / "model" / name).unlink()
    metadata = json.loads((base / "model" / "model.json").read_text())
    metadata["versions"]["scikit-learn"] = "0.24.2"
    (base / "model" / "model.json").write_text(json.dumps(metadata))
    server = start_server(base)
    assert "model saved with scikit-learn 0.24.2, loaded with" in server.output()


CLIENTS, REQUESTS_EACH = 8, 20


def test_concurrent_clients_all_answered(server, expected) -> None:
    """Eight keep-alive clients at once, twenty requests each: every one of the 160 is
    answered 200 with the model's labels, and every client thread finishes."""
    outcomes: list[tuple[int, bool]] = []

    def client() -> None:
        with requests.Session() as session:
            for _ in range(REQUESTS_EACH):
                response = session.post(
                    server.url + "/invocations",
                    data=CSV_BODY,
                    headers={"Content-Type": "text/csv"},
                    timeout=30,
                )
                right = response.status_code == 200 and np.array_equal(
                    parse_answer(response)[0], expected[0]
                )
                outcomes.append((response.status_code, right))

    clients = Threads()
    for _ in range(CLIENTS):
        clients.start(client)
    clients.join(120)
    assert len(outcomes) == CLIENTS * REQUESTS_EACH
    assert [outcome for outcome in outcomes if outcome != (200, True)] == []


# The helper the concurrent tests join their client threads with must itself fail when a
# thread loses a request: by raising, by hanging, or (caught by the tests' exact counts)
# by returning early.


def test_threads_fails_when_a_client_thread_raises() -> None:
    def client(number: int) -> None:
        if number == 3:
            raise requests.ConnectionError("connection reset by peer")

    clients = Threads()
    for number in range(5):
        clients.start(client, number)
    with pytest.raises(AssertionError, match=r"1 of 5 threads raised; client\(3,\): Connection"):
        clients.join(10)


def test_threads_fails_when_a_client_thread_never_ends() -> None:
    release = threading.Event()
    clients = Threads()
    clients.start(release.wait)
    clients.start(lambda: None)
    with pytest.raises(AssertionError, match=r"1 of 2 threads still running after 0.5 s"):
        clients.join(0.5)
    release.set()
    clients.join(10)


def test_threads_passes_when_every_client_thread_returns() -> None:
    done: list[int] = []
    clients = Threads()
    for number in range(5):
        clients.start(done.append, number)
    clients.join(10)
    assert sorted(done) == [0, 1, 2, 3, 4]
