"""Training across hosts, run the way SageMaker runs it: one `train` process per host,
each with its own /opt/ml tree (SAGEMAKER_BASE_DIR) and resourceconfig.json, the hosts
named by loopback addresses (127.x.y.z all reach this machine), talking over Dask.

Each test compares the one model the leader writes with single-host training on the
same rows: inertia within 1 %, and the same centres; and the leader's metric lines with
msd and ssd computed from the saved centres and every host's rows (tests/oracles.py).
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, TRAIN, entrypoint_env, make_job, run_train
from oracles import FULL_BATCH, LAST_PASS, assert_metric_lines, matched_centre_distances
from sklearn.datasets import make_blobs
from test_streaming import start_writer

from kmeans.algorithms.kmeans import reduction

_SUBNETS = itertools.count(1)  # a fresh 127.N.0.x for each job: no port is ever reused
RNG = np.random.default_rng(7)
CENTRES = RNG.normal(0, 12, size=(6, 5))


def blobs(rows: int, features: int = 5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = CENTRES[:, :features]
    labels = rng.integers(0, len(centres), rows)
    return (centres[labels] + rng.normal(0, 1.0, size=(rows, features))).astype(np.float32)


def csv_bytes(rows: np.ndarray) -> bytes:
    return ("\n".join(",".join(f"{v:.5f}" for v in row) for row in rows) + "\n").encode()


def as_written(rows: np.ndarray) -> np.ndarray:
    """The rows as csv_bytes writes them (5 decimals): what training reads."""
    return np.loadtxt(io.BytesIO(csv_bytes(rows)), delimiter=",", ndmin=2)


def parquet_bytes(rows: np.ndarray) -> bytes:
    table = pa.table({f"f{i}": rows[:, i] for i in range(rows.shape[1])})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=1000)
    return sink.getvalue().to_pybytes()


@dataclass
class Host:
    name: str
    base: Path
    process: subprocess.Popen | None = None
    log: str = ""
    ended: float = 0.0  # time.monotonic() when its process ended
    ended_at: float = 0.0  # and time.time(), to compare with file times

    @property
    def code(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def failure(self) -> str:
        path = self.base / "output" / "failure"
        return path.read_text() if path.exists() else ""

    def model_files(self) -> list[str]:
        return sorted(p.name for p in (self.base / "model").iterdir())

    def summary(self) -> dict:
        return json.loads((self.base / "output" / "data" / "summary.json").read_text())


class Job:
    """`count` hosts, each an /opt/ml tree under `root`, named 127.N.0.2, 127.N.0.3, ..."""

    def __init__(
        self,
        root: Path,
        count: int,
        hyperparameters: dict,
        files: dict[str, bytes] | list[dict[str, bytes]],
        channels: dict | None = None,
    ) -> None:
        subnet = next(_SUBNETS)
        names = [f"127.{subnet}.0.{i + 2}" for i in range(count)]
        channels = channels or {"train": {"TrainingInputMode": "File"}}
        self.hosts = []
        for index, name in enumerate(names):
            mine = files[index] if isinstance(files, list) else files
            base = make_job(root / f"host-{index + 1}", hyperparameters, mine, channels)
            (base / "input" / "config" / "resourceconfig.json").write_text(
                json.dumps({"current_host": name, "hosts": names, "network_interface_name": "eth0"})
            )
            self.hosts.append(Host(name, base))

    def start(self, which: list[int] | None = None, **env: str) -> Job:
        for index in range(len(self.hosts)) if which is None else which:
            host = self.hosts[index]
            with (host.base / "train.log").open("wb") as log:  # a file: never a full pipe
                host.process = subprocess.Popen(
                    [str(TRAIN)],
                    env=entrypoint_env(host.base, **env),
                    cwd="/",
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        return self

    def wait(self, timeout: float = 300) -> Job:
        deadline = time.monotonic() + timeout
        running = [h for h in self.hosts if h.process is not None]
        while running:
            for host in list(running):
                if host.process.poll() is not None:
                    host.ended, host.ended_at = time.monotonic(), time.time()
                    host.log = (host.base / "train.log").read_text()
                    running.remove(host)
            if time.monotonic() > deadline:
                for host in running:
                    host.process.kill()
                raise AssertionError(f"hosts still running after {timeout} s: {running}")
            time.sleep(0.05)
        return self

    @property
    def leader(self) -> Host:
        return self.hosts[0]

    def logs(self) -> str:
        return "\n".join(f"--- {h.name} (exit {h.code})\n{h.log}" for h in self.hosts)


def run_job(root: Path, count: int, hyperparameters: dict, files, channels=None, **env) -> Job:
    return Job(root, count, hyperparameters, files, channels).start(**env).wait()


def single_host(root: Path, hyperparameters: dict, files: dict, channels=None) -> dict:
    base = make_job(root / "single", hyperparameters, files, channels)
    result = run_train(base, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads((base / "output" / "data" / "summary.json").read_text()) | {
        "centres": np.loadtxt(base / "output" / "data" / "centers.csv", delimiter=",", ndmin=2)
    }


def assert_one_model(job: Job, rows: int, hosts: list[str] | None = None) -> dict:
    logs = job.logs()
    assert all(h.code == 0 for h in job.hosts), logs
    metadata = json.loads((job.leader.base / "model" / "model.json").read_text())
    builtin = [] if metadata["hyperparameters"]["standardize"] else ["model_algo-1"]
    assert job.leader.model_files() == ["model.joblib", "model.json", "model.npz", *builtin], logs
    for follower in job.hosts[1:]:
        assert follower.model_files() == [], logs
        assert not (follower.base / "output" / "data" / "summary.json").exists()
        assert "#quality_metric" not in follower.log
    summary = job.leader.summary()
    expected_hosts = hosts if hosts is not None else [h.name for h in job.hosts]
    assert summary["rows"] == metadata["rows"] == rows
    assert summary["hosts"] == metadata["hosts"] == expected_hosts
    return summary | {
        "centres": np.loadtxt(
            job.leader.base / "output" / "data" / "centers.csv", delimiter=",", ndmin=2
        )
    }


def assert_metrics(
    job: Job,
    rows: np.ndarray,
    test: np.ndarray | None = None,
    test_names: tuple[str, ...] = ("msd",),
    train_rel: float = FULL_BATCH,
) -> None:
    """The leader's metric lines against the saved model and all the job's rows."""
    model = job.leader.base / "model"
    assert_metric_lines(job.leader.log, model, rows, test, test_names, train_rel, job.leader.name)


def assert_same_model(ours: dict, single: dict, rel: float = 0.01) -> None:
    ssd, reference = ours["metrics"]["train"]["ssd"], single["metrics"]["train"]["ssd"]
    assert ssd == pytest.approx(reference, rel=rel)
    # the same centres, in whatever order each run found them, each paired with its own
    distances = matched_centre_distances(ours["centres"], single["centres"])
    assert distances.max() < 0.1, distances


def test_the_same_model_check_refuses_a_cluster_found_twice() -> None:
    """Centres 0 and 1 each found twice (2 and 3 missed): each found centre is near some
    expected one, which the check once asked, but the one-to-one pairing leaves two far."""
    single = {"metrics": {"train": {"ssd": 100.0}}, "centres": CENTRES[:4]}
    ours = {"metrics": {"train": {"ssd": 100.0}}, "centres": CENTRES[[0, 1, 0, 1]] + 0.01}
    nearest = np.linalg.norm(ours["centres"][:, None] - single["centres"][None], axis=2)
    assert nearest.min(axis=1).max() < 0.1
    with pytest.raises(AssertionError):
        assert_same_model(ours, single)
    assert_same_model(ours | {"centres": CENTRES[[2, 0, 3, 1]] + 0.01}, single)


def test_two_hosts_share_one_fully_replicated_csv_file(tmp_path: Path) -> None:
    rows = blobs(40_000)
    files = {"train/data.csv": csv_bytes(rows)}
    hp = {"k": "6"}
    job = run_job(tmp_path, 2, hp, files)
    ours = assert_one_model(job, len(rows))
    assert sum(ours["rows_by_host"].values()) == len(rows)
    assert min(ours["rows_by_host"].values()) > 0.4 * len(rows)  # each read its half
    assert_same_model(ours, single_host(tmp_path, hp, files))
    assert_metrics(job, as_written(rows))
    # followers leave promptly once the leader has saved the model, and not before
    saved = (job.leader.base / "model" / "model.json").stat().st_mtime
    assert all(0 <= f.ended_at - saved < 15 for f in job.hosts[1:]), job.logs()
    assert "saved the model; done" in job.hosts[1].log
    assert job.leader.log.count("#quality_metric: host=127.") == 2


def test_three_sharded_hosts_with_parquet_files_and_a_test_channel(tmp_path: Path) -> None:
    rows, test_rows = blobs(30_000, seed=1), blobs(3_000, seed=2)
    shards = np.array_split(rows, 5)
    test_shards = np.array_split(test_rows, 3)
    per_host = [{0: [0, 1], 1: [2, 3, 4], 2: []}[host] for host in range(3)]
    files = [
        {f"train/part-{i}.parquet": parquet_bytes(shards[i]) for i in mine}
        | {"test/t.parquet": parquet_bytes(test_shards[host])}
        for host, mine in enumerate(per_host)
    ]
    sharded = {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}
    channels = {"train": sharded, "test": sharded}
    hp = {"k": "6", "eval_metrics": '["msd", "ssd"]'}
    job = run_job(tmp_path, 3, hp, files, channels)
    ours = assert_one_model(job, len(rows), hosts=[h.name for h in job.hosts[:2]])
    assert ours["rows_by_host"][job.hosts[2].name] == 0
    union = {"train/all.parquet": parquet_bytes(rows), "test/all.parquet": parquet_bytes(test_rows)}
    single = single_host(tmp_path, hp, union)
    assert_same_model(ours, single)
    assert ours["metrics"]["test"]["ssd"] == pytest.approx(
        single["metrics"]["test"]["ssd"], rel=0.01
    )
    assert_metrics(job, rows, test_rows, ("msd", "ssd"))


def test_fully_replicated_files_of_every_kind_with_standardize(tmp_path: Path) -> None:
    rows = blobs(24_000, seed=3) * np.array([1, 10, 100, 0.1, 1], np.float32)
    parts = np.array_split(rows, 4)
    files = {
        "train/a/1.csv": b"f1,f2,f3,f4,f5\n" + csv_bytes(parts[0]),
        "train/a/2.csv.gz": gzip.compress(csv_bytes(parts[1])),
        "train/b/3.parquet": parquet_bytes(parts[2]),
        "train/b/4.csv": csv_bytes(parts[3]),
    }
    hp = {"k": "6", "standardize": "true"}
    job = run_job(tmp_path, 3, hp, files)
    ours = assert_one_model(job, len(rows))
    assert_same_model(ours, single_host(tmp_path, hp, files))
    assert b"StandardScaler" in (job.leader.base / "model" / "model.joblib").read_bytes()
    written = [as_written(parts[0]), as_written(parts[1]), parts[2], as_written(parts[3])]
    assert_metrics(job, np.concatenate(written))


def test_mini_batch_across_two_hosts(tmp_path: Path) -> None:
    rows = blobs(60_000, seed=4)
    files = {"train/data.csv": csv_bytes(rows)}
    hp = {"k": "6", "mini_batch_size": "2000", "epochs": "2"}
    job = run_job(tmp_path, 2, hp, files)
    ours = assert_one_model(job, len(rows))
    assert "nan" not in job.leader.log.lower()
    assert_same_model(ours, single_host(tmp_path, hp, files))
    assert_metrics(job, as_written(rows), train_rel=LAST_PASS)


def test_pipe_mode_across_two_hosts_trains_each_row_once(tmp_path: Path) -> None:
    """FullyReplicated Pipe mode: each host's FIFO carries every row; each keeps half."""
    rows = blobs(30_000, seed=6)
    pipe = {"train": {"TrainingInputMode": "Pipe", "ContentType": "text/csv"}}
    hp = {"k": "6", "mini_batch_size": "1500", "epochs": "2"}
    job = Job(tmp_path, 2, hp, {}, pipe)
    for host in job.hosts:
        (host.base / "input" / "data").mkdir()
    writers = [start_writer(host.base, "train", 2, csv_bytes(rows)) for host in job.hosts]
    job.start().wait()
    for writer in writers:
        assert writer.wait(timeout=60) == 0
    ours = assert_one_model(job, len(rows))
    assert ours["rows_by_host"] == {h.name: len(rows) // 2 for h in job.hosts}
    assert_same_model(ours, single_host(tmp_path, hp, {"train/data.csv": csv_bytes(rows)}))
    assert_metrics(job, as_written(rows), train_rel=LAST_PASS)


def test_a_host_that_never_starts_is_named(tmp_path: Path) -> None:
    job = Job(tmp_path, 2, {"k": "3"}, {"train/data.csv": csv_bytes(blobs(1000))})
    job.start([0], SAGE_KMEANS_JOIN_TIMEOUT_SECONDS="5").wait(timeout=120)
    leader, missing = job.leader, job.hosts[1]
    assert leader.code == 2, job.logs()
    first_line = leader.failure().splitlines()[0]
    assert first_line == (
        f"host {missing.name} did not join within 5 s (SAGE_KMEANS_JOIN_TIMEOUT_SECONDS); "
        f"check that the hosts reach {leader.name} on port 8786"
    )
    assert leader.model_files() == []


def test_hosts_with_different_feature_counts_fail_every_host(tmp_path: Path) -> None:
    files = [
        {"train/a.csv": csv_bytes(blobs(2000, features=5))},
        {"train/b.csv": csv_bytes(blobs(2000, features=4))},
    ]
    sharded = {"train": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}}
    job = run_job(tmp_path, 2, {"k": "3"}, files, sharded)
    for host in job.hosts:
        assert host.code == 1, job.logs()
        first_line = host.failure().splitlines()[0]
        assert first_line == (
            "the hosts' data differ in feature count "
            f"(host {job.hosts[0].name} has 5, host {job.hosts[1].name} has 4); "
            "every row needs the same"
        )
        assert host.model_files() == []


def test_a_bad_file_on_a_follower_fails_the_job_naming_it(tmp_path: Path) -> None:
    files = [
        {"train/a.csv": csv_bytes(blobs(2000))},
        {"train/b.csv": b"1,2,3,4,5\n1,2,x,4,5\n"},
    ]
    sharded = {"train": {"TrainingInputMode": "File", "S3DistributionType": "ShardedByS3Key"}}
    job = run_job(tmp_path, 2, {"k": "3"}, files, sharded)
    expected = f"host {job.hosts[1].name}: b.csv line 2, column 3: 'x' is not a number"
    for host in job.hosts:
        assert host.code == 1, job.logs()
        assert host.failure().splitlines()[0] == expected
        assert host.model_files() == []


def endless_job(root: Path) -> Job:
    """Three hosts on uniform noise with tol 0: Lloyd's iterations never stop on their
    own. Returns once the leader has logged its third iteration."""
    rows = np.random.default_rng(5).random((40_000, 5), dtype=np.float32)
    hp = {"k": "8", "tol": "0", "max_iter": "100000"}
    job = Job(root, 3, hp, {"train/data.csv": csv_bytes(rows)}).start()
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        log = (job.leader.base / "train.log").read_text()
        assert job.leader.process.poll() is None, log
        if "iteration 3:" in log:
            return job
        time.sleep(0.1)
    raise AssertionError("the leader never reached its third iteration")


def test_followers_fail_promptly_when_the_leader_dies(tmp_path: Path) -> None:
    job = endless_job(tmp_path)
    job.leader.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    job.wait(timeout=120)
    for follower in job.hosts[1:]:
        assert follower.code == 2, job.logs()
        assert follower.ended - killed < 30
        assert follower.failure().startswith(f"lost the leader {job.leader.name}: "), job.logs()
        assert follower.model_files() == []
    assert job.leader.failure() == ""  # killed: it wrote nothing
    assert job.leader.model_files() == []
    assert job.leader.code == -signal.SIGKILL


def test_a_follower_lost_mid_job_fails_every_host(tmp_path: Path) -> None:
    job = endless_job(tmp_path)
    lost = job.hosts[1]
    lost.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    job.wait(timeout=120)
    expected = f"host {lost.name} was lost mid-job (its process ended or it became unreachable)"
    for host in (job.leader, job.hosts[2]):
        assert host.code == 2, job.logs()
        assert host.ended - killed < 30
        assert host.failure().splitlines()[0] == expected, job.logs()
        assert host.model_files() == []


def test_sigterm_stops_every_host(tmp_path: Path) -> None:
    job = endless_job(tmp_path)
    for host in job.hosts:
        host.process.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    job.wait(timeout=120)
    for host in job.hosts:
        assert host.code == 143, job.logs()
        assert host.ended - stopped < 30
        assert host.failure().startswith("training stopped by SIGTERM"), job.logs()
        assert host.model_files() == []


def test_kmeans_plusplus_picks_the_rows_scikit_learn_picks() -> None:
    from sklearn.cluster import kmeans_plusplus as scikit_learn_kmeans_plusplus

    for seed in range(20):
        rows, _ = make_blobs(2000 + seed, 3 + seed % 5, centers=2 + seed % 7, random_state=seed)
        k = 2 + seed % 11
        ours = reduction.kmeans_plusplus(rows, k, seed)
        theirs, _ = scikit_learn_kmeans_plusplus(rows, k, random_state=seed)
        np.testing.assert_array_equal(ours, theirs)


def test_hosts_load_no_scikit_learn_while_they_hold_rows() -> None:
    """What a host imports to join, load and iterate: scikit-learn, scipy and pandas
    (about 150 MB) come only when the model is made, after every host let go of its rows."""
    code = (
        "import sys; import kmeans.training, kmeans.algorithms.kmeans.reduction, kmeans.hosts; "
        "print(sorted(m for m in ('sklearn', 'scipy', 'pandas', 'joblib') if m in sys.modules))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "[]", found.stdout + found.stderr
