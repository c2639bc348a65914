"""What every benchmark shares: the modes and sizes, the serving stacks on loopback
(ours through its own `serve`, the baselines through bench/launch.py), runs measured
for wall time and peak RSS, wrk load, and the interleaved repeats with their medians.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
FEATURES, K, SEED, SERVE_ROWS, WORKERS, LARGE_LIMIT = 32, 16, 0, 50_000, 2, 6_000_000
NARROW_FEATURES, NARROW_ROWS = 4, 300_000  # payload.csv's width: the per-row costs show
PAYLOAD_MB = 10  # the request benchmarks' body limit: narrow JSON of 6 MB of CSV is 9 MB
NO_METRICS = "ours-no-metrics"
STACKS = {  # name -> command (ours is the real door; baselines run through our supervisor)
    "ours": [sys.executable, str(ROOT / "kmeans" / "serve")],
    "ceiling": [sys.executable, "-m", "bench.launch", "bench.ceiling_app:app"],
    "naive": [sys.executable, "-m", "bench.launch", "bench.naive_app:app"],
    # Ours with GET /metrics and its counting turned off: what the metrics cost (requests only).
    NO_METRICS: [
        "env",
        "SAGE_KMEANS_METRICS=false",
        sys.executable,
        str(ROOT / "kmeans" / "serve"),
    ],
}
COMPARED = ["ours", "ceiling", "naive"]  # the stacks every benchmark compares
TRAIN_HP = {
    "k": str(K),
    "init_method": "k-means++",
    "n_init": "1",
    "max_iter": "300",
    "tol": "0.0001",
    "seed": str(SEED),
}


@dataclass(frozen=True)
class TrainSet:
    rows: int
    features: int
    k: int


@dataclass(frozen=True)
class Mode:
    name: str
    duration: int  # seconds of each wrk run
    repeats: int
    train_sets: tuple[TrainSet, ...]
    train_repeats: int
    startup_repeats: int
    mini_batch_size: int  # for the streaming row (issue 6)


# Training: a 947 MB CSV (4 M x 32, k = 16) and a narrower 489 MB one (2 M x 24, k = 12).
FULL = Mode("full", 10, 5, (TrainSet(4_000_000, 32, 16), TrainSet(2_000_000, 24, 12)), 3, 5, 50_000)
QUICK = Mode("quick", 2, 1, (TrainSet(100_000, 32, 16), TrainSet(50_000, 24, 12)), 1, 1, 10_000)
failures: list[str] = []


# --- processes -----------------------------------------------------------------------


def _die_with_parent() -> None:
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: no orphans if we die


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def status(url: str, path: str = "/ping") -> int | None:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


class Server:
    """One serving stack on a loopback port; `ready` is seconds from start to first 200."""

    def __init__(
        self,
        stack: str,
        base: Path,
        logs: Path,
        workers: int,
        payload_mb: int = 6,
        env: dict | None = None,
    ) -> None:
        self.stack, self.port = stack, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            **(env or {}),
            "SAGEMAKER_BASE_DIR": str(base),
            "SAGEMAKER_BIND_TO_HOST": "127.0.0.1",
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
            "SAGEMAKER_MAX_PAYLOAD_IN_MB": str(payload_mb),
        }
        logs.mkdir(parents=True, exist_ok=True)
        self.log = logs / f"{stack}-{workers}w-{self.port}.log"
        log = self.log.open("ab")
        started = time.monotonic()
        self.process = subprocess.Popen(
            STACKS[stack],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        deadline = started + 120
        while status(self.url) != 200:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{stack} did not start; see {log.name}")
            time.sleep(0.01)
        self.ready = time.monotonic() - started

    def tree(self) -> dict[int, int]:
        """Serve and all its descendants: pid -> parent pid."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                parents[int(stat.parent.name)] = int(fields[1])
        tree, frontier = {self.process.pid: 0}, [self.process.pid]
        while frontier:
            children = {pid: ppid for pid, ppid in parents.items() if ppid in frontier}
            tree.update(children)
            frontier = list(children)
        return tree

    def workers_with_model(self) -> int:
        """gunicorn workers that hold the model: every worker of a master that logged
        loading it before forking them (ours preloads model.npz, without scikit-learn),
        else each worker that has scikit-learn's K-Means code mapped (loaded lazily)."""
        tree = self.tree()
        masters = {pid for pid, ppid in tree.items() if ppid == self.process.pid}
        text = self.log.read_text(errors="replace")
        preloaded = {pid for pid in masters if f"[{pid}] INFO model loaded from" in text}
        count = 0
        for pid, ppid in tree.items():
            if ppid not in masters:
                continue
            with contextlib.suppress(OSError):
                count += ppid in preloaded or (
                    "sklearn/cluster/_k_means" in Path(f"/proc/{pid}/maps").read_text()
                )
        return count

    def cpu_seconds(self) -> float:
        """User and system CPU time of serve and all its descendants so far."""
        ticks = 0
        for pid in self.tree():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, float]:
        """PSS and RSS (MB) summed over serve and all its descendants, and their count."""
        tree = self.tree()
        totals = {"Pss": 0, "Rss": 0}
        for pid in tree:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    name, _, value = line.partition(":")
                    if name in totals:
                        totals[name] += int(value.split()[0])
        return {"pss": totals["Pss"] / 1024, "rss": totals["Rss"] / 1024, "processes": len(tree)}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(35)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextlib.contextmanager
def serving(
    stacks: list[str],
    base: Path,
    logs: Path,
    workers: int,
    payload_mb: int = 6,
    env: dict | None = None,
) -> Iterator[dict]:
    servers: dict[str, Server] = {}
    try:
        for stack in stacks:
            servers[stack] = Server(stack, base, logs, workers, payload_mb, env)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def run_measured(command: list[str], env: dict, timeout: float) -> tuple[float, float, str]:
    """Run to the end: wall seconds, peak RSS (MB) of the process, its stdout."""
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        env=env,
        cwd="/",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    timer = threading.Timer(timeout, process.kill)
    timer.start()
    output = process.stdout.read().decode(errors="replace")
    _, code, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    timer.cancel()
    process.returncode = os.waitstatus_to_exitcode(code)
    if process.returncode != 0:
        raise RuntimeError(f"{command[1]} exited {process.returncode}:\n{output[-3000:]}")
    return wall, usage.ru_maxrss / 1024, output


# --- load ----------------------------------------------------------------------------


def wrk(
    url: str,
    body: Path,
    content_type: str,
    connections: int,
    seconds: int,
    path: str = "/invocations",
) -> dict:
    """req/s, p50 and p99 ms of POSTing `body` to `path` for `seconds`; answered in kind
    (no Accept)."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s"]
    command += ["-s", str(BENCH / "wrk.lua"), url + path]
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_TYPE": content_type}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 90)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{done.stdout}\n{done.stderr}")
    result = json.loads(line.removeprefix("BENCH "))
    if result["errors"] or result["non_2xx"]:
        failures.append(f"{url} {body.name}: {result}")
    return {
        "requests": result["requests"],
        "rps": result["requests"] / (result["duration_us"] / 1e6),
        "p50": result["p50_us"] / 1000,
        "p99": result["p99_us"] / 1000,
        "failed": result["errors"] + result["non_2xx"],
    }


def interleaved(names: list[str], repeats: int, measure: Callable[[str], dict]) -> dict:
    """Each name measured `repeats` times, the order rotating so no one always goes first."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            results[name].append(measure(name))
    return results


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def ratio(ours: list[dict], other: list[dict], key: str) -> float:
    """The median of the paired ratios; a repeat in which `other` did nothing (a 2 s quick
    run on a busy machine can answer no 6 MB request) has none; all such: NaN."""
    pairs = [a[key] / b[key] for a, b in zip(ours, other, strict=True) if b[key]]
    return statistics.median(pairs) if pairs else math.nan
