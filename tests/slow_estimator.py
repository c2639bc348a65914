"""A user's own estimator, as someone brings in model.joblib: a KMeans whose transform
is slow on request. A first feature of 1000 + s sleeps s seconds (Python, interruptible);
one of 2000 or more runs a long C call that no signal handler interrupts. Other rows
are answered at once. Tests put this folder on PYTHONPATH so that serve can unpickle it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import joblib
import numpy as np
from sklearn.cluster import KMeans

SLEEP, BUSY = 1000.0, 2000.0


class SlowKMeans(KMeans):
    def transform(self, X):
        first = float(np.asarray(X)[0, 0])
        if first >= BUSY:
            hashlib.pbkdf2_hmac("sha256", b"slow", b"salt", 10**9)  # minutes of C code
        elif first >= SLEEP:
            time.sleep(first - SLEEP)
        return super().transform(X)


def write_model(folder: Path, rows: np.ndarray) -> Path:
    """A model folder holding only model.joblib with a fitted SlowKMeans."""
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(SlowKMeans(3, n_init=1, random_state=0).fit(rows), folder / "model.joblib")
    return folder
