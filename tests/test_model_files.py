"""The model folder between `train` and `serve`: train writes model.npz (plain arrays, no
code) beside model.joblib and model.json, all or nothing even on a full disk; serve loads
model.npz with numpy alone and unpickles model.joblib only without it (and never with
SAGE_KMEANS_ALLOW_PICKLE=false); both give the same answers; a damaged or foreign model
file stops serve with one line naming it and exit code 3.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from conftest import (
    IRIS,
    REQUIRE_TMPFS,
    ROOT,
    SERVE,
    entrypoint_env,
    free_port,
    make_job,
    run_train,
    sample_job,
    skip_or_fail,
)
from figures import record
from test_serve import request_bodies

from kmeans.environment import EXIT_NO_MODEL

NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin")
ROWS = np.loadtxt(IRIS, delimiter=",")


def trained_job(base: Path, hyperparameters: dict[str, str]) -> Path:
    sample_job(base)
    (base / "input" / "config" / "hyperparameters.json").write_text(json.dumps(hyperparameters))
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    return base


def as_earlier_versions_wrote_it(folder: Path) -> None:
    """model.joblib and model.json only: no model.npz, no model_algo-1."""
    for name in ("model.npz", "model_algo-1"):
        (folder / name).unlink(missing_ok=True)


def test_train_writes_arrays_that_numpy_reads_without_pickle(trained: Path) -> None:
    folder = trained / "model"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "model.joblib",
        "model.json",
        "model.npz",
        "model_algo-1",  # the built-in K-Means's file: tests/test_builtin_model.py
    ]
    with np.load(folder / "model.npz", allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["centres", "format"]
        assert int(arrays["format"]) == 1
        centres = arrays["centres"]
    np.testing.assert_array_equal(centres, joblib.load(folder / "model.joblib").cluster_centers_)


def test_serve_imports_neither_scikit_learn_nor_scipy_for_model_npz(trained: Path) -> None:
    """What gunicorn imports in its master before forking: kmeans.wsgi, model and all."""
    script = (
        "import sys, kmeans.wsgi; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sklearn', 'scipy', 'joblib'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=entrypoint_env(trained),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert f"model loaded from {trained / 'model' / 'model.npz'}" in result.stdout


MODELS = {
    "kmeans": {"k": "3"},
    "standardized": {"k": "3", "standardize": "true"},
    "mini-batch": {"k": "3", "mini_batch_size": "40", "epochs": "2"},
}


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
@pytest.mark.parametrize("kind", list(MODELS))
def test_model_npz_and_model_joblib_answer_byte_for_byte_alike(
    kind: str, tmp_path: Path, start_server
) -> None:
    """The safe file, and the same model as earlier versions wrote it (model.joblib and
    model.json only), served side by side."""
    safe = trained_job(tmp_path / "safe", MODELS[kind])
    earlier = tmp_path / "earlier"
    shutil.copytree(safe / "model", earlier / "model")
    as_earlier_versions_wrote_it(earlier / "model")
    servers = [start_server(safe), start_server(earlier)]
    assert f"model loaded from {safe / 'model' / 'model.npz'}" in servers[0].output()
    assert f"model loaded from {earlier / 'model' / 'model.joblib'}" in servers[1].output()
    rng = np.random.default_rng(3)
    compared = 0
    for rows in (ROWS[:1], ROWS, ROWS[rng.integers(0, len(ROWS), 20000)]):  # one, some, large
        for content_type, body in request_bodies(rows).values():
            for accept in ("application/json", "text/csv"):
                answers = [
                    server_post(server.url, body, content_type, accept) for server in servers
                ]
                assert answers[0] == answers[1], (content_type, accept, len(rows))
                compared += 1
    record("identical_answers", model=kind, comparisons=compared)


def server_post(url: str, body: bytes | str, content_type: str, accept: str) -> bytes:
    import requests

    response = requests.post(
        url + "/invocations",
        data=body,
        headers={"Content-Type": content_type, "Accept": accept},
        timeout=60,
    )
    assert response.status_code == 200, response.text[:300]
    return response.content


def run_serve(base: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SERVE)],
        env=entrypoint_env(
            base,
            SAGEMAKER_BIND_TO_PORT=str(free_port()),
            SAGEMAKER_BIND_TO_HOST="127.0.0.1",
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def one_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("serve:")]
    assert len(lines) == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    return lines[0]


def test_unpickling_can_be_forbidden(trained: Path, tmp_path: Path, start_server) -> None:
    earlier = tmp_path / "earlier"
    shutil.copytree(trained / "model", earlier / "model")
    as_earlier_versions_wrote_it(earlier / "model")
    result = run_serve(earlier, SAGE_KMEANS_ALLOW_PICKLE="false")
    assert result.returncode == EXIT_NO_MODEL
    assert one_line(result) == (
        f"serve: cannot start: model file {earlier / 'model' / 'model.npz'} not found, and "
        f"{earlier / 'model' / 'model.joblib'} is a pickle, which SAGE_KMEANS_ALLOW_PICKLE=false "
        "forbids loading: train again to write model.npz"
    )
    bad = run_serve(earlier, SAGE_KMEANS_ALLOW_PICKLE="maybe")
    assert bad.returncode == 2
    assert one_line(bad) == (
        "serve: cannot start: SAGE_KMEANS_ALLOW_PICKLE must be true or false, got 'maybe'"
    )
    if NGINX is not None:  # with model.npz there is nothing to unpickle
        start_server(trained, SAGE_KMEANS_ALLOW_PICKLE="false")


def npz(path: Path, **arrays: np.ndarray) -> None:
    with path.open("wb") as file:
        np.savez(file, **arrays)


CENTRES = np.arange(12, dtype=np.float64).reshape(3, 4)
DAMAGED = {  # name -> (what to do to a copy of the trained folder, the file named)
    "random bytes in model.npz": (
        lambda m: (m / "model.npz").write_bytes(os.urandom(600)),
        "model.npz",
    ),
    "truncated model.npz": (
        lambda m: (m / "model.npz").write_bytes((m / "model.npz").read_bytes()[:300]),
        "model.npz",
    ),
    "empty model.npz": (lambda m: (m / "model.npz").write_bytes(b""), "model.npz"),
    "model.npz of a later format": (
        lambda m: npz(m / "model.npz", format=np.array(2), centres=CENTRES),
        "model.npz",
    ),
    "model.npz without a format": (lambda m: npz(m / "model.npz", centres=CENTRES), "model.npz"),
    "model.npz holding a pickled object": (
        lambda m: npz(m / "model.npz", format=np.array(1), centres=np.array([{}], dtype=object)),
        "model.npz",
    ),
    "model.npz with 1-D centres": (
        lambda m: npz(m / "model.npz", format=np.array(1), centres=CENTRES[0]),
        "model.npz",
    ),
    "model.npz holding NaN": (
        lambda m: npz(m / "model.npz", format=np.array(1), centres=CENTRES * np.nan),
        "model.npz",
    ),
    "model.npz and model.json disagree": (
        lambda m: npz(m / "model.npz", format=np.array(1), centres=np.ones((5, 4))),
        "model.npz",
    ),
    "random bytes in model.joblib alone": (
        lambda m: (
            as_earlier_versions_wrote_it(m),
            (m / "model.joblib").write_bytes(os.urandom(900)),
        ),
        "model.joblib",
    ),
    "truncated model.joblib alone": (
        lambda m: (
            as_earlier_versions_wrote_it(m),
            (m / "model.joblib").write_bytes((m / "model.joblib").read_bytes()[:500]),
        ),
        "model.joblib",
    ),
    "model.joblib holding a dict": (
        lambda m: (as_earlier_versions_wrote_it(m), joblib.dump({"k": 3}, m / "model.joblib")),
        "model.joblib",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGED))
def test_a_damaged_model_stops_serve_with_one_line_naming_it(
    damage: str, trained: Path, tmp_path: Path
) -> None:
    base = tmp_path / "ml"
    shutil.copytree(trained / "model", base / "model")
    change, named = DAMAGED[damage]
    change(base / "model")
    result = run_serve(base)
    assert result.returncode == EXIT_NO_MODEL, result.stdout + result.stderr
    line = one_line(result)
    assert line.startswith(f"serve: cannot start: model file {base / 'model' / named} "), line
    record("damaged_model", case=damage, exit_code=result.returncode, line=line)


# --- a full disk -------------------------------------------------------------------------


def small_disk(folder: Path, free_pages: int) -> Path:
    """A 1 MB tmpfs at `folder`/disk, filled up to `free_pages` free 4 KB pages."""
    disk = folder / "disk"
    disk.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], check=True)
    (disk / "filler").write_bytes(b"\0" * ((256 - free_pages) * 4096))
    return disk


def unmount(folder: Path) -> None:
    subprocess.run(["umount", str(folder / "disk")], check=False)


def needs_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    probe = Path(f"/tmp/sage-kmeans-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(probe)])
        if done.returncode != 0:
            return (
                "this machine does not allow mounting a tmpfs (a container without CAP_SYS_ADMIN?)"
            )
        subprocess.run(["umount", str(probe)], check=False)
        return None
    finally:
        probe.rmdir()


MOUNT_PROBLEM = needs_mount() if sys.platform.startswith("linux") else "Linux only"


@pytest.fixture
def mountable() -> None:
    """Skip where no tmpfs can be mounted; fail instead with SAGE_KMEANS_REQUIRE_TMPFS=1."""
    if MOUNT_PROBLEM is not None:
        skip_or_fail(MOUNT_PROBLEM, REQUIRE_TMPFS)


def needs_root(test):  # marked `host`: .ci/run's fresh-machine container cannot mount
    return pytest.mark.host(pytest.mark.usefixtures("mountable")(test))


BLOBS = np.random.default_rng(7).normal(size=(6000, 8)) + np.repeat(np.eye(8) * 9, 750, axis=0)
BLOBS_CSV = "\n".join(",".join(f"{v:.5f}" for v in row) for row in BLOBS)


def pages(path: Path) -> int:
    return -(-path.stat().st_size // 4096)


@needs_root
def test_a_full_disk_leaves_no_model_or_all_of_it(tmp_path: Path) -> None:
    """With room for none, one, two or three of the four model files, `train` fails with
    one line naming the file it was writing and leaves the model folder empty."""
    hyperparameters = {"k": "8"}
    roomy = make_job(tmp_path / "roomy", hyperparameters, {"train/blobs.csv": BLOBS_CSV})
    assert run_train(roomy).returncode == 0
    order = ("model.joblib", "model.npz", "model_algo-1", "model.json")  # the writes' order
    sizes = {name: pages(roomy / "model" / name) for name in order}
    room = {  # free pages -> the file that cannot be written
        sum(sizes[name] for name in order[:index]): name for index, name in enumerate(order)
    }
    room[sum(sizes.values())] = None
    for free, failing in room.items():
        base = make_job(tmp_path / f"free-{free}", hyperparameters, {"train/blobs.csv": BLOBS_CSV})
        disk = small_disk(base, free)
        try:
            (disk / "model").mkdir()
            (base / "model").rmdir()
            (base / "model").symlink_to(disk / "model")
            result = run_train(base)
            left = sorted(p.name for p in (disk / "model").iterdir())
        finally:
            unmount(base)
        if failing is None:
            assert result.returncode == 0, result.stdout
            assert left == sorted(sizes)
            continue
        assert result.returncode == 1, result.stdout + result.stderr
        reason = (base / "output" / "failure").read_text().splitlines()[0]
        assert reason == (
            f"no space left on device while writing {base.resolve() / 'model' / failing}: "
            "free space, or give the job a larger volume (VolumeSizeInGB)"
        )
        assert left == [], f"{free} pages free: left {left}"
        record("disk_full_model", free_pages=free, failing=failing, left=len(left))


@needs_root
def test_a_full_disk_keeps_the_last_checkpoint(tmp_path: Path) -> None:
    """A checkpoint that cannot be written fails the job with one line; the previous one
    is still there, whole, for the next job to resume from."""
    first = make_job(
        tmp_path / "first",
        {"k": "8", "mini_batch_size": "500", "epochs": "1"},
        {"train/blobs.csv": BLOBS_CSV},
    )
    (first / "checkpoints").mkdir()
    assert run_train(first).returncode == 0
    checkpoint = (first / "checkpoints" / "kmeans-checkpoint.joblib").read_bytes()
    base = make_job(
        tmp_path / "second",
        {"k": "8", "mini_batch_size": "500", "epochs": "2"},
        {"train/blobs.csv": BLOBS_CSV},
    )
    disk = small_disk(base, 0)
    try:
        (disk / "filler").write_bytes(b"\0" * ((256 - -(-len(checkpoint) // 4096)) * 4096))
        (disk / "checkpoints").mkdir()
        (disk / "checkpoints" / "kmeans-checkpoint.joblib").write_bytes(checkpoint)
        (base / "checkpoints").symlink_to(disk / "checkpoints")
        result = run_train(base)
        left = {p.name: p.read_bytes() for p in (disk / "checkpoints").iterdir()}
    finally:
        unmount(base)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "resumed from checkpoint" in result.stdout
    reason = (base / "output" / "failure").read_text().splitlines()[0]
    target = base.resolve() / "checkpoints" / "kmeans-checkpoint.joblib"
    assert reason.startswith(f"no space left on device while writing {target}")
    assert left == {"kmeans-checkpoint.joblib": checkpoint}
    assert list((base / "model").iterdir()) == []
    record("disk_full_checkpoint", kept_bytes=len(checkpoint))
