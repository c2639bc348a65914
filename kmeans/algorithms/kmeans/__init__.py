"""K-Means behind the seam (kmeans/algorithm.py), with every optional capability.

- full batch: the channel loaded whole, scikit-learn's KMeans (fitting.py);
- streaming: mini-batch passes over the channel, Pipe mode, checkpoints (streaming.py);
- several hosts: partial sums over a Dask cluster, reduced by the leader (reduction.py);
- files: model.npz (numpy alone), model_algo-1 (the built-in K-Means's, builtin_model.py)
  and model.joblib (files.py); answers: the closest cluster and the distance to its
  centre (centres.py).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kmeans.algorithm import Algorithm, Data, DataError, Fitted, Job, Loaded, Metrics, Writer
from kmeans.algorithms.kmeans import files, fitting
from kmeans.algorithms.kmeans.centres import Centres
from kmeans.algorithms.kmeans.hyperparameters import TABLE, Hyperparameters

if TYPE_CHECKING:
    from kmeans.channels import Channel
    from kmeans.hosts import Cluster, Hosts

log = logging.getLogger("kmeans.train")

TRAIN_METRICS = ("msd", "ssd")


def _builtin_model(estimator: Any) -> str:
    """model.json's "builtin_model": the file written for the built-in K-Means's image,
    or why none is (said in the log too)."""
    refusal = files.builtin_refusal(Centres.of(estimator))
    if refusal is None:
        return files.BUILTIN_FILE
    log.info("%s not written: %s", files.BUILTIN_FILE, refusal)
    return f"not written: {refusal}"


def _fitted(estimator: Any, hp: Hyperparameters, result: dict[str, Any]) -> Fitted:
    """The trainers' result (reduction.py's and streaming's) as the seam's Fitted."""
    ssd, rows, features = (result.pop(key) for key in ("ssd", "rows", "feature_dim"))
    return Fitted(
        model=estimator,
        rows=rows,
        feature_dim=features,
        train=Metrics({"msd": ssd / rows, "ssd": ssd}, TRAIN_METRICS),
        described=(
            f"fitted k={hp.k} on {rows} rows x {features} features: "
            f"{result['iterations']} iterations, inertia {ssd:.6g}"
        ),
        summary=result,
        metadata={"k": hp.k, "builtin_model": _builtin_model(estimator)},
    )


def _test_metrics(hp: Hyperparameters, ssd: float, rows: int) -> Metrics:
    return Metrics({"msd": ssd / rows, "ssd": ssd}, hp.eval_metrics)


class KMeans(Algorithm):
    name = "kmeans"
    hyperparameters = TABLE
    streaming = True
    several_hosts = True
    objectives = dict.fromkeys(TRAIN_METRICS, "Minimize")  # msd and ssd: less is better

    def streams(self, hp: Hyperparameters, channel: Channel) -> bool:
        return hp.mini_batch_size is not None or channel.mode == "Pipe"

    def fit(self, hp: Hyperparameters, data: Data, job: Job) -> Fitted:
        """KMeans on the whole channel, one float32 array."""
        if job.checkpoints is not None:
            log.info("checkpoints are written in mini-batch mode only (set mini_batch_size)")
        rows, features = data.rows.shape
        if hp.feature_dim is not None and hp.feature_dim != features:
            raise DataError(
                f"feature_dim is {hp.feature_dim} but channel {data.channel!r} has {features} "
                "feature columns"
            )
        if rows < hp.k:
            raise DataError(f"k is {hp.k} but channel {data.channel!r} has only {rows} rows")
        started = time.perf_counter()
        estimator = fitting.fit(hp, data.rows)
        kmeans = fitting.kmeans_step(estimator)
        result = {
            "rows": rows,
            "feature_dim": features,
            "ssd": float(kmeans.inertia_),
            "cluster_sizes": np.bincount(kmeans.labels_, minlength=hp.k).tolist(),
            "iterations": int(kmeans.n_iter_),
            "seconds": {"fit": round(time.perf_counter() - started, 3)},
        }
        return _fitted(estimator, hp, result)

    def fit_stream(self, hp: Hyperparameters, channel: Channel, job: Job) -> Fitted:
        """Mini-batch passes over the channel, with checkpoints when the folder exists."""
        from kmeans.algorithms.kmeans import streaming

        started = time.perf_counter()
        trainer = streaming.Trainer(
            hp,
            streaming.Settings(
                pipe_wait_seconds=job.pipe_wait_seconds,
                checkpoints=job.checkpoints,
                checkpoint_seconds=job.checkpoint_seconds,
                stop_requested=job.stop_requested,
            ),
        )
        estimator = trainer.run(channel)
        last = trainer.state.last_pass
        result = {
            "rows": last["rows"],
            "feature_dim": trainer.state.feature_dim,
            "ssd": last["ssd"],
            "cluster_sizes": last["sizes"],
            "iterations": hp.epochs,
            "seconds": {"load_and_fit": round(time.perf_counter() - started, 3)},
            **trainer.reduced,
        }
        return _fitted(estimator, hp, result)

    def evaluate(
        self, hp: Hyperparameters, model: Any, channel: Channel, feature_dim: int, job: Job
    ) -> Metrics:
        from kmeans.algorithms.kmeans import streaming

        ssd, rows = streaming.score(model, channel, feature_dim, job.pipe_wait_seconds)
        if rows == 0:
            raise DataError(f"channel {channel.name!r} has files but no records")
        log.info("scored %d rows of channel %r", rows, channel.name)
        return _test_metrics(hp, ssd, rows)

    def prepare_hosts(self, hosts: Hosts, found: dict[str, Channel], job: Job) -> None:
        from kmeans.algorithms.kmeans import reduction

        if hosts.is_leader and job.checkpoints is not None:
            log.info("checkpoints are not written when training across hosts")
        reduction.prepare(hosts, found, job.pipe_wait_seconds)

    def fit_across_hosts(
        self, hp: Hyperparameters, cluster: Cluster, channel: Channel, streaming: bool
    ) -> Fitted:
        from kmeans.algorithms.kmeans import reduction

        if hp.algorithm == "elkan":
            log.info("algorithm elkan: training across hosts runs Lloyd's iterations (same result)")
        fit = reduction.fit_mini_batch if streaming else reduction.fit_full_batch
        estimator, result = fit(cluster, hp, channel)
        return _fitted(estimator, hp, result)

    def evaluate_across_hosts(
        self, hp: Hyperparameters, cluster: Cluster, model: Any, channel: Channel, feature_dim: int
    ) -> Metrics:
        from kmeans.algorithms.kmeans import reduction

        ssd, rows = reduction.score(cluster, model, channel, feature_dim)
        return _test_metrics(hp, ssd, rows)

    def files(self, fitted: Fitted) -> dict[str, Writer]:
        return files.writers(fitted.model)

    def stale_files(self, fitted: Fitted) -> tuple[str, ...]:
        """No model.npz or model_algo-1 of an earlier model may shadow this one: those
        this model has no such file for (standardize, or an estimator only joblib holds)."""
        written = self.files(fitted)
        return tuple(
            name for name in (files.ARRAYS_FILE, files.BUILTIN_FILE) if name not in written
        )

    def outputs(self, fitted: Fitted) -> dict[str, Writer]:
        centres = fitting.kmeans_step(fitted.model).cluster_centers_

        def write(path: Path) -> None:
            np.savetxt(path, centres, delimiter=",", fmt="%.8g")

        return {"centers.csv": write}

    def versions(self) -> dict[str, str]:
        return files.versions()

    def load(
        self, folder: Path, metadata: dict[str, Any], notes: list[str], allow_pickle: bool
    ) -> Loaded:
        return files.load(folder, metadata, notes, allow_pickle)


ALGORITHM = KMeans()
