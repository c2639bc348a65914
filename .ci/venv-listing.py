"""List every file of an image's venv with its sha256, from `docker export` on stdin.

    docker export CONTAINER | python3 .ci/venv-listing.py [PREFIX]   (default opt/venv/)

One line per entry, sorted: sha256 (of the content; of the target for a symlink), mode,
path. Two builds of one commit that install the same bytes print the same lines; the
digest of the listing (its sha256) goes to stderr.
"""

from __future__ import annotations

import hashlib
import sys
import tarfile


def listing(stream, prefix: str) -> list[str]:
    lines = []
    with tarfile.open(fileobj=stream, mode="r|") as archive:
        for entry in archive:
            path = entry.name.lstrip("./")
            if not path.startswith(prefix):
                continue
            if entry.isfile():
                digest = hashlib.sha256(archive.extractfile(entry).read()).hexdigest()
            elif entry.issym() or entry.islnk():
                digest = "-> " + entry.linkname
            else:
                continue  # directories: their files are listed
            lines.append(f"{digest} {entry.mode:04o} {path}")
    return sorted(lines, key=lambda line: line.rsplit(" ", 1)[-1])


def main() -> int:
    prefix = sys.argv[1] if len(sys.argv) > 1 else "opt/venv/"
    lines = listing(sys.stdin.buffer, prefix)
    if not lines:
        print(f"venv-listing.py: no file under {prefix} in the archive", file=sys.stderr)
        return 1
    text = "".join(line + "\n" for line in lines)
    sys.stdout.write(text)
    digest = hashlib.sha256(text.encode()).hexdigest()
    print(f"venv-listing.py: {len(lines)} files under {prefix}, digest {digest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
