"""The README "Operations" section, checked against what the code does."""

from __future__ import annotations

import os
import re
from pathlib import Path

from idempotent_middleware.cli import open_store

README = Path(__file__).resolve().parents[2] / "README.md"


def operations() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Operations")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_sqlite_examples_open_the_file_they_name() -> None:
    """``--store sqlite:///var/lib/app/idem.db`` (the README's example) opens the relative
    path ``var/lib/app/idem.db`` under the current directory, not ``/var/lib/app/idem.db``:
    from anywhere but ``/`` the operator gets "cannot open" or, worse, a fresh empty
    database that answers "no record" for every key."""
    urls = re.findall(r"--store (sqlite:///\S+)", operations())
    assert urls
    for url in urls:
        opened = os.fspath(getattr(open_store(url), "path", ""))
        assert opened.startswith("/var/"), (url, opened)


def test_closing_note_shows_inspect_output_and_a_scrape() -> None:
    """Issue 11's "Done when": the README shows a real ``inspect`` output and a scrape
    excerpt. Neither is anywhere in it (no ``ttl_left_s``, no exposition line)."""
    text = README.read_text(encoding="utf-8")
    assert "ttl_left_s" in text
    assert re.search(r"^idempotency_decisions_total\{.*\} \d", text, re.MULTILINE)
