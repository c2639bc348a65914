"""The containers docker-compose started for SDK local mode under a folder.

The SDK runs each job and endpoint as a compose project in a folder of its own and never
removes the containers; docker-compose labels each with that folder, which is how a run's
containers are found (to check how they ended) and removed afterwards.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

WORKING_DIR_LABEL = "com.docker.compose.project.working_dir"


def containers(root: Path) -> list[dict]:
    """Compose containers of folders under root: id, name, running, exit code."""
    listing = subprocess.run(
        ["docker", "ps", "--all", "--quiet", "--filter", f"label={WORKING_DIR_LABEL}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not listing:
        return []
    described = subprocess.run(
        ["docker", "inspect", *listing], capture_output=True, text=True, check=True
    )
    return [
        {
            "id": container["Id"],
            "name": container["Name"].lstrip("/"),
            "running": container["State"]["Running"],
            "exit_code": container["State"]["ExitCode"],
        }
        for container in json.loads(described.stdout)
        if Path(container["Config"]["Labels"][WORKING_DIR_LABEL]).is_relative_to(root)
    ]


def remove_containers(root: Path) -> None:
    left = [container["id"] for container in containers(root)]
    if left:
        subprocess.run(["docker", "rm", "--force", *left], capture_output=True, check=False)
