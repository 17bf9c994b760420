"""Calls in flight on a node: every reservation is in the Redis table before it exists, so a
node that dies at any point leaves nothing counted that a front end cannot roll back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from policies import (
    Allowed,
    AuditLog,
    CounterSpec,
    RedisCounterStore,
    ToolCall,
    load_policy_text,
    read_audit,
)
from runner.cluster._inflight import InflightCalls, Pending, TrackedGate
from tests.redis_server import redis_url  # noqa: F401  (the fixture)

pytestmark = pytest.mark.redis

MAX_RUNS = 2
POLICY = (
    "version: '1'\ndefault: deny\ntools:\n  run_code:\n    limits:\n"
    f"      - {{counter: runs, window: hour, max: {MAX_RUNS}, scope: grant}}\n"
)


class NodeDied(BaseException):
    """The node's process stops here (nothing after it runs)."""


class DyingStore(RedisCounterStore):
    """A real Redis store whose node dies right after a reservation is made."""

    dies = False

    def reserve(
        self, items: Sequence[CounterSpec], now: float, *, reservation_id: str | None = None
    ) -> str | None:
        made = super().reserve(items, now, reservation_id=reservation_id)
        if self.dies:
            raise NodeDied(made)
        return made


@pytest.fixture
def store(redis_url: str) -> Iterator[DyingStore]:  # noqa: F811
    made = DyingStore(redis_url, prefix=f"test-{uuid.uuid4().hex[:8]}:")
    yield made
    made.close()


@pytest.fixture
def inflight(redis_url: str) -> Iterator[InflightCalls]:  # noqa: F811
    table = InflightCalls(redis_url)
    yield table
    table.close()


@pytest.fixture
def gate(store: DyingStore, tmp_path: Path) -> Iterator[TrackedGate]:
    audit = AuditLog(tmp_path / "audit.jsonl")
    yield TrackedGate(load_policy_text(POLICY), store, audit)
    audit.close()


def runs_used(store: RedisCounterStore, grant: str) -> int:
    spec = CounterSpec(f"runs|grant={grant}", window_s=3600.0, max=MAX_RUNS)
    return store.used(spec, time.time())[0]


def a_call(grant: str) -> ToolCall:
    return ToolCall(tool="run_code", args={"code": "print(1)"}, grant=grant, session="s")


def test_a_node_dying_right_after_reserving_leaves_the_reservation_to_roll_back(
    gate: TrackedGate, store: DyingStore, inflight: InflightCalls
) -> None:
    grant, call_id = f"g-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    store.dies = True
    with inflight.tracking(call_id), pytest.raises(NodeDied):
        gate.decide(a_call(grant))
    assert runs_used(store, grant) == 1, "the reservation was made"
    [left] = inflight.take(call_id)
    assert (len(left.decision_id), left.grant, left.tool) == (32, grant, "run_code")
    assert left.reservation is not None
    store.rollback(left.reservation)
    assert runs_used(store, grant) == 0


def test_an_allowed_call_is_recorded_under_its_decision_until_settled(
    gate: TrackedGate, store: DyingStore, inflight: InflightCalls
) -> None:
    grant, call_id = f"g-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with inflight.tracking(call_id):
        allowed = gate.decide(a_call(grant))
        assert isinstance(allowed, Allowed)
        [recorded] = inflight.take(call_id)
        assert (recorded.decision_id, recorded.reservation) == (
            allowed.decision_id,
            allowed.reservation,
        )
        inflight.record(call_id, recorded)  # put back what take removed
        gate.finish(allowed, outcome="completed")
    assert inflight.take(call_id) == []
    assert runs_used(store, grant) == 1


def test_the_decision_id_is_recorded_with_the_reservation_before_it_is_made(
    gate: TrackedGate, store: DyingStore, inflight: InflightCalls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node lost between reserving and recording its decision still leaves the decision's
    id, so the front end audits that decision's outcome."""
    seen: list[tuple[bool, str]] = []
    real = inflight.record

    def spy(call_id: str, pending: Pending, **kw: Any) -> None:
        seen.append((bool(kw.get("ahead")), pending.decision_id))
        real(call_id, pending, **kw)

    monkeypatch.setattr(inflight, "record", spy)
    call_id = uuid.uuid4().hex
    with inflight.tracking(call_id):
        allowed = gate.decide(a_call(f"g-{uuid.uuid4().hex[:8]}"))
    assert isinstance(allowed, Allowed)
    assert seen == [(True, allowed.decision_id), (False, allowed.decision_id)]
    gate.finish(allowed, outcome="completed")


def test_a_lost_call_taken_from_the_table_is_rolled_back_and_audited_once(
    gate: TrackedGate, store: DyingStore, inflight: InflightCalls, tmp_path: Path
) -> None:
    """What a front end does with a lost node's call: `Gate.abandon` from the record."""
    grant, call_id = f"g-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    with inflight.tracking(call_id):
        allowed = gate.decide(a_call(grant))
    assert isinstance(allowed, Allowed) and runs_used(store, grant) == 1
    [lost] = inflight.take(call_id)
    gone = ToolCall(tool=lost.tool, args={}, grant=lost.grant, session=lost.session)
    gate.abandon(lost.decision_id, lost.reservation, gone, engine=lost.engine, error="node lost")
    assert runs_used(store, grant) == 0
    outcomes = [
        r
        for r in read_audit(tmp_path / "audit.jsonl")
        if r.id == allowed.decision_id and r.event == "outcome"
    ]
    assert [(r.outcome, r.status, r.grant, r.error) for r in outcomes] == [
        ("infra_error", "infra_error", grant, "node lost")
    ]


def test_a_refused_call_leaves_nothing_in_flight(
    gate: TrackedGate, store: DyingStore, inflight: InflightCalls
) -> None:
    grant = f"g-{uuid.uuid4().hex[:8]}"
    for _ in range(MAX_RUNS):
        with inflight.tracking(uuid.uuid4().hex):
            done = gate.decide(a_call(grant))
            assert isinstance(done, Allowed)
            gate.finish(done, outcome="completed")
    call_id = uuid.uuid4().hex
    with inflight.tracking(call_id):
        refused = gate.decide(a_call(grant))
    assert not isinstance(refused, Allowed)
    assert inflight.take(call_id) == []
    assert runs_used(store, grant) == MAX_RUNS
