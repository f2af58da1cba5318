"""Memory check for streamed responses: does the middleware hold a large body in memory?

Starts our ASGI middleware app under uvicorn (and the bare app as a reference), sends
one keyed POST /stream that answers 100 MiB in 64 KiB chunks, reads it with a client
that counts the bytes and hashes them, and samples the server's RSS (VmRSS in
/proc/<pid>/status) all along. Target: RSS growth under 10 MiB with the body intact.

    python benchmarks/stream_memory.py [--mb 100] [--store redis|memory] [--strict]

Exit status: 0 when the measurement ran (whatever the verdict, unless --strict),
1 with --strict when a target is missed, 2 when the harness itself failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import benchlib
from benchlib import APPS_DIR, HOST, REPO_ROOT, RESULTS_DIR, RedisServer

sys.path.insert(0, str(APPS_DIR))
from stream_pattern import CHUNK_SIZE, chunk, chunk_count

GROWTH_TARGET_MIB = 10.0
IO_TIMEOUT = 15.0  # seconds without progress before a request counts as stuck


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB, or None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


class RssSampler:
    """Samples a process's RSS every few milliseconds on a background thread."""

    def __init__(self, pid: int, interval: float = 0.005) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            value = rss_kib(self.pid)
            if value is not None:
                self.samples.append(value)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class StreamResult:
    app: str
    started: bool = False
    error: str | None = None
    status: int | None = None
    bytes_received: int = 0
    bytes_expected: int = 0
    sha256_ok: bool = False
    seconds: float | None = None
    rss_baseline_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_growth_mib: float | None = None
    redis_memory_growth_mib: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def intact(self) -> bool:
        return self.sha256_ok and self.bytes_received == self.bytes_expected


def expected_digest(mb: int) -> tuple[int, str]:
    """Length and SHA-256 of the body the /stream endpoint sends for ``mb`` MiB."""
    digest = hashlib.sha256()
    count = chunk_count(mb)
    for index in range(count):
        digest.update(chunk(index))
    return count * CHUNK_SIZE, digest.hexdigest()


def fetch_stream(port: int, mb: int, key: str) -> tuple[int, int, str, float]:
    """POST /stream with an Idempotency-Key; returns status, bytes read, SHA-256, seconds.

    The timeout bounds each socket operation, so a stalled stream fails in seconds."""
    conn = http.client.HTTPConnection(HOST, port, timeout=IO_TIMEOUT)
    started = time.monotonic()
    try:
        headers = {"Content-Type": "application/json", "Idempotency-Key": key}
        conn.request("POST", f"/stream?mb={mb}", body=b"{}", headers=headers)
        resp = conn.getresponse()
        digest, size = hashlib.sha256(), 0
        while data := resp.read(CHUNK_SIZE):
            digest.update(data)
            size += len(data)
        return resp.status, size, digest.hexdigest(), time.monotonic() - started
    finally:
        conn.close()


def redis_used_memory(redis: RedisServer | None) -> int | None:
    if redis is None:
        return None
    for line in str(benchlib.redis_call(redis.port, "INFO", "memory")).splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    return None


def measure(
    name: str, module: str, env_extra: dict[str, str], mb: int, redis: RedisServer | None
) -> StreamResult:
    result = StreamResult(app=name)
    step = "start"
    port = benchlib.free_port()
    log = RESULTS_DIR / "logs" / f"stream-{name}.log"
    env = benchlib.app_env(redis.url if redis else None, env_extra)
    proc = benchlib.spawn(benchlib.uvicorn_cmd(sys.executable, module, port), env=env, log=log)
    try:
        problem = benchlib.wait_ready(proc, port, timeout=10.0)
        if problem is not None:
            tail = benchlib.log_tail(log, 3).replace("\n", " | ")
            result.error = f"failed to start: {problem}: {tail}"
            return result
        result.started = True
        # Warm up the code paths (and their allocations) with a small keyed stream.
        step = "warm-up request"
        fetch_stream(port, 1, f"warm-{uuid.uuid4().hex}")
        time.sleep(0.3)
        with RssSampler(proc.pid) as idle:
            time.sleep(0.5)
        if not idle.samples:
            result.error = "could not read the server's RSS"
            return result
        baseline = statistics.median(idle.samples)
        result.bytes_expected, want = expected_digest(mb)
        redis_before = redis_used_memory(redis)
        step = f"{mb} MiB request"
        with RssSampler(proc.pid) as during:
            result.status, result.bytes_received, got, result.seconds = fetch_stream(
                port, mb, f"stream-{uuid.uuid4().hex}"
            )
            time.sleep(0.5)  # catch work done after the last byte (storing the response)
        redis_after = redis_used_memory(redis)
        result.sha256_ok = got == want
        peak = max(during.samples, default=baseline)
        result.rss_baseline_mib = baseline / 1024
        result.rss_peak_mib = peak / 1024
        result.rss_growth_mib = (peak - baseline) / 1024
        if redis_before is not None and redis_after is not None:
            result.redis_memory_growth_mib = (redis_after - redis_before) / 2**20
        if result.status != 200:
            result.notes.append(f"status {result.status}, expected 200")
    except (OSError, http.client.HTTPException) as exc:
        result.error = f"{step}: {type(exc).__name__}: {exc}"
    finally:
        benchlib.stop(proc)
    return result


def report(results: list[StreamResult]) -> list[str]:
    """Print one line per app; returns the failed checks of our app."""
    failures: list[str] = []
    for r in results:
        if r.error:
            print(f"{r.app:<5} ERROR {r.error}")
            if r.app == "ours":
                failures.append(r.error)
            continue
        mib = r.bytes_received / 2**20
        rate = mib / r.seconds if r.seconds else 0.0
        redis_growth = (
            ""
            if r.redis_memory_growth_mib is None
            else f", redis +{r.redis_memory_growth_mib:.1f} MiB"
        )
        print(
            f"{r.app:<5} status {r.status}  {mib:.1f} MiB in {r.seconds:.2f} s ({rate:.0f} MiB/s)  "
            f"body {'intact' if r.intact else 'CORRUPT'}  RSS {r.rss_baseline_mib:.1f} -> "
            f"{r.rss_peak_mib:.1f} MiB (growth {r.rss_growth_mib:+.1f} MiB){redis_growth}"
        )
        for note in r.notes:
            print(f"      note: {note}")
        if r.app == "ours":
            if not r.intact:
                failures.append("body not intact")
            growth = r.rss_growth_mib
            if growth is None or growth >= GROWTH_TARGET_MIB:
                shown = "unknown" if growth is None else f"{growth:.1f} MiB"
                failures.append(f"RSS growth {shown}, target < {GROWTH_TARGET_MIB:.0f} MiB")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="MiB to stream (default 100)")
    parser.add_argument("--store", choices=("redis", "memory"), default="redis")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    benchlib.install_teardown()
    redis: RedisServer | None = None
    try:
        if args.store == "redis":
            redis = RedisServer.start(log=RESULTS_DIR / "logs" / "stream-redis.log")
        print(f"streaming {args.mb} MiB in {CHUNK_SIZE // 1024} KiB chunks, store {args.store}")
        bare = measure("bare", "asgi_bare", {}, args.mb, redis)
        if bare.error or not bare.intact:
            print(f"harness error: the bare app could not stream: {bare.error or 'corrupt body'}")
            return 2
        ours = measure("ours", "asgi_ours", {"BENCH_STORE": args.store}, args.mb, redis)
        results = [bare, ours]
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"harness error: {exc}", file=sys.stderr)
        return 2
    finally:
        if redis is not None:
            redis.stop()
        benchlib.stop_all()
    failures = report(results)
    verdict = "PASS" if not failures else "FAIL"
    print(
        f"{verdict}  ours: RSS growth < {GROWTH_TARGET_MIB:.0f} MiB and body intact"
        + (f"  ({'; '.join(failures)})" if failures else "")
    )
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    out = RESULTS_DIR / "stream_memory.json"
    out.write_text(
        json.dumps(
            {
                "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "mb": args.mb,
                "store": args.store,
                "python": benchlib.python_version(),
                "target_growth_mib": GROWTH_TARGET_MIB,
                "verdict": verdict,
                "results": [asdict(r) | {"intact": r.intact} for r in results],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(REPO_ROOT)}")
    return 1 if failures and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
