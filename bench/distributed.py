"""Training across hosts (issue 9): the training set on 1, 2 and 4 local hosts.

Each host is a real `train` process with its own /opt/ml tree and resourceconfig.json,
named by a loopback address (127.x.0.y), the data file FullyReplicated, so each host
reads its byte range of it. Per host count: the job's wall time; the cluster start-up
(Dask imported, scheduler and workers up, every host joined, as the leader records it);
load and fit time; iterations and the median time of one; every host's peak RSS; the
inertia against one host's. And, on the full file and on a quarter of it, the bytes of
one Lloyd iteration (as the leader counts them) and every byte the job sent over
loopback: what the hosts exchange must not grow with the rows.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import data
from bench.common import FEATURES, ROOT, TRAIN_HP, K, Mode, _die_with_parent

HOST_COUNTS = (1, 2, 4)
_SUBNET = [200]


def _job(work: Path, source: Path, hosts: int, hyperparameters: dict) -> list[Path]:
    """One /opt/ml tree per host, all holding the same file."""
    _SUBNET[0] = _SUBNET[0] % 254 + 1  # a fresh 127.N for each job: N stays a valid octet
    names = [f"127.{_SUBNET[0]}.0.{i + 2}" for i in range(hosts)]
    bases = []
    for index, name in enumerate(names):
        base = work / f"host-{index + 1}"
        shutil.rmtree(base, ignore_errors=True)
        config = base / "input" / "config"
        config.mkdir(parents=True)
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        (config / "resourceconfig.json").write_text(
            json.dumps({"current_host": name, "hosts": names})
        )
        (config / "inputdataconfig.json").write_text(
            json.dumps({"train": {"TrainingInputMode": "File"}})
        )
        channel = base / "input" / "data" / "train"
        channel.mkdir(parents=True)
        (channel / source.name).symlink_to(source)
        bases.append(base)
    return bases


def _loopback_bytes() -> int:
    for line in Path("/proc/net/dev").read_text().splitlines():
        name, _, counters = line.partition(":")
        if name.strip() == "lo":
            return int(counters.split()[0])  # received on lo = sent on lo
    return 0


def run_job(work: Path, source: Path, hosts: int, hyperparameters: dict) -> dict:
    """Start every host at once; wall time, each host's peak RSS, the leader's summary."""
    bases = _job(work, source, hosts, hyperparameters)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started, before = time.monotonic(), _loopback_bytes()
    processes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "kmeans" / "train")],
            env={**env, "SAGEMAKER_BASE_DIR": str(base)},
            cwd="/",
            stdout=(base / "train.log").open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        for base in bases
    ]
    peaks = []
    for process, base in zip(processes, bases, strict=True):
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{base.name} failed:\n{(base / 'train.log').read_text()[-3000:]}")
        peaks.append(usage.ru_maxrss / 1024)
    wall, exchanged = time.monotonic() - started, _loopback_bytes() - before
    summary = json.loads((bases[0] / "output" / "data" / "summary.json").read_text())
    return {
        "wall": wall,
        "peaks": peaks,
        "bytes": exchanged,
        "inertia": summary["metrics"]["train"]["ssd"],
        "iterations": summary["iterations"],
        "cluster": summary["seconds"].get("cluster", 0.0),
        "load": summary["seconds"]["load"],
        "fit": summary["seconds"]["fit"],
        # one host: scikit-learn's fit (seeding included) over its iterations
        "per_iteration": summary["seconds"].get(
            "per_iteration", summary["seconds"]["fit"] / summary["iterations"]
        ),
        "payload": summary.get("bytes_per_iteration", 0),
    }


def bench(mode: Mode, work: Path, data_dir: Path) -> dict:
    rows = mode.train_sets[0].rows  # the 947 MB set (FEATURES, K) of the training benchmark
    source = data.blobs(data_dir, rows, FEATURES, K)
    quarter = data.blobs(data_dir, rows // 4, FEATURES, K)
    work = work / "distributed"
    runs: dict[int, list[dict]] = {hosts: [] for hosts in HOST_COUNTS}
    for _ in range(mode.train_repeats):
        for hosts in HOST_COUNTS:
            runs[hosts].append(run_job(work, source, hosts, TRAIN_HP))
    exchange = {}
    for name, path in (("full", source), ("quarter", quarter)):
        job = run_job(work, path, 2, TRAIN_HP)
        exchange[name] = {
            "rows": _rows(path),
            "payload": job["payload"],
            "job_bytes": job["bytes"],
            "iterations": job["iterations"],
        }
    return {"runs": runs, "exchange": exchange, "file_mb": source.stat().st_size / 1e6}


def _rows(path: Path) -> int:
    return int(path.name.split("-")[1].split("x")[0])


def section(mode: Mode, results: dict, summary: list) -> list[str]:
    """The report's section: a row per host count, against one host."""
    from bench.report import table, verdict

    runs = {int(hosts): found for hosts, found in results["runs"].items()}
    one = runs[1]

    def med(found: list[dict], key: str) -> float:
        return statistics.median(run[key] for run in found)

    rows = []
    for hosts, found in runs.items():
        peak = statistics.median(max(run["peaks"]) for run in found)
        rows.append(
            [
                hosts,
                f"{med(found, 'wall'):.1f}",
                f"{med(found, 'cluster'):.2f}" if hosts > 1 else "-",
                f"{med(found, 'load'):.2f}",
                f"{med(found, 'fit'):.2f}",
                f"{med(found, 'iterations'):.0f}",
                f"{1000 * med(found, 'per_iteration'):.0f}",
                f"{peak:.0f}",
                f"{peak / statistics.median(max(run['peaks']) for run in one):.2f}",
                f"{med(found, 'inertia') / med(one, 'inertia'):.4f}",
            ]
        )
    lines = [
        "## Training across hosts",
        "",
        f"The {results['file_mb']:.0f} MB set, FullyReplicated, each host a `train` process on "
        "this machine (loopback addresses), all sharing its 2 cores: wall times here show the "
        "cost of the coordination, not the speed-up of real hosts, which each bring their own "
        "cores and memory.",
        "",
        *table(
            [
                "hosts",
                "wall s",
                "cluster start s",
                "load s",
                "fit s",
                "iterations",
                "ms / iteration",
                "peak RSS / host MB",
                "vs 1 host",
                "inertia vs 1 host",
            ],
            rows,
        ),
        "",
    ]
    exchange = results["exchange"]
    lines += table(
        [
            "data (2 hosts)",
            "rows",
            "iterations",
            "bytes per iteration",
            "loopback bytes, whole job",
        ],
        [
            [name, f"{e['rows']:,}", e["iterations"], f"{e['payload']:,}", f"{e['job_bytes']:,}"]
            for name, e in exchange.items()
        ],
    )
    lines += [
        "Bytes per iteration are the numbers the leader sends (the centres) and receives (each "
        "host's per-cluster sums, counts and farthest rows); the loopback count is every byte "
        "the job's processes exchanged, start-up, seeding sample and framing included.",
        "",
    ]
    two = runs.get(2, one)
    peak_ratio = statistics.median(max(r["peaks"]) for r in two) / statistics.median(
        max(r["peaks"]) for r in one
    )
    full, quarter = exchange["full"], exchange["quarter"]
    summary += [
        ["2 hosts: peak RSS per host vs 1 host", verdict(peak_ratio, 0.6, at_most=True)],
        ["2 hosts: cluster start-up s", verdict(med(two, "cluster"), 5.0, at_most=True)],
        [
            "2 hosts: inertia vs 1 host, % off",
            verdict(100 * abs(med(two, "inertia") / med(one, "inertia") - 1), 1.0, at_most=True),
        ],
        [
            "bytes per iteration, full rows / a quarter of them (2 hosts)",
            f"{full['payload'] / max(quarter['payload'], 1):.2f} (1: independent of the rows)",
        ],
    ]
    return lines
