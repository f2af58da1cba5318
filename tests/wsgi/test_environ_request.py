"""``EnvironRequest`` answers each header lookup from the environ exactly as the header list
``environ_headers`` builds would: one request can never be keyed on one reading and
fingerprinted or passed through on another."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from idempotent_middleware.http.request import HttpRequest
from idempotent_middleware.wsgi import EnvironRequest, environ_headers

_NAMES = [
    "CONTENT_TYPE",
    "HTTP_CONTENT_TYPE",
    "CONTENT_LENGTH",
    "HTTP_CONTENT_LENGTH",
    "HTTP_IDEMPOTENCY_KEY",
    "HTTP_Idempotency_Key",
    "HTTP_IDEMPOTENCY-KEY",
    "HTTP_X_A",
    "HTTP_X",
    "HTTP_",
    "REQUEST_METHOD",
    "QUERY_STRING",
]
_ASKED = [
    b"content-type",
    b"content-length",
    b"idempotency-key",
    b"Idempotency-Key",
    b"idempotency_key",
    b"x-a",
    b"x_a",
    b"x",
    b"",
    b"\xe9",
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(_NAMES), st.text(alphabet="ab\xe9 ", max_size=3)),
        max_size=8,
    ),
    st.booleans(),
)
def test_each_lookup_answers_as_the_header_list(
    items: list[tuple[str, str]], listed_first: bool
) -> None:
    environ = dict(items)
    query = environ.get("QUERY_STRING", "").encode("latin-1")
    reference = HttpRequest("POST", "/", query, environ_headers(environ), environ)
    request = EnvironRequest("POST", "/", environ, environ)
    if listed_first:
        assert request.headers == reference.headers
    for name in _ASKED:
        assert request.header(name) == reference.header(name), name
        assert request.header_values(name) == reference.header_values(name), name
    assert request.headers == reference.headers
    assert request.document() == reference.document()
