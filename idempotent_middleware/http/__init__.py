"""The HTTP half of the core, shared by every adapter and integration. No I/O.

Everything an adapter would otherwise decide lives here, one concern a module, so that a new
integration finds what it reuses by name:

- ``request``: what the core sees of a request (``HttpRequest``);
- ``response``: the stored response and its byte format (``StoredResponse``);
- ``capture``: a bounded copy of a response while it streams (``ResponseCapture``);
- ``routes``: which method and path are covered, with which options (``RouteTable``);
- ``keys``: the ``Idempotency-Key`` header's syntax and the storage key;
- ``fingerprint``: the request fingerprint behind the 422;
- ``problems``: every error as a pre-encoded RFC 9457 problem;
- ``engine``: the decisions, as plans of I/O steps (``HttpIdempotency``).

Rules come from the IETF draft "The Idempotency-Key HTTP Header Field"
(draft-ietf-httpapi-idempotency-key-header; we are modelled on it, it is still a draft),
RFC 9457 (problem details), RFC 8941/9651 (structured fields) and Stripe's documented limits.
This package imports nothing at its own import: each module is imported by name.
"""
