"""kmeans-BYOD.ipynb, executed top to bottom with no AWS account, both ways it runs.

The notebook needs the SageMaker Python SDK v3, which cannot share a venv with the runtime
pins (see requirements-notebook.txt), so tests/notebook_env/run_notebook.py executes it in
.venv-notebook (conftest.notebook_python):
- against moto, with the training job, batch transform and endpoint run by the real
  kmeans/train and kmeans/serve (this interpreter's venv). Skipped only when the notebook
  requirements cannot be installed, unless SAGE_KMEANS_REQUIRE_NOTEBOOK=1 (CI).
- in its local mode, against the image (the `image` fixture) through SDK local mode.
  Skipped also without a Docker engine or docker compose (saying which), unless
  SAGE_KMEANS_REQUIRE_CONTAINER=1 (CI).
"""

import json
import sys
from pathlib import Path

from conftest import (
    REQUIRE_CONTAINER,
    REQUIRE_NOTEBOOK,
    ROOT,
    local_mode_problem,
    notebook_python,
    run_in_process_group,
    skip_or_fail,
)

NOTEBOOK = ROOT / "kmeans-BYOD.ipynb"
RUNNER = ROOT / "tests" / "notebook_env" / "run_notebook.py"


def run_notebook(python: Path, executed: Path, *how: str) -> None:
    status, out, err = run_in_process_group(
        [str(python), str(RUNNER), *how, "--output", str(executed)], timeout=900, cwd=ROOT
    )
    assert status == 0, (
        f"the notebook failed (executed copy: {executed}):\n{err[-6000:]}\n{out[-2000:]}"
    )


def test_notebook_is_committed_without_outputs() -> None:
    notebook = json.loads(NOTEBOOK.read_text())
    assert notebook["nbformat"] == 4
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [], f"cell {cell.get('id')} has outputs: clear them"
            assert cell["execution_count"] is None, f"cell {cell.get('id')} has a count"


def test_notebook_runs_top_to_bottom_against_moto(tmp_path: Path) -> None:
    python = notebook_python(REQUIRE_NOTEBOOK)
    runtime_bin = Path(sys.executable).parent  # kmeans/train and serve run with this venv
    run_notebook(python, tmp_path / "executed.ipynb", "--runtime-bin", str(runtime_bin))


def test_notebook_runs_top_to_bottom_in_local_mode(image: str, tmp_path: Path) -> None:
    problem = local_mode_problem()
    if problem:
        skip_or_fail(f"SDK local mode cannot run: {problem}", REQUIRE_CONTAINER)
    python = notebook_python(REQUIRE_CONTAINER, REQUIRE_NOTEBOOK)
    run_notebook(python, tmp_path / "executed.ipynb", "--local-image", image)
