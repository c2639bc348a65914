"""SageMaker's built-in K-Means's model file, `model_algo-1`, both ways: `serve` loads a
folder holding it (and the built-in's `state_<uuid>` file) and answers bit for bit as for
the same centres in model.npz, in every format, in multi-model mode too; anything else in
such a file stops serve with one line naming it; `train` writes it beside model.npz
(not with standardize: model.json and the log say why), and it round-trips.

The files here are built by `builtin_file` below, from the format as MXNet's source lays
it out (src/ndarray/ndarray.cc NDArray::Save and Load, dmlc-core's serializer.h), written
with struct.pack independently of kmeans/algorithms/kmeans/builtin_model.py.

MXNet itself is the second, independent reader and writer: the last test runs mxnet 1.9.1
in .venv-mxnet (requirements-mxnet.txt, installed on first use; CI requires it with
SAGE_KMEANS_REQUIRE_MXNET=1). mx.nd.load reads our files of 1x1 to 1000x1000 back as the
same float32 arrays, and mx.nd.save of the same arrays writes the very bytes
builtin_model.encode writes. Checked by hand once as well: our reader reads mx.nd.save's V3
file and its dict-with-a-name file, and refuses its float64, two-array, csr and 1-D files.
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import IRIS, REQUIRE_MXNET, make_job, mxnet_python, run_train
from test_model_files import NGINX, one_line, run_serve, server_post
from test_serve import request_bodies

from kmeans import model_folder
from kmeans.algorithms.kmeans import files
from kmeans.environment import EXIT_NO_MODEL

V1, V2, V3 = 0xF993FAC8, 0xF993FAC9, 0xF993FACA
STATE = "state_0c8b2fa4-5c5c-4c1a-9d52-1d0f8e6b7a31"  # as the built-in names it
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed")
ACCEPTS = ("application/json", "application/jsonlines", "text/csv")


def builtin_file(
    centres: np.ndarray,
    magic: int = V2,
    storage: int = 0,
    shape: tuple[int, ...] | None = None,
    device: tuple[int, int] = (1, 0),
    type_flag: int = 0,
    names: tuple[bytes, ...] = (),
    count: int = 1,
    header: tuple[int, int] = (0x112, 0),
    data: bytes | None = None,
    trailing: bytes = b"",
) -> bytes:
    """An NDArray list file of one array, each field as given (defaults: what the
    built-in writes). V1 has no storage type; V1 and later, int32 ndim and int64 dims."""
    shape = centres.shape if shape is None else shape
    array = struct.pack("<I", magic)
    if magic != V1:
        array += struct.pack("<i", storage)
    array += struct.pack("<i", len(shape)) + struct.pack(f"<{len(shape)}q", *shape)
    array += struct.pack("<iii", *device, type_flag)
    array += centres.astype("<f4").tobytes() if data is None else data
    named = struct.pack("<Q", len(names)) + b"".join(
        struct.pack("<Q", len(name)) + name for name in names
    )
    return struct.pack("<QQQ", *header, count) + array * max(count, 1) + named + trailing


def read_independently(data: bytes) -> np.ndarray:
    """The test's own reader of a V2 dense float32 2-D file without names."""
    header, reserved, count, magic, storage, ndim = struct.unpack_from("<QQQIii", data)
    assert (header, reserved, count, magic, storage, ndim) == (0x112, 0, 1, V2, 0, 2)
    k, features, device, device_id, type_flag = struct.unpack_from("<qqiii", data, 36)
    assert (device, device_id, type_flag) == (1, 0, 0)
    values = np.frombuffer(data, "<f4", k * features, 64).reshape(k, features)
    assert data[64 + values.nbytes :] == struct.pack("<Q", 0)
    return values


def npz_folder(folder: Path, centres: np.ndarray) -> Path:
    """The same centres as model.npz (format 1), written with numpy alone."""
    folder.mkdir(parents=True)
    with (folder / "model.npz").open("wb") as file:
        np.savez(file, format=np.array(1), centres=centres)
    return folder


def builtin_folder(folder: Path, data: bytes, state: bool = True) -> Path:
    """A built-in training job's model.tar.gz, unpacked: model_algo-1 and its state file."""
    folder.mkdir(parents=True)
    (folder / "model_algo-1").write_bytes(data)
    if state:
        (folder / STATE).write_bytes(b"\x00 the built-in's training state, opaque here")
    return folder


SHAPES = [(1, 1), (2, 3), (3, 4), (7, 1), (1, 9), (10, 50), (100, 1000), (1000, 1), (1000, 1000)]
VARIANTS = {  # as the reader accepts them, beside V2 as the built-in writes it
    "V2": {},
    "V1": {"magic": V1},
    "V3": {"magic": V3},
    "named": {"names": (b"centres",)},  # mx.nd.save of a dict
    "gpu": {"device": (2, 1)},
}


@pytest.mark.parametrize("shape", SHAPES, ids=[f"{k}x{d}" for k, d in SHAPES])
def test_the_loader_answers_like_model_npz_for_every_shape(shape, tmp_path: Path) -> None:
    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    centres = rng.normal(scale=5, size=shape).astype(np.float32)
    rows = rng.normal(scale=5, size=(300, shape[1]))
    rows[:3] = centres[: min(3, len(centres))].mean(axis=0)  # ties, where k > 1
    expected = model_folder.load(npz_folder(tmp_path / "npz", centres))
    labels, distances = expected.predictor(rows)
    ones = [expected.predictor.one(row) for row in rows[:20].tolist()]
    for variant, fields in VARIANTS.items():
        folder = builtin_folder(tmp_path / variant, builtin_file(centres, **fields))
        loaded = model_folder.load(folder)
        assert loaded.source == folder / "model_algo-1"
        assert loaded.feature_dim == shape[1] and loaded.metadata["k"] == shape[0]
        got_labels, got_distances = loaded.predictor(rows)
        assert np.array_equal(got_labels, labels), variant
        assert got_distances.tobytes() == distances.tobytes(), variant
        assert [loaded.predictor.one(row) for row in rows[:20].tolist()] == ones, variant
        assert f"{folder / STATE} ignored" in " ".join(loaded.warnings)


@needs_nginx
@pytest.mark.parametrize("shape", [(1, 1), (5, 4), (40, 30)], ids=["1x1", "5x4", "40x30"])
def test_serve_answers_a_builtin_model_byte_for_byte_like_model_npz(
    shape, tmp_path: Path, start_server
) -> None:
    rng = np.random.default_rng(sum(shape))
    centres = rng.normal(scale=3, size=shape).astype(np.float32)
    npz = npz_folder(tmp_path / "npz" / "model", centres).parent
    builtin = builtin_folder(tmp_path / "builtin" / "model", builtin_file(centres)).parent
    servers = [start_server(npz), start_server(builtin)]
    log = servers[1].output()
    assert f"model loaded from {builtin / 'model' / 'model_algo-1'}" in log
    assert f"{builtin / 'model' / STATE} ignored" in log
    for rows in (
        rng.normal(scale=3, size=(1, shape[1])),
        rng.normal(scale=3, size=(400, shape[1])),
    ):
        for content_type, body in request_bodies(rows).values():
            for accept in ACCEPTS:
                answers = [server_post(s.url, body, content_type, accept) for s in servers]
                assert answers[0] == answers[1], (content_type, accept, len(rows))


CENTRES = np.arange(12, dtype=np.float32).reshape(3, 4)


def magic_line(magic: str) -> str:
    return (
        f"the array's magic is {magic}, not V1 0xF993FAC8, V2 0xF993FAC9 or V3 0xF993FACA "
        "(files of MXNet before V1 are not read)"
    )


GOOD = builtin_file(CENTRES)
MALFORMED = {  # name -> (the file, what the line says after "cannot be served: ")
    "empty": (b"", "it is truncated at the header: 24 bytes needed from offset 0, 0 left"),
    "another header": (
        builtin_file(CENTRES, header=(0x113, 0)),
        "its header is 0x113, 0; an MXNet NDArray file starts 0x112, 0",
    ),
    "reserved not 0": (
        builtin_file(CENTRES, header=(0x112, 5)),
        "its header is 0x112, 5; an MXNet NDArray file starts 0x112, 0",
    ),
    "no array": (
        builtin_file(CENTRES, count=0),
        "it holds 0 arrays; the built-in's holds one, the centres",
    ),
    "two arrays": (
        builtin_file(CENTRES, count=2),
        "it holds 2 arrays; the built-in's holds one, the centres",
    ),
    "another magic": (builtin_file(CENTRES, magic=0xF993FACB), magic_line("0xF993FACB")),
    "before V1: ndim first, uint32 dims": (
        struct.pack("<QQQIII", 0x112, 0, 1, 2, 3, 4)
        + struct.pack("<iii", 1, 0, 0)
        + CENTRES.tobytes()
        + bytes(8),
        magic_line("0x00000002"),
    ),
    "row_sparse": (
        builtin_file(CENTRES, storage=1),
        "its storage type is 1 (row_sparse); only 0, dense, is read",
    ),
    "csr": (
        builtin_file(CENTRES, storage=2),
        "its storage type is 2 (csr); only 0, dense, is read",
    ),
    "1-D": (
        builtin_file(CENTRES.ravel()),
        "its array is 1-D; the centres are 2-D (k, feature_dim)",
    ),
    "3-D": (
        builtin_file(CENTRES.reshape(3, 2, 2)),
        "its array is 3-D; the centres are 2-D (k, feature_dim)",
    ),
    "V3 unknown shape": (
        struct.pack("<QQQIii", 0x112, 0, 1, V3, 0, -1) + bytes(8),  # as V3 saves "None"
        "its array is of unknown shape; the centres are 2-D (k, feature_dim)",
    ),
    "0 centres": (
        builtin_file(CENTRES[:0], shape=(0, 4)),
        "its shape is (0, 4); both must be at least 1",
    ),
    "V3 unknown dimension": (
        builtin_file(CENTRES, magic=V3, shape=(-1, 4)),
        "its shape is (-1, 4); both must be at least 1",
    ),
    "another device": (
        builtin_file(CENTRES, device=(9, 0)),
        "its device type is 9, not MXNet's (1 cpu, 2 gpu, 3, 5)",
    ),
    **{
        f"type flag {flag}": (
            builtin_file(CENTRES, type_flag=flag),
            f"its type flag is {flag} ({kind}); only 0, float32, is read",
        )
        for flag, kind in enumerate(["float64", "float16", "uint8", "int32", "int8", "int64"], 1)
    },
    "truncated values": (
        GOOD[:-9],
        "it is truncated at the (3, 4) float32 values: 48 bytes needed from offset 64, 47 left",
    ),
    "truncated name count": (
        GOOD[:-1],
        "it is truncated at the name count: 8 bytes needed from offset 112, 7 left",
    ),
    "a huge claimed shape": (
        builtin_file(CENTRES, shape=(1 << 40, 1 << 20)),
        "it is truncated at the (1099511627776, 1048576) float32 values: "
        "4611686018427387904 bytes needed from offset 64, 56 left",
    ),
    "trailing bytes": (GOOD + b"abc", "it has 3 bytes after its end, at offset 120"),
    "NaN": (builtin_file(CENTRES * np.nan), "it holds NaN or infinite values"),
    "infinity": (builtin_file(CENTRES + np.inf), "it holds NaN or infinite values"),
    "two names": (
        builtin_file(CENTRES, names=(b"a", b"b")),
        "it has 2 names for 1 array; MXNet writes 0 or one per array",
    ),
    "a name longer than the file": (
        GOOD[:-8] + struct.pack("<QQ", 1, 1 << 62) + b"x",
        "it is truncated at the name: 4611686018427387904 bytes needed from offset 128, 1 left",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_builtin_model_stops_serve_with_its_one_line(case, tmp_path: Path) -> None:
    data, why = MALFORMED[case]
    base = tmp_path / "ml"
    builtin_folder(base / "model", data)
    result = run_serve(base)
    assert result.returncode == EXIT_NO_MODEL, result.stdout + result.stderr
    path = base / "model" / "model_algo-1"
    assert one_line(result) == f"serve: cannot start: model file {path} cannot be served: {why}"


def test_model_json_that_disagrees_stops_serve(tmp_path: Path) -> None:
    base = tmp_path / "ml"
    builtin_folder(base / "model", GOOD)
    (base / "model" / "model.json").write_text(json.dumps({"k": 5, "feature_dim": 4}))
    result = run_serve(base)
    assert result.returncode == EXIT_NO_MODEL
    assert one_line(result) == (
        f"serve: cannot start: model file {base / 'model' / 'model_algo-1'} cannot be served: "
        "it holds 3 centres of 4 features, but model.json says k=5: the two files come from "
        "different trainings"
    )


def test_model_npz_comes_first_then_model_algo_1_then_model_joblib(
    trained: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "model"
    shutil.copytree(trained / "model", folder)
    assert model_folder.load(folder).source == folder / "model.npz"
    (folder / "model.npz").unlink()
    assert model_folder.load(folder).source == folder / "model_algo-1"
    (folder / "model_algo-1").unlink()
    assert model_folder.load(folder).source == folder / "model.joblib"


# --- what train writes ------------------------------------------------------------------


def test_train_writes_model_algo_1_holding_the_centres_as_float32(trained: Path) -> None:
    folder = trained / "model"
    with np.load(folder / "model.npz", allow_pickle=False) as arrays:
        centres = arrays["centres"]
    written = read_independently((folder / "model_algo-1").read_bytes())
    assert np.array_equal(written, centres.astype(np.float32))
    assert json.loads((folder / "model.json").read_text())["builtin_model"] == "model_algo-1"


@needs_nginx
def test_model_algo_1_alone_gives_the_clusters_of_the_whole_folder(
    trained: Path, tmp_path: Path, start_server
) -> None:
    alone = tmp_path / "alone"
    (alone / "model").mkdir(parents=True)
    shutil.copy(trained / "model" / "model_algo-1", alone / "model")
    servers = [start_server(trained), start_server(alone)]
    answers = []
    for server in servers:
        body = server_post(server.url, IRIS.read_text(), "text/csv", "application/json")
        answers.append([p["closest_cluster"] for p in json.loads(body)["predictions"]])
    assert answers[0] == answers[1] and len(answers[0]) == 150 and len(set(answers[0])) == 3


def test_with_standardize_train_leaves_model_algo_1_out_and_says_why(tmp_path: Path) -> None:
    """The built-in would measure distances unscaled; a model_algo-1 left by the earlier
    training in the same folder is removed."""
    base = make_job(tmp_path, {"k": "3"}, {"train/iris.csv": IRIS.read_text()})
    assert run_train(base).returncode == 0
    assert (base / "model" / "model_algo-1").is_file()
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"k": "3", "standardize": "true"})
    )
    result = run_train(base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in (base / "model").iterdir()) == [
        "model.joblib",
        "model.json",
        "model.npz",
    ]
    why = (
        "standardize is on, and the built-in K-Means's format holds centres only, not the "
        "scaling: the built-in image would measure distances in unscaled space"
    )
    assert f"model_algo-1 not written: {why}" in result.stdout + result.stderr
    metadata = json.loads((base / "model" / "model.json").read_text())
    assert metadata["builtin_model"] == f"not written: {why}"


def test_an_estimator_only_joblib_holds_gets_no_model_algo_1() -> None:
    from sklearn.cluster import KMeans
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MinMaxScaler

    rows = np.loadtxt(IRIS, delimiter=",")
    estimator = make_pipeline(MinMaxScaler(), KMeans(3, n_init=1, random_state=0)).fit(rows)
    assert set(files.writers(estimator)) == {"model.joblib"}
    assert files.writers(estimator.steps[-1][1]).keys() == {
        "model.joblib",
        "model.npz",
        "model_algo-1",
    }


# --- multi-model ------------------------------------------------------------------------


@needs_nginx
def test_multi_model_loads_and_invokes_a_builtin_folder(tmp_path: Path, start_server) -> None:
    base = tmp_path / "ml"
    models = base / "models"
    centres = np.random.default_rng(5).normal(size=(4, 4)).astype(np.float32)
    builtin = builtin_folder(models / "builtin" / "model", builtin_file(centres))
    npz = npz_folder(models / "npz" / "model", centres)
    broken = builtin_folder(models / "broken" / "model", builtin_file(centres, type_flag=1))
    server = start_server(base, SAGEMAKER_MULTI_MODEL="true", SAGEMAKER_MODEL_SERVER_WORKERS="2")
    for name, folder in (("builtin", builtin), ("npz", npz)):
        response = requests.post(
            server.url + "/models", json={"model_name": name, "url": str(folder)}, timeout=60
        )
        assert response.status_code == 200, response.text
    refused = requests.post(
        server.url + "/models", json={"model_name": "broken", "url": str(broken)}, timeout=60
    )
    assert refused.status_code == 400
    assert (
        f"model file {broken / 'model_algo-1'} cannot be served: its type flag is 1 (float64); "
        "only 0, float32, is read" in refused.text
    )
    for content_type, body in request_bodies(np.loadtxt(IRIS, delimiter=",")[:40]).values():
        answers = [
            requests.post(
                f"{server.url}/models/{name}/invoke",
                data=body,
                headers={"Content-Type": content_type, "Accept": "application/json"},
                timeout=60,
            )
            for name in ("builtin", "npz")
        ]
        assert answers[0].status_code == 200, answers[0].text
        assert answers[0].content == answers[1].content, content_type
    assert f"{builtin / STATE} ignored" in server.output()


# --- MXNet itself, where an interpreter with it is named --------------------------------

MXNET_CHECK = """
import sys, numpy as np, mxnet as mx
ours, theirs, expected = sys.argv[1:]
loaded = mx.nd.load(ours)
assert isinstance(loaded, list) and len(loaded) == 1
assert loaded[0].dtype == np.float32
assert np.array_equal(loaded[0].asnumpy(), np.load(expected))
mx.nd.save(theirs, [mx.nd.array(np.load(expected), dtype="float32")])
"""


@pytest.mark.parametrize("shape", [(1, 1), (3, 4), (1000, 1000)], ids=["1x1", "3x4", "1000x1000"])
def test_mxnet_reads_our_file_and_we_read_its(shape, tmp_path: Path) -> None:
    from kmeans.algorithms.kmeans import builtin_model

    centres = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    np.save(tmp_path / "expected.npy", centres)
    builtin_model.write(centres, tmp_path / "ours")
    arguments = [str(tmp_path / name) for name in ("ours", "theirs", "expected.npy")]
    done = subprocess.run(
        [str(mxnet_python(REQUIRE_MXNET)), "-c", MXNET_CHECK, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    theirs, names = builtin_model.read(tmp_path / "theirs")
    assert np.array_equal(theirs, centres) and names == []
    assert (tmp_path / "theirs").read_bytes() == (tmp_path / "ours").read_bytes()
