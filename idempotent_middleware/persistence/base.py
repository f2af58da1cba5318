"""``BasePersistenceLayer`` and ``DataRecord``: the Powertools persistence API, fixed.

The names follow AWS Lambda Powertools' ``BasePersistenceLayer`` (public template methods on top
of four abstract I/O methods) so its users feel at home. What differs, on purpose:

- Per-function settings live in an immutable :class:`KeyScheme`, never in attributes that one
  call overwrites under another (the seed's shared ``function_name``).
- Every record carries an owner token; completion, release and renewal are fenced by it.
- The payload hash is stored on every record, completed ones included.
- ``response_data`` is ``bytes``; a falsy result is still a result (``b"0"``, ``b"[]"``).
- The template methods are written once, as plans of I/O steps (see ``_steps``), and run
  either by ``drive`` (sync) or ``drive_async``.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import hashlib
import json
import logging
import math
import pathlib
import random
import struct
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import jmespath
import jmespath.parser

from .._forksafe import renew_after_fork
from .._jmespath_functions import jmespath_options
from .._steps import DELETE, GET, PUT, UPDATE, Plan, Step, drive, drive_async
from ..config import IdempotencyConfig
from ..exceptions import (
    IdempotencyConfigurationError,
    IdempotencyCorruptRecordError,
    IdempotencyInvalidRemainingTimeError,
    IdempotencyInvalidStatusError,
    IdempotencyItemAlreadyExistsError,
    IdempotencyKeyError,
    IdempotencyNoTimeLeftError,
    IdempotencyUnhashableDataError,
    IdempotencyValidationError,
)
from .record import STATUS_COMPLETED, STATUS_INPROGRESS, DataRecord

logger = logging.getLogger("idempotent_middleware")

_random_bits = random.getrandbits

# --- Record encoding -----------------------------------------------------------------------
# Bytes stay bytes: no base64, no JSON, no pickle. Layout (big endian):
#   version u8 | status u8 | owner 16 bytes | expiry f64 s | lease expiry u64 ms |
#   flags u8 | hash length u8 | payload hash | response data (the rest)
# The owner sits at bytes 3..18 (Lua's 1-based ``string.sub(v, 3, 18)``) so the fencing scripts
# compare it without decoding anything else.
FORMAT_VERSION = 1
_HEADER = struct.Struct(">BB16sdQBB")
_STATUS_CODES = {STATUS_INPROGRESS: ord("I"), STATUS_COMPLETED: ord("C")}
_STATUS_NAMES = {code: name for name, code in _STATUS_CODES.items()}
_HAS_RESPONSE = 1


def encode_record(record: DataRecord) -> bytes:
    """Serialise a record for a byte store (Redis)."""
    payload_hash = record.payload_hash.encode("ascii")
    status = _STATUS_CODES.get(record.status)
    if status is None:  # a record whose status was assigned after construction
        raise IdempotencyInvalidStatusError(f"unknown idempotency record status {record.status!r}")
    head = _HEADER.pack(
        FORMAT_VERSION,
        status,
        record.owner,
        record.expiry_timestamp or 0.0,
        record.in_progress_expiry_timestamp or 0,
        _HAS_RESPONSE if record.response_data is not None else 0,
        len(payload_hash),
    )
    return head + payload_hash + (record.response_data or b"")


def decode_record(key: str, raw: bytes) -> DataRecord:
    """Parse bytes written by :func:`encode_record`; anything else is a typed error."""
    try:
        version, status, owner, expiry, lease, flags, hash_len = _HEADER.unpack_from(raw)
        if version != FORMAT_VERSION or status not in _STATUS_NAMES:
            raise ValueError(f"unknown format {version}/{status}")
        start = _HEADER.size + hash_len
        if len(raw) < start:
            raise ValueError("truncated")
        payload_hash = raw[_HEADER.size : start].decode("ascii")
    except (struct.error, ValueError) as exc:
        raise IdempotencyCorruptRecordError(f"undecodable record under {key!r}: {exc}") from exc
    # Positional (the field order of DataRecord): half the cost of keywords, on every replay.
    return DataRecord(
        key,  # idempotency_key
        _STATUS_NAMES[status],  # status
        expiry or None,  # expiry_timestamp
        lease or None,  # in_progress_expiry_timestamp
        raw[start:] if flags & _HAS_RESPONSE else None,  # response_data
        payload_hash,
        owner,
    )


class HeldUnread:
    """What ``_claim_record`` answers when the key is held but the layer did not say by
    what (a Powertools layer raising a bare ``IdempotencyItemAlreadyExistsError()``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HELD_UNREAD"


HELD_UNREAD = HeldUnread()


# --- Hashing ---------------------------------------------------------------------------------
#: Value types whose ``str()`` is a stable text of the value itself (never an address).
_STABLE_TEXT = (
    decimal.Decimal,
    datetime.date,  # datetime.datetime too
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
    enum.Enum,
    pathlib.PurePath,
)


def _json_default(value: Any) -> Any:
    """Serialise the usual non-JSON types deterministically (for hashing only).

    Anything else is refused (``IdempotencyUnhashableDataError``, a ``TypeError`` as
    Powertools' encoder raises): the old ``str()`` fallback keyed a plain object by its memory
    address, which the next object reuses, so a caller could replay another's result.
    """
    if isinstance(value, (bytes, bytearray)):
        return value.decode("latin-1")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, _STABLE_TEXT):
        return str(value)
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise IdempotencyUnhashableDataError(
        f"a {type(value).__qualname__} has no stable JSON form to key on: pass JSON types, a "
        "dataclass or a pydantic model, or select fields with event_key_jmespath"
    )


def lease_from_remaining(remaining_millis: Any, cap_seconds: float) -> float:
    """The lease (seconds) for an invocation with ``remaining_millis`` left, at most
    ``cap_seconds``.

    Under a millisecond is no time left (Powertools issue 4759: 0 is not "not given"); the
    lease would be expired once written and a duplicate could run beside this one. A value
    that is not a finite number is refused, typed; a huge one is capped (the store's lease
    field is a 64-bit millisecond time).
    """
    if isinstance(remaining_millis, bool) or not isinstance(
        remaining_millis, (int, float, decimal.Decimal)
    ):
        raise IdempotencyInvalidRemainingTimeError(
            f"remaining time {remaining_millis!r} is not a number of milliseconds"
        )
    try:
        millis = float(remaining_millis)
    except OverflowError:  # an int past float's range: capped, or long past
        if remaining_millis > 0:
            return cap_seconds
        millis = 0.0
    except ValueError as exc:  # a signalling Decimal NaN
        raise IdempotencyInvalidRemainingTimeError(
            f"remaining time {remaining_millis!r} ms is not a finite number"
        ) from exc
    if math.isnan(millis) or math.isinf(millis):
        raise IdempotencyInvalidRemainingTimeError(
            f"remaining time {remaining_millis!r} ms is not a finite number"
        )
    if millis < 1:
        raise IdempotencyNoTimeLeftError(
            f"remaining_time_in_millis={remaining_millis}: no time left to run"
        )
    return min(millis / 1000, cap_seconds)


#: Built once: ``json.dumps`` with these options builds an encoder per call. Holds no
#: state between calls (each ``encode`` makes its own C encoder), so threads share it.
_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
)


#: The C encoder ``_CANONICAL_ENCODER.encode`` builds per call, built once, without the
#: circular-reference check: only for documents ``json`` parsed, which cannot hold a cycle.
#: Same function, the options read off ``_CANONICAL_ENCODER`` as ``JSONEncoder.iterencode``
#: passes them (3.10 to 3.13), so the same bytes; None where the C accelerator is missing.
_MAKE_ENCODER = getattr(json.encoder, "c_make_encoder", None)
_PARSED_ENCODER = (
    None
    if _MAKE_ENCODER is None
    else _MAKE_ENCODER(
        None,  # no circular-reference markers
        _CANONICAL_ENCODER.default,
        json.encoder.encode_basestring_ascii
        if _CANONICAL_ENCODER.ensure_ascii
        else json.encoder.encode_basestring,
        _CANONICAL_ENCODER.indent,
        _CANONICAL_ENCODER.key_separator,
        _CANONICAL_ENCODER.item_separator,
        _CANONICAL_ENCODER.sort_keys,
        _CANONICAL_ENCODER.skipkeys,
        _CANONICAL_ENCODER.allow_nan,
    )
)


def canonical_json(data: Any) -> bytes:
    """Sorted keys, no whitespace: the same logical document always gives the same bytes
    (pinned by tests/core/test_fingerprint_pinned.py).

    A lone surrogate (valid JSON text: ``"\\ud800"``) has no UTF-8 form: refused as
    unhashable data, a key error (400 over HTTP, as there) and a ``TypeError`` for callers
    that catch those, instead of a bare ``UnicodeEncodeError`` out of the decorators.
    """
    return _utf8(_CANONICAL_ENCODER.encode(data))


def canonical_parsed_json(document: Any) -> bytes:
    """``canonical_json`` of a document ``json`` parsed (no cycles, JSON types only), for
    half the instructions: the encoder is not rebuilt per document."""
    if _PARSED_ENCODER is None:
        return canonical_json(document)
    return _utf8("".join(_PARSED_ENCODER(document, 0)))


def _utf8(text: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as exc:
        raise IdempotencyUnhashableDataError(
            f"the data holds a lone surrogate ({exc.reason}) with no UTF-8 form to key on"
        ) from exc


def is_missing_idempotency_key(data: Any) -> bool:
    """True when the key expression found nothing usable (the seed's rule, kept)."""
    if isinstance(data, (tuple, list)):
        return all(x is None for x in data)
    if isinstance(data, dict):
        return all(x is None for x in data.values())
    if isinstance(data, (int, float, bool)):
        return False
    return not data


@dataclass(frozen=True)
class KeyScheme:
    """Everything one decorated function or one middleware needs to turn data into keys.

    Immutable and built once (JMESPath compiled here), so any number of threads and tasks can
    share it; this replaces the seed's per-call mutation of the persistence layer.
    """

    scope: str
    config: IdempotencyConfig
    key_expression: jmespath.parser.ParsedResult | None
    validation_expression: jmespath.parser.ParsedResult | None
    options: jmespath.Options | None
    hash_function: Callable[[bytes], Any]

    @classmethod
    def build(
        cls, config: IdempotencyConfig, scope: str, key_jmespath: str | None = None
    ) -> KeyScheme:
        key_expr = config.event_key_jmespath if key_jmespath is None else key_jmespath
        options = jmespath_options(config.jmespath_options, config.max_request_body_bytes)
        name = config.hash_function
        return cls(
            scope=scope,
            config=config,
            key_expression=jmespath.compile(key_expr) if key_expr else None,
            validation_expression=(
                jmespath.compile(config.payload_validation_jmespath)
                if config.payload_validation_jmespath
                else None
            ),
            options=options,
            hash_function=getattr(hashlib, name, None) or functools.partial(hashlib.new, name),
        )

    def generate_hash(self, data: Any) -> str:
        raw = data if isinstance(data, bytes) else canonical_json(data)
        return str(self.hash_function(raw).hexdigest())

    def key_material(self, data: Any) -> Any:
        if self.key_expression is not None:
            return self.key_expression.search(data, options=self.options)
        return data

    def hashed_key(self, material: Any, tenant: str | None = None) -> str | None:
        """``"{scope}#{hash}"``, or None when the material is missing and not required."""
        if is_missing_idempotency_key(material):
            if self.config.raise_on_no_idempotency_key:
                raise IdempotencyKeyError("no idempotency key found in the data")
            return None
        hashed = material if tenant is None else [tenant, material]
        return f"{self.scope}#{self.generate_hash(hashed)}"

    is_missing = staticmethod(is_missing_idempotency_key)

    def payload_hash(self, data: Any) -> str:
        """The fingerprint of the fields ``payload_validation_jmespath`` selects; ``""`` (no
        validation) when it is not configured, as the seed's ``_get_hashed_payload``: a
        redelivered event whose other fields changed (a timestamp) replays.

        The HTTP engine fingerprints method, path and body itself when it is not configured.
        """
        if self.validation_expression is None:
            return ""
        return self.generate_hash(self.validation_expression.search(data, options=self.options))


# --- Local cache -----------------------------------------------------------------------------
def _cached_size(record: DataRecord) -> int:
    return len(record.idempotency_key) + len(record.response_data or b"")


class LRUDict:
    """A small thread-safe LRU map for completed records (never in-progress ones).

    Bounded in entries and in bytes (key plus response): 256 entries of 1 MiB responses would
    otherwise pin 256 MiB per process.
    """

    def __init__(self, max_items: int, max_bytes: int = 16 * 1024 * 1024) -> None:
        self._items: OrderedDict[str, DataRecord] = OrderedDict()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self.bytes = 0
        self._lock = threading.Lock()
        renew_after_fork(self, "_lock", quiesce=True)  # entries and byte count kept in step

    def grow(self, max_items: int, max_bytes: int) -> None:
        """Several callers share a layer's cache: it honours the largest bounds asked for."""
        with self._lock:
            self._max_items = max(self._max_items, max_items)
            self._max_bytes = max(self._max_bytes, max_bytes)

    def get(self, key: str) -> DataRecord | None:
        with self._lock:
            record = self._items.get(key)
            if record is not None:
                self._items.move_to_end(key)
            return record

    def __setitem__(self, key: str, record: DataRecord) -> None:
        size = _cached_size(record)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= _cached_size(old)
            if size > self._max_bytes:
                return  # larger than the whole cache: never cached
            self._items[key] = record
            self.bytes += size
            while len(self._items) > self._max_items or self.bytes > self._max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= _cached_size(evicted)

    def pop(self, key: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= _cached_size(old)

    def __len__(self) -> int:
        return len(self._items)


def new_owner() -> bytes:
    """16 random bytes: unique per execution (uniqueness, not secrecy, is what fencing needs).

    ``random`` is seeded from the OS and reseeded in forked workers by CPython itself.
    """
    return _random_bits(128).to_bytes(16, "big")


class BasePersistenceLayer(ABC):
    """Abstract persistence layer: four I/O methods (sync and async), the rest written once."""

    #: The store label of decision events and metrics ("memory", "redis", ...); a layer that
    #: leaves it empty is labelled by its class name.
    kind: ClassVar[str] = ""

    def __init__(self) -> None:
        self.configured = False
        self._scheme: KeyScheme | None = None
        self._cache: LRUDict | None = None
        self._cache_lock = threading.Lock()
        renew_after_fork(self, "_cache_lock")

    # --- Configuration --------------------------------------------------------------------
    def configure(self, config: IdempotencyConfig, function_name: str | None = None) -> KeyScheme:
        """Build the scheme for ``function_name`` and make it the default of the public methods.

        Callers that share a layer (several decorated functions, several middlewares) keep the
        returned scheme and pass it as ``scheme=``; the default only serves direct calls.
        """
        scheme = KeyScheme.build(config, function_name or "")
        self.enable_local_cache(config)
        self._scheme = scheme
        self.configured = True
        return scheme

    def enable_local_cache(self, config: IdempotencyConfig) -> None:
        """Create the layer's cache if this caller wants one.

        Whether to read and write it stays each caller's decision (``use_local_cache`` of its
        own config, passed as ``use_cache`` to the core): a caller that did not ask for the
        cache never replays from it.
        """
        if config.use_local_cache:
            with self._cache_lock:
                if self._cache is None:
                    self._cache = LRUDict(
                        config.local_cache_max_items, config.local_cache_max_bytes
                    )
                else:
                    self._cache.grow(config.local_cache_max_items, config.local_cache_max_bytes)

    def _scheme_for(self, scheme: KeyScheme | None) -> KeyScheme:
        chosen = scheme or self._scheme
        if chosen is None:
            raise RuntimeError("call configure(config, function_name) before using the layer")
        return chosen

    # --- Hashing helpers (the seed's names) -----------------------------------------------
    def _get_hashed_idempotency_key(self, data: Any, scheme: KeyScheme | None = None) -> str | None:
        s = self._scheme_for(scheme)
        return s.hashed_key(s.key_material(data))

    def _get_hashed_payload(self, data: Any, scheme: KeyScheme | None = None) -> str:
        return self._scheme_for(scheme).payload_hash(data)

    def _generate_hash(self, data: Any, scheme: KeyScheme | None = None) -> str:
        return self._scheme_for(scheme).generate_hash(data)

    is_missing_idempotency_key = staticmethod(is_missing_idempotency_key)

    def _validate_payload(self, payload_hash: str, stored_data_record: DataRecord) -> None:
        """Raise 422's error when the stored fingerprint differs from this request's.

        ``""`` is "this caller does not validate" (the seed's ``payload_validation_enabled``
        off): nothing to compare, whatever the record holds. A caller that validates compares
        even with a record written without validation, as the seed does.
        """
        if payload_hash and stored_data_record.payload_hash != payload_hash:
            raise IdempotencyValidationError(
                "the idempotency key was used with a different payload"
            )

    # --- Expiry helpers ---------------------------------------------------------------------
    @staticmethod
    def _get_expiry_timestamp(expires_after_seconds: float) -> float:
        return time.time() + expires_after_seconds

    @staticmethod
    def _get_lease_expiry_millis(lease_seconds: float) -> int:
        return int((time.time() + lease_seconds) * 1000)

    # --- Local cache ------------------------------------------------------------------------
    def _save_to_cache(self, data_record: DataRecord) -> None:
        # In-progress records are never cached: another process may finish or release them.
        if self._cache is not None and data_record.status == STATUS_COMPLETED:
            self._cache[data_record.idempotency_key] = data_record

    def _retrieve_from_cache(self, idempotency_key: str) -> DataRecord | None:
        if self._cache is None:
            return None
        record = self._cache.get(idempotency_key)
        if record is not None and record.is_expired:
            self._cache.pop(idempotency_key)
            return None
        return record

    def _delete_from_cache(self, idempotency_key: str) -> None:
        if self._cache is not None:
            self._cache.pop(idempotency_key)

    # --- Record builders --------------------------------------------------------------------
    @staticmethod
    def new_inprogress_record(
        idempotency_key: str, payload_hash: str, lease_seconds: float, expires_after: float
    ) -> DataRecord:
        # Positional, in DataRecord's field order: keywords cost twice as much per request.
        # One clock reading for both times (what ``_get_expiry_timestamp`` and
        # ``_get_lease_expiry_millis`` compute, without two calls each).
        now = time.time()
        return DataRecord(
            idempotency_key,
            STATUS_INPROGRESS,
            now + expires_after,
            int((now + lease_seconds) * 1000),
            None,
            payload_hash,
            _random_bits(128).to_bytes(16, "big"),  # new_owner(), inlined
        )

    @staticmethod
    def completed_record(
        claim: DataRecord, response_data: bytes, expires_after_seconds: float
    ) -> DataRecord:
        return DataRecord(
            claim.idempotency_key,
            STATUS_COMPLETED,
            time.time() + expires_after_seconds,  # _get_expiry_timestamp, inlined
            None,
            response_data,
            claim.payload_hash,
            claim.owner,
        )

    @staticmethod
    def outcome_unknown_record(claim: DataRecord, expires_after_seconds: float) -> DataRecord:
        """The "executed, outcome unknown" record: the run started and was interrupted.

        Kept like a result (same TTL), so that retries are answered and never run again.
        """
        return DataRecord(
            claim.idempotency_key,
            STATUS_COMPLETED,
            BasePersistenceLayer._get_expiry_timestamp(expires_after_seconds),
            None,
            None,
            claim.payload_hash,
            claim.owner,
        )

    # --- Public template methods, written once as plans -------------------------------------
    def _plan_save_inprogress(
        self, data: Any, scheme: KeyScheme | None, remaining_time_in_millis: int | None
    ) -> Plan[DataRecord | None]:
        s = self._scheme_for(scheme)
        key = s.hashed_key(s.key_material(data))
        if key is None:
            return None
        cached = self._retrieve_from_cache(key) if s.config.use_local_cache else None
        if cached is not None:
            raise IdempotencyItemAlreadyExistsError(cached)
        if remaining_time_in_millis is None:
            lease = s.config.lease_seconds
        else:  # the seed's lease, the invocation's time; never past the record's own life
            lease = lease_from_remaining(remaining_time_in_millis, s.config.expires_after_seconds)
        record = self.new_inprogress_record(
            key, s.payload_hash(data), lease, s.config.expires_after_seconds
        )
        yield Step(PUT, record)
        return record

    def _plan_save_success(
        self, data: Any, result: bytes, claim: DataRecord, scheme: KeyScheme | None
    ) -> Plan[DataRecord]:
        s = self._scheme_for(scheme)
        record = self.completed_record(claim, result, s.config.expires_after_seconds)
        yield Step(UPDATE, record)
        if s.config.use_local_cache:
            self._save_to_cache(record)
        return record

    def _plan_delete_record(self, claim: DataRecord) -> Plan[None]:
        yield Step(DELETE, claim)
        self._delete_from_cache(claim.idempotency_key)

    def _plan_get_record(self, data: Any, scheme: KeyScheme | None) -> Plan[DataRecord | None]:
        s = self._scheme_for(scheme)
        key = s.hashed_key(s.key_material(data))
        if key is None:
            return None
        use_cache = s.config.use_local_cache
        record = self._retrieve_from_cache(key) if use_cache else None
        if record is None:
            record = yield Step(GET, key)
        self._validate_payload(s.payload_hash(data), record)
        if use_cache:
            self._save_to_cache(record)
        return record

    def save_inprogress(
        self,
        data: Any,
        remaining_time_in_millis: int | None = None,
        *,
        scheme: KeyScheme | None = None,
    ) -> DataRecord | None:
        """Claim the key for ``data``; return the claim (keep it: it is the fencing token).

        Raises ``IdempotencyItemAlreadyExistsError`` carrying the live record found instead.
        """
        return drive(self, self._plan_save_inprogress(data, scheme, remaining_time_in_millis))

    async def save_inprogress_async(
        self,
        data: Any,
        remaining_time_in_millis: int | None = None,
        *,
        scheme: KeyScheme | None = None,
    ) -> DataRecord | None:
        plan = self._plan_save_inprogress(data, scheme, remaining_time_in_millis)
        return await drive_async(self, plan)

    def save_success(
        self, data: Any, result: bytes, *, claim: DataRecord, scheme: KeyScheme | None = None
    ) -> DataRecord:
        """Complete ``claim`` with ``result``; ``IdempotencyOwnershipError`` if it was lost."""
        return drive(self, self._plan_save_success(data, result, claim, scheme))

    async def save_success_async(
        self, data: Any, result: bytes, *, claim: DataRecord, scheme: KeyScheme | None = None
    ) -> DataRecord:
        return await drive_async(self, self._plan_save_success(data, result, claim, scheme))

    def delete_record(
        self, data: Any, exception: BaseException | None = None, *, claim: DataRecord
    ) -> None:
        """Release ``claim`` (after the function raised); fenced by its owner token."""
        logger.debug(
            "releasing %s after %r", claim.idempotency_key, exception, extra=self._log_fields(claim)
        )
        drive(self, self._plan_delete_record(claim))

    async def delete_record_async(
        self, data: Any, exception: BaseException | None = None, *, claim: DataRecord
    ) -> None:
        logger.debug(
            "releasing %s after %r", claim.idempotency_key, exception, extra=self._log_fields(claim)
        )
        await drive_async(self, self._plan_delete_record(claim))

    def _log_fields(self, claim: DataRecord) -> dict[str, Any]:
        return {"idempotency_key": claim.idempotency_key, "idempotency_store": self._kind_label()}

    def _kind_label(self) -> str:
        return type(self).kind or type(self).__name__

    def get_record(self, data: Any, *, scheme: KeyScheme | None = None) -> DataRecord | None:
        """Fetch the live record for ``data``; 422's error when its fingerprint differs."""
        return drive(self, self._plan_get_record(data, scheme))

    async def get_record_async(
        self, data: Any, *, scheme: KeyScheme | None = None
    ) -> DataRecord | None:
        return await drive_async(self, self._plan_get_record(data, scheme))

    # --- The I/O: the only part a store implements ----------------------------------------
    @abstractmethod
    def _get_record(self, idempotency_key: str) -> DataRecord:
        """Return the live record or raise ``IdempotencyItemNotFoundError``."""

    @abstractmethod
    def _put_record(self, data_record: DataRecord) -> None:
        """Atomically claim: store ``data_record`` unless a live record holds the key.

        Raise ``IdempotencyItemAlreadyExistsError(existing)`` otherwise. Expired records
        (completed past TTL, in progress past the lease) do not count as live.
        """

    @abstractmethod
    def _update_record(self, data_record: DataRecord) -> None:
        """Replace the record if ``data_record.owner`` still owns it (or nobody does).

        Raise ``IdempotencyOwnershipError`` when another owner holds the key.
        """

    @abstractmethod
    def _delete_record(self, data_record: DataRecord) -> None:
        """Delete the record if ``data_record.owner`` owns it.

        Raise ``IdempotencyOwnershipError`` when another owner holds the key.
        """

    @abstractmethod
    def _renew_lease(self, data_record: DataRecord) -> None:
        """Push the lease of an in-progress record forward by the lease length, fenced."""

    # --- The claim as a value (the core's path; ``_put_record`` stays the contract) --------
    def _claim_record(self, data_record: DataRecord) -> DataRecord | HeldUnread | None:
        """``_put_record``, answering instead of raising: None when the claim was stored,
        else the live record that holds the key (``HELD_UNREAD`` if the layer did not say).

        A replay is an ordinary outcome: a layer that can tell it without an exception
        (the in-memory one) overrides this; every other layer keeps implementing
        ``_put_record`` only, raising ``IdempotencyItemAlreadyExistsError`` as Powertools'.
        """
        try:
            self._put_record(data_record)
        except IdempotencyItemAlreadyExistsError as exc:
            return HELD_UNREAD if exc.old_data_record is None else exc.old_data_record
        return None

    async def _claim_record_async(self, data_record: DataRecord) -> DataRecord | HeldUnread | None:
        try:
            await self._put_record_async(data_record)
        except IdempotencyItemAlreadyExistsError as exc:
            return HELD_UNREAD if exc.old_data_record is None else exc.old_data_record
        return None

    # --- In the handler's own transaction (see ``_claim.current_claim``) -------------------
    def record_executed(
        self, connection: Any, claim: DataRecord, expires_after_seconds: float
    ) -> None:
        """Write "executed, outcome unknown" for ``claim`` on the caller's ``connection``.

        Only a store living in the caller's database can (PostgreSQL); the others refuse.
        """
        raise IdempotencyConfigurationError(
            f"{type(self).__name__} cannot record an execution in your transaction; "
            "use PostgresPersistenceLayer"
        )

    async def record_executed_async(
        self, connection: Any, claim: DataRecord, expires_after_seconds: float
    ) -> None:
        self.record_executed(connection, claim, expires_after_seconds)

    async def _get_record_async(self, idempotency_key: str) -> DataRecord:
        return self._get_record(idempotency_key)

    async def _put_record_async(self, data_record: DataRecord) -> None:
        self._put_record(data_record)

    async def _update_record_async(self, data_record: DataRecord) -> None:
        self._update_record(data_record)

    async def _delete_record_async(self, data_record: DataRecord) -> None:
        self._delete_record(data_record)

    async def _renew_lease_async(self, data_record: DataRecord) -> None:
        self._renew_lease(data_record)

    # --- Readiness and operator inspection (the CLI; health endpoints) ----------------------
    def ping(self) -> None:
        """Check the store answers (for a readiness probe); a store error if it does not."""
        raise NotImplementedError(f"{type(self).__name__} does not implement ping()")

    async def ping_async(self) -> None:
        self.ping()

    def inspect_record(self, storage_key: str) -> dict[str, Any] | None:
        """The record stored under ``storage_key`` as :func:`describe_record` gives it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement inspect_record()")

    def list_records(self, prefix: str = "", limit: int = 100) -> list[dict[str, Any]]:
        """Up to ``limit`` records whose storage key starts with ``prefix``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement list_records()")

    def invalidate_record(self, storage_key: str, force: bool = False) -> bool:
        """Delete a completed record so that the next request executes again.

        A live in-progress record is refused (``IdempotencyAlreadyInProgressError``) unless
        ``force``: its handler may still be running. True if a record was deleted.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement invalidate_record()")


#: Why ``invalidate_record`` refuses a live in-progress record without ``force``.
INVALIDATE_REFUSED = (
    "{key} is in progress: its handler may still be running; invalidate it with force=True "
    "only if you know it is not"
)


def describe_record(record: DataRecord, **extra: Any) -> dict[str, Any]:
    """A record as the inspection methods return it (times are Unix seconds)."""
    lease = record.in_progress_expiry_timestamp
    described: dict[str, Any] = {
        "key": record.idempotency_key,
        "status": record.status,
        "owner": record.owner.hex(),
        "payload_hash": record.payload_hash,
        "expires_at": record.expiry_timestamp,
        "lease_expires_at": None if lease is None else lease / 1000,
        "response": record.response_data,
        "outcome_unknown": record.outcome_unknown,
        "expired": record.is_expired,
    }
    described.update(extra)
    return described


def like_prefix(prefix: str) -> str:
    """A SQL LIKE pattern matching keys starting with ``prefix`` (escape character ``\\``)."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def check_limit(limit: int) -> int:
    if not isinstance(limit, int) or limit < 1:
        raise ValueError("limit must be a positive integer")
    return limit


__all__ = [
    "INVALIDATE_REFUSED",
    "STATUS_COMPLETED",
    "STATUS_INPROGRESS",
    "BasePersistenceLayer",
    "DataRecord",
    "KeyScheme",
    "check_limit",
    "decode_record",
    "describe_record",
    "encode_record",
    "like_prefix",
]
