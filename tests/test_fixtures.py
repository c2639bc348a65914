"""The shared fixtures themselves: the sample job that `trained` and others start from is a
clean copy (input/ only), so a model or failure file that a local run (`make demo`) left in
local_test/test_dir cannot satisfy a test's existence check."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import SAMPLE, sample_job


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_stale_model_and_output_stay_out_of_the_sample_job(tmp_path: Path) -> None:
    """local_test/test_dir as `make demo` leaves it (a model, a failure line, a checkpoint,
    an output artefact), copied: only input/ comes along; model/ and output/ are empty."""
    source = tmp_path / "test_dir"
    shutil.copytree(SAMPLE, source)
    stale = {
        "model/model.joblib": b"not a model",
        "model/model.npz": b"not arrays",
        "model/model.json": b"{}",
        "output/failure": b"an earlier failure\n",
        "output/data/stale.txt": b"an earlier artefact",
        "checkpoints/checkpoint.npz": b"an earlier checkpoint",
    }
    for name, content in stale.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(content)

    job = sample_job(tmp_path / "ml", source)

    assert sorted(path.name for path in job.iterdir()) == ["input", "model", "output"]
    assert list((job / "model").iterdir()) == []
    assert list((job / "output").iterdir()) == []
    assert files_under(job / "input") == files_under(SAMPLE / "input")
    assert files_under(job / "input"), "the sample job has no input files"
