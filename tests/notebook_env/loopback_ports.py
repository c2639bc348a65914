"""Publish SDK local mode's serving port on loopback only.

sagemaker-core's local mode maps the serving container's port as "PORT:8080", which Docker
publishes on every interface; the project's tests bind servers to loopback only, so
importing this module makes the mapping "127.0.0.1:PORT:8080". Nothing else changes: the
SDK still calls http://localhost:PORT.
"""

from __future__ import annotations

from sagemaker.core.local import image

_create_docker_host = image._SageMakerContainer._create_docker_host


def _on_loopback(self, *args, **kwargs) -> dict:
    host = _create_docker_host(self, *args, **kwargs)
    if "ports" in host:
        host["ports"] = [
            f"127.0.0.1:{port}" if port.count(":") == 1 else port for port in host["ports"]
        ]
    return host


image._SageMakerContainer._create_docker_host = _on_loopback
