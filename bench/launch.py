"""Serve a baseline WSGI app with our own stack: `python -m bench.launch MODULE:APP`.

It runs kmeans/supervisor.py unchanged (same rendered kmeans/nginx.conf, same
kmeans/gunicorn.conf.py, same environment variables) and only swaps the app gunicorn
loads, so a baseline differs from ours in the handler and nothing else.
"""

import logging
import signal
import subprocess
import sys

from kmeans import supervisor
from kmeans.environment import Environment

OURS = "kmeans.wsgi:app"


class Launcher(supervisor.Supervisor):
    def __init__(self, env: Environment, app: str) -> None:
        super().__init__(env)
        self.app = app

    def _start(self, command: list[str], death_signal: int) -> subprocess.Popen:
        if death_signal == signal.SIGTERM:  # gunicorn (nginx stops with SIGQUIT)
            if OURS not in command:
                raise SystemExit(f"launch: {OURS} not in gunicorn's command {command}")
            command = [self.app if part == OURS else part for part in command]
        return super()._start(command, death_signal)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    return Launcher(Environment.read(), sys.argv[1]).run()


if __name__ == "__main__":
    sys.exit(main())
