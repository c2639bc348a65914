"""The benchmark suite (issue 5): ours against its baselines, side by side, in one run.

    python bench/run.py            full run (~15 min), writes bench/RESULTS.md
    python bench/run.py --quick    same code paths, small data, short runs (CI, ~1 min)

Benchmarks: single-record and ~6 MB requests (wrk on loopback against `serve`, the stack
ceiling and the naive predictor), training on blob data (ours against the naive trainer),
start-up time and memory of each serving stack, and the image size. Every figure is a
median over repeats, runs interleaved so noise falls on all sides alike; each ratio is
the median of the per-repeat ratios. The report keeps the hand-written findings below
its FINDINGS marker. Exits non-zero if any request failed or the stacks disagreed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import joblib
import numpy as np

from bench import data, distributed, report
from bench.common import (
    BENCH,
    FEATURES,
    FULL,
    LARGE_LIMIT,
    QUICK,
    ROOT,
    SERVE_ROWS,
    STACKS,
    TRAIN_HP,
    WORKERS,
    K,
    Mode,
    Server,
    failures,
    interleaved,
    run_measured,
    serving,
    wrk,
)


def prepare_serving(work: Path, data_dir: Path) -> tuple[Path, dict[str, Path], int]:
    """Train the served model with our `train`, and write the request bodies."""
    source = data.blobs(data_dir, SERVE_ROWS, FEATURES, K)
    base = work / "ml-serve"
    shutil.rmtree(base, ignore_errors=True)
    make_job(base, source, TRAIN_HP)
    run_measured([sys.executable, str(ROOT / "kmeans" / "train")], job_env(base), 300)
    bodies = work / "bodies"
    bodies.mkdir(parents=True, exist_ok=True)
    csv_body, json_body, rows = data.large_bodies(source, LARGE_LIMIT)
    paths = {"single": bodies / "single.csv", "csv": bodies / "large.csv"}
    paths["json"] = bodies / "large.json"
    paths["single"].write_bytes(data.first_lines(source, 1)[0] + b"\n")
    paths["csv"].write_bytes(csv_body)
    paths["json"].write_bytes(json_body)
    return base, paths, rows


def agreement(servers: dict[str, Server], bodies: dict[str, Path]) -> str:
    """Ours and the naive predictor must give the same clusters for the same records."""
    answers = {}
    for stack in ("ours", "naive"):
        host, port = servers[stack].url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request(
            "POST", "/invocations", bodies["csv"].read_bytes(), {"Content-Type": "text/csv"}
        )
        lines = connection.getresponse().read().decode().split()
        connection.close()
        answers[stack] = [line.split(",")[0].removesuffix(".0") for line in lines]
    same = sum(a == b for a, b in zip(answers["ours"], answers["naive"], strict=False))
    if same != len(answers["ours"]) or len(answers["ours"]) != len(answers["naive"]):
        failures.append(f"ours and naive disagree on {len(answers['ours']) - same} records")
    return f"{same} of {len(answers['ours'])} records in the same cluster"


def bench_requests(mode: Mode, base: Path, bodies: dict[str, Path], rows: int, logs: Path) -> dict:
    out: dict = {}
    names = list(STACKS)
    with serving(names, base, logs, WORKERS) as servers:
        out["agreement"] = agreement(servers, bodies)
        for server in servers.values():  # warm-up: imports, caches, lazy model loads
            wrk(server.url, bodies["single"], "text/csv", 16, 1)
        for connections in (1, 16):
            out[f"single-c{connections}"] = interleaved(
                names,
                mode.repeats,
                lambda s, c=connections: wrk(
                    servers[s].url, bodies["single"], "text/csv", c, mode.duration
                ),
            )
        for kind, content_type in (("csv", "text/csv"), ("json", "application/json")):
            runs = interleaved(
                names,
                mode.repeats,
                lambda s, b=bodies[kind], t=content_type: wrk(
                    servers[s].url, b, t, WORKERS, mode.duration
                ),
            )
            for run in (run for stack_runs in runs.values() for run in stack_runs):
                run["rows"] = run["rps"] * rows
            out[f"large-{kind}"] = runs
    return out


def bench_startup(mode: Mode, base: Path, body: Path, logs: Path) -> dict:
    out = {}
    for workers in (2, 4):

        def measure(stack: str, workers: int = workers) -> dict:
            with serving([stack], base, logs, workers) as servers:
                server = servers[stack]
                for _ in range(10):  # until every worker has served (the naive loads lazily)
                    wrk(server.url, body, "text/csv", 16, 1)
                    if stack == "ceiling" or server.workers_with_model() == workers:
                        break
                loaded = server.workers_with_model()
                return {"ready": server.ready, **server.memory(), "with_model": loaded}

        out[workers] = interleaved(list(STACKS), mode.startup_repeats, measure)
    return out


def make_job(base: Path, source: Path, hyperparameters: dict) -> None:
    config = base / "input" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    channel = base / "input" / "data" / "train"
    channel.mkdir(parents=True, exist_ok=True)
    (channel / source.name).symlink_to(source)


def job_env(base: Path) -> dict:
    return {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}


def bench_training(mode: Mode, work: Path, data_dir: Path) -> dict:
    source = data.blobs(data_dir, mode.train_rows, FEATURES, K)
    with source.open("rb") as stream:  # into the page cache before anyone is timed
        while stream.read(64 << 20):
            pass
    streaming = {**TRAIN_HP, "mini_batch_size": str(mode.mini_batch_size)}  # issue 6
    trainers = {"ours": TRAIN_HP, "naive": TRAIN_HP, "ours, streaming": streaming}
    centres: dict[str, np.ndarray] = {}

    def measure(trainer: str) -> dict:
        base = work / "train" / trainer.replace(", ", "-")
        shutil.rmtree(base, ignore_errors=True)
        make_job(base, source, trainers[trainer])
        if trainer == "naive":
            command = [sys.executable, str(BENCH / "naive_train.py")]
            command += [str(base / "input/config/hyperparameters.json")]
            command += [str(base / "input/data/train"), str(base / "model")]
        else:
            command = [sys.executable, str(ROOT / "kmeans" / "train")]
        try:
            wall, peak, output = run_measured(command, job_env(base), 3600)
        except RuntimeError as error:
            if trainer in ("ours", "naive"):
                raise
            failures.append(f"{trainer}: {error}")
            return {"error": str(error).splitlines()[-1][-200:]}
        centres[trainer] = joblib.load(base / "model" / "model.joblib").cluster_centers_
        if trainer == "naive":
            summary = json.loads(output.strip().splitlines()[-1])
            load, fit, inertia = summary["load"], summary["fit"], summary["inertia"]
        else:
            summary = json.loads((base / "output/data/summary.json").read_text())
            load, fit = (summary["seconds"].get(key, math.nan) for key in ("load", "fit"))
            inertia = summary["metrics"]["train"]["ssd"]
        return {"wall": wall, "peak": peak, "load": load, "fit": fit, "inertia": inertia}

    runs = interleaved(list(trainers), mode.train_repeats, measure)
    truth = np.load(source.with_suffix(".centres.npy"))
    evaluated = data.inertia(source, [*centres.values(), truth])  # one pass, each set
    return {
        "runs": runs,
        "evaluated": dict(zip([*centres, "true centres"], evaluated, strict=True)),
        "file_mb": source.stat().st_size / 1e6,
        "rows": mode.train_rows,
    }


IMAGE_TAGS = ("sage-kmeans:ci", "sage-kmeans:test")
# What takes the space inside the image: the venv's packages and the system's big folders.
IMAGE_DU = (
    "du -sk /opt/venv/lib/python3*/site-packages/* | sort -rn | head -n 12; "
    "du -sk /usr/lib /usr/share /opt/venv /opt/program 2>/dev/null"
)


def docker(*args: str, timeout: float = 60) -> str | None:
    try:
        done = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def bench_image() -> dict:
    """The image's size and where it goes, if a built image is on a reachable engine."""
    for tag in IMAGE_TAGS:
        size = docker("image", "inspect", "--format", "{{.Size}}", tag, timeout=30)
        if size is None:
            continue
        layers = docker("history", "--format", "{{.Size}}\t{{.CreatedBy}}", tag) or ""
        inside = docker(
            "run", "--rm", "--network", "none", "--entrypoint", "sh", tag, "-c", IMAGE_DU
        )
        return {
            "tag": tag,
            "mb": int(size) / 1e6,
            "layers": [line[:140] for line in layers.splitlines()],
            "du": (inside or "(docker run failed)").splitlines(),
        }
    where = os.environ.get("DOCKER_HOST") or "the default Docker socket"
    tags = " or ".join(IMAGE_TAGS)
    return {"note": f"not measured in this run: no image {tags} on a Docker engine at {where}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small data, short runs (CI)")
    parser.add_argument(
        "--out", type=Path, help="default: bench/RESULTS.md, quick: WORK/RESULTS-quick.md"
    )
    parser.add_argument("--work", type=Path, default=BENCH / "work", help="scratch folder")
    parser.add_argument("--data", type=Path, default=BENCH / "data", help="generated data")
    parser.add_argument("--duration", type=int, help="seconds a wrk run (overrides the mode)")
    parser.add_argument("--repeats", type=int, help="wrk repeats (overrides the mode)")
    parser.add_argument(
        "--only",
        default="requests,training,startup,image,distributed",
        help="benchmarks to run",
    )
    args = parser.parse_args()
    mode = QUICK if args.quick else FULL
    mode = replace(
        mode, duration=args.duration or mode.duration, repeats=args.repeats or mode.repeats
    )
    out = args.out or (args.work / "RESULTS-quick.md" if args.quick else BENCH / "RESULTS.md")
    only = set(args.only.split(","))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    started, load_before, code = time.monotonic(), os.getloadavg()[0], report.code_state()
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    shutil.rmtree(logs, ignore_errors=True)  # servers' logs of this run only
    results: dict = {}

    def step(name: str, function: Callable[[], object]) -> None:
        if name in only:
            print(f"bench: {name} ...", flush=True)
            begun = time.monotonic()
            results[name] = function()
            print(f"bench: {name} done in {time.monotonic() - begun:.0f} s", flush=True)

    if only & {"requests", "startup"}:
        base, bodies, rows = prepare_serving(args.work, args.data)

        def requests() -> dict:
            found = bench_requests(mode, base, bodies, rows, logs)
            sizes = {f"{kind}_mb": bodies[kind].stat().st_size / 1e6 for kind in ("csv", "json")}
            return found | sizes | {"rows": rows}

        step("requests", requests)
        step("startup", lambda: bench_startup(mode, base, bodies["single"], logs))
    step("training", lambda: bench_training(mode, args.work, args.data))
    step("image", bench_image)
    step("distributed", lambda: distributed.bench(mode, args.work, args.data))
    raw = args.work / f"results-{mode.name}.json"  # every repeat, for a closer look
    raw.write_text(json.dumps(results, indent=1, default=str))
    old = out.read_text() if out.exists() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        report.report(mode, results, report.conditions(mode, started, load_before, code), old)
    )
    print(f"bench: wrote {out}")
    for failure in failures:
        print(f"bench: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
