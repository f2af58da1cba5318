"""Model-based test of the claim / renew / complete / release protocol (issue 8).

A hypothesis ``RuleBasedStateMachine`` runs several executions of a few keys through the real
plans (``plan_claim``, ``plan_renew``, ``plan_complete``, ``plan_release`` driven by
``_steps.drive``) and interleaves them with what goes wrong in production: a renewal that the
store refuses to answer, a renewal that comes after the lease ran out, a crash (the execution
vanishes), a store error before or after a write was applied, lease expiry, and the background
release that ``plan_claim`` schedules after an ambiguous claim. After every step the store is
read back and compared with a reference model written from the contracts (C1 in the lead's
brief for renewals; ``_core``'s docstring and the layers' fencing for the rest).

Invariants checked:
- at most one execution believes it holds a live lease on a key, at any time;
- a replay returns exactly the response stored by the one completed execution of the key, and
  a stored response never changes;
- a stale owner never writes: its renew, complete and release are refused while another owner
  holds the key, and the stored record is unchanged;
- every lost lease is reported: ``plan_renew`` returns False, ``plan_complete`` returns None and
  logs "lease lost", ``plan_release`` logs "lease lost".

Clocks: the in-memory layer and fakeredis run on a fake wall clock (``_model_support``), so
leases expire exactly when the model says. Against a real redis-server the leases are short
real ones and the model knows each lease's end only within a band (the command's round trip):
inside that band both outcomes are legal and the one observed decides the model's next state.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from idempotent_middleware import InMemoryPersistenceLayer, RedisPersistenceLayer
from idempotent_middleware._core import (
    Claimed,
    Replay,
    plan_claim,
    plan_complete,
    plan_release,
    plan_renew,
)
from idempotent_middleware._steps import DELETE, UPDATE, drive
from idempotent_middleware.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyItemNotFoundError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from idempotent_middleware.persistence.base import (
    STATUS_COMPLETED,
    STATUS_INPROGRESS,
    BasePersistenceLayer,
    DataRecord,
)
from tests.core._model_support import BackgroundSteps, FakeClock, FaultyLayer, LogLines

KEYS = ("order-1", "order-2")
#: Mostly one payload per key (replays, 409s, take-overs), sometimes another one (422).
FINGERPRINTS = ("fp-a", "fp-a", "fp-a", "fp-b")
#: No fault most of the time; else the store fails before the write or loses the reply after.
FAULTS = (None, None, None, None, None, None, "before", "after")
NEVER = float("-inf")


@dataclass(frozen=True)
class Env:
    """How one layer kind runs under the model: its clock, its lease and its time steps."""

    lease: float
    expires_after: float
    #: Two instants closer than this are not told apart (ms rounding, clock reads).
    tolerance: float
    steps: tuple[float, ...]
    make_layer: Callable[[], BasePersistenceLayer]
    now: Callable[[], float]
    sleep: Callable[[float], None]


@dataclass(frozen=True)
class Held:
    """What the model says the store holds under one key."""

    owner: bytes
    payload_hash: str
    completed: bool = False
    response: bytes | None = None
    #: Bounds of the ``in_progress_expiry_timestamp`` stored in the record (ms).
    ts_min: int = 0
    ts_max: int = 0
    #: Earliest and latest instant at which the store lets the lease run out.
    end_min: float = 0.0
    end_max: float = 0.0


@dataclass
class Execution:
    name: str
    key: str
    claim: DataRecord
    response: bytes
    #: Until when this execution may believe it holds a live lease (NEVER once told it lost).
    believed_end: float
    running: bool = True
    stored: bool = False


def _lease_held(owner: bytes, payload_hash: str, ts_min: int, ts_max: int, span: float) -> Held:
    """An in-progress record whose lease timestamp was computed within ``span`` seconds.

    The store's own expiry starts from the same timestamp (memory) or from the PX computed
    from it (Redis: truncated to the ms, applied up to one round trip later).
    """
    return Held(
        owner,
        payload_hash,
        ts_min=ts_min,
        ts_max=ts_max,
        end_min=ts_min / 1000 - 0.001,
        end_max=ts_max / 1000 + span + 0.001,
    )


class ProtocolMachine(RuleBasedStateMachine):
    #: C1: a renewal finding the key absent (the lease ran out, nobody claimed it) takes it back.
    C1_TAKE_BACK = True
    #: C1: the renewed lease time is written into the stored record, not only into its TTL.
    C1_LEASE_IN_RECORD = True

    def __init__(self, env: Env, background: BackgroundSteps) -> None:
        super().__init__()
        self.env = env
        self.background = background
        background.pending.clear()
        self.layer = FaultyLayer(env.make_layer())
        self.held: dict[str, Held | None] = dict.fromkeys(KEYS)
        #: The first response ever stored per key: it must never change (no expiry here).
        self.first_response: dict[str, bytes] = {}
        self.executions: list[Execution] = []
        self.names = itertools.count(1)
        self.logs = LogLines()
        self.logs.attach()

    def teardown(self) -> None:
        self.logs.detach()
        self.background.pending.clear()

    # --- Helpers ----------------------------------------------------------------------------
    def _running(self) -> list[Execution]:
        return [e for e in self.executions if e.running]

    def _completed(self) -> list[Execution]:
        return [e for e in self.executions if e.stored]

    def _liveness(self, held: Held | None, t0: float, t1: float) -> list[bool]:
        """Whether the store saw ``held`` live at some instant in [t0, t1]: one or both."""
        if held is None:
            return [False]
        if held.completed:
            return [True]
        tol = self.env.tolerance
        if t1 < held.end_min - tol:
            return [True]
        if t0 > held.end_max + tol:
            return [False]
        return [True, False]

    def _read(self, key: str) -> DataRecord | None:
        try:
            return self.layer.inner._get_record(key)
        except IdempotencyItemNotFoundError:
            return None

    def _mismatch(self, held: Held | None, got: DataRecord | None, t0: float, t1: float) -> str:
        """Why the stored ``got`` cannot be what the model holds ("" if it can)."""
        live = self._liveness(held, t0, t1)
        if got is None:
            if held is None or live != [True]:
                return ""
            return f"record missing, model holds {held}"
        if held is None:
            return f"unexpected record {got}"
        if live == [False]:
            return f"record {got} outlived its lease (model {held})"
        if got.owner != held.owner or got.payload_hash != held.payload_hash:
            return f"record {got} (owner {got.owner.hex()}) is not the model's {held}"
        if held.completed:
            if (
                got.status != STATUS_COMPLETED
                or got.response_data != held.response
                or got.in_progress_expiry_timestamp is not None
            ):
                return f"completed record altered: {got}, model {held}"
            return ""
        if got.status != STATUS_INPROGRESS or got.response_data is not None:
            return f"record {got} is not in progress, model {held}"
        ts = got.in_progress_expiry_timestamp or 0
        if self.C1_LEASE_IN_RECORD and not held.ts_min <= ts <= held.ts_max:
            return f"lease time in the record is {ts}, expected {held.ts_min}..{held.ts_max}"
        return ""

    def _adopt(
        self,
        key: str,
        what: str,
        candidates: list[tuple[tuple[object, ...], object]],
        observed: tuple[object, ...],
    ) -> None:
        """Keep the model states whose predicted outcome was observed; if several differ, the
        store (read back at once) decides."""
        states = [state for outcome, state in candidates if outcome == observed]
        assert states, (
            f"{what} on {key}: observed {observed}, the model allows only "
            f"{[outcome for outcome, _ in candidates]} (model holds {self.held[key]})"
        )
        chosen = states[0]
        if any(state != chosen for state in states):
            t0 = self.env.now()
            got = self._read(key)
            t1 = self.env.now()
            fitting = [s for s in states if not self._mismatch(s, got, t0, t1)]  # type: ignore[arg-type]
            assert fitting, f"{what} on {key}: store holds {got}, none of {states}"
            chosen = fitting[0]
        self.held[key] = chosen  # type: ignore[assignment]

    def _no_other_believer(self, execution: Execution, at: float) -> None:
        """``execution`` just got the lease at ``at``: nobody else may still believe in one."""
        for other in self._running():
            if other is not execution and other.key == execution.key:
                assert other.believed_end <= at + self.env.tolerance, (
                    f"{execution.name} got {execution.key} while {other.name} holds a lease "
                    f"for {other.believed_end - at:.3f}s more"
                )

    def _lost_logged(self, since: int, key: str) -> bool:
        return any("lease lost" in line and key in line for line in self.logs.lines[since:])

    # --- Claim ------------------------------------------------------------------------------
    @rule(
        key=st.sampled_from(KEYS),
        fp=st.sampled_from(FINGERPRINTS),
        fault=st.sampled_from(FAULTS),
        body=st.binary(max_size=4),
    )
    def claim(self, key: str, fp: str, fault: str | None, body: bytes) -> None:
        env, layer = self.env, self.layer
        layer.arm("_put_record", fault)
        queued = len(self.background.pending)
        t0 = env.now()
        observed: tuple[object, ...]
        decision: Replay | Claimed | None = None
        try:
            decision = drive(
                layer,
                plan_claim(
                    layer, key, fp, lease_seconds=env.lease, expires_after_seconds=env.expires_after
                ),
            )
        except IdempotencyValidationError:
            observed = ("422",)
        except IdempotencyAlreadyInProgressError:
            observed = ("409",)
        except IdempotencyPersistenceLayerError:
            observed = ("error",)
        t1 = env.now()
        if isinstance(decision, Replay):
            record = decision.record
            observed = ("replay", record.response_data, record.owner)
            assert record.response_data == self.first_response.get(key), (
                f"replay of {key} returned {record.response_data!r}, "
                f"stored was {self.first_response.get(key)!r}"
            )
        elif isinstance(decision, Claimed):
            observed = ("claimed",)
        ghost: Held | None = None
        if observed == ("error",):
            # An ambiguous claim may have been applied: the core gives it back, later.
            assert len(self.background.pending) == queued + 1, "no background release queued"
            step = self.background.pending[-1][1]
            assert step.op is DELETE and step.arg.idempotency_key == key
            lost: DataRecord = step.arg
            ts = lost.in_progress_expiry_timestamp or 0
            ghost = _lease_held(lost.owner, fp, ts, ts, t1 - t0)
        else:
            assert len(self.background.pending) == queued, "background step without an error"
        new: Held | None = None
        if isinstance(decision, Claimed):
            claim = decision.record
            ts = claim.in_progress_expiry_timestamp or 0
            assert claim.idempotency_key == key and claim.payload_hash == fp
            assert claim.status == STATUS_INPROGRESS
            assert int((t0 + env.lease) * 1000) <= ts <= int((t1 + env.lease) * 1000)
            assert all(claim.owner != e.claim.owner for e in self.executions)
            new = _lease_held(claim.owner, fp, ts, ts, t1 - t0)
        held = self.held[key]
        candidates: list[tuple[tuple[object, ...], object]] = []
        for live in self._liveness(held, t0, t1):
            if held is not None and live:
                if fault is not None:
                    candidates.append((("error",), held))
                elif held.payload_hash != fp:
                    candidates.append((("422",), held))
                elif held.completed:
                    candidates.append((("replay", held.response, held.owner), held))
                else:
                    candidates.append((("409",), held))
            elif fault == "before":
                candidates.append((("error",), held))
            elif fault == "after":
                candidates.append((("error",), ghost))
            else:
                candidates.append((("claimed",), new))
        self._adopt(key, "claim", candidates, observed)
        if isinstance(decision, Claimed):
            name = f"E{next(self.names)}"
            execution = Execution(
                name,
                key,
                decision.record,
                f"response of {name}: ".encode() + body,
                believed_end=(decision.record.in_progress_expiry_timestamp or 0) / 1000,
            )
            self.executions.append(execution)
            self._no_other_believer(execution, t1)

    # --- Renew ------------------------------------------------------------------------------
    def _renew(self, execution: Execution, fault: str | None) -> None:
        env, layer, key = self.env, self.layer, execution.key
        layer.arm("_renew_lease", fault)
        t0 = env.now()
        try:
            observed: tuple[object, ...] = (
                ("renewed",)
                if drive(layer, plan_renew(execution.claim, env.lease))
                else ("refused",)
            )
        except IdempotencyPersistenceLayerError:
            observed = ("error",)
        t1 = env.now()
        held = self.held[key]
        ours = _lease_held(
            execution.claim.owner,
            execution.claim.payload_hash,
            int((t0 + env.lease) * 1000),
            int((t1 + env.lease) * 1000),
            t1 - t0,
        )
        candidates: list[tuple[tuple[object, ...], object]] = []
        for live in self._liveness(held, t0, t1):
            # C1: our in-progress record is replaced; an absent key (the lease ran out) is
            # taken back; another owner's record or any completed record is refused.
            if held is None or not live:
                applied: tuple[tuple[object, ...], object] = (
                    (("renewed",), ours) if self.C1_TAKE_BACK else (("refused",), held)
                )
            elif held.owner == execution.claim.owner and not held.completed:
                applied = (("renewed",), ours)
            else:
                applied = (("refused",), held)
            if fault == "before":
                candidates.append((("error",), held))
            elif fault == "after":
                candidates.append((("error",), applied[1]))
            else:
                candidates.append(applied)
        self._adopt(key, f"renew by {execution.name}", candidates, observed)
        if observed == ("renewed",):
            execution.believed_end = t0 + env.lease - 0.001
            self._no_other_believer(execution, t1)
        elif observed == ("refused",):
            execution.believed_end = NEVER  # told: the handler goes on, but knows

    @precondition(lambda self: self._running())
    @rule(data=st.data(), fault=st.sampled_from(FAULTS))
    def renew(self, data: st.DataObject, fault: str | None) -> None:
        self._renew(data.draw(st.sampled_from(self._running()), label="execution"), fault)

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def renew_late(self, data: st.DataObject) -> None:
        """The renewal comes after the lease ran out (a paused process, a slow store)."""
        execution = data.draw(st.sampled_from(self._running()), label="execution")
        held = self.held[execution.key]
        end = execution.believed_end
        if held is not None and held.owner == execution.claim.owner and not held.completed:
            end = max(end, held.end_max)
        wait = end + 2 * self.env.tolerance + 0.001 - self.env.now()
        if wait > 0:
            self.env.sleep(wait)
        self._renew(execution, None)

    @precondition(lambda self: self._completed())
    @rule(data=st.data())
    def renew_after_complete(self, data: st.DataObject) -> None:
        """A renewal in flight when the completion landed: C1 refuses a COMPLETED record."""
        execution = data.draw(st.sampled_from(self._completed()), label="execution")
        t0 = self.env.now()
        observed = (
            ("renewed",) if drive(self.layer, plan_renew(execution.claim, 1.0)) else ("refused",)
        )
        t1 = self.env.now()
        held = self.held[execution.key]
        candidates = [(("refused",), held) for _ in self._liveness(held, t0, t1)]
        self._adopt(
            execution.key, f"renewal after {execution.name} completed", candidates, observed
        )

    # --- Finish -------------------------------------------------------------------------------
    @precondition(lambda self: self._running())
    @rule(data=st.data(), fault=st.sampled_from(FAULTS))
    def complete(self, data: st.DataObject, fault: str | None) -> None:
        execution = data.draw(st.sampled_from(self._running()), label="execution")
        env, layer, key = self.env, self.layer, execution.key
        layer.arm("_update_record", fault)
        since = len(self.logs.lines)
        t0 = env.now()
        observed: tuple[object, ...]
        try:
            record = drive(
                layer, plan_complete(layer, execution.claim, execution.response, env.expires_after)
            )
            observed = ("lost",) if record is None else ("stored",)
        except IdempotencyPersistenceLayerError:
            record, observed = None, ("error",)
        t1 = env.now()
        execution.running = False
        assert self._lost_logged(since, key) == (observed == ("lost",)), (
            f"complete by {execution.name}: {observed}, log {self.logs.lines[since:]}"
        )
        if record is not None:
            assert record.status == STATUS_COMPLETED
            assert (record.owner, record.response_data) == (
                execution.claim.owner,
                execution.response,
            )
        held = self.held[key]
        done = Held(
            execution.claim.owner,
            execution.claim.payload_hash,
            completed=True,
            response=execution.response,
        )
        candidates: list[tuple[tuple[object, ...], object]] = []
        for live in self._liveness(held, t0, t1):
            # A key that nobody holds any more takes the result: nothing else ran under it.
            if held is None or not live or held.owner == execution.claim.owner:
                applied: tuple[tuple[object, ...], object] = (("stored",), done)
            else:
                applied = (("lost",), held)
            if fault == "before":
                candidates.append((("error",), held))
            elif fault == "after":
                candidates.append((("error",), applied[1]))
            else:
                candidates.append(applied)
        self._adopt(key, f"complete by {execution.name}", candidates, observed)
        if self.held[key] == done:
            assert key not in self.first_response, f"a second completion stored under {key}"
            self.first_response[key] = execution.response
            execution.stored = True

    @precondition(lambda self: self._running())
    @rule(data=st.data(), fault=st.sampled_from(FAULTS))
    def release(self, data: st.DataObject, fault: str | None) -> None:
        execution = data.draw(st.sampled_from(self._running()), label="execution")
        env, layer, key = self.env, self.layer, execution.key
        layer.arm("_delete_record", fault)
        since = len(self.logs.lines)
        t0 = env.now()
        try:
            drive(layer, plan_release(layer, execution.claim))
            observed: tuple[object, ...] = (
                ("lost",) if self._lost_logged(since, key) else ("released",)
            )
        except IdempotencyPersistenceLayerError:
            observed = ("error",)
        t1 = env.now()
        execution.running = False
        held = self.held[key]
        candidates: list[tuple[tuple[object, ...], object]] = []
        for live in self._liveness(held, t0, t1):
            if held is None or not live or held.owner == execution.claim.owner:
                applied: tuple[tuple[object, ...], object] = (("released",), None)
            else:
                applied = (("lost",), held)
            if fault == "before":
                candidates.append((("error",), held))
            elif fault == "after":
                candidates.append((("error",), applied[1]))
            else:
                candidates.append(applied)
        self._adopt(key, f"release by {execution.name}", candidates, observed)

    @precondition(lambda self: self._running())
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        """The execution vanishes (process killed): it neither completes nor releases."""
        data.draw(st.sampled_from(self._running()), label="execution").running = False

    # --- Time and the background ------------------------------------------------------------
    @rule(data=st.data())
    def advance(self, data: st.DataObject) -> None:
        self.env.sleep(data.draw(st.sampled_from(self.env.steps), label="seconds"))

    @rule()
    def expire_every_lease(self) -> None:
        ends = [h.end_max for h in self.held.values() if h is not None and not h.completed]
        ends += [e.believed_end for e in self._running()]
        wait = max(ends, default=NEVER) + 2 * self.env.tolerance + 0.001 - self.env.now()
        if wait > 0:
            self.env.sleep(wait)

    @precondition(lambda self: self.background.pending)
    @rule()
    def run_background_release(self) -> None:
        """A fenced step queued after a store error: a release (DELETE) of a claim, or the
        second attempt at a completion (UPDATE) that ``plan_complete`` queues."""
        step = self.background.pending[0][1]
        claim: DataRecord = step.arg
        key = claim.idempotency_key
        t0 = self.env.now()
        self.background.run_first()
        t1 = self.env.now()
        held = self.held[key]
        candidates: list[tuple[tuple[object, ...], object]] = []
        completing = step.op is UPDATE
        done = Held(claim.owner, claim.payload_hash, completed=True, response=claim.response_data)
        for live in self._liveness(held, t0, t1):
            mine = held is not None and held.owner == claim.owner
            if completing:
                # complete.lua's fence: stored unless another owner's record is there.
                candidates.append(((), done if mine or held is None or not live else held))
            else:
                mine = mine and held is not None and not held.completed
                candidates.append(((), None if mine or not live else held))
        self._adopt(key, f"background {'completion' if completing else 'release'}", candidates, ())
        if completing and self.held[key] == done:
            first = self.first_response.setdefault(key, claim.response_data or b"")
            assert first == claim.response_data, f"a second, different completion under {key}"

    # --- Invariants -------------------------------------------------------------------------
    @invariant()
    def store_agrees_with_the_model(self) -> None:
        for key in KEYS:
            t0 = self.env.now()
            got = self._read(key)
            t1 = self.env.now()
            held = self.held[key]
            problem = self._mismatch(held, got, t0, t1)
            assert not problem, f"{key}: {problem}"
            if got is None:
                self.held[key] = None  # its lease ran out: the key is free
            if key in self.first_response:
                assert got is not None and got.response_data == self.first_response[key]

    @invariant()
    def at_most_one_live_lease_per_key(self) -> None:
        now = self.env.now()
        for key in KEYS:
            believers = [
                e.name
                for e in self._running()
                if e.key == key and e.believed_end > now + self.env.tolerance
            ]
            assert len(believers) <= 1, f"{believers} all believe they hold {key}"


# --- Environments -------------------------------------------------------------------------
FAKE_LEASE = 10.0
FAKE_STEPS = (0.5, 3.0, 7.0, 12.0)


def _fake_env(clock: FakeClock, make_layer: Callable[[], BasePersistenceLayer]) -> Env:
    return Env(
        lease=FAKE_LEASE,
        expires_after=10.0**6,
        tolerance=0.002,
        steps=FAKE_STEPS,
        make_layer=make_layer,
        now=clock.time,
        sleep=clock.advance,
    )


def _fakeredis_layer() -> BasePersistenceLayer:
    import fakeredis

    return RedisPersistenceLayer(client=fakeredis.FakeRedis(server=fakeredis.FakeServer()))


FAKE_SETTINGS = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("kind", ["memory", "fakeredis"])
def test_protocol_model_on_a_fake_clock(
    kind: str, fake_clock: FakeClock, background: BackgroundSteps
) -> None:
    make = InMemoryPersistenceLayer if kind == "memory" else _fakeredis_layer
    env = _fake_env(fake_clock, make)

    def machine() -> ProtocolMachine:
        fake_clock.now = FakeClock().now
        return ProtocolMachine(env, background)

    run_state_machine_as_test(machine, settings=FAKE_SETTINGS)


REAL_LEASE = 0.3


@pytest.mark.redis
def test_protocol_model_on_real_redis(redis_url: str, background: BackgroundSteps) -> None:
    """Short real leases; the model accepts either outcome within a lease's timing band."""
    runs = itertools.count()
    shared = RedisPersistenceLayer(url=redis_url)

    def make_layer() -> BasePersistenceLayer:
        # One connection for the test; a fresh key space per run, so no run sees another's.
        shared.key_prefix = f"model-{next(runs)}:"
        return shared

    env = Env(
        lease=REAL_LEASE,
        expires_after=60.0,
        tolerance=0.005,
        steps=(0.0, 0.05, 0.15),
        make_layer=make_layer,
        now=time.time,
        sleep=time.sleep,
    )
    try:
        run_state_machine_as_test(
            lambda: ProtocolMachine(env, background),
            settings=settings(FAKE_SETTINGS, max_examples=10, stateful_step_count=20),
        )
    finally:
        shared.close()


# --- The renewal contract C1, one rule per test (what the machine checks, spelled out) -----
@pytest.fixture(params=["memory", "fakeredis"])
def clocked_layer(request: pytest.FixtureRequest, fake_clock: FakeClock) -> BasePersistenceLayer:
    return InMemoryPersistenceLayer() if request.param == "memory" else _fakeredis_layer()


def _claim(layer: BasePersistenceLayer, key: str = "k") -> DataRecord:
    decision = drive(
        layer, plan_claim(layer, key, "fp", lease_seconds=FAKE_LEASE, expires_after_seconds=1e6)
    )
    assert isinstance(decision, Claimed)
    return decision.record


def test_c1_renewal_of_our_record_updates_the_lease_inside_it(
    clocked_layer: BasePersistenceLayer, fake_clock: FakeClock
) -> None:
    claim = _claim(clocked_layer)
    fake_clock.advance(FAKE_LEASE / 2)
    assert drive(clocked_layer, plan_renew(claim, FAKE_LEASE))
    stored = clocked_layer._get_record("k")
    assert stored.in_progress_expiry_timestamp == int((fake_clock.now + FAKE_LEASE) * 1000)
    fake_clock.advance(FAKE_LEASE * 0.75)  # past the first lease, inside the renewed one
    assert clocked_layer._get_record("k").owner == claim.owner


def test_c1_late_renewal_takes_an_absent_key_back(
    clocked_layer: BasePersistenceLayer, fake_clock: FakeClock
) -> None:
    claim = _claim(clocked_layer)
    fake_clock.advance(FAKE_LEASE + 1)
    assert drive(clocked_layer, plan_renew(claim, FAKE_LEASE))
    stored = clocked_layer._get_record("k")
    assert (stored.owner, stored.status) == (claim.owner, STATUS_INPROGRESS)


def test_c1_renewal_of_another_owners_record_is_refused(
    clocked_layer: BasePersistenceLayer, fake_clock: FakeClock
) -> None:
    first = _claim(clocked_layer)
    fake_clock.advance(FAKE_LEASE + 1)
    second = _claim(clocked_layer)
    assert not drive(clocked_layer, plan_renew(first, FAKE_LEASE))
    assert clocked_layer._get_record("k") == second


def test_c1_renewal_of_a_completed_record_is_refused(
    clocked_layer: BasePersistenceLayer, fake_clock: FakeClock
) -> None:
    claim = _claim(clocked_layer)
    done = drive(clocked_layer, plan_complete(clocked_layer, claim, b"result", 1e6))
    assert done is not None
    assert not drive(clocked_layer, plan_renew(claim, FAKE_LEASE))
    assert clocked_layer._get_record("k") == done
