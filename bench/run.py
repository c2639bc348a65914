"""The benchmark suite (issue 5): ours against its baselines, side by side, in one run.

    python bench/run.py            full run (~30 min), writes bench/RESULTS.md
    python bench/run.py --quick    same code paths, small data, short runs (CI, ~3 min)
    python bench/run.py --only builtin-streaming
                                   the built-in's streaming settings (~9 min): rewrites its
                                   own section of RESULTS.md and keeps the rest

Benchmarks: single-record and ~6 MB requests of 32-feature rows and of 4-feature rows
(CSV, JSON, JSON Lines; wrk on loopback against `serve`, the stack ceiling and the naive
predictor), training on two blob data sets (ours against the naive trainer), start-up
time and memory of each serving stack, the image size, and multi-model endpoints against
single-model serving (bench/multi_model.py). Every figure is a
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

from bench import builtin_streaming, data, distributed, multi_model, report
from bench.common import (
    BENCH,
    COMPARED,
    FEATURES,
    FULL,
    LARGE_LIMIT,
    NARROW_FEATURES,
    NARROW_ROWS,
    NO_METRICS,
    PAYLOAD_MB,
    QUICK,
    ROOT,
    SERVE_ROWS,
    TRAIN_HP,
    WORKERS,
    K,
    Mode,
    Server,
    TrainSet,
    failures,
    interleaved,
    run_measured,
    serving,
    wrk,
)

# Large-request cases: name -> served model, body, Content-Type (each answered in kind).
LARGE = {
    "csv": ("wide", "large.csv", "text/csv"),
    "json": ("wide", "large.json", "application/json"),
    "narrow csv": ("narrow", "narrow.csv", "text/csv"),
    "narrow json": ("narrow", "narrow.json", "application/json"),
    "narrow jsonl": ("narrow", "narrow.jsonl", "application/jsonlines"),
}


def prepare_serving(work: Path, data_dir: Path) -> tuple[dict[str, Path], Path, dict[str, int]]:
    """Train the served models (32 and 4 features) with our `train`, and write the request
    bodies: the wide ones hold as many records as JSON holds in LARGE_LIMIT, the narrow
    ones as many as CSV holds."""
    bases, counts = {}, {}
    bodies = work / "bodies"
    bodies.mkdir(parents=True, exist_ok=True)
    for model, rows, features, fits in (
        ("wide", SERVE_ROWS, FEATURES, data.json_body),
        ("narrow", NARROW_ROWS, NARROW_FEATURES, data.csv_body),
    ):
        source = data.blobs(data_dir, rows, features, K)
        bases[model] = work / f"ml-serve-{model}"
        shutil.rmtree(bases[model], ignore_errors=True)
        make_job(bases[model], source, TRAIN_HP)
        run_measured([sys.executable, str(ROOT / "kmeans" / "train")], job_env(bases[model]), 300)
        records = data.leading_records(source, LARGE_LIMIT, fits)
        counts[model] = len(records)
        prefix = "large" if model == "wide" else model
        (bodies / f"{prefix}.csv").write_bytes(data.csv_body(records))
        (bodies / f"{prefix}.json").write_bytes(data.json_body(records))
        if model == "wide":
            (bodies / "single.csv").write_bytes(data.csv_body(records[:1]))
        else:
            (bodies / f"{prefix}.jsonl").write_bytes(data.jsonlines_body(records))
    return bases, bodies, counts


def agreement(servers: dict[str, Server], body: Path) -> str:
    """Ours and the naive predictor must give the same clusters for the same records."""
    answers = {}
    for stack in ("ours", "naive"):
        host, port = servers[stack].url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        connection.request("POST", "/invocations", body.read_bytes(), {"Content-Type": "text/csv"})
        lines = connection.getresponse().read().decode().split()
        connection.close()
        answers[stack] = [line.split(",")[0].removesuffix(".0") for line in lines]
    same = sum(a == b for a, b in zip(answers["ours"], answers["naive"], strict=False))
    if same != len(answers["ours"]) or len(answers["ours"]) != len(answers["naive"]):
        failures.append(f"ours and naive disagree on {len(answers['ours']) - same} records")
    return f"{same} of {len(answers['ours'])} records in the same cluster"


def bench_requests(
    mode: Mode, bases: dict[str, Path], bodies: Path, counts: dict[str, int], logs: Path
) -> dict:
    out: dict = {"rows": counts, "agreement": {}}
    for model, base in bases.items():
        names = [*COMPARED, NO_METRICS] if model == "wide" else COMPARED
        with serving(names, base, logs, WORKERS, PAYLOAD_MB) as servers:
            check = bodies / ("large.csv" if model == "wide" else f"{model}.csv")
            out["agreement"][model] = agreement(servers, check)
            for server in servers.values():  # warm-up: imports, caches, lazy model loads
                wrk(server.url, check, "text/csv", WORKERS, 1)
                if model == "wide":
                    wrk(server.url, bodies / "single.csv", "text/csv", 16, 1)
            for connections in (1, 16) if model == "wide" else ():
                out[f"single-c{connections}"] = interleaved(
                    names,
                    mode.repeats,
                    lambda s, c=connections: wrk(
                        servers[s].url, bodies / "single.csv", "text/csv", c, mode.duration
                    ),
                )
            for case, (case_model, body, content_type) in LARGE.items():
                if case_model != model:
                    continue
                runs = interleaved(
                    COMPARED,
                    mode.repeats,
                    lambda s, b=bodies / body, t=content_type: wrk(
                        servers[s].url, b, t, WORKERS, mode.duration
                    ),
                )
                for run in (run for stack_runs in runs.values() for run in stack_runs):
                    run["rows"] = run["rps"] * counts[model]
                out[f"large-{case}"] = runs
    out["mb"] = {case: (bodies / body).stat().st_size / 1e6 for case, (_, body, _) in LARGE.items()}
    return out


def bench_startup(mode: Mode, base: Path, body: Path, logs: Path) -> dict:
    """Time to the first 200 on /ping, then memory once every worker holds the model."""
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

        out[workers] = interleaved(COMPARED, mode.startup_repeats, measure)
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


def bench_training(mode: Mode, work: Path, data_dir: Path, train_set: TrainSet) -> dict:
    source = data.blobs(data_dir, train_set.rows, train_set.features, train_set.k)
    with source.open("rb") as stream:  # into the page cache before anyone is timed
        while stream.read(64 << 20):
            pass
    hyperparameters = {**TRAIN_HP, "k": str(train_set.k)}
    streaming = {**hyperparameters, "mini_batch_size": str(mode.mini_batch_size)}  # issue 6
    trainers = {"ours": hyperparameters, "naive": hyperparameters, "ours, streaming": streaming}
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
        if trainer == "naive":
            centres[trainer] = joblib.load(base / "model" / "model.joblib").cluster_centers_
            summary = json.loads(output.strip().splitlines()[-1])
            load, fit, inertia = summary["load"], summary["fit"], summary["inertia"]
        else:  # the centres train writes beside the model, whatever the model file's format
            centres[trainer] = np.loadtxt(base / "output/data/centers.csv", delimiter=",")
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
        "rows": train_set.rows,
        "features": train_set.features,
        "k": train_set.k,
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
        default="requests,training,startup,multi-model,image,distributed",
        help="benchmarks to run",
    )
    args = parser.parse_args()
    args.work, args.data = args.work.resolve(), args.data.resolve()  # jobs run from /
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

    if only & {"requests", "startup", "multi-model"}:
        bases, bodies, counts = prepare_serving(args.work, args.data)
        step("requests", lambda: bench_requests(mode, bases, bodies, counts, logs))
        step("startup", lambda: bench_startup(mode, bases["wide"], bodies / "single.csv", logs))
        step(
            "multi-model",
            lambda: multi_model.bench(mode, bases["wide"], args.work, bodies / "single.csv", logs),
        )
    step(
        "training",
        lambda: [bench_training(mode, args.work, args.data, s) for s in mode.train_sets],
    )
    step("image", bench_image)
    step("distributed", lambda: distributed.bench(mode, args.work, args.data))
    step("builtin-streaming", lambda: builtin_streaming.bench(mode, args.work, args.data))
    raw = args.work / f"results-{mode.name}.json"  # every repeat, for a closer look
    raw.write_text(json.dumps(results, indent=1, default=str))
    old = out.read_text() if out.exists() else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    header = report.conditions(mode, started, load_before, code)
    if set(results) == {"builtin-streaming"} and old:  # one section: the rest stays as it was
        section = builtin_streaming.section(results["builtin-streaming"], header)
        out.write_text(report.splice(old, section))
    else:
        out.write_text(report.report(mode, results, header, old))
    print(f"bench: wrote {out}")
    for failure in failures:
        print(f"bench: FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
