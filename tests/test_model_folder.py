"""The model folder names its algorithm, and serve follows it: a folder written before
model.json named one loads as K-Means and answers byte for byte as before; a folder naming
an algorithm this image lacks, or a setting naming one, stops with one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import requests
from conftest import make_job, run_train
from test_model_files import one_line, run_serve

from kmeans.environment import EXIT_NO_MODEL

BODY = "5.1,3.5,1.4,0.2\n6.7,3.0,5.2,2.3\n5.9,3.0,4.2,1.5"


def test_model_json_names_the_algorithm(trained: Path) -> None:
    metadata = json.loads((trained / "model" / "model.json").read_text())
    assert next(iter(metadata)) == "algorithm" and metadata["algorithm"] == "kmeans"


def test_a_folder_that_names_no_algorithm_loads_as_kmeans(
    trained: Path, tmp_path: Path, start_server
) -> None:
    earlier = tmp_path / "earlier"
    shutil.copytree(trained / "model", earlier / "model")
    metadata = json.loads((earlier / "model" / "model.json").read_text())
    del metadata["algorithm"]  # as versions before the seam wrote it
    (earlier / "model" / "model.json").write_text(json.dumps(metadata))
    answers = []
    for base in (trained, earlier):
        server = start_server(base)
        for accept in ("text/csv", "application/json"):
            answer = requests.post(
                server.url + "/invocations", data=BODY, headers={"Accept": accept}, timeout=10
            )
            assert answer.status_code == 200
            answers.append(answer.content)
        server.stop()
    assert answers[:2] == answers[2:]


def test_an_algorithm_this_image_lacks_stops_serve_in_one_line(
    trained: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    shutil.copytree(trained / "model", other / "model")
    metadata = json.loads((other / "model" / "model.json").read_text())
    (other / "model" / "model.json").write_text(json.dumps({**metadata, "algorithm": "xgb"}))
    result = run_serve(other)
    assert result.returncode == EXIT_NO_MODEL
    assert one_line(result).startswith(
        f"serve: cannot start: {other / 'model' / 'model.json'}: no algorithm named 'xgb' in "
        "this image; it has "
    )


def test_a_setting_naming_no_algorithm_stops_train_and_serve(trained: Path, tmp_path: Path) -> None:
    base = make_job(tmp_path / "ml", {"k": "2"}, {"train/a.csv": BODY})
    result = run_train(base, SAGE_KMEANS_ALGORITHM="xgb")
    assert result.returncode == 1
    reason = (base / "output" / "failure").read_text().splitlines()
    assert len(reason) == 1 and reason[0].startswith(
        "SAGE_KMEANS_ALGORITHM must name one of this image's algorithms ("
    ), reason
    assert reason[0].endswith("), got 'xgb'")
    served = run_serve(trained, SAGE_KMEANS_ALGORITHM="xgb")
    assert served.returncode == 2
    assert one_line(served) == "serve: cannot start: " + reason[0]
