"""Each integration imports its framework only when imported itself, and without it fails
with an ImportError naming the extra to install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


@pytest.mark.parametrize(
    ("module", "framework", "extra"),
    [("fastapi", "fastapi", "fastapi"), ("litestar", "litestar", "litestar")],
)
def test_integration_without_its_framework(module: str, framework: str, extra: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == {framework!r}:
                    raise ImportError(f"blocked {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import idempotent_middleware
        import idempotent_middleware.scopes  # needs no framework
        try:
            import idempotent_middleware.{module}
        except ImportError as exc:
            assert "idempotent-middleware[{extra}]" in str(exc), exc
        else:
            raise AssertionError("imported without its framework")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
