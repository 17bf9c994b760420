"""The server's egress proxy, leased to each run whose plan says `egress`: the lease goes into
`ExecutionPlan.egress`, and what the run did comes back as `NetworkUsage`, audited (one record
per connection) and counted per grant in `/metrics`."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from policies import Allowed, EgressSettings, Gate
from sandboxes import Egress, ExecutionPlan, NetworkUsage, RunResult
from sandboxes.egress import EgressProxy, EgressUnavailable, EgressUsage

from ._metrics import Metrics

logger = logging.getLogger("sandgate.egress")


@dataclass(slots=True)
class Leased:
    """One run's lease while it runs, and what it did once released (`usage`)."""

    egress: Egress
    secrets: tuple[tuple[str, str], ...]
    """(real value, placeholder) of each brokered secret, to scrub from what the run returns."""
    usage: EgressUsage | None = None
    network: NetworkUsage = field(default_factory=NetworkUsage)


class EgressLeases:
    """One `EgressProxy` for the server, started at the first run that needs it.

    Args:
        state_dir: The server's state folder (the proxy keeps its CA and sockets in
            `egress/` there).
        settings: The policy's `server.egress` (read when the proxy starts).
        gate: Where each connection is audited.
        metrics: Where egress is counted per grant.
    """

    def __init__(
        self,
        state_dir: Path,
        settings: Callable[[], EgressSettings],
        gate: Gate,
        metrics: Metrics,
    ) -> None:
        self._state_dir = state_dir
        self._settings = settings
        self._gate = gate
        self._metrics = metrics
        self._proxy: EgressProxy | None = None

    @property
    def proxy(self) -> EgressProxy | None:
        """The proxy once a run started it."""
        return self._proxy

    def _made(self) -> EgressProxy:
        if self._proxy is None:
            settings = self._settings()
            ca = Path(settings.upstream_ca) if settings.upstream_ca else None
            self._proxy = EgressProxy(self._state_dir, hosts=settings.hosts, upstream_ca=ca)
        return self._proxy

    @asynccontextmanager
    async def leased(
        self, decision: Allowed, plan: ExecutionPlan
    ) -> AsyncIterator[tuple[ExecutionPlan, Leased | None]]:
        """`plan` with a lease of the proxy when its limits say `egress` (else unchanged);
        the lease is released, audited and counted when the block ends, however it ends.

        Raises:
            EgressUnavailable: The proxy cannot start, or a secret's value cannot be read.
        """
        terms = decision.egress
        if plan.limits.network != "egress" or terms is None:
            yield plan, None
            return
        try:
            secrets = [secret.brokered() for secret in terms.route.secrets]
        except LookupError as exc:
            raise EgressUnavailable(str(exc)) from None
        proxy = self._made()
        egress = await proxy.lease(
            decide=terms.decide,
            byte_budget=terms.byte_budget,
            max_connections=terms.max_connections,
            quota_rule=terms.route.rule,
            secrets=secrets,
        )
        by_variable = dict(egress.environment)
        held = Leased(egress, tuple((s.value, by_variable[s.variable]) for s in secrets))
        try:
            yield dataclasses.replace(plan, egress=egress), held
        finally:
            used = await proxy.release(egress)
            held.usage = used
            held.network = network_usage(used)
            await asyncio.to_thread(self._gate.record_egress, decision, used.connections)
            grant = plan.grant
            self._metrics.egress_bytes.labels(grant, "up").inc(used.bytes_up)
            self._metrics.egress_bytes.labels(grant, "down").inc(used.bytes_down)
            self._metrics.egress_connections.labels(grant, "allow").inc(used.allowed)
            self._metrics.egress_connections.labels(grant, "deny").inc(len(used.refused))

    async def aclose(self) -> None:
        if self._proxy is not None:
            await self._proxy.aclose()


def network_usage(used: EgressUsage) -> NetworkUsage:
    """The run's network figures, refusals worded as the code saw them."""
    refused = tuple(
        f"egress to {c.host}:{c.port} refused by policy rule {c.rule or '(none)'}: {c.reason}"
        for c in used.refused
    )
    if used.failed is not None:
        refused += (f"egress failed: {used.failed}",)
    return NetworkUsage(
        bytes_up=used.bytes_up,
        bytes_down=used.bytes_down,
        connections=used.allowed,
        refused=refused,
        cut=any(c.cut for c in used.connections),
    )


def with_network(result: RunResult, held: Leased) -> RunResult:
    """`result` with its network figures, and no brokered secret's value in its text (the
    proxy already scrubs responses; this is the second line)."""

    def scrub(text: str | None) -> str | None:
        if text is None:
            return None
        for value, placeholder in held.secrets:
            if value:
                text = text.replace(value, placeholder)
        return text

    return dataclasses.replace(
        result,
        stdout=scrub(result.stdout) or "",
        stderr=scrub(result.stderr) or "",
        value=scrub(result.value),
        error=scrub(result.error),
        usage=dataclasses.replace(result.usage, network=held.network),
    )
