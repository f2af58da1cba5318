"""R3: one ``RedisPersistenceLayer`` used from several threads that each run a fresh event
loop per job (a thread-pool worker calling ``asyncio.run``): the first store call on a new
loop forgets the closed loops' executors, and two threads forgetting the same closed loop both
``del`` it from the ``WeakKeyDictionary``. The second gets ``KeyError`` out of the store call:
an untyped error before the claim (a 500 under the ASGI middleware, a crash of the job under
``idempotent_function``) instead of a run or a typed store error.
"""

from __future__ import annotations

import asyncio
import threading

from idempotent_middleware import (
    IdempotencyConfig,
    RedisPersistenceLayer,
    idempotent_function,
)


def test_r3_asyncio_run_per_job_in_threads_never_raises_keyerror(redis_url: str) -> None:
    layer = RedisPersistenceLayer(url=redis_url)

    @idempotent_function(
        data_keyword_argument="job_id",
        persistence_store=layer,
        config=IdempotencyConfig(lease_seconds=5),
    )
    async def job(job_id: str) -> str:
        return job_id

    failures: list[BaseException] = []
    done: list[str] = []

    def worker(name: int) -> None:
        for n in range(150):
            try:
                done.append(asyncio.run(job(job_id=f"{name}-{n}")))
            except BaseException as exc:  # what the job's caller sees
                failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    layer.close()
    kinds = sorted({type(exc).__name__ for exc in failures})
    assert not failures, f"{len(failures)} of {6 * 150} jobs failed: {kinds}"
    assert len(done) == 6 * 150
