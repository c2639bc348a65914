"""Every path and setting the container reads, in one read-only snapshot.

SageMaker mounts everything under /opt/ml; SAGEMAKER_BASE_DIR moves that root so the
same entrypoints run from a checkout, in tests and in the image. Nothing else in the
package reads os.environ.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass, fields
from pathlib import Path

RUNTIME_DIR_VARIABLE = "SAGE_KMEANS_RUNTIME_DIR"
# prometheus_client's own variable: set, it keeps each process's metrics in files there.
METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
EXIT_NO_MODEL = 3  # gunicorn's exit when the model cannot be loaded (it has said why)


class SettingError(ValueError):
    """An environment variable holds a value the container cannot use."""


@dataclass(frozen=True)
class Paths:
    """The /opt/ml tree (or its stand-in under SAGEMAKER_BASE_DIR)."""

    base: Path

    @classmethod
    def read(cls, env: dict[str, str] | None = None) -> Paths:
        """The tree alone: it can always be found, so a bad setting can be reported there."""
        env = os.environ if env is None else env
        return cls(Path(env.get("SAGEMAKER_BASE_DIR") or "/opt/ml").resolve())

    @property
    def config(self) -> Path:
        return self.base / "input" / "config"

    @property
    def hyperparameters(self) -> Path:
        return self.config / "hyperparameters.json"

    @property
    def input_data_config(self) -> Path:
        return self.config / "inputdataconfig.json"

    @property
    def resource_config(self) -> Path:
        return self.config / "resourceconfig.json"

    @property
    def data(self) -> Path:
        return self.base / "input" / "data"

    @property
    def model(self) -> Path:
        return self.base / "model"

    @property
    def output(self) -> Path:
        return self.base / "output"

    @property
    def output_data(self) -> Path:
        return self.output / "data"

    @property
    def failure(self) -> Path:
        return self.output / "failure"

    @property
    def checkpoints(self) -> Path:
        return self.base / "checkpoints"


def _int(
    env: dict[str, str],
    names: tuple[str, ...],
    default: int,
    minimum: int,
    maximum: int | None = None,
) -> int:
    accepted = f"≥ {minimum}" if maximum is None else f"from {minimum} to {maximum}"
    for name in names:
        raw = env.get(name, "").strip()
        if not raw:
            continue
        try:
            value: int | None = int(raw)
        except ValueError:
            value = None
        if value is None or value < minimum or (maximum is not None and value > maximum):
            raise SettingError(f"{name} must be an integer {accepted}, got {raw!r}")
        return value
    return default


def _number(env: dict[str, str], name: str, default: float, unit: str) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise SettingError(f"{name} must be a number of {unit} ≥ 0, got {raw!r}")
    return value


@dataclass(frozen=True)
class Numeric:
    """A numeric setting: the Environment field it fills, its variables (the first one set
    wins), its least (and, for some, greatest) accepted value and its unit (None: a whole
    number)."""

    field: str
    variables: tuple[str, ...]
    minimum: int
    unit: str | None = None
    maximum: int | None = None

    def read(self, env: dict[str, str], default: float) -> float:
        if self.unit is None:
            return _int(env, self.variables, int(default), self.minimum, self.maximum)
        (name,) = self.variables
        return _number(env, name, default, self.unit)


NUMERIC_SETTINGS = (
    Numeric("port", ("SAGEMAKER_BIND_TO_PORT",), 1, maximum=65535),
    Numeric("workers", ("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"), 1),
    Numeric("timeout", ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT"), 1),
    Numeric("max_payload_mb", ("SAGEMAKER_MAX_PAYLOAD_IN_MB",), 1),
    Numeric("pipe_wait_seconds", ("SAGE_KMEANS_PIPE_WAIT_SECONDS",), 0, "seconds"),
    Numeric("checkpoint_seconds", ("SAGE_KMEANS_CHECKPOINT_SECONDS",), 0, "seconds"),
    Numeric("join_seconds", ("SAGE_KMEANS_JOIN_TIMEOUT_SECONDS",), 0, "seconds"),
    Numeric("model_memory_mb", ("SAGE_KMEANS_MODEL_MEMORY_MB",), 0, "MB"),
)


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise SettingError(f"{name} must be true or false, got {raw!r}")


def _algorithm(env: dict[str, str]) -> str:
    from kmeans.algorithms import DEFAULT, available

    name = env.get("SAGE_KMEANS_ALGORITHM", "").strip() or DEFAULT
    if name not in available():
        raise SettingError(
            f"SAGE_KMEANS_ALGORITHM must name one of this image's algorithms "
            f"({', '.join(available())}), got {name!r}"
        )
    return name


@dataclass(frozen=True)
class Environment:
    """Settings from the environment, each with its default beside it."""

    paths: Paths
    host: str = "0.0.0.0"
    port: int = 8080
    workers: int = 1
    timeout: int = 60
    max_payload_mb: int = 6
    default_accept: str = ""
    allow_pickle: bool = True  # serve may unpickle model.joblib when model.npz is absent
    algorithm: str = "kmeans"  # kmeans/algorithms/<name>/: what train fits, serve's default
    training_job_name: str = ""
    pipe_wait_seconds: float = 60.0  # how long to wait for the next Pipe-mode FIFO
    checkpoint_seconds: float = 60.0  # the longest time between two checkpoints
    join_seconds: float = 300.0  # several hosts: how long they have to join the leader
    runtime_dir: str = ""  # set by `serve` for gunicorn: where its socket and files live
    multi_model: bool = False  # a multi-model endpoint: the /models API, no model at start
    model_memory_mb: float = 0.0  # multi-model: what loaded models may take; 0: half the RAM
    metrics: bool = True  # GET /metrics, and the counting behind it
    metrics_dir: str = ""  # set by `serve` for gunicorn: every process's metric files
    # The image's identity (the Dockerfile sets these from its build arguments; a native run
    # has none) and the lock its venv was installed from.
    revision: str = ""
    version: str = ""
    created: str = ""
    lock_file: str = ""

    def provenance(self) -> dict[str, str | None]:
        """Which build this is: git revision, version and build time of the image, and the
        sha256 of the lock (requirements.txt) it installed; None for what is not known."""
        lock_sha256 = None
        if self.lock_file:
            with contextlib.suppress(OSError):  # unknown then: provenance never stops a job
                lock_sha256 = hashlib.sha256(Path(self.lock_file).read_bytes()).hexdigest()
        known = {"revision": self.revision, "version": self.version, "created": self.created}
        return {**{key: value or None for key, value in known.items()}, "lock_sha256": lock_sha256}

    @classmethod
    def read(cls, env: dict[str, str] | None = None) -> Environment:
        env = dict(os.environ if env is None else env)
        metrics = _flag(env, "SAGE_KMEANS_METRICS", True)
        defaults = {field.name: field.default for field in fields(cls)}
        defaults["workers"] = os.cpu_count() or 1
        numbers = {
            setting.field: setting.read(env, defaults[setting.field])
            for setting in NUMERIC_SETTINGS
        }
        return cls(
            paths=Paths.read(env),
            host=env.get("SAGEMAKER_BIND_TO_HOST") or "0.0.0.0",
            default_accept=env.get("SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT", "").strip(),
            allow_pickle=_flag(env, "SAGE_KMEANS_ALLOW_PICKLE", True),
            algorithm=_algorithm(env),
            training_job_name=env.get("TRAINING_JOB_NAME", ""),
            runtime_dir=env.get(RUNTIME_DIR_VARIABLE, ""),
            multi_model=_flag(env, "SAGEMAKER_MULTI_MODEL", False),
            metrics=metrics,
            metrics_dir=env.get(METRICS_DIR_VARIABLE, "") if metrics else "",
            **numbers,
            **{
                field: env.get(f"SAGE_KMEANS_{field.upper()}", "").strip()
                for field in ("revision", "version", "created")
            },
            lock_file=env.get("SAGE_KMEANS_LOCK", "").strip(),
        )
