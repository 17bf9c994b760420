"""An allowed call's egress terms: the route, and what its byte quotas leave for this run;
charging what the run moved once it ended."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sandboxes import EgressVerdict

from ._egress import CompiledEgress, EgressByteLimit
from ._store import CounterSpec, CounterStore


@dataclass(frozen=True, slots=True)
class EgressTerms:
    """What an allowed call's run may do through the egress proxy (`Allowed.egress`).

    Attributes:
        route: The compiled route: `decide`, the secrets, the rule pointers.
        byte_budget: Bytes this run may move (per call, and what the window quotas have
            left), or None for unlimited.
        max_connections: Connections this run may open, or None.
        counters: The window counters to charge afterwards, with their ceilings.
    """

    route: CompiledEgress
    byte_budget: int | None
    max_connections: int | None
    counters: tuple[CounterSpec, ...] = ()

    def decide(self, host: str, port: int, address: str | None) -> EgressVerdict:
        """The route's decision (see `CompiledEgress.decide`)."""
        return self.route.decide(host, port, address)


@dataclass(frozen=True, slots=True)
class EgressExhausted:
    """A window byte quota with no room left: the call is refused before it runs."""

    rule: str
    reason: str
    retry_after_s: float


def _key(limit: EgressByteLimit, tool: str, grant: str, session: str) -> str:
    scope = limit.scope
    value = grant if scope == "grant" else session if scope == "session" else tool
    return f"{limit.counter}|{scope}={'*' if scope == 'global' else value}"


def egress_terms(
    route: CompiledEgress,
    store: CounterStore,
    *,
    tool: str,
    grant: str,
    session: str,
    now: float,
) -> EgressTerms | EgressExhausted:
    """The run's terms, or why its window quotas leave it nothing."""
    budget = route.max_bytes_per_call
    counters = []
    for rule, limit in route.limits:
        spec = CounterSpec(_key(limit, tool, grant, session), limit.window_s, limit.max_bytes, 0)
        used, oldest = store.used(spec, now)
        if used >= limit.max_bytes:
            retry = spec.window_s if oldest is None else max(oldest + spec.window_s - now, 0.1)
            return EgressExhausted(
                rule,
                f"Egress quota {limit.counter!r} used up: {used} of {limit.max_bytes} bytes per "
                f"{limit.window} per {limit.scope}. Retry in {math.ceil(retry):g} s.",
                retry,
            )
        left = limit.max_bytes - used
        budget = left if budget is None else min(budget, left)
        counters.append(spec)
    return EgressTerms(route, budget, route.max_connections_per_call, tuple(counters))


def charge_egress(store: CounterStore, terms: EgressTerms, moved: int, now: float) -> None:
    """Count `moved` bytes against the window quotas (up to what each has left: concurrent
    runs share the room they were each given)."""
    if moved <= 0:
        return
    for spec in terms.counters:
        used, _ = store.used(spec, now)
        amount = min(moved, max(spec.max - used, 0))
        if amount <= 0:
            continue
        reservation = store.reserve([CounterSpec(spec.key, spec.window_s, spec.max, amount)], now)
        if reservation is not None:
            store.commit(reservation, now=now)
