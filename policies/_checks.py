"""Checks across a validated policy: references, schemas, grants file, and author warnings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ._egress import EgressRule
from ._errors import Problem
from ._model import BUILTIN_PROFILES, Grant, Policy
from ._rules import Quotas, ToolRule
from ._source import KeyPath, Parsed, format_path, guess_format, parse

KNOWN_TOOLS = frozenset(
    {
        "run_python_code",
        "save_to_file_and_run",
        "pip_install_package",
        "run_python_file",
        "run_code",
        "pyodide_execute",
        "pyodide_install-packages",
        "pyodide_get-mount-points",
        "pyodide_list-mounted-directory",
        "pyodide_read-image",
        "snapshot_session",
        "restore_session",
        "fork_session",
        "list_snapshots",
        "delete_snapshot",
    }
)
"""Tool names sandgate serves; other names load (with a warning) for forward compatibility."""


def rules_of(policy: Policy) -> list[tuple[KeyPath, ToolRule]]:
    """Every rule of the policy with its key path: `all_tools` first, then each tool."""
    rules: list[tuple[KeyPath, ToolRule]] = []
    if policy.all_tools is not None:
        rules.append((("all_tools",), policy.all_tools))
    rules.extend((("tools", name), rule) for name, rule in policy.tools.items())
    return rules


def check_policy(
    policy: Policy, parsed: Parsed, extra_grants: dict[str, Grant], *, warnings: bool
) -> list[Problem]:
    """Return the problems (or, with `warnings=True`, the warnings) of a validated policy."""
    return _warnings(policy, parsed) if warnings else _errors(policy, parsed, extra_grants)


def _errors(policy: Policy, parsed: Parsed, extra_grants: dict[str, Grant]) -> list[Problem]:
    problems: list[Problem] = []
    known = sorted({*BUILTIN_PROFILES, *policy.engines})
    for path, rule in rules_of(policy):
        if rule.engine is not None and rule.engine not in known:
            problems.append(
                parsed.problem(
                    (*path, "engine"),
                    f"unknown engine profile "
                    f"{rule.engine!r}; expected one of: "
                    f"{', '.join(known)}; define it under `engines`",
                )
            )
        if rule.args_schema is not None:
            import jsonschema  # only for policies with argument schemas (~0.1 s to import)

            try:
                jsonschema.validators.validator_for(rule.args_schema).check_schema(rule.args_schema)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(p) for p in exc.path) or "(root)"
                problems.append(
                    parsed.problem(
                        (*path, "args_schema"), f"not a valid JSON Schema at {where}: {exc.message}"
                    )
                )
    problems += _egress_problems(policy, parsed)
    for name, profile in policy.engines.items():
        if profile.runtime is not None and profile.kind != "container":
            problems.append(
                parsed.problem(
                    ("engines", name, "runtime"),
                    f"runtime "
                    f"{profile.runtime!r} applies only to kind "
                    f"'container', got kind {profile.kind!r}; remove it",
                )
            )
    if policy.state.backend == "redis" and not policy.state.url:
        problems.append(
            parsed.problem(
                ("state", "backend"),
                "backend 'redis' needs `state.url` (e.g. redis://host:6379/0); add it",
            )
        )
    if policy.audit.sink == "redis" and not (policy.audit.url or policy.state.url):
        problems.append(
            parsed.problem(
                ("audit", "sink"),
                "sink 'redis' needs a Redis URL and none is set: add `audit.url` or "
                "`state.url` (e.g. redis://host:6379/0)",
            )
        )
    if policy.server.http_sessions == "redis" and not policy.state.url:
        problems.append(
            parsed.problem(
                ("server", "http_sessions"),
                "http_sessions 'redis' keeps MCP HTTP sessions in the Redis at `state.url`, and "
                "none is set: add `state.url` (e.g. redis://host:6379/0)",
            )
        )
    seen: set[str] = set()
    for index, mount in enumerate(policy.server.mounts):
        if mount.name in seen:
            problems.append(
                parsed.problem(
                    ("server", "mounts", index, "name"),
                    f"mount name {mount.name!r} is given twice under server.mounts; "
                    "rename or remove one",
                )
            )
        seen.add(mount.name)
    problems += _operator_problems(policy, parsed, extra_grants)
    for name in sorted(set(extra_grants) & set(policy.grants)):
        problems.append(
            parsed.problem(
                ("grants_file",),
                f"grant {name!r} is defined both in `grants` and in grants_file; keep one",
            )
        )
    return problems


def _warnings(policy: Policy, parsed: Parsed) -> list[Problem]:
    found: list[Problem] = []
    if policy.mode == "off":
        found.append(parsed.problem(("mode",), "mode 'off' allows every call (still audited)"))
    if policy.default == "allow":
        found.append(
            parsed.problem(
                ("default",),
                "default 'allow' allows every tool not "
                "listed, including tools added in future versions",
            )
        )
    for index, name in enumerate(policy.hide):
        if name not in KNOWN_TOOLS:
            found.append(parsed.problem(("hide", index), f"unknown tool {name!r}"))
    for name, rule in policy.tools.items():
        if name not in KNOWN_TOOLS:
            found.append(
                parsed.problem(
                    ("tools", name),
                    f"unknown tool {name!r}; known: {', '.join(sorted(KNOWN_TOOLS))}",
                )
            )
        if name in policy.hide and rule.action != "hide":
            found.append(
                parsed.problem(
                    ("tools", name),
                    f"{name!r} is also in `hide`, which wins: the tool is hidden and denied",
                )
            )
        if rule.mode == "off":
            found.append(
                parsed.problem(("tools", name, "mode"), f"mode 'off' allows every call of {name!r}")
            )
    found += _role_warnings(policy, parsed)
    base = policy.all_tools
    for path, rule in rules_of(policy):
        guards = [rule] if path == ("all_tools",) or base is None else [rule, base]
        found += _unguarded(path, rule, guards, parsed)
        for index, pred in enumerate(rule.require):
            if pred.op == "regex" and not _anchored(str(pred.value)):
                found.append(
                    parsed.problem(
                        (*path, "require", index, "value"),
                        f"regex "
                        f"{pred.value!r} is not anchored: it passes when it matches "
                        "anywhere in the value; write it as '^...$'",
                    )
                )
    return found


def _role_warnings(policy: Policy, parsed: Parsed) -> list[Problem]:
    """Roles with quotas that no grant holds, and grants whose roles set one quota twice."""
    found: list[Problem] = []
    held = {role for grant in policy.grants.values() for role in grant.roles}
    for name in policy.roles:
        if name not in held:
            found.append(
                parsed.problem(
                    ("roles", name),
                    f"no grant holds role {name!r}, so its quotas apply to no call; add it to "
                    "a grant's `roles` or remove it (grants: "
                    f"{', '.join(sorted(policy.grants)) or '(none)'})",
                )
            )
    for grant_name, grant in policy.grants.items():
        roles = [role for role in grant.roles if role in policy.roles]
        for field in Quotas.model_fields:
            setting = [r for r in roles if getattr(policy.roles[r].quotas, field) is not None]
            values = {repr(getattr(policy.roles[r].quotas, field)) for r in setting}
            if len(values) > 1:
                named = ", ".join(repr(r) for r in dict.fromkeys(setting))
                found.append(
                    parsed.problem(
                        ("grants", grant_name, "roles"),
                        f"grant {grant_name!r} holds roles {named}, which set quotas.{field} "
                        f"differently; the one listed last, {setting[-1]!r}, wins for this "
                        "grant (reorder its `roles` to choose)",
                    )
                )
    return found


def _unguarded(
    path: KeyPath, rule: ToolRule, guards: list[ToolRule], parsed: Parsed
) -> list[Problem]:
    found = []
    for section in ("deny_if", "approve_if"):
        for index, pred in enumerate(getattr(rule, section)):
            if not pred.path.startswith("args.") or _guarded(pred.path, guards):
                continue
            found.append(
                parsed.problem(
                    (*path, section, index, "path"),
                    f"{section} on "
                    f"{pred.path} is false when the argument is missing, so such a call "
                    f"passes it; add `require: [{{path: {pred.path}, op: exists}}]` or "
                    "list the argument under args_schema `required`",
                )
            )
    return found


def _guarded(path: str, rules: list[ToolRule]) -> bool:
    keys = path.split(".")[1:]
    for rule in rules:
        if any(pred.path == path for pred in rule.require):
            return True
        schema: Any = rule.args_schema
        for key in keys:
            if not isinstance(schema, dict) or key not in schema.get("required", []):
                break
            schema = schema.get("properties", {}).get(key)
        else:
            return True
    return False


def _anchored(regex: str) -> bool:
    return regex.startswith(("^", "\\A")) and regex.endswith(("$", "\\Z", "\\z"))


def load_grants_file(
    policy: Policy, base: Path, parsed: Parsed
) -> tuple[dict[str, Grant], list[Problem]]:
    """Read `grants_file` (a mapping name → grant), returning its grants and problems."""
    if policy.grants_file is None:
        return {}, []
    path = (base / Path(policy.grants_file).expanduser()).resolve()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [parsed.problem(("grants_file",), f"cannot read grants file {path}: {exc}")]
    inner = parse(text, guess_format(text, path.name))
    if inner.problems:
        return {}, [
            parsed.problem(("grants_file",), f"in {path}: {p.format(path.name)}")
            for p in inner.problems
        ]
    if not isinstance(inner.data, dict):
        return {}, [
            parsed.problem(
                ("grants_file",), f"{path} must map grant names to {{token_sha256, roles}}"
            )
        ]
    grants: dict[str, Grant] = {}
    problems: list[Problem] = []
    for name, value in inner.data.items():
        try:
            grants[str(name)] = Grant.model_validate(value)
        except ValidationError as exc:
            for error in exc.errors(include_url=False):
                where = format_path(
                    (str(name), *(p for p in error["loc"] if isinstance(p, int | str)))
                )
                line, _ = inner.where((str(name),))
                problems.append(
                    parsed.problem(
                        ("grants_file",), f"in {path} line {line}: {where}: {error['msg']}"
                    )
                )
    return grants, problems


def resolve_paths(policy: Policy, base: Path) -> Policy:
    """Return `policy` with its file paths made absolute against `base`."""

    def absolute(value: str | None) -> str | None:
        return None if value is None else str((base / Path(value).expanduser()).resolve())

    return policy.model_copy(
        update={
            "grants_file": absolute(policy.grants_file),
            "state": policy.state.model_copy(update={"path": absolute(policy.state.path)}),
            "audit": policy.audit.model_copy(update={"path": absolute(policy.audit.path)}),
            "packages": policy.packages.model_copy(
                update={
                    "allowlist": absolute(policy.packages.allowlist),
                    "mirror": absolute(policy.packages.mirror),
                }
            ),
        }
    )


def _operator_problems(
    policy: Policy, parsed: Parsed, extra_grants: dict[str, Grant]
) -> list[Problem]:
    """Console operators whose token is also a grant's: a client could open the console."""
    console = policy.server.console
    if console is None:
        return []
    grants = {**policy.grants, **extra_grants}
    by_hash = {g.token_sha256.lower(): name for name, g in grants.items() if g.token_sha256}
    return [
        parsed.problem(
            ("server", "console", "operators", index, "token_sha256"),
            f"operator {operator.name!r} has the token of grant {by_hash[digest]!r}; a "
            "client's token must never open the console: give the operator a token of its own",
        )
        for index, operator in enumerate(console.operators)
        if (digest := operator.token_sha256.lower()) in by_hash
    ]


def _egress_problems(policy: Policy, parsed: Parsed) -> list[Problem]:
    """Secrets named twice, and egress routes naming secrets the policy does not define."""
    problems: list[Problem] = []
    names = [secret.name for secret in policy.secrets]
    for index, name in enumerate(names):
        if name in names[:index]:
            problems.append(
                parsed.problem(("secrets", index, "name"), f"secret {name!r} is defined twice")
            )
    routes: list[tuple[KeyPath, Quotas]] = [(("quotas",), policy.quotas)]
    routes += [((*path, "quotas"), rule.quotas) for path, rule in rules_of(policy)]
    routes += [(("engines", n, "quotas"), p.quotas) for n, p in policy.engines.items()]
    routes += [(("roles", n, "quotas"), r.quotas) for n, r in policy.roles.items()]
    for path, quotas in routes:
        if not isinstance(quotas.network, EgressRule):
            continue
        for index, name in enumerate(quotas.network.secrets):
            if name not in names:
                problems.append(
                    parsed.problem(
                        (*path, "network", "secrets", index),
                        f"unknown secret {name!r}; expected one of: {', '.join(names) or '(none)'}"
                        "; define it under `secrets`",
                    )
                )
    return problems
