"""Naive-trainer baseline: `pandas.read_csv(header=None)` of every file, concatenated, then
`KMeans(...).fit` with scikit-learn's defaults for everything the job does not set.

Usage: python bench/naive_train.py HYPERPARAMETERS_JSON DATA_FOLDER MODEL_FOLDER
Reads the same hyperparameters.json as ours (k, init_method, n_init, max_iter, tol, seed),
saves the model with joblib and prints one JSON line: load and fit seconds, inertia.
"""

import glob
import json
import os
import sys
import time

import joblib
import pandas as pd
from sklearn.cluster import KMeans


def main() -> None:
    with open(sys.argv[1]) as file:
        hp = json.load(file)
    started = time.perf_counter()
    files = sorted(glob.glob(os.path.join(sys.argv[2], "**", "*.csv"), recursive=True))
    data = pd.concat([pd.read_csv(path, header=None) for path in files], ignore_index=True)
    loaded = time.perf_counter()
    model = KMeans(
        n_clusters=int(hp["k"]),
        init=hp["init_method"],
        n_init=int(hp["n_init"]),
        max_iter=int(hp["max_iter"]),
        tol=float(hp["tol"]),
        random_state=int(hp["seed"]),
    ).fit(data)
    fitted = time.perf_counter()
    os.makedirs(sys.argv[3], exist_ok=True)
    joblib.dump(model, os.path.join(sys.argv[3], "model.joblib"))
    result = {
        "load": loaded - started,
        "fit": fitted - loaded,
        "rows": len(data),
        "iterations": int(model.n_iter_),
        "inertia": float(model.inertia_),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
