"""Training paths of `kmeans/train` that no other test file takes, each held to what the
README says of it, with `kmeans/train` run as SageMaker runs it:

- every numeric (and true/false) environment setting: a bad value fails train with its one
  line in output/failure, exit 1, no model;
- the README's hyperparameters against scikit-learn fitting the same float32 rows:
  `init_method=random`, `n_init` / `local_lloyd_num_trials`, `algorithm=elkan`, every
  `local_lloyd_*` alias (identical centres to its plain name), `random_state`, and the
  ignored `force_dense` and `_tuning_objective_metric` (identical model without them);
- the `training` channel name;
- mini-batch training with `standardize`, replayed chunk by chunk with scikit-learn;
- NaN, inf and bad cells in streamed data (File-mode mini-batch and Pipe mode), Parquet in
  Pipe mode;
- across two hosts (tests/test_multi_host.py's harness): empty-cluster relocation,
  `init_method=random` with several `n_init` runs, mini-batch with `standardize`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import joblib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import make_job, run_train
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.preprocessing import StandardScaler
from test_multi_host import assert_one_model, assert_same_model, run_job, single_host
from test_multi_host import blobs as six_blobs
from test_streaming import start_writer

from kmeans.environment import NUMERIC_SETTINGS, Environment

RNG = np.random.default_rng(24)
# No clusters at all: where the centres end up depends on the seeding, the seed and every
# setting of the fit, so a setting that is dropped changes the model.
UNIFORM = RNG.random((600, 3), dtype=np.float32)
K = "8"


def csv_bytes(rows: np.ndarray) -> bytes:
    """%.9g gives back each float32 exactly, so the job trains on `rows` themselves."""
    return "".join(",".join(f"{v:.9g}" for v in row) + "\n" for row in rows).encode()


UNIFORM_CSV = {"train/data.csv": csv_bytes(UNIFORM)}


@dataclasses.dataclass
class Trained:
    base: Path
    log: str

    @property
    def centres(self) -> np.ndarray:
        return np.load(self.base / "model" / "model.npz", allow_pickle=False)["centres"]

    @property
    def metrics(self) -> dict[str, float]:
        found = re.findall(r"#quality_metric: host=\S+, (\w+ \w+) <loss>=(\S+)", self.log)
        return {name: float(value) for name, value in found}

    @property
    def metadata(self) -> dict:
        return json.loads((self.base / "model" / "model.json").read_text())

    @property
    def estimator(self):
        return joblib.load(self.base / "model" / "model.joblib")


def failure(base: Path) -> str:
    path = base / "output" / "failure"
    return path.read_text() if path.exists() else ""


def model_files(base: Path) -> list[str]:
    return sorted(p.name for p in (base / "model").iterdir())


def train(root: Path, name: str, hyperparameters: dict, files=None, channels=None) -> Trained:
    base = make_job(root / name, hyperparameters, files or UNIFORM_CSV, channels)
    result = run_train(base)
    assert result.returncode == 0, result.stdout + failure(base)
    return Trained(base, result.stdout)


def refused(
    root: Path,
    hyperparameters: dict,
    files=None,
    channels=None,
    earlier_failure: str | None = None,
    **env: str,
) -> str:
    """Run a job that must fail as bad input: its output/failure, checked to be one line
    (`earlier_failure`: a failure file left by an earlier job, which must be replaced)."""
    base = make_job(root, hyperparameters, files or UNIFORM_CSV, channels)
    if earlier_failure is not None:
        (base / "output" / "failure").write_text(earlier_failure)
    result = run_train(base, **env)
    assert result.returncode == 1, result.stdout
    assert model_files(base) == []
    text = failure(base)
    assert text.count("\n") == 1, text
    assert text.strip() in result.stdout  # printed as well
    return text.strip()


def nearest_distance(found: np.ndarray, expected: np.ndarray) -> float:
    """The farthest any expected centre is from its closest found one."""
    return float(np.linalg.norm(found[:, None] - expected[None], axis=2).min(axis=0).max())


# -- environment settings ---------------------------------------------------------------


def test_the_settings_table_holds_every_numeric_setting() -> None:
    numeric = {f.name for f in dataclasses.fields(Environment) if f.type in ("int", "float")}
    assert {setting.field for setting in NUMERIC_SETTINGS} == numeric


@pytest.mark.parametrize("value", ["abc", "-1"])
@pytest.mark.parametrize(
    "variable, setting",
    [(variable, setting) for setting in NUMERIC_SETTINGS for variable in setting.variables],
    ids=[variable for setting in NUMERIC_SETTINGS for variable in setting.variables],
)
def test_a_bad_numeric_setting_fails_train_in_one_line(
    tmp_path: Path, variable: str, setting, value: str
) -> None:
    if setting.unit is None and setting.maximum is not None:
        accepted = f"an integer from {setting.minimum} to {setting.maximum}"
    elif setting.unit is None:
        accepted = f"an integer ≥ {setting.minimum}"
    else:
        accepted = f"a number of {setting.unit} ≥ {setting.minimum}"
    earlier = "a failure from an earlier job\n"
    line = refused(tmp_path, {"k": "3"}, earlier_failure=earlier, **{variable: value})
    assert line == f"{variable} must be {accepted}, got {value!r}"


@pytest.mark.parametrize("variable", ["SAGE_KMEANS_ALLOW_PICKLE", "SAGEMAKER_MULTI_MODEL"])
def test_a_bad_true_or_false_setting_fails_train_in_one_line(tmp_path: Path, variable: str) -> None:
    line = refused(tmp_path, {"k": "3"}, **{variable: "maybe"})
    assert line == f"{variable} must be true or false, got 'maybe'"


# -- hyperparameters, against scikit-learn on the same rows -----------------------------


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """k=8 with every other hyperparameter at its README default."""
    return train(tmp_path_factory.mktemp("default"), "job", {"k": K})


def scikit_learn(**params) -> KMeans:
    """scikit-learn's KMeans with the README's defaults, fitted on the same float32 rows."""
    defaults = {"n_clusters": int(K), "init": "k-means++", "n_init": "auto", "random_state": 0}
    return KMeans(**(defaults | params)).fit(UNIFORM)


def assert_fit_equals(trained: Trained, reference: KMeans) -> None:
    np.testing.assert_allclose(trained.centres, reference.cluster_centers_, rtol=1e-5, atol=1e-6)
    assert trained.metrics["train ssd"] == pytest.approx(reference.inertia_, rel=1e-5)
    assert trained.metrics["train msd"] == pytest.approx(reference.inertia_ / len(UNIFORM), 1e-5)


def differ(a: np.ndarray, b: np.ndarray) -> bool:
    return not np.allclose(a, b, rtol=1e-3, atol=1e-3)


def test_the_defaults_are_scikit_learns_kmeans_plus_plus_seed_0(default_run: Trained) -> None:
    assert_fit_equals(default_run, scikit_learn())
    assert {
        key: default_run.metadata["hyperparameters"][key]
        for key in ("init", "n_init", "algorithm", "seed", "max_iter", "tol")
    } == {
        "init": "k-means++",
        "n_init": "auto",
        "algorithm": "lloyd",
        "seed": 0,
        "max_iter": 300,
        "tol": 1e-4,
    }


def test_init_method_random_seeds_from_random_rows(tmp_path: Path, default_run: Trained) -> None:
    trained = train(tmp_path, "random", {"k": K, "init_method": "random", "seed": "5"})
    reference = scikit_learn(init="random", random_state=5)
    assert_fit_equals(trained, reference)
    assert differ(reference.cluster_centers_, scikit_learn(random_state=5).cluster_centers_)
    assert trained.estimator.init == "random"
    assert trained.metadata["hyperparameters"]["init"] == "random"
    assert trained.metadata["given"] == {"k": K, "init_method": "random", "seed": "5"}


@pytest.mark.parametrize("name", ["n_init", "local_lloyd_num_trials"])
def test_several_n_init_runs_keep_the_best(tmp_path: Path, name: str) -> None:
    trained = train(tmp_path, name, {"k": K, name: "6", "seed": "4"})
    best, one = scikit_learn(n_init=6, random_state=4), scikit_learn(n_init=1, random_state=4)
    assert_fit_equals(trained, best)
    assert differ(best.cluster_centers_, one.cluster_centers_)  # six tries found another fit
    assert best.inertia_ < one.inertia_
    assert trained.estimator.n_init == 6
    assert trained.metadata["hyperparameters"]["n_init"] == 6


def test_algorithm_elkan_fits_with_elkan(tmp_path: Path, default_run: Trained) -> None:
    trained = train(tmp_path, "elkan", {"k": K, "algorithm": "elkan"})
    assert trained.estimator.algorithm == "elkan"
    assert trained.metadata["hyperparameters"]["algorithm"] == "elkan"
    assert_fit_equals(trained, scikit_learn(algorithm="elkan"))
    # the same iterations as Lloyd's, computed with fewer distances: the same centres
    np.testing.assert_allclose(trained.centres, default_run.centres, rtol=1e-4, atol=1e-5)


# Each alias with a value that changes the model, and what scikit-learn calls it.
ALIASES = [
    ("local_lloyd_max_iter", "max_iter", "2", {"max_iter": 2}),
    ("local_lloyd_tol", "tol", "0.5", {"tol": 0.5}),
    ("local_lloyd_num_trials", "n_init", "4", {"n_init": 4}),
    ("init_method", "init", "random", {"init": "random"}),
    ("random_state", "seed", "9", {"random_state": 9}),
]


@pytest.mark.parametrize(("alias", "name", "value", "params"), ALIASES, ids=[a[0] for a in ALIASES])
def test_each_alias_trains_the_model_of_its_plain_name(
    tmp_path: Path, default_run: Trained, alias: str, name: str, value: str, params: dict
) -> None:
    by_alias = train(tmp_path, "alias", {"k": K, alias: value})
    by_name = train(tmp_path, "name", {"k": K, name: value})
    np.testing.assert_array_equal(by_alias.centres, by_name.centres)
    assert by_alias.metrics == by_name.metrics
    assert by_alias.metadata["hyperparameters"] == by_name.metadata["hyperparameters"]
    assert differ(by_alias.centres, default_run.centres)  # the setting took effect
    assert_fit_equals(by_alias, scikit_learn(**params))


def test_both_names_given_must_agree(tmp_path: Path) -> None:
    line = refused(tmp_path, {"k": K, "local_lloyd_max_iter": "5", "max_iter": "6"})
    assert (
        line == "local_lloyd_max_iter and max_iter name the same setting but disagree: '5' vs '6'"
    )


def test_random_state_repeats_and_other_seeds_differ(tmp_path: Path) -> None:
    first = train(tmp_path, "a", {"k": K, "random_state": "1"})
    again = train(tmp_path, "b", {"k": K, "random_state": "1"})
    other = train(tmp_path, "c", {"k": K, "random_state": "2"})
    np.testing.assert_array_equal(first.centres, again.centres)
    assert first.metrics == again.metrics
    moved = np.abs(np.sort(first.centres, axis=None) - np.sort(other.centres, axis=None)).max()
    assert moved > 0.01, f"seeds 1 and 2 gave centres within {moved} of each other"
    assert first.metrics != other.metrics
    assert_fit_equals(other, scikit_learn(random_state=2))


def test_force_dense_and_the_tuners_metric_are_ignored(
    tmp_path: Path, default_run: Trained
) -> None:
    extra = {"force_dense": "True", "_tuning_objective_metric": "train:msd"}
    trained = train(tmp_path, "ignored", {"k": K, **extra})
    np.testing.assert_array_equal(trained.centres, default_run.centres)
    assert trained.metrics == default_run.metrics
    assert trained.metadata["hyperparameters"] == default_run.metadata["hyperparameters"]
    assert trained.metadata["given"] == {"k": K}  # not recorded as settings


def test_local_lloyd_init_method_has_no_effect_in_full_batch(
    tmp_path: Path, default_run: Trained
) -> None:
    trained = train(tmp_path, "noted", {"k": K, "local_lloyd_init_method": "random"})
    np.testing.assert_array_equal(trained.centres, default_run.centres)
    assert "local_lloyd_init_method=random: seeds the local Lloyd step" in trained.log
    assert "mode; no effect in full-batch training" in trained.log


@pytest.mark.parametrize("declared", [True, False], ids=["inputdataconfig", "folder only"])
def test_the_training_channel_name_is_read_as_train(
    tmp_path: Path, default_run: Trained, declared: bool
) -> None:
    channels = {"training": {"TrainingInputMode": "File"}} if declared else None
    files = {"training/part/data.csv": csv_bytes(UNIFORM)}
    trained = train(tmp_path, "training", {"k": K}, files, channels)
    assert "loaded 600 rows x 3 features from channel 'training'" in trained.log
    np.testing.assert_array_equal(trained.centres, default_run.centres)


# -- mini-batch with standardize ----------------------------------------------------------

BLOB_CENTRES = np.array([[0, 0, 0], [10, 10, 10], [0, 10, 0], [10, 0, 10]], np.float64)
SCALES = np.array([1, 100, 0.01])


def scaled_blobs(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = BLOB_CENTRES[rng.integers(0, 4, rows)] + rng.normal(0, 1, (rows, 3))
    return (points * SCALES).astype(np.float32)


def replay_mini_batch(rows: np.ndarray, k: int, batch: int, seed: int):
    """The README's mini-batch rule in scikit-learn: the first chunk (≥ 20 x k rows) fits
    the scaler and seeds the centres; each later chunk is scored, then learned from."""
    first = max(batch, 20 * k)
    chunks = [rows[:first]] + [rows[i : i + batch] for i in range(first, len(rows), batch)]
    scaler = StandardScaler().fit(rows[:first])
    kmeans = MiniBatchKMeans(
        n_clusters=k, batch_size=batch, random_state=seed, n_init="auto", compute_labels=False
    )
    ssd = 0.0
    for index, chunk in enumerate(chunks):
        scaled = scaler.transform(chunk).astype(np.float32)
        if index == 0:
            kmeans.partial_fit(scaled)
        distances = ((scaled[:, None].astype(np.float64) - kmeans.cluster_centers_) ** 2).sum(2)
        ssd += float(distances.min(axis=1).sum())
        if index:
            kmeans.partial_fit(scaled)
    return scaler, kmeans, ssd


def test_mini_batch_with_standardize_scales_by_the_first_chunk(tmp_path: Path) -> None:
    rows = scaled_blobs(8000, seed=1)
    hp = {"k": "4", "mini_batch_size": "500", "standardize": "true", "seed": "7"}
    trained = train(tmp_path, "job", hp, {"train/data.csv": csv_bytes(rows)})
    scaler, kmeans, ssd = replay_mini_batch(rows, 4, 500, seed=7)
    estimator = trained.estimator
    assert [name for name, _ in estimator.steps] == ["scale", "kmeans"]
    assert type(estimator[-1]).__name__ == "MiniBatchKMeans"
    saved = np.load(trained.base / "model" / "model.npz", allow_pickle=False)
    np.testing.assert_allclose(saved["mean"], scaler.mean_, rtol=1e-6)
    np.testing.assert_allclose(saved["scale"], scaler.scale_, rtol=1e-6)
    whole = StandardScaler().fit(rows)  # the first chunk's statistics, not all the rows'
    assert not np.allclose(saved["mean"], whole.mean_, rtol=1e-4)
    np.testing.assert_allclose(trained.centres, kmeans.cluster_centers_, rtol=1e-4, atol=1e-5)
    assert trained.metrics["train ssd"] == pytest.approx(ssd, rel=1e-4)
    assert trained.metrics["train msd"] == pytest.approx(ssd / len(rows), rel=1e-4)
    # in the data's own units, the four blobs
    found = trained.centres * saved["scale"] + saved["mean"]
    assert nearest_distance(found / SCALES, BLOB_CENTRES) < 0.2


# -- bad values in streamed data ------------------------------------------------------------

CLEAN = csv_bytes(scaled_blobs(3000, seed=2) / SCALES.astype(np.float32)).splitlines()


def with_lines(replaced: dict[int, bytes], header: bytes = b"") -> bytes:
    """CLEAN with some lines (numbered from 1, after the header if any) replaced."""
    lines = list(CLEAN)
    for number, line in replaced.items():
        lines[number - 1] = line
    return header + b"\n".join(lines) + b"\n"


NON_FINITE = with_lines({1500: b"1.5,nan,2.5", 2000: b"1.5,2.5,inf", 2100: b",1,2"})
NON_FINITE_LINE = (
    "3 rows hold missing, NaN or infinite values; first at {source} line 1500, "
    "feature column 2 (missing or NaN)"
)


@pytest.mark.parametrize("mini_batch", [False, True], ids=["full batch", "mini-batch"])
def test_nan_and_inf_in_a_file_are_refused_naming_the_first(
    tmp_path: Path, mini_batch: bool
) -> None:
    hp = {"k": "4"} | ({"mini_batch_size": "500"} if mini_batch else {})
    line = refused(tmp_path, hp, {"train/a.csv": NON_FINITE})
    assert line == NON_FINITE_LINE.format(source="a.csv")


def pipe_job(root: Path, payload: bytes, content_type: str | None = "text/csv", epochs: int = 1):
    """A Pipe-mode job whose FIFOs another process writes; returns (base, writer)."""
    (root / "input" / "data").mkdir(parents=True)
    channel = {"TrainingInputMode": "Pipe"}
    channel |= {"ContentType": content_type} if content_type else {}
    writer = start_writer(root, "train", epochs, payload)
    hp = {"k": "4", "epochs": str(epochs)}
    return make_job(root, hp, channels={"train": channel}), writer


def refused_in_pipe_mode(root: Path, payload: bytes, content_type: str | None = "text/csv"):
    base, writer = pipe_job(root, payload, content_type)
    try:
        result = run_train(base, SAGE_KMEANS_PIPE_WAIT_SECONDS="20")
    finally:
        writer.kill()  # train stops reading at the bad row: the writer may be blocked
        writer.wait()
    assert result.returncode == 1, result.stdout
    assert model_files(base) == []
    text = failure(base)
    assert text.count("\n") == 1, text
    return text.strip()


def test_nan_and_inf_in_a_pipe_stream_are_refused_naming_the_first(tmp_path: Path) -> None:
    line = refused_in_pipe_mode(tmp_path, NON_FINITE)
    assert line == NON_FINITE_LINE.format(source="train_0")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        (b"1.5,abc,2.5", "train_0 line {line}, column 2: 'abc' is not a number"),
        (
            b"1.5,2.5",
            "train_0 line {line}: 2 columns, expected 3 "
            "(rows must all have the same number of columns)",
        ),
    ],
    ids=["bad cell", "short row"],
)
def test_a_bad_row_in_a_pipe_stream_is_named_by_its_line(
    tmp_path: Path, bad_line: bytes, message: str
) -> None:
    line = refused_in_pipe_mode(tmp_path, with_lines({1501: bad_line}))
    assert line == message.format(line=1501)


def test_a_bad_cell_deep_in_a_long_pipe_stream_is_named_by_its_line(tmp_path: Path) -> None:
    """About 12 MB: several times the recent text the reader keeps to find the bad row."""
    body = b"\n".join(CLEAN) + b"\n"
    copies = 12_000_000 // len(body)
    bad_at = (copies - 2) * len(CLEAN) + 77  # a row of the third copy from the end
    lines = (body * copies).splitlines()
    lines[bad_at - 1] = b"1.5,2.5,x9"
    payload = b"a,b,c\n" + b"\n".join(lines) + b"\n"
    line = refused_in_pipe_mode(tmp_path, payload)
    assert line == f"train_0 line {bad_at + 1}, column 3: 'x9' is not a number"  # + header


@pytest.mark.parametrize("content_type", ["application/x-parquet", None])
def test_parquet_in_pipe_mode_is_refused(tmp_path: Path, content_type: str | None) -> None:
    rows = scaled_blobs(500, seed=3)
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({f"f{i}": rows[:, i] for i in range(3)}), sink)
    line = refused_in_pipe_mode(tmp_path, sink.getvalue().to_pybytes(), content_type)
    assert line == "channel 'train': Parquet cannot stream in Pipe mode; use CSV"


# -- across two hosts -------------------------------------------------------------------------


def test_empty_clusters_across_hosts_are_reseeded_from_the_farthest_rows(tmp_path: Path) -> None:
    """5,700 copies of one point and a small blob far from it: random seeding picks the
    point twice, so the two identical centres leave one cluster empty; it is re-seeded
    with the row farthest from its centre (in the blob), and the fit finds both groups."""
    rng = np.random.default_rng(11)
    groups = np.array([[0, 0, 0], [60, 0, 0]], np.float64)
    rows = np.concatenate([np.zeros((5700, 3)), groups[1] + rng.normal(0, 1, (100, 3))])
    rows = rows[rng.permutation(len(rows))].astype(np.float32)
    hp = {"k": "2", "init_method": "random", "n_init": "1", "seed": "1"}
    job = run_job(tmp_path, 2, hp, {"train/data.csv": csv_bytes(rows)})
    ours = assert_one_model(job, len(rows))
    assert "re-seeded 1 empty clusters from the farthest rows" in job.leader.log
    assert sorted(ours["cluster_sizes"]) == [100, 5700]
    assert nearest_distance(ours["centres"], groups) < 0.3


def test_random_seeding_and_n_init_runs_across_hosts_keep_the_best(tmp_path: Path) -> None:
    rows = six_blobs(20_000, seed=8)
    files = {"train/data.csv": csv_bytes(rows)}
    hp = {"k": "6", "init_method": "random", "n_init": "3", "seed": "2"}
    job = run_job(tmp_path, 2, hp, files)
    ours = assert_one_model(job, len(rows))
    runs = re.findall(r"run (\d) of 3: inertia (\S+)", job.leader.log)
    assert [number for number, _ in runs] == ["1", "2", "3"]
    best = min(float(inertia) for _, inertia in runs)
    assert ours["metrics"]["train"]["ssd"] == pytest.approx(best, rel=1e-5)
    metadata = json.loads((job.leader.base / "model" / "model.json").read_text())
    assert (metadata["hyperparameters"]["init"], metadata["hyperparameters"]["n_init"]) == (
        "random",
        3,
    )
    assert_same_model(ours, single_host(tmp_path, hp, files))


def test_mini_batch_with_standardize_across_hosts(tmp_path: Path) -> None:
    """Each host gives its first ceil(max(batch, 20 k) / hosts) rows; the scaler is fitted
    on those of both hosts, as one host's is fitted on its first chunk."""
    rows = scaled_blobs(40_000, seed=4)
    files = {"train/data.csv": csv_bytes(rows)}
    hp = {"k": "4", "mini_batch_size": "1000", "standardize": "true", "epochs": "2"}
    job = run_job(tmp_path, 2, hp, files)
    ours = assert_one_model(job, len(rows))
    second = ours["rows_by_host"][job.hosts[0].name]  # the first row of the second host
    seed_rows = np.concatenate([rows[:500], rows[second : second + 500]])
    saved = np.load(job.leader.base / "model" / "model.npz", allow_pickle=False)
    np.testing.assert_allclose(saved["mean"], seed_rows.mean(axis=0, dtype=np.float64), 1e-5)
    np.testing.assert_allclose(saved["scale"], seed_rows.std(axis=0, dtype=np.float64), 1e-5)
    found = (saved["centres"] * saved["scale"] + saved["mean"]) / SCALES  # in blob units
    assert nearest_distance(found, BLOB_CENTRES) < 0.2
    single = single_host(tmp_path, hp, files)
    alone = np.load(tmp_path / "single" / "model" / "model.npz", allow_pickle=False)
    alone_found = (alone["centres"] * alone["scale"] + alone["mean"]) / SCALES
    assert_same_model(ours | {"centres": found}, single | {"centres": alone_found}, rel=0.02)
