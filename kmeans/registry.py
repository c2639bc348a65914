"""The models a multi-model endpoint has loaded, agreed on by every gunicorn worker.

The list itself is one JSON file in the server's runtime folder, replaced atomically and
only under an exclusive file lock; a counter in a shared memory-mapped file moves on
every change. Each worker keeps copies of the models it has served and, before every
request, compares that counter with the one it last saw (a single memory read): the same,
its copies are current; moved, it re-reads the list, drops what was unloaded or replaced,
and loads a listed model the first time it is asked for it (with model_folder.load). A load or
unload is therefore seen by every worker from the next request on, whichever worker took it.

Memory: a model's size is what its load allocated (traced by tracemalloc), counted once
per worker, since each may hold a copy. A load that would take the loaded models over the
budget is refused (HTTP 507, as SageMaker expects: it then unloads idle models and tries
again), and the log says so; nothing is evicted behind the platform's back.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import struct
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from kmeans import algorithms, model_files, model_folder
from kmeans.algorithm import Loaded
from kmeans.environment import Environment

log = logging.getLogger("kmeans.serve")

_COUNTER = struct.Struct("<Q")
_MB = 1 << 20
_TRACING = threading.Lock()  # tracemalloc is one per process: one measured load at a time


class AlreadyLoaded(ValueError):
    """A load under a name that is loaded: HTTP 409."""


class NotLoaded(LookupError):
    """No model is loaded under that name: HTTP 404."""


class FolderNotFound(FileNotFoundError):
    """The url of a load names no folder: HTTP 404."""


class OverBudget(MemoryError):
    """The model does not fit in the memory budget: HTTP 507."""


@dataclass(frozen=True)
class Entry:
    name: str
    url: str
    serial: int  # the counter's value when it was loaded: a reload is a new model
    size: int  # bytes of one copy


def container_memory() -> int:
    """Bytes this container may use: its cgroup's limit, else the machine's memory."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            return min(physical, int(Path(limit).read_text()))
        except (OSError, ValueError):  # absent, or "max": no limit there
            continue
    return physical


def measured_load(
    folder: Path, allow_pickle: bool, default: str = algorithms.DEFAULT
) -> tuple[Loaded, int]:
    """The loaded model and the bytes its load left allocated (one copy's size): the
    algorithm's modules are imported before, so that only the model is counted."""
    algorithm, (metadata, notes) = model_folder.algorithm_of(folder, default)
    with _TRACING:
        tracing = tracemalloc.is_tracing()
        if not tracing:
            tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        try:
            loaded = algorithm.load(folder, metadata, notes, allow_pickle)
            return loaded, max(tracemalloc.get_traced_memory()[0] - before, 1)
        finally:
            if not tracing:
                tracemalloc.stop()


def _size(size: float) -> str:
    return f"{size / _MB:.1f} MB" if size >= _MB else f"{size / 1024:.1f} KB"


class Registry:
    """Load, list and unload models by name; `get` hands a worker its copy of one."""

    def __init__(
        self,
        folder: Path,
        budget: int,
        copies: int,
        allow_pickle: bool = True,
        algorithm: str = algorithms.DEFAULT,
    ) -> None:
        self.folder, self.budget, self.copies = folder, budget, copies
        self.allow_pickle = allow_pickle  # False: model.joblib is never unpickled
        self.algorithm = algorithm  # for model folders whose model.json does not name one
        self._list = folder / "registry.json"
        self._lock_file = folder / "registry.lock"
        folder.mkdir(parents=True, exist_ok=True)
        counter = folder / "registry.counter"
        with self._exclusive():
            if not self._list.exists():
                self._write({})
            if not counter.exists():
                counter.write_bytes(bytes(_COUNTER.size))
        with counter.open("r+b") as file:
            self._counter = mmap.mmap(file.fileno(), _COUNTER.size)  # shared after fork
        self._seen = -1
        self._table: dict[str, Entry] = {}
        self._models: dict[str, tuple[int, Loaded]] = {}  # this process's copies
        self._loading = threading.Lock()

    # --- reading: every worker, every request ---------------------------------------

    def get(self, name: str) -> Loaded | None:
        """This worker's copy of a loaded model (loaded now if it has none), or None."""
        self._sync()
        entry = self._table.get(name)
        if entry is None:
            return None
        held = self._models.get(name)
        if held is not None and held[0] == entry.serial:
            return held[1]
        with self._loading:
            held = self._models.get(name)
            if held is None or held[0] != entry.serial:
                loaded = model_folder.load(Path(entry.url), self.allow_pickle, self.algorithm)
                held = (entry.serial, loaded)
                self._models[name] = held
        return held[1]

    def entries(self) -> list[Entry]:
        """The loaded models, by name."""
        self._sync()
        return sorted(self._table.values(), key=lambda entry: entry.name)

    def entry(self, name: str) -> Entry | None:
        self._sync()
        return self._table.get(name)

    def _sync(self) -> None:
        counter = _COUNTER.unpack_from(self._counter)[0]
        if counter == self._seen:
            return
        table = self._read()  # read after the counter: at least as new as it
        self._models = {
            name: held
            for name, held in self._models.items()
            if name in table and table[name].serial == held[0]
        }
        self._table, self._seen = table, counter

    def _read(self) -> dict[str, Entry]:
        listed = json.loads(self._list.read_bytes())
        return {name: Entry(name=name, **fields) for name, fields in listed.items()}

    # --- changing: under the lock, then the counter moves ---------------------------

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock_file.open("a") as lock:  # its own open file: flock excludes workers
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _write(self, table: dict[str, Entry]) -> None:
        listed = {name: asdict(entry) for name, entry in table.items()}
        for fields in listed.values():
            del fields["name"]
        text = json.dumps(listed)  # ASCII: any name, even one with lone surrogates
        written = model_files.write_temporary(
            self.folder, self._list.name, lambda p: p.write_text(text)
        )
        os.replace(written, self._list)

    def _commit(self, table: dict[str, Entry], counter: int) -> None:
        """The new list first, then the counter: whoever sees the counter sees the list."""
        self._write(table)
        _COUNTER.pack_into(self._counter, 0, counter)

    def _used(self, table: dict[str, Entry]) -> int:
        """The bytes the budget counts for `table`'s models: one copy in every worker."""
        return sum(entry.size for entry in table.values()) * self.copies

    def _usage(self, table: dict[str, Entry]) -> str:
        used = self._used(table)
        return f"{len(table)} models loaded, {_size(used)} of the {_size(self.budget)} budget"

    def accounted(self) -> tuple[int, int]:
        """How many models are loaded, and the bytes the budget counts for them."""
        self._sync()
        return len(self._table), self._used(self._table)

    def load(self, name: str, url: str) -> Entry:
        """Load the model folder at `url` under `name`, if it is new and fits."""
        if self.entry(name) is not None:
            raise AlreadyLoaded(f"model {name!r} is already loaded; unload it first")
        folder = Path(url)
        try:
            found = folder.is_dir()
        except OSError as error:  # a name too long for the file system, say
            raise FolderNotFound(f"model folder {url} not found: {error.strerror}") from None
        if not found:
            raise FolderNotFound(f"model folder {url} not found")
        # Outside the lock: loads run side by side.
        loaded, size = measured_load(folder, self.allow_pickle, self.algorithm)
        for warning in loaded.warnings:
            log.warning("model %r: %s", name, warning)
        with self._exclusive():
            table = self._read()
            if name in table:
                raise AlreadyLoaded(f"model {name!r} is already loaded; unload it first")
            used = self._used(table)
            if used + size * self.copies > self.budget:
                message = (
                    f"model {name!r} needs {_size(size)} in each of {self.copies} workers, "
                    f"and {self._usage(table)} (SAGE_KMEANS_MODEL_MEMORY_MB): "
                    "unload a model first"
                )
                log.warning("refused %s", message)
                raise OverBudget(message)
            counter = _COUNTER.unpack_from(self._counter)[0] + 1
            entry = Entry(name, url, counter, size)
            self._commit({**table, name: entry}, counter)
            usage = self._usage({**table, name: entry})
        with self._loading:
            self._models[name] = (counter, loaded)
        log.info(
            "loaded model %r from %s: k=%s, %d features, %s a copy; %s",
            name,
            url,
            loaded.metadata.get("k", "?"),
            loaded.feature_dim,
            _size(size),
            usage,
        )
        return entry

    def unload(self, name: str) -> Entry:
        with self._exclusive():
            table = self._read()
            entry = table.pop(name, None)
            if entry is None:
                raise NotLoaded(f"model {name!r} is not loaded")
            self._commit(table, _COUNTER.unpack_from(self._counter)[0] + 1)
            usage = self._usage(table)
        with self._loading:
            self._models.pop(name, None)
        log.info("unloaded model %r (%s a copy); %s", name, _size(entry.size), usage)
        return entry


def create(env: Environment) -> Registry:
    """The server's registry, in its runtime folder; budget 0: half the container's memory."""
    budget = int(env.model_memory_mb * _MB) if env.model_memory_mb > 0 else container_memory() // 2
    algorithms.named(env.algorithm)  # imported before the workers fork: shared by them
    registry = Registry(
        Path(env.runtime_dir or ".") / "models",
        budget,
        env.workers,
        env.allow_pickle,
        env.algorithm,
    )
    log.info(
        "multi-model endpoint: no model loaded until POST /models; budget %s for all "
        "loaded models, counting one copy in each of %d workers (SAGE_KMEANS_MODEL_MEMORY_MB)",
        _size(budget),
        env.workers,
    )
    return registry
