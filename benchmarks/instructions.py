"""Instructions per request, counted by callgrind: the middleware's own cost, deterministically.

Wall-clock figures on a shared machine move 5-10% from run to run; the number of instructions
a process executes does not (callgrind counts them, whatever else the machine does). Each
cell runs ``inproc_driver.py`` under ``valgrind --tool=callgrind`` twice, with N1 and N2
requests, and reports (Ir(N2) - Ir(N1)) / (N2 - N1): interpreter start, imports and set-up
cancel out. Requests are in-process calls (ASGI: 16 in flight; WSGI: one after another), so
no server or socket cost is counted on the client side.

    python benchmarks/instructions.py              # every cell, table + JSON
    python benchmarks/instructions.py --smoke      # a few cells, small N (part of .ci/run)
    python benchmarks/instructions.py --only asgi-minimal

Cells:
  *-minimal  a raw ASGI/WSGI callable answering one small JSON body, bare or inside our
             middleware on the in-memory store, Redis, SQLite and PostgreSQL (the servers
             this script starts: redis-server, and the test suite's initdb + pg_ctl one);
             "ours" rows also show the cost minus the bare app of the same path;
  *-app      the wrk benchmark's FastAPI/Flask apps (benchmarks/apps) on Redis, bare, ours
             and the peers whose virtualenv ``benchmarks/run.py`` prepared (skipped
             otherwise), with the ratio to the bare app.
Writes ``benchmarks/results/instructions.json`` (``--json`` to change).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import benchlib
from benchlib import BENCH_DIR, RESULTS_DIR, RedisServer

DRIVER = BENCH_DIR / "inproc_driver.py"
VENVS_DIR = BENCH_DIR / ".venvs"
PEERS = ("idemkit", "ichido", "idemgate")


@dataclass(frozen=True)
class Cell:
    group: str  # asgi-minimal, wsgi-minimal, asgi-app, wsgi-app
    kind: str  # asgi | wsgi
    app: str  # minimal-bare | minimal-floor | minimal-ours | module:NAME
    label: str  # bare, ours-memory, ours-redis, idemkit, ...
    path: str  # first | replay | pass
    store: str = "memory"
    python: str = sys.executable
    env: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return f"{self.group}/{self.label}/{self.path}"


@dataclass
class Row:
    name: str
    group: str
    label: str
    path: str
    per_request: float
    minus_bare: float | None = None
    x_bare: float | None = None


def cells(with_peers: bool) -> list[Cell]:
    out: list[Cell] = []
    for kind in ("asgi", "wsgi"):
        group = f"{kind}-minimal"
        for path in ("first", "replay", "pass"):
            out.append(Cell(group, kind, "minimal-bare", "bare", path))
            out.append(Cell(group, kind, "minimal-ours", "ours-memory", path))
            out.append(Cell(group, kind, "minimal-ours", "ours-redis", path, store="redis"))
            if path == "pass":  # what any middleware class costs there: the floor
                out.append(Cell(group, kind, "minimal-floor", "floor-middleware", path))
            if path != "pass":  # the stores differ only on keyed paths
                out.append(Cell(group, kind, "minimal-ours", "ours-sqlite", path, store="sqlite"))
                out.append(
                    Cell(group, kind, "minimal-ours", "ours-postgres", path, store="postgres")
                )
    for path in ("first", "replay"):
        out.append(Cell("asgi-app", "asgi", "module:asgi_bare", "bare", path))
        out.append(
            Cell(
                "asgi-app",
                "asgi",
                "module:asgi_ours",
                "ours-redis",
                path,
                env=(("BENCH_STORE", "redis"),),
            )
        )
        out.append(Cell("wsgi-app", "wsgi", "module:wsgi_bare", "bare", path))
        out.append(Cell("wsgi-app", "wsgi", "module:wsgi_ours", "ours-redis", path))
        if with_peers:
            for peer in PEERS:
                python = VENVS_DIR / peer / "bin" / "python"
                if python.exists():
                    out.append(
                        Cell(
                            "asgi-app",
                            "asgi",
                            f"module:peer_{peer}",
                            peer,
                            path,
                            python=str(python),
                        )
                    )
    return out


def _instructions(output: Path) -> int:
    match = re.search(rb"^(?:summary|totals): (\d+)", output.read_bytes(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no instruction total in {output}")
    return int(match.group(1))


def count(cell: Cell, n: int, servers: Servers, run: int, workdir: Path) -> int:
    """Instructions of one driver process answering ``n`` requests of ``cell``."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "BENCH_RUN": str(run), **dict(cell.env)}
    env["BENCH_SQLITE"] = str(workdir / f"store.{run}.sqlite3")
    if servers.redis is not None:
        # No flush here: counts run side by side (--jobs), and every count's keys carry
        # its own run number (inproc_driver._keys), so no count sees another's records.
        env["REDIS_URL"] = servers.redis.url
    if servers.postgres_dsn is not None:
        env["POSTGRES_DSN"] = servers.postgres_dsn
    env["PYTHONPATH"] = os.pathsep.join(
        [str(benchlib.REPO_ROOT), str(BENCH_DIR / "apps"), env.get("PYTHONPATH", "")]
    )
    output = workdir / f"callgrind.{run}.out"
    command = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={output}",
        "--dump-instr=no",
        "-q",
        cell.python,
        str(DRIVER),
        "--kind",
        cell.kind,
        "--app",
        cell.app,
        "--store",
        cell.store,
        "--path",
        cell.path,
        "-n",
        str(n),
    ]
    with _counting_lock:
        if _stopping.is_set():
            raise RuntimeError(f"{cell.name}: the run was stopped")
        proc = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        _counting.add(proc)
    try:
        _, stderr = proc.communicate(timeout=1800)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise RuntimeError(f"{cell.name}: driver still running after 1800 s") from None
    finally:
        with _counting_lock:
            _counting.discard(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"{cell.name}: driver failed: {stderr.strip()[-400:]}")
    return _instructions(output)


#: The drivers counting right now (one per job), killed when the run stops early.
_counting: set[subprocess.Popen[str]] = set()
_counting_lock = threading.Lock()
_stopping = threading.Event()


def _stop_counting() -> None:
    with _counting_lock:  # no driver starts after this
        _stopping.set()
        procs = list(_counting)
    for proc in procs:
        with contextlib.suppress(OSError):
            proc.kill()


@dataclass
class Servers:
    """The stores' servers this run started (None: no selected cell needs it)."""

    redis: RedisServer | None = None
    postgres: Any = None

    @property
    def postgres_dsn(self) -> str | None:
        return None if self.postgres is None else str(self.postgres.dsn)

    def start(self, selected: list[Cell]) -> None:
        """Each server is on record as soon as it runs, so ``stop`` stops what started."""
        if any(c.store == "redis" or "redis" in c.label for c in selected):
            self.redis = RedisServer.start()
        if any(c.store == "postgres" for c in selected):
            # The test suite's throw-away PostgreSQL (initdb + pg_ctl in a temp dir).
            sys.path.insert(0, str(benchlib.REPO_ROOT))
            from tests.pg_servers import start_postgres

            self.postgres = start_postgres()
            # Created once, before any count: two drivers creating it at once (--jobs)
            # can both miss it and collide in the catalogue.
            from idempotent_middleware.persistence.postgres import PostgresPersistenceLayer

            PostgresPersistenceLayer(dsn=self.postgres.dsn).create_schema()

    def stop(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.postgres is not None:
            self.postgres.stop()


def _measure_cell(cell: Cell, index: int, n1: int, n2: int, servers: Servers, workdir: Path) -> Row:
    started = time.monotonic()
    low = count(cell, n1, servers, 2 * index, workdir)
    high = count(cell, n2, servers, 2 * index + 1, workdir)
    per_request = (high - low) / (n2 - n1)
    print(
        f"  {cell.name:<34} {per_request:>12,.0f} Ir/request  ({time.monotonic() - started:.0f} s)",
        flush=True,
    )
    return Row(cell.name, cell.group, cell.label, cell.path, round(per_request))


def measure(selected: list[Cell], n1: int, n2: int, servers: Servers, jobs: int) -> list[Row]:
    """Every cell, ``jobs`` at a time: callgrind counts one process's instructions, so
    cells counted side by side give the counts they give alone (only wall time is shared).
    """
    with tempfile.TemporaryDirectory(prefix="instructions-") as tmp:
        workdir = Path(tmp)
        pool = ThreadPoolExecutor(max_workers=jobs)
        futures = [
            pool.submit(_measure_cell, cell, index, n1, n2, servers, workdir)
            for index, cell in enumerate(selected)
        ]
        try:
            # The first failure, Ctrl-C or SIGTERM (benchlib raises SystemExit) stops the
            # run at once: queued cells are dropped and the drivers counting are killed.
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            for future in done:  # a failure first, not after the cells queued before it
                if (failed := future.exception()) is not None:
                    raise failed
            rows = [future.result() for future in futures]
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            _stop_counting()
            raise
        pool.shutdown()
    bare = {(r.group, r.path): r.per_request for r in rows if r.label == "bare"}
    for row in rows:
        base = bare.get((row.group, row.path))
        if row.label == "bare" or base is None:
            continue
        row.minus_bare = round(row.per_request - base)
        row.x_bare = round(row.per_request / base, 3) if base else None
    return rows


def print_table(rows: list[Row]) -> None:
    print(f"\n{'cell':<34} {'Ir/request':>12} {'minus bare':>12} {'x bare':>8}")
    for row in rows:
        minus = "" if row.minus_bare is None else f"{row.minus_bare:,.0f}"
        ratio = "" if row.x_bare is None else f"{row.x_bare:.2f}"
        print(f"{row.name:<34} {row.per_request:>12,.0f} {minus:>12} {ratio:>8}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="few cells, small N (for CI)")
    parser.add_argument(
        "--only",
        help="comma-separated globs on cell names (default: every cell; with --smoke, the "
        "in-memory first-request cells and the ASGI replay)",
    )
    parser.add_argument("--n1", type=int, default=200)
    parser.add_argument("--n2", type=int, default=1000)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "instructions.json")
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="cells counted at once (default: 2, or 1 on one core)",
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install -y valgrind)", file=sys.stderr)
        return 2
    n1, n2 = (32, 96) if args.smoke else (args.n1, args.n2)
    only = args.only or ("*-minimal/*/first,asgi-minimal/*/replay" if args.smoke else "*")
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    selected = [
        c
        for c in cells(with_peers=not args.no_peers)
        if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)
        and not (args.smoke and c.store != "memory")
    ]
    if not selected:
        print(f"no cell matches {only!r}", file=sys.stderr)
        return 2
    benchlib.install_teardown()
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    meta = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "n1": n1,
        "n2": n2,
        "jobs": args.jobs,
        "smoke": args.smoke,
        "only": only,
        "peers": not args.no_peers,
        "cells": len(selected),
        "valgrind": valgrind.stdout.strip() or None,
        **benchlib.host_info(),
    }
    servers = Servers()
    try:
        servers.start(selected)
        print(f"callgrind, N1={n1}, N2={n2}, {len(selected)} cells, {args.jobs} at a time")
        if servers.redis is not None:
            benchlib.redis_call(servers.redis.port, "FLUSHALL")
        rows = measure(selected, n1, n2, servers, args.jobs)
    finally:
        with benchlib.signals_held():  # a second Ctrl-C must not leave a server behind
            servers.stop()
    print_table(rows)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
