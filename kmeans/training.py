"""The training job: settings -> channels -> fitted model -> model folder, metrics, artefacts.

Any failure becomes one readable line at the top of output/failure (SageMaker's
FailureReason), with detail below it, and a non-zero exit.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from kmeans import channels, hyperparameters, model
from kmeans.environment import Environment, Paths, SettingError

log = logging.getLogger("kmeans.train")

EXIT_INPUT_ERROR, EXIT_INTERNAL_ERROR, EXIT_STOPPED = 1, 2, 143


class Stopped(Exception):
    """SIGTERM from SageMaker (StopTrainingJob or a spot interruption)."""


def _stop(signum: int, frame: Any) -> None:
    raise Stopped("training stopped by SIGTERM (StopTrainingJob or spot interruption)")


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise hyperparameters.HyperparameterError(f"missing {what} file {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise hyperparameters.HyperparameterError(
            f"{path.name} is not valid JSON: {error}"
        ) from None


def current_host(paths: Paths) -> str:
    if paths.resource_config.is_file():
        try:
            return str(json.loads(paths.resource_config.read_text()).get("current_host", "algo-1"))
        except (ValueError, AttributeError):
            log.warning("%s is not valid JSON; assuming host algo-1", paths.resource_config)
    return "algo-1"


def _metrics(
    estimator: Any, data: np.ndarray, names: tuple[str, ...], inertia: float | None = None
) -> dict[str, float]:
    ssd = model.squared_distance_sum(estimator, data) if inertia is None else inertia
    values = {"msd": ssd / len(data), "ssd": ssd}
    return {name: values[name] for name in names}


def run(paths: Paths) -> dict[str, Any]:
    """Train once; return the summary written to output/data/summary.json."""
    started = time.perf_counter()
    hp = hyperparameters.parse(_read_json(paths.hyperparameters, "hyperparameters"))
    log.info("hyperparameters: %s", json.dumps(hp.as_dict()))
    for note in hp.notes:
        log.info("%s", note)
    host = current_host(paths)

    found = channels.read_channels(paths.input_data_config, paths.data)
    train = channels.training_channel(found)
    load_started = time.perf_counter()
    data = channels.load(train)
    load_seconds = time.perf_counter() - load_started
    rows, features = data.shape
    log.info(
        "loaded %d rows x %d features from channel %r in %.2f s (%.0f rows/s)",
        rows,
        features,
        train.name,
        load_seconds,
        rows / max(load_seconds, 1e-9),
    )
    if hp.feature_dim is not None and hp.feature_dim != features:
        raise channels.DataError(
            f"feature_dim is {hp.feature_dim} but channel {train.name!r} has {features} "
            "feature columns"
        )
    if rows < hp.k:
        raise channels.DataError(f"k is {hp.k} but channel {train.name!r} has only {rows} rows")

    fit_started = time.perf_counter()
    estimator = model.fit(hp, data)
    fit_seconds = time.perf_counter() - fit_started
    kmeans = model.kmeans_step(estimator)
    log.info(
        "fitted k=%d in %.2f s: %d iterations, inertia %.6g",
        hp.k,
        fit_seconds,
        kmeans.n_iter_,
        kmeans.inertia_,
    )
    # copy_x=False and StandardScaler(copy=False) leave `data` as the model saw it.
    metrics = {"train": _metrics(kmeans, data, ("msd", "ssd"), float(kmeans.inertia_))}
    sizes = np.bincount(kmeans.labels_, minlength=hp.k).tolist()
    del data

    if "test" in found:
        test = channels.load(found["test"])
        if test.shape[1] != features:
            raise channels.DataError(
                f"channel 'test' has {test.shape[1]} feature columns, 'train' has {features}"
            )
        metrics["test"] = _metrics(estimator, test, hp.eval_metrics)
        log.info("scored %d test rows", len(test))
    for channel, values in metrics.items():
        for name in hp.eval_metrics if channel == "test" else ("msd", "ssd"):
            print(f"#quality_metric: host={host}, {channel} {name} <loss>={values[name]:.6g}")

    summary = {
        "rows": rows,
        "feature_dim": features,
        "cluster_sizes": sizes,
        "iterations": int(kmeans.n_iter_),
        "metrics": metrics,
        "seconds": {
            "load": round(load_seconds, 3),
            "fit": round(fit_seconds, 3),
            "total": round(time.perf_counter() - started, 3),
        },
    }
    metadata = {
        "k": hp.k,
        "feature_dim": features,
        "hyperparameters": hp.as_dict(),
        "given": hp.given,
        "metrics": metrics,
        "training_job_name": Environment.read().training_job_name or None,
    }
    paths.output_data.mkdir(parents=True, exist_ok=True)
    np.savetxt(
        paths.output_data / "centers.csv", kmeans.cluster_centers_, delimiter=",", fmt="%.8g"
    )
    (paths.output_data / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    model.save(paths.model, estimator, metadata)
    log.info("model saved to %s in %.2f s in all", paths.model, time.perf_counter() - started)
    return summary


def _fail(paths: Paths, reason: str, detail: str = "", code: int = EXIT_INPUT_ERROR) -> int:
    reason = " ".join(reason.split())  # one line, whatever the exception held
    log.error("training failed: %s", reason)
    try:
        paths.output.mkdir(parents=True, exist_ok=True)
        paths.failure.write_text(reason + "\n" + (detail + "\n" if detail else ""))
    except OSError as error:
        log.error("could not write %s: %s", paths.failure, error)
    return code


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    try:
        paths = Environment.read().paths
    except SettingError as error:
        log.error("training failed: %s", error)
        return EXIT_INPUT_ERROR
    paths.failure.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    try:
        run(paths)
    except (
        hyperparameters.HyperparameterError,
        channels.DataError,
        SettingError,
    ) as error:
        return _fail(paths, str(error))
    except Stopped as error:
        return _fail(paths, str(error), code=EXIT_STOPPED)
    except MemoryError:
        return _fail(paths, "out of memory: use a larger instance or set mini_batch_size")
    except Exception as error:
        return _fail(
            paths,
            f"internal error: {type(error).__name__}: {error}",
            traceback.format_exc(),
            EXIT_INTERNAL_ERROR,
        )
    return 0
