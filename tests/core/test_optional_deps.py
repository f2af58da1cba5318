"""The package imports and works with its one required dependency (jmespath) only."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_imports_and_runs_without_redis_or_frameworks() -> None:
    script = textwrap.dedent(
        """
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                roots = (
                    "redis", "hiredis", "starlette", "fastapi", "flask", "werkzeug",
                    "psycopg", "psycopg_pool",
                )
                if name.split(".")[0] in roots:
                    raise ImportError(f"blocked {name}")
                return None

        sys.meta_path.insert(0, Block())
        import idempotent_middleware as im

        store = im.InMemoryPersistenceLayer()
        runs = []

        @im.idempotent_function(data_keyword_argument="e", persistence_store=store)
        def f(e):
            runs.append(e)
            return 0

        assert f(e={"a": 1}) == f(e={"a": 1}) == 0 and len(runs) == 1
        try:
            im.RedisPersistenceLayer(url="redis://127.0.0.1:6379/0")
        except ImportError as exc:
            assert "idempotent-middleware[redis]" in str(exc)
        else:
            raise AssertionError("RedisPersistenceLayer started without redis-py")
        assert "psycopg" not in sys.modules
        try:
            im.PostgresPersistenceLayer(dsn="host=127.0.0.1")
        except ImportError as exc:
            assert "idempotent-middleware[postgres]" in str(exc)
        else:
            raise AssertionError("PostgresPersistenceLayer started without psycopg")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
