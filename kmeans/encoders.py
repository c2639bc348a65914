"""Predictions -> response bodies. One function per media type, one table, and the
choice of media type from the Accept header.

Every format gives one output record per input record, in order. CSV and JSON Lines
bodies have no trailing newline: batch transform's AssembleWith=Line adds one after
each response, so N input lines come back as N output lines.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import orjson

from kmeans import recordio
from kmeans.content_types import CSV, JSON, JSONLINES, RECORDIO, parse_accept


class NotAcceptable(ValueError):
    """An Accept header no encoder can satisfy: HTTP 406."""


def _tokens(values: np.ndarray) -> list[bytes]:
    """Each value as its shortest round-trip JSON number, in C speed."""
    return orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1].split(b",")


def encode_csv(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return b"\n".join(
        label + b"," + distance
        for label, distance in zip(_tokens(labels), _tokens(distances), strict=True)
    )


def _objects(labels: np.ndarray, distances: np.ndarray) -> list[dict[str, float]]:
    return [
        {"closest_cluster": label, "distance_to_cluster": distance}
        for label, distance in zip(labels.tolist(), distances.tolist(), strict=True)
    ]


def encode_json(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return orjson.dumps({"predictions": _objects(labels, distances)})


def encode_jsonlines(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return b"\n".join(orjson.dumps(obj) for obj in _objects(labels, distances))


def encode_recordio(labels: np.ndarray, distances: np.ndarray) -> bytes:
    return recordio.encode_labels({"closest_cluster": labels, "distance_to_cluster": distances})


ENCODERS: dict[str, Callable[[np.ndarray, np.ndarray], bytes]] = {
    JSON: encode_json,
    JSONLINES: encode_jsonlines,
    CSV: encode_csv,
    RECORDIO: encode_recordio,
}
_ECHOED = (JSON, JSONLINES, CSV)  # request types answered in kind when Accept says nothing


def choose(accept: str, request_type: str, default_accept: str = "") -> str:
    """The response media type: the best match in Accept; for none or a wildcard, the
    configured default, else the request's own type when we can write it, else JSON."""
    fallback = next(
        (
            kind
            for kind in (default_accept, request_type if request_type in _ECHOED else "")
            if kind in ENCODERS
        ),
        JSON,
    )
    if not accept.strip():
        return fallback
    for media in parse_accept(accept):
        if media.essence in ENCODERS:
            return media.essence
        family, _, subtype = media.essence.partition("/")
        if subtype == "*":
            matches = [kind for kind in ENCODERS if family == "*" or kind.startswith(family + "/")]
            if matches:
                return fallback if fallback in matches else matches[0]
    raise NotAcceptable(
        f"cannot answer with Accept {accept!r}; this endpoint answers {', '.join(ENCODERS)}"
    )
