"""The image on both architectures: the arm64 (Graviton) build trains and serves under emulation
as SageMaker runs it, and build_and_push.sh pushes linux/amd64 and linux/arm64 under one name to
a real registry (Debian's docker-registry on loopback), from which each architecture is pulled
by that name and run.

Image: $SAGE_KMEANS_IMAGE_ARM64, an arm64 build of this checkout (.ci/multiarch.sh makes one and
runs this file). Without it these tests skip, unless SAGE_KMEANS_REQUIRE_ARM64=1 (which
.ci/multiarch.sh sets): then they fail. SAGE_KMEANS_REQUIRE_CONTAINER=1 or
SAGE_KMEANS_REQUIRE_ARM64=1 turns a missing engine or registry into a failure. The push test
builds both architectures through build_and_push.sh, so the engine must find
debian:bookworm-slim for each: on Docker Hub, or on the registry mirror that .ci/multiarch.sh
serves in CI.
"""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import REQUIRE_ARM64, REQUIRE_CONTAINER, ROOT, docker, engine_problem, skip_or_fail
from test_container import QUALITY_METRIC, fresh_test_dir, serve_predict_and_stop, train
from test_shell_scripts import FAKE_AWS

MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}  # Docker's names -> platform.machine()


@pytest.fixture(scope="module")
def arm64_image() -> str:
    tag = os.environ.get("SAGE_KMEANS_IMAGE_ARM64")
    if not tag:
        skip_or_fail(
            "SAGE_KMEANS_IMAGE_ARM64 is not set (.ci/multiarch.sh builds and tests one)",
            REQUIRE_ARM64,
        )
    problem = engine_problem()
    if problem:
        skip_or_fail(f"no Docker engine reachable ({problem})", REQUIRE_CONTAINER, REQUIRE_ARM64)
    found = docker("image", "inspect", "--format", "{{.Os}}/{{.Architecture}}", tag)
    assert found.returncode == 0, f"SAGE_KMEANS_IMAGE_ARM64={tag} is not a local image"
    assert found.stdout.strip() == "linux/arm64", f"{tag} is {found.stdout.strip()}"
    return tag


def machine_of(image: str) -> str:
    """What the image's python3 reports as the machine it runs on."""
    command = ("run", "--rm", image, "python3", "-c", "import platform; print(platform.machine())")
    result = docker(*command)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_arm64_image_trains_serves_and_stops(arm64_image: str, tmp_path: Path) -> None:
    assert machine_of(arm64_image) == "aarch64"
    base = fresh_test_dir(tmp_path)
    result = train(arm64_image, base)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert (base / "model" / "model.joblib").is_file()
    assert QUALITY_METRIC.search(log), log
    # Under QEMU on a loaded 2-core machine serve took 147 s to its first /ping (amd64: 11 s).
    serve_predict_and_stop(arm64_image, base, ping_seconds=900)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """Debian's docker-registry on a free loopback port, storing into tmp_path; stopped after."""
    program = shutil.which("docker-registry")
    if program is None:
        skip_or_fail(
            "docker-registry is not installed (Debian: apt-get install docker-registry)",
            REQUIRE_CONTAINER,
            REQUIRE_ARM64,
        )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: {address}\n"
    )
    log = (tmp_path / "registry.log").open("wb")
    server = subprocess.Popen([program, "serve", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, (tmp_path / "registry.log").read_text()
            try:
                with urllib.request.urlopen(f"http://{address}/v2/", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the registry did not answer within 30 s"
                time.sleep(0.2)
        yield address
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def listed_platforms(name: str) -> set[str]:
    result = docker("manifest", "inspect", "--insecure", name)
    assert result.returncode == 0, result.stderr
    manifests = json.loads(result.stdout).get("manifests", [])
    return {f"{each['platform']['os']}/{each['platform']['architecture']}" for each in manifests}


def test_one_name_for_both_architectures(arm64_image: str, registry: str, tmp_path: Path) -> None:
    """build_and_push.sh with both platforms and no buildx (Debian's docker): per-architecture
    images joined by a manifest list; pulling the name for each platform gets that one, and it
    trains."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    name = f"sage-kmeans-test-{uuid.uuid4().hex[:8]}"
    repository = f"{registry}/{name}"
    uri = f"{repository}:v1"
    pushed = subprocess.run(
        [str(ROOT / "build_and_push.sh"), name, "v1"],
        env={
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "CALLS": str(tmp_path / "aws-calls.log"),
            "DOCKER_CONFIG": str(tmp_path / "docker-config"),
            "AWS_REGION": "us-east-2",
            "PLATFORM": "linux/amd64,linux/arm64",
            "REGISTRY": registry,
        },
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    parts = (f"{uri}-amd64", f"{uri}-arm64")
    try:
        assert pushed.returncode == 0, pushed.stdout[-3000:] + pushed.stderr[-3000:]
        assert pushed.stdout.splitlines()[-2:] == ["Pushed for linux/amd64 and linux/arm64:", uri]
        for each in (uri, f"{repository}:latest"):
            assert listed_platforms(each) == {"linux/amd64", "linux/arm64"}, each

        docker("rmi", *parts)  # so that the pulls below come from the registry
        for arch in ("amd64", "arm64"):
            pulled = docker("pull", "--platform", f"linux/{arch}", uri, timeout=600)
            assert pulled.returncode == 0, pulled.stderr
            assert machine_of(uri) == MACHINE[arch]
            base = fresh_test_dir(tmp_path / arch)
            trained = train(uri, base)
            assert trained.returncode == 0, trained.stdout + trained.stderr
            assert (base / "model" / "model.joblib").is_file()
    finally:  # every name this made, and the digests the pulls recorded
        pulled = docker("image", "ls", "--digests", "--format", "{{.Digest}}", repository)
        digests = [
            f"{repository}@{digest}" for digest in pulled.stdout.split() if digest != "<none>"
        ]
        docker("rmi", uri, *parts, *digests)
