"""Media types as HTTP and SageMaker write them: `text/csv; charset=utf-8; label_size=1`.

Matching is on the lower-cased `type/subtype` (the essence); parameters are kept for the
readers that honour them. Accept headers are ranked by q-value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
RECORDIO = "application/x-recordio-protobuf"

# Spellings seen in the wild for the same formats.
ALIASES = {
    "application/csv": CSV,
    "text/x-csv": CSV,
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
    "application/x-ndjson": JSONLINES,
    "application/ndjson": JSONLINES,
    "application/npy": NPY,
}


@dataclass(frozen=True)
class MediaType:
    essence: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0
    text: str = ""  # as written

    @classmethod
    @functools.lru_cache(maxsize=256)  # the same few header values arrive again and again
    def parse(cls, text: str) -> MediaType:
        essence, *rest = text.split(";")
        params = {}
        for part in rest:
            name, _, value = part.partition("=")
            if name.strip():
                params[name.strip().lower()] = value.strip().strip('"').lower()
        try:
            quality = float(params.pop("q", "1"))
        except ValueError:
            quality = 0.0
        essence = essence.strip().lower()
        return cls(ALIASES.get(essence, essence), params, quality, text)


@functools.lru_cache(maxsize=256)
def parse_accept(header: str) -> list[MediaType]:
    """Accepted media types, best first (stable for equal q-values); q=0 is dropped."""
    types = [MediaType.parse(part) for part in header.split(",") if part.strip()]
    return sorted((t for t in types if t.quality > 0), key=lambda t: -t.quality)
