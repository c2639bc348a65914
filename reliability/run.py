"""`make reliability`: the reliability suite with its long parts, and its report.

    python reliability/run.py      ~25 min; writes reliability/REPORT.md

1. pytest on tests/test_reliability.py, tests/test_model_files.py, tests/test_fuzz.py and
   tests/test_large_bodies.py with the long tests on (SAGE_KMEANS_RELIABILITY=1: the soak,
   --soak-seconds, the slow-client timeouts and the 1 GB bodies), --fuzz-examples random
   examples per property (`make test` runs 150 fixed ones), and every figure the tests
   measure recorded (tests/figures.py);
2. reliability/workers.py: sync against gthread gunicorn workers, side by side;
3. the report: the conditions, each figure, and the hand-written findings kept from the
   previous report (below the FINDINGS marker). Exits non-zero if a test failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import report as bench_report
from bench.common import FULL, ROOT
from reliability import report, workers

HERE = ROOT / "reliability"
SUITE = [
    "tests/test_reliability.py",
    "tests/test_model_files.py",
    "tests/test_fuzz.py",
    "tests/test_large_bodies.py",
]


def run_suite(work: Path, soak_seconds: int, fuzz_examples: int) -> tuple[int, str, list[dict]]:
    """pytest's exit code, its summary lines, and the figures the tests recorded."""
    figures = work / "figures.jsonl"
    figures.unlink(missing_ok=True)
    env = {
        **os.environ,
        "SAGE_KMEANS_RELIABILITY": "1",
        "SAGE_KMEANS_SOAK_SECONDS": str(soak_seconds),
        "SAGE_KMEANS_FUZZ_EXAMPLES": str(fuzz_examples),
        "SAGE_KMEANS_FIGURES": str(figures),
    }
    command = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *SUITE]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    (work / "pytest.log").write_text(done.stdout + done.stderr)
    lines = done.stdout.strip().splitlines()
    summary = [line for line in lines if line.startswith(("SKIPPED", "FAILED", "ERROR"))]
    summary.append(lines[-1] if lines else f"pytest exited {done.returncode}")
    recorded = (
        [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    )
    return done.returncode, "\n".join(summary), recorded


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--soak-seconds", type=int, default=300)
    parser.add_argument("--fuzz-examples", type=int, default=5000, help="per property")
    parser.add_argument("--worker-seconds", type=int, default=10, help="a wrk run")
    parser.add_argument("--worker-repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=HERE / "work", help="scratch folder")
    parser.add_argument("--out", type=Path, default=HERE / "REPORT.md")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    started, load, code = time.monotonic(), os.getloadavg()[0], bench_report.code_state()
    print("reliability: the suite (pytest) ...", flush=True)
    status, summary, figures = run_suite(args.work, args.soak_seconds, args.fuzz_examples)
    print(summary, flush=True)
    print("reliability: sync against gthread workers ...", flush=True)
    options = workers.measure(args.work / "workers", args.worker_seconds, args.worker_repeats)
    (args.work / "results.json").write_text(
        json.dumps({"figures": figures, "workers": options}, indent=1)
    )
    conditions = bench_report.conditions(replace(FULL, name="reliability"), started, load, code)
    old = args.out.read_text() if args.out.exists() else ""
    args.out.write_text(report.render(conditions, summary, figures, options, args, old))
    print(f"reliability: wrote {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
