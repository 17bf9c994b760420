"""Operator mounts in the policy's `server:` section: the `--mount` rules, checked at load."""

from __future__ import annotations

import pytest

from policies import PolicyLoadError, ServerMount, load_policy_text, policy_json_schema


def _problems(text: str) -> list[tuple[str, int | None]]:
    with pytest.raises(PolicyLoadError) as refused:
        load_policy_text(text)
    return [(p.path, p.line) for p in refused.value.problems]


def test_no_mounts_by_default() -> None:
    assert load_policy_text("version: '1'").server.mounts == []


def test_mounts_load_in_order_and_are_read_only_unless_said_otherwise() -> None:
    policy = load_policy_text(
        "server:\n"
        "  mounts:\n"
        "    - {name: data, path: /srv/data}\n"
        "    - {name: out-2_b, path: /srv/out, read_only: false}\n"
    )
    assert policy.server.mounts == [
        ServerMount(name="data", path="/srv/data", read_only=True),
        ServerMount(name="out-2_b", path="/srv/out", read_only=False),
    ]


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        ("{name: 'a/b', path: /srv}", "server.mounts[0].name"),
        ("{name: '..', path: /srv}", "server.mounts[0].name"),
        ("{name: '', path: /srv}", "server.mounts[0].name"),
        ("{name: " + "n" * 65 + ", path: /srv}", "server.mounts[0].name"),
        ("{name: workspace, path: /srv}", "server.mounts[0].name"),
        ("{name: data, path: relative/dir}", "server.mounts[0].path"),
        ("{name: data, path: '~/data'}", "server.mounts[0].path"),
        ("{name: data}", "server.mounts[0].path"),
        ("{name: data, path: /srv, read_only: 'yes'}", "server.mounts[0].read_only"),
        ("{name: data, path: /srv, readonly: true}", "server.mounts[0].readonly"),
    ],
)
def test_a_wrong_mount_is_a_load_error_naming_its_key(entry: str, path: str) -> None:
    assert _problems(f"server: {{mounts: [{entry}]}}") == [(path, 1)]


def test_a_name_given_twice_in_the_policy_is_a_load_error_at_the_second() -> None:
    text = (
        "server:\n"
        "  mounts:\n"
        "    - {name: data, path: /srv/a}\n"
        "    - {name: data, path: /srv/b, read_only: false}\n"
    )
    assert _problems(text) == [("server.mounts[1].name", 4)]


def test_the_schema_documents_mounts_with_the_name_rule_and_the_safe_default() -> None:
    schema = policy_json_schema()
    described = schema["$defs"]["ServerSettings"]["properties"]["mounts"]
    assert described["items"] == {"$ref": "#/$defs/ServerMount"}
    assert "read when the server starts" in described["description"].lower()
    mount = schema["$defs"]["ServerMount"]
    assert mount["additionalProperties"] is False
    assert set(mount["required"]) == {"name", "path"}
    assert mount["properties"]["name"]["pattern"] == "^[A-Za-z0-9_-]{1,64}$"
    assert mount["properties"]["read_only"]["default"] is True
