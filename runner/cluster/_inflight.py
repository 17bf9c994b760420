"""Calls in flight on a node, recorded in Redis so a front end can undo them if the node dies.

Before an allowed call runs, the node's gate writes `call id -> {decision id: reservation,
tool, grant, session, engine}` to Redis; when the call is settled (committed or rolled back)
the entry goes. A front end whose node died mid-call takes what is left for that call id:
each reservation is rolled back and an `infra_error` outcome audited, and the call is never
run again.

A reservation is recorded before it is made: the node's store names it up front
(`RecordedStore`), writes `r:<reservation>` under the call id, then reserves; once the gate's
decision is known the entry becomes the decision's (or goes, when nothing stayed reserved). A
node that dies between the two leaves an entry naming a reservation that may not exist, and
rolling back one that does not exist does nothing.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import redis

from policies import (
    Allowed,
    ApprovalRecord,
    AuditSink,
    CounterSpec,
    CounterStore,
    Decision,
    Gate,
    Outcome,
    Policy,
    RedisCounterStore,
    ToolCall,
)

logger = logging.getLogger("sandgate.cluster.inflight")

PREFIX = "sandgate:cluster:inflight:"
KEEP_S = 86_400
"""How long an entry a node never cleared stays (a call lasts far less)."""

RESERVING = "r:"
"""Field prefix of a reservation recorded before its decision is known."""

_CURRENT: contextvars.ContextVar[tuple[InflightCalls, str] | None] = contextvars.ContextVar(
    "sandgate_cluster_call", default=None
)
_DECIDING: contextvars.ContextVar[tuple[ToolCall, list[str], str] | None] = contextvars.ContextVar(
    "sandgate_cluster_deciding", default=None
)


@dataclass(frozen=True, slots=True)
class Pending:
    """One allowed decision of a call that was not settled.

    Attributes:
        decision_id: The gate's decision (its audit id, chosen before its reservation is
            made, so a call lost in between is still audited under it); "" when unknown.
        reservation: The counter reservation to roll back (`None`: nothing counted).
        tool: The tool called.
        grant: Who called.
        session: The session.
        engine: The engine the plan named.
    """

    decision_id: str
    reservation: str | None
    tool: str
    grant: str
    session: str
    engine: str | None


class InflightCalls:
    """The Redis table of unsettled calls.

    Args:
        url: The policy's Redis (`state.url`).
    """

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0)

    @contextmanager
    def tracking(self, call_id: str) -> Iterator[None]:
        """Record every decision the node's gate allows inside as belonging to `call_id`."""
        token = _CURRENT.set((self, call_id))
        try:
            yield
        finally:
            _CURRENT.reset(token)

    def record(
        self,
        call_id: str,
        pending: Pending,
        *,
        ahead: bool = False,
        replaces: Sequence[str] = (),
    ) -> None:
        """Record an unsettled decision (or, `ahead`, a reservation about to be made for
        it); `replaces` are the reservations recorded ahead that it now covers."""
        key = PREFIX + call_id
        value = json.dumps(
            {
                "reservation": pending.reservation,
                "decision_id": pending.decision_id,
                "tool": pending.tool,
                "grant": pending.grant,
                "session": pending.session,
                "engine": pending.engine,
            }
        )
        field = (
            RESERVING + str(pending.reservation)
            if ahead or not pending.decision_id
            else pending.decision_id
        )
        pipe = self._redis.pipeline()
        pipe.hset(key, field, value)
        pipe.expire(key, KEEP_S)
        if replaces:
            pipe.hdel(key, *(RESERVING + r for r in replaces))
        pipe.execute()

    def clear(
        self, call_id: str, decision_id: str = "", *, reservations: Sequence[str] = ()
    ) -> None:
        """Settled: the decision's entry (and reservations recorded ahead) go."""
        fields = [RESERVING + r for r in reservations]
        if decision_id:
            fields.append(decision_id)
        if fields:
            self._redis.hdel(PREFIX + call_id, *fields)

    def take(self, call_id: str) -> list[Pending]:
        """What `call_id` left unsettled, removed from the table (only one taker gets it)."""
        key = PREFIX + call_id
        pipe = self._redis.pipeline()
        pipe.hgetall(key)
        pipe.delete(key)
        found = cast(dict[str, str], pipe.execute()[0])
        taken: list[Pending] = []
        for field, raw in found.items():
            data: dict[str, Any] = json.loads(raw)
            named = "" if field.startswith(RESERVING) else field
            taken.append(
                Pending(
                    decision_id=str(data.get("decision_id") or named),
                    reservation=data.get("reservation"),
                    tool=str(data.get("tool")),
                    grant=str(data.get("grant")),
                    session=str(data.get("session")),
                    engine=data.get("engine"),
                )
            )
        return taken

    def close(self) -> None:
        self._redis.close()


class RecordedStore:
    """The node's Redis counter store: inside a tracked call, each reservation is recorded
    under the call id before it is made (so no reservation of a call that dies is left
    counted), otherwise the plain store."""

    def __init__(self, inner: RedisCounterStore) -> None:
        self._inner = inner
        self.backend = inner.backend
        self.commits_locally = inner.commits_locally

    def reserve(self, items: Sequence[CounterSpec], now: float) -> str | None:
        current, deciding = _CURRENT.get(), _DECIDING.get()
        if current is None or deciding is None:
            return self._inner.reserve(items, now)
        table, call_id = current
        call, made, decision_id = deciding
        reservation = uuid.uuid4().hex
        ahead = Pending(decision_id, reservation, call.tool, call.grant, call.session, None)
        try:
            table.record(call_id, ahead, ahead=True)
        except redis.RedisError as exc:  # the call still runs; only recovery is lost
            logger.warning("cannot record reservation %s ahead: %s", reservation, exc)
        made.append(reservation)
        return self._inner.reserve(items, now, reservation_id=reservation)

    def reserve_now(self, items: Sequence[CounterSpec], now: float) -> str | None:
        return self._inner.reserve_now(items, now)

    def commit(self, reservation_id: str, *, now: float | None = None) -> None:
        self._inner.commit(reservation_id, now=now)

    def rollback(self, reservation_id: str, *, now: float | None = None) -> None:
        self._inner.rollback(reservation_id, now=now)

    def used(self, item: CounterSpec, now: float) -> tuple[int, float | None]:
        return self._inner.used(item, now)

    def add_approval(self, record: ApprovalRecord) -> None:
        self._inner.add_approval(record)

    def find_approval(self, binding: str, now: float) -> ApprovalRecord | None:
        return self._inner.find_approval(binding, now)

    def get_approval(self, approval_id: str) -> ApprovalRecord | None:
        return self._inner.get_approval(approval_id)

    def resolve_approval(
        self, approval_id: str, approved: bool, by: str, now: float, *, binding: str | None = None
    ) -> ApprovalRecord:
        return self._inner.resolve_approval(approval_id, approved, by, now, binding=binding)

    def use_approval(self, approval_id: str, now: float) -> bool:
        return self._inner.use_approval(approval_id, now)

    def close(self) -> None:
        self._inner.close()


class TrackedGate(Gate):
    """A gate whose allowed decisions inside `InflightCalls.tracking` are recorded in Redis
    until they are settled (the node's gate; outside a tracked call it is the plain gate).
    Its reservations are recorded before they are made (`RecordedStore`)."""

    def __init__(
        self,
        policy: Policy,
        store: CounterStore,
        audit: AuditSink,
        *,
        clock: Callable[[], float] = time.time,
        policy_path: Path | None = None,
    ) -> None:
        if isinstance(store, RedisCounterStore):
            store = RecordedStore(store)
        super().__init__(policy, store, audit, clock=clock, policy_path=policy_path)

    def _new_decision_id(self) -> str:
        deciding = _DECIDING.get()
        return deciding[2] if deciding is not None else super()._new_decision_id()

    def try_decide(self, call: ToolCall) -> Decision | None:
        """None inside a tracked call (its decision is recorded in Redis), else the plain
        gate's answer."""
        if _CURRENT.get() is not None:
            return None
        return super().try_decide(call)

    def decide(self, call: ToolCall) -> Decision:
        made: list[str] = []
        token = _DECIDING.set((call, made, uuid.uuid4().hex))
        try:
            decision = super().decide(call)
        finally:
            _DECIDING.reset(token)
        current = _CURRENT.get()
        if current is None:
            return decision
        table, call_id = current
        try:
            if isinstance(decision, Allowed):
                plan = decision.plan
                pending = Pending(
                    decision_id=decision.decision_id,
                    reservation=decision.reservation,
                    tool=call.tool,
                    grant=call.grant,
                    session=call.session,
                    engine=None if plan is None else plan.engine,
                )
                table.record(call_id, pending, replaces=made)
            elif made:  # refused: nothing it reserved stayed reserved
                table.clear(call_id, reservations=made)
        except redis.RedisError as exc:  # the call still runs; only recovery is lost
            logger.warning("cannot record call %s as in flight: %s", call_id, exc)
        return decision

    def finish(
        self,
        allowed: Allowed,
        *,
        outcome: Outcome,
        status: str | None = None,
        usage: Mapping[str, Any] | None = None,
        error: str | None = None,
        egress_bytes: int = 0,
    ) -> None:
        super().finish(
            allowed,
            outcome=outcome,
            status=status,
            usage=usage,
            error=error,
            egress_bytes=egress_bytes,
        )
        current = _CURRENT.get()
        if current is not None:
            table, call_id = current
            try:
                table.clear(call_id, allowed.decision_id)
            except redis.RedisError as exc:
                logger.warning("cannot clear call %s from the in-flight table: %s", call_id, exc)

    def finish_waits(self, allowed: Allowed, *, outcome: Outcome, egress_bytes: int = 0) -> bool:
        """True inside a tracked call (its finish clears it from the Redis table), else the
        plain gate's answer."""
        if _CURRENT.get() is not None:
            return True
        return super().finish_waits(allowed, outcome=outcome, egress_bytes=egress_bytes)
