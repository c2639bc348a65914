"""The container's contract, run for every algorithm of kmeans/algorithms/ alike: the real
`train` on the algorithm's sample job (local_test/test_dir for K-Means, local_test/<name>
for the others) in every training format, the test channel, failure files and exit codes;
the real `serve` (nginx, gunicorn, Flask) answering every request and answer format, its
errors and limits, /execution-parameters and batch-transform-shaped bodies; and one
multi-model endpoint holding a model of each algorithm at once.

Nothing here names an algorithm: a new one under kmeans/algorithms/ with a sample job is
tested by this file as it is."""

from __future__ import annotations

import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import numpy as np
import protobuf_records
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
from conftest import ROOT, make_job, run_train

from kmeans import algorithms
from kmeans.algorithm import Column

NAMES = algorithms.available()
CSV, JSON, JSONLINES = "text/csv", "application/json", "application/jsonlines"
NPY, RECORDIO = "application/x-npy", "application/x-recordio-protobuf"


def sample_of(name: str) -> Path:
    return ROOT / "local_test" / ("test_dir" if name == algorithms.DEFAULT else name)


class Sample:
    """An algorithm's sample job: its hyperparameters, its train channel's content type,
    and its rows split into labels and features."""

    def __init__(self, name: str) -> None:
        self.name = name
        config = sample_of(name) / "input" / "config"
        self.hyperparameters = json.loads((config / "hyperparameters.json").read_text())
        self.channel = json.loads((config / "inputdataconfig.json").read_text())["train"]
        self.content_type = self.channel["ContentType"]
        parameters = dict(
            part.strip().split("=", 1) for part in self.content_type.split(";")[1:] if "=" in part
        )
        self.label_size = int(parameters.get("label_size", "0"))
        (data,) = (sample_of(name) / "input" / "data" / "train").iterdir()
        self.text = data.read_text()
        rows = [row for row in csv.reader(io.StringIO(self.text)) if row]
        self.labels = [row[: self.label_size] for row in rows]
        self.features = np.array([row[self.label_size :] for row in rows], np.float64)
        self.env = {"SAGE_KMEANS_ALGORITHM": name}

    def job(self, base: Path, files: dict, content_type: str | None = None, **extra) -> Path:
        channel = {**self.channel, "ContentType": content_type or self.content_type}
        channels = {"train": channel, **extra.pop("channels", {})}
        return make_job(base, self.hyperparameters, files, channels)

    def label_codes(self) -> np.ndarray:
        """The first label column as numbers: themselves, or each name's place in sorted order."""
        first = [row[0] for row in self.labels]
        try:
            return np.array([float(value) for value in first])
        except ValueError:
            names = sorted(set(first))
            return np.array([names.index(value) for value in first], np.float64)


SAMPLES = {name: Sample(name) for name in NAMES}


@pytest.fixture(scope="module", params=NAMES)
def sample(request) -> Sample:
    return SAMPLES[request.param]


def train(base: Path, sample: Sample, **env: str) -> None:
    result = run_train(base, **sample.env, **env)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def model(sample: Sample, tmp_path_factory) -> Path:
    """The sample job trained once by the real `train`."""
    base = sample.job(tmp_path_factory.mktemp(sample.name) / "ml", {"train/data.csv": sample.text})
    train(base, sample)
    return base


def read_csv_answer(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode(), newline="")))


def payload(sample: Sample, rows: int = 40) -> np.ndarray:
    """Rows of the sample, as float32 values: RecordIO carries float32, the text formats
    these values exactly, so every format asks the same question."""
    chosen = sample.features[:: max(1, len(sample.features) // rows)][:rows]
    return chosen.astype(np.float32).astype(np.float64)


def csv_body(rows: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()


def columns_of(model: Path) -> tuple[Column, ...]:
    from kmeans import model_folder

    return model_folder.load(model / "model").predictor.columns


# --- training ---------------------------------------------------------------------------


def parquet_bytes(sample: Sample) -> bytes:
    """Labels first (as they are written: numbers or names), then the features."""
    columns = {}
    for index in range(sample.label_size):
        values = [row[index] for row in sample.labels]
        try:
            columns[f"label{index}"] = pa.array([float(value) for value in values])
        except ValueError:
            columns[f"label{index}"] = pa.array(values)
    for index in range(sample.features.shape[1]):
        columns[f"f{index}"] = pa.array(sample.features[:, index])
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    return sink.getvalue()


def recordio_bytes(sample: Sample) -> bytes:
    """One Record per row, features under "values", the label (as a number) in `label`."""
    codes = sample.label_codes() if sample.label_size else None
    out = []
    for index, row in enumerate(sample.features):
        message = protobuf_records.Record()
        message.features["values"].float32_tensor.values.extend(row.tolist())
        if codes is not None:
            message.label["values"].float32_tensor.values.append(float(codes[index]))
        out.append(protobuf_records.frame(message.SerializeToString()))
    return b"".join(out)


def with_label_size(content_type: str, sample: Sample) -> str:
    return f"{content_type};label_size={sample.label_size}" if sample.label_size else content_type


def float_cells(answer: list[list[str]], columns: tuple[Column, ...]) -> np.ndarray:
    kept = [i for i, c in enumerate(columns) if c.kind == "float32"]
    return np.array([[float(row[i]) for i in kept] for row in answer])


@pytest.mark.parametrize("fmt", ["gzip", "parquet", "recordio"])
def test_trains_from_every_format_to_the_same_model(
    sample: Sample, model: Path, fmt: str, tmp_path: Path, start_server
) -> None:
    """gzip CSV, Parquet and RecordIO-protobuf (labels in its `label` map) train the model
    CSV trains: the same answers, cell for cell (names given as numbers in RecordIO come
    back as their numbers)."""
    files = {
        "gzip": ({"train/data.csv.gz": gzip.compress(sample.text.encode())}, sample.content_type),
        "parquet": (
            {"train/data.parquet": parquet_bytes(sample)},
            with_label_size("application/x-parquet", sample),
        ),
        "recordio": ({"train/data.rec": recordio_bytes(sample)}, RECORDIO),
    }[fmt]
    base = sample.job(tmp_path / "ml", *files)
    train(base, sample)
    body = csv_body(payload(sample))
    answers = []
    for folder in (model, base):
        server = start_server(folder, **sample.env)
        answer = requests.post(server.url + "/invocations", data=body, headers={"Accept": CSV})
        assert answer.status_code == 200, answer.text
        answers.append(read_csv_answer(answer.content))
        server.stop()
    reference, got = answers
    columns = columns_of(model)
    if fmt == "recordio" and columns_of(base) != columns:  # class names became numbers
        names = sorted({row[0] for row in sample.labels})
        got = [[names[int(row[0])], *row[1:]] for row in got]
        np.testing.assert_array_equal(float_cells(got, columns), float_cells(reference, columns))
        assert [row[0] for row in got] == [row[0] for row in reference]
    else:
        assert got == reference


def test_the_test_channel_is_scored(sample: Sample, tmp_path: Path) -> None:
    """An algorithm with test metrics reports them; one without refuses the channel in
    one line before reading any data."""
    base = sample.job(
        tmp_path / "ml",
        {"train/data.csv": sample.text, "test/data.csv": sample.text},
        channels={"test": {"ContentType": sample.content_type}},
    )
    result = run_train(base, **sample.env)
    if not algorithms.named(sample.name).has_test_metrics:
        assert result.returncode == 1
        assert failure_of(base) == [
            f"algorithm {sample.name} has no test metrics, and the job has a 'test' "
            "channel: train without it"
        ]
        assert "loaded" not in result.stdout
        return
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("#quality_metric")]
    assert any(", test " in line for line in lines), lines
    assert any(", train " in line for line in lines), lines
    metadata = json.loads((base / "model" / "model.json").read_text())
    assert metadata["algorithm"] == sample.name
    assert set(metadata["metrics"]) == {"train", "test"}
    summary = json.loads((base / "output" / "data" / "summary.json").read_text())
    assert summary["metrics"] == metadata["metrics"]
    assert summary["rows"] == len(sample.features)


def failure_of(base: Path) -> list[str]:
    return (base / "output" / "failure").read_text().splitlines()


def test_bad_data_fails_in_one_line_naming_the_row(sample: Sample, tmp_path: Path) -> None:
    lines = sample.text.splitlines()
    cells = lines[5].split(",")
    cells[sample.label_size] = "oops"
    lines[5] = ",".join(cells)
    base = sample.job(tmp_path / "ml", {"train/data.csv": "\n".join(lines) + "\n"})
    result = run_train(base, **sample.env)
    assert result.returncode == 1, result.stdout + result.stderr
    reason = failure_of(base)[0]
    assert "data.csv line 6" in reason and "'oops' is not a number" in reason, reason
    assert not any((base / "model").iterdir())


def test_an_unknown_hyperparameter_fails_with_a_suggestion(sample: Sample, tmp_path: Path) -> None:
    base = sample.job(tmp_path / "ml", {"train/data.csv": sample.text})
    known = next(iter(algorithms.named(sample.name).hyperparameters.known))
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({**sample.hyperparameters, known + "x": "1"})
    )
    result = run_train(base, **sample.env)
    assert result.returncode == 1
    assert failure_of(base) == [f"unknown hyperparameter {known + 'x'!r}; did you mean {known!r}?"]


def test_jobs_it_cannot_run_are_refused_in_one_line(sample: Sample, tmp_path: Path) -> None:
    """Two hosts for an algorithm that trains on one, Pipe mode for one that reads its data
    whole: refused before any data is read, never run as N duplicate models."""
    algorithm = algorithms.named(sample.name)
    if algorithm.several_hosts and algorithm.streaming:
        pytest.skip(f"{sample.name} trains on several hosts and streams (test_multi_host.py)")
    if not algorithm.several_hosts:
        base = sample.job(tmp_path / "hosts", {"train/data.csv": sample.text})
        (base / "input" / "config" / "resourceconfig.json").write_text(
            json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]})
        )
        result = run_train(base, **sample.env)
        assert result.returncode == 1
        assert failure_of(base) == [
            f"algorithm {sample.name} trains on one host, and this job has 2: "
            "set InstanceCount to 1"
        ]
    if not algorithm.streaming:
        base = sample.job(tmp_path / "pipe", {})
        config = base / "input" / "config" / "inputdataconfig.json"
        channels = json.loads(config.read_text())
        channels["train"]["TrainingInputMode"] = "Pipe"
        config.write_text(json.dumps(channels))
        result = run_train(base, **sample.env)
        assert result.returncode == 1
        assert failure_of(base) == [
            f"algorithm {sample.name} reads its data whole, and channel 'train' is in Pipe "
            "mode: use TrainingInputMode File"
        ]


# --- serving ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model: Path, sample: Sample, tmp_path_factory):
    from conftest import Server

    log = tmp_path_factory.mktemp("serve") / "serve.log"
    running = Server(model, log, SAGEMAKER_MAX_PAYLOAD_IN_MB="1", **sample.env).wait_ready()
    yield running
    assert running.stop() == 0


def request_bodies(rows: np.ndarray) -> dict[str, bytes]:
    return {
        CSV: csv_body(rows),
        JSON: json.dumps({"instances": rows.tolist()}).encode(),
        JSONLINES: "\n".join(json.dumps(row) for row in rows.tolist()).encode(),
        NPY: (lambda sink: (np.save(sink, rows), sink.getvalue())[1])(io.BytesIO()),
        RECORDIO: protobuf_records.body(rows),
    }


def parsed(kind: str, body: bytes, columns: tuple[Column, ...]) -> list[list[object]]:
    """An answer as rows of values, float32 columns rounded to float32."""

    def value(column: Column, raw: object) -> object:
        if column.kind == "float32":
            return None if raw in (None, "null") else float(np.float32(raw))
        return int(raw) if column.kind == "int" else str(raw)

    if kind == CSV:
        records = [
            dict(zip([c.name for c in columns], row, strict=True)) for row in read_csv_answer(body)
        ]
    elif kind == JSON:
        records = json.loads(body)["predictions"]
    elif kind == JSONLINES:
        records = [json.loads(line) for line in body.decode().split("\n")]
    else:
        records = protobuf_records.label_values(body)
    return [[value(c, record[c.name]) for c in columns] for record in records]


def test_every_request_format_gets_every_answer_format(sample: Sample, model: Path, server) -> None:
    rows = payload(sample)
    columns = columns_of(model)
    answers = {}
    for request_type, body in request_bodies(rows).items():
        for accept in (CSV, JSON, JSONLINES, RECORDIO):
            response = requests.post(
                server.url + "/invocations",
                data=body,
                headers={"Content-Type": request_type, "Accept": accept},
                timeout=10,
            )
            assert response.status_code == 200, (request_type, accept, response.text)
            assert response.headers["Content-Type"] == accept
            answer = parsed(accept, response.content, columns)
            if accept == RECORDIO:  # numbers as float32 tensors, names as bytes
                answer = [
                    [int(v) if c.kind == "int" else v for c, v in zip(columns, row, strict=True)]
                    for row in answer
                ]
            answers[request_type, accept] = answer
    first = next(iter(answers.values()))
    assert len(first) == len(rows)
    assert all(answer == first for answer in answers.values())
    one = requests.post(server.url + "/invocations", data=csv_body(rows[:1]), timeout=10)
    assert parsed(CSV, one.content, columns) == first[:1]


def test_errors_and_limits_are_one_json_line(sample: Sample, server) -> None:
    rows = payload(sample)
    width = rows.shape[1]
    cases = [
        (csv_body(rows[:, :-1]), {"Content-Type": CSV}, 400, f"expected {width}"),
        (b"1,2", {"Content-Type": "image/png"}, 415, "image/png"),
        (csv_body(rows), {"Accept": "image/png"}, 406, "image/png"),
        (b"9," * (1 << 20), {"Content-Type": CSV}, 413, "1 MB"),
    ]
    for body, headers, status, said in cases:
        response = requests.post(
            server.url + "/invocations", data=body, headers=headers, timeout=10
        )
        assert response.status_code == status, (status, response.text)
        error = response.json()["error"]
        assert "\n" not in error and said in error, (status, error)


def test_execution_parameters_and_batch_transform_bodies(sample: Sample, server) -> None:
    parameters = requests.get(server.url + "/execution-parameters", timeout=5).json()
    assert parameters["BatchStrategy"] == "MULTI_RECORD"
    assert parameters["MaxPayloadInMB"] == 1
    rows = payload(sample, 25)
    body = csv_body(rows) + b"\n"  # a batch transform's split body ends in a newline
    answer = requests.post(server.url + "/invocations", data=body, timeout=10)
    assert answer.status_code == 200
    assert answer.content.count(b"\n") == len(rows) - 1  # AssembleWith=Line adds the last


# --- multi-model: every algorithm on one endpoint -------------------------------------------


def test_one_multi_model_endpoint_serves_every_algorithm(tmp_path: Path, start_server) -> None:
    """A model of each algorithm loaded at once answers as its own single-model server
    does; the endpoint's default algorithm plays no part (model.json says which)."""
    trained = {}
    for name, sample in SAMPLES.items():
        base = sample.job(tmp_path / name, {"train/data.csv": sample.text})
        train(base, sample)
        trained[name] = base
    expected = {}
    for name, base in trained.items():
        single = start_server(base)  # the default algorithm: model.json decides
        body = csv_body(payload(SAMPLES[name]))
        expected[name] = requests.post(single.url + "/invocations", data=body, timeout=10).content
        single.stop()
    endpoint = tmp_path / "endpoint"
    (endpoint / "model").mkdir(parents=True)
    multi = start_server(endpoint, SAGEMAKER_MULTI_MODEL="true")
    for name, base in trained.items():
        copy = endpoint / "models" / name
        shutil.copytree(base / "model", copy)
        loaded = requests.post(
            multi.url + "/models", json={"model_name": name, "url": str(copy)}, timeout=30
        )
        assert loaded.status_code == 200, loaded.text
    for name in trained:
        body = csv_body(payload(SAMPLES[name]))
        answer = requests.post(f"{multi.url}/models/{name}/invoke", data=body, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.content == expected[name], name


def test_an_algorithm_lacking_a_capability_refuses_the_job_that_needs_it() -> None:
    """The refusals of the seam's defaults, for an algorithm that writes only fit."""
    from kmeans.algorithm import Algorithm
    from kmeans.channels import Channel

    class Bare(Algorithm):
        name = "bare"

    bare, train = Bare(), Channel("train", Path("."), mode="Pipe")
    assert not bare.has_test_metrics
    assert bare.refusal(False, 1, train) is None
    assert bare.refusal(False, 1, train, test=True) == (
        "algorithm bare has no test metrics, and the job has a 'test' channel: train without it"
    )
    assert bare.refusal(False, 3, train) == (
        "algorithm bare trains on one host, and this job has 3: set InstanceCount to 1"
    )
    assert bare.refusal(True, 1, train) == (
        "algorithm bare reads its data whole, and channel 'train' is in Pipe mode: "
        "use TrainingInputMode File"
    )
