"""The seam: what an algorithm gives the container. Read this file first.

Bring your own model by writing one package, kmeans/algorithms/<name>/, whose
__init__.py defines `ALGORITHM`, an instance of a subclass of `Algorithm` below; pick it
with the setting SAGE_KMEANS_ALGORITHM=<name> (the Docker build argument ALGORITHM sets
it in the image). kmeans/algorithms/decision_tree/ is the short worked example,
kmeans/algorithms/kmeans/ the full one, with every optional capability.

Everything outside kmeans/algorithms/ is the container, used unchanged by every
algorithm: the /opt/ml paths and settings, channels and their formats, hyperparameter
parsing, request decoders and answer encoders, content negotiation, the Flask app,
gunicorn and nginx, multi-model endpoints, the Dask cluster of several hosts, failure
files, metric lines and the model folder with its model.json.

The contract, in the order `train` and `serve` use it:
- `hyperparameters`: a Table of Specs (kmeans/hyperparameters.py), parsed by the
  container: every SDK encoding, aliases, one-line errors, "did you mean".
- `fit(hp, data, job)`: the training rows (float32, one row per record), with their
  labels when `labels` is true, -> a `Fitted`: the model, what the metric lines report
  and what summary.json and model.json say. Raise `DataError` (one line) for data the
  algorithm cannot use. `objectives` names every metric its Metrics report and whether
  less or more is better (the metric definitions and tuning objectives of algorithm.json).
- optional capabilities, each a flag the trainer reads before it starts; a job that
  needs one the algorithm lacks is refused in one line, never run half-way:
  `streaming` (`fit_stream`: mini-batch passes, Pipe mode, data larger than memory,
  checkpoints) and `several_hosts` (`prepare_hosts`, `fit_across_hosts`,
  `evaluate_across_hosts` over the Dask cluster in kmeans/hosts.py).
- `evaluate(hp, model, channel, feature_dim, job)`: the metrics on the test channel.
- `files(fitted)`: the files of the model folder, each a writer the container calls
  with a temporary path before it renames them all into place (model.json, written by
  the container, comes last). `outputs(fitted)`: files for output/data.
- `load(folder, metadata, notes, allow_pickle)` -> a `Loaded` whose `predictor` turns
  rows into named output columns (`Column`), with an optional one-record path `one`.
  Raise `ModelError` (one line, naming the file) for a folder that cannot be served.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple, Protocol

import numpy as np

from kmeans.formats import DataError

if TYPE_CHECKING:
    from kmeans.channels import Channel
    from kmeans.hosts import Cluster, Hosts
    from kmeans.hyperparameters import Settings, Table

__all__ = [
    "Algorithm",
    "Column",
    "Data",
    "DataError",
    "Fitted",
    "Interrupted",
    "Job",
    "Loaded",
    "Metrics",
    "ModelError",
    "Predictor",
    "Writer",
]

Writer = Callable[[Path], None]  # writes one file at the path it is given


class Interrupted(Exception):
    """A streaming fit stopped between two chunks (SIGTERM), its checkpoint saved."""


class ModelError(RuntimeError):
    """A model folder that cannot be served: one line, naming the file."""


class Column(NamedTuple):
    """One named output column of a prediction. `kind` says how it is written:
    "int" as an integer, "float32" as the shortest text that reads back as the float32
    (null beyond float32's range), "str" as a string. (A named tuple: the encoders look
    their layout up by the columns on every request, and a tuple hashes fast.)"""

    name: str
    kind: Literal["int", "float32", "str"]


class Predictor(Protocol):
    """Rows -> one array per column, one value per row, in `columns` order."""

    columns: tuple[Column, ...]
    feature_dim: int

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, ...]: ...

    # Optional: `one(row: list[float]) -> tuple` answers one record without numpy, for
    # the single-record requests of real-time endpoints. Leave it out to use __call__.


@dataclass(frozen=True)
class Loaded:
    """A model ready to serve, and what the log says of it."""

    source: Path  # the file it came from
    kind: str  # what it is, e.g. "KMeans"
    summary: str  # the log's description, e.g. "KMeans, k=3"
    metadata: dict[str, Any]  # model.json
    predictor: Predictor
    warnings: tuple[str, ...] = ()

    @property
    def feature_dim(self) -> int:
        return self.predictor.feature_dim


@dataclass(frozen=True)
class Metrics:
    """Metric values by name, and the names the metric lines report (in that order)."""

    values: dict[str, float]
    reported: tuple[str, ...]


@dataclass(frozen=True)
class Data:
    """A training channel loaded whole: float32 rows, and their labels when asked for
    (shape (rows, label_size): float64 numbers, or str objects)."""

    channel: str
    rows: np.ndarray
    labels: np.ndarray | None = None


@dataclass(frozen=True)
class Job:
    """What the trainer tells an algorithm about the job beyond its data."""

    hosts: Hosts
    pipe_wait_seconds: float = 60.0
    checkpoints: Path | None = None  # the checkpoint folder, when the job has one
    checkpoint_seconds: float = 60.0
    stop_requested: Callable[[], bool] = lambda: False  # checked between chunks when streaming


@dataclass
class Fitted:
    """A fitted model and what the trainer reports of it.

    `summary` fills summary.json (rows, feature_dim and metrics are added), `metadata`
    model.json (beside the container's own keys), `described` the log line."""

    model: Any
    rows: int
    feature_dim: int
    train: Metrics
    described: str
    summary: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


class Algorithm:
    """The seam. Subclass it, set the class attributes, write `fit`, `files`, `load`."""

    name: ClassVar[str]  # the package's name under kmeans/algorithms/
    hyperparameters: ClassVar[Table]
    labels: ClassVar[bool] = False  # fit needs the channel's labels (label_size)
    streaming: ClassVar[bool] = False  # fit_stream is written
    several_hosts: ClassVar[bool] = False  # prepare_hosts, fit_across_hosts, ... are written
    # metric name -> the tuner's goal for it: every name fit's and evaluate's Metrics report
    objectives: ClassVar[dict[str, Literal["Minimize", "Maximize"]]] = {}

    def streams(self, hp: Settings, channel: Channel) -> bool:
        """Whether this job trains by passes over a stream (Pipe mode always does)."""
        return channel.mode == "Pipe"

    def fit(self, hp: Settings, data: Data, job: Job) -> Fitted:
        raise NotImplementedError

    def fit_stream(self, hp: Settings, channel: Channel, job: Job) -> Fitted:
        raise NotImplementedError

    def evaluate(
        self, hp: Settings, model: Any, channel: Channel, feature_dim: int, job: Job
    ) -> Metrics:
        raise NotImplementedError  # not written: a job with a test channel is refused

    def prepare_hosts(self, hosts: Hosts, found: dict[str, Channel], job: Job) -> None:
        raise NotImplementedError

    def fit_across_hosts(
        self, hp: Settings, cluster: Cluster, channel: Channel, streaming: bool
    ) -> Fitted:
        raise NotImplementedError

    def evaluate_across_hosts(
        self, hp: Settings, cluster: Cluster, model: Any, channel: Channel, feature_dim: int
    ) -> Metrics:
        raise NotImplementedError

    def files(self, fitted: Fitted) -> dict[str, Writer]:
        raise NotImplementedError

    def stale_files(self, fitted: Fitted) -> tuple[str, ...]:
        """Files of an earlier model this one must remove (none by default)."""
        return ()

    def outputs(self, fitted: Fitted) -> dict[str, Writer]:
        """Files for output/data (SageMaker's output.tar.gz) beside summary.json."""
        return {}

    def versions(self) -> dict[str, str]:
        """Library versions recorded in model.json."""
        return {}

    def load(
        self, folder: Path, metadata: dict[str, Any], notes: list[str], allow_pickle: bool
    ) -> Loaded:
        raise NotImplementedError

    @property
    def has_test_metrics(self) -> bool:
        return type(self).evaluate is not Algorithm.evaluate

    def refusal(
        self, streaming: bool, hosts: int, channel: Channel, test: bool = False
    ) -> str | None:
        """Why this algorithm cannot run the job, in one line; None when it can."""
        if test and not self.has_test_metrics:
            return (
                f"algorithm {self.name} has no test metrics, and the job has a 'test' "
                "channel: train without it"
            )
        if hosts > 1 and not self.several_hosts:
            return (
                f"algorithm {self.name} trains on one host, and this job has {hosts}: "
                "set InstanceCount to 1"
            )
        if streaming and not self.streaming:
            return (
                f"algorithm {self.name} reads its data whole, and channel {channel.name!r} "
                f"is in {channel.mode} mode: use TrainingInputMode File"
            )
        return None
