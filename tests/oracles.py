"""Slow, plain reference implementations the tests check the real code against: centre
matching, request-body parsing, RFC 9110's Accept rules and the K-Means metrics. Each is
written from the format's or the README's definition, not from kmeans/'s code, and trades
speed for being obviously right."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

# --- centres -------------------------------------------------------------------------


def matched_centre_distances(found: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """The distance of each expected centre to the found centre paired with it, in a
    one-to-one pairing that minimises the total distance: a cluster found twice leaves
    another expected centre paired with a far one."""
    found, expected = np.asarray(found, float), np.asarray(expected, float)
    assert found.shape == expected.shape, (found.shape, expected.shape)
    cost = np.linalg.norm(expected[:, None] - found[None], axis=2)
    rows, columns = linear_sum_assignment(cost)
    return cost[rows, columns]


# --- metrics ---------------------------------------------------------------------------


def squared_distances(rows: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Each row's squared Euclidean distance to its nearest centre, in float64, one
    centre at a time (no |x|² - 2x·c + |c|² shortcut)."""
    rows, centres = np.asarray(rows, np.float64), np.asarray(centres, np.float64)
    nearest = np.full(len(rows), np.inf)
    for centre in centres:
        nearest = np.minimum(nearest, ((rows - centre) ** 2).sum(axis=1))
    return nearest


def msd_and_ssd(rows: np.ndarray, centres: np.ndarray) -> dict[str, float]:
    distances = squared_distances(rows, centres)
    return {"msd": float(distances.mean()), "ssd": float(distances.sum())}


# How close a metric line must be to the numbers computed here, relative:
# - FULL_BATCH: the line prints 6 significant digits (a relative rounding of up to 5e-6);
#   the rest is float32: the model holds the rows as float32 (standardized in float32 too)
#   and scikit-learn sums the squared distances in float32, which moved the sums by at most
#   1e-6 on 40,000 rows. A test metric (the final centres scoring a test channel) is as
#   tight in every mode.
# - LAST_PASS: in mini-batch mode the train metrics are defined over the last pass, each
#   chunk scored just before the model learns from it (README), while these numbers use
#   the final centres. The centres move by about sigma/sqrt(count) in that pass, which
#   changes the sums to second order: 7e-5 measured with 1,000-row chunks and 2 passes.
FULL_BATCH = 1e-5
LAST_PASS = 5e-4


def model_metrics(model: Path, rows: np.ndarray) -> dict[str, float]:
    """msd and ssd of `rows` against the saved model (model.npz: the centres, and the
    mean subtracted and scale divided by first with standardize), the rows taken as the
    model reads them: float32."""
    saved = np.load(model / "model.npz", allow_pickle=False)
    features = np.asarray(rows, np.float32).astype(np.float64)
    if "mean" in saved.files:
        features = (features - saved["mean"]) / saved["scale"]
    return msd_and_ssd(features, saved["centres"])


def assert_metric_lines(
    log: str,
    model: Path,
    train: np.ndarray,
    test: np.ndarray | None = None,
    test_names: tuple[str, ...] = ("msd",),
    train_rel: float = FULL_BATCH,
    host: str | None = None,
) -> None:
    """The log's metric lines are exactly train msd and ssd (and test ones for
    `test_names`), each within its tolerance of the numbers computed from the saved model
    and the data."""
    expected = {f"train {name}": value for name, value in model_metrics(model, train).items()}
    if test is not None:
        test_metrics = model_metrics(model, test)
        expected |= {f"test {name}": test_metrics[name] for name in test_names}
    printed = metric_lines(log, host)
    assert set(printed) == set(expected), (printed, expected)
    for name, value in expected.items():
        rel = train_rel if name.startswith("train") else FULL_BATCH
        assert printed[name] == pytest.approx(value, rel=rel), (name, printed[name], value)


def metric_lines(log: str, host: str | None = None) -> dict[str, float]:
    """`#quality_metric: host=H, train msd <loss>=V` lines -> {"train msd": V}, for one
    host (any when None); a metric printed twice is an error."""
    metrics: dict[str, float] = {}
    for line in log.splitlines():
        if not line.startswith("#quality_metric: host="):
            continue
        where, _, value = line.partition(" <loss>=")
        line_host, _, name = where.removeprefix("#quality_metric: host=").partition(", ")
        if host is None or line_host == host:
            assert name not in metrics, f"{name} printed twice: {log}"
            metrics[name] = float(value)
    return metrics


# --- request bodies ---------------------------------------------------------------------


class Refused(Exception):
    """The reference refuses this body."""


def _essence_and_params(content_type: str) -> tuple[str, dict[str, str]]:
    essence, *parameters = content_type.split(";")
    params = {}
    for parameter in parameters:
        name, _, value = parameter.partition("=")
        if name.strip():
            params[name.strip().lower()] = value.strip().strip('"').lower()
    return essence.strip().lower(), params


CSV_TYPES = {"text/csv", "application/csv", "text/x-csv"}
JSON_TYPES = {"application/json"}
JSONLINES_TYPES = {
    "application/jsonlines",
    "application/x-jsonlines",
    "application/jsonl",
    "application/x-ndjson",
    "application/ndjson",
}
NPY_TYPES = {"application/x-npy", "application/npy"}


def _cell(text: str) -> float:
    if not text.strip():
        raise Refused("empty cell")
    try:
        return float(text)
    except ValueError:
        raise Refused(f"{text!r} is not a number") from None


def reference_csv(body: bytes, params: dict[str, str], features: int) -> list[list[float]]:
    """RFC 4180 CSV as the README reads it: `charset` (UTF-8 by default, undecodable bytes
    replaced), a BOM dropped, `header=present` drops the first line, `label_size=N` the
    first N cells of each record; blank lines are skipped; every cell is a number."""
    charset = params.get("charset", "utf-8")
    if charset.replace("-", "") in ("utf8", "usascii", "ascii"):
        text = body.decode("utf-8", "replace")
    else:
        try:
            text = body.decode(charset)
        except (LookupError, UnicodeDecodeError):
            raise Refused(f"not {charset}") from None
    text = text.removeprefix("\ufeff")
    if params.get("header") == "present":
        text = text.partition("\n")[2]
    labels = params.get("label_size", "0")
    if not labels.isdigit():
        raise Refused("label_size is not an integer")
    rows = []
    try:
        for record in csv.reader(io.StringIO(text, newline="")):
            if record in ([], [""]):
                continue
            cells = record[int(labels) :]
            if len(cells) != features:
                raise Refused(f"{len(cells)} cells, expected {features}")
            rows.append([_cell(cell) for cell in cells])
    except csv.Error as error:
        raise Refused(str(error)) from None
    return rows


def _strict_json(text: str) -> object:
    """RFC 8259 JSON: no NaN or Infinity, no number beyond float64, no lone surrogate."""

    def refuse_constant(name: str) -> float:
        raise Refused(f"{name} is not JSON")

    def finite(number: str) -> float:
        value = float(number)
        if math.isinf(value):
            raise Refused(f"{number} is beyond float64")
        return value

    try:
        document = json.loads(text, parse_constant=refuse_constant, parse_float=finite)
    except (json.JSONDecodeError, RecursionError):
        raise Refused("not JSON") from None
    if any(0xD800 <= ord(c) <= 0xDFFF for c in json.dumps(document, ensure_ascii=False)):
        raise Refused("a lone surrogate")
    return document


def _json_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("not UTF-8") from None


def _json_row(record: object, features: int) -> list[float]:
    """A record as the README describes them: a list of numbers, {"features": [...]}, or
    the built-in's {"data": {"features": {"values": [...], "keys": [...], "shape": [n]}}}."""
    if isinstance(record, dict):
        if "features" in record:
            record = record["features"]
        elif isinstance(record.get("data"), dict) and isinstance(
            record["data"].get("features"), dict
        ):
            tensor = record["data"]["features"]
            values, keys = tensor.get("values"), tensor.get("keys")
            if keys is not None:
                if not (isinstance(values, list) and isinstance(keys, list)):
                    raise Refused("sparse keys and values must be lists")
                if len(keys) != len(values):
                    raise Refused("sparse keys and values differ in length")
                dense: list = [0.0] * features
                for key, value in zip(keys, values, strict=True):
                    if type(key) is not int or not 0 <= key < features:
                        raise Refused(f"sparse key {key!r}")
                    dense[key] = value
                values = dense
            record = values
        else:
            raise Refused("an object without features")
    if not isinstance(record, list) or len(record) != features:
        raise Refused("not a list of the model's width")
    if not all(type(value) in (int, float) for value in record):
        raise Refused("a value that is not a number")
    return [float(value) for value in record]


def reference_json(body: bytes, features: int) -> list[list[float]]:
    """{"instances": [records]}, one record object, one bare list of numbers, or a list of
    records."""
    document = _strict_json(_json_text(body))
    if isinstance(document, dict) and "instances" in document:
        records = document["instances"]
        if not isinstance(records, list):
            raise Refused("instances is not a list")
    elif isinstance(document, dict):
        records = [document]
    elif isinstance(document, list):
        bare = document and not isinstance(document[0], list | dict)
        records = [document] if bare else document
    else:
        raise Refused("neither an object nor a list")
    return [_json_row(record, features) for record in records]


def reference_jsonlines(body: bytes, features: int) -> list[list[float]]:
    """One JSON record a line; blank lines skipped."""
    rows = []
    for line in body.split(b"\n"):
        if line.strip():
            rows.append(_json_row(_strict_json(_json_text(line)), features))
    return rows


def reference_npy(body: bytes, features: int) -> list[list[float]]:
    """One .npy array (no pickles, no .npz) of numbers, of one row or of rows."""
    if body.startswith(b"PK"):
        raise Refused("an .npz archive")
    try:
        array = np.lib.format.read_array(io.BytesIO(body), allow_pickle=False)
    except Exception as error:  # whatever numpy's reader refuses, for whatever reason
        raise Refused(f"not .npy: {error}") from None
    if array.dtype.kind not in "iuf" or array.ndim not in (1, 2):
        raise Refused("not a 1- or 2-dimensional array of numbers")
    array = array.reshape(1, -1) if array.ndim == 1 else array
    if array.shape[1] != features:
        raise Refused("not the model's width")
    return [[float(value) for value in row] for row in array.tolist()]


READERS: dict[str, Callable[[bytes, dict[str, str], int], list[list[float]]]] = {
    **dict.fromkeys(CSV_TYPES, reference_csv),
    **dict.fromkeys(JSON_TYPES, lambda body, params, features: reference_json(body, features)),
    **dict.fromkeys(
        JSONLINES_TYPES, lambda body, params, features: reference_jsonlines(body, features)
    ),
    **dict.fromkeys(NPY_TYPES, lambda body, params, features: reference_npy(body, features)),
}


def reference_rows(body: bytes, content_type: str, features: int) -> np.ndarray | None:
    """The rows a request body holds, float64; raises Refused for a body to refuse (no
    records, a value that is not finite, or anything the format's reader refuses); None
    for a media type these readers do not cover."""
    essence, params = _essence_and_params(content_type)
    reader = READERS.get(essence)
    if reader is None:
        return None
    if not body.strip():
        raise Refused("empty body")
    rows = reader(body, params, features)
    if not rows:
        raise Refused("no records")
    array = np.array(rows, dtype=np.float64).reshape(len(rows), features)
    if not np.isfinite(array).all():
        raise Refused("a value that is not finite")
    return array


# --- Accept (RFC 9110, section 12.5.1) ----------------------------------------------------

_TOKEN = set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


def _qvalue(text: str) -> float | None:
    """qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ); None if malformed."""
    whole, _, fraction = text.partition(".")
    if whole not in ("0", "1") or len(fraction) > 3 or not set(fraction) <= set("0123456789"):
        return None
    if whole == "1" and set(fraction) - {"0"}:
        return None
    return float(text)


def parse_accept_strictly(header: str) -> list[tuple[str, str, float]] | None:
    """Accept as (type, subtype, weight) ranges, in order; None when the header does not
    follow RFC 9110's grammar (then the RFC gives no reading to check a choice against).
    Parameters other than q are not kept: this server's answers carry none, and it reads
    `text/csv;charset=utf-8` as text/csv, as clients sending it mean."""
    ranges = []
    for element in header.split(","):
        element = element.strip(" \t")
        if not element:
            continue  # the grammar's #rule allows empty list elements
        media, *parameters = [part.strip(" \t") for part in element.split(";")]
        kind, slash, subtype = media.lower().partition("/")
        if not (slash and kind and subtype) or not set(kind + subtype) <= _TOKEN:
            return None
        if kind == "*" and subtype != "*":
            return None
        weight = 1.0
        for parameter in parameters:
            name, equals, value = parameter.partition("=")
            if not equals or not name or not set(name.lower()) <= _TOKEN:
                return None
            if name.lower() == "q":
                weight = _qvalue(value)
                if weight is None:
                    return None
            elif not value or not (set(value.lower()) <= _TOKEN or value[0] == '"'):
                return None
        ranges.append((kind, subtype, weight))
    return ranges


def acceptability(ranges: list[tuple[str, str, float]], media_type: str) -> float | None:
    """The weight Accept gives `media_type`: that of the most specific range matching it
    (type/subtype over type/* over */*), 0 when none matches; None when equally specific
    ranges give it different weights (`text/csv;q=0, text/csv`), which the RFC leaves open."""
    kind, _, subtype = media_type.partition("/")
    specificity = {(kind, subtype): 2, (kind, "*"): 1, ("*", "*"): 0}
    matching = [(specificity[r[:2]], r[2]) for r in ranges if r[:2] in specificity]
    if not matching:
        return 0.0
    most = max(level for level, _ in matching)
    weights = {weight for level, weight in matching if level == most}
    return weights.pop() if len(weights) == 1 else None
