"""The training job: settings -> channels -> fitted model -> model folder, metrics, artefacts.

Any failure becomes one readable line at the top of output/failure (SageMaker's
FailureReason), with detail below it, and a non-zero exit.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import platform
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from kmeans import algorithms, channels, hosts, hyperparameters, model_folder
from kmeans.algorithm import Algorithm, Data, Fitted, Interrupted, Job, Metrics
from kmeans.environment import Environment, Paths, SettingError
from kmeans.hyperparameters import Settings

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


def _job(env: Environment, hosts_: hosts.Hosts) -> Job:
    checkpoints = env.paths.checkpoints
    return Job(
        hosts=hosts_,
        pipe_wait_seconds=env.pipe_wait_seconds,
        checkpoints=checkpoints if checkpoints.is_dir() else None,
        checkpoint_seconds=env.checkpoint_seconds,
        stop_requested=lambda: _STOP.requested,
    )


def _load(algorithm: Algorithm, train: channels.Channel) -> tuple[Data, float]:
    """The whole channel as one float32 array (and its labels, when the algorithm wants
    them), and the seconds that took."""
    started = time.perf_counter()
    if algorithm.labels:
        labelled = channels.load_labelled(train)
        data = Data(train.name, labelled.rows, labelled.labels)
    else:
        data = Data(train.name, channels.load(train))
    load_seconds = time.perf_counter() - started
    rows, features = data.rows.shape
    log.info(
        "loaded %d rows x %d features from channel %r in %.2f s (%.0f rows/s)",
        rows,
        features,
        train.name,
        load_seconds,
        rows / max(load_seconds, 1e-9),
    )
    return data, load_seconds


def _fit_here(
    algorithm: Algorithm, hp: Settings, train: channels.Channel, job: Job, streams: bool
) -> Fitted:
    """Fit on this host: by passes over the stream, or on the channel loaded whole."""
    if streams:
        _STOP.deferred = True  # SIGTERM now waits for the end of the chunk, then checkpoints
        fitted = algorithm.fit_stream(hp, train, job)
        _STOP.deferred = False
        return fitted
    data, load_seconds = _load(algorithm, train)
    fitted = algorithm.fit(hp, data, job)
    fitted.summary["seconds"] = {
        "load": round(load_seconds, 3),
        **fitted.summary.get("seconds", {}),
    }
    return fitted


def run(env: Environment) -> dict[str, Any] | None:
    """Train once; return the summary written to output/data/summary.json (None on a host
    that is not the leader of a job with several)."""
    started = time.perf_counter()
    paths = env.paths
    algorithm = algorithms.named(env.algorithm)
    hp = algorithm.hyperparameters.parse(_read_json(paths.hyperparameters, "hyperparameters"))
    log.info("hyperparameters: %s", json.dumps(hp.as_dict()))
    for note in hp.notes:
        log.info("%s", note)
    here = hosts.Hosts.read(paths.resource_config)
    found = channels.read_channels(paths.input_data_config, paths.data)
    train = channels.training_channel(found)
    streams = algorithm.streams(hp, train)
    refusal = algorithm.refusal(streams, here.count, train, "test" in found)
    if refusal:
        raise channels.DataError(refusal)
    job = _job(env, here)
    if here.count > 1:
        return _across_hosts(env, algorithm, hp, job, found, streams, started)
    fitted = _fit_here(algorithm, hp, train, job, streams)
    fitted.summary.setdefault("hosts", [here.current])

    def test(fitted: Fitted) -> Metrics:
        return algorithm.evaluate(hp, fitted.model, found["test"], fitted.feature_dim, job)

    return _finish(
        env, here.current, algorithm, hp, fitted, test if "test" in found else None, started
    )


def _across_hosts(
    env: Environment,
    algorithm: Algorithm,
    hp: Settings,
    job: Job,
    found: dict[str, channels.Channel],
    streams: bool,
    started: float,
) -> dict[str, Any] | None:
    """One model from the rows of every host: the leader drives, the others serve their
    rows and exit with the leader's outcome once the model is saved."""
    here = job.hosts
    algorithm.prepare_hosts(here, found, job)
    with hosts.Cluster(here, env.join_seconds) as cluster:
        if not here.is_leader:
            code, reason = cluster.await_outcome()
            if code:
                raise hosts.HostError(reason, code)
            _done()
            log.info("host %s: the leader %s saved the model; done", here.current, here.leader)
            return None
        try:
            fitted = algorithm.fit_across_hosts(
                hp, cluster, channels.training_channel(found), streams
            )

            def test(fitted: Fitted) -> Metrics:
                return algorithm.evaluate_across_hosts(
                    hp, cluster, fitted.model, found["test"], fitted.feature_dim
                )

            summary = _finish(
                env, here.current, algorithm, hp, fitted, test if "test" in found else None, started
            )
        except BaseException as error:
            reason, _, code = _failure(error)
            cluster.tell_outcome(code, reason)
            raise
        cluster.tell_outcome(0, "")
        return summary


def _finish(
    env: Environment,
    host: str,
    algorithm: Algorithm,
    hp: Settings,
    fitted: Fitted,
    test: Callable[[Fitted], Metrics] | None,
    started: float,
) -> dict[str, Any]:
    """Metric lines, output/data and the model folder, from the fitted model."""
    paths = env.paths
    log.info("%s", fitted.described)
    measured = {"train": fitted.train}
    if test is not None:
        measured["test"] = test(fitted)
    for channel, values in measured.items():
        for name in values.reported:
            print(
                f"#quality_metric: host={host}, {channel} {name} <loss>={values.values[name]:.6g}"
            )
    metrics = {channel: values.values for channel, values in measured.items()}
    fitted.summary.setdefault("seconds", {})["total"] = round(time.perf_counter() - started, 3)
    summary = {
        "rows": fitted.rows,
        "feature_dim": fitted.feature_dim,
        **fitted.summary,
        "metrics": metrics,
        "peak_rss_mb": peak_rss_mb(),
    }
    metadata = {
        "algorithm": algorithm.name,
        **fitted.metadata,
        "feature_dim": fitted.feature_dim,
        "hyperparameters": hp.as_dict(),
        "given": hp.given,
        "metrics": metrics,
        "rows": fitted.rows,
        "hosts": summary["hosts"],
        "training_job_name": env.training_job_name or None,
        "image": env.provenance(),
        "versions": {"python": platform.python_version(), **algorithm.versions()},
    }
    paths.output_data.mkdir(parents=True, exist_ok=True)
    for name, write in algorithm.outputs(fitted).items():
        write(paths.output_data / name)
    (paths.output_data / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    model_folder.save(paths.model, algorithm.files(fitted), metadata, algorithm.stale_files(fitted))
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
    if isinstance(error, Interrupted):
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


def _unwritable(paths: Paths) -> str | None:
    """The one line saying which folder train cannot write, before any data is read: a
    read-only mount or a folder another user owns (`docker run --read-only --user ...`)
    would otherwise fail the job only once the model is fitted."""
    for folder in (paths.model, paths.output):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            return (
                f"cannot write {folder} ({error.strerror.lower()}) as user {os.getuid()}: train "
                f"writes the model to {paths.model} and its output to {paths.output}; mount "
                "them writable (SageMaker does) or run as their owner"
            )
    return None


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    try:
        env = Environment.read()
    except SettingError as error:
        return _fail(Paths.read(), str(error))
    paths = env.paths
    unwritable = _unwritable(paths)
    if unwritable:
        return _fail(paths, unwritable)
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
