"""Mini-batch training over a stream: Pipe mode, or data larger than memory.

Each pass (epoch) reads the channel again (File mode) or its next FIFO (Pipe mode) and
feeds MiniBatchKMeans.partial_fit chunks of `mini_batch_size` rows, so memory is bounded
by one reader block and one chunk, not by the data. The estimator moves K = k x
extra_center_factor centres, their counts decayed by half_life_time_size before each
chunk, and a local Lloyd step reduces them to k at the end (extra_centres.py; with K = k,
the default, there is nothing to reduce). The first chunk holds at least 20 times K rows:
k-means++ (or random) picks the initial centres from it, and with `standardize` the
scaler is fitted on it. During the last pass each chunk is scored just before the model
learns from it; those scores are the train metrics.

With a checkpoint folder, the estimator and the position (epoch, rows done) are saved
there at most every `checkpoint_seconds`, at the end of each pass and on SIGTERM, with an
atomic rename. A new job resumes from a checkpoint written with the same
hyperparameters and feature count, and refuses any other.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kmeans import channels
from kmeans.algorithm import Interrupted
from kmeans.algorithms.kmeans import extra_centres, fitting
from kmeans.algorithms.kmeans.centres import assign, squared_distance_sum
from kmeans.algorithms.kmeans.hyperparameters import Hyperparameters
from kmeans.model_files import write_temporary

if TYPE_CHECKING:  # imported where used: hosts that only serve their rows never load them
    from sklearn.base import BaseEstimator
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.preprocessing import StandardScaler

log = logging.getLogger("kmeans.train")

CHECKPOINT_FILE = "kmeans-checkpoint.joblib"
DEFAULT_CHUNK_ROWS = 5000  # the built-in algorithm's mini_batch_size
LOG_SECONDS = 10.0


@dataclass
class State:
    """Everything a resumed job needs; saved as one checkpoint file."""

    hyperparameters: dict[str, Any]
    feature_dim: int | None = None
    epoch: int = 0
    rows_done: int = 0  # rows of `epoch` the model has learned from
    kmeans: MiniBatchKMeans | None = None  # K centres, their decayed counts in `_counts`
    scaler: StandardScaler | None = None
    last_pass: dict[str, Any] = field(
        default_factory=lambda: {"ssd": 0.0, "rows": 0, "sizes": None, "tally": None}
    )


def _comparable(hyperparameters: dict[str, Any]) -> dict[str, Any]:
    """The settings a checkpoint must share; `epochs` may grow to train longer."""
    return {key: value for key, value in hyperparameters.items() if key != "epochs"}


def load_checkpoint(folder: Path, hp: Hyperparameters) -> State | None:
    import joblib

    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    try:
        state = joblib.load(path)
    except Exception as error:  # unpickling raises anything at all
        raise channels.DataError(f"checkpoint {path} cannot be read: {error!r}") from None
    if not isinstance(state, State):
        raise channels.DataError(f"checkpoint {path} was not written by this container")
    ours, theirs = _comparable(hp.as_dict()), _comparable(state.hyperparameters)
    if ours != theirs:
        differences = ", ".join(
            f"{key}: {theirs.get(key)!r} there, {ours.get(key)!r} here"
            for key in sorted(set(ours) | set(theirs))
            if ours.get(key) != theirs.get(key)
        )
        raise channels.DataError(
            f"checkpoint {path} was written with other hyperparameters ({differences}); "
            "remove it or train with the same ones"
        )
    return state


def save_checkpoint(folder: Path, state: State) -> None:
    import joblib

    written = write_temporary(folder, CHECKPOINT_FILE, lambda path: joblib.dump(state, path))
    os.replace(written, folder / CHECKPOINT_FILE)
    log.info("checkpoint saved: epoch %d, %d rows into it", state.epoch, state.rows_done)


@dataclass
class Settings:
    pipe_wait_seconds: float = 60.0
    checkpoints: Path | None = None
    checkpoint_seconds: float = 60.0
    stop_requested: Callable[[], bool] = lambda: False


class Trainer:
    def __init__(self, hp: Hyperparameters, settings: Settings) -> None:
        self.hp = hp
        self.settings = settings
        self.chunk_rows = hp.mini_batch_size or DEFAULT_CHUNK_ROWS
        self.centres = extra_centres.centre_count(hp)  # K
        self.reduced: dict[str, Any] = {}  # with K > k: what the reduction did, for the summary
        self.state = State(hp.as_dict())
        if settings.checkpoints is not None:
            resumed = load_checkpoint(settings.checkpoints, hp)
            if resumed is not None:
                self.state = resumed
                log.info(
                    "resumed from checkpoint %s: epoch %d, %d rows into it",
                    settings.checkpoints / CHECKPOINT_FILE,
                    resumed.epoch,
                    resumed.rows_done,
                )
        self.saved_at = time.monotonic()

    def _save(self) -> None:
        if self.settings.checkpoints is not None:
            save_checkpoint(self.settings.checkpoints, self.state)
            self.saved_at = time.monotonic()

    def _start(self, sample: np.ndarray) -> None:
        from sklearn.cluster import MiniBatchKMeans
        from sklearn.preprocessing import StandardScaler

        hp = self.hp
        if self.centres > hp.k and len(sample) < self.centres:
            raise channels.DataError(
                f"extra_center_factor {hp.extra_center_factor} asks for {self.centres} centres "
                f"(k x {extra_centres.factor(hp)}) but the first {len(sample)} rows are all "
                "there are: lower extra_center_factor or k"
            )
        if hp.standardize:
            self.state.scaler = StandardScaler().fit(sample)
        self.state.kmeans = MiniBatchKMeans(
            n_clusters=self.centres,
            init=hp.init,
            n_init=hp.n_init,
            batch_size=self.chunk_rows,
            random_state=hp.seed,
            compute_labels=False,
        )

    def _learn(self, chunk: np.ndarray, last_pass: bool) -> float:
        """Learn from one chunk; returns its sum of squared distances before learning (for
        the progress lines, and the metrics of the last pass)."""
        state = self.state
        if state.kmeans is None:
            self._start(chunk)
        if state.scaler is not None:
            chunk = state.scaler.transform(chunk).astype(np.float32, copy=False)
        kmeans = state.kmeans
        fresh = not hasattr(kmeans, "cluster_centers_")
        if fresh:  # the first chunk picks the centres: score it after, not before
            kmeans.partial_fit(chunk)
        labels, nearest = assign(kmeans, chunk)
        ssd = float(nearest @ nearest)
        if last_pass:
            sizes = state.last_pass["sizes"] or [0] * self.centres
            counts = np.bincount(labels, minlength=self.centres)
            state.last_pass["sizes"] = [a + int(b) for a, b in zip(sizes, counts, strict=True)]
            state.last_pass["ssd"] += ssd
            state.last_pass["rows"] += len(chunk)
            if self.centres > self.hp.k:
                if state.last_pass.get("tally") is None:
                    state.last_pass["tally"] = extra_centres.Tally.empty(
                        self.centres, chunk.shape[1]
                    )
                state.last_pass["tally"].add_rows(labels, chunk)
        if not fresh:
            # the weights learned so far decay by the rows of this chunk (extra_centres.py)
            kmeans._counts *= kmeans._counts.dtype.type(
                extra_centres.decay(len(chunk), self.hp.half_life_time_size)
            )
            kmeans.partial_fit(chunk)
        state.rows_done += len(chunk)
        return ssd

    def _check(self, block: channels.Block) -> np.ndarray:
        channels.check_block(block)
        width = block.rows.shape[1]
        expected = self.state.feature_dim or self.hp.feature_dim
        if expected is not None and width != expected:
            origin = (
                "the checkpoint was written for" if self.state.feature_dim else "feature_dim is"
            )
            raise channels.DataError(
                f"{origin} {expected} features but {block.source} has {width} feature columns"
            )
        self.state.feature_dim = width
        return block.rows

    def run(self, channel: channels.Channel) -> BaseEstimator:
        from sklearn.pipeline import Pipeline

        hp, state = self.hp, self.state
        for run_pass in range(hp.epochs):
            if state.epoch >= hp.epochs:
                break
            last_pass = state.epoch == hp.epochs - 1
            if state.rows_done == 0 and last_pass:
                state.last_pass = {"ssd": 0.0, "rows": 0, "sizes": None, "tally": None}
            self._epoch(channel, run_pass, last_pass)
            state.epoch += 1
            state.rows_done = 0
            self._save()
        if state.kmeans is None or not hasattr(state.kmeans, "cluster_centers_"):
            raise channels.DataError(f"channel {channel.name!r} has files but no records")
        if state.last_pass["rows"] < hp.k:
            raise channels.DataError(
                f"k is {hp.k} but channel {channel.name!r} has only {state.last_pass['rows']} rows"
            )
        kmeans = state.kmeans
        kmeans.cluster_centers_ = kmeans.cluster_centers_.astype(np.float64)
        if self.centres > hp.k:
            return self._reduce(kmeans)
        if state.scaler is not None:
            return Pipeline([("scale", state.scaler), ("kmeans", kmeans)])
        return kmeans

    def _reduce(self, kmeans: MiniBatchKMeans) -> BaseEstimator:
        """The local Lloyd step from the K centres to k; the last pass's metrics and
        cluster sizes become those of the k centres."""
        hp, last = self.hp, self.state.last_pass
        reduced = extra_centres.reduce(hp, kmeans.cluster_centers_, kmeans._counts)
        log.info("%s", reduced.described(self.centres))
        last["ssd"], last["sizes"] = last["tally"].scored(reduced)
        self.reduced = reduced.summary(self.centres)
        return fitting.assemble(hp, reduced.centres, self.state.scaler, last["ssd"], hp.epochs)

    def _epoch(self, channel: channels.Channel, run_pass: int, last_pass: bool) -> None:
        state = self.state
        skip = state.rows_done  # rows learned before an interruption: read past them
        started = logged = time.monotonic()
        seen = 0
        pending: list[np.ndarray] = []
        pending_rows = 0
        wanted = self.chunk_rows if state.kmeans else max(self.chunk_rows, 20 * self.centres)

        measured = [0.0, 0]  # sum of squared distances and rows of the batches fed so far

        def feed(rows: np.ndarray) -> None:
            measured[0] += self._learn(rows, last_pass)
            measured[1] += len(rows)
            if self.settings.stop_requested():
                self._save()
                raise Interrupted(f"epoch {state.epoch}, {state.rows_done} rows into it")
            if time.monotonic() - self.saved_at >= self.settings.checkpoint_seconds:
                self._save()

        for block in channels.blocks(channel, run_pass, self.settings.pipe_wait_seconds):
            rows = self._check(block)
            if skip:
                dropped = min(skip, len(rows))
                rows, skip = rows[dropped:], skip - dropped
            pending.append(rows)
            pending_rows += len(rows)
            seen += len(rows)
            while pending_rows >= wanted:
                merged = np.concatenate(pending) if len(pending) > 1 else pending[0]
                feed(merged[:wanted])
                pending = [merged[wanted:]]
                pending_rows = len(pending[0])
                wanted = self.chunk_rows
            if time.monotonic() - logged >= LOG_SECONDS:
                logged = time.monotonic()
                self._progress(seen, started, measured)
        if pending_rows:
            feed(np.concatenate(pending))
        self._progress(seen, started, measured, done=True)

    def _progress(self, seen: int, started: float, measured: list, done: bool = False) -> None:
        """A progress line: rows read, their rate, and the mean squared distance of the
        batches seen in this epoch so far, each measured just before the model learned
        from it."""
        elapsed = max(time.monotonic() - started, 1e-9)
        ssd, rows = measured
        log.info(
            "epoch %d/%d%s: %d rows, %.0f rows/s, msd of its batches %s",
            self.state.epoch + 1,
            self.hp.epochs,
            " done" if done else "",
            seen,
            seen / elapsed,
            f"{ssd / rows:.6g}" if rows else "(none learned yet)",
        )


def score(
    estimator: BaseEstimator, channel: channels.Channel, features: int, pipe_wait: float
) -> tuple[float, int]:
    """Sum of squared distances and row count over one pass of a channel."""
    return score_blocks(estimator, channel.name, channels.blocks(channel, 0, pipe_wait), features)


def score_blocks(
    estimator: BaseEstimator, channel_name: str, blocks: Iterable[channels.Block], features: int
) -> tuple[float, int]:
    """Sum of squared distances and row count of `blocks` (a pass over a channel, or over
    one host's share of it), each checked as training data is."""
    total, rows = 0.0, 0
    for block in blocks:
        channels.check_block(block)
        if block.rows.shape[1] != features:
            raise channels.DataError(
                f"channel {channel_name!r} has {block.rows.shape[1]} feature columns "
                f"({block.source}), the training data {features}"
            )
        total += squared_distance_sum(estimator, block.rows)
        rows += len(block.rows)
    return total, rows
