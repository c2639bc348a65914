"""GET /metrics on the real `kmeans/serve` (nginx + gunicorn, 2 workers): it parses with
prometheus_client's own parsers, counts a mixed load exactly across both workers, keeps
what a killed worker counted, counts worker timeouts and restarts, multi-model loads,
unloads and refusals, and names the inference component or target container a request
names (in its log line too). SAGE_KMEANS_METRICS=false: 404, nothing counted.

Oracles: what the test sent and what its clients received (statuses, bodies), never the
server's own figures."""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import IRIS, Server
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from slow_estimator import SLEEP, write_model
from threads import Threads

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
    reason="nginx is not installed (the README's test command installs it)",
)

TESTS = Path(__file__).resolve().parent
ROW = IRIS.read_text().splitlines()[0]
TEN = "\n".join(IRIS.read_text().splitlines()[:10])
THREE_JSON = '{"instances": [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]}'
TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"
Samples = dict[tuple[str, frozenset], float]


def scrape(server: Server, accept: str | None = None) -> Samples:
    headers = {"Accept": accept} if accept else {}
    response = requests.get(server.url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == TEXT_FORMAT
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples that carry all of `labels`."""
    wanted = set(labels.items())
    return sum(
        value for (found, have), value in samples.items() if found == name and wanted <= have
    )


def delta(after: Samples, before: Samples, name: str) -> dict[frozenset, float]:
    """`name`'s samples that moved, by their labels."""
    moved = {
        labels: value - before.get((found, labels), 0.0)
        for (found, labels), value in after.items()
        if found == name
    }
    return {labels: value for labels, value in moved.items() if value}


def start(trained: Path, tmp_path: Path, name: str, workers: int = 2, **env: str) -> Server:
    server = Server(
        trained, tmp_path / f"{name}.log", SAGEMAKER_MODEL_SERVER_WORKERS=str(workers), **env
    )
    return server.wait_ready()


def workers(server: Server, gone: tuple[int, ...] = ()) -> list[int]:
    """The pids of the server's 2 gunicorn workers, once there are 2 and none is in `gone`."""
    deadline = time.monotonic() + 30
    while len(found := server.pids()["workers"]) != 2 or set(found) & set(gone):
        assert time.monotonic() < deadline, f"workers {found}, none of {gone} wanted"
        time.sleep(0.05)
    return found


@pytest.fixture
def servers():
    running: list[Server] = []
    yield running
    for server in running:
        assert server.stop() == 0, server.output()[-3000:]


# (method, path, Content-Type, Accept, body) -> what the app must be counted with:
# (route label, status, content_type label, accept label, records). None: nginx answers
# itself, and the app counts nothing.
LOAD = {
    ("GET", "/ping", None, None, None): ("/ping", 200, "", "text/plain", 0),
    ("GET", "/execution-parameters", None, None, None): (
        "/execution-parameters",
        200,
        "",
        "application/json",
        0,
    ),
    ("POST", "/invocations", "text/csv", None, ROW): (
        "/invocations",
        200,
        "text/csv",
        "text/csv",
        1,
    ),
    ("POST", "/invocations", "text/csv; charset=utf-8", "application/json", TEN): (
        "/invocations",
        200,
        "text/csv",
        "application/json",
        10,
    ),
    ("POST", "/invocations", "application/json", "application/jsonlines", THREE_JSON): (
        "/invocations",
        200,
        "application/json",
        "application/jsonlines",
        3,
    ),
    ("POST", "/invocations", "text/csv", None, "a,b"): (
        "/invocations",
        400,
        "text/csv",
        "application/json",
        0,
    ),
    ("POST", "/invocations", "application/xml", None, "<a/>"): (
        "/invocations",
        415,
        "other",
        "application/json",
        0,
    ),
    ("POST", "/invocations", "text/csv", "image/png", ROW): (
        "/invocations",
        406,
        "text/csv",
        "application/json",
        0,
    ),
    ("GET", "/invocations", None, None, None): ("other", 405, "", "application/json", 0),
    ("GET", "/no-such-path", None, None, None): None,
}


def send(server: Server, request: tuple, **headers: str) -> requests.Response:
    method, path, content_type, accept, body = request
    if content_type:
        headers["Content-Type"] = content_type
    if accept:
        headers["Accept"] = accept
    return requests.request(method, server.url + path, data=body, headers=headers, timeout=30)


def test_a_mixed_load_is_counted_exactly_across_both_workers(trained, tmp_path, servers) -> None:
    servers.append(start(trained, tmp_path, "mixed", SAGE_KMEANS_REVISION="abc123"))
    server = servers[0]
    before = scrape(server)
    load = [request for request in LOAD for _ in range(25)]
    random.Random(21).shuffle(load)
    answers: list[tuple[tuple, requests.Response]] = []
    lock = threading.Lock()

    def client(share: list[tuple]) -> None:
        for request in share:
            response = send(server, request)
            with lock:
                answers.append((request, response))

    callers = Threads()
    for part in range(4):
        callers.start(client, load[part::4])
    callers.join(120)
    assert len(answers) == len(load)
    time.sleep(0.5)
    after = scrape(server)

    requests_expected: collections.Counter = collections.Counter()
    records: collections.Counter = collections.Counter()
    request_bytes: collections.Counter = collections.Counter()
    response_bytes: collections.Counter = collections.Counter()
    for request, response in answers:
        counted = LOAD[request]
        if counted is None:
            assert response.status_code == 404
            continue
        route, status, content_type, accept, rows = counted
        assert response.status_code == status, response.text
        key = (route, str(status), content_type, accept, "", "")
        requests_expected[key] += 1
        if rows:
            records[content_type, accept] += rows
            request_bytes[content_type] += len(request[4].encode())
            response_bytes[accept] += len(response.content)
    requests_expected["/metrics", "200", "", TEXT_FORMAT.split(";")[0], "", ""] += 1  # `before`
    labels = ("route", "status", "content_type", "accept", "component", "container")
    assert delta(after, before, "sagekmeans_requests_total") == {
        frozenset(zip(labels, key, strict=True)): count for key, count in requests_expected.items()
    }
    assert delta(after, before, "sagekmeans_records_total") == {
        frozenset({"content_type": kind, "accept": accept}.items()): count
        for (kind, accept), count in records.items()
    }
    assert delta(after, before, "sagekmeans_request_bytes_total") == {
        frozenset({"content_type": kind}.items()): count for kind, count in request_bytes.items()
    }
    assert delta(after, before, "sagekmeans_response_bytes_total") == {
        frozenset({"accept": accept}.items()): count for accept, count in response_bytes.items()
    }
    by_route: collections.Counter = collections.Counter()
    for (route, *_), count in requests_expected.items():
        by_route[route] += count
    for route, count in by_route.items():
        name = "sagekmeans_request_duration_seconds"
        moved = total(after, name + "_count", route=route) - total(
            before, name + "_count", route=route
        )
        assert moved == count, route
        assert total(after, name + "_bucket", route=route, le="+Inf") == total(
            after, name + "_count", route=route
        )
    # Both workers answered part of the load: their pids in the invocation lines.
    workers = set(re.findall(r"\[(\d+)\] INFO invocation:", server.output()))
    assert len(workers) == 2, workers
    assert total(after, "sagekmeans_workers") == 2
    (info,) = [dict(labels) for name, labels in after if name == "sagekmeans_model_info"]
    assert info["algorithm"] == "kmeans"
    assert info["revision"] == "abc123"
    assert Path(info["source"]).parent == (trained / "model").resolve()


def test_a_killed_worker_s_counts_survive_and_its_restart_is_counted(
    trained, tmp_path, servers
) -> None:
    servers.append(start(trained, tmp_path, "killed"))
    server = servers[0]
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    stop = threading.Event()

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            response = session.post(
                server.url + "/invocations",
                data=ROW,
                headers={"Content-Type": "text/csv"},
                timeout=30,
            )
            with lock:
                statuses[response.status_code] += 1

    victims = workers(server)
    callers = Threads()
    for _ in range(3):
        callers.start(client)
    time.sleep(1.5)
    os.kill(victims[0], signal.SIGKILL)
    time.sleep(1.5)
    stop.set()
    callers.join(60)
    workers(server, gone=(victims[0],))
    samples = scrape(server)
    assert set(statuses) <= {200, 502}, statuses
    assert statuses[502] <= 1  # only the request the killed worker held
    counted = total(samples, "sagekmeans_requests_total", route="/invocations", status="200")
    # Every answer received was counted, but for one the worker may have sent just before
    # the kill, and not yet counted: a count is written right after its answer is sent.
    assert statuses[200] - 1 <= counted <= statuses[200]
    assert statuses[200] > 100
    assert total(samples, "sagekmeans_records_total") == counted
    assert total(samples, "sagekmeans_worker_restarts_total") == 1
    assert total(samples, "sagekmeans_worker_timeouts_total") == 0
    assert total(samples, "sagekmeans_workers") == 2  # the dead one's live gauge dropped


def test_a_worker_timeout_is_counted(tmp_path, servers) -> None:
    base = tmp_path / "ml"
    write_model(base / "model", np.loadtxt(IRIS, delimiter=","))
    server = start(
        base,
        tmp_path,
        "timeout",
        PYTHONPATH=str(TESTS),
        SAGEMAKER_MODEL_SERVER_TIMEOUT="1",
    )
    servers.append(server)
    slow = requests.post(
        server.url + "/invocations",
        data=f"{SLEEP + 30},3,1,0.2",
        headers={"Content-Type": "text/csv"},
        timeout=60,
    )
    assert slow.status_code == 504
    fast = [send(server, ("POST", "/invocations", "text/csv", None, ROW)) for _ in range(3)]
    assert [response.status_code for response in fast] == [200] * 3
    deadline = time.monotonic() + 30
    while total(samples := scrape(server), "sagekmeans_worker_restarts_total") < 1:
        assert time.monotonic() < deadline, server.output()[-3000:]
        time.sleep(0.2)
    assert total(samples, "sagekmeans_worker_timeouts_total") == 1
    assert total(samples, "sagekmeans_worker_restarts_total") == 1
    assert total(samples, "sagekmeans_requests_total", route="/invocations") == 3  # not the 504
    assert "WORKER TIMEOUT" in server.output()


def accounted(server: Server) -> int:
    """What the registry's own list says the loaded models take: each size, in 2 workers."""
    (runtime,) = Path(tempfile.gettempdir()).glob(f"kmeans-serve-{server.port}-*")
    listed = json.loads((runtime / "models" / "registry.json").read_text())
    return sum(entry["size"] for entry in listed.values()) * 2


def test_multi_model_loads_unloads_and_refusals_are_counted(trained, tmp_path, servers) -> None:
    base = tmp_path / "ml"
    folder = base / "models" / "iris" / "model"
    shutil.copytree(trained / "model", folder)
    (base / "models" / "empty").mkdir()
    server = start(
        base,
        tmp_path,
        "multi",
        SAGEMAKER_MULTI_MODEL="true",
        SAGE_KMEANS_MODEL_MEMORY_MB="0.5",
    )
    servers.append(server)
    samples = scrape(server)
    assert total(samples, "sagekmeans_model_memory_budget_bytes") == 0.5 * 2**20
    assert total(samples, "sagekmeans_models_loaded") == 0

    def load(name: str, url: str | None = None, body: object = None) -> int:
        sent = body if body is not None else {"model_name": name, "url": url or str(folder)}
        return requests.post(server.url + "/models", json=sent, timeout=60).status_code

    loaded = 0
    while (status := load(f"m{loaded}")) == 200:
        loaded += 1
        assert loaded < 200, "the budget never filled"
    assert status == 507
    assert loaded >= 3  # the first load in a worker also counts what it imports
    refusals = {
        "over_budget": 1,
        "already_loaded": load("m0"),
        "folder_not_found": load("x", str(base / "models" / "none")),
        "unreadable_model": load("y", str(base / "models" / "empty")),
        "bad_request": load("z", body={"model_name": "z"}),
    }
    assert refusals == {
        "over_budget": 1,
        "already_loaded": 409,
        "folder_not_found": 404,
        "unreadable_model": 400,
        "bad_request": 400,
    }
    samples = scrape(server)
    assert total(samples, "sagekmeans_models_loaded") == loaded
    assert 0 < total(samples, "sagekmeans_model_memory_bytes") <= 0.5 * 2**20
    assert total(samples, "sagekmeans_model_memory_bytes") == accounted(server)
    assert total(samples, "sagekmeans_model_loads_total") == loaded
    for reason in refusals:
        assert total(samples, "sagekmeans_model_load_refusals_total", reason=reason) == 1, reason
    invoked = requests.post(
        server.url + "/models/m1/invoke", data=ROW, headers={"Content-Type": "text/csv"}, timeout=30
    )
    assert invoked.status_code == 200
    for name in range(2):
        assert requests.delete(f"{server.url}/models/m{name}", timeout=30).status_code == 200
    samples = scrape(server)
    assert total(samples, "sagekmeans_model_unloads_total") == 2
    assert total(samples, "sagekmeans_models_loaded") == loaded - 2
    assert total(samples, "sagekmeans_model_memory_bytes") == accounted(server)
    route = "/models/<path:_>/invoke"
    assert total(samples, "sagekmeans_requests_total", route=route, status="200") == 1
    assert total(samples, "sagekmeans_records_total") == 1


def test_the_component_and_target_container_are_logged_and_labelled(
    trained, tmp_path, servers
) -> None:
    server = start(trained, tmp_path, "names", workers=1)
    servers.append(server)
    one = ("POST", "/invocations", "text/csv", None, ROW)
    component = "X-Amzn-SageMaker-Inference-Component"
    container = "X-Amzn-SageMaker-Target-Container-Hostname"
    assert send(server, one, **{component: "ic-small"}).status_code == 200
    assert send(server, one, **{container: "c-second"}).status_code == 200
    assert send(server, one, **{component: "ic-small", container: "c-second"}).status_code == 200
    log = server.output()
    assert re.search(r"INFO invocation: 1 records, .* ms component=ic-small\n", log)
    assert re.search(r"INFO invocation: 1 records, .* ms container=c-second\n", log)
    assert " ms component=ic-small container=c-second\n" in log
    samples = scrape(server)
    named = "sagekmeans_requests_total"
    assert total(samples, named, component="ic-small", container="") == 1
    assert total(samples, named, component="", container="c-second") == 1
    assert total(samples, named, component="ic-small", container="c-second") == 1
    # Bounded: one worker labels 16 distinct names (cut to 63 characters), then "other".
    long = "n" * 100
    names = [long, *(f"ic-{index}" for index in range(20))]
    for name in names:
        assert send(server, one, **{component: name}).status_code == 200
    samples = scrape(server)
    labelled = collections.Counter()
    for (name, labels), value in samples.items():
        if name == named and dict(labels)["route"] == "/invocations":
            labelled[dict(labels)["component"]] += value
    assert labelled == {
        "": 1,
        "ic-small": 2,
        "n" * 63: 1,
        **{f"ic-{index}": 1 for index in range(14)},
        "other": 6,
    }
    assert f"component={long}\n" in server.output()  # the log keeps the whole name
    # OpenMetrics, when asked for.
    response = requests.get(
        server.url + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=30
    )
    assert response.headers["Content-Type"].startswith(
        "application/openmetrics-text; version=1.0.0"
    )
    families = {family.name: family for family in openmetrics_families(response.text)}
    assert families["sagekmeans_requests"].type == "counter"


def test_metrics_off_answers_404_and_counts_nothing(trained, tmp_path, servers) -> None:
    server = start(trained, tmp_path, "off", SAGE_KMEANS_METRICS="false")
    servers.append(server)
    response = requests.get(server.url + "/metrics", timeout=30)
    assert response.status_code == 404
    assert response.json() == {
        "error": "not found: this server answers GET /ping, POST /invocations and "
        "GET /execution-parameters"
    }
    assert send(server, ("POST", "/invocations", "text/csv", None, ROW)).status_code == 200
    runtime = list(Path(tempfile.gettempdir()).glob(f"kmeans-serve-{server.port}-*"))
    assert len(runtime) == 1 and (runtime[0] / "gunicorn.sock").exists()
    assert not (runtime[0] / "metrics").exists()
