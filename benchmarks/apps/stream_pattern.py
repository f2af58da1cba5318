"""Deterministic streaming payload shared by the streaming endpoint and its client.

The client regenerates the same bytes to check that a streamed body arrives intact
(length and SHA-256) without the server having to send a checksum.
"""

import random

CHUNK_SIZE = 64 * 1024
_BLOCK = random.Random(20261126).randbytes(CHUNK_SIZE)


def chunk(index: int) -> bytes:
    """Chunk ``index``: the shared block stamped with its index, so order matters."""
    return index.to_bytes(8, "big") + _BLOCK[8:]


def chunk_count(megabytes: int) -> int:
    """Number of chunks making up ``megabytes`` MiB."""
    return megabytes * 1024 * 1024 // CHUNK_SIZE
