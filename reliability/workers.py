"""Which gunicorn workers free a worker stuck past the timeout, and at what cost: the sync
workers `serve` uses against the gthread workers it used before (reliability/launch.py),
side by side on this machine. Called by reliability/run.py; figures only, no verdicts.

- Throughput: one-record CSV requests through the whole stack (wrk; 1 and 16
  connections; 2 workers), repeats interleaved; medians and sync ÷ gthread.
- A slow request, with a user's estimator (tests/slow_estimator.py) whose transform
  sleeps 30 s, and SAGEMAKER_MODEL_SERVER_TIMEOUT=3:
  - while one slow request runs on a 2-worker server, how many of 20 one-record requests
    sent one after another are answered 200, and the slowest of them;
  - on a 1-worker server, seconds from the slow request's 504 until a request is
    answered again (the worker is free);
  - on another, SIGTERM right after the 504, the work still running: seconds to exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

from bench.common import ROOT, STACKS, Server, interleaved, median, ratio, serving, wrk

TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))
from slow_estimator import SLEEP, write_model  # noqa: E402  (a user's estimator, as tests use it)

STACKS.update(sync=STACKS["ours"], gthread=[sys.executable, "-m", "reliability.launch"])
OPTIONS = ["sync", "gthread"]
TIMEOUT = 3
ROW = b"5.1,3.5,1.4,0.2"
SLOW = f"{SLEEP + 30},3.5,1.4,0.2".encode()


def post(url: str, body: bytes, timeout: float) -> requests.Response:
    return requests.post(
        url + "/invocations", data=body, headers={"Content-Type": "text/csv"}, timeout=timeout
    )


def prepare(work: Path) -> tuple[Path, Path]:
    """The sample job trained by `train`, and a folder with the slow estimator."""
    trained = work / "trained"
    shutil.rmtree(trained, ignore_errors=True)
    shutil.copytree(ROOT / "local_test" / "test_dir", trained)
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(trained)}
    subprocess.run([sys.executable, str(ROOT / "kmeans" / "train")], env=env, check=True)
    slow = work / "slow"
    shutil.rmtree(slow, ignore_errors=True)
    iris = np.loadtxt(
        ROOT / "local_test" / "test_dir" / "input" / "data" / "train" / "iris.csv", delimiter=","
    )
    write_model(slow / "model", iris)
    return trained, slow


def throughput(trained: Path, logs: Path, seconds: int, repeats: int) -> dict:
    body = logs / "row.csv"
    body.write_bytes(ROW)
    out = {}
    for connections in (1, 16):

        def measure(stack: str, connections: int = connections) -> dict:
            with serving([stack], trained, logs, 2) as servers:
                server = servers[stack]
                before = server.cpu_seconds()
                result = wrk(server.url, body, "text/csv", connections, seconds)
                used = server.cpu_seconds() - before
                return {**result, "cpu_ms": used * 1000 / (result["rps"] * seconds)}

        runs = interleaved(OPTIONS, repeats, measure)
        out[connections] = {
            **{f"{stack}_rps": median(runs[stack], "rps") for stack in OPTIONS},
            **{f"{stack}_cpu_ms": median(runs[stack], "cpu_ms") for stack in OPTIONS},
            "rps_ratio": ratio(runs["sync"], runs["gthread"], "rps"),
            "cpu_ratio": ratio(runs["sync"], runs["gthread"], "cpu_ms"),
            "rps_ratios": [
                a["rps"] / b["rps"] for a, b in zip(runs["sync"], runs["gthread"], strict=True)
            ],
            "failed": sum(run["failed"] for stack in OPTIONS for run in runs[stack]),
        }
    return out


def head_of_line(stack: str, slow: Path, logs: Path) -> dict:
    with serving([stack], slow, logs, 2) as servers:
        url = servers[stack].url
        running = threading.Thread(target=lambda: post(url, SLOW, 60))
        running.start()
        time.sleep(0.5)
        statuses, slowest = [], 0.0
        with requests.Session() as session:
            for _ in range(20):
                started = time.monotonic()
                response = session.post(
                    url + "/invocations", data=ROW, headers={"Content-Type": "text/csv"}, timeout=60
                )
                statuses.append(response.status_code)
                slowest = max(slowest, time.monotonic() - started)
        running.join(60)
    return {"answered": statuses.count(200), "sent": len(statuses), "slowest_s": slowest}


def freed_after_504(stack: str, slow: Path, logs: Path) -> float:
    with serving([stack], slow, logs, 1) as servers:
        url = servers[stack].url
        assert post(url, SLOW, 60).status_code == 504
        answered_504 = time.monotonic()
        while time.monotonic() - answered_504 < 90:
            with contextlib.suppress(requests.Timeout):
                if post(url, ROW, 1).status_code == 200:
                    return time.monotonic() - answered_504
        return float("nan")


def sigterm_after_504(stack: str, slow: Path, logs: Path) -> tuple[float, int]:
    server = Server(stack, slow, logs, 1)
    try:
        assert post(server.url, SLOW, 60).status_code == 504
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(60)
        return time.monotonic() - signalled, code
    finally:
        server.stop()


def measure(work: Path, seconds: int, repeats: int) -> dict:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    trained, slow = prepare(work)
    results: dict = {
        "throughput": throughput(trained, logs, seconds, repeats),
        "seconds": seconds,
        "repeats": repeats,
    }
    saved = {
        name: os.environ.get(name) for name in ("PYTHONPATH", "SAGEMAKER_MODEL_SERVER_TIMEOUT")
    }
    os.environ.update(PYTHONPATH=str(TESTS), SAGEMAKER_MODEL_SERVER_TIMEOUT=str(TIMEOUT))
    try:
        for stack in OPTIONS:
            took, code = sigterm_after_504(stack, slow, logs)
            results[stack] = {
                "head_of_line": head_of_line(stack, slow, logs),
                "freed_s": freed_after_504(stack, slow, logs),
                "sigterm_s": took,
                "sigterm_code": code,
            }
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.update({name: value})
    return results
