"""Large request bodies with asynchronous inference's settings (SAGEMAKER_MAX_PAYLOAD_IN_MB
=1024, SAGEMAKER_MODEL_SERVER_TIMEOUT=900), through the real `kmeans/serve` (nginx and
gunicorn, on loopback): the body is read and answered a block at a time, the answer byte
for byte what small requests of the same rows get, for every request and answer format that
streams, gzip'd too; the worker's peak memory does not grow with the body; a bad record
anywhere in the body gets its 400, as in a small body.

The blocks a body is cut into are checked in-process against decoding the body whole.
The 1 GB bodies, side by side with 100 MB ones and two at once, run in `make reliability`
(SAGE_KMEANS_RELIABILITY=1).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import Server
from figures import record
from large_bodies import (
    Body,
    check_answer,
    expected_answer,
    invocation_lines,
    peak_mb,
    post_streamed,
    reset_peak,
)
from test_metrics import scrape, total
from test_reliability import LONG
from test_serve import model_says
from threads import Threads

from kmeans import decoders, large_bodies
from kmeans.content_types import MediaType

pytestmark = pytest.mark.skipif(
    shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin") is None,
    reason="nginx is not installed (the README's test command installs it)",
)
ASYNC = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": "1024", "SAGEMAKER_MODEL_SERVER_TIMEOUT": "900"}
WORKER_PEAK_MB = 300
CSV, JSONLINES, RECORDIO = "text/csv", "application/jsonlines", "application/x-recordio-protobuf"
ACCEPTS = ["text/csv", "application/json", "application/jsonlines", RECORDIO]


@pytest.fixture(scope="module")
def server(trained: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("large") / "serve.log"
    running = Server(trained, log, SAGEMAKER_MODEL_SERVER_WORKERS="2", **ASYNC).wait_ready()
    yield running
    assert running.stop() == 0


def streamed_peak(server: Server, body: Body, accept: str, coding: str | None = None) -> float:
    """Send `body` streamed, check its answer against small requests' answers, and return
    the workers' peak resident memory (MB) over the request."""
    workers = server.pids()["workers"]
    for pid in workers:
        reset_peak(pid)
    before = len(invocation_lines(server.output()))
    response = post_streamed(server.port, body, accept, coding)
    check_answer(response, expected_answer(server.url, body, accept))
    peak = max(peak_mb(pid) for pid in workers)
    time.sleep(0.2)  # the log line is written once the answer is sent
    lines = invocation_lines(server.output())[before:]
    streamed = [line for line in lines if line["records"] == body.pieces * 100_000]
    assert streamed, lines[-3:]
    return peak


@pytest.mark.parametrize(
    ("content_type", "coding"), [(CSV, None), (JSONLINES, None), (CSV, "gzip")]
)
def test_a_200_mb_body_streams_in_bounded_memory(server, content_type, coding) -> None:
    pieces = {CSV: 100, JSONLINES: 58}[content_type]  # 200 MB either way
    body = Body(content_type, pieces)
    started = time.monotonic()
    peak = streamed_peak(server, body, "text/csv", coding)
    record(
        "large body",
        content_type=content_type,
        coding=coding,
        mb=body.size() >> 20,
        worker_peak_mb=round(peak),
        seconds=round(time.monotonic() - started, 1),
    )
    assert peak <= WORKER_PEAK_MB, f"worker peaked at {peak:.0f} MB for {body.size() >> 20} MB"


@pytest.mark.parametrize("accept", ACCEPTS)
@pytest.mark.parametrize("content_type", [CSV, JSONLINES, RECORDIO])
def test_every_format_pair_answers_as_small_requests_do(server, content_type, accept) -> None:
    """A body of several blocks (over 20 MB) answered byte for byte as its pieces are."""
    body = Body(content_type, {CSV: 11, JSONLINES: 6, RECORDIO: 6}[content_type])
    assert body.size() > large_bodies.STREAM_ABOVE + large_bodies.BLOCK
    response = post_streamed(server.port, body, accept)
    assert response.getheader("Content-Type") == accept
    assert check_answer(response, expected_answer(server.url, body, accept)) > 0


def test_a_streamed_body_is_counted_for_metrics(server) -> None:
    """/metrics counts a streamed body's records and bytes as it does a small body's."""
    body = Body(CSV, 11)
    expected = list(expected_answer(server.url, body, "text/csv"))  # counted before `before`
    time.sleep(0.2)  # counted once the answer is sent
    before = scrape(server)
    response = post_streamed(server.port, body, "text/csv")
    answer_bytes = int(response.getheader("Content-Length"))
    assert check_answer(response, iter(expected)) == answer_bytes
    time.sleep(0.2)
    after = scrape(server)
    moved = [
        total(after, name, **labels) - total(before, name, **labels)
        for name, labels in (
            ("sagekmeans_records_total", {"content_type": CSV, "accept": CSV}),
            ("sagekmeans_request_bytes_total", {"content_type": CSV}),
            ("sagekmeans_response_bytes_total", {"accept": CSV}),
        )
    ]
    assert moved == [body.pieces * 100_000, body.size(), answer_bytes]


def test_the_oracle_agrees_with_the_model(server, trained) -> None:
    """The small requests the streamed answers are checked against say what the model says."""
    body = Body(CSV, 1)
    answer = requests.post(
        server.url + "/invocations", data=body.piece(0), headers={"Content-Type": CSV}, timeout=60
    )
    rows = np.loadtxt(body.piece(0).decode().splitlines(), delimiter=",")
    labels, distances = model_says(trained, rows)
    got = np.loadtxt(answer.text.splitlines(), delimiter=",")
    assert (got[:, 0] == labels).all()
    assert np.allclose(got[:, 1], distances.astype(np.float32), rtol=1e-6)


def bad_body(bad_row: int) -> Iterator[bytes]:
    """A large CSV body (24 MB) whose row `bad_row` holds a word, piece by piece."""
    body = Body(CSV, 12)
    whole_rows = 100_000

    def chunks() -> Iterator[bytes]:
        for index in range(body.pieces):
            piece = body.piece(index)
            if index == (bad_row - 1) // whole_rows:
                lines = piece.split(b"\n")
                at = (bad_row - 1) % whole_rows
                lines[at] = b"1.00,2.00,abc!,4.00"  # as long as a good row
                piece = b"\n".join(lines)
            yield piece

    return chunks()


@pytest.mark.parametrize("bad_row", [5, 700_001])  # in the first block, in the fourth
def test_a_bad_record_anywhere_gets_400_and_one_log_line(server, bad_row) -> None:
    """Its 400 names the record by its number in the whole body, and the invocation is
    logged as refused."""
    before = server.output()
    response = requests.post(
        server.url + "/invocations",
        data=b"".join(bad_body(bad_row)),
        headers={"Content-Type": CSV},
        timeout=120,
    )
    assert response.status_code == 400
    assert response.json() == {"error": f"row {bad_row}, column 3: 'abc!' is not a number"}
    time.sleep(0.2)
    log = server.output()[len(before) :]
    refused = [line for line in log.splitlines() if "invocation refused (400)" in line]
    assert len(refused) == 1 and f"row {bad_row}," in refused[0], log[-2000:]


def test_a_gzip_body_that_inflates_past_the_limit_gets_413(trained, start_server) -> None:
    """Inflated a block at a time, the body is refused once past the limit (here 30 MB)."""
    server = start_server(trained, SAGEMAKER_MAX_PAYLOAD_IN_MB="30")
    body = Body(CSV, 16)  # 32 MB inflated, about 12 MB gzip'd
    response = post_streamed(server.port, body, CSV, coding="gzip")
    assert response.status == 413
    assert json.loads(response.read()) == {
        "error": "request body too large: it inflates (gzip) to more than the limit of 30 MB "
        "(SAGEMAKER_MAX_PAYLOAD_IN_MB)"
    }


# -- the blocks, in-process, against decoding the body whole ----------------------------


def blocks_decoded(body: bytes, content_type: str, features: int = 4) -> np.ndarray:
    media = MediaType.parse(content_type)
    later = MediaType(media.essence, {k: v for k, v in media.params.items() if k != "header"})
    found, row = [], 1
    for block, line in large_bodies.blocks(
        [body[i : i + 50] for i in range(0, len(body), 50)], media
    ):
        if block.strip():
            rows = decoders.decode_block(block, media if line == 1 else later, features, line, row)
            found.append(rows)
            row += len(rows)
    return np.concatenate(found)


def whole_error(body: bytes, content_type: str) -> str:
    with pytest.raises(decoders.DecodeError) as error:
        decoders.decode(body, content_type, 4)
    return str(error.value)


QUOTED = (
    b'1,2,3,4\n"5","6",7,8\r\n\n9,10,"11\n",12\n' * 30
    + b'"13",14,15,"16\n\n"\n' * 30
    + b"17,18,19,20\n" * 20
)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/csv", QUOTED),
        ("text/csv; header=present", b"a,b,c,d\n" + QUOTED),
        ("text/csv; label_size=1", b"".join(b"7," + line + b"\n" for line in [b"1,2,3,4"] * 200)),
        ("application/jsonlines", b'{"features":[1,2,3,4]}\n\n[5,6,7,8]\n' * 100),
    ],
)
def test_blocks_decode_as_the_whole_body(monkeypatch, content_type, body) -> None:
    monkeypatch.setattr(large_bodies, "BLOCK", 64)  # many blocks, cut at every kind of place
    assert np.array_equal(
        blocks_decoded(body, content_type), decoders.decode(body, content_type, 4)
    )


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/csv", QUOTED + b"1,2,x,4\n" + QUOTED),
        ("text/csv", QUOTED + b"1,2,3\n"),
        ("text/csv; header=present", b"a,b,c,d\n" + QUOTED + b"1,2,nan,4\n"),
        ("application/jsonlines", b"[1,2,3,4]\n" * 100 + b"[1,2,3,4\n"),
    ],
)
def test_blocks_name_the_line_as_the_whole_body_does(monkeypatch, content_type, body) -> None:
    monkeypatch.setattr(large_bodies, "BLOCK", 64)
    with pytest.raises(decoders.DecodeError) as error:
        blocks_decoded(body, content_type)
    expected = whole_error(body, content_type)
    if "NaN" in expected:  # the count is the block's, the place the body's
        expected = expected.split(";", 1)[1]
    assert expected in str(error.value)


# -- 1 GB, in `make reliability` --------------------------------------------------------


@pytest.fixture
def fresh_server(trained: Path, start_server) -> Server:
    return start_server(trained, SAGEMAKER_MODEL_SERVER_WORKERS="2", **ASYNC)


@LONG
@pytest.mark.parametrize("content_type", [CSV, JSONLINES])
def test_1_gb_and_100_mb_peak_the_worker_alike(fresh_server, content_type) -> None:
    per_100_mb = {CSV: 50, JSONLINES: 30}[content_type]
    peaks = {}
    for pieces in (per_100_mb, per_100_mb * 10):
        body = Body(content_type, pieces)
        started = time.monotonic()
        peaks[pieces] = streamed_peak(fresh_server, body, "text/csv")
        record(
            "large body",
            content_type=content_type,
            mb=body.size() >> 20,
            worker_peak_mb=round(peaks[pieces]),
            seconds=round(time.monotonic() - started, 1),
        )
    small, large = peaks[per_100_mb], peaks[per_100_mb * 10]
    assert large <= WORKER_PEAK_MB, f"worker peaked at {large:.0f} MB for 1 GB"
    assert large <= small * 1.25, f"100 MB: {small:.0f} MB, 1 GB: {large:.0f} MB"


@LONG
def test_two_1_gb_bodies_at_once_on_2_workers(fresh_server) -> None:
    deadline = time.monotonic() + 30  # ready once one worker is: wait for the second
    while len(fresh_server.pids()["workers"]) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = fresh_server.pids()["workers"]
    assert len(workers) == 2, workers
    for pid in workers:
        reset_peak(pid)
    bodies = [Body(CSV, 500, seed=1), Body(JSONLINES, 290, seed=2)]
    threads = Threads()
    for body in bodies:
        threads.start(
            lambda body=body: check_answer(
                post_streamed(fresh_server.port, body, "text/csv"),
                expected_answer(fresh_server.url, body, "text/csv"),
            )
        )
    threads.join(timeout=1200)
    peaks = [peak_mb(pid) for pid in workers]
    record("large bodies at once", worker_peaks_mb=[round(peak) for peak in peaks])
    assert max(peaks) <= WORKER_PEAK_MB, peaks
