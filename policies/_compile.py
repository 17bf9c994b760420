"""Compile a `Policy` once into per-tool rules the gate can apply in microseconds."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from sandboxes import DEFAULT_WORKSPACE_FILES, Limits, StateMode

from ._egress import CompiledEgress, EgressRule, compile_egress
from ._model import DEFAULT_PROFILE, Policy
from ._predicates import CompiledPredicate
from ._rules import Action, CounterLimit, Mode, Quotas, ToolRule
from ._terms import Scope

MIB = 1024 * 1024
BUILTIN_QUOTAS = Quotas(
    timeout_s=30.0,
    memory_mb=512,
    output_bytes=MIB,
    workspace_mb=256,
    workspace_files=DEFAULT_WORKSPACE_FILES,
    processes=64,
    network="none",
    max_code_bytes=MIB,
)
"""Quotas every tool has unless the policy says otherwise."""

_QUOTA_FIELDS = tuple(f for f in Quotas.model_fields)

QuotaLayer = tuple[tuple[str | int, ...], Quotas]
"""One layer of quotas with the key path it sits at (`("tools", "run_code", "quotas")`)."""


def pointer(*parts: str | int) -> str:
    """A JSON-pointer-like rule path: `pointer("tools", "x", "action")` → `/tools/x/action`."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    """One counter limit with the rule path that names it."""

    rule: str
    counter: str
    window: str
    window_s: float
    max: int
    scope: Scope
    increment: int
    increment_from: tuple[str, ...] | None

    def key(self, tool: str, grant: str, session: str) -> str:
        """The store key: the counter plus the scope's value for this call."""
        scope = self.scope
        value = grant if scope == "grant" else session if scope == "session" else tool
        return f"{self.counter}|{scope}={'*' if scope == 'global' else value}"


@dataclass(frozen=True, slots=True)
class EffectiveQuotas:
    """Quotas after inheritance, with the rule path each value came from."""

    values: Quotas
    sources: Mapping[str, str]

    def limits(self) -> Limits:
        """The sandbox `Limits` these quotas give (before clamping a requested timeout)."""
        q = self.values
        return Limits(
            wall_timeout_s=float(q.timeout_s or BUILTIN_QUOTAS.timeout_s or 30.0),
            cpu_time_s=q.cpu_s,
            memory_bytes=int(q.memory_mb or 512) * MIB,
            output_bytes=int(q.output_bytes if q.output_bytes is not None else MIB),
            processes=int(q.processes or 64),
            workspace_bytes=int(q.workspace_mb if q.workspace_mb is not None else 256) * MIB,
            workspace_files=int(q.workspace_files or DEFAULT_WORKSPACE_FILES),
            network="egress" if isinstance(q.network, EgressRule) else q.network or "none",
            fuel=q.fuel,
        )


@dataclass(frozen=True, slots=True)
class CompiledTool:
    """Everything the gate needs about one tool, in evaluation order."""

    listed: bool
    allow_rule: str
    actions: tuple[tuple[str, Action, str | None], ...]
    mode: Mode
    schemas: tuple[tuple[str, Any], ...]
    require: tuple[CompiledPredicate, ...]
    deny_if: tuple[CompiledPredicate, ...]
    approve_if: tuple[CompiledPredicate, ...]
    limits: tuple[CompiledLimit, ...]
    quotas: EffectiveQuotas
    base_limits: Limits
    base_limits_record: Mapping[str, Any]
    profile: str
    engine: str
    runtime: str | None = None
    state: StateMode | None = None
    """What the policy says of `state` (None: the tool's own default)."""
    egress: CompiledEgress | None = None
    """The tool's egress route when its `quotas.network` is one."""
    quota_layers: tuple[QuotaLayer, ...] = ()
    """The quota layers `quotas` was made from, first to last (a grant's roles go on top)."""


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A policy ready for `Gate.decide`."""

    policy: Policy
    hidden: frozenset[str]
    tools: Mapping[str, CompiledTool]
    unlisted: CompiledTool
    grants_by_token_hash: Mapping[str, str]
    roles: Mapping[str, tuple[str, ...]]
    _by_roles: dict[tuple[str | None, tuple[str, ...]], CompiledTool] = field(
        default_factory=dict, repr=False, compare=False
    )

    def tool(self, name: str, roles: Sequence[str] = ()) -> CompiledTool:
        """The compiled rule of `name` (`unlisted`, with `listed=False`, for other names) for a
        grant holding `roles`: the quotas of those of them under the policy's `roles` go on
        top of the tool's, in order. Compiled once per (tool, roles) and kept."""
        base = self.tools.get(name, self.unlisted)
        held = tuple(r for r in roles if r in self.policy.roles)
        if not held:
            return base
        key = (name if name in self.tools else None, held)
        found = self._by_roles.get(key)
        if found is None:  # two threads may both compile it: the same value, one kept
            found = self._by_roles.setdefault(key, _with_roles(self.policy, base, held))
        return found

    def grant_tool(self, name: str, grant: str | None) -> CompiledTool:
        """The compiled rule of `name` for calls of `grant` (None: a grant without roles)."""
        return self.tool(name, () if grant is None else self.roles.get(grant, ()))


def compile_policy(policy: Policy) -> CompiledPolicy:
    """Compile `policy` (already validated and checked by the loader)."""
    tools = {name: _tool(policy, name, rule) for name, rule in policy.tools.items()}
    unlisted = _tool(policy, None, None)
    return CompiledPolicy(
        policy=policy,
        hidden=frozenset(policy.hide),
        tools=tools,
        unlisted=unlisted,
        grants_by_token_hash={g.token_sha256: name for name, g in policy.grants.items()},
        roles={name: tuple(g.roles) for name, g in policy.grants.items()},
    )


def _tool(policy: Policy, name: str | None, rule: ToolRule | None) -> CompiledTool:
    layers: list[tuple[tuple[str | int, ...], ToolRule]] = []
    if policy.all_tools is not None:
        layers.append((("all_tools",), policy.all_tools))
    if rule is not None and name is not None:
        layers.append((("tools", name), rule))
    allow_rule = pointer("tools", name) if name is not None else pointer("default")
    mode: Mode = policy.mode
    profile = DEFAULT_PROFILE
    state: StateMode | None = None
    for _, layer in layers:
        mode = layer.mode or mode
        profile = layer.engine or profile
        state = layer.state or state
    kind, runtime, profile_quotas = policy.profile(profile)
    if state is None and profile in policy.engines:
        state = policy.engines[profile].state
    quota_layers: list[QuotaLayer] = [(("quotas",), policy.quotas)]
    if policy.all_tools is not None:
        quota_layers.append((("all_tools", "quotas"), policy.all_tools.quotas))
    quota_layers.append((("engines", profile, "quotas"), profile_quotas))
    if rule is not None and name is not None:
        quota_layers.append((("tools", name, "quotas"), rule.quotas))
    quotas = _effective(quota_layers)
    limits = [_limit(limit, ("limits",)) for limit in policy.limits]
    checks: dict[str, list[CompiledPredicate]] = {"require": [], "deny_if": [], "approve_if": []}
    schemas: list[tuple[str, Any]] = []
    for path, layer in layers:
        limits += [_limit(limit, (*path, "limits")) for limit in layer.limits]
        for section, compiled in checks.items():
            compiled += [
                CompiledPredicate.of(p, pointer(*path, section, i))
                for i, p in enumerate(getattr(layer, section))
            ]
        if layer.args_schema is not None:
            import jsonschema  # only for policies with argument schemas (~0.1 s to import)

            cls = jsonschema.validators.validator_for(layer.args_schema)
            schemas.append((pointer(*path, "args_schema"), cls(layer.args_schema)))
    return CompiledTool(
        listed=rule is not None,
        allow_rule=allow_rule,
        actions=tuple(
            (pointer(*path, "action"), layer.action, layer.reason) for path, layer in layers
        ),
        mode=mode,
        schemas=tuple(schemas),
        require=tuple(checks["require"]),
        deny_if=tuple(checks["deny_if"]),
        approve_if=tuple(checks["approve_if"]),
        limits=tuple(limits),
        quotas=quotas,
        base_limits=quotas.limits(),
        base_limits_record=limits_record(quotas.limits()),
        profile=profile,
        engine=kind,
        runtime=runtime,
        state=state,
        egress=_egress(policy, quotas),
        quota_layers=tuple(quota_layers),
    )


def _with_roles(policy: Policy, base: CompiledTool, roles: tuple[str, ...]) -> CompiledTool:
    """`base` with the quotas of `roles` (each under `policy.roles`) on top, in order."""
    layers = [*base.quota_layers]
    layers += [(("roles", role, "quotas"), policy.roles[role].quotas) for role in roles]
    quotas = _effective(layers)
    limits = quotas.limits()
    return dataclasses.replace(
        base,
        quotas=quotas,
        base_limits=limits,
        base_limits_record=limits_record(limits),
        egress=_egress(policy, quotas),
        quota_layers=tuple(layers),
    )


def _egress(policy: Policy, quotas: EffectiveQuotas) -> CompiledEgress | None:
    route = quotas.values.network
    if not isinstance(route, EgressRule):
        return None
    secrets = policy.secrets
    if policy.source is not None:  # a secret's relative file is relative to the policy
        folder = policy.source.parent
        secrets = [
            s if s.file is None else s.model_copy(update={"file": str(folder / s.file)})
            for s in secrets
        ]
    return compile_egress(route, quotas.sources["network"], secrets)


def _limit(limit: CounterLimit, path: tuple[str | int, ...]) -> CompiledLimit:
    keys = tuple(limit.increment_from.split(".")) if limit.increment_from else None
    return CompiledLimit(
        rule=pointer(*path, limit.counter),
        counter=limit.counter,
        window=limit.window,
        window_s=limit.window_s,
        max=limit.max,
        scope=limit.scope,
        increment=limit.increment,
        increment_from=keys,
    )


def _effective(layers: Sequence[QuotaLayer]) -> EffectiveQuotas:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in _QUOTA_FIELDS:
        values[name] = getattr(BUILTIN_QUOTAS, name)
        sources[name] = pointer("quotas", name)
        for path, quotas in layers:
            value = getattr(quotas, name)
            if value is not None:
                values[name], sources[name] = value, pointer(*path, name)
    return EffectiveQuotas(Quotas.model_construct(**values), sources)


def limits_record(limits: Limits) -> dict[str, Any]:
    """`Limits` as the plain dict the audit log records."""
    return {f.name: getattr(limits, f.name) for f in fields(limits)}


def token_sha256(token: str) -> str:
    """Hex sha256 of a bearer token, as grants store it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
