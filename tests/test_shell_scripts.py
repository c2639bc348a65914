"""The user-facing shell scripts, run for real: build_and_push.sh against stand-in `aws` and
`docker` commands that record what they are asked to do, predict.sh against a local server."""

import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FAKE_AWS = """#!/bin/sh
echo "aws $*" >> "$CALLS"
case "$1 $2" in
  "sts get-caller-identity")
    [ -n "$FAKE_NO_CREDENTIALS" ] && { echo "Unable to locate credentials" >&2; exit 253; }
    echo 123456789012 ;;
  "configure get") echo eu-west-1 ;;
  "ecr describe-repositories") echo "RepositoryNotFoundException" >&2; exit 254 ;;
  "ecr get-login-password") echo secret-password ;;
esac
"""
FAKE_DOCKER = """#!/bin/sh
echo "docker $*" >> "$CALLS"
[ "$1" = login ] && echo "stdin $(cat)" >> "$CALLS"
[ "$1" = info ] && [ -n "$FAKE_NO_DAEMON" ] && exit 1
[ "$1" = buildx ] && [ -n "$FAKE_NO_BUILDX" ] && exit 1
[ "$1" = build ] && [ -n "$FAKE_BUILD_FAILS" ] && exit 1
[ "$1" = version ] && echo amd64
exit 0
"""


def fake_bin(tmp_path: Path, **scripts: str) -> Path:
    """A bin folder holding the given stand-in commands plus what the script itself uses."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for tool in ("bash", "sh", "dirname", "cat"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return bin_dir


def run_build_and_push(tmp_path: Path, bin_dir: Path, *args: str, **env: str):
    calls = tmp_path / "calls.log"
    calls.touch()
    environ = {"PATH": str(bin_dir), "CALLS": str(calls), "HOME": str(tmp_path), **env}
    result = subprocess.run(
        [str(ROOT / "build_and_push.sh"), *args],
        check=False,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, calls.read_text().splitlines()


def test_build_and_push_runs_the_ecr_steps_in_order(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, aws=FAKE_AWS, docker=FAKE_DOCKER)
    result, calls = run_build_and_push(tmp_path, bin_dir, "my-kmeans", "v1", AWS_REGION="us-east-2")
    assert result.returncode == 0, result.stderr
    registry = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
    assert result.stdout.strip().splitlines()[-1] == f"{registry}/my-kmeans:v1"
    # The two sides of the login pipe start together, in either order.
    password = "aws ecr get-login-password --region us-east-2"
    assert calls.index(password) < calls.index("stdin secret-password")
    calls.remove(password)
    assert calls == [
        "docker info",
        "aws sts get-caller-identity --query Account --output text",
        "aws ecr describe-repositories --region us-east-2 --repository-names my-kmeans",
        "aws ecr create-repository --region us-east-2 --repository-name my-kmeans",
        f"docker login --username AWS --password-stdin {registry}",
        "stdin secret-password",
        f"docker build --platform linux/amd64 -t my-kmeans:v1 {ROOT}",
        f"docker tag my-kmeans:v1 {registry}/my-kmeans:v1",
        f"docker tag my-kmeans:v1 {registry}/my-kmeans:latest",
        f"docker push {registry}/my-kmeans:v1",
        f"docker push {registry}/my-kmeans:latest",
    ]


def test_build_and_push_defaults_and_arm64(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, aws=FAKE_AWS, docker=FAKE_DOCKER)
    result, calls = run_build_and_push(tmp_path, bin_dir, PLATFORM="linux/arm64")
    assert result.returncode == 0, result.stderr
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"  # region from `aws configure`
    assert result.stdout.strip().splitlines()[-1] == f"{registry}/sage-kmeans:latest"
    assert f"docker build --platform linux/arm64 -t sage-kmeans:latest {ROOT}" in calls
    assert sum(call.startswith("docker push") for call in calls) == 1


def test_build_and_push_joins_architectures_with_docker_manifest(tmp_path: Path) -> None:
    """Without buildx (Debian's docker.io): an image per architecture, then a manifest list."""
    bin_dir = fake_bin(tmp_path, aws=FAKE_AWS, docker=FAKE_DOCKER)
    platforms = "linux/amd64,linux/arm64"
    result, calls = run_build_and_push(
        tmp_path, bin_dir, "km", "v2", PLATFORM=platforms, FAKE_NO_BUILDX="1"
    )
    assert result.returncode == 0, result.stderr
    uri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/km:v2"
    latest = uri.replace(":v2", ":latest")
    assert result.stdout.splitlines()[-2:] == ["Pushed for linux/amd64 and linux/arm64:", uri]
    assert calls[calls.index("docker buildx version") :] == [
        "docker buildx version",
        f"docker build --platform linux/amd64 -t {uri}-amd64 {ROOT}",
        f"docker push {uri}-amd64",
        f"docker build --platform linux/arm64 -t {uri}-arm64 {ROOT}",
        f"docker push {uri}-arm64",
        f"docker manifest rm {uri}",
        f"docker manifest create {uri} {uri}-amd64 {uri}-arm64",
        f"docker manifest push --purge {uri}",
        f"docker manifest rm {latest}",
        f"docker manifest create {latest} {uri}-amd64 {uri}-arm64",
        f"docker manifest push --purge {latest}",
    ]


def test_build_and_push_uses_buildx_for_both_architectures(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, aws=FAKE_AWS, docker=FAKE_DOCKER)
    platforms = "linux/arm64,linux/amd64"
    result, calls = run_build_and_push(tmp_path, bin_dir, "km", PLATFORM=platforms)
    assert result.returncode == 0, result.stderr
    uri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/km:latest"
    assert result.stdout.splitlines()[-2:] == ["Pushed for linux/arm64 and linux/amd64:", uri]
    assert calls[-1] == f"docker buildx build --platform {platforms} --tag {uri} --push {ROOT}"
    assert not any(call.startswith(("docker build ", "docker manifest")) for call in calls)


def test_build_and_push_says_a_foreign_build_needs_emulation(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, aws=FAKE_AWS, docker=FAKE_DOCKER)
    result, calls = run_build_and_push(
        tmp_path, bin_dir, PLATFORM="linux/arm64", FAKE_BUILD_FAILS="1"
    )
    assert result.returncode != 0
    assert "building for linux/arm64 here needs emulation" in result.stderr
    assert "build_and_push.sh: docker build for linux/arm64 failed" in result.stderr
    assert not any(call.startswith("docker push") for call in calls)
    result, _ = run_build_and_push(tmp_path, bin_dir, FAKE_BUILD_FAILS="1")
    assert "emulation" not in result.stderr  # amd64 on this (fake) amd64 engine
    assert "docker build for linux/amd64 failed" in result.stderr


@pytest.mark.parametrize(
    ("scripts", "env", "message"),
    [
        (
            {"aws": FAKE_AWS, "docker": FAKE_DOCKER},
            {"PLATFORM": "linux/arm/v7"},
            "PLATFORM must be linux/amd64, linux/arm64 or linux/amd64,linux/arm64, "
            "got 'linux/arm/v7'",
        ),
        ({"docker": FAKE_DOCKER}, {}, "the AWS CLI (aws) is not installed"),
        ({"aws": FAKE_AWS}, {}, "docker is not installed"),
        (
            {"aws": FAKE_AWS, "docker": FAKE_DOCKER},
            {"FAKE_NO_DAEMON": "1"},
            "cannot reach the Docker engine",
        ),
        (
            {"aws": FAKE_AWS, "docker": FAKE_DOCKER},
            {"FAKE_NO_CREDENTIALS": "1"},
            "AWS credentials do not work",
        ),
    ],
)
def test_build_and_push_says_what_is_missing(tmp_path: Path, scripts, env, message) -> None:
    result, calls = run_build_and_push(tmp_path, fake_bin(tmp_path, **scripts), **env)
    assert result.returncode != 0
    assert f"build_and_push.sh: {message}" in result.stderr
    assert not any(call.startswith(("docker build", "docker push")) for call in calls)


class EchoHandler(http.server.BaseHTTPRequestHandler):
    """Answers /invocations with the request's headers and body; any other path is a 404."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if self.path == "/invocations" else 404
        answer = f"{self.headers['Content-Type']}|{self.headers['Accept']}|".encode() + body
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


def predict(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*args],
        check=False,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_predict_posts_the_file_and_prints_the_answer(echo_server: str, tmp_path: Path) -> None:
    payload = tmp_path / "rows.csv"
    payload.write_text("1,2,3,4\n5,6,7,8\n")
    result = predict(
        str(ROOT / "predict.sh"),
        echo_server + "/",
        str(payload),
        "text/csv",
        "application/json",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "text/csv|application/json|1,2,3,4\n5,6,7,8\n"


def test_predict_fails_on_an_error_status(echo_server: str, tmp_path: Path) -> None:
    payload = tmp_path / "rows.csv"
    payload.write_text("1,2,3,4\n")
    result = predict(str(ROOT / "predict.sh"), echo_server + "/elsewhere", str(payload), "text/csv")
    assert result.returncode == 1
    assert "predict.sh: HTTP 404 from" in result.stderr


def test_local_predict_sends_the_sample_payload(echo_server: str) -> None:
    result = predict(str(ROOT / "local_test" / "predict.sh"), PREDICT_URL=echo_server)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "text/csv|*/*|" + (ROOT / "payload.csv").read_text()


def test_predict_usage_and_unreachable_server(tmp_path: Path) -> None:
    assert predict(str(ROOT / "predict.sh"), "http://127.0.0.1:9").returncode == 2
    payload = tmp_path / "rows.csv"
    payload.write_text("1,2,3,4\n")
    result = predict(str(ROOT / "predict.sh"), "http://127.0.0.1:9", str(payload), "text/csv")
    assert result.returncode != 0
    assert "curl" in result.stderr
