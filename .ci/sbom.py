"""A CycloneDX 1.6 JSON bill of materials of a built image, read from its files.

    docker export CONTAINER | python3 .ci/sbom.py --arch amd64 --revision REV > sbom.json

Components: every Python package in the image's venv (name and version from its
.dist-info, the wheel's file name and sha256 from pip's install report that the Dockerfile
keeps, /opt/venv/pip-install-report.json) and every Debian package dpkg lists as installed
(version, architecture, source package). Read from the exported filesystem, so an arm64
image needs no emulation. Prints the package counts on stderr; fails on a Python package
without a recorded hash, or a BOM the CycloneDX schema rejects (when cyclonedx-python-lib is
installed: requirements-supply.txt).
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import json
import re
import sys
import tarfile
import uuid
from datetime import UTC, datetime
from typing import Any, BinaryIO

SITE_PACKAGES = re.compile(r"^opt/venv/lib/python3\.\d+/site-packages/([^/]+)\.dist-info/METADATA$")
REPORT = "opt/venv/pip-install-report.json"
LOCK = "opt/venv/requirements.txt"
DPKG_STATUS = "var/lib/dpkg/status"
OS_RELEASE = ("etc/os-release", "usr/lib/os-release")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_image(stream: BinaryIO) -> dict[str, Any]:
    """The few files of the image the BOM is made from, in one pass over the archive."""
    found: dict[str, Any] = {"metadata": [], "status": "", "report": None, "lock": b"", "os": ""}
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for entry in archive:
            path = entry.name.lstrip("./")
            if not entry.isfile():
                continue
            if SITE_PACKAGES.match(path):
                found["metadata"].append(archive.extractfile(entry).read().decode())
            elif path == DPKG_STATUS:
                found["status"] = archive.extractfile(entry).read().decode()
            elif path == REPORT:
                found["report"] = json.loads(archive.extractfile(entry).read())
            elif path == LOCK:
                found["lock"] = archive.extractfile(entry).read()
            elif path in OS_RELEASE and not found["os"]:
                found["os"] = archive.extractfile(entry).read().decode()
    return found


def python_components(metadata: list[str], report: dict | None) -> list[dict[str, Any]]:
    wheels = {}
    for item in (report or {}).get("install", []):
        info = item["download_info"]
        name = normalise(item["metadata"]["name"])
        wheels[name] = (info["url"], info["archive_info"]["hashes"]["sha256"])
    components = []
    for text in metadata:
        headers = email.parser.Parser().parsestr(text, headersonly=True)
        name, version = headers["Name"], headers["Version"]
        purl = f"pkg:pypi/{normalise(name)}@{version}"
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
            "purl": purl,
        }
        if headers.get("License-Expression"):
            component["licenses"] = [{"expression": headers["License-Expression"]}]
        wheel = wheels.get(normalise(name))
        if wheel:
            url, sha256 = wheel
            component["hashes"] = [{"alg": "SHA-256", "content": sha256}]
            component["externalReferences"] = [{"type": "distribution", "url": url}]
        else:  # pip and setuptools: the venv's own, from Debian's wheels (python3-venv)
            component["properties"] = [{"name": "sage-kmeans:installed-by", "value": "ensurepip"}]
        components.append(component)
    return sorted(components, key=lambda component: component["bom-ref"])


def debian_components(status: str, distro: str) -> list[dict[str, Any]]:
    components = []
    for paragraph in status.strip().split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", paragraph, re.M))
        if not fields.get("Status", "").endswith(" installed"):
            continue
        name, version, arch = fields["Package"], fields["Version"], fields["Architecture"]
        purl = f"pkg:deb/debian/{name}@{version}?arch={arch}"
        if distro:
            purl += f"&distro={distro}"
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": purl,
            "name": name,
            "version": version,
            "purl": purl,
        }
        if fields.get("Source"):
            component["properties"] = [
                {"name": "debian:source", "value": fields["Source"].split(" ")[0]}
            ]
        components.append(component)
    return sorted(components, key=lambda component: component["bom-ref"])


def bom(image: dict[str, Any], arch: str, revision: str, name: str) -> dict[str, Any]:
    release = dict(re.findall(r'^([A-Z_]+)="?([^"\n]*)"?$', image["os"], re.M))
    distro = f"debian-{release['VERSION_ID']}" if release.get("VERSION_ID") else ""
    python = python_components(image["metadata"], image["report"])
    debian = debian_components(image["status"], distro)
    properties = [{"name": "sage-kmeans:architecture", "value": arch}]
    if image["lock"]:
        lock_sha256 = hashlib.sha256(image["lock"]).hexdigest()
        properties.append({"name": "sage-kmeans:lock-sha256", "value": lock_sha256})
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.6",
        "serialNumber": f"urn:uuid:{uuid.uuid4()}",
        "version": 1,
        "metadata": {
            "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "tools": {"components": [{"type": "application", "name": "sage-kmeans .ci/sbom.py"}]},
            "component": {
                "type": "container",
                "bom-ref": "image",
                "name": name,
                "version": revision or "unknown",
                "properties": properties,
            },
        },
        "components": python + debian,
    }


def validation_problem(text: str) -> str | None:
    """What the CycloneDX 1.6 JSON schema says is wrong (None: valid, or no validator)."""
    try:
        from cyclonedx.schema import SchemaVersion
        from cyclonedx.validation.json import JsonStrictValidator
    except ImportError:
        return None
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return str(error) if error else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, help="the image's architecture: amd64, arm64")
    parser.add_argument("--revision", default="", help="the git revision the image was built from")
    parser.add_argument("--name", default="sage-kmeans", help="the image's name")
    args = parser.parse_args()
    image = read_image(sys.stdin.buffer)
    if not image["metadata"] or not image["status"]:
        print("sbom.py: no venv packages or no dpkg status in the archive", file=sys.stderr)
        return 1
    document = bom(image, args.arch, args.revision, args.name)
    text = json.dumps(document, indent=2) + "\n"
    problem = validation_problem(text)
    if problem:
        print(f"sbom.py: the BOM fails the CycloneDX 1.6 schema: {problem}", file=sys.stderr)
        return 1
    python = [c for c in document["components"] if c["purl"].startswith("pkg:pypi/")]
    lock = image["lock"].decode()
    locked = {normalise(name) for name in re.findall(r"^([A-Za-z0-9][\w.-]*)==", lock, re.M)}
    unhashed = [c["name"] for c in python if "hashes" not in c and normalise(c["name"]) in locked]
    missing = sorted(locked - {normalise(c["name"]) for c in python})
    debian = len(document["components"]) - len(python)
    hashed = sum("hashes" in component for component in python)
    print(
        f"sbom.py: {args.arch}: {len(python)} Python packages ({hashed} with the installed"
        f" wheel's sha256, {len(locked)} locked), {debian} Debian packages",
        file=sys.stderr,
    )
    if missing:
        print(f"sbom.py: locked but not in the venv: {', '.join(missing)}", file=sys.stderr)
        return 1
    if unhashed:
        print(f"sbom.py: no install record (hash) for {', '.join(unhashed)}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
