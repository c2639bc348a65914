"""Figures the reliability tests measure, for `make reliability`'s report.

record() appends one JSON line to the file named by SAGE_KMEANS_FIGURES when that is set
(reliability/run.py sets it), and does nothing otherwise: the tests assert on what they
measure either way; the report only gathers the numbers.
"""

from __future__ import annotations

import json
import os
import time


def record(name: str, **values: object) -> None:
    path = os.environ.get("SAGE_KMEANS_FIGURES")
    if path:
        with open(path, "a") as file:
            file.write(json.dumps({"name": name, "time": time.time(), **values}) + "\n")
