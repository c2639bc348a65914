"""Who is in the training job, and the Dask cluster that joins its hosts.

resourceconfig.json lists the job's hosts and names this one. With one host nothing here
starts, and Dask is never imported. With several, the first host of the list is the
leader: it runs the Dask scheduler on port 8786 and, like every host, one Dask worker
(the first free port of 8788-8795) inside its own `train` process, so that each host's
rows stay in that process's memory and only per-cluster sums travel. Each host binds to
its own address: its name resolved (DNS may lag at start: retried), else the address of
resourceconfig's network_interface_name. No dashboard or other HTTP port is opened.

The leader waits, bounded, for every host to join, drives the job through
`on_every_host`, and at the end tells every host the outcome (`tell_outcome`); followers
wait for it (`await_outcome`) and exit with it. A follower whose leader is gone fails
within seconds: its worker's connection to the scheduler breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("kmeans.train")

SCHEDULER_PORT = 8786
WORKER_PORTS = (8788, 8795)  # each host's worker takes the first free one
POLL_SECONDS = 0.2
OUTCOME_SECONDS = 10.0
DEFAULT_HOST = "algo-1"


class HostError(Exception):
    """A host failed, could not be reached or was lost; the message names it. `code` is
    the exit code: 1 when the data or settings were at fault, 2 otherwise."""

    def __init__(self, message: str, code: int = 2, detail: str = "") -> None:
        super().__init__(message)
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Hosts:
    """resourceconfig.json: this host, every host (the first leads), the network interface."""

    current: str = DEFAULT_HOST
    names: tuple[str, ...] = (DEFAULT_HOST,)
    interface: str | None = None

    @classmethod
    def read(cls, path: Path) -> Hosts:
        if not path.is_file():
            return cls()
        try:
            config = json.loads(path.read_text())
            current = str(config.get("current_host") or DEFAULT_HOST)
            names = tuple(str(name) for name in config.get("hosts") or [current])
        except (ValueError, AttributeError, TypeError):
            log.warning("%s is not valid JSON; assuming one host, %s", path, DEFAULT_HOST)
            return cls()
        if current not in names:
            raise HostError(f"{path.name}: current_host {current!r} is not in hosts {list(names)}")
        if len(set(names)) != len(names):
            raise HostError(f"{path.name}: hosts {list(names)} name a host twice")
        return cls(current, names, config.get("network_interface_name") or None)

    @property
    def leader(self) -> str:
        return self.names[0]

    @property
    def index(self) -> int:
        return self.names.index(self.current)

    @property
    def count(self) -> int:
        return len(self.names)

    @property
    def is_leader(self) -> bool:
        return self.current == self.leader


def resolve(name: str, deadline: float) -> str:
    """The IPv4 address of a host name, retrying until `deadline` (time.monotonic)."""
    while True:
        try:
            found = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
            return str(found[0][4][0])
        except OSError as error:
            if time.monotonic() > deadline:
                raise HostError(f"host {name!r} does not resolve ({error})") from None
            time.sleep(1.0)


def _bindable(address: str) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


def _interface_address(interface: str | None) -> str | None:
    if not interface:
        return None
    import psutil  # installed with distributed

    for entry in psutil.net_if_addrs().get(interface, []):
        if entry.family == socket.AF_INET:
            return str(entry.address)
    return None


def own_address(hosts: Hosts, deadline: float) -> str:
    """The address this host binds to: its name resolved, when that address is this
    machine's; else the address of resourceconfig's network interface."""
    address = resolve(hosts.current, deadline)
    if _bindable(address):
        return address
    fallback = _interface_address(hosts.interface)
    if fallback and _bindable(fallback):
        return fallback
    raise HostError(
        f"host {hosts.current!r} resolves to {address}, which is not an address of this "
        f"machine, and interface {hosts.interface!r} has none"
    )


def _url(address: str, port: int) -> str:
    return f"tcp://{ipaddress.ip_address(address)}:{port}"


_OUTCOME: list[tuple[int, str]] = []
_OUTCOME_SET = threading.Event()


def _receive_outcome(code: int, reason: str) -> None:
    """Runs on each follower when the leader is done: its exit code and failure line."""
    _OUTCOME.append((code, reason))
    _OUTCOME_SET.set()


class Cluster:
    """The job's Dask cluster, started on entry and stopped on exit, on every host."""

    def __init__(self, hosts: Hosts, join_seconds: float) -> None:
        self.hosts = hosts
        self.join_seconds = join_seconds
        self.started = time.monotonic()
        self.startup_seconds = 0.0  # until every host joined: Dask imported, servers up
        self.addresses: dict[str, str] = {}  # host name -> worker address, on the leader
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="dask", daemon=True)
        self._scheduler: Any = None
        self._worker: Any = None
        self._client: Any = None

    def _run(self, coroutine: Any, timeout: float | None = None) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> Cluster:
        import dask
        import distributed

        logging.getLogger("distributed").setLevel(logging.WARNING)
        dask.config.set(
            {
                "distributed.scheduler.http.routes": [],
                "distributed.worker.http.routes": [],
                "distributed.scheduler.worker-ttl": "60s",
                "distributed.worker.daemon": False,
            }
        )
        deadline = self.started + self.join_seconds
        address = own_address(self.hosts, deadline)
        leader = address if self.hosts.is_leader else resolve(self.hosts.leader, deadline)
        scheduler_url = _url(leader, SCHEDULER_PORT)
        self._thread.start()
        try:
            if self.hosts.is_leader:
                self._scheduler = self._run(self._start_scheduler(distributed, address))
            log.info(
                "host %s (%s) joining the cluster of %d hosts led by %s at %s",
                self.hosts.current,
                address,
                self.hosts.count,
                self.hosts.leader,
                scheduler_url,
            )
            self._worker = self._run(
                self._start_worker(distributed, scheduler_url, address, deadline)
            )
            if self.hosts.is_leader:
                self._client = distributed.Client(scheduler_url, timeout=30)
                self._wait_for_hosts(deadline)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    async def _start_scheduler(self, distributed: Any, address: str) -> Any:
        return await distributed.Scheduler(
            host=address,
            port=SCHEDULER_PORT,
            dashboard=False,
            dashboard_address="127.0.0.1:0",
        )

    async def _start_worker(
        self, distributed: Any, scheduler_url: str, address: str, deadline: float
    ) -> Any:
        try:
            return await distributed.Worker(
                scheduler_url,
                host=address,
                port="{}:{}".format(*WORKER_PORTS),
                name=self.hosts.current,
                nthreads=1,  # one task at a time; a task uses every core itself
                memory_limit=0,  # no spilling or pausing: a host's rows must stay in memory
                dashboard=False,
                dashboard_address="127.0.0.1:0",
                death_timeout=max(1.0, deadline - time.monotonic()),
            )
        except (TimeoutError, OSError) as error:
            raise HostError(
                f"host {self.hosts.current} could not join the leader {self.hosts.leader} at "
                f"{scheduler_url} within {self.join_seconds:g} s "
                f"(SAGE_KMEANS_JOIN_TIMEOUT_SECONDS): {error or type(error).__name__}"
            ) from None

    async def _membership(self) -> dict[str, str]:
        return {state.name: address for address, state in self._scheduler.workers.items()}

    def _joined(self) -> dict[str, str]:
        """Host name -> worker address of every worker the scheduler knows now (read in
        the scheduler's own thread)."""
        return self._run(self._membership(), timeout=30)

    def _wait_for_hosts(self, deadline: float) -> None:
        logged = time.monotonic()
        while True:
            joined = self._joined()
            missing = [name for name in self.hosts.names if name not in joined]
            if not missing:
                break
            if time.monotonic() > deadline:
                raise HostError(
                    f"host{'s' if len(missing) > 1 else ''} {', '.join(missing)} did not join "
                    f"within {self.join_seconds:g} s (SAGE_KMEANS_JOIN_TIMEOUT_SECONDS); check "
                    f"that the hosts reach {self.hosts.leader} on port {SCHEDULER_PORT}"
                )
            if time.monotonic() - logged > 10:
                log.info("waiting for %s to join", ", ".join(missing))
                logged = time.monotonic()
            time.sleep(POLL_SECONDS)
        self.addresses = {name: joined[name] for name in self.hosts.names}
        self.startup_seconds = time.monotonic() - self.started
        log.info("all %d hosts joined in %.2f s", self.hosts.count, self.startup_seconds)

    def on_every_host(self, function: Callable[..., Any], *args: Any) -> list[Any]:
        """Run `function(*args)` on every host's worker, in hosts order; a failure on any
        host, or a host that leaves, raises HostError naming it."""
        from distributed import wait

        tag = uuid.uuid4().hex[:8]
        futures = {
            name: self._client.submit(
                function,
                *args,
                key=f"{function.__name__}-{tag}-{name}",
                workers=[address],
                allow_other_workers=False,
                pure=False,
            )
            for name, address in self.addresses.items()
        }
        results: dict[str, Any] = {}
        try:
            while len(results) < len(futures):
                joined = self._joined()
                lost = [name for name in futures if name not in joined]
                if lost:  # checked first: a lost host's finished result is lost with it
                    raise HostError(
                        f"host {', '.join(lost)} was lost mid-job (its process ended or it "
                        "became unreachable)"
                    )
                for name, future in futures.items():
                    if future.status == "error":
                        raise _failed(name, future)
                    if name not in results and future.status == "finished":
                        with contextlib.suppress(TimeoutError):  # its host just left
                            results[name] = future.result(timeout=POLL_SECONDS)
                waiting = [f for name, f in futures.items() if name not in results]
                if waiting:
                    with contextlib.suppress(TimeoutError):  # none finished: check again
                        wait(waiting, POLL_SECONDS, return_when="FIRST_COMPLETED")
            return [results[name] for name in futures]
        finally:
            for future in futures.values():
                future.release()

    def tell_outcome(self, code: int, reason: str) -> None:
        """Leader: tell every follower the job is over: 0 and '', or why it failed. Waits
        OUTCOME_SECONDS at most: a follower that is itself stopping would hold Dask's
        connection retries for half a minute; it learns of the end when the leader goes."""
        if self._client is None:
            return

        def tell() -> None:
            with contextlib.suppress(Exception):
                joined = self._joined()
                followers = [
                    address for name, address in joined.items() if name != self.hosts.leader
                ]
                if followers:
                    self._client.run(_receive_outcome, code, reason, workers=followers)

        sender = threading.Thread(target=tell, name="outcome", daemon=True)
        sender.start()
        sender.join(OUTCOME_SECONDS)

    def await_outcome(self) -> tuple[int, str]:
        """Follower: block until the leader says the job is over: its code and reason."""
        from distributed.core import Status

        while not _OUTCOME_SET.wait(POLL_SECONDS):
            if self._worker.status not in (Status.running, Status.paused):
                raise HostError(
                    f"lost the leader {self.hosts.leader}: its scheduler went away before it "
                    "reported the job's outcome (see the leader's log)"
                )
        return _OUTCOME[0]

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close(timeout=5)
        for server in (self._worker, self._scheduler):
            if server is not None and self._thread.is_alive():
                with contextlib.suppress(Exception):
                    self._run(server.close(), timeout=10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


def _failed(host: str, future: Any) -> HostError:
    """What a host's failed request says: one line naming the host; for an error of the
    code rather than the data, the host's traceback below it."""
    error = future.exception()
    first_line = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, MemoryError):
        reason = "out of memory: use a larger instance, more hosts, or set mini_batch_size"
        return HostError(f"host {host}: {reason}", 1)
    if isinstance(error, ValueError):  # DataError, HyperparameterError: the user's to fix
        return HostError(f"host {host}: {first_line}", 1)
    detail = "".join(traceback.format_tb(future.traceback()))
    return HostError(f"host {host}: {type(error).__name__}: {first_line}", 2, detail)
