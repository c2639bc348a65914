"""The supply chain: the hash-locked requirement files and what installs them.

- pip, given a copy of the lock in which one sha256 is changed, refuses the file that PyPI
  serves (its hash error), while the unchanged line installs the same file: the hashes in the
  lock are PyPI's own, and --require-hashes is what stops a substituted file.
- Every lock pins each package to one version with at least one hash, names no index or
  mirror, and the development lock carries the runtime lock's pins unchanged (one place for pins).
- Every place that installs a lock (the Dockerfile, the bootstrap, the notebook venv) passes
  --require-hashes.
- Provenance: train records the build's identity (the SAGE_KMEANS_REVISION, _VERSION and
  _CREATED the Dockerfile sets from its build arguments) and the lock's sha256 in model.json,
  serve logs them at start; a job trained in the image names the image's OCI revision label
  and the sha256 of the lock it was built from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SAMPLE, docker, run_train

ROOT = Path(__file__).resolve().parent.parent
LOCKS = ["requirements.txt", "requirements-dev.txt", "requirements-notebook.txt"]
LOCKS += ["requirements-supply.txt", "requirements-mxnet.txt"]
# A small pure-Python wheel from the runtime lock: one download, a second or two.
SMALL_PACKAGE = "sortedcontainers"
PIN = re.compile(r"^([a-z0-9][a-z0-9._-]*)==(\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})*)", re.M)


def pins(lock: Path) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, sha256 hashes) for every requirement in a lock."""
    found = {}
    for name, version, hashes in PIN.findall(lock.read_text()):
        found[name] = (version, re.findall(r"sha256:([0-9a-f]{64})", hashes))
    return found


def pip_from_pypi(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """pip as on a fresh machine: this machine's pip configuration (local indexes and
    find-links) ignored, PyPI only, the system's CA bundle trusted."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env["PIP_CERT"] = os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt")
    command = [sys.executable, "-m", "pip", "install", "--no-cache-dir", "--no-deps"]
    command += ["--only-binary=:all:", "--index-url", "https://pypi.org/simple", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def test_a_changed_hash_in_the_lock_makes_pip_refuse_the_file(tmp_path: Path) -> None:
    version, hashes = pins(ROOT / "requirements.txt")[SMALL_PACKAGE]
    line = f"{SMALL_PACKAGE}=={version} " + " ".join(f"--hash=sha256:{h}" for h in hashes)
    lock = tmp_path / "one-line.txt"
    lock.write_text(line + "\n")

    report = tmp_path / "report.json"
    intact = pip_from_pypi(
        "--require-hashes", "--target", str(tmp_path / "intact"), "--report", str(report),
        "-r", str(lock), cwd=tmp_path,
    )  # fmt: skip
    if intact.returncode != 0 and "hash" not in intact.stderr.lower():
        message = f"PyPI not reachable for pip: {intact.stderr.strip()[-300:]}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    assert intact.returncode == 0, intact.stderr
    served = json.loads(report.read_text())["install"][0]["download_info"]["archive_info"]
    served_hash = served["hashes"]["sha256"]
    assert served_hash in hashes, "the lock does not list the hash of the file PyPI serves"

    changed = served_hash[:10] + ("0" if served_hash[10] != "0" else "1") + served_hash[11:]
    lock.write_text(line.replace(served_hash, changed) + "\n")
    refused = pip_from_pypi(
        "--require-hashes", "--target", str(tmp_path / "changed"), "-r", str(lock), cwd=tmp_path
    )
    assert refused.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in refused.stderr
    assert re.search(rf"Expected +(sha256|or) {changed}\n", refused.stderr), refused.stderr
    assert re.search(rf"Got +{served_hash}\n", refused.stderr), refused.stderr
    assert not (tmp_path / "changed" / SMALL_PACKAGE).exists()


@pytest.mark.parametrize("name", LOCKS)
def test_every_lock_pins_one_version_with_hashes_and_names_no_index(name: str) -> None:
    text = (ROOT / name).read_text()
    requirements = [line for line in text.splitlines() if line and line[0] not in "# "]
    locked = pins(ROOT / name)
    assert len(locked) == len(requirements) > 0, f"{name}: a requirement without == or hash"
    assert all(hashes for _, hashes in locked.values()), f"{name}: a pin without a hash"
    for option in ("--index-url", "--extra-index-url", "--find-links", "-i ", "-f ", "file:"):
        assert option not in text, f"{name} names an index: {option}"
    assert "://" not in text, f"{name} names a host"


def test_the_development_lock_carries_the_runtime_pins_unchanged() -> None:
    runtime, development = pins(ROOT / "requirements.txt"), pins(ROOT / "requirements-dev.txt")
    moved = {name: (pin, development.get(name)) for name, pin in runtime.items()}
    moved = {name: pair for name, pair in moved.items() if pair[0] != pair[1]}
    assert not moved, f"requirements-dev.txt differs from requirements.txt: {moved}"


def test_every_install_of_a_lock_requires_hashes() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    install = re.search(r"pip install(?:[^\n]*\\\n)*[^\n]*", dockerfile)
    assert install and "--require-hashes" in install.group(0)
    bootstrap = (ROOT / "local_test" / "bootstrap.sh").read_text()
    assert re.search(
        r"pip install [^\n]*--require-hashes \\\n\s*-r [^\n]*requirements-dev", bootstrap
    )
    conftest = (ROOT / "tests" / "conftest.py").read_text()
    assert '"--require-hashes", "-r", str(requirements)' in conftest  # venv_python
    for venv, lock in (
        ("NOTEBOOK_VENV", "NOTEBOOK_REQUIREMENTS"),
        ("MXNET_VENV", "MXNET_REQUIREMENTS"),
    ):
        assert f"return venv_python({venv}, {lock}, *flags)" in conftest


def provenance_env(tmp_path: Path) -> tuple[dict[str, str], str]:
    lock = tmp_path / "requirements.txt"
    lock.write_bytes((ROOT / "requirements.txt").read_bytes() + b"# a copy\n")
    env = {
        "SAGE_KMEANS_REVISION": "0123abc",
        "SAGE_KMEANS_VERSION": "v9.8.7",
        "SAGE_KMEANS_CREATED": "2026-01-02T03:04:05Z",
        "SAGE_KMEANS_LOCK": str(lock),
    }
    return env, hashlib.sha256(lock.read_bytes()).hexdigest()


def test_train_records_the_build_identity_and_the_lock_digest(tmp_path: Path) -> None:
    base = tmp_path / "ml"
    shutil.copytree(SAMPLE, base)
    env, lock_sha256 = provenance_env(tmp_path)
    result = run_train(base, **env)
    assert result.returncode == 0, result.stdout + result.stderr
    recorded = json.loads((base / "model" / "model.json").read_text())["image"]
    assert recorded == {
        "revision": "0123abc",
        "version": "v9.8.7",
        "created": "2026-01-02T03:04:05Z",
        "lock_sha256": lock_sha256,
    }

    native = tmp_path / "native"
    shutil.copytree(SAMPLE, native)
    assert run_train(native).returncode == 0
    unknown = json.loads((native / "model" / "model.json").read_text())["image"]
    assert unknown == dict.fromkeys(["revision", "version", "created", "lock_sha256"])


def test_serve_logs_the_build_identity_at_start(
    tmp_path: Path, trained: Path, start_server
) -> None:
    env, lock_sha256 = provenance_env(tmp_path)
    server = start_server(trained, **env)
    identity = "image revision 0123abc, version v9.8.7, created 2026-01-02T03:04:05Z"
    assert f"{identity}, lock sha256 {lock_sha256}\n" in server.output()


def test_a_job_trained_in_the_image_names_its_revision_and_lock(image: str, tmp_path: Path) -> None:
    labels = json.loads(
        docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout
    )
    revision = labels.get("org.opencontainers.image.revision") or None
    if revision is None and os.environ.get("CI") == "true":
        pytest.fail(
            f"{image} has no org.opencontainers.image.revision label: CI builds it with one"
        )
    base = tmp_path / "ml"
    shutil.copytree(SAMPLE, base)
    for folder in ("model", "output"):
        (base / folder).chmod(0o777)
    trained = docker("run", "--rm", "-v", f"{base}:/opt/ml", image, "train", timeout=600)
    assert trained.returncode == 0, trained.stdout + trained.stderr
    recorded = json.loads((base / "model" / "model.json").read_text())["image"]
    assert recorded["revision"] == revision
    assert recorded["version"] == (labels.get("org.opencontainers.image.version") or None)
    assert recorded["created"] == (labels.get("org.opencontainers.image.created") or None)
    lock_sha256 = hashlib.sha256((ROOT / "requirements.txt").read_bytes()).hexdigest()
    assert recorded["lock_sha256"] == lock_sha256, "the image was not built from this lock"
