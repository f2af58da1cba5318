"""``--json``: "one JSON document on stdout" (README), for every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]


def test_conformance_json_is_one_document(tmp_path: Path) -> None:
    """``conformance --json`` lets pytest's progress and summary lines onto stdout before
    the JSON document, so a script piping it to ``jq`` or ``json.loads`` fails."""
    (tmp_path / "mylayer.py").write_text(
        "from idempotent_middleware.persistence.memory import InMemoryPersistenceLayer\n"
        "def factory():\n"
        "    return InMemoryPersistenceLayer()\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    done = subprocess.run(
        [sys.executable, "-m", "idempotent_middleware", "conformance", "mylayer:factory", "--json"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"conformance": "mylayer:factory", "exit": 0}, done.stdout


def test_an_unsupported_url_error_does_not_echo_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A store URL with an unsupported scheme (a typo, ``redis+sentinel://``) is echoed
    whole in the error line, password included, into terminals and CI logs."""
    from idempotent_middleware.cli import main

    code = main(["--store", "redis+sentinel://:s3cret-pass@10.0.0.5:26379/0", "ping"])
    err = capsys.readouterr().err
    assert code == 2
    assert "s3cret-pass" not in err, err


def test_a_driver_error_quoting_the_url_does_not_echo_its_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a driver puts in its message, the URL's password (as written or decoded)
    never reaches the error line."""
    from idempotent_middleware import cli

    def failing(url: str, **options: object) -> None:
        raise ValueError(f"cannot parse {url} (password s3cret@pass)")

    monkeypatch.setattr(cli, "open_store", failing)
    code = cli.main(["--store", "redis://:s3cret%40pass@127.0.0.1:1/0", "ping"])
    err = capsys.readouterr().err
    assert code == 2
    assert "s3cret" not in err, err


def test_a_multi_line_driver_error_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """libpq's connection errors span lines; the CLI promises one line on stderr."""
    from idempotent_middleware.cli import main

    code = main(["--store", "postgresql://app@127.0.0.1:1/app", "ping"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1, err
