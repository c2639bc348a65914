"""Multi-model endpoints (issue 13), side by side in one run: single-record throughput of
POST /models/<name>/invoke on a loaded model against single-model POST /invocations, and
the time to load a model.

Both are our own `serve`, same workers, same model (the one bench/run.py trains): one as a
single-model endpoint, one with SAGEMAKER_MULTI_MODEL=true and that model loaded. wrk runs
against each in turn, interleaved. Loading: fresh copies of the model folder, each loaded
with POST /models (one worker loads and measures it); then a burst of concurrent requests
reaches the other workers, which load their own copy on first use. The burst's slowest
request is compared with the same burst on a model every worker already holds.
"""

from __future__ import annotations

import http.client
import json
import shutil
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import report
from bench.common import WORKERS, Mode, failures, interleaved, median, ratio, serving, wrk

MULTI_MODEL = {"SAGEMAKER_MULTI_MODEL": "true"}
TARGET = 0.9  # multi-model invoke ÷ single-model /invocations, req/s


def _request(url: str, method: str, path: str, body: bytes = b"") -> tuple[int, float]:
    """Status and client-side milliseconds of one request on a new connection."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    started = time.perf_counter()
    try:
        connection.request(method, path, body, {"Content-Type": "text/csv"})
        answer = connection.getresponse()
        answer.read()
        return answer.status, (time.perf_counter() - started) * 1000
    finally:
        connection.close()


def _burst(url: str, path: str, body: bytes) -> float:
    """The slowest of 4 * WORKERS concurrent requests, in ms (all must answer 200)."""
    with ThreadPoolExecutor(4 * WORKERS) as pool:
        answers = list(pool.map(lambda _: _request(url, "POST", path, body), range(4 * WORKERS)))
    if any(status != 200 for status, _ in answers):
        failures.append(f"multi-model burst on {path}: {[status for status, _ in answers]}")
    return max(ms for _, ms in answers)


def _loads(url: str, model: Path, models: Path, body: bytes, count: int) -> list[dict]:
    runs = []
    for number in range(count):
        folder = models / f"copy-{number}" / "model"
        shutil.copytree(model, folder)
        load = json.dumps({"model_name": f"copy-{number}", "url": str(folder)}).encode()
        status, load_ms = _request(url, "POST", "/models", load)
        if status != 200:
            failures.append(f"multi-model: loading copy-{number} answered {status}")
            continue
        first = _burst(url, f"/models/copy-{number}/invoke", body)
        warm = _burst(url, "/models/bench/invoke", body)
        status, unload_ms = _request(url, "DELETE", f"/models/copy-{number}")
        runs.append({"load": load_ms, "first": first, "warm": warm, "unload": unload_ms})
    return runs


def bench(mode: Mode, base: Path, work: Path, body_path: Path, logs: Path) -> dict:
    """`base` holds the trained model (base/model), `body_path` a one-record CSV body."""
    multi = work / "ml-multi-model"
    shutil.rmtree(multi, ignore_errors=True)
    shutil.copytree(base / "model", multi / "models" / "bench" / "model")
    body = body_path.read_bytes()
    out: dict = {"model_kb": sum(p.stat().st_size for p in (base / "model").iterdir()) / 1024}
    with (
        serving(["ours"], base, logs, WORKERS) as single,
        serving(["ours"], multi, logs, WORKERS, env=MULTI_MODEL) as multiple,
    ):
        servers = {"single-model": single["ours"], "multi-model": multiple["ours"]}
        url = servers["multi-model"].url
        load = json.dumps({"model_name": "bench", "url": str(multi / "models/bench/model")})
        if _request(url, "POST", "/models", load.encode())[0] != 200:
            raise RuntimeError("multi-model: the bench model did not load")
        paths = {"single-model": "/invocations", "multi-model": "/models/bench/invoke"}
        for name, server in servers.items():  # warm-up: every worker holds the model
            wrk(server.url, body_path, "text/csv", 16, 1, paths[name])

        def measure(name: str, connections: int) -> dict:
            """wrk's figures, and the stack's CPU time a request (less hit by other load)."""
            cpu = servers[name].cpu_seconds()
            run = wrk(
                servers[name].url, body_path, "text/csv", connections, mode.duration, paths[name]
            )
            cpu = servers[name].cpu_seconds() - cpu
            return run | {"cpu_us": cpu / max(run["requests"], 1) * 1e6}

        for connections in (1, 16):
            out[f"c{connections}"] = interleaved(
                list(servers), mode.repeats, lambda s, c=connections: measure(s, c)
            )
        out["loads"] = _loads(url, base / "model", multi / "models", body, mode.startup_repeats * 4)
    return out


def section(mode: Mode, m: dict, summary: list) -> list[str]:
    out = ["## 6. Multi-model endpoints", ""]
    out += [
        f"One CSV record a request, {WORKERS} workers, wrk as in section 1 ({mode.duration} s "
        f"a run, {mode.repeats} repeats): our `serve` as a single-model endpoint "
        "(`POST /invocations`) and as a multi-model endpoint with the same model loaded "
        "(`POST /models/bench/invoke`), interleaved. CPU µs/request is the user and system "
        "time of every process of the stack (nginx, gunicorn, workers) over the run, divided "
        "by the requests answered: on a shared machine it moves less than req/s does.",
        "",
    ]
    rows = []
    for connections in (1, 16):
        runs = m[f"c{connections}"]
        for endpoint, endpoint_runs in runs.items():
            share = ratio(runs["multi-model"], endpoint_runs, "rps")
            cost = ratio(endpoint_runs, runs["multi-model"], "cpu_us")
            figures = [median(endpoint_runs, key) for key in ("rps", "p50", "p99", "cpu_us")]
            failed = sum(run["failed"] for run in endpoint_runs)
            rows.append([connections, endpoint, *figures, f"{share:.2f}", f"{cost:.2f}", failed])
        value = ratio(runs["multi-model"], runs["single-model"], "rps")
        summary.append(
            [
                f"6. multi-model invoke ÷ single-model /invocations, c={connections}, req/s",
                report.verdict(value, TARGET),
            ]
        )
        value = ratio(runs["single-model"], runs["multi-model"], "cpu_us")
        summary.append(
            [
                f"6. the same by CPU time a request (single ÷ multi), c={connections}",
                report.verdict(value, TARGET),
            ]
        )
    header = ["connections", "endpoint", "req/s", "p50 ms", "p99 ms", "CPU µs/request"]
    header += ["multi-model ÷ this, req/s", "this ÷ multi-model, CPU"]
    out += report.table([*header, "failed"], rows)
    loads = m["loads"]
    out += [
        f"Loading a model ({m['model_kb']:.0f} KB folder: k = 16, 32 features), "
        f"{len(loads)} times, each a new copy and name: `POST /models` as the client sees it "
        "(one worker loads it and measures its memory), then "
        f"{4 * WORKERS} concurrent requests to it — the slowest waited for a worker's own "
        "first load — against the same burst on a model every worker holds, then "
        "`DELETE /models/<name>`. Client-side milliseconds.",
        "",
    ]
    rows = [
        [what, median(loads, key), max(run[key] for run in loads)]
        for what, key in (
            ("POST /models (load)", "load"),
            ("slowest of the first burst", "first"),
            ("slowest of a warm burst", "warm"),
            ("DELETE /models/<name> (unload)", "unload"),
        )
    ]
    out += report.table(["step", "median ms", "max ms"], rows)
    first_cost = statistics.median(run["first"] - run["warm"] for run in loads)
    summary.append(
        [
            "6. time to load a model: POST /models, ms (no target)",
            f"{median(loads, 'load'):.1f} (+{first_cost:.1f} for each other worker's first use)",
        ]
    )
    return out
