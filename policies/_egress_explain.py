"""`sandgate policy explain FILE --egress HOST[:PORT]`: which rule of a tool's egress route
allows or refuses a destination, and what else applies to it (quotas, secrets)."""

from __future__ import annotations

from sandboxes import normal_host

from ._compile import compile_policy
from ._egress import ADDRESS_PENDING, HostPattern
from ._model import Policy

DEFAULT_EGRESS_PORT = 443


def parse_destination(text: str) -> tuple[str, int]:
    """`api.github.com:443`, `api.github.com` (port 443), `[::1]:8443`, `10.0.0.1`.

    Raises:
        ValueError: `text` is not a host with an optional port.
    """
    parsed = HostPattern.parse(text)
    if parsed.name is not None:
        if "*" in parsed.name:
            raise ValueError(f"expected one host, not a pattern, got {text!r}")
        return parsed.name, parsed.port or DEFAULT_EGRESS_PORT
    assert parsed.network is not None
    if parsed.network.num_addresses != 1:
        raise ValueError(f"expected one host or address, not a network, got {text!r}")
    return str(parsed.network.network_address), parsed.port or DEFAULT_EGRESS_PORT


def explain_egress(
    policy: Policy, tool: str, destination: str, *, grant: str | None = None
) -> list[tuple[str, str]]:
    """(label, text) lines saying what `tool`'s route decides about `destination` for calls
    of `grant` (its roles' quotas on top of the tool's; None: a grant without roles).

    Raises:
        ValueError: `destination` is not a host with an optional port.
    """
    host, port = parse_destination(destination)
    whole = compile_policy(policy)
    compiled = whole.grant_tool(tool, grant)
    lines = [("tool", tool)]
    if grant is not None:
        roles = whole.roles.get(grant, ())
        lines.append(("grant", f"{grant} (roles: {', '.join(roles) or 'none'})"))
    lines.append(("to", f"{host}:{port}"))
    route = compiled.egress
    if route is None:
        network = compiled.base_limits.network
        whose = f"{tool}'s network" + ("" if grant is None else f" for grant {grant}")
        return [
            *lines,
            ("decision", "deny"),
            ("rule", compiled.quotas.sources["network"]),
            ("reason", f"{whose} is {network!r}: no egress route, no host is reached"),
        ]
    lines.append(("route", route.rule))
    verdict = route.decide(host, port, None)
    overrides = {normal_host(k): v for k, v in policy.server.egress.hosts.items()}
    address = host if verdict.allowed and _literal(host) else overrides.get(host)
    if verdict.allowed and address is not None:
        source = "the host itself" if address == host else "server.egress.hosts"
        lines.append(("address", f"{address} ({source})"))
        verdict = route.decide(host, port, address)
    if verdict.allowed and address is None and verdict.reason == ADDRESS_PENDING:
        return [
            *lines,
            ("decision", "depends on the address it resolves to"),
            ("rule", verdict.rule),
            ("reason", verdict.reason),
        ]
    lines += [
        ("decision", "allow" if verdict.allowed else "deny"),
        ("rule", verdict.rule),
        ("reason", verdict.reason),
    ]
    if verdict.allowed and address is None:
        lines.append(
            (
                "note",
                "the address the name resolves to is checked when connecting: private, "
                "loopback, link-local, CGNAT and metadata addresses need an entry naming them",
            )
        )
    if verdict.allowed:
        if route.max_bytes_per_call is not None:
            lines.append(("quota", f"{route.max_bytes_per_call} bytes per call"))
        if route.max_connections_per_call is not None:
            lines.append(("quota", f"{route.max_connections_per_call} connections per call"))
        for rule, limit in route.limits:
            lines.append(
                ("quota", f"{limit.max_bytes} bytes per {limit.window} per {limit.scope} ({rule})")
            )
        for secret in route.secrets:
            if secret.may_send(host, port):
                lines.append(("secret", f"{secret.name} (${secret.variable}) is sent here"))
    return lines


def _literal(host: str) -> bool:
    try:
        HostPattern.parse(host)
    except ValueError:
        return False
    return HostPattern.parse(host).network is not None
