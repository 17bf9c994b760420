"""Value types of the egress proxy: a decision about one destination, a brokered secret, and
what a lease used."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_EGRESS_VENV = "~/.cache/sandgate/egress-venv"
"""Where `sandgate setup egress` makes mitmproxy's own venv (`$SANDGATE_EGRESS_VENV`)."""
MITMPROXY_REQUIREMENT = "mitmproxy==11.0.2"
START_TIMEOUT_S = 30.0
"""Most seconds mitmdump may take to start listening."""


@dataclass(frozen=True, slots=True)
class EgressVerdict:
    """A decision about one destination of one run.

    Attributes:
        allowed: Whether the run may connect.
        rule: The pointer of the rule that decided (`/tools/run_code/quotas/network/allow/0`).
        reason: Why, in words (`no allow rule names evil.test`).
    """

    allowed: bool
    rule: str
    reason: str

    def refusal(self, host: str, port: int) -> str:
        """The `Sandgate-Refused` header text (the `PermissionError` the code sees)."""
        return f"egress to {host}:{port} refused by policy rule {self.rule or '(none)'}"


Decide = Callable[[str, int, "str | None"], EgressVerdict]
"""`decide(host, port, address)`: the lease's policy. Called first with `address` None (the
name alone: a refusal here means the name is never resolved), then with the one address the
proxy resolved and will pin the connection to (private and metadata addresses are the
policy's to refuse)."""


@dataclass(frozen=True, slots=True)
class BrokeredSecret:
    """A secret the code may use without seeing it.

    Attributes:
        name: The secret's name in the policy.
        value: The real value (only the proxy ever sends it, and only to `hosts`).
        may_send: `may_send(host, port)`: whether the value may go to that destination (the
            policy's `hosts:` of the secret, matched by the policy layer).
        variable: The guest environment variable that holds the placeholder.
        rule: The policy pointer named when a request carries the placeholder elsewhere.
    """

    name: str
    value: str
    may_send: Callable[[str, int], bool]
    variable: str
    rule: str = ""


@dataclass(frozen=True, slots=True)
class EgressConnection:
    """One destination a run asked for (one client connection to one `host:port`).

    Attributes:
        host: The name (or address) the code asked for.
        port: The TCP port.
        address: The address the proxy connected to (None when refused before resolving).
        allowed: Whether it was allowed.
        rule: The policy pointer that decided.
        reason: Why, in words.
        bytes_up: Bytes sent towards the host (request lines, headers, bodies).
        bytes_down: Bytes received from it.
        cut: Whether the byte budget ran out during a transfer and the proxy cut it.
    """

    host: str
    port: int
    address: str | None
    allowed: bool
    rule: str
    reason: str
    bytes_up: int = 0
    bytes_down: int = 0
    cut: bool = False


@dataclass(frozen=True, slots=True)
class EgressUsage:
    """What one lease used, from `EgressProxy.release`.

    Attributes:
        connections: Every destination asked for, allowed or refused, in order.
        failed: Why the lease stopped working early (the proxy died), or None.
    """

    connections: tuple[EgressConnection, ...] = ()
    failed: str | None = None

    @property
    def bytes_up(self) -> int:
        return sum(c.bytes_up for c in self.connections)

    @property
    def bytes_down(self) -> int:
        return sum(c.bytes_down for c in self.connections)

    @property
    def allowed(self) -> int:
        """Connections made."""
        return sum(1 for c in self.connections if c.allowed)

    @property
    def refused(self) -> tuple[EgressConnection, ...]:
        return tuple(c for c in self.connections if not c.allowed)
