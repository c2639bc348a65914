"""Serve with gthread workers, as `serve` did before it used sync workers:
`python -m reliability.launch`. The same supervisor, settings and app, with gunicorn's
worker class and nginx's keep-alive to gunicorn switched back, so that
reliability/workers.py can measure the two side by side.
"""

import logging
import signal
import subprocess
import sys

from kmeans import supervisor
from kmeans.environment import Environment

GTHREAD = ["--worker-class", "gthread", "--threads", "1", "--keep-alive", "75"]
KEEPALIVE = {  # nginx.conf text -> what the gthread set-up had there
    "max_fails=0;": "max_fails=0;\n        keepalive 32;\n        keepalive_timeout 60s;",
    "proxy_next_upstream off;": (
        'proxy_next_upstream error non_idempotent;\n        proxy_set_header Connection "";'
    ),
}


class Launcher(supervisor.Supervisor):
    def _start(self, command: list[str], death_signal: int) -> subprocess.Popen:
        if death_signal == signal.SIGTERM:  # gunicorn: its command line overrides the file
            command = [*command[:-1], *GTHREAD, command[-1]]
        else:  # nginx, whose configuration is written by now
            config = self.runtime / "nginx.conf"
            text = config.read_text()
            for old, new in KEEPALIVE.items():
                if old not in text:
                    raise SystemExit(f"launch: {old!r} not in kmeans/nginx.conf any more")
                text = text.replace(old, new)
            config.write_text(text)
        return super()._start(command, death_signal)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    return Launcher(Environment.read()).run()


if __name__ == "__main__":
    sys.exit(main())
