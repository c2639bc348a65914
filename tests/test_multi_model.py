"""Multi-model endpoints (SAGEMAKER_MULTI_MODEL=true) over HTTP: the real `serve` with nginx
and several gunicorn workers, driven through the /models API as SageMaker drives it, with
models of different k and feature counts trained by the real `train`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import joblib
import numpy as np
import pytest
import requests
from conftest import IRIS, SERVE, Server, entrypoint_env, free_port, make_job, run_train
from test_serve import ERRORS, REQUESTS, ROWS, parse_answer, sigterm_in_flight
from threads import Threads

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
    reason="nginx is not installed (the README's test command installs it)",
)

WORKERS = 3
MULTI_MODEL = {"SAGEMAKER_MULTI_MODEL": "true", "SAGEMAKER_MODEL_SERVER_WORKERS": str(WORKERS)}
# Names as opaque as the platform's may be: spaces, slashes, reserved characters, unicode.
ODD_NAMES = ["plain", "with space", "a/b/c.tar.gz", "?#%&+=;", "модель-β 模型", "%41 is not A"]
# Trained models: clusters, features, standardize; "iris" is the bundled sample data.
SHAPES = {
    "iris": (3, 4, False),
    "k5-d2": (5, 2, False),
    "k8-d7": (8, 7, True),
    "k2-d12": (2, 12, False),
}


@dataclass(frozen=True)
class Trained:
    folder: Path  # the model folder `train` wrote
    rows: np.ndarray  # request rows, with the model's feature count
    labels: np.ndarray  # what the saved estimator itself says for them
    distances: np.ndarray

    @property
    def csv(self) -> str:
        return "\n".join(",".join(f"{v!r}" for v in row) for row in self.rows.tolist())


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Trained]:
    rng = np.random.default_rng(13)
    out = {}
    for name, (k, features, standardize) in SHAPES.items():
        if name == "iris":
            data, rows = IRIS.read_text(), ROWS
        else:
            centres = rng.normal(scale=8, size=(k, features))
            points = centres[rng.integers(k, size=300)] + rng.normal(size=(300, features))
            data = "\n".join(",".join(f"{v:.6f}" for v in row) for row in points)
            rows = points[:11]
        hyperparameters = {"k": str(k), "standardize": str(standardize).lower()}
        base = make_job(tmp_path_factory.mktemp(name), hyperparameters, {"train/data.csv": data})
        result = run_train(base)
        assert result.returncode == 0, result.stdout + result.stderr
        estimator = joblib.load(base / "model" / "model.joblib")
        distances = estimator.transform(rows).min(axis=1)
        out[name] = Trained(base / "model", rows, estimator.predict(rows), distances)
    return out


def place(base: Path, folder: str, model: Trained) -> str:
    """The model unpacked where the platform puts it: <base>/models/<folder>/model."""
    target = base / "models" / folder / "model"
    shutil.copytree(model.folder, target)
    return str(target)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("mme") / "ml"
    (base / "models").mkdir(parents=True)
    running = Server(base, base.parent / "serve.log", **MULTI_MODEL).wait_ready()
    running.base = base
    yield running
    assert running.stop() == 0


def model_url(server: Server, name: str, suffix: str = "") -> str:
    return f"{server.url}/models/{quote(name, safe='')}{suffix}"


def load(server: Server, name: str, url: str, http=requests) -> requests.Response:
    return http.post(f"{server.url}/models", json={"model_name": name, "url": url}, timeout=60)


def unload(server: Server, name: str, http=requests) -> requests.Response:
    return http.delete(model_url(server, name), timeout=30)


def invoke(
    server: Server,
    name: str,
    body: str | bytes,
    content_type: str = "text/csv",
    http=requests,
    **headers,
) -> requests.Response:
    return http.post(
        model_url(server, name, "/invoke"),
        data=body,
        headers={"Content-Type": content_type, **headers},
        timeout=60,
    )


def answers_like(response: requests.Response, model: Trained) -> bool:
    if response.status_code != 200:
        return False
    labels, distances = parse_answer(response)  # answers carry distances as float32
    return np.array_equal(labels, model.labels) and np.array_equal(
        distances.astype(np.float32), model.distances.astype(np.float32)
    )


def log_pids(server: Server, pattern: str) -> set[int]:
    """The process ids of the log lines matching `pattern` (lines read `... [pid] ...`)."""
    found = re.finditer(r"\[(\d+)\] [^\n]*" + pattern, server.output())
    return {int(match.group(1)) for match in found}


def eventually(condition, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_starts_with_no_model_and_answers_ping(server) -> None:
    assert not (server.base / "model").exists()
    assert requests.get(server.url + "/ping", timeout=2).status_code == 200
    assert requests.get(server.url + "/models", timeout=5).json() == {"models": []}


def test_another_path_gets_a_404_naming_the_multi_model_routes(server) -> None:
    response = requests.get(server.url + "/predictions", timeout=5)
    assert response.status_code == 404
    assert response.json() == {
        "error": "not found: this server answers GET /ping, GET /execution-parameters, "
        "GET /metrics and the /models API (multi-model endpoint)"
    }


def test_load_list_describe_invoke_unload_opaque_names(server, trained) -> None:
    models = dict(zip(ODD_NAMES, [*trained.values(), *trained.values()], strict=False))
    urls = {}
    for index, (name, model) in enumerate(models.items()):
        urls[name] = place(server.base, f"odd-{index}", model)
        response = load(server, name, urls[name])
        assert response.status_code == 200, response.text
        assert response.json() == {"modelName": name, "modelUrl": urls[name]}
    listed = requests.get(server.url + "/models", timeout=5).json()
    assert listed == {"models": [{"modelName": n, "modelUrl": urls[n]} for n in sorted(models)]}
    for name, model in models.items():
        described = requests.get(model_url(server, name), timeout=5)
        assert described.json() == {"modelName": name, "modelUrl": urls[name]}, name
        assert answers_like(invoke(server, name, model.csv), model), name
    for name in models:
        assert unload(server, name).status_code == 200
        assert requests.get(model_url(server, name), timeout=5).status_code == 404
        assert invoke(server, name, models[name].csv).status_code == 404
    assert requests.get(server.url + "/models", timeout=5).json() == {"models": []}


def test_the_invoke_route_takes_only_post_and_a_name_may_end_in_invoke(server, trained) -> None:
    """/models/x/invoke is model x's invoke route (found by schemathesis: OPTIONS there said
    GET and DELETE too, and GET described a model named "x/invoke"); that name is sent
    encoded, as x%2Finvoke."""
    name, rows = "x/invoke", trained["iris"].csv

    def allowed(response: requests.Response) -> set[str]:
        return set(response.headers["Allow"].split(", "))

    assert load(server, name, place(server.base, "ends-in-invoke", trained["iris"])).ok
    for method in ("GET", "DELETE", "HEAD", "PUT"):
        refused = requests.request(method, server.url + "/models/x/invoke", timeout=5)
        assert refused.status_code == 405, (method, refused.text)
        assert allowed(refused) == {"OPTIONS", "POST"}
    options = requests.options(server.url + "/models/x/invoke", timeout=5)
    assert allowed(options) == {"OPTIONS", "POST"}
    own = requests.options(model_url(server, name), timeout=5)
    assert allowed(own) == {"DELETE", "GET", "HEAD", "OPTIONS"}
    posted = requests.post(model_url(server, name), data=rows, timeout=5)
    assert posted.status_code == 405, posted.text
    assert requests.get(model_url(server, name), timeout=5).json()["modelName"] == name
    assert answers_like(invoke(server, name, rows), trained["iris"])
    assert requests.post(server.url + "/models/x/invoke", data=rows, timeout=5).status_code == 404
    assert unload(server, name).status_code == 200


@pytest.fixture(scope="module")
def iris_loaded(server, trained):
    """The iris model loaded as 'iris model' on the module's server, for the whole module."""
    response = load(server, "iris model", place(server.base, "iris", trained["iris"]))
    assert response.status_code == 200, response.text
    return "iris model"


@pytest.mark.parametrize("accept", ["application/json", "application/jsonlines", "text/csv"])
@pytest.mark.parametrize("name", list(REQUESTS))
def test_invoke_takes_every_format_as_invocations_does(
    server, trained, iris_loaded, name, accept
) -> None:
    content_type, body = REQUESTS[name]
    response = invoke(server, iris_loaded, body, content_type, Accept=accept)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == accept
    labels, distances = parse_answer(response)
    np.testing.assert_array_equal(labels, trained["iris"].labels)
    expected = trained["iris"].distances
    if name.startswith("recordio"):  # float32 tensors on the wire: rows differ past 7 digits
        np.testing.assert_allclose(distances, expected, rtol=1e-6)
    else:  # answers carry distances rounded to float32
        np.testing.assert_array_equal(distances.astype(np.float32), expected.astype(np.float32))


@pytest.mark.parametrize("content_type,body,accept,status,message", ERRORS)
def test_invoke_errors_are_those_of_invocations(
    server, iris_loaded, content_type, body, accept, status, message
) -> None:
    response = invoke(
        server, iris_loaded, body, content_type, **({"Accept": accept} if accept else {})
    )
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    assert response.json()["error"].startswith(message)


def test_invoke_body_limit_is_that_of_invocations(server, iris_loaded) -> None:
    line = b"5.123456,3.512345,1.412345,0.212345\n"
    fits = line * ((6 << 20) // len(line))
    response = invoke(server, iris_loaded, fits, Accept="text/csv")
    assert response.status_code == 200
    assert response.text.count("\n") + 1 == fits.count(b"\n")
    refused = invoke(server, iris_loaded, fits + line * 200)
    assert refused.status_code == 413
    assert refused.json()["error"].startswith("request body too large: the limit is 6 MB")


def test_a_request_as_the_platform_forwards_it(server, trained) -> None:
    """POST /models with the platform's url, then an invocation with every header the
    platform sends; the target model is logged, the custom attributes echoed."""
    name = "3f1c0ae4b5d2a9e1c7d8f6b4a2e0c9d8"  # an opaque id, not the TargetModel
    url = place(server.base, name, trained["k8-d7"])
    loaded = requests.post(
        server.url + "/models",
        data=json.dumps({"model_name": name, "url": url}),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        timeout=60,
    )
    assert loaded.status_code == 200, loaded.text
    attributes = "trace=abc-123,tenant=7"
    response = invoke(
        server,
        name,
        trained["k8-d7"].csv,
        "text/csv; charset=utf-8",
        Accept="application/jsonlines",
        **{
            "X-Amzn-SageMaker-Target-Model": "customers/acme/model-7.tar.gz",
            "X-Amzn-SageMaker-Custom-Attributes": attributes,
            "X-Amzn-Trace-Id": "Root=1-abc",  # the platform may add headers: ignored
        },
    )
    assert answers_like(response, trained["k8-d7"]), response.text
    assert response.headers["X-Amzn-SageMaker-Custom-Attributes"] == attributes
    line = f"with model '{name}' (target model 'customers/acme/model-7.tar.gz')"
    assert eventually(lambda: line in server.output()), server.output()[-2000:]
    assert unload(server, name).status_code == 200


def test_load_and_unload_errors_are_one_line_of_json(server, trained, tmp_path) -> None:
    url = place(server.base, "errors", trained["k5-d2"])
    assert load(server, "twice", url).status_code == 200
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "model.joblib").write_bytes(b"not a model")
    cases = [
        (load(server, "twice", url), 409, "model 'twice' is already loaded"),
        (load(server, "nowhere", str(tmp_path / "absent")), 404, "model folder"),
        (load(server, "long", "/" + "x" * 300), 404, "model folder /xxx"),  # found by fuzzing
        (load(server, "empty", str(tmp_path)), 400, "model file"),
        (load(server, "corrupt", str(corrupt)), 400, "model file"),
        (
            load(server, "relative", "models/x/model"),
            400,
            "url must be the model folder's absolute",
        ),
        (
            requests.post(server.url + "/models", data="{", timeout=5),
            400,
            'the body must be {"model_name"',
        ),
        (
            requests.post(server.url + "/models", json={"model_name": "x"}, timeout=5),
            400,
            'the body must be {"model_name"',
        ),
        (
            requests.post(server.url + "/models", json={"model_name": 7, "url": url}, timeout=5),
            400,
            'the body must be {"model_name"',
        ),
        (
            requests.get(model_url(server, "nothing"), timeout=5),
            404,
            "model 'nothing' is not loaded",
        ),
        (unload(server, "nothing"), 404, "model 'nothing' is not loaded"),
        (invoke(server, "nothing", "1,2"), 404, "model 'nothing' is not loaded"),
        (invoke(server, "twice", "1,2,3"), 400, "expected 2 features, got 3 in row 1"),
        (
            requests.post(server.url + "/invocations", data="1,2", timeout=5),
            404,
            "this is a multi-model endpoint",
        ),
        (
            requests.get(server.url + "/models?limit=0", timeout=5),
            400,
            "limit must be an integer from 1 to 1000",
        ),
        (
            requests.get(server.url + "/models", params={"limit": "²"}, timeout=5),
            400,
            "limit must be an integer from 1 to 1000, got '²'",
        ),
        (
            requests.get(server.url + "/models?next_page_token=%25%25", timeout=5),
            400,
            "next_page_token '%%' is not one this server gave",
        ),
    ]
    for response, status, message in cases:
        assert response.status_code == status, (response.status_code, response.text)
        assert response.headers["Content-Type"] == "application/json"
        error = response.json()["error"]
        assert error.startswith(message) and "\n" not in error, error
    names = [
        entry["modelName"]
        for entry in requests.get(server.url + "/models", timeout=5).json()["models"]
    ]
    assert "twice" in names and not {"nowhere", "empty", "corrupt"} & set(names)
    assert unload(server, "twice").status_code == 200


def rounds_until(server: Server, condition, send, rounds: int = 20) -> list[requests.Response]:
    """Concurrent requests from 12 connections, in rounds until `condition()` holds."""
    responses: list[requests.Response] = []
    with ThreadPoolExecutor(12) as pool:
        for _ in range(rounds):
            responses += pool.map(lambda _: send(), range(48))
            if condition():
                break
    return responses


def test_every_worker_agrees_on_load_unload_and_reload(server, trained) -> None:
    """A model loaded through one worker answers on the others; after the unload every
    worker, those that held a copy included, says 404; a reload under the same name with
    another model (other feature count) is the new model everywhere."""
    name, old, new = "shared", trained["k5-d2"], trained["k2-d12"]
    assert load(server, name, place(server.base, "shared-old", old)).status_code == 200
    loader = log_pids(server, "loaded model 'shared' ")
    serving = lambda: log_pids(server, "with model 'shared'")  # noqa: E731
    answered = rounds_until(
        server, lambda: len(serving() - loader) >= 1, lambda: invoke(server, name, old.csv)
    )
    assert all(answers_like(response, old) for response in answered)
    holders = serving()
    assert holders - loader, f"no worker but the loader served it: {holders}"

    assert unload(server, name).status_code == 200
    refusing = lambda: log_pids(server, "invocation refused \\(404\\): model 'shared'")  # noqa: E731
    gone = rounds_until(
        server, lambda: holders <= refusing(), lambda: invoke(server, name, old.csv)
    )
    assert {response.status_code for response in gone} == {404}
    assert holders <= refusing(), "a worker that held a copy was never asked after the unload"

    assert load(server, name, place(server.base, "shared-new", new)).status_code == 200
    fresh = rounds_until(server, lambda: False, lambda: invoke(server, name, new.csv), rounds=2)
    assert all(answers_like(response, new) for response in fresh)
    stale = invoke(server, name, old.csv)
    assert stale.status_code == 400 and "expected 12 features" in stale.json()["error"]
    assert unload(server, name).status_code == 200


CYCLERS, TURNS, RACERS, RACED, READERS = 8, 4, 2, 6, 2
CHECKS_PER_TURN = 6  # load, three invocations, unload, an invocation after the unload


def test_load_invoke_unload_from_many_connections_at_once(server, trained) -> None:
    """Twelve clients at once: eight load, invoke, unload and check their own models over
    and over; two race to load the same names; two keep invoking a model nobody touches.
    Every answer must be right for the model asked, every status the one expected, each
    raced name loaded exactly once, and every client must finish, the readers still reading
    when the others are done, with as many answers as they sent (the server logged each)."""
    models = list(trained.values())
    urls = [place(server.base, f"busy-{index}", model) for index, model in enumerate(models)]
    assert load(server, "steady", urls[0]).status_code == 200
    problems: list[str] = []
    checked: list[str] = []
    raced: list[tuple[str, int]] = []
    reads = [0] * READERS
    stop = threading.Event()

    def cycle(client: int) -> None:
        with requests.Session() as http:
            for turn in range(TURNS):
                name, index = f"client {client} turn {turn}", (client + turn) % len(models)
                expected = [(load(server, name, urls[index], http), 200)]
                expected += [(invoke(server, name, models[index].csv, http=http), "answer")] * 3
                expected += [(unload(server, name, http), 200)]
                expected += [(invoke(server, name, models[index].csv, http=http), 404)]
                for response, want in expected:
                    ok = (
                        answers_like(response, models[index])
                        if want == "answer"
                        else response.status_code == want
                    )
                    checked.append(name)
                    if not ok:
                        problems.append(f"{name}: {response.status_code} {response.text[:200]}")

    def race(client: int) -> None:
        with requests.Session() as http:
            for turn in range(RACED):
                name = f"raced {turn}"
                raced.append((name, load(server, name, urls[turn % len(urls)], http).status_code))

    def steady(reader: int) -> None:
        with requests.Session() as http:
            while not stop.is_set():
                response = invoke(server, "steady", models[0].csv, http=http)
                reads[reader] += 1
                if not answers_like(response, models[0]):
                    problems.append(f"steady: {response.status_code} {response.text[:200]}")

    clients, readers = Threads(), Threads()
    for reader in range(READERS):
        readers.start(steady, reader)
    for client in range(CYCLERS):
        clients.start(cycle, client)
    for client in range(RACERS):
        clients.start(race, client)
    clients.join(240)
    still_reading = [thread.is_alive() for thread in readers.threads]
    stop.set()
    readers.join(60)
    assert problems == []
    assert len(checked) == CYCLERS * TURNS * CHECKS_PER_TURN
    assert len(raced) == RACERS * RACED
    for turn in range(RACED):
        statuses = sorted(status for name, status in raced if name == f"raced {turn}")
        assert statuses == [200] + [409] * (RACERS - 1), (turn, statuses)
    assert still_reading == [True] * READERS, "a reader stopped before the other clients"
    assert min(reads) >= 1, reads
    logged = lambda: server.output().count("with model 'steady'")  # noqa: E731
    assert eventually(lambda: logged() == sum(reads)), (logged(), reads)
    listed = {
        entry["modelName"]
        for entry in requests.get(server.url + "/models", timeout=5).json()["models"]
    }
    assert listed >= {f"raced {turn}" for turn in range(RACED)} | {"steady"}
    assert not {name for name in listed if name.startswith("client ")}
    for name in listed:
        assert unload(server, name).status_code == 200


def test_a_new_worker_serves_the_models_already_loaded(trained, start_server, tmp_path) -> None:
    base = tmp_path / "ml"
    server = start_server(base, **MULTI_MODEL)
    assert load(server, "kept", place(base, "kept", trained["iris"])).status_code == 200
    workers = log_pids(server, "Booting worker with pid")
    os.kill(min(workers), signal.SIGKILL)
    assert eventually(lambda: len(log_pids(server, "Booting worker with pid")) > len(workers), 60)
    replacement = log_pids(server, "Booting worker with pid") - workers
    rounds_until(
        server,
        lambda: replacement <= log_pids(server, "with model 'kept'"),
        lambda: invoke(server, "kept", trained["iris"].csv),
    )
    assert replacement <= log_pids(server, "with model 'kept'"), "the new worker never served"
    assert answers_like(invoke(server, "kept", trained["iris"].csv), trained["iris"])


def test_a_hundred_models_loaded_listed_in_pages_and_invoked(
    trained, start_server, tmp_path
) -> None:
    base = tmp_path / "ml"
    server = start_server(base, **MULTI_MODEL)
    models = list(trained.values())
    names = {f"model {number:03d}": models[number % len(models)] for number in range(100)}
    with ThreadPoolExecutor(8) as pool:
        urls = dict(zip(names, pool.map(lambda n: place(base, n, names[n]), names), strict=True))
        statuses = list(pool.map(lambda n: load(server, n, urls[n]).status_code, names))
    assert statuses == [200] * 100
    pages, token = [], None
    while True:
        query = {"limit": 30} | ({"next_page_token": token} if token else {})
        page = requests.get(server.url + "/models", params=query, timeout=10).json()
        pages.append(page["models"])
        token = page.get("nextPageToken")
        if token is None:
            break
    assert [len(page) for page in pages] == [30, 30, 30, 10]
    listed = [entry["modelName"] for page in pages for entry in page]
    assert listed == sorted(names)
    assert all(entry["modelUrl"] == urls[entry["modelName"]] for page in pages for entry in page)
    with ThreadPoolExecutor(8) as pool:
        right = list(
            pool.map(lambda n: answers_like(invoke(server, n, names[n].csv), names[n]), names)
        )
    assert right == [True] * 100
    assert "100 models loaded" in server.output()


def test_memory_budget_refuses_with_507_until_the_platform_unloads(
    trained, start_server, tmp_path
) -> None:
    base = tmp_path / "ml"
    server = start_server(base, SAGE_KMEANS_MODEL_MEMORY_MB="0.25", **MULTI_MODEL)
    model = trained["k8-d7"]
    loaded, refused = [], None
    for number in range(100):
        name = f"m{number}"
        response = load(server, name, place(base, name, model))
        if response.status_code == 507:
            refused = (name, response.json()["error"])
            break
        assert response.status_code == 200, response.text
        loaded.append(name)
    assert refused is not None, "the budget was never reached"
    assert loaded, "not even one model fitted the budget"
    name, message = refused
    assert f"model '{name}' needs" in message and "in each of 3 workers" in message
    assert "SAGE_KMEANS_MODEL_MEMORY_MB" in message
    assert eventually(lambda: f"refused model '{name}' needs" in server.output())
    assert requests.get(model_url(server, name), timeout=5).status_code == 404
    assert all(answers_like(invoke(server, n, model.csv), model) for n in loaded)
    # The platform's answer to a 507: unload an idle model, then load again.
    assert unload(server, loaded[0]).status_code == 200
    assert load(server, name, str(base / "models" / name / "model")).status_code == 200
    assert answers_like(invoke(server, name, model.csv), model)


def test_sigterm_finishes_the_invocation_in_flight_then_exits_0(
    trained, start_server, tmp_path
) -> None:
    base = tmp_path / "ml"
    server = start_server(base, **MULTI_MODEL)
    assert load(server, "busy", place(base, "busy", trained["iris"])).status_code == 200
    runtime = re.search(r"unix:(\S+)/gunicorn.sock", server.output()).group(1)
    assert Path(runtime, "models", "registry.json").is_file()
    answer = sigterm_in_flight(server, "/models/busy/invoke", trained["iris"].csv.encode())
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert server.process.wait(30) == 0
    assert not Path(runtime).exists(), "the registry outlived the server"


def test_single_model_mode_has_no_models_api(trained, start_server, tmp_path) -> None:
    base = tmp_path / "ml"
    shutil.copytree(trained["iris"].folder, base / "model")
    server = start_server(base)
    response = requests.get(server.url + "/models", timeout=5)
    assert response.status_code == 404 and "POST /invocations" in response.json()["error"]
    assert requests.post(server.url + "/models/x/invoke", timeout=5).status_code == 404


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("SAGEMAKER_MULTI_MODEL", "on", "SAGEMAKER_MULTI_MODEL must be true or false, got 'on'"),
        (
            "SAGE_KMEANS_MODEL_MEMORY_MB",
            "lots",
            "SAGE_KMEANS_MODEL_MEMORY_MB must be a number of MB ≥ 0, got 'lots'",
        ),
    ],
)
def test_a_bad_multi_model_setting_stops_serve_with_one_line(tmp_path, name, value, message):
    env = entrypoint_env(
        tmp_path,
        SAGEMAKER_MULTI_MODEL="true",
        SAGEMAKER_BIND_TO_PORT=str(free_port()),
        SAGEMAKER_BIND_TO_HOST="127.0.0.1",
    )
    env[name] = value
    result = subprocess.run([str(SERVE)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [f"serve: cannot start: {message}"]
