"""reliability/REPORT.md from what reliability/run.py gathered: one section per theme of
the suite, each figure as the tests measured it, and the hand-written findings kept from
the previous report (below the FINDINGS marker).
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

from bench.report import table

FINDINGS = "<!-- FINDINGS: hand-written below this line; reliability/run.py keeps it -->"


def _short(line: str) -> str:
    """A log line without the test's temporary folders."""
    return re.sub(r"/\S*/(model|checkpoints)/", r"…/\1/", line).replace("|", "\\|")


def _by_name(figures: list[dict]) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = defaultdict(list)
    for figure in figures:
        found[figure["name"]].append(figure)
    return found


def _one(found: dict, name: str) -> dict:
    return found[name][-1] if found.get(name) else {}


def errors_section(found: dict) -> list[str]:
    out = ["## 1. Every error is one line of JSON", ""]
    out += [
        "Raw requests over loopback sockets to the real stack (nginx → gunicorn → Flask); "
        "each answer checked for its status, `Content-Type: application/json` and a body "
        'that is exactly `{"error": "<one line>"}`. The last two reach gunicorn (nginx '
        "lets control bytes through) and get its answer, now JSON too.",
        "",
    ]
    rows = [[f["case"], f["status"], f["error"][:90]] for f in found.get("refusal", [])]
    out += table(["request", "status", "error"], rows)
    slow = found.get("slow_client", [])
    if slow:
        parts = ", ".join(f"{f['part']} after {f['seconds_to_close']} s" for f in slow)
        out += [
            f"A client that stops sending is disconnected without an answer ({parts}): "
            "nginx never sends its 408 page, so no HTML can leak that way either.",
            "",
        ]
    bomb = _one(found, "bomb")
    if bomb:
        out += [
            "Compressed bodies: gzip, x-gzip, deflate (zlib and raw), two gzip members and "
            "`gzip, identity` answer byte for byte as the plain body; `br` and `compress` "
            "get 415 naming them; damaged or truncated gzip gets 400. A "
            f"{bomb['compressed_mb']:.1f} MB gzip body that inflates to "
            f"{bomb['inflated_mb']} MB gets 413 once the limit (6 MB) is passed: the worker's "
            f"peak memory grew by {bomb['worker_peak_growth_mb']} MB.",
            "",
        ]
    return out


def timeouts_section(found: dict, options: dict) -> list[str]:
    out = ["## 2. Timeouts that free workers", ""]
    timeout, stuck, abandoned = (
        _one(found, name) for name in ("timeout", "timeout_c_code", "sigterm_abandoned")
    )
    if timeout:
        out += [
            f"- {timeout['slow_requests']} requests to a user's estimator (model.joblib) whose "
            f"transform sleeps a minute, on {timeout['workers']} workers with "
            f"SAGEMAKER_MODEL_SERVER_TIMEOUT={timeout['timeout_s']}: all got 504 JSON at "
            f"{timeout['timeout_s']} s; {timeout['freed_after_504_s']} s after the 504s a "
            f"request was answered again; the {timeout['skipped']} that had waited in the "
            "queue were dropped unworked (their client had gone); 20 requests after: all 200.",
        ]
    if stuck:
        out += [
            f"- A transform stuck in C code (no signal handler runs): the master's SIGKILL "
            f"freed the worker, answering again {stuck['freed_after_504_s']} s after the 504.",
        ]
    if abandoned:
        out += [
            f"- SIGTERM with {abandoned['abandoned_requests']} abandoned requests still "
            f"computing (clients gone; default 60 s timeout): exit 0 in {abandoned['seconds']} s.",
        ]
    out += ["", "### Sync against gthread workers", ""]
    throughput = options["throughput"]
    out += [
        "The same stack with gunicorn's gthread workers (1 thread, nginx keeping connections "
        "to gunicorn alive: what `serve` used before) against sync workers (what it uses now). "
        f"One-record CSV requests, wrk, {options['seconds']} s a run, {options['repeats']} "
        "repeats interleaved, medians; CPU is the user and system time of every process of "
        "the stack per request. Then a transform that sleeps 30 s with a 3 s timeout.",
        "",
    ]
    rows = []
    for connections, figures in throughput.items():
        rows.append(
            [
                f"requests/s, {connections} connection(s)",
                figures["sync_rps"],
                figures["gthread_rps"],
                f"{figures['rps_ratio']:.2f}",
            ]
        )
        rows.append(
            [
                f"CPU ms a request, {connections} connection(s)",
                figures["sync_cpu_ms"],
                figures["gthread_cpu_ms"],
                f"{figures['cpu_ratio']:.2f}",
            ]
        )
    sync, gthread = options["sync"], options["gthread"]
    hol = [sync["head_of_line"], gthread["head_of_line"]]
    rows.append(
        ["one slow request running: small ones answered"]
        + [f"{h['answered']} of {h['sent']} (slowest {h['slowest_s']:.2f} s)" for h in hol]
        + ["—"]
    )
    rows.append(
        ["worker answering again, s after the 504", sync["freed_s"], gthread["freed_s"], "—"]
    )
    rows.append(
        ["SIGTERM with the slow work abandoned: s to exit (code)"]
        + [f"{o['sigterm_s']:.1f} ({o['sigterm_code']})" for o in (sync, gthread)]
        + ["—"]
    )
    out += table(["", "sync", "gthread", "sync ÷ gthread"], rows)
    spread = {c: ", ".join(f"{r:.2f}" for r in f["rps_ratios"]) for c, f in throughput.items()}
    out += [
        "Per-repeat requests/s ratios, to show the noise: "
        + "; ".join(f"{c} connection(s): {s}" for c, s in spread.items())
        + ".",
        "",
    ]
    return out


def model_section(found: dict) -> list[str]:
    out = ["## 3. Pickle-free serving", ""]
    same = found.get("identical_answers", [])
    if same:
        out += [
            "model.npz against the same model as earlier versions wrote it (model.joblib and "
            "model.json only), served side by side: byte-identical answers in "
            + ", ".join(f"{f['comparisons']} requests ({f['model']})" for f in same)
            + " — every format, Accept JSON and CSV, 1, 150 and 20,000 records.",
            "",
        ]
    rows = [[f["case"], f["exit_code"], _short(f["line"])] for f in found.get("damaged_model", [])]
    out += ["A damaged or foreign model file stops `serve` with one line and exit code 3:", ""]
    out += table(["model folder", "exit", "the line"], rows)
    return out


def faults_section(found: dict) -> list[str]:
    out = ["## 4. Faults", ""]
    killed, nginx, sigterm = (
        _one(found, n) for n in ("worker_killed", "nginx_killed", "sigterm_under_load")
    )
    rows = []
    if killed:
        rows.append(
            [
                "a worker SIGKILLed under load (6 clients)",
                f"{killed['requests']} requests, {killed['failed']} failed (a 502 JSON: the "
                "one the worker held; at most 1 allowed)",
            ]
        )
    if nginx:
        rows.append(
            [
                "nginx SIGKILLed under load",
                f"serve exited {nginx['exit_code']} after {nginx['seconds_to_exit']} s; no "
                "process of the stack left",
            ]
        )
    if sigterm:
        rows.append(
            [
                "SIGTERM under load (4 clients, a new connection each request; one 3 s request "
                "in flight)",
                f"{sigterm['answered']} answered, all 200 (nginx's log agrees); "
                f"{sigterm['refused']} refused at connect and {sigterm['closed_before_read']} "
                f"closed before nginx read them; the 3 s request answered 200; exit 0 in "
                f"{sigterm['seconds_to_exit']} s",
            ]
        )
    for figure in found.get("disk_full_model", []):
        rows.append(
            [
                f"disk full, {figure['free_pages']} free 4 KB pages for the model",
                f"train failed writing {figure['failing']}; {figure['left']} files left in "
                "the model folder",
            ]
        )
    checkpoint = _one(found, "disk_full_checkpoint")
    if checkpoint:
        rows.append(
            [
                "disk full while writing a checkpoint",
                f"train failed with one line; the previous checkpoint ({checkpoint['kept_bytes']} "
                "bytes) kept whole; no model written",
            ]
        )
    return out + table(["fault", "outcome"], rows)


def large_bodies_section(found: dict) -> list[str]:
    """tests/test_large_bodies.py: each large body's worker peak, with the async settings."""
    out = [
        "## 7. Large bodies",
        "",
        "Asynchronous inference's settings (SAGEMAKER_MAX_PAYLOAD_IN_MB=1024, "
        "SAGEMAKER_MODEL_SERVER_TIMEOUT=900), 4-feature rows, a CSV answer checked byte for "
        "byte against small requests of the same rows (their time is in the seconds).",
        "",
    ]
    rows = [
        [
            figure["content_type"] + (f" ({figure['coding']})" if figure.get("coding") else ""),
            figure["mb"],
            figure["worker_peak_mb"],
            figure["seconds"],
        ]
        for figure in found.get("large body", [])
    ]
    out += table(["body", "MB", "worker peak MB", "seconds"], rows)
    together = _one(found, "large bodies at once")
    if together:
        peaks = " and ".join(f"{peak} MB" for peak in together["worker_peaks_mb"])
        out += [
            f"Two 1 GB bodies at once on 2 workers: both answered; workers peaked at {peaks}.",
            "",
        ]
    return out


def fuzz_section(found: dict) -> list[str]:
    out = ["## 5. Fuzzing", ""]
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for figure in found.get("fuzz", []):
        counts[figure["target"]][figure["outcome"]] = figure["examples"]
    http = {t: c for t, c in counts.items() if t.startswith("http ")}
    rows = [
        [target, sum(outcomes.values()), ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items()))]
        for target, outcomes in sorted(counts.items())
        if target not in http
    ]
    out += [
        "Hypothesis (random examples): every decoder with bodies of every format (valid, "
        "nearly valid, damaged, random bytes) under matching and foreign Content-Types; "
        "Content-Type and Accept parsing; the gzip/deflate inflater; and the Flask app with "
        "all of it plus Accept, Content-Encoding and custom attributes. Any exception other "
        "than the refusals, or any 5xx, fails the test: 0 of either.",
        "",
    ]
    out += table(["target", "examples", "outcomes"], rows)
    rows = [
        [target.removeprefix("http "), ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))]
        for target, outcomes in sorted(http.items())
    ]
    total = sum(sum(c.values()) for c in http.values())
    out += [
        f"Schemathesis against openapi.yaml on a running single-model server (its operations) "
        f"and a multi-model one (the /models API, with a model loaded under a known name that "
        f"some cases aim at): {total} requests, every check passed (no 5xx but a load's 507 "
        "over the memory budget, statuses, content types, headers and bodies as documented, "
        "undeclared methods refused with 405 and Allow, schema-violating requests refused), "
        "except that a schema-valid request may carry the wrong number of features for the "
        "model, or name a model or folder that does not exist (a 400 or 404 the description "
        "cannot predict), which is not counted as a failure.",
        "",
    ]
    return out + table(["operation", "statuses"], rows)


def soak_section(found: dict) -> list[str]:
    soak = _one(found, "soak")
    if not soak:
        return ["## 6. Soak", "", "Not run.", ""]
    out = ["## 6. Soak", ""]
    out += [
        f"{soak['seconds']:.0f} s of mixed traffic from 4 keep-alive clients: CSV, CSV "
        "gzipped, JSON (three shapes), JSON Lines (two), NPY and RecordIO bodies of 1, 100, "
        "5,000 and 20,000 records, Accept rotating over JSON, CSV, JSON Lines and `*/*`. "
        f"{soak['requests']:,} requests, {soak['records']:,} records, "
        f"{soak['bytes'] / 2**20:,.0f} MB sent; {soak['errors']} errors (a non-200 or a wrong "
        f"record count). RSS of every process of the stack, sampled every 5 s after "
        f"{soak['warm_up_s']:.0f} s of warm-up; first and last are the medians of the first "
        "and last fifth of the samples (a sample may catch a large body in flight):",
        "",
    ]
    rows = [
        [p["process"], p["first_mb"], p["last_mb"], p["growth_mb"], p["range_mb"]]
        for p in soak["processes"]
    ]
    return out + table(
        ["process", "first MB", "last MB", "growth MB (last - first)", "range MB (max - min)"], rows
    )


def render(
    conditions: list[str],
    summary: str,
    figures: list[dict],
    options: dict,
    args: argparse.Namespace,
    old: str,
) -> str:
    found = _by_name(figures)
    out = ["# Reliability report", "", "Written by `reliability/run.py` (`make reliability`).", ""]
    out += [
        *conditions,
        f"- Soak {args.soak_seconds} s; {args.fuzz_examples} hypothesis examples per property.",
        "",
        "pytest (tests/test_reliability.py, test_model_files.py, test_fuzz.py, "
        "test_large_bodies.py, long tests on):",
        "",
        "```",
        summary,
        "```",
        "",
    ]
    out += errors_section(found) + timeouts_section(found, options) + model_section(found)
    out += faults_section(found) + fuzz_section(found) + soak_section(found)
    out += large_bodies_section(found)
    default = f"{FINDINGS}\n\n## Findings\n\n(none yet)\n"
    return "\n".join(out) + "\n" + (old[old.index(FINDINGS) :] if FINDINGS in old else default)
