"""The benchmark suite's quick mode (`bench/run.py --quick`) runs end to end and writes
every table, so the suite never rots. No time is asserted: a benchmark is a script that
prints a table. It needs nginx and wrk; without them it is skipped, except in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MISSING = [
    name
    for name in ("nginx", "wrk")
    if shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin") is None
]
pytestmark = pytest.mark.skipif(
    bool(MISSING) and not os.environ.get("CI"),
    reason=f"not installed: {', '.join(MISSING)} (Debian: apt-get install nginx wrk)",
)

TABLES = {
    "## Targets": "| target | measured |",
    "## 1. Single-record requests": "| connections | stack | req/s | p50 ms | p99 ms |",
    "## 2. Large requests": "| body | stack | req/s | rows/s | p50 ms | p99 ms |",
    "## 3.1 Training: 100,000 x 32, k = 16": "| trainer | wall s | load s | fit s | peak RSS MB |",
    "## 3.2 Training: 50,000 x 24, k = 12": "| trainer | wall s | load s | fit s | peak RSS MB |",
    "## 4. Start-up and memory": "| workers | stack | first 200 s | PSS MB | RSS MB |",
    "## Training across hosts": "| hosts | wall s | cluster start s |",
    "## 6. Multi-model endpoints": "| connections | endpoint | req/s | p50 ms | p99 ms |",
}
ROWS = [
    "| 1 | ours |",
    "| 1 | ceiling |",
    "| 16 | naive |",
    "| csv | ours |",
    "| csv | naive |",
    "| json | ceiling |",
    "| json | naive |",
    "| narrow csv | ours |",
    "| narrow csv | ceiling |",
    "| narrow csv | naive |",
    "| narrow json | ours |",
    "| narrow json | naive |",
    "| narrow jsonl | ours |",
    "| narrow jsonl | naive |",
    "| 2 | ours |",
    "| 4 | naive |",
    "| 1 | single-model |",
    "| 16 | multi-model |",
    "| POST /models (load) |",
]


def test_quick_mode_writes_every_table(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)]
    command += ["--work", str(tmp_path / "work"), "--data", str(tmp_path / "data")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = out.read_text()
    for heading, header in TABLES.items():
        section = report.partition(heading)[2]
        assert section, f"no {heading!r} in the report"
        assert header in section, f"{heading!r} has no table"
    for row in ROWS:
        assert row in report, f"no row {row!r}"
    for number in (1, 2):
        trainers = report.partition(f"## 3.{number} Training")[2].partition("## ")[0]
        for trainer in ("ours", "naive", "ours, streaming"):
            assert f"| {trainer} | " in trainers, f"no training row for {trainer} in 3.{number}"
    targets = report.partition("## Targets")[2].partition("## 1.")[0]
    for target in (
        "2. large narrow csv: ours ÷ ceiling, rows/s",
        "2. large narrow jsonl: ours ÷ naive, rows/s",
        "3. training 50,000 x 24: peak RSS, ours ÷ naive",
        "4. 4 workers: ours, first 200 s",
        "4. 2 workers: ours ÷ naive, first 200",
    ):
        assert f"| {target} | " in targets, f"no target {target!r}"
    assert "## 5. Image" in report
    across = report.partition("## Training across hosts")[2]
    for hosts in (1, 2, 4):
        assert f"\n| {hosts} | " in across, f"no row for {hosts} training hosts"
    assert "| full | " in across and "| quarter | " in across
