"""Egress rules: which hosts a run may reach, with which byte and connection quotas, and the
brokered secrets it may use. The policy model, and the pure matching the proxy asks for.

An entry of `allow:` or `deny:` is a host pattern with an optional port (`api.github.com`,
`api.github.com:443`, `*.example.org` — subdomains only —, `*` — any name), or an address or
network (`127.0.0.1:8443`, `[::1]:443`, `10.0.0.0/8`). Private, loopback, link-local, CGNAT,
unspecified, multicast and cloud-metadata addresses are refused unless an address or network
entry names them, whatever name resolved to them.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from sandboxes import BrokeredSecret, EgressVerdict, normal_host

from ._terms import MODEL_CONFIG, Scope, window_seconds

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
"""Cloud metadata services (AWS/GCP/Azure, AWS IPv6, Alibaba)."""
ADDRESS_PENDING = "no name entry names it; an address entry may allow the address it resolves to"
"""The reason of a name-stage verdict that only the resolved address can settle."""
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAME = re.compile(r"^(\*|(\*\.)?[a-z0-9_]([a-z0-9_-]{0,62})(\.[a-z0-9_]([a-z0-9_-]{0,62}))*)$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def special_address(address: IPAddress) -> str | None:
    """What kind of non-public address `address` is (`loopback`, `cloud metadata`, …), or None
    for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata"
    checks: tuple[tuple[bool, str], ...] = (
        (address.is_loopback, "a loopback"),
        (address.is_link_local, "a link-local"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "a CGNAT"),
        (address.is_unspecified, "an unspecified"),
        (address.is_multicast, "a multicast"),
        (address.is_private, "a private"),
        (address.is_reserved, "a reserved"),
    )
    return next((kind for holds, kind in checks if holds), None)


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One parsed `allow:`/`deny:` entry.

    Attributes:
        name: A host name pattern (`api.github.com`, `*.example.org`, `*`), or None.
        network: An address or network, or None (exactly one of the two is set).
        port: The one port it allows, or None for any.
    """

    name: str | None
    network: IPNetwork | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> HostPattern:
        """Parse an entry.

        Raises:
            ValueError: `text` is not a host pattern, address or network with optional port.
        """
        entry = text.strip()
        try:
            return cls(None, ipaddress.ip_network(entry.strip("[]"), strict=False), None)
        except ValueError:
            pass
        host, port = entry, None
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise ValueError(_expected(text))
            port = _port(rest[1:], text) if rest else None
        elif entry.count(":") == 1:
            host, _, number = entry.partition(":")
            port = _port(number, text)
        try:
            return cls(None, ipaddress.ip_network(host, strict=False), port)
        except ValueError:
            pass
        name = normal_host(host)
        if not _NAME.match(name):
            raise ValueError(_expected(text))
        return cls(name, None, port)

    def __str__(self) -> str:
        where = self.name or str(self.network)
        if self.network is not None and self.network.num_addresses == 1:
            where = str(self.network.network_address)
        if self.port is None:
            return where
        return f"[{where}]:{self.port}" if ":" in where else f"{where}:{self.port}"

    def names(self, host: str) -> bool:
        """Whether this is a name pattern matching `host`."""
        if self.name is None:
            return False
        if self.name == "*":
            return True
        if self.name.startswith("*."):
            return host.endswith(self.name[1:]) and len(host) > len(self.name) - 1
        return host == self.name

    def contains(self, address: IPAddress) -> bool:
        """Whether this is an address or network entry containing `address`."""
        if self.network is None:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.version == self.network.version and address in self.network

    def admits(self, port: int) -> bool:
        return self.port is None or self.port == port


def _port(text: str, entry: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(_expected(entry))
    return int(text)


def _expected(entry: str) -> str:
    return (
        f"expected a host (`api.github.com`, `*.example.org`, `*`), an address or a network "
        f"(`127.0.0.1`, `10.0.0.0/8`, `[::1]`), optionally with `:PORT`, got {entry!r}"
    )


class EgressByteLimit(BaseModel):
    """Bytes (up and down together) the runs may move inside a sliding window."""

    model_config = MODEL_CONFIG

    max_bytes: int = Field(ge=0, description="Most bytes inside the window; 0 refuses all.")
    window: str = Field(
        description="Sliding window: `minute`, `hour`, `day` or an ISO-8601 duration."
    )
    scope: Scope = Field(
        default="grant",
        description="Who shares the count: one per `grant`, `session`, `tool`, or `global`.",
    )
    counter: str = Field(
        default="egress_bytes",
        min_length=1,
        description="Counter name; limits naming the same counter and scope share its count.",
    )

    @field_validator("window")
    @classmethod
    def _window_parses(cls, value: str) -> str:
        window_seconds(value)
        return value

    @property
    def window_s(self) -> float:
        """The window length in seconds."""
        return window_seconds(self.window)


class EgressRule(BaseModel):
    """Network through the server's egress proxy: only the hosts `allow` names."""

    model_config = MODEL_CONFIG

    allow: list[str] = Field(
        min_length=1,
        description="Hosts the code may reach: `api.github.com:443`, `*.example.org` "
        "(subdomains), `*` (any public host), addresses and networks (`127.0.0.1:8443`, "
        "`10.0.0.0/8`). Private, loopback, link-local, CGNAT and cloud-metadata addresses "
        "only when an address or network entry names them.",
    )
    deny: list[str] = Field(
        default_factory=list,
        description="Hosts refused even when `allow` names them (same forms). Default: none.",
    )
    max_bytes_per_call: int | None = Field(
        default=None,
        ge=0,
        description="Bytes up and down together one call may move; the transfer that passes "
        "it is cut. Default: unlimited.",
    )
    max_connections_per_call: int | None = Field(
        default=None,
        ge=0,
        description="Connections (a client connection to one host:port) one call may open. "
        "Default: unlimited.",
    )
    limits: list[EgressByteLimit] = Field(
        default_factory=list,
        description="Byte quotas over a window (per grant, session, tool or global), charged "
        "with what each call moved; a call is refused while one is used up.",
    )
    secrets: list[str] = Field(
        default_factory=list,
        description="Names of top-level `secrets` the code may use through this route.",
    )

    @field_validator("allow", "deny")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for entry in value:
            HostPattern.parse(entry)
        return value


class SecretRule(BaseModel):
    """A secret the code may use without seeing it: the proxy puts it in requests to `hosts`."""

    model_config = MODEL_CONFIG

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The secret's name.")
    env: str | None = Field(
        default=None, description="The server's environment variable holding the value."
    )
    file: str | None = Field(
        default=None, description="The server's file holding the value (one line, trimmed)."
    )
    hosts: list[str] = Field(
        min_length=1, description="Hosts (same forms as `allow`) the value may be sent to."
    )
    variable: str = Field(
        description="The environment variable in which code sees the placeholder."
    )

    @field_validator("hosts")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        for entry in value:
            HostPattern.parse(entry)
        return value

    @field_validator("variable")
    @classmethod
    def _variable(cls, value: str) -> str:
        if not _VARIABLE.match(value):
            raise ValueError(f"expected an environment variable name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SecretRule:
        if (self.env is None) == (self.file is None):
            raise ValueError(
                f"secret {self.name!r}: expected exactly one of `env: VAR` or `file: PATH`, "
                f"got env={self.env!r}, file={self.file!r}"
            )
        return self


@dataclass(frozen=True, slots=True)
class CompiledSecret:
    """A secret of a route, with where its value comes from."""

    name: str
    rule: str
    source: tuple[Literal["env", "file"], str]
    hosts: tuple[HostPattern, ...]
    variable: str

    def read(self) -> str:
        """The value, read now from the server's environment or file.

        Raises:
            LookupError: The variable is unset or the file unreadable (the message says which).
        """
        kind, where = self.source
        if kind == "env":
            value = os.environ.get(where)
            if value is None:
                raise LookupError(
                    f"secret {self.name!r}: the server's environment variable {where} is unset; "
                    "set it before starting the server"
                )
            return value
        try:
            return Path(where).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise LookupError(
                f"secret {self.name!r}: cannot read {where}: {exc.strerror}; make the file "
                "readable by the server"
            ) from exc

    def may_send(self, host: str, port: int) -> bool:
        host = normal_host(host)
        return any(p.names(host) and p.admits(port) for p in self.hosts)

    def brokered(self) -> BrokeredSecret:
        """The proxy's form of this secret, with its value read now."""
        return BrokeredSecret(
            name=self.name,
            value=self.read(),
            may_send=self.may_send,
            variable=self.variable,
            rule=self.rule,
        )


@dataclass(frozen=True, slots=True)
class CompiledEgress:
    """An egress route ready to decide destinations.

    Attributes:
        rule: Pointer of the `network` quota that set it (`/tools/run_code/quotas/network`).
        allow: Parsed `allow` entries, in order.
        deny: Parsed `deny` entries, in order.
        max_bytes_per_call: Per-call byte budget, or None.
        max_connections_per_call: Per-call connection budget, or None.
        limits: Window byte limits with their pointers.
        secrets: The route's brokered secrets.
    """

    rule: str
    allow: tuple[HostPattern, ...]
    deny: tuple[HostPattern, ...]
    max_bytes_per_call: int | None
    max_connections_per_call: int | None
    limits: tuple[tuple[str, EgressByteLimit], ...]
    secrets: tuple[CompiledSecret, ...]

    def decide(self, host: str, port: int, address: str | None) -> EgressVerdict:
        """Whether a run may reach `host:port`; `address` None asks about the name alone
        (before resolving it), else about the address it resolved to."""
        host = normal_host(host)
        literal = _address(host)
        ip = _address(address) if address is not None else literal
        for index, pattern in enumerate(self.deny):
            if pattern.admits(port) and (
                pattern.names(host) or (ip is not None and pattern.contains(ip))
            ):
                return EgressVerdict(False, f"{self.rule}/deny/{index}", f"{host} is denied")
        if ip is None:  # the name, before resolving it
            for index, pattern in enumerate(self.allow):
                if pattern.admits(port) and pattern.names(host):
                    return EgressVerdict(True, f"{self.rule}/allow/{index}", f"{host} is allowed")
            if any(p.network is not None and p.admits(port) for p in self.allow):
                return EgressVerdict(True, self.rule, ADDRESS_PENDING)
            return EgressVerdict(False, self.rule, f"no allow rule names {host}:{port}")
        for index, pattern in enumerate(self.allow):
            if pattern.admits(port) and pattern.contains(ip):
                return EgressVerdict(True, f"{self.rule}/allow/{index}", f"{ip} is allowed")
        kind = special_address(ip)
        if kind is not None:
            what = f"{ip} is" if literal is not None else f"{host} resolved to {ip},"
            return EgressVerdict(
                False,
                self.rule,
                f"{what} {kind} address; only an allow entry naming that address or its "
                "network reaches it",
            )
        if literal is None:
            for index, pattern in enumerate(self.allow):
                if pattern.admits(port) and pattern.names(host):
                    return EgressVerdict(True, f"{self.rule}/allow/{index}", f"{host} is allowed")
        return EgressVerdict(False, self.rule, f"no allow rule names {host}:{port} ({ip})")


def _address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def compile_egress(rule: EgressRule, pointer: str, secrets: Sequence[SecretRule]) -> CompiledEgress:
    """Parse a route (already validated: its secrets exist)."""
    named = []
    for name in rule.secrets:
        index, secret = next((i, s) for i, s in enumerate(secrets) if s.name == name)
        source: tuple[Literal["env", "file"], str] = (
            ("env", secret.env) if secret.env is not None else ("file", str(secret.file))
        )
        named.append(
            CompiledSecret(
                name=name,
                rule=f"/secrets/{index}/hosts",
                source=source,
                hosts=tuple(HostPattern.parse(h) for h in secret.hosts),
                variable=secret.variable,
            )
        )
    return CompiledEgress(
        rule=pointer,
        allow=tuple(HostPattern.parse(e) for e in rule.allow),
        deny=tuple(HostPattern.parse(e) for e in rule.deny),
        max_bytes_per_call=rule.max_bytes_per_call,
        max_connections_per_call=rule.max_connections_per_call,
        limits=tuple((f"{pointer}/limits/{i}", limit) for i, limit in enumerate(rule.limits)),
        secrets=tuple(named),
    )
