"""The documentation holds together: every relative link and #anchor in README.md, docs/*.md,
reliability/REPORT.md and bench/RESULTS.md resolves (GitHub's anchor rules), every docs/ page
is reachable from the README, the README's first screen says how to try, deploy and adapt the
image, and every shell block either says why no test runs it or is run here for real: the
README's native run (train, serve, predict.sh, SIGTERM) and the serving page's curl examples
against the real `serve`, their printed answers compared with what the page shows."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, free_port
from markdown_it import MarkdownIt
from markdown_it.token import Token

README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
CHECKED = [README, *DOCS, ROOT / "reliability" / "REPORT.md", ROOT / "bench" / "RESULTS.md"]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->", re.S)
RUN_BY = re.compile(r"run by tests/test_docs\.py::(\w+)$")
FIRST_SCREEN_LINES = 40
README_MAX_LINES = 200

PARSER = MarkdownIt("commonmark").enable("table")


def tokens(path: Path) -> list[Token]:
    return PARSER.parse(path.read_text())


def _heading_text(inline: Token) -> str:
    return "".join(
        child.content for child in inline.children or [] if child.type in ("text", "code_inline")
    )


def anchors(path: Path) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file: lowercase, punctuation
    dropped, spaces to '-', and a repeated anchor suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    parsed = tokens(path)
    for index, token in enumerate(parsed):
        if token.type != "heading_open":
            continue
        slug = re.sub(r"[^\w\- ]", "", _heading_text(parsed[index + 1]).strip().lower())
        slug = slug.replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def links(path: Path) -> list[str]:
    """Every link and image target of a Markdown file."""
    targets = []
    for token in tokens(path):
        for child in token.children or []:
            if child.type == "link_open":
                targets.append(str(child.attrs["href"]))
            elif child.type == "image":
                targets.append(str(child.attrs["src"]))
    return targets


def resolve(source: Path, target: str) -> tuple[Path, str] | None:
    """A relative link as (file, anchor); None for a link to another site."""
    if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("//"):
        return None
    path, _, anchor = target.partition("#")
    return ((source.parent / path).resolve() if path else source), anchor


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(path):
        resolved = resolve(path, target)
        if resolved is None:
            continue
        file, anchor = resolved
        if not file.exists():
            problems.append(f"{target}: no such file {file}")
        elif not file.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            problems.append(f"{target}: no heading gives #{anchor} in {file.relative_to(root)}")
        elif anchor and file.suffix != ".md":
            problems.append(f"{target}: an anchor into a file that is not Markdown")
    return problems


@pytest.mark.parametrize("path", CHECKED, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_the_anchor_rules_are_githubs(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# Several hosts (`InstanceCount` > 1)\n## Log, metrics and artefacts\n"
        "## The /opt/ml tree\n## Limits\n## Limits\n## Limits\n"
    )
    assert anchors(page) == {
        "several-hosts-instancecount--1",
        "log-metrics-and-artefacts",
        "the-optml-tree",
        "limits",
        "limits-1",
        "limits-2",
    }


def test_a_broken_link_or_anchor_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n[fine](other.md#other-page) [here](#top) [web](https://example.com/x#y)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [self](#bottom)\n"
    )
    problems = broken_links(page, root=tmp_path)
    assert len(problems) == 3, problems
    assert [problem.split(":")[0] for problem in problems] == [
        "missing.md",
        "other.md#nowhere",
        "#bottom",
    ]


def test_every_docs_page_is_reachable_from_the_readme() -> None:
    assert DOCS, "docs/ holds no pages"
    reached, queue = {README}, [README]
    while queue:
        page = queue.pop()
        for target in links(page):
            resolved = resolve(page, target)
            file = resolved[0] if resolved else None
            if file and file.suffix == ".md" and file.exists() and file not in reached:
                reached.add(file)
                queue.append(file)
    unreached = [str(page.relative_to(ROOT)) for page in DOCS if page not in reached]
    assert unreached == []


def test_the_readme_is_short_and_its_first_screen_says_how_to_try_deploy_and_adapt() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES
    first_screen = "\n".join(lines[:FIRST_SCREEN_LINES])
    for needed in ("make demo", "make test", "build_and_push.sh", "bring-your-own-model.md"):
        assert needed in first_screen, f"{needed!r} is not in the README's first screen"


# -- shell blocks -----------------------------------------------------------------------


@dataclass
class ShellBlock:
    path: Path
    line: int  # 1-based, of the opening fence
    code: str
    marker: str | None

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def shell_blocks(path: Path) -> list[ShellBlock]:
    """Each fenced shell block, with the docs-test note in the HTML comment just before it."""
    found = []
    parsed = tokens(path)
    for index, token in enumerate(parsed):
        if token.type != "fence" or (token.info.split() or [""])[0] not in SHELL_LANGUAGES:
            continue
        before = parsed[index - 1] if index else None
        note = MARKER.search(before.content) if before and before.type == "html_block" else None
        marker = " ".join(note.group(1).split()) if note else None
        found.append(ShellBlock(path, token.map[0] + 1, token.content, marker))
    return found


ALL_BLOCKS = [block for path in (README, *DOCS) for block in shell_blocks(path)]


def block_run_by(test_name: str) -> ShellBlock:
    matching = [
        block
        for block in ALL_BLOCKS
        if block.marker
        and RUN_BY.match(block.marker)
        and RUN_BY.match(block.marker)[1] == test_name
    ]
    assert len(matching) == 1, f"{len(matching)} blocks say they are run by {test_name}"
    return matching[0]


def test_every_shell_block_is_run_by_a_test_or_says_why_not() -> None:
    assert ALL_BLOCKS, "no shell blocks found"
    problems = []
    for block in ALL_BLOCKS:
        if block.marker is None:
            problems.append(f"{block}: no <!-- docs-test: ... --> note before the block")
        elif run := RUN_BY.match(block.marker):
            if not callable(globals().get(run[1])) or not run[1].startswith("test_"):
                problems.append(f"{block}: names {run[1]}, which is no test in this file")
        elif not re.match(r"not run by a test: \S.{10,}", block.marker):
            problems.append(f"{block}: the note must say 'run by ...' or 'not run by a test: why'")
    assert problems == []


def run_script(script: str, cwd: Path, env: dict[str, str], timeout: float = 180):
    """bash running `script` in its own process group, which is stopped whatever happens."""
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever the script left running
        process.wait()
    return process.returncode, out, err


def doors_env(port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGEMAKER_", "SAGE_KMEANS_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SAGEMAKER_BIND_TO_PORT"] = str(port)
    return env


def test_running_natively(tmp_path: Path) -> None:
    """The README's native run, as written, in a copy of the checkout (kmeans/, the sample,
    predict.sh, payload.csv), so the sample's model folder stays untouched: the only
    changes are a free loopback port for 8080, a wait for /ping after the line that starts
    `serve` in the background (a person types the next line later), and a final `wait` to
    read serve's exit status after the `kill %1` the block ends with."""
    block = block_run_by("test_running_natively")
    port = free_port()
    shutil.copytree(ROOT / "local_test" / "test_dir", tmp_path / "local_test" / "test_dir")
    shutil.copytree(
        ROOT / "kmeans", tmp_path / "kmeans", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("predict.sh", "payload.csv"):
        shutil.copy2(ROOT / name, tmp_path / name)
    wait_for_ping = (
        f"for _ in $(seq 1200); do curl -fsS -o /dev/null http://127.0.0.1:{port}/ping"
        " 2>/dev/null && break; kill -0 %1 || break; sleep 0.1; done"
    )
    lines = []
    for line in block.code.replace("127.0.0.1:8080", f"127.0.0.1:{port}").splitlines():
        lines.append(line)
        if line.split("#")[0].rstrip().endswith("&"):
            lines.append(wait_for_ping)
    lines.append('wait %1; echo "docs-test: serve exited with $?"')
    status, out, err = run_script("\n".join(lines), tmp_path, doors_env(port))
    assert status == 0, out + err
    answers = [line for line in out.splitlines() if re.fullmatch(r"\d+,[0-9.e+-]+", line)]
    rows = (ROOT / "payload.csv").read_text().splitlines()
    assert len(answers) == len(rows), out + err
    assert "docs-test: serve exited with 0" in out, out + err
    assert (tmp_path / "local_test" / "test_dir" / "model" / "model.npz").exists()


def commands_and_answers(code: str) -> list[tuple[str, list[str], bool]]:
    """A block's commands (continuation lines joined), each with the `# ` lines after it:
    the answer shown, and whether '...' says more lines follow."""
    found: list[tuple[str, list[str], bool]] = []
    command: list[str] = []
    for line in code.splitlines():
        if line.startswith("# ") and found and not command:
            shown, more, _ = line[2:].partition("   ...")
            found[-1][1].append(shown.rstrip())
            if more:
                found[-1] = (found[-1][0], found[-1][1], True)
        elif line.strip():
            command.append(line)
            if not line.endswith("\\"):
                found.append(("\n".join(command), [], False))
                command = []
    return found


def test_serving_examples(trained: Path, start_server) -> None:
    """Each curl example of docs/serving.md sent to the real `serve` on the trained sample;
    its output must begin with the lines the page shows (all of them, unless it says '...')."""
    block = block_run_by("test_serving_examples")
    server = start_server(trained)
    examples = commands_and_answers(block.code)
    assert examples and all(shown for _, shown, _ in examples), block.code
    for command, shown, more in examples:
        script = command.replace("http://127.0.0.1:8080", server.url)
        status, out, err = run_script(script, ROOT, doors_env(server.port), timeout=60)
        assert status == 0, f"{command}\n{err}"
        got = out.splitlines()
        if more:
            assert got[: len(shown)] == shown and len(got) > len(shown), f"{command}\n{out}"
        else:
            assert got == shown, f"{command}\n{out}"
