"""Egress rules as pure logic: parsing entries, the decision for a name and for the address it
resolved to, the policy's checks, and `sandgate policy explain --egress`."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import (
    CompiledEgress,
    EgressRule,
    HostPattern,
    PolicyLoadError,
    explain_egress,
    load_policy_text,
    special_address,
)
from policies._egress import compile_egress
from runner.cli import main

ROUTE = "/tools/run_code/quotas/network"


def route(allow: list[str], deny: list[str] | None = None) -> CompiledEgress:
    return compile_egress(EgressRule(allow=allow, deny=deny or []), ROUTE, [])


@pytest.mark.parametrize(
    ("entry", "name", "network", "port"),
    [
        ("api.github.com:443", "api.github.com", None, 443),
        ("API.GitHub.com.", "api.github.com", None, None),
        ("*.example.org", "*.example.org", None, None),
        ("*", "*", None, None),
        ("127.0.0.1:8443", None, "127.0.0.1/32", 8443),
        ("10.0.0.0/8", None, "10.0.0.0/8", None),
        ("[::1]:443", None, "::1/128", 443),
        ("fd00:ec2::254", None, "fd00:ec2::254/128", None),
    ],
)
def test_entries_parse(entry: str, name: str | None, network: str | None, port: int | None) -> None:
    parsed = HostPattern.parse(entry)
    assert (parsed.name, str(parsed.network) if parsed.network else None, parsed.port) == (
        name,
        network,
        port,
    )


@pytest.mark.parametrize("entry", ["api.test:http", "a b", "api.test:0", "*.*.x", "[::1]x"])
def test_a_bad_entry_is_refused_with_what_was_expected(entry: str) -> None:
    with pytest.raises(ValueError, match="expected a host"):
        HostPattern.parse(entry)


def test_a_name_entry_allows_the_name_on_its_port_only() -> None:
    rules = route(["api.github.com:443"])
    assert rules.decide("api.github.com", 443, None).rule == f"{ROUTE}/allow/0"
    assert rules.decide("api.github.com", 443, "140.82.112.6").allowed
    refused = rules.decide("api.github.com", 80, None)
    assert (refused.allowed, refused.rule) == (False, ROUTE)


def test_a_wildcard_names_subdomains_not_the_domain() -> None:
    rules = route(["*.example.org"])
    assert rules.decide("a.b.example.org", 443, None).allowed
    assert not rules.decide("example.org", 443, None).allowed
    assert not rules.decide("evilexample.org", 443, None).allowed


def test_deny_wins_over_allow() -> None:
    rules = route(["*.example.org"], deny=["secret.example.org"])
    verdict = rules.decide("secret.example.org", 443, None)
    assert (verdict.allowed, verdict.rule) == (False, f"{ROUTE}/deny/0")


def test_a_name_resolving_to_loopback_needs_an_entry_naming_the_address() -> None:
    by_name = route(["rebind.test"])
    verdict = by_name.decide("rebind.test", 443, "127.0.0.1")
    assert not verdict.allowed
    assert verdict.reason.startswith("rebind.test resolved to 127.0.0.1, a loopback address")
    by_address = route(["rebind.test", "127.0.0.1"])
    assert by_address.decide("rebind.test", 443, "127.0.0.1").rule == f"{ROUTE}/allow/1"


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("169.254.169.254", "a cloud metadata"),
        ("fd00:ec2::254", "a cloud metadata"),
        ("10.1.2.3", "a private"),
        ("100.64.0.1", "a CGNAT"),
        ("fe80::1", "a link-local"),
        ("::ffff:127.0.0.1", "a loopback"),
        ("0.0.0.0", "an unspecified"),
    ],
)
def test_non_public_addresses_are_refused_even_under_a_star(address: str, kind: str) -> None:
    import ipaddress

    assert special_address(ipaddress.ip_address(address)) == kind
    verdict = route(["*"]).decide("anything.test", 443, address)
    assert not verdict.allowed
    assert kind in verdict.reason


def test_a_network_entry_allows_the_addresses_in_it() -> None:
    rules = route(["10.0.0.0/8"])
    assert rules.decide("db.internal", 5432, None).allowed  # the address settles it
    assert rules.decide("db.internal", 5432, "10.9.8.7").rule == f"{ROUTE}/allow/0"
    assert not rules.decide("db.internal", 5432, "192.168.1.1").allowed


POLICY = """
version: 1
default: deny
secrets:
  - {name: gh, env: GH_TEST_TOKEN, hosts: ["api.test"], variable: GH_TOKEN}
server:
  egress:
    hosts: {api.test: 127.0.0.1, rebind.test: 127.0.0.1}
tools:
  run_code:
    quotas:
      network:
        allow: ["api.test", "127.0.0.1", "rebind.test:443"]
        deny: ["rebind.test:80"]
        secrets: [gh]
        max_bytes_per_call: 1000
        limits: [{max_bytes: 5000, window: hour, scope: grant}]
  run_python_code: {}
"""


def test_the_policy_loads_routes_and_secrets() -> None:
    policy = load_policy_text(POLICY)
    network = policy.tools["run_code"].quotas.network
    assert isinstance(network, EgressRule)
    assert network.secrets == ["gh"]
    assert policy.server.egress.hosts["api.test"] == "127.0.0.1"


def test_a_route_naming_an_unknown_secret_is_refused() -> None:
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text(POLICY.replace("secrets: [gh]", "secrets: [nope]"))
    assert "unknown secret 'nope'" in str(raised.value)


def test_a_secret_needs_exactly_one_source() -> None:
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text(POLICY.replace("env: GH_TEST_TOKEN,", ""))
    assert "exactly one of `env: VAR` or `file: PATH`" in str(raised.value)


def test_explain_names_the_rule_and_what_applies() -> None:
    lines = dict(explain_egress(load_policy_text(POLICY), "run_code", "api.test"))
    assert lines["decision"] == "allow"
    assert lines["address"] == "127.0.0.1 (server.egress.hosts)"
    assert lines["secret"] == "gh ($GH_TOKEN) is sent here"
    refused = dict(explain_egress(load_policy_text(POLICY), "run_code", "rebind.test:80"))
    assert (refused["decision"], refused["rule"]) == ("deny", f"{ROUTE}/deny/0")
    none = dict(explain_egress(load_policy_text(POLICY), "run_python_code", "api.test"))
    assert (none["decision"], none["rule"]) == ("deny", "/quotas/network")


def test_the_explain_command_prints_the_deciding_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)

    code = main(["policy", "explain", str(policy), "--egress", "169.254.169.254:80"])

    printed = capsys.readouterr().out
    assert code == 0
    assert "decision: deny" in printed
    assert f"rule:     {ROUTE}\n" in printed
    assert "169.254.169.254 is a cloud metadata address" in printed
