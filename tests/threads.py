"""Client threads for the concurrent tests: started together, joined together, and a test
fails unless every one of them returned within a bound without raising.

pyproject.toml already turns an exception left unhandled in any thread into a failure;
`Threads.join` also fails on a thread that never ends (no warning reports those), and
raises a thread's exception in the test's own traceback, named by thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Threads:
    """Threads started with `start`; `join(timeout)` asserts that all of them finished."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[tuple[str, BaseException]] = []

    def start(self, target: Callable[..., object], *args: object) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except BaseException as error:
                self.errors.append((threading.current_thread().name, error))

        thread = threading.Thread(
            target=run, name=f"{getattr(target, '__name__', 'thread')}{args or ''}", daemon=True
        )
        self.threads.append(thread)
        thread.start()
        return thread

    def join(self, timeout: float) -> None:
        """Wait up to `timeout` seconds in all; fail naming the threads still running or
        the first that raised."""
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        running = [thread.name for thread in self.threads if thread.is_alive()]
        assert not running, (
            f"{len(running)} of {len(self.threads)} threads still running after {timeout} s: "
            f"{running}"
        )
        if self.errors:
            name, error = self.errors[0]
            raise AssertionError(
                f"{len(self.errors)} of {len(self.threads)} threads raised; {name}: {error!r}"
            ) from error
