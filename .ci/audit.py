"""Audit the locked Python packages (and, given an image, its Debian packages) against what
is known of them, with the advisory data that can be reached from here.

    python .ci/audit.py [--image IMAGE] LOCK...      (run with requirements-supply.txt's venv)

1. pip-audit, with its default service (PyPI's per-release JSON, whose "vulnerabilities"
   field is the advisory database PyPI publishes) and then with OSV (api.osv.dev). A package
   that a service could not look up counts as not audited, never as clean.
2. When pip-audit could not audit every package, what PyPI's project JSON still tells:
   each pinned version exists and is not yanked, every sha256 in the lock is one PyPI lists
   for it, and, for a package pinned at its latest release, PyPI's "vulnerabilities" field
   (which describes that latest release only).
3. With --image: `apt-get update` and `apt list --upgradable` in the image: a Debian package
   with a newer version in bookworm-security or bookworm-updates is a fix the image lacks.
Fails on a known vulnerability, a yanked pin, a hash PyPI does not list, or a pending Debian
security update; says plainly what could not be checked.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][\w.-]*)==(\S+)((?:\s*\\\s*--hash=sha256:[0-9a-f]{64})*)", re.M)


def pins(lock: Path) -> dict[str, tuple[str, set[str]]]:
    return {
        name.lower(): (version, set(re.findall(r"sha256:([0-9a-f]{64})", hashes)))
        for name, version, hashes in PIN.findall(lock.read_text())
    }


def pip_audit(lock: Path, service: str) -> tuple[dict[str, list[str]], list[str], str, str]:
    """(vulnerabilities by package, packages not audited, why one was not, problem running it)
    for one service."""
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--disable-pip",
        "--no-deps",
        "--progress-spinner",
    ]
    command += ["off", "--format", "json", "--vulnerability-service", service, "-r", str(lock)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {}, sorted(pins(lock)), "", last[:300]
    found, skipped, reason = {}, [], ""
    for dependency in report.get("dependencies", []):
        if "skip_reason" in dependency:
            skipped.append(dependency["name"])
            reason = reason or dependency["skip_reason"]
        elif dependency.get("vulns"):
            found[dependency["name"]] = [vuln["id"] for vuln in dependency["vulns"]]
    return found, skipped, reason, ""


def pypi_project(name: str) -> dict | None:
    url = f"https://pypi.org/pypi/{name}/json"
    try:
        with urllib.request.urlopen(url, timeout=60) as answer:
            return json.load(answer)
    except (OSError, urllib.error.URLError, json.JSONDecodeError):
        return None


def pypi_checks(lock: Path) -> tuple[list[str], int, int]:
    """(problems, packages at their latest release, packages PyPI could not be asked about)."""
    problems, latest, unreachable = [], 0, 0
    for name, (version, hashes) in sorted(pins(lock).items()):
        project = pypi_project(name)
        if project is None:
            unreachable += 1
            continue
        files = project.get("releases", {}).get(version)
        if not files:
            problems.append(f"{name}=={version}: no such release on PyPI")
            continue
        listed = {file["digests"]["sha256"] for file in files}
        if hashes - listed:
            problems.append(
                f"{name}=={version}: {len(hashes - listed)} hash(es) PyPI does not list"
            )
        yanked = [file["filename"] for file in files if file.get("yanked")]
        if yanked and len(yanked) == len(files):
            reason = files[0].get("yanked_reason") or "no reason given"
            problems.append(f"{name}=={version}: yanked ({reason})")
        if project["info"]["version"] == version:
            latest += 1
            for vuln in project.get("vulnerabilities") or []:
                if not vuln.get("withdrawn"):
                    problems.append(f"{name}=={version}: {vuln['id']} {vuln.get('summary') or ''}")
    return problems, latest, unreachable


def debian_updates(image: str) -> tuple[list[str], str]:
    """(packages with a pending update from bookworm-security or -updates, problem)."""
    script = "apt-get update -qq >/dev/null && apt list --upgradable 2>/dev/null | tail -n +2"
    command = ["docker", "run", "--rm", "--network", "host", "--user", "root"]
    command += ["--entrypoint", "sh", image, "-c", script]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    if done.returncode != 0:
        return [], (done.stderr.strip().splitlines() or ["apt-get update failed"])[-1][:300]
    return [line for line in done.stdout.splitlines() if "/" in line], ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("locks", nargs="+", type=Path)
    parser.add_argument("--image", help="a built image whose Debian packages to check")
    args = parser.parse_args()
    failed = False
    for lock in args.locks:
        count = len(pins(lock))
        not_audited: set[str] | None = None
        for service in ("pypi", "osv"):
            found, skipped, reason, problem = pip_audit(lock, service)
            if problem:
                print(f"audit: {lock}: pip-audit -s {service} could not run: {problem}")
                continue
            for name, ids in found.items():
                print(f"audit: {lock}: {name}: known vulnerabilities {', '.join(ids)}")
                failed = True
            audited = count - len(skipped)
            print(f"audit: {lock}: pip-audit -s {service}: {audited} of {count} packages audited,")
            print(f"       {sum(len(ids) for ids in found.values())} known vulnerabilities")
            if skipped:
                print(f"       not audited: {len(skipped)}, e.g. {reason}")
            not_audited = set(skipped) if not_audited is None else not_audited & set(skipped)
        if not_audited is None or not_audited:
            print(f"audit: {lock}: advisory data not reachable for every package; PyPI's project")
            print(
                "       JSON instead (releases, hashes, yanked, latest release's vulnerabilities)"
            )
            problems, latest, unreachable = pypi_checks(lock)
            for problem in problems:
                print(f"audit: {lock}: {problem}")
            failed = failed or bool(problems)
            print(
                f"audit: {lock}: {count - unreachable} of {count} pins checked against PyPI:"
                f" {len(problems)} problems; {latest} at their latest release, whose"
                f" vulnerabilities field lists nothing open"
                if not problems
                else f"audit: {lock}: {len(problems)} problems"
            )
            if unreachable:
                print(f"audit: {lock}: PyPI's JSON not reachable for {unreachable} packages")
                failed = True
    if args.image:
        updates, problem = debian_updates(args.image)
        if problem:
            print(f"audit: {args.image}: Debian packages not checked: {problem}")
            failed = True
        else:
            print(f"audit: {args.image}: {len(updates)} Debian packages with a pending update")
            for line in updates:
                print(f"audit: {args.image}:   {line}")
            failed = failed or any("-security" in line for line in updates)
    print(f"audit: {'FAILED' if failed else 'passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
