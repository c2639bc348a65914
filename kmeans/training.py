"""The training job: settings -> channels -> fitted model -> model folder, metrics, artefacts.

Any failure becomes one readable line at the top of output/failure (SageMaker's
FailureReason), with detail below it, and a non-zero exit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from kmeans import channels, hosts, hyperparameters, model, reduction, streaming
from kmeans.environment import Environment, Paths, SettingError

log = logging.getLogger("kmeans.train")

EXIT_INPUT_ERROR, EXIT_INTERNAL_ERROR, EXIT_STOPPED = 1, 2, 143


STOPPED = "training stopped by SIGTERM (StopTrainingJob or spot interruption)"


class Stopped(Exception):
    """SIGTERM from SageMaker (StopTrainingJob or a spot interruption)."""


class _StopRequest:
    requested = False
    deferred = False  # in mini-batch mode the loop checks `requested` between chunks


_STOP = _StopRequest()


def _done() -> None:
    """The model is saved: a SIGTERM now (SageMaker local mode stops every container once
    one exits) must not turn a finished job into a failed one."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _on_sigterm(signum: int, frame: Any) -> None:
    _STOP.requested = True
    if not _STOP.deferred:
        raise Stopped(STOPPED)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise hyperparameters.HyperparameterError(f"missing {what} file {path}")
    try:
        return json.loads(path.read_text())
    except ValueError as error:
        raise hyperparameters.HyperparameterError(
            f"{path.name} is not valid JSON: {error}"
        ) from None


def peak_rss_mb() -> float:
    """This program's peak resident memory. VmHWM, unlike ru_maxrss, does not count what
    the process that started us held before the exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


Fitted = tuple[Any, dict[str, Any]]  # the estimator, and what the summary says of the fit


def _full_batch(hp: hyperparameters.Hyperparameters, train: channels.Channel) -> Fitted:
    """Load the whole channel into one float32 array and fit KMeans on it."""
    started = time.perf_counter()
    data = channels.load(train)
    load_seconds = time.perf_counter() - started
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
    started = time.perf_counter()
    estimator = model.fit(hp, data)
    kmeans = model.kmeans_step(estimator)
    return estimator, {
        "rows": rows,
        "feature_dim": features,
        "ssd": float(kmeans.inertia_),
        "cluster_sizes": np.bincount(kmeans.labels_, minlength=hp.k).tolist(),
        "iterations": int(kmeans.n_iter_),
        "seconds": {"load": round(load_seconds, 3), "fit": round(time.perf_counter() - started, 3)},
    }


def _streaming(
    hp: hyperparameters.Hyperparameters, train: channels.Channel, env: Environment
) -> Fitted:
    """Mini-batch passes over the channel, with checkpoints when the folder exists."""
    started = time.perf_counter()
    checkpoints = env.paths.checkpoints if env.paths.checkpoints.is_dir() else None
    trainer = streaming.Trainer(
        hp,
        streaming.Settings(
            pipe_wait_seconds=env.pipe_wait_seconds,
            checkpoints=checkpoints,
            checkpoint_seconds=env.checkpoint_seconds,
            stop_requested=lambda: _STOP.requested,
        ),
    )
    _STOP.deferred = True  # SIGTERM now waits for the end of the chunk, then checkpoints
    estimator = trainer.run(train)
    _STOP.deferred = False
    last = trainer.state.last_pass
    return estimator, {
        "rows": last["rows"],
        "feature_dim": trainer.state.feature_dim,
        "ssd": last["ssd"],
        "cluster_sizes": last["sizes"],
        "iterations": hp.epochs,
        "seconds": {"load_and_fit": round(time.perf_counter() - started, 3)},
    }


def _score(
    estimator: Any, channel: channels.Channel, features: int, env: Environment
) -> dict[str, float]:
    ssd, rows = streaming.score(estimator, channel, features, env.pipe_wait_seconds)
    if rows == 0:
        raise channels.DataError(f"channel {channel.name!r} has files but no records")
    log.info("scored %d rows of channel %r", rows, channel.name)
    return {"msd": ssd / rows, "ssd": ssd}


def run(env: Environment) -> dict[str, Any] | None:
    """Train once; return the summary written to output/data/summary.json (None on a host
    that is not the leader of a job with several)."""
    started = time.perf_counter()
    paths = env.paths
    hp = hyperparameters.parse(_read_json(paths.hyperparameters, "hyperparameters"))
    log.info("hyperparameters: %s", json.dumps(hp.as_dict()))
    for note in hp.notes:
        log.info("%s", note)
    job = hosts.Hosts.read(paths.resource_config)
    found = channels.read_channels(paths.input_data_config, paths.data)
    train = channels.training_channel(found)
    mini_batch = hp.mini_batch_size is not None or train.mode == "Pipe"
    if job.count > 1:
        return _across_hosts(env, hp, job, found, mini_batch, started)
    if mini_batch:
        estimator, result = _streaming(hp, train, env)
    else:
        if paths.checkpoints.is_dir():
            log.info("checkpoints are written in mini-batch mode only (set mini_batch_size)")
        estimator, result = _full_batch(hp, train)
    result["hosts"] = [job.current]

    def score(estimator: Any, features: int) -> dict[str, float]:
        return _score(estimator, found["test"], features, env)

    test = score if "test" in found else None
    return _finish(env, hp, job.current, estimator, result, test, started)


def _across_hosts(
    env: Environment,
    hp: hyperparameters.Hyperparameters,
    job: hosts.Hosts,
    found: dict[str, channels.Channel],
    mini_batch: bool,
    started: float,
) -> dict[str, Any] | None:
    """One model from the rows of every host: the leader drives, the others serve their
    rows and exit with the leader's outcome once the model is saved."""
    if job.is_leader and mini_batch and env.paths.checkpoints.is_dir():
        log.info("checkpoints are not written when training across hosts")
    if job.is_leader and hp.algorithm == "elkan":
        log.info("algorithm elkan: training across hosts runs Lloyd's iterations (same result)")
    reduction.prepare(job, found, env.pipe_wait_seconds)
    with hosts.Cluster(job, env.join_seconds) as cluster:
        if not job.is_leader:
            code, reason = cluster.await_outcome()
            if code:
                raise hosts.HostError(reason, code)
            _done()
            log.info("host %s: the leader %s saved the model; done", job.current, job.leader)
            return None
        try:
            fit = reduction.fit_mini_batch if mini_batch else reduction.fit_full_batch
            estimator, result = fit(cluster, hp, channels.training_channel(found))

            def score(estimator: Any, features: int) -> dict[str, float]:
                return reduction.score(cluster, estimator, found["test"], features)

            summary = _finish(
                env, hp, job.current, estimator, result, score if "test" in found else None, started
            )
        except BaseException as error:
            reason, _, code = _failure(error)
            cluster.tell_outcome(code, reason)
            raise
        cluster.tell_outcome(0, "")
        return summary


def _finish(
    env: Environment,
    hp: hyperparameters.Hyperparameters,
    host: str,
    estimator: Any,
    result: dict[str, Any],
    score_test: Any,
    started: float,
) -> dict[str, Any]:
    """Metrics, artefacts and the model folder, from the fitted estimator."""
    paths = env.paths
    log.info(
        "fitted k=%d on %d rows x %d features: %d iterations, inertia %.6g",
        hp.k,
        result["rows"],
        result["feature_dim"],
        result["iterations"],
        result["ssd"],
    )
    metrics = {"train": {"msd": result["ssd"] / result["rows"], "ssd": result["ssd"]}}
    if score_test is not None:
        metrics["test"] = score_test(estimator, result["feature_dim"])
    for channel, values in metrics.items():
        for name in hp.eval_metrics if channel == "test" else ("msd", "ssd"):
            print(f"#quality_metric: host={host}, {channel} {name} <loss>={values[name]:.6g}")

    kmeans = model.kmeans_step(estimator)
    result["seconds"]["total"] = round(time.perf_counter() - started, 3)
    summary = {
        **{key: value for key, value in result.items() if key != "ssd"},
        "metrics": metrics,
        "peak_rss_mb": peak_rss_mb(),
    }
    metadata = {
        "k": hp.k,
        "feature_dim": result["feature_dim"],
        "hyperparameters": hp.as_dict(),
        "given": hp.given,
        "metrics": metrics,
        "rows": result["rows"],
        "hosts": result["hosts"],
        "training_job_name": env.training_job_name or None,
        "image": env.provenance(),
    }
    paths.output_data.mkdir(parents=True, exist_ok=True)
    np.savetxt(
        paths.output_data / "centers.csv", kmeans.cluster_centers_, delimiter=",", fmt="%.8g"
    )
    (paths.output_data / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    model.save(paths.model, estimator, metadata)
    _done()
    log.info(
        "model saved to %s; %.2f s in all, peak memory %.0f MB",
        paths.model,
        time.perf_counter() - started,
        summary["peak_rss_mb"],
    )
    return summary


def _failure(error: BaseException, paths: Paths | None = None) -> tuple[str, str, int]:
    """The failure line, the detail below it and the exit code, for any error."""
    if isinstance(error, hyperparameters.HyperparameterError | channels.DataError | SettingError):
        return str(error), "", EXIT_INPUT_ERROR
    if isinstance(error, hosts.HostError):
        return str(error), error.detail, error.code
    if isinstance(error, Stopped):
        return str(error), "", EXIT_STOPPED
    if isinstance(error, streaming.Interrupted):
        saved = paths is not None and paths.checkpoints.is_dir()
        saved = "checkpoint saved" if saved else "no checkpoint folder"
        return f"{STOPPED} at {error}; {saved}", "", EXIT_STOPPED
    if isinstance(error, MemoryError):
        return "out of memory: use a larger instance or set mini_batch_size", "", EXIT_INPUT_ERROR
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" while writing {error.filename}" if error.filename else ""
        reason = f"no space left on device{where}: free space, or give the job a larger volume"
        return f"{reason} (VolumeSizeInGB)", "", EXIT_INPUT_ERROR
    return (
        f"internal error: {type(error).__name__}: {error}",
        traceback.format_exc(),
        EXIT_INTERNAL_ERROR,
    )


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
        env = Environment.read()
    except SettingError as error:
        return _fail(Paths.read(), str(error))
    paths = env.paths
    paths.failure.unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run(env)
    except Exception as error:
        reason, detail, code = _failure(error, paths)
        return _fail(paths, reason, detail, code)
    return 0


def exit_without_teardown(code: int) -> NoReturn:
    """Exit with `code` once every output is written, without the interpreter's teardown of
    scikit-learn and scipy (0.2 to 0.4 s). Across hosts Dask's exit handlers run as usual."""
    if "distributed" in sys.modules:
        sys.exit(code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
