"""``environ_headers`` gives the same headers whatever its bounded memo of names holds."""

from __future__ import annotations

from typing import Any

import pytest

from idempotent_middleware import wsgi
from idempotent_middleware.http.response import StoredResponse


def reference(environ: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The translation spelled out once, without any memo."""
    special = {"CONTENT_TYPE": b"content-type", "CONTENT_LENGTH": b"content-length"}
    out = []
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            out.append(
                (name[5:].replace("_", "-").lower().encode("latin-1"), value.encode("latin-1"))
            )
        elif name in special:
            out.append((special[name], value.encode("latin-1")))
    return out


def environ(extra: dict[str, str]) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/x",
        "HTTP_CONTENT_TYPE": "text/plain",  # both spellings: order decides the last one
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": "2",
        "HTTP_IDEMPOTENCY_KEY": "k\xe9",
        "HTTP_": "empty name",
        "HTTP_X_" + "Y" * 100: "a long name",
        "wsgi.input": None,
        **extra,
    }


@pytest.mark.parametrize("rounds", [1, 3])
def test_same_headers_as_the_plain_translation(rounds: int) -> None:
    for _ in range(rounds):  # the first round fills the memo, the next ones read it
        given = environ({"HTTP_X_TRACE": "t"})
        assert wsgi.environ_headers(given) == reference(given)


def test_past_the_bound_names_are_still_translated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsgi, "_HEADER_NAMES", {})
    many = {f"HTTP_X_{i}": str(i) for i in range(wsgi._MAX_NAMES + 50)}
    given = environ(many)
    assert wsgi.environ_headers(given) == reference(given)
    assert len(wsgi._HEADER_NAMES) == wsgi._MAX_NAMES
    assert all(len(name) <= wsgi._MAX_NAME_LENGTH for name in wsgi._HEADER_NAMES)
    later = environ({"HTTP_X_NEW": "n"})
    assert wsgi.environ_headers(later) == reference(later)
    assert "HTTP_X_NEW" not in wsgi._HEADER_NAMES


@pytest.mark.parametrize(
    ("status", "reason", "line"),
    [(201, None, "201 Created"), (599, None, "599 Unknown"), (200, "Fine", "200 Fine")],
)
def test_status_line_of_an_answer(status: int, reason: str | None, line: str) -> None:
    seen: list[str] = []
    wsgi._respond(lambda s, h: seen.append(s), StoredResponse(status, [], b"", reason=reason))
    assert seen == [line]
