"""Where the middleware's own time goes on one in-process cell: a cProfile breakdown.

``instructions.py`` says how much a path costs; this says where, for the cells that miss
their target. It drives the same minimal apps as ``inproc_driver.py`` (in process, ASGI 16
in flight), bare and ours, under cProfile, and prints every function the run entered (ours,
the driver's, the event loop's) by its own time per request and as a share of the whole
run; the bare app's total beside it tells how much of that is ours. "entries/req" counts a
generator once per resumption, so a plan resumed once shows 2.00. cProfile adds a fixed
cost to every call, so many small calls look heavier than they are under callgrind: read
the shares as a ranking, not as instruction counts.

    python benchmarks/where_time_goes.py asgi memory first
    python benchmarks/where_time_goes.py wsgi redis replay --top 30   # needs REDIS_URL
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
from collections import defaultdict
from typing import Any

import inproc_driver as driver

PACKAGE = os.sep + "idempotent_middleware" + os.sep


def _profiled(kind: str, app: Any, path: str, n: int) -> tuple[float, pstats.Stats]:
    """Total seconds of ``n`` requests under cProfile, and their stats (after a warm-up)."""
    run = driver.run_asgi if kind == "asgi" else driver.run_wsgi

    def drive(tag: str, count: int) -> None:
        os.environ["BENCH_RUN"] = tag  # fresh keys per pass on the first-request path
        if kind == "asgi":
            asyncio.run(run(app, path, count))  # type: ignore[arg-type]
        else:
            run(app, path, count)

    drive(f"warm-{os.getpid()}", 200)
    profile = cProfile.Profile()
    profile.enable()
    drive(f"measured-{os.getpid()}", n)
    profile.disable()
    stats = pstats.Stats(profile)
    return stats.total_tt, stats  # type: ignore[attr-defined]


def _where(filename: str) -> str:
    if PACKAGE in filename:
        return "idempotent_middleware/" + filename.split(PACKAGE, 1)[1]
    if filename.startswith("~") or filename.startswith("<"):
        return "builtin"
    return os.path.join(*filename.split(os.sep)[-2:])  # "asyncio/base_events.py"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["asgi", "wsgi"])
    # SQLite and PostgreSQL need a file or a server set up by hand: instructions.py does that.
    parser.add_argument("store", choices=["memory", "redis"])
    parser.add_argument("path", choices=["first", "replay", "pass"])
    parser.add_argument("-n", type=int, default=20000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    build = driver.build_asgi if args.kind == "asgi" else driver.build_wsgi
    bare, _ = _profiled(args.kind, build("minimal-bare", args.store), args.path, args.n)
    total, stats = _profiled(args.kind, build("minimal-ours", args.store), args.path, args.n)
    n = args.n
    print(f"{args.kind} {args.store} {args.path}: {n} requests under cProfile")
    print(f"  bare app: {bare * 1e6 / n:.1f} us/request; ours: {total * 1e6 / n:.1f} us/request")
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_module: dict[str, float] = defaultdict(float)
    rows = []
    for (filename, line, name), (_cc, calls, own, _cum, _callers) in raw.items():
        where = _where(filename)
        by_module[where] += own
        rows.append((own, calls, f"{where}:{line}({name})"))
    print(f"\n{'us/req':>7} {'share':>6} {'entries/req':>11}  function (own time)")
    for own, calls, label in sorted(rows, reverse=True)[: args.top]:
        print(f"{own * 1e6 / n:7.2f} {100 * own / total:5.1f}% {calls / n:11.2f}  {label}")
    print(f"\n{'us/req':>7} {'share':>6}  module (own time)")
    for where, own in sorted(by_module.items(), key=lambda kv: -kv[1])[: args.top]:
        print(f"{own * 1e6 / n:7.2f} {100 * own / total:5.1f}%  {where}")


if __name__ == "__main__":
    main()
