"""The deployments of the server matrix: one matrix app under one server, two workers each.

A deployment runs ``tests/e2e/matrix/``'s app (Starlette for ASGI, Flask for WSGI, or Django)
under one server, with the server's own ``--workers 2`` where it has workers, else two server
processes on two ports (Daphne, Waitress) that the tests use in turn. A server that is not
installed is skipped with the reason (``pytest.importorskip``, or no ``uwsgi`` executable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.e2e.conftest import ServerGroup, start_server, uwsgi_binary

ASGI = "tests.e2e.matrix.asgi_app:app"
WSGI = "tests.e2e.matrix.wsgi_app:app"
DJANGO_ASGI = "tests.e2e.matrix.django_app:asgi_app"
DJANGO_WSGI = "tests.e2e.matrix.django_app:wsgi_app"
WORKERS = 2


@dataclass(frozen=True)
class Deployment:
    kind: str  # a server in ``tests.e2e.conftest.COMMANDS``
    target: str
    needs: tuple[str, ...] = ()  # modules the server imports (skipped when missing)
    one_process: bool = False  # no workers option: two processes stand for two workers
    extra_args: tuple[str, ...] = ()


#: Daphne cancels an app its client left after ``--application-close-timeout`` (10 s by
#: default; checked once a second): 1 s makes that happen while a 3 s handler still runs.
DAPHNE_ARGS = ("--application-close-timeout", "1")

DEPLOYMENTS = {
    "uvicorn": Deployment("uvicorn", ASGI),
    "gunicorn": Deployment("gunicorn", WSGI),
    "hypercorn-asyncio": Deployment("hypercorn", ASGI, ("hypercorn",)),
    "hypercorn-trio": Deployment("hypercorn-trio", ASGI, ("hypercorn", "trio")),
    "granian-asgi": Deployment("granian-asgi", ASGI, ("granian",)),
    "granian-wsgi": Deployment("granian-wsgi", WSGI, ("granian",)),
    "daphne": Deployment("daphne", ASGI, ("daphne",), one_process=True, extra_args=DAPHNE_ARGS),
    "waitress": Deployment("waitress", WSGI, ("waitress",), one_process=True),
    "uwsgi": Deployment("uwsgi", WSGI),
    "django-asgi-uvicorn": Deployment("uvicorn", DJANGO_ASGI, ("django",)),
    "django-asgi-daphne": Deployment(
        "daphne", DJANGO_ASGI, ("django", "daphne"), one_process=True, extra_args=DAPHNE_ARGS
    ),
    "django-wsgi-gunicorn": Deployment("gunicorn", DJANGO_WSGI, ("django",)),
}


def skip_unless_installed(name: str) -> Deployment:
    deployment = DEPLOYMENTS[name]
    for module in deployment.needs:
        pytest.importorskip(
            module, reason=f"{name}: Python package {module!r} is not installed (pip install)"
        )
    if deployment.kind == "uwsgi" and uwsgi_binary() is None:
        pytest.skip(f"{name}: no uwsgi executable (pip install uwsgi compiles it; it did not)")
    return deployment


def start_deployment(name: str, redis_url: str, log_dir: Path) -> ServerGroup:
    """Start deployment ``name`` on ``redis_url`` (skips when its server is not installed)."""
    spec = skip_unless_installed(name)
    group = ServerGroup(name, [])
    try:
        for index in range(WORKERS if spec.one_process else 1):
            group.servers.append(
                start_server(
                    f"{name}-{index}",
                    spec.kind,
                    spec.target,
                    workers=1 if spec.one_process else WORKERS,
                    log_dir=log_dir,
                    redis_url=redis_url,
                    extra_args=spec.extra_args,
                )
            )
    except BaseException:
        group.stop()
        raise
    return group


def runs(counter: redis.Redis, key: str) -> int:
    """How many times a matrix app started a run for ``key`` (every worker, every server)."""
    return int(counter.get(f"matrix:runs:{key}") or 0)


def stored_body(counter: redis.Redis, key: str) -> bytes | None:
    """The body the (last) run for ``key`` produced, as the app returned it."""
    value = counter.get(f"matrix:body:{key}")
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode()
