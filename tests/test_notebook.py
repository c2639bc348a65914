"""kmeans-BYOD.ipynb, executed top to bottom with AWS replaced by local stand-ins.

The notebook needs the SageMaker Python SDK v3, which cannot share a venv with the runtime
pins (see requirements-notebook.txt). So this test keeps its own venv, .venv-notebook,
(re)installed when requirements-notebook.txt changes, and runs
tests/notebook_env/run_notebook.py in it: moto for the AWS control plane, the real
kmeans/train and kmeans/serve (run with this interpreter's venv) for the jobs and the
endpoint. Skipped only when the notebook requirements cannot be installed, unless
SAGE_KMEANS_REQUIRE_NOTEBOOK=1 (CI), which turns that skip into a failure.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "kmeans-BYOD.ipynb"
REQUIREMENTS = ROOT / "requirements-notebook.txt"
VENV = ROOT / ".venv-notebook"
RUNNER = ROOT / "tests" / "notebook_env" / "run_notebook.py"
REQUIRE = os.environ.get("SAGE_KMEANS_REQUIRE_NOTEBOOK") == "1"


def notebook_python() -> Path:
    """.venv-notebook's Python, with requirements-notebook.txt installed."""
    python, stamp = VENV / "bin" / "python", VENV / ".requirements"
    want = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    steps = [[sys.executable, "-m", "venv", "--clear", str(VENV)]] if not python.exists() else []
    steps.append([*pip, "-r", str(REQUIREMENTS)])
    for step in steps:
        problem = None
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode != 0:
                last_lines = "\n".join(done.stderr.strip().splitlines()[-5:])
                problem = f"`{' '.join(step[:4])}` failed:\n{last_lines[-2000:]}"
        except subprocess.TimeoutExpired:
            problem = f"`{' '.join(step[:4])}` took over 15 minutes"
        if problem:
            message = f"cannot install requirements-notebook.txt into .venv-notebook: {problem}"
            if REQUIRE:
                pytest.fail(message)
            pytest.skip(message)
    stamp.write_text(want)
    return python


def test_notebook_is_committed_without_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {cell.get('id')} has outputs: clear them"
            assert cell["execution_count"] is None, f"cell {cell.get('id')} has a count"


def test_notebook_runs_top_to_bottom(tmp_path: Path) -> None:
    python = notebook_python()
    executed = tmp_path / "kmeans-BYOD.executed.ipynb"
    runtime_bin = Path(sys.executable).parent  # kmeans/train and serve run with this venv
    harness = subprocess.Popen(
        [str(python), str(RUNNER), "--runtime-bin", str(runtime_bin), "--output", str(executed)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = harness.communicate(timeout=600)
    finally:
        if harness.poll() is None:  # timed out or interrupted: it stops what it started
            os.killpg(harness.pid, signal.SIGTERM)
            try:
                harness.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(harness.pid, signal.SIGKILL)
                harness.wait()
    assert harness.returncode == 0, (
        f"the notebook failed (executed copy: {executed}):\n{err[-6000:]}\n{out[-2000:]}"
    )
