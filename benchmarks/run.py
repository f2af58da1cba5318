"""Throughput benchmark: our idempotency middleware next to a bare app and peer libraries.

Everything is measured side by side in one run, on one machine and one Redis that this
script starts, so that the ratios to the bare app (not absolute numbers, which move
from machine to machine) can be compared and checked against targets.

    python benchmarks/run.py                  # 3 runs x 5 s per app and path, verdicts
    python benchmarks/run.py --smoke          # a quick pass for CI: table only, no verdicts
    python benchmarks/run.py --only asgi --runs 5 --duration 10
    python benchmarks/run.py --only 'replay,idemkit'

Method: uvicorn (1 worker, uvloop, httptools) for ASGI and gunicorn (1 gthread worker x 8
threads) for WSGI; load from ``wrk -t1 -c16``; a warm-up before each measured run; runs
alternate round-robin over the apps and each figure is the median over runs. Ratios are
taken against the bare app of the same protocol and path in the same run, then the
median of those per-run ratios is reported. Redis commands per request come from
``INFO commandstats`` deltas around each measured run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import benchlib
from benchlib import BENCH_DIR, LUA_DIR, REPO_ROOT, RESULTS_DIR, RedisServer

VENVS_DIR = BENCH_DIR / ".venvs"
PEERS_REQUIREMENTS = BENCH_DIR / "requirements-peers.txt"
READY_TIMEOUT = 10.0
NOISY_OTHER_CPU = 0.10  # share of the machine's CPU taken by other work that taints a run

# --- what is measured ---------------------------------------------------------------


@dataclass(frozen=True)
class PathSpec:
    """One request path: the wrk script that drives it and what a correct answer is."""

    name: str
    script: str
    expects_rejection: bool = False  # inflight: every duplicate should be refused (409)


PATHS: dict[str, PathSpec] = {
    p.name: p
    for p in (
        PathSpec("first", "first.lua"),
        PathSpec("replay", "replay.lua"),
        PathSpec("inflight", "inflight.lua", expects_rejection=True),
        PathSpec("passthrough-get", "get.lua"),
        PathSpec("passthrough-nokey", "nokey.lua"),
    )
}
ALL = tuple(PATHS)
BARE = ("first", "replay", "passthrough-get", "passthrough-nokey")
PEER = ("first", "replay")


@dataclass(frozen=True)
class AppSpec:
    """One server to start: which module, under which protocol, measured on which paths."""

    protocol: str  # "asgi" (uvicorn) or "wsgi" (gunicorn)
    name: str
    module: str  # module in benchmarks/apps exposing ``app``
    paths: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    peer: str | None = None  # distribution installed into its own virtualenv

    @property
    def id(self) -> str:
        return f"{self.protocol}/{self.name}"

    @property
    def is_bare(self) -> bool:
        return self.name == "bare"

    @property
    def store(self) -> str | None:
        """Our store under this app (BENCH_STORE), None for the bare app and the peers."""
        if self.is_bare or self.peer:
            return None
        return self.env.get("BENCH_STORE", "redis")


APPS: tuple[AppSpec, ...] = (
    AppSpec("asgi", "bare", "asgi_bare", BARE),
    AppSpec("asgi", "ours-redis", "asgi_ours", ALL, {"BENCH_STORE": "redis"}),
    AppSpec(
        "asgi", "ours-memory", "asgi_ours", ("first", "replay", "inflight"),
        {"BENCH_STORE": "memory"},
    ),
    AppSpec(
        "asgi", "ours-local-cache", "asgi_ours", ("first", "replay"),
        {"BENCH_STORE": "redis", "BENCH_LOCAL_CACHE": "1"},
    ),
    AppSpec("asgi", "ours-sqlite", "asgi_ours", PEER, {"BENCH_STORE": "sqlite"}),
    AppSpec("asgi", "ours-postgres", "asgi_ours", PEER, {"BENCH_STORE": "postgres"}),
    AppSpec("asgi", "idemkit", "peer_idemkit", PEER, peer="idemkit"),
    AppSpec("asgi", "ichido", "peer_ichido", PEER, peer="ichido"),
    AppSpec("asgi", "idemgate", "peer_idemgate", PEER, peer="idemgate"),
    AppSpec("wsgi", "bare", "wsgi_bare", BARE),
    AppSpec("wsgi", "ours-redis", "wsgi_ours", ALL),
    AppSpec("wsgi", "ours-sqlite", "wsgi_ours", PEER, {"BENCH_STORE": "sqlite"}),
    AppSpec("wsgi", "ours-postgres", "wsgi_ours", PEER, {"BENCH_STORE": "postgres"}),
    AppSpec("wsgi", "idemkit", "peer_idemkit_wsgi", PEER, peer="idemkit"),
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """A pass/fail threshold on one measured figure of one app and path."""

    app_id: str
    path: str
    metric: str  # "ratio" or "redis_cmds_per_req"
    op: str  # ">=" or "<="
    threshold: float

    @property
    def label(self) -> str:
        what = "x bare" if self.metric == "ratio" else "Redis cmds/req"
        return f"{self.app_id} {self.path}: {what} {self.op} {self.threshold:g}"


_R, _C = "ratio", "redis_cmds_per_req"
#: Issue 12's targets (ratios to the bare app of the same run) and the round trips per path.
TARGETS: tuple[Target, ...] = (
    Target("asgi/ours-redis", "first", _R, ">=", 0.65),
    Target("asgi/ours-redis", "replay", _R, ">=", 1.50),
    Target("asgi/ours-local-cache", "replay", _R, ">=", 1.80),
    # 0 per request; a thousandth leaves room for one connection-level command.
    Target("asgi/ours-local-cache", "replay", _C, "<=", 0.001),
    Target("wsgi/ours-redis", "first", _R, ">=", 0.75),
    Target("wsgi/ours-redis", "replay", _R, ">=", 1.15),
    Target("asgi/ours-redis", "passthrough-get", _R, ">=", 0.98),
    Target("asgi/ours-redis", "passthrough-nokey", _R, ">=", 0.98),
    Target("wsgi/ours-redis", "passthrough-get", _R, ">=", 0.98),
    Target("wsgi/ours-redis", "passthrough-nokey", _R, ">=", 0.98),
    Target("asgi/ours-redis", "first", _C, "<=", 2),
    Target("asgi/ours-redis", "replay", _C, "<=", 1),
    Target("asgi/ours-redis", "inflight", _C, "<=", 1),
    Target("wsgi/ours-redis", "first", _C, "<=", 2),
    Target("wsgi/ours-redis", "replay", _C, "<=", 1),
    Target("wsgi/ours-redis", "inflight", _C, "<=", 1),
)


# --- settings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    smoke: bool
    runs: int
    duration: int  # seconds of each measured wrk run (wrk takes whole seconds)
    warmup: int  # seconds of wrk warm-up before each measured run; 0 = none
    connections: int
    only: tuple[str, ...]
    remeasure: int  # extra tries for a run that other processes or the host made noisy


def parse_args(argv: Sequence[str] | None) -> Settings:
    parser = argparse.ArgumentParser(
        description="Benchmark the idempotency middleware against a bare app and peers.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="quick pass (1 run x 1 s, no warm-up): prints the table, no PASS/FAIL verdicts",
    )
    parser.add_argument("--runs", type=int, help="measured runs per app and path (default 3)")
    parser.add_argument("--duration", type=int, help="seconds per measured run (default 5)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per run (default 1)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    parser.add_argument(
        "--remeasure",
        type=int,
        help="measure a run again, up to this many times, while other processes took over "
        f"{NOISY_OTHER_CPU:.0%} of the CPU (hypervisor steal included), keeping the least "
        "noisy try (default 2; 0 with --smoke)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated selectors: a protocol (asgi, wsgi), app (ours-redis, idemkit), "
        "path (first, replay, inflight, passthrough-get, passthrough-nokey) or a glob on "
        "protocol/app/path such as 'asgi/*/replay'; the bare app of each selected "
        "protocol and path is always included for the ratios",
    )
    args = parser.parse_args(argv)
    smoke = bool(args.smoke)
    settings = Settings(
        smoke=smoke,
        runs=args.runs if args.runs is not None else (1 if smoke else 3),
        duration=args.duration if args.duration is not None else (1 if smoke else 5),
        warmup=args.warmup if args.warmup is not None else (0 if smoke else 1),
        connections=args.connections,
        only=tuple(s.strip() for s in args.only.split(",") if s.strip()),
        remeasure=args.remeasure if args.remeasure is not None else (0 if smoke else 2),
    )
    if settings.runs < 1 or settings.duration < 1 or settings.warmup < 0:
        parser.error("--runs and --duration must be >= 1, --warmup >= 0")
    if settings.remeasure < 0:
        parser.error("--remeasure must be >= 0")
    if settings.connections < 1:
        parser.error("--connections must be >= 1")
    return settings


def _matches(app: AppSpec, path: str, selector: str) -> bool:
    if "/" in selector:
        return fnmatch.fnmatch(f"{app.id}/{path}", selector) or fnmatch.fnmatch(app.id, selector)
    return selector in (app.protocol, path) or fnmatch.fnmatch(app.name, selector)


def select_cells(only: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Paths to measure per app id, after --only; bare apps are added where needed."""
    chosen: dict[str, list[str]] = {}
    for app in APPS:
        paths = [p for p in app.paths if not only or any(_matches(app, p, s) for s in only)]
        if paths:
            chosen[app.id] = paths
    for app in APPS:
        if not app.is_bare:
            continue
        needed = {p for a in APPS if a.protocol == app.protocol for p in chosen.get(a.id, [])}
        paths = [p for p in app.paths if p in needed or p in chosen.get(app.id, [])]
        if paths:
            chosen[app.id] = paths
    return {a.id: tuple(chosen[a.id]) for a in APPS if a.id in chosen}


# --- environment checks and peer virtualenvs ----------------------------------------


class HarnessError(RuntimeError):
    """The harness itself cannot run (missing tool, Redis or a bare app will not start)."""


def check_tools() -> None:
    """Fail early, saying how to fix it, when a tool or server package is missing."""
    if shutil.which("wrk") is None:
        raise HarnessError("wrk not found: install it with `apt-get install -y wrk`")
    if shutil.which("redis-server") is None:
        raise HarnessError("redis-server not found: `apt-get install -y redis-server`")
    missing = [
        m
        for m in ("uvicorn", "uvloop", "httptools", "gunicorn", "fastapi", "flask")
        if importlib.util.find_spec(m) is None
    ]
    if missing:
        raise HarnessError(
            f"missing Python packages {missing}: pip install -r benchmarks/requirements.txt"
        )


def peer_pins() -> dict[str, str]:
    """``name -> name==version`` from requirements-peers.txt."""
    pins: dict[str, str] = {}
    for line in PEERS_REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            pins[re.split(r"[=<>!~ \[]", line, maxsplit=1)[0].lower()] = line
    return pins


_PROBE = (
    "import importlib, importlib.metadata as m, json, sys\n"
    "importlib.import_module(sys.argv[1])\n"
    "print(json.dumps({'base': sys.base_prefix, 'version': m.version(sys.argv[1]),"
    " 'redis': m.version('redis')}))\n"
)


def _probe_peer(python: Path, name: str) -> dict[str, str] | None:
    try:
        out = subprocess.run(
            [str(python), "-c", _PROBE, name],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        info: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
        return info
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


@dataclass
class PeerEnv:
    name: str
    python: str | None
    version: str | None
    redis_py: str | None
    message: str


def prepare_peer(name: str, requirement: str) -> PeerEnv:
    """Install one pinned peer into ``.venvs/<name>`` (reused when already right).

    The virtualenv sees this interpreter's packages, so the peer runs on the same
    FastAPI/uvicorn/Flask as everything else, and only what the peer pins differently
    (idemgate: redis-py < 8) is installed beside it.
    """
    venv = VENVS_DIR / name
    python = venv / "bin" / "python"
    wanted = requirement.partition("==")[2] or None
    info = _probe_peer(python, name) if python.exists() else None
    if info and info["base"] == sys.base_prefix and (wanted is None or info["version"] == wanted):
        return PeerEnv(name, str(python), info["version"], info["redis"], "ready")
    shutil.rmtree(venv, ignore_errors=True)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pip = subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                requirement,
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return PeerEnv(name, None, None, None, f"virtualenv/pip failed: {exc}")
    if pip.returncode != 0:
        errors = [ln for ln in pip.stderr.splitlines() if "ERROR" in ln] or pip.stderr.splitlines()
        return PeerEnv(name, None, None, None, f"pip install failed: {' '.join(errors[-2:])}")
    info = _probe_peer(python, name)
    if info is None:
        return PeerEnv(name, None, None, None, "installed but does not import")
    return PeerEnv(name, str(python), info["version"], info["redis"], "installed")


# --- wrk ----------------------------------------------------------------------------


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    non2xx: int  # "Non-2xx or 3xx responses"
    socket_errors: int  # connect + read + write errors and timeouts


_BENCH_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)
_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s*(\d+)")


def parse_wrk(output: str) -> WrkResult:
    """Read the ``BENCH`` line printed by the Lua ``done()``, cross-checked with wrk's text."""
    match = _BENCH_LINE.search(output)
    if match is None:
        raise RuntimeError(f"no BENCH line in wrk output: {output.strip()[-300:]!r}")
    f = {k: float(v) for k, v in (kv.split("=", 1) for kv in match.group(1).split())}
    seconds = f["duration_us"] / 1e6
    non2xx = int(f["status_errors"])
    text = _NON2XX.search(output)
    if text is not None:
        non2xx = max(non2xx, int(text.group(1)))
    return WrkResult(
        requests=int(f["requests"]),
        seconds=seconds,
        rps=f["requests"] / seconds if seconds > 0 else 0.0,
        p50_ms=f["p50_us"] / 1000,
        p90_ms=f["p90_us"] / 1000,
        p99_ms=f["p99_us"] / 1000,
        non2xx=non2xx,
        socket_errors=int(
            f["connect_errors"] + f["read_errors"] + f["write_errors"] + f["timeouts"]
        ),
    )


def run_wrk(
    port: int, script: str, args: Sequence[str], seconds: int, connections: int
) -> WrkResult:
    cmd = [
        "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(LUA_DIR / script), f"http://{benchlib.HOST}:{port}/",
    ]  # fmt: skip
    if args:
        cmd += ["--", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
    if proc.returncode != 0:
        raise RuntimeError(f"wrk exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return parse_wrk(proc.stdout)


# --- running apps -------------------------------------------------------------------


@dataclass
class StoreServers:
    """What our SQLite and PostgreSQL apps run on: a folder for their database files (one
    file per app) and a throw-away PostgreSQL, the test suite's (initdb and pg_ctl in a
    temporary folder, a free loopback port), started only when such an app is selected."""

    sqlite_dir: Path
    postgres: Any = None
    postgres_problem: str = "not selected"

    def start_postgres(self, cells_wanted: Mapping[str, Sequence[str]]) -> None:
        """Start PostgreSQL if a selected app needs it; where it cannot start, those apps are
        skipped (``postgres_problem`` says why) and the SQLite ones still run."""
        if not any(a.store == "postgres" for a in APPS if a.id in cells_wanted):
            return
        sys.path.insert(0, str(REPO_ROOT))
        try:
            from idempotent_middleware import PostgresPersistenceLayer
            from tests.pg_servers import start_postgres

            self.postgres = start_postgres()
            # The table once, here: two apps creating it at the same moment could collide.
            PostgresPersistenceLayer(dsn=self.postgres.dsn).create_schema()
        except Exception as exc:  # no PostgreSQL here, or psycopg missing: skip those apps
            self._stop_postgres()
            self.postgres_problem = f"no PostgreSQL: {type(exc).__name__}: {exc}"[:200]
            print(f"  ! {self.postgres_problem}")
            return
        print(f"PostgreSQL on port {self.postgres.port}")

    def env(self, spec: AppSpec) -> dict[str, str]:
        if spec.store == "sqlite":
            return {"BENCH_SQLITE": str(self.sqlite_dir / f"{spec.protocol}-{spec.name}.db")}
        if spec.store == "postgres" and self.postgres is not None:
            return {"POSTGRES_DSN": str(self.postgres.dsn)}
        return {}

    def pgids(self) -> tuple[int, ...]:
        """The PostgreSQL server's process groups: the postmaster's, and each backend's (a
        backend calls setsid(), so it leads a group of its own); they do our apps' work."""
        if self.postgres is None:
            return ()
        try:
            postmaster = int(Path(self.postgres.data, "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return ()
        children = {pgrp for ppid, pgrp, _ in benchlib.processes() if ppid == postmaster}
        return tuple(children | {postmaster})

    def _stop_postgres(self) -> None:
        if self.postgres is not None:
            self.postgres.stop()
            self.postgres = None

    def stop(self) -> None:
        self._stop_postgres()
        shutil.rmtree(self.sqlite_dir, ignore_errors=True)


@dataclass
class RunningApp:
    spec: AppSpec
    paths: tuple[str, ...]
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    replay_key: str = ""
    notes: list[str] = field(default_factory=list)

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class AppStatus:
    app_id: str
    status: str  # "ok", "failed", "skipped"
    detail: str = ""


def start_apps(
    specs: Sequence[tuple[AppSpec, tuple[str, ...], str]],
    redis_url: str,
    stores: StoreServers,
    logs: Path,
    statuses: dict[str, AppStatus],
) -> list[RunningApp]:
    """Start the apps a few at a time (one per core), so slow imports do not starve each
    other into the readiness timeout; an app not answering in time is reported and skipped."""
    running: list[RunningApp] = []
    batch = max(1, os.cpu_count() or 1)
    for i in range(0, len(specs), batch):
        started: list[RunningApp] = []
        for spec, paths, python in specs[i : i + batch]:
            port = benchlib.free_port()
            make = benchlib.uvicorn_cmd if spec.protocol == "asgi" else benchlib.gunicorn_cmd
            log = logs / f"{spec.protocol}-{spec.name}.log"
            env = benchlib.app_env(redis_url, {**spec.env, **stores.env(spec)})
            proc = benchlib.spawn(make(python, spec.module, port), env=env, log=log)
            started.append(RunningApp(spec, paths, port, proc, log))
        for app in started:
            problem = benchlib.wait_ready(app.proc, app.port, timeout=READY_TIMEOUT)
            if problem is None:
                running.append(app)
                statuses[app.spec.id] = AppStatus(app.spec.id, "ok", f"port {app.port}")
                continue
            benchlib.stop(app.proc)
            last = benchlib.log_tail(app.log, 1)  # usually the exception line
            detail = f"{problem}: {last}" if last else problem
            statuses[app.spec.id] = AppStatus(app.spec.id, "failed", detail)
            print(f"  ! {app.spec.id}: failed to start: {detail}")
    return running


_JSON = {"Content-Type": "application/json"}
_ORDER = b'{"sku":"abc","qty":1}'


def prime_replay(app: RunningApp) -> None:
    """Store the response that the replay path will repeat (one request, once per app)."""
    app.replay_key = f"replay-{app.spec.protocol}-{app.spec.name}-{uuid.uuid4().hex[:12]}"
    headers = {**_JSON, "Idempotency-Key": app.replay_key}
    try:
        status, _ = benchlib.http_request(app.port, "POST", "/orders", headers=headers, body=_ORDER)
    except OSError as exc:
        app.notes.append(f"replay priming failed: {exc}")
        return
    if not 200 <= status < 300:
        app.notes.append(f"replay priming answered {status}")


def executions(app: RunningApp) -> int | None:
    """Handler executions so far (GET /stats), to show which requests really ran."""
    try:
        status, body = benchlib.http_request(app.port, "GET", "/stats", timeout=5.0)
        return int(json.loads(body)["executions"]) if status == 200 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


class InflightHolder:
    """Keeps one slow keyed request open in the background so duplicates hit the
    in-flight path; the request outlives warm-up and measurement by a couple of seconds."""

    def __init__(self, app: RunningApp, key: str, sleep_ms: int) -> None:
        self.status: int | str = "pending"
        self.path = f"/slow?ms={sleep_ms}"
        headers = {**_JSON, "Idempotency-Key": key}

        def hold() -> None:
            try:
                self.status, _ = benchlib.http_request(
                    app.port,
                    "POST",
                    self.path,
                    headers=headers,
                    body=_ORDER,
                    timeout=sleep_ms / 1000 + 15,
                )
            except OSError as exc:
                self.status = f"{type(exc).__name__}"

        self._thread = threading.Thread(target=hold, daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


# --- one measurement ----------------------------------------------------------------


@dataclass
class Sample:
    """One measured wrk run of one app on one path."""

    run: int
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    requests: int = 0
    non2xx: int = 0
    socket_errors: int = 0
    unexpected: int = 0  # responses of the wrong class for this path, plus socket errors
    redis_cmds_per_req: float | None = None  # commands clients sent (MONITOR, run 1)
    redis_cmds_per_req_min: float | None = None  # lower bound, see measure()
    redis_calls_per_req: float | None = None  # INFO commandstats, Lua-internal calls included
    exec_per_req: float | None = None
    ratio: float | None = None
    error: str | None = None
    note: str | None = None
    other_cpu: float | None = None  # share of the machine's CPU used by other processes
    steal: float | None = None  # the part of other_cpu the hypervisor stole (see benchlib)
    # The tries not kept (measure_quietest), whole: what they saw stays on record, and the
    # cell's warnings and verdicts count their wrong answers and failures (Cell.summary).
    discarded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tries(self) -> int:
        """Measurements taken for this run; the least noisy one is this sample."""
        return 1 + len(self.discarded)


def noisy(other_cpu: float | None) -> bool:
    """Whether other processes (steal included) took enough of the CPU to taint a run."""
    return (other_cpu or 0) > NOISY_OTHER_CPU


def measure_quietest(
    take: Callable[[], Sample], remeasure: int, alive: Callable[[], bool]
) -> Sample:
    """One run, taken again (up to ``remeasure`` more times) while it is noisy.

    On a shared host the hypervisor's steal comes in bursts of seconds: a run taken in
    one says how busy the host was, not what the code costs. Every try is a complete
    run of its own (warm-up, fresh keys), so keeping the quietest picks among equals.
    Nothing a discarded try saw is hidden: its figures, wrong answers, notes and errors
    stay in ``discarded``, and the cell's warnings and verdicts count them.
    """
    tries = [take()]
    best = tries[0]
    while best.error is None and noisy(best.other_cpu) and len(tries) <= remeasure and alive():
        tries.append(take())
        best = min(tries, key=_noise)
    best.discarded = [asdict(other) for other in tries if other is not best]
    return best


def _noise(sample: Sample) -> float:
    """Order of preference among tries: a try that failed comes last."""
    return 2.0 if sample.error is not None else sample.other_cpu or 0.0


def measure(
    app: RunningApp,
    path: str,
    run: int,
    settings: Settings,
    redis: RedisServer,
    stores: StoreServers,
) -> Sample:
    """One warm-up plus one measured wrk run; Redis calls, handler executions and CPU
    taken by other processes (not the app's, nor its stores' servers') are snapshotted
    around the measured run only."""
    spec = PATHS[path]
    sample = Sample(run=run)
    tag = uuid.uuid4().hex[:10]
    holder: InflightHolder | None = None
    args: list[str] = []
    if path == "first":
        args = [f"{app.spec.name}-{run}-{tag}"]
    elif path == "replay":
        args = [app.replay_key]
    elif path == "inflight":
        # Outlives warm-up and measurement with room to spare, so its own completion
        # (and the Redis writes that go with it) falls outside the counted window.
        sleep_ms = (settings.warmup + settings.duration + 2) * 1000
        key = f"inflight-{app.spec.name}-{run}-{tag}"
        args = [key, str(sleep_ms)]
        holder = InflightHolder(app, key, sleep_ms)
        time.sleep(0.3)  # let the held request claim the key first
        try:
            status, _ = benchlib.http_request(
                app.port,
                "POST",
                holder.path,
                headers={**_JSON, "Idempotency-Key": key},
                body=_ORDER,
                timeout=1.5,
            )
            if status != 409:
                sample.note = f"duplicate while in flight answered {status}, expected 409"
        except OSError as exc:
            sample.note = f"duplicate while in flight got no answer ({type(exc).__name__})"
    try:
        if settings.warmup:
            warm_args = [f"warm-{args[0]}"] if path == "first" else args
            run_wrk(app.port, spec.script, warm_args, settings.warmup, settings.connections)
            time.sleep(0.1)  # let the warm-up's last requests finish outside the window
        groups = (app.proc.pid, redis.proc.pid, *stores.pgids())
        execs_before = executions(app)
        redis_before = redis.command_calls()
        cpu_before = benchlib.cpu_snapshot(groups)
        result = run_wrk(app.port, spec.script, args, settings.duration, settings.connections)
        # Backends the app opened during the window count as its own: they did its work.
        cpu_after = benchlib.cpu_snapshot((*groups, *stores.pgids()))
        time.sleep(0.1)  # let requests still open when wrk stopped finish before counting
        redis_after = redis.command_calls()
        execs_after = executions(app)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        sample.error = str(exc)
        return sample
    finally:
        if holder is not None:
            holder.join(timeout=settings.warmup + settings.duration + 20)
            if holder.status not in (200, 201):
                extra = f"held request ended with {holder.status}"
                sample.note = f"{sample.note}; {extra}" if sample.note else extra
    if result.requests == 0:
        sample.error = f"no response completed in {settings.duration} s (server stuck?)"
        return sample
    sample.rps, sample.p50_ms, sample.p99_ms = result.rps, result.p50_ms, result.p99_ms
    sample.other_cpu = benchlib.other_cpu_share(cpu_before, cpu_after)
    sample.steal = benchlib.steal_share(cpu_before, cpu_after)
    sample.requests, sample.non2xx = result.requests, result.non2xx
    sample.socket_errors = result.socket_errors
    wrong = result.requests - result.non2xx if spec.expects_rejection else result.non2xx
    sample.unexpected = wrong + result.socket_errors
    used = benchlib.commands_between(redis_before, redis_after)
    sample.redis_calls_per_req = used / result.requests
    if used and run == 1:
        # Round trips: commands clients sent, counted apart from the timed run (MONITOR).
        counting_args = [f"count-{args[0]}"] if path == "first" else args
        counter = benchlib.ClientCommandCounter(redis.port)
        try:
            counted = run_wrk(app.port, spec.script, counting_args, 1, settings.connections)
            time.sleep(0.1)
        finally:
            sent = counter.close()
        if counted.requests:
            sample.redis_cmds_per_req = sent / counted.requests
            # Up to `connections` requests are still open when wrk stops: the server
            # finishes them (their commands are counted) but wrk never counts them.
            sample.redis_cmds_per_req_min = sent / (counted.requests + settings.connections)
    elif not used:
        sample.redis_cmds_per_req = sample.redis_cmds_per_req_min = 0.0
    if execs_before is not None and execs_after is not None:
        sample.exec_per_req = (execs_after - execs_before) / result.requests
    return sample


# --- aggregation and reporting ------------------------------------------------------


@dataclass
class Cell:
    """All runs of one app on one path, with medians over runs."""

    protocol: str
    app: str
    path: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def app_id(self) -> str:
        return f"{self.protocol}/{self.app}"

    def _median(self, get: Callable[[Sample], float | None]) -> float | None:
        values = [v for v in (get(s) for s in self.samples if s.error is None) if v is not None]
        return statistics.median(values) if values else None

    def summary(self) -> dict[str, Any]:
        ok = [s for s in self.samples if s.error is None]
        discarded = [d for s in self.samples for d in s.discarded]
        notes = sorted(
            {s.note for s in self.samples if s.note}
            | {s.error for s in self.samples if s.error}
            | {f"a try not kept: {d['note']}" for d in discarded if d["note"]}
            | {f"a try not kept failed: {d['error']}" for d in discarded if d["error"]}
        )
        return {
            "protocol": self.protocol,
            "app": self.app,
            "path": self.path,
            "runs_ok": len(ok),
            "rps": self._median(lambda s: s.rps),
            "p50_ms": self._median(lambda s: s.p50_ms),
            "p99_ms": self._median(lambda s: s.p99_ms),
            "ratio": self._median(lambda s: s.ratio),
            "redis_cmds_per_req": self._median(lambda s: s.redis_cmds_per_req),
            "redis_cmds_per_req_min": self._median(lambda s: s.redis_cmds_per_req_min),
            "redis_calls_per_req": self._median(lambda s: s.redis_calls_per_req),
            "exec_per_req": self._median(lambda s: s.exec_per_req),
            "other_cpu": self._median(lambda s: s.other_cpu),
            "steal": self._median(lambda s: s.steal),
            "non2xx": sum(s.non2xx for s in ok),
            "unexpected": sum(s.unexpected for s in ok),
            # Wrong answers and failures of tries re-measured away still count (warnings).
            "discarded_unexpected": sum(d["unexpected"] for d in discarded),
            "discarded_failures": sum(1 for d in discarded if d["error"]),
            "requests": sum(s.requests for s in ok),
            "notes": notes,
            "samples": [asdict(s) for s in self.samples],
        }


def fill_ratios(cells: Mapping[tuple[str, str, str], Cell]) -> None:
    """Per run, divide by the bare app of the same protocol and path from that run."""
    for (proto, _app, path), cell in cells.items():
        bare = cells.get((proto, "bare", path))
        if bare is None:
            continue
        bare_by_run = {s.run: s.rps for s in bare.samples if s.error is None and s.rps}
        for s in cell.samples:
            base = bare_by_run.get(s.run)
            if s.error is None and s.rps is not None and base:
                s.ratio = s.rps / base


def _fmt(value: float | None, spec: str) -> str:
    """Format a figure, or a dash of the same width when there is none."""
    if value is None:
        width = re.match(r"\d*", spec)
        return "-".rjust(int(width.group()) if width and width.group() else 1)
    return format(value, spec)


def print_table(rows: Sequence[Mapping[str, Any]], statuses: Mapping[str, AppStatus]) -> None:
    header = (
        f"{'proto':<5} {'app':<17} {'path':<18} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'x bare':>7} {'redis/req':>9} {'exec/req':>8} {'non-2xx':>8} {'other%':>6}"
    )
    print()
    print(header)
    print("-" * len(header))
    last = ""
    for r in rows:
        app_id = f"{r['protocol']}/{r['app']}"
        if last and app_id.split("/")[0] != last.split("/")[0]:
            print()
        last = app_id
        flag = " !" if r["unexpected"] or r["discarded_unexpected"] else ""
        other = None if r["other_cpu"] is None else 100 * r["other_cpu"]
        print(
            f"{r['protocol']:<5} {r['app']:<17} {r['path']:<18} {_fmt(r['rps'], '8.0f')} "
            f"{_fmt(r['p50_ms'], '7.2f')} {_fmt(r['p99_ms'], '7.2f')} {_fmt(r['ratio'], '7.2f')} "
            f"{_fmt(r['redis_cmds_per_req'], '9.2f')} {_fmt(r['exec_per_req'], '8.2f')} "
            f"{r['non2xx']:>8} {_fmt(other, '6.0f')}{flag}"
        )
    failed = [s for s in statuses.values() if s.status != "ok"]
    if failed:
        print()
        for s in failed:
            print(f"not measured: {s.app_id}: {s.status}: {s.detail}")
    notes = [(f"{r['protocol']}/{r['app']} {r['path']}", n) for r in rows for n in r["notes"]]
    if notes:
        print()
        for where, note in notes:
            print(f"note: {where}: {note}")


def sanity_warnings(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Flags that make a figure meaningless: wrong response classes, replays that ran."""
    warnings: list[str] = []
    for r in rows:
        where = f"{r['protocol']}/{r['app']} {r['path']}"
        if r["unexpected"]:
            warnings.append(f"{where}: {r['unexpected']} unexpected responses or socket errors")
        if r["discarded_unexpected"]:
            warnings.append(
                f"{where}: {r['discarded_unexpected']} unexpected responses or socket errors "
                "in tries not kept (noisy runs measured again)"
            )
        if r["discarded_failures"]:
            warnings.append(
                f"{where}: {r['discarded_failures']} tries not kept failed (see the notes)"
            )
        if r["app"] != "bare" and r["path"] == "replay" and (r["exec_per_req"] or 0) > 0.01:
            warnings.append(
                f"{where}: the handler ran on replays (exec/req {r['exec_per_req']:.2f})"
            )
    busy = [r for r in rows if noisy(r["other_cpu"])]
    if busy:
        worst = max(r["other_cpu"] for r in busy)
        stolen = max(r.get("steal") or 0 for r in busy)
        warnings.append(
            f"other processes used over {NOISY_OTHER_CPU:.0%} of the CPU during {len(busy)} "
            f"of {len(rows)} app/path cells (up to {worst:.0%}; the hypervisor's steal time "
            f"up to {stolen:.0%}): figures are noisy, rerun on an idle machine"
        )
    return warnings


def evaluate_targets(
    rows: Sequence[Mapping[str, Any]],
    statuses: Mapping[str, AppStatus],
    wanted: Mapping[str, Sequence[str]],
) -> list[dict[str, Any]]:
    """PASS/FAIL per target; an app that did not start or answer fails its targets."""
    by_key = {(f"{r['protocol']}/{r['app']}", r["path"]): r for r in rows}
    verdicts: list[dict[str, Any]] = []
    for t in TARGETS:
        row = by_key.get((t.app_id, t.path))
        value: float | None = row.get(t.metric) if row else None
        # Redis ceilings are checked on the lower bound that discounts the requests
        # left open when wrk stopped; without it 1.0003 commands/request would fail "<= 1".
        judged: float | None = value
        if row and t.op == "<=" and row.get(f"{t.metric}_min") is not None:
            judged = row[f"{t.metric}_min"]
        entry: dict[str, Any] = {"label": t.label, **asdict(t), "value": value}
        status = statuses.get(t.app_id)
        if t.path not in wanted.get(t.app_id, ()):
            entry.update(verdict="SKIP", reason="not selected by --only")
        elif value is None or judged is None:
            why = status.detail if status and status.status != "ok" else "no measurement"
            entry.update(verdict="FAIL", reason=why)
        elif row and (row["unexpected"] or row["discarded_unexpected"]):
            wrong = row["unexpected"] + row["discarded_unexpected"]
            entry.update(verdict="FAIL", reason=f"{wrong} unexpected responses")
        elif row and row["discarded_failures"]:
            entry.update(verdict="FAIL", reason="a try not kept failed (see the notes)")
        else:
            ok = value >= t.threshold if t.op == ">=" else judged <= t.threshold
            entry.update(verdict="PASS" if ok else "FAIL", reason="")
        if row and noisy(row["other_cpu"]):
            why = f"noisy: other processes took {row['other_cpu']:.0%} of the CPU"
            entry["reason"] = f"{entry['reason']}; {why}" if entry["reason"] else why
        verdicts.append(entry)
    return verdicts


def print_verdicts(verdicts: Sequence[Mapping[str, Any]]) -> None:
    print()
    for v in verdicts:
        if v["verdict"] == "SKIP":
            continue
        value = _fmt(v["value"], ".3f")
        reason = f"  ({v['reason'][:120]})" if v["reason"] else ""
        print(f"{v['verdict']:<4}  {v['label']:<52} {value:>7}{reason}")


def draw_chart(rows: Sequence[Mapping[str, Any]], out: Path, title: str) -> str | None:
    """Bar chart of ratios to the bare app, one panel per protocol; None if drawn, else why not.

    Each path is a group of bars, one per app measured on it; an app keeps its colour
    in both panels so ASGI and WSGI figures of the same library are easy to match.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib not installed: no chart"
    data = [r for r in rows if r["app"] != "bare" and r["ratio"] is not None]
    panels = [p for p in ("asgi", "wsgi") if any(r["protocol"] == p for r in data)]
    if not panels:
        return "no ratios to chart"
    palette = plt.get_cmap("tab10")
    colours = {name: palette(i % 10) for i, name in enumerate(dict.fromkeys(a.name for a in APPS))}
    groups = {
        p: [q for q in PATHS if any(r["protocol"] == p and r["path"] == q for r in data)]
        for p in panels
    }
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(2.5 + 2.2 * max(len(g) for g in groups.values()), 4.2 * len(panels)),
        squeeze=False,
    )
    top = max(1.0, *(r["ratio"] for r in data)) * 1.15
    for ax, proto in zip(axes[:, 0], panels, strict=True):
        labelled: set[str] = set()
        here_by_path = {
            path: [r for r in data if r["protocol"] == proto and r["path"] == path]
            for path in groups[proto]
        }
        width = 0.8 / max(len(h) for h in here_by_path.values())
        for j, here in enumerate(here_by_path.values()):
            for i, r in enumerate(here):
                x = j + width * (i + 0.5 - len(here) / 2)
                label = None if r["app"] in labelled else r["app"]
                labelled.add(r["app"])
                bar = ax.bar([x], [r["ratio"]], width * 0.95, color=colours[r["app"]], label=label)
                ax.bar_label(bar, fmt="%.2f", fontsize=7, padding=1)
        ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(groups[proto])), groups[proto])
        ax.set_xlim(-0.6, len(groups[proto]) - 0.4)
        ax.set_ylim(0, top)
        server = "uvicorn, 1 worker" if proto == "asgi" else "gunicorn, 1 worker x 8 threads"
        ax.set_title(f"{proto.upper()} ({server})", fontsize=10)
        ax.set_ylabel("req/s / bare app req/s")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return None


def machine_busy_share(seconds: float = 0.5) -> float:
    """Share of the machine's CPU that other processes use, sampled over ``seconds``."""
    before = benchlib.cpu_snapshot(())
    time.sleep(seconds)
    return benchlib.other_cpu_share(before, benchlib.cpu_snapshot(()))


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _our_version() -> str | None:
    """Our package's version, installed or straight from this checkout."""
    installed = _version("idempotent-middleware")
    if installed:
        return installed
    probe = "import idempotent_middleware as m; print(getattr(m, '__version__', 'unknown'))"
    try:
        out = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True,
            text=True,
            timeout=30,
            env=benchlib.app_env(None),
            check=True,
        )
        return f"{out.stdout.strip()} (checkout)"
    except (OSError, subprocess.SubprocessError):
        return None


def machine_info(redis: RedisServer | None, peers: Mapping[str, PeerEnv]) -> dict[str, Any]:
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    dists = [
        "fastapi", "starlette", "pydantic", "uvicorn", "uvloop", "httptools",
        "gunicorn", "flask", "werkzeug", "redis", "hiredis", "matplotlib",
    ]  # fmt: skip
    return {
        **benchlib.host_info(),
        "redis_server": redis.version() if redis else None,
        "wrk": wrk[0].strip() if wrk else None,
        "packages": {d: _version(d) for d in dists} | {"idempotent-middleware": _our_version()},
        "peers": {
            n: {"version": p.version, "redis_py": p.redis_py, "status": p.message}
            for n, p in peers.items()
        },
    }


# --- main ---------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    benchlib.install_teardown()
    started = time.monotonic()
    try:
        return _run(settings)
    except HarnessError as exc:
        print(f"harness error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        benchlib.stop_all()
        print(f"\n(total {time.monotonic() - started:.0f} s)")


def _run(settings: Settings) -> int:
    check_tools()
    cells_wanted = select_cells(settings.only)
    if not cells_wanted:
        raise HarnessError(f"--only {','.join(settings.only)} selects nothing")
    mode = "smoke" if settings.smoke else "full"
    print(
        f"mode {mode}: {settings.runs} run(s) x {settings.duration} s, warm-up "
        f"{settings.warmup} s, wrk -t1 -c{settings.connections}, "
        f"{sum(len(p) for p in cells_wanted.values())} app/path cells, a noisy run "
        f"measured again up to {settings.remeasure} time(s)"
    )
    logs = RESULTS_DIR / "logs"
    statuses: dict[str, AppStatus] = {}
    idle = machine_busy_share()
    print(f"CPU used by other processes right now: {idle:.0%} of the machine")
    if noisy(idle):
        print("  ! the machine is not idle: figures will be noisy")

    # Peers: one virtualenv each, prepared one at a time; a failure skips that peer only.
    peers: dict[str, PeerEnv] = {}
    pins = peer_pins()
    for name in dict.fromkeys(a.peer for a in APPS if a.peer and a.id in cells_wanted):
        requirement = pins.get(name, name)
        print(f"peer {requirement}: ", end="", flush=True)
        peers[name] = prepare_peer(name, requirement)
        print(peers[name].message)

    try:
        redis = RedisServer.start(log=logs / "redis.log")
    except RuntimeError as exc:
        raise HarnessError(str(exc)) from exc
    print(f"redis-server {redis.version()} on port {redis.port}")
    stores = StoreServers(Path(tempfile.mkdtemp(prefix="bench-sqlite-")))
    try:
        stores.start_postgres(cells_wanted)
        # Read before the run: the commit measured, not one checked out while it ran.
        info = machine_info(redis, peers)
        info["started"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        cells, running = _measure_all(settings, cells_wanted, peers, redis, stores, statuses)
    finally:
        redis.stop()
        stores.stop()
        benchlib.stop_all()
    return _report(settings, cells, running, statuses, cells_wanted, info)


def _measure_all(
    settings: Settings,
    cells_wanted: Mapping[str, tuple[str, ...]],
    peers: Mapping[str, PeerEnv],
    redis: RedisServer,
    stores: StoreServers,
    statuses: dict[str, AppStatus],
) -> tuple[dict[tuple[str, str, str], Cell], list[RunningApp]]:
    """Start the apps, then measure round-robin: run 1 of every app and path, run 2, ..."""
    logs = RESULTS_DIR / "logs"
    to_start: list[tuple[AppSpec, tuple[str, ...], str]] = []
    for spec in APPS:
        if spec.id not in cells_wanted:
            continue
        python = sys.executable
        if spec.peer:
            env = peers[spec.peer]
            if env.python is None:
                statuses[spec.id] = AppStatus(spec.id, "skipped", f"{spec.peer}: {env.message}")
                print(f"  ! {spec.id}: skipped ({spec.peer}: {env.message})")
                continue
            python = env.python
        if spec.store == "postgres" and stores.postgres is None:
            statuses[spec.id] = AppStatus(spec.id, "skipped", stores.postgres_problem)
            print(f"  ! {spec.id}: skipped ({stores.postgres_problem})")
            continue
        to_start.append((spec, cells_wanted[spec.id], python))
    print(f"starting {len(to_start)} app servers ...")
    running = start_apps(to_start, redis.url, stores, logs, statuses)
    for proto in ("asgi", "wsgi"):
        bare_id = f"{proto}/bare"
        if bare_id in cells_wanted and statuses.get(bare_id, AppStatus("", "")).status != "ok":
            raise HarnessError(
                f"the bare {proto.upper()} app did not start: {statuses[bare_id].detail}"
            )
    for app in running:
        if "replay" in app.paths:
            prime_replay(app)

    cells: dict[tuple[str, str, str], Cell] = {}
    for app in running:
        for path in app.paths:
            cells[(app.spec.protocol, app.spec.name, path)] = Cell(
                app.spec.protocol, app.spec.name, path
            )
    for run in range(1, settings.runs + 1):
        for app in running:  # round-robin: every app once per run
            for path in app.paths:
                if not app.alive():
                    sample = Sample(run=run, error=f"server died (see {app.log.name})")
                else:
                    sample = measure_quietest(
                        functools.partial(measure, app, path, run, settings, redis, stores),
                        settings.remeasure,
                        app.alive,
                    )
                cells[(app.spec.protocol, app.spec.name, path)].samples.append(sample)
                _progress(run, settings.runs, app, path, sample)
                if redis.proc.poll() is not None:
                    raise HarnessError(
                        f"redis-server exited ({redis.proc.returncode}) during the run"
                    )
    for app in running:
        if not app.alive():
            statuses[app.spec.id] = AppStatus(app.spec.id, "failed", "died during the run")
    fill_ratios(cells)
    return cells, running


def _report(
    settings: Settings,
    cells: Mapping[tuple[str, str, str], Cell],
    running: Sequence[RunningApp],
    statuses: Mapping[str, AppStatus],
    cells_wanted: Mapping[str, tuple[str, ...]],
    info: Mapping[str, Any],
) -> int:
    """Print the table (and verdicts), write the JSON and the chart; returns the exit code."""
    mode = "smoke" if settings.smoke else "full"
    rows = [c.summary() for c in cells.values()]
    order = {a.id: i for i, a in enumerate(APPS)}
    rows.sort(key=lambda r: (order[f"{r['protocol']}/{r['app']}"], ALL.index(r["path"])))
    print_table(rows, statuses)
    for app in running:
        for note in app.notes:
            print(f"note: {app.spec.id}: {note}")
    warnings = sanity_warnings(rows)
    for w in warnings:
        print(f"warning: {w}")

    verdicts = [] if settings.smoke else evaluate_targets(rows, statuses, cells_wanted)
    if verdicts:
        print_verdicts(verdicts)

    stem = "smoke" if settings.smoke else "latest"
    chart = RESULTS_DIR / ("smoke-ratios.png" if settings.smoke else "ratios.png")
    title = (
        f"idempotency middleware vs bare app - {dt.date.today()} - {info['cpu_model']}, "
        f"{info['cores']} cores, median of {settings.runs} x {settings.duration} s"
    )
    chart_problem = draw_chart(rows, chart, title)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": mode,
        "settings": asdict(settings),
        "method": {
            "asgi": "uvicorn, 1 worker, --loop uvloop --http httptools --no-access-log",
            "wsgi": "gunicorn, 1 worker x 8 threads, gthread",
            "load": f"wrk -t1 -c{settings.connections} --latency, Lua scripts in benchmarks/lua",
            "figures": "median over runs; ratio = median of per-run ratios to the bare app "
            "of the same protocol and path",
        },
        "machine": info,
        "apps": {k: asdict(v) for k, v in statuses.items()},
        "app_notes": {a.spec.id: a.notes for a in running if a.notes},
        "results": rows,
        "warnings": warnings,
        "targets": verdicts,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / f"{stem}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(REPO_ROOT)}", end="")
    print(
        f" and {chart.relative_to(REPO_ROOT)}" if chart_problem is None else f" ({chart_problem})"
    )

    if settings.smoke:
        return 0
    return 1 if any(v["verdict"] == "FAIL" for v in verdicts) else 0


def _progress(run: int, runs: int, app: RunningApp, path: str, s: Sample) -> None:
    where = f"[{run}/{runs}] {app.spec.id:<22} {path:<18}"
    if s.error:
        print(f"{where} error: {s.error[:160]}")
        return
    extra = f"  non-2xx {s.non2xx}" if s.non2xx else ""
    if noisy(s.other_cpu):
        stolen = f", steal {s.steal:.0%}" if s.steal else ""
        extra += f"  (other processes took {s.other_cpu:.0%} of the CPU{stolen})"
    if s.tries > 1:
        extra += f"  [quietest of {s.tries} tries]"
    redis = _fmt(s.redis_cmds_per_req, ".2f")
    print(
        f"{where} {s.rps:8.0f} req/s  p50 {s.p50_ms:6.2f} ms  p99 {s.p99_ms:6.2f} ms  "
        f"redis {redis}/req{extra}"
    )


if __name__ == "__main__":
    sys.exit(main())
