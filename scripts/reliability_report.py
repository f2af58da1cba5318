#!/usr/bin/env python
"""Run the reliability scenarios (tests/reliability) and write RELIABILITY.md from their figures.

Each test appends the numbers it measured (requests, executions, 5xx answers, recovery and
blocked times, ...) as JSON lines to the file named by ``RELIABILITY_FIGURES``; pytest's JUnit
XML gives each test's outcome and duration. This script runs pytest once with both, then
writes one table row per test, the bugs the suite pins down (strict xfails, with reasons),
and the command that reproduces each row.

    python scripts/reliability_report.py                  # run everything, write RELIABILITY.md
    python scripts/reliability_report.py -k exactly_once  # extra arguments go to pytest
    python scripts/reliability_report.py --output /tmp/R.md

Exit status: pytest's. Everything runs on 127.0.0.1 (the suite starts its own redis-server,
uvicorn and gunicorn processes and kills them at teardown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
#: What the report runs, and what each part covers (a row each in "What the suites cover").
SUITES = [
    (
        "tests/reliability",
        "Fault, load and hostile-input scenarios with real servers (the table below), plus "
        "os.fork and gunicorn --preload (item 5) and a paused Redis around a renewal (item 2)",
    ),
    (
        "tests/persistence/test_differential_faults.py",
        "Differential fault injection: the lean Redis connections and redis-py through the same "
        "loopback proxy faults (delay, stall, reset, half-close, split, drop and duplicated "
        "replies); no caller may ever get a reply that is not its own, failures typed and bounded",
    ),
    (
        "tests/persistence/test_resp.py",
        "Signal-handler interruptions (custom exception, KeyboardInterrupt, bare BaseException) "
        "in the middle of a blocking command and of the handshake (item 1), reconnects (item 8)",
    ),
    (
        "tests/core/test_protocol_model.py",
        "Model-based (hypothesis state machine): several executions of a key interleaving claim, "
        "renew (ok, failing, late), crash, complete, release and lease expiry against a "
        "reference model; at most one holder, exact replays, stale owners never write",
    ),
    (
        "tests/e2e/test_server_matrix.py",
        "Server matrix: uvicorn, gunicorn, Hypercorn (asyncio and trio), Granian, Daphne, "
        "Waitress, uWSGI, Django ASGI and WSGI; first, replay, 409, 422, stream, hang-ups, "
        "exactly once with 2 workers",
    ),
    (
        "tests/review",
        "Regressions of the second adversarial review (R1-R11): pending completions outliving "
        "their loop and process, renewals in flight at a release, a blocked event loop, settle "
        "failures, WSGI header copies, trailers, bounded drains, fork while a lock is held",
    ),
    (
        "tests/review_final",
        "Regressions of the review of those fixes: one environ spelling on both WSGI paths, "
        "a renewer thread that survives its lease events, backstop events off the renewer",
    ),
    (
        "tests/review_perf",
        "Regressions of the review of the speed work (P1-P4): a settling write whose store "
        "enters asyncio.timeout, an anyio cancel scope or a context token stays in one task; "
        "a duck-typed layer whose claim returns its record still wins it; a settle task "
        "cancelled before its first step still hands its record to the lease",
    ),
    (
        "tests/e2e/test_retrying_client.py",
        "A urllib3 Retry client on POST with fixed keys through a proxy that cuts, drops and "
        "aborts responses: executions equal logical operations",
    ),
]
PYTEST_TIMEOUT = 900  # seconds; the suite itself takes about two to three minutes

SCENARIOS = [
    ("exactly-once", "1. Exactly once under load (examples, 4 worker processes)"),
    ("exactly-once-in-flight", "1b. Duplicates that meet the claim in flight (/slow)"),
    ("crash", "2. Worker SIGKILLed inside a slow handler (lease 2 s)"),
    ("lease-loss", "3. Lease lost (renewal off): stale owner fenced"),
    ("redis-outage", "4. Redis killed under load, restarted on the same port"),
    ("slow-redis-latency", "5a. Slow Redis: +50 ms each way"),
    ("slow-redis-stall", "5b. Stalled Redis (blackholed): 503 within socket_timeout"),
    ("disconnect", "6. Client disconnects mid-request"),
    ("failure-after-response", "6b. Failures after the response was sent"),
    ("hostile-input", "7. Hostile input (hypothesis, in process)"),
    ("security-tenants", "8a. Tenant isolation (scope hook)"),
    ("security-cookies", "8b. Set-Cookie never replayed by default"),
    ("security-corrupt-record", "8c. Corrupt records in Redis"),
    ("security-grep", "8d. No pickle / eval( / exec( in the package"),
    ("event-loops", "Redis layer on asyncio and uvloop"),
]

#: Figures shown in their own columns; everything else goes to "other figures".
COLUMNS = [
    ("requests / cases", ("requests", "cases")),
    ("executions", ("executions",)),
    ("5xx", ("responses_5xx", "responses_5xx_outside_outage")),
    ("recovery s", ("recovery_seconds", "max_recovery_seconds")),
    ("blocked / stalled s", ("blocked_after_kill_seconds", "max_stalled_request_seconds")),
]
HIDDEN = {"test", "scenario", "time"}

RESTART_NOTE = """\
## What a Redis restart means for exactly-once

The suite's Redis runs without persistence (`--save "" --appendonly no`), like many cache
deployments. Scenario 4 asserts what a restart of such a Redis does (the figures above are
observed, not assumed):

- **A key claimed before the outage and completed after the restart runs once.** The
  completion script (`complete.lua`) accepts a missing key, so the result is stored on the
  fresh server and every retry gets the replay.
- **In-flight claims are taken back by their renewal.** The restart forgets the claim of a
  handler still running; its next renewal finds the key absent and stores the claim again
  (fenced: only if nobody claimed it meanwhile), so the duplicate sent after that gets 409
  and the handler runs once. A duplicate that arrives between the restart and that renewal
  (at most three quarters of a lease after the last one) still finds no claim and runs.
- **Stored responses are forgotten.** A retry of a key completed before the outage runs the
  handler again.
- **While Redis is down** every keyed request is refused with 503 + `Retry-After` and no
  handler runs (fail closed); `fail_open=True` runs the handlers unprotected (no claim, no
  record, no de-duplication). A handler that was already running when Redis went away
  finishes, but its response cannot be stored (`could not record`, logged): its claim dies
  with its lease, and a retry after that runs again.

So exactly-once holds across a Redis restart only if Redis keeps what it acknowledged: AOF
with `appendfsync always` (or `everysec`, accepting up to one second of loss), or a replica
promoted by Sentinel after `WAIT 1 <ms>` acknowledged the write. Without that, the guarantee
is "at most once per key while Redis is up; after a restart, at most once more per key".
"""


@dataclass
class TestResult:
    nodeid: str
    outcome: str
    seconds: float
    reason: str = ""
    figures: list[dict[str, Any]] = field(default_factory=list)


def _nodeid(case: ET.Element) -> str:
    classname = case.get("classname", "")
    name = case.get("name", "")
    parts = classname.split(".")
    # tests.reliability.test_x -> tests/reliability/test_x.py
    module = "/".join(parts) + ".py"
    return f"{module}::{name}"


def _outcome(case: ET.Element) -> tuple[str, str]:
    for child in case:
        if child.tag == "skipped":
            if child.get("type") == "pytest.xfail":
                return "xfail", child.get("message", "")
            return "skipped", child.get("message", "")
        if child.tag == "failure":
            message = child.get("message", "")
            return ("XPASS(strict)" if "XPASS" in message else "FAILED"), message
        if child.tag == "error":
            return "ERROR", child.get("message", "")
    return "passed", ""


def read_results(junit: Path, figures_file: Path) -> list[TestResult]:
    results: dict[str, TestResult] = {}
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            nodeid = _nodeid(case)
            outcome, reason = _outcome(case)
            results[nodeid] = TestResult(nodeid, outcome, float(case.get("time", 0)), reason)
    if figures_file.exists():
        for line in figures_file.read_text().splitlines():
            if not line.strip():
                continue
            figures = json.loads(line)
            nodeid = figures["test"]
            result = results.setdefault(nodeid, TestResult(nodeid, "unknown", 0.0))
            result.figures.append(figures)
    return list(results.values())


def _coverage(results: list[TestResult]) -> list[str]:
    """One row per suite: what it covers, and how its tests ended in this run."""
    lines = [
        "## What the suites cover",
        "",
        "| suite | covers | tests in this run | seconds |",
        "|---|---|---|---|",
    ]
    for path, covers in SUITES:
        mine = [r for r in results if r.nodeid == path or r.nodeid.startswith(path.rstrip("/"))]
        outcomes: dict[str, int] = defaultdict(int)
        for result in mine:
            outcomes[result.outcome] += 1
        told = ", ".join(f"{n} {k}" for k, n in sorted(outcomes.items())) or "not run"
        seconds = sum(r.seconds for r in mine)
        lines.append(f"| `{path}` | {_cell(covers)} | {told} | {seconds:.1f} |")
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _short(nodeid: str) -> str:
    return nodeid.split("/")[-1]


def render(results: list[TestResult], *, seconds: float, returncode: int, argv: list[str]) -> str:
    by_scenario: dict[str, list[tuple[TestResult, dict[str, Any]]]] = defaultdict(list)
    without: list[TestResult] = []
    for result in results:
        if not result.figures:
            without.append(result)
        for figures in result.figures:
            by_scenario[figures["scenario"]].append((result, figures))
    counts: dict[str, int] = defaultdict(int)
    for result in results:
        counts[result.outcome] += 1
    hostile_cases = sum(f.get("cases", 0) for _, f in by_scenario.get("hostile-input", []))
    command = " ".join(["python", "scripts/reliability_report.py", *argv])

    lines = [
        "# Reliability report",
        "",
        "Generated by `scripts/reliability_report.py` from one run of the suites listed under",
        '"What the suites cover"; every number below was measured in that run. Regenerate with:',
        "",
        "```bash",
        command,
        "```",
        "",
        f"- Run: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"commit `{_git('rev-parse', '--short', 'HEAD')}`"
        + (" plus uncommitted changes" if _git("status", "--porcelain") else ""),
        f"- Machine: {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {_loadavg()} at the end; Python {platform.python_version()}, "
        f"{_redis_version()}",
        f"- Total wall time: {seconds:.1f} s; pytest exit status {returncode}",
        "- Outcomes: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())),
        f"- Hypothesis cases generated (scenario 7): {hostile_cases}",
        "",
        "Each row is one measurement; *reproduce* runs that test alone:",
        "`python -m pytest -p no:cacheprovider '<test>'`.",
        "",
    ]
    header = ["scenario", "test", "outcome", *[c for c, _ in COLUMNS], "other figures"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    known = [name for name, _ in SCENARIOS]
    ordered = [s for s in known if s in by_scenario] + sorted(set(by_scenario) - set(known))
    titles = dict(SCENARIOS)
    for scenario in ordered:
        for result, figures in by_scenario[scenario]:
            cells = [titles.get(scenario, scenario), f"`{_short(result.nodeid)}`", result.outcome]
            used = set(HIDDEN)
            for _, keys in COLUMNS:
                value = next((figures[k] for k in keys if k in figures), "")
                used.update(keys)
                cells.append(_fmt(value))
            rest = {k: v for k, v in figures.items() if k not in used}
            cells.append(", ".join(f"{k}={_fmt(v)}" for k, v in sorted(rest.items())))
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")

    xfails = [r for r in results if r.outcome == "xfail"]
    lines += [
        "## Bugs pinned by strict xfail tests",
        "",
        "Each test below fails today for the reason given and is marked",
        "`xfail(strict=True)`: when the bug is fixed the test passes, the suite reports",
        "XPASS(strict) as a failure, and the marker must go.",
        "",
        "| test | reason |",
        "|---|---|",
    ]
    for result in sorted(xfails, key=lambda r: r.nodeid):
        reason = result.reason.removeprefix("reason: ")
        lines.append(f"| `{_cell(result.nodeid)}` | {_cell(reason)} |")
    problems = [r for r in results if r.outcome in ("FAILED", "ERROR", "XPASS(strict)")]
    if problems:
        lines += ["", "## Failures in this run", ""]
        for result in problems:
            lines.append(f"- `{result.nodeid}`: {result.outcome}: {_cell(result.reason[:300])}")
    lines += ["", *_coverage(results), "", RESTART_NOTE]
    lines += [
        "## Tests without figures",
        "",
        ", ".join(
            f"`{_short(r.nodeid)}` ({r.outcome})" for r in sorted(without, key=lambda r: r.nodeid)
        )
        or "none",
        "",
    ]
    return "\n".join(lines)


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip()


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _redis_version() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis-server not installed"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10)
    return " ".join(done.stdout.split()[:3])


def _run_pytest(command: list[str], env: dict[str, str]) -> int:
    """Run pytest, bounded: past the deadline SIGINT (pytest tears its fixtures down), then kill."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env)
    try:
        return process.wait(timeout=PYTEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        return -1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", default=str(REPO_ROOT / "RELIABILITY.md"))
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory(prefix="reliability-") as tmp:
        figures_file = Path(tmp) / "figures.jsonl"
        junit = Path(tmp) / "junit.xml"
        env = {**os.environ, "RELIABILITY_FIGURES": str(figures_file)}
        command = [
            sys.executable,
            "-m",
            "pytest",
            *[path for path, _ in SUITES if (REPO_ROOT / path).exists()],
            "-p",
            "no:cacheprovider",
            "-q",
            "-rxXfE",
            f"--junitxml={junit}",
            "-o",
            "junit_family=xunit1",
            *pytest_args,
        ]
        print("running:", " ".join(command), flush=True)
        started = time.monotonic()
        returncode = _run_pytest(command, env)
        seconds = time.monotonic() - started
        results = read_results(junit, figures_file)
    report = render(results, seconds=seconds, returncode=returncode, argv=pytest_args)
    Path(args.output).write_text(report)
    print(f"wrote {args.output} ({len(results)} tests, {seconds:.1f} s, exit {returncode})")
    return returncode


if __name__ == "__main__":
    sys.exit(main())
