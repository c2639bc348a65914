"""The built-in K-Means's streaming settings (issue 22): what extra_center_factor and
half_life_time_size buy in mini-batch mode, and what they cost.

    python bench/run.py --only builtin-streaming     (~9 min; rewrites only its section)

Two data sets: a 150,000-row sample of the training benchmark's blobs (32 features,
k = 16, bench/data.py's generator and seed) and a harder set (UNEQUAL: 12 clusters of
sizes 1 : 10 : 100, spreads 0.1 to 3, seeded). On each, every configuration is trained
with the real `train` for seeds 0, 1 and 2: full-batch Lloyd, mini-batch (5,000-row
chunks, one pass) with extra_center_factor 1 (today's mini-batch), 2, 4 and auto, each
with and without a half-life, and on 2 local hosts with factor 1 and 4. Inertia is
measured afterwards on every row, in float64, against the centres `train` wrote; time is
the CPU seconds of every `train` process (imports, reading and fitting: less swayed than
wall time by the other work on a shared machine), the reduction's own seconds and the
wall time. Medians over the seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import data
from bench.common import ROOT, Mode, _die_with_parent, median
from bench.distributed import _job

SAMPLE_ROWS, SAMPLE_FEATURES, SAMPLE_K = 150_000, 32, 16
UNEQUAL_ROWS, UNEQUAL_FEATURES, UNEQUAL_K = 150_000, 8, 12
SEEDS = (0, 1, 2)
CHUNK = "5000"  # the built-in's mini_batch_size
HALF_LIFE = "20000"  # rows: 4 chunks, about a seventh of a pass

# name -> hyperparameters beside k and seed; hosts
CONFIGS: dict[str, tuple[dict[str, str], int]] = {
    "full batch (Lloyd on the rows)": ({}, 1),
    "mini-batch, factor 1 (today)": ({"mini_batch_size": CHUNK}, 1),
    "mini-batch, factor 1, half-life": (
        {"mini_batch_size": CHUNK, "half_life_time_size": HALF_LIFE},
        1,
    ),
    **{
        f"mini-batch, factor {factor}{label}": (
            {"mini_batch_size": CHUNK, "extra_center_factor": factor, **extra},
            1,
        )
        for factor in ("2", "4", "auto")
        for label, extra in (("", {}), (", half-life", {"half_life_time_size": HALF_LIFE}))
    },
    "mini-batch, factor 1, 2 hosts": ({"mini_batch_size": CHUNK}, 2),
    "mini-batch, factor 4, 2 hosts": ({"mini_batch_size": CHUNK, "extra_center_factor": "4"}, 2),
}


def unequal(folder: Path, rows: int = UNEQUAL_ROWS, seed: int = 22) -> Path:
    """The harder set as headerless CSV (4 decimals): 12 centres uniform in [-10, 10]^8,
    cluster sizes 1 : 10 : 100 in turn, standard deviations log-spaced from 0.1 to 3."""
    path = folder / f"unequal-{rows}x{UNEQUAL_FEATURES}-k{UNEQUAL_K}-s{seed}.csv"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shares = np.resize([1.0, 10.0, 100.0], UNEQUAL_K)
    spreads = np.geomspace(0.1, 3.0, UNEQUAL_K)
    centres = rng.uniform(-10, 10, (UNEQUAL_K, UNEQUAL_FEATURES))
    labels = rng.choice(UNEQUAL_K, rows, p=shares / shares.sum())
    points = centres[labels] + rng.standard_normal((rows, UNEQUAL_FEATURES)) * spreads[labels, None]
    partial = path.with_suffix(".partial")
    np.savetxt(partial, points, fmt="%.4f", delimiter=",")
    os.replace(partial, path)
    return path


def _train(work: Path, source: Path, hosts: int, hyperparameters: dict) -> dict:
    """One job on `hosts` local hosts: the leader's centres and the reduction's seconds;
    the wall time and the CPU seconds of every host's process (less swayed than wall
    time by what else runs on the machine)."""
    bases = _job(work, source, hosts, hyperparameters)
    started = time.monotonic()
    processes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "kmeans" / "train")],
            env={**os.environ, "SAGEMAKER_BASE_DIR": str(base)},
            cwd="/",
            stdout=(base / "train.log").open("wb"),
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        for base in bases
    ]
    cpu = 0.0
    for process, base in zip(processes, bases, strict=True):
        _, status, usage = os.wait4(process.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"{base.name} failed:\n{(base / 'train.log').read_text()[-3000:]}")
        cpu += usage.ru_utime + usage.ru_stime
    wall = time.monotonic() - started
    summary = json.loads((bases[0] / "output" / "data" / "summary.json").read_text())
    reduced = summary.get("reduced_centres")
    return {
        "wall": wall,
        "cpu": cpu,
        "reduce": reduced["seconds"] if reduced else 0.0,
        "centres": np.loadtxt(bases[0] / "output" / "data" / "centers.csv", delimiter=","),
        "reduced": reduced,
    }


def _one_set(work: Path, source: Path, k: int) -> dict:
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for seed in SEEDS:  # interleaved: the machine's noise falls on every configuration
        for name, (extra, hosts) in CONFIGS.items():
            hyperparameters = {"k": str(k), "seed": str(seed), **extra}
            runs[name].append(_train(work / "job", source, hosts, hyperparameters))
    names = list(runs)
    evaluated = data.inertia(source, [run["centres"] for name in names for run in runs[name]])
    for index, run in enumerate(run for name in names for run in runs[name]):
        run["inertia"] = evaluated[index]
        run["centres"] = run["centres"].tolist()
    return {"runs": runs, "rows": sum(1 for _ in source.open("rb")), "k": k}


def bench(mode: Mode, work: Path, data_dir: Path) -> dict:
    work = work / "builtin-streaming"
    shutil.rmtree(work, ignore_errors=True)
    sample = data.blobs(data_dir, SAMPLE_ROWS, SAMPLE_FEATURES, SAMPLE_K)
    return {
        "sample": _one_set(work, sample, SAMPLE_K),
        "unequal": _one_set(work, unequal(data_dir), UNEQUAL_K),
        "mode": mode.name,
    }


TITLES = {
    "sample": (
        f"the training benchmark's blobs, {SAMPLE_ROWS:,} x {SAMPLE_FEATURES}, k = {SAMPLE_K}"
    ),
    "unequal": (
        f"unequal clusters (sizes 1 : 10 : 100, spreads 0.1-3), {UNEQUAL_ROWS:,} x "
        f"{UNEQUAL_FEATURES}, k = {UNEQUAL_K}"
    ),
}


def section(results: dict, conditions: list[str]) -> list[str]:
    from bench.report import table

    out = ["## Built-in streaming settings", "", *conditions, ""]
    out += [
        "Each configuration trained by `train` with seeds 0, 1, 2 (medians); inertia on "
        f"every row against the centres written; mini-batch: {int(CHUNK):,}-row chunks, one "
        f"pass; half-life {int(HALF_LIFE):,} rows. Time: CPU seconds of every `train` "
        "process (imports, reading and fitting), the reduction's own seconds, and the wall "
        "time; 2 hosts share this machine's 2 cores.",
        "",
    ]
    for key in ("sample", "unequal"):
        found = results[key]
        runs = found["runs"]
        full = median(runs["full batch (Lloyd on the rows)"], "inertia")
        today = runs["mini-batch, factor 1 (today)"]
        today_cpu = median(today, "cpu")
        rows = []
        for name, runs_of in runs.items():
            inertia, cpu = median(runs_of, "inertia"), median(runs_of, "cpu")
            reduced = runs_of[0]["reduced"]
            per_seed = " / ".join(
                f"{run['inertia'] / base['inertia']:.3f}"
                for run, base in zip(runs_of, today, strict=True)
            )
            rows.append(
                [
                    name,
                    f"{reduced['from']} -> {reduced['to']}" if reduced else "-",
                    f"{inertia:.6g}",
                    f"{inertia / full:.4f}",
                    per_seed,
                    cpu,
                    f"{median(runs_of, 'reduce'):.4f}" if reduced else "-",
                    median(runs_of, "wall"),
                    f"{cpu / today_cpu:.2f}",
                ]
            )
        out += [f"### {TITLES[key]}", ""]
        header = ["configuration", "centres", "inertia", "vs full batch", "vs factor 1"]
        header += ["CPU s", "reduction s", "wall s", "CPU vs factor 1"]
        out += table(header, rows)
        out += [
            "`vs factor 1`: this configuration's inertia over today's mini-batch's, seed by "
            "seed (0 / 1 / 2).",
            "",
        ]
    return out
