"""The policy document: `Policy` and its top-level sections (grants, engines, state, audit)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator

from sandboxes import engine_key, layer_names, unknown_layers

from ._egress import SecretRule
from ._errors import Problem
from ._rules import ConsoleSettings, CounterLimit, Mode, Quotas, ToolRule
from ._terms import MODEL_CONFIG

EngineKind = Literal["wasm", "pyodide", "container"]
BUILTIN_PROFILES: dict[str, tuple[EngineKind, str | None]] = {
    "wasm": ("wasm", None),
    "pyodide": ("pyodide", None),
    "container": ("container", "runc"),
    "gvisor": ("container", "runsc"),
}
"""Engine profiles every policy has: name → (engine kind, container runtime)."""

DEFAULT_PROFILE = "wasm"


class Grant(BaseModel):
    """One client credential: the sha256 of its bearer token and its roles."""

    model_config = MODEL_CONFIG

    token_sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Hex sha256 of the "
        "bearer token (never the token itself): "
        "`printf %s TOKEN | sha256sum`.",
    )
    roles: list[str] = Field(
        default_factory=list,
        description="Roles predicates can test with `path: roles`; the quotas of those named "
        "under the top-level `roles` apply to this grant's calls, in this order (for a quota "
        "two of them set, the one listed later wins).",
    )
    share: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="This grant's fraction of every pooled resource while other grants need "
        "them. Default: `server.grant_share`.",
    )

    @field_validator("token_sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class Role(BaseModel):
    """What holding a role changes for a grant's calls: quotas over every tool's own."""

    model_config = MODEL_CONFIG

    quotas: Quotas = Field(
        default_factory=Quotas,
        description="Quotas of every call by a grant holding this role, whatever the tool: a "
        "quota set here wins over the tool's, its engine profile's, `all_tools`' and the "
        "policy's (a role says who may do more or less than the tool's default, e.g. reach the "
        "network at all); unset ones inherit theirs. `network` is replaced whole (`none`, or "
        "the role's own egress rule), never merged. A grant holding several roles takes them in "
        "the order its `roles` lists them: for a quota two of them set, the later one wins "
        "(`sandgate policy check` warns). Caller-set timeout and memory are clamped to the "
        "result.",
    )


class EngineProfile(BaseModel):
    """A named sandbox profile: which engine runs the code and under which quotas."""

    model_config = MODEL_CONFIG

    kind: EngineKind = Field(description="The engine: wasm, pyodide or container.")
    runtime: Literal["runc", "runsc"] | None = Field(
        default=None,
        description="Container "
        "runtime (container kind only): runc, "
        "or runsc for gVisor. Default: runc.",
    )
    quotas: Quotas = Field(
        default_factory=Quotas,
        description="Quotas of every run under this profile (a tool's own quotas override them).",
    )
    state: Literal["fresh", "persistent"] | None = Field(
        default=None,
        description="fresh or persistent (see a tool's `state`) for the tools routed to this "
        "profile; a tool's own `state` and `all_tools.state` come first.",
    )
    require: list[str] | None = Field(
        default=None,
        description="Boundary layers the engine must have in force on the host, or it refuses "
        "to start (fail closed); `sandgate doctor` lists each engine's layers and which are in "
        "force. List fewer to accept running without the others (e.g. without `net_namespace` "
        "on a host without `unshare`). Default: every layer the engine relies on.",
    )

    @property
    def engine_key(self) -> str:
        """The engine this profile runs on (`pyodide`, `container:runsc`, …)."""
        return _profile_key(self.kind, self.runtime)

    @field_validator("require")
    @classmethod
    def _known_layers(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        kind = info.data.get("kind")
        if value is None or kind is None:
            return value
        problem = unknown_layers(_profile_key(kind, info.data.get("runtime")), value)
        if problem is not None:
            raise ValueError(
                f"{problem}; list only that engine's layers (`sandgate doctor` "
                "shows them), or leave `require` out to require them all"
            )
        return value


def _profile_key(kind: str, runtime: str | None) -> str:
    return engine_key(kind, (runtime or "runc") if kind == "container" else None)


class Packages(BaseModel):
    """Where the package allow-list and the local wheel mirror are (paths relative to the
    policy file)."""

    model_config = MODEL_CONFIG

    allowlist: str | None = Field(
        default=None,
        description="File listing allowed packages. Default: none (every install refused).",
    )
    mirror: str | None = Field(
        default=None, description="Directory of the local wheel mirror. Default: none."
    )


ApprovalAnswerer = Literal["client", "operator"]
"""Who may answer an approval request (`approvals.by`)."""


class ApprovalSettings(BaseModel):
    """Who answers an approval request, and how long they have."""

    model_config = MODEL_CONFIG

    timeout_s: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a pending approval "
        "waits (and an approved one stays usable) before it expires.",
    )
    by: ApprovalAnswerer = Field(
        default="operator",
        description="Who may answer: `operator` (default: only `sandgate approve/deny ID` on the "
        "server's host; a client's input response is never an approval and clients are never "
        "asked) or `client` (the human at the MCP client, asked by MCP elicitation; only a "
        "client that declared the `elicitation` capability may answer, only for its own grant "
        "and the exact call; the operator can answer too).",
    )


class AuditSettings(BaseModel):
    """Where decisions are written."""

    model_config = MODEL_CONFIG

    sink: Literal["file", "redis"] = Field(
        default="file",
        description="file (a JSON-lines file, one server) or redis (one Redis stream that "
        "replicas and front ends share, ordered by stream id; run Redis with AOF: "
        "`appendonly yes`, and `appendfsync always` for `fsync`). Default: file.",
    )
    path: str | None = Field(
        default=None,
        description="JSON-lines audit file (sink file). Default: `<state dir>/audit.jsonl`.",
    )
    stream: str = Field(
        default="sandgate:audit",
        min_length=1,
        description="The Redis stream key (sink redis). Default: `sandgate:audit`.",
    )
    url: str | None = Field(
        default=None,
        description="Redis URL (sink redis; redis://, rediss://, unix://). Default: `state.url`.",
    )
    fsync: bool = Field(
        default=False,
        description="fsync after every record (survives power "
        "loss, not only a crash of the server; slower). With sink redis: the server must run "
        "with `appendonly yes` and `appendfsync always`, else the server refuses to start.",
    )


class StateSettings(BaseModel):
    """Where counters and approvals live."""

    model_config = MODEL_CONFIG

    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="sqlite (one server) or redis (replicas sharing counters)."
    )
    path: str | None = Field(
        default=None, description="SQLite file. Default: `<state dir>/state.sqlite3`."
    )
    url: str | None = Field(
        default=None,
        description="Redis URL (redis://, rediss://, unix://); required for backend redis.",
    )


DEFAULT_MAX_REQUEST_BYTES = 4 * 1024 * 1024
"""Largest request (HTTP body, or a tool call's arguments as JSON), in bytes: 4 MiB."""
DEFAULT_MAX_SESSIONS_PER_GRANT = 64
"""Sessions one grant may hold at once."""
DEFAULT_MAX_WORKSPACE_BYTES_TOTAL = 4 * 1024 * 1024 * 1024
"""Disk all session workspaces of one server may use before new sessions are refused: 4 GiB."""
DEFAULT_SESSION_IDLE_S = 3600.0
"""Seconds without a call after which a session and its workspace are removed."""
DEFAULT_RESULT_TEXT_BYTES = 64 * 1024
"""Printed text one tool result gives the model (stdout and stderr together): 64 KiB."""
MAX_RESULT_TEXT_BYTES = 16 * 1024 * 1024
"""The most `server.result_text_bytes` may be set to: 16 MiB."""
DEFAULT_RESULT_IMAGE_BYTES = 4608 * 1024
"""Largest image one tool result gives the model: 4.5 MiB (model APIs refuse over 5 MB)."""
MAX_RESULT_IMAGE_BYTES = 20 * 1024 * 1024
"""The most `server.result_image_bytes` may be set to: 20 MiB."""


MOUNT_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an operator mount may be called (as with `sandgate serve --mount NAME=DIR`)."""
RESERVED_MOUNT_NAME = "workspace"
"""The session's own workspace mount: no operator mount may take its name."""


def mount_name_problem(value: str) -> str | None:
    """What an operator mount name must be, when `value` is not one ("a mount name of …"),
    else None. The one rule for `sandgate serve --mount` and the policy's `server.mounts`."""
    if not MOUNT_NAME.fullmatch(value):
        return "a mount name of 1-64 letters, digits, - and _"
    if value == RESERVED_MOUNT_NAME:
        return f"a mount name other than {RESERVED_MOUNT_NAME!r} (reserved for the workspace)"
    return None


class ServerMount(BaseModel):
    """An operator folder shown to code at `/mnt/NAME` on every engine, as `sandgate serve --mount`
    gives one; read when the server starts (a reload does not change mounts)."""

    model_config = MODEL_CONFIG

    name: str = Field(
        description="What clients call it (`mountName`) and where code sees it "
        "(`/mnt/NAME`): 1-64 letters, digits, - and _; not `workspace` (reserved).",
        json_schema_extra={"pattern": f"^{MOUNT_NAME.pattern}$"},
    )
    path: str = Field(
        description="The host folder, as an absolute path; it must be an existing folder when "
        "the server starts."
    )
    read_only: bool = Field(
        default=True,
        description="true: code's changes are refused and never copied back; false: they are "
        "copied back to the folder after each call. Default: true.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        expected = mount_name_problem(value)
        if expected is not None:
            raise ValueError(f"expected {expected}, got {value!r}; rename the mount")
        return value

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not PurePosixPath(value).is_absolute():
            raise ValueError(
                f"expected an absolute folder path, got {value!r}; write it in full "
                "(e.g. /srv/sandgate/data)"
            )
        return value


class EgressSettings(BaseModel):
    """How the server's egress proxy resolves names and trusts upstream servers (read when
    the proxy starts, at the first run with an egress route: a reload does not change them)."""

    model_config = MODEL_CONFIG

    hosts: dict[str, str] = Field(
        default_factory=dict,
        description="Names the proxy resolves to these addresses instead of asking DNS (tests, "
        'air-gapped sites): `{"api.test": "127.0.0.1"}`. The address is still checked '
        "by the rules (a loopback one needs an allow entry naming it). Default: none.",
    )
    upstream_ca: str | None = Field(
        default=None,
        description="PEM file of the CA(s) the proxy trusts for upstream HTTPS instead of the "
        "public ones (an internal CA, a test CA). Default: the public CAs (certifi).",
    )

    @field_validator("hosts")
    @classmethod
    def _addresses(cls, value: dict[str, str]) -> dict[str, str]:
        import ipaddress

        for name, address in value.items():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(
                    f"hosts: {name!r} must map to an IP address, got {address!r}"
                ) from None
        return value


class ServerSettings(BaseModel):
    """Limits that protect the server itself, whatever the tools' rules allow."""

    model_config = MODEL_CONFIG

    max_request_bytes: int = Field(
        default=DEFAULT_MAX_REQUEST_BYTES,
        gt=0,
        description="Largest request, in bytes: an HTTP request body (bigger ones get 413, read "
        "at start-up) and a tool call's arguments as JSON (bigger ones are refused before the "
        "policy, with rule /server/max_request_bytes). Default: 4194304 (4 MiB).",
    )
    max_sessions_per_grant: int = Field(
        default=DEFAULT_MAX_SESSIONS_PER_GRANT,
        gt=0,
        description="Sessions (MCP sessions and named run_code sessions, each with a workspace) "
        "one grant may hold at once; a call that would open one more is refused with rule "
        "/server/max_sessions_per_grant until one ends or idles out. Default: 64.",
    )
    max_workspace_bytes_total: int = Field(
        default=DEFAULT_MAX_WORKSPACE_BYTES_TOTAL,
        gt=0,
        description="Bytes all session workspaces of this server may use on disk; while they use "
        "more, calls that would open a new session are refused with rule "
        "/server/max_workspace_bytes_total. Default: 4294967296 (4 GiB).",
    )
    session_idle_s: float = Field(
        default=DEFAULT_SESSION_IDLE_S,
        gt=0,
        description="Seconds without a call after which a session is ended and its workspace "
        "removed (also the idle timeout of HTTP sessions). Default: 3600.",
    )
    http_sessions: Literal["memory", "redis"] = Field(
        default="memory",
        description="Where MCP streamable-HTTP sessions live: memory (this process; a client "
        "must come back to the same server) or redis (the Redis at `state.url`: every replica "
        "or front end sharing it accepts any session of the grant that opened it, and the "
        "per-grant session count is shared; server-initiated GET streams and elicitation "
        "are unavailable). Default: memory.",
    )
    grant_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Fraction of every pooled resource (run slots, Pyodide interpreters, "
        "workspace disk and sessions) one grant may hold while other grants need them; a grant "
        "over its share gets 'busy' while the others are served. A grant's own `share` "
        "overrides it. Default: 0.5.",
    )
    max_snapshots_per_grant: int = Field(
        default=16,
        ge=0,
        description="Session snapshots (snapshot_session) one grant may keep at once; another "
        "is refused with rule /server/max_snapshots_per_grant until one is deleted. 0 turns "
        "snapshots off. Default: 16.",
    )
    max_snapshot_bytes_per_grant: int = Field(
        default=1024 * 1024 * 1024,
        gt=0,
        description="Bytes of disk (allocated blocks: files, installed packages and saved "
        "interpreters) one grant's snapshots may occupy together; a snapshot that would go "
        "over is refused with rule /server/max_snapshot_bytes_per_grant and nothing is kept. "
        "Default: 1073741824 (1 GiB).",
    )
    max_forks_per_call: int = Field(
        default=16,
        gt=0,
        description="Sessions one fork_session call may make from a snapshot (each is also a "
        "session of the grant: server.max_sessions_per_grant still applies). Default: 16.",
    )
    result_text_bytes: int = Field(
        default=DEFAULT_RESULT_TEXT_BYTES,
        ge=1024,
        le=MAX_RESULT_TEXT_BYTES,
        description="Bytes of printed text (stdout and stderr together, UTF-8) one tool result "
        "gives the model; beyond it the head and the tail are kept around an `… N bytes "
        "omitted …` marker and the whole stream is saved in the session's workspace "
        "(`.sandgate/output/`, the newest 16 kept, counted in its budget) and linked as a "
        "resource. At least 1024, at most 16777216. Default: 65536 (64 KiB).",
    )
    result_image_bytes: int = Field(
        default=DEFAULT_RESULT_IMAGE_BYTES,
        ge=65536,
        le=MAX_RESULT_IMAGE_BYTES,
        description="Largest image one tool result gives the model, in bytes of the encoded "
        "file; a bigger one is re-encoded (PNG, then JPEG) and scaled down until it fits, and "
        "one that cannot be is left out with a note naming the file and why. At least 65536, "
        "at most 20971520. Default: 4718592 (4.5 MiB: common model APIs refuse images over "
        "5 MB).",
    )
    list_denied_tools: bool = Field(
        default=False,
        description="List in tools/list the tools a caller's grant is refused (`action: deny`, "
        "not listed under `default: deny`, a `require`/`deny_if` on the grant or its roles); "
        "hidden tools are never listed. Default: false (each grant sees what it may call; "
        "tools needing approval are listed).",
    )
    mounts: list[ServerMount] = Field(
        default_factory=list,
        description="Operator folders shown to code at `/mnt/NAME` (every engine) and to the Mcp "
        "Pyodide mount tools, in addition to `sandgate serve --mount` (a name given by both is "
        "a start-up error). Read when the server starts: a reload does not change them. "
        "Default: none.",
    )
    console: ConsoleSettings | None = Field(
        default=None,
        description="The operator console (`/console` over streamable HTTP): its operators and "
        "how it may be reached. Default: none (the console is off).",
    )
    egress: EgressSettings = Field(
        default_factory=lambda: EgressSettings(),
        description="The egress proxy of routes whose `quotas.network` is an egress rule.",
    )


def grant_share(policy: Policy, grant: str) -> float:
    """The share of pooled resources `grant` may hold (its own, else the server's)."""
    known = policy.grants.get(grant)
    if known is not None and known.share is not None:
        return known.share
    return policy.server.grant_share


class Policy(BaseModel):
    """A whole policy file. Unknown keys are errors; every default is the safe one."""

    model_config = MODEL_CONFIG

    version: Literal["1"] = Field(default="1", description='Format version; only "1".')
    description: str | None = Field(default=None, description="What this policy allows.")
    default: Literal["allow", "deny"] = Field(
        default="deny", description="Decision for tools not listed under `tools`."
    )
    mode: Mode = Field(
        default="enforce",
        description="enforce; audit (would-be denials are "
        "logged as would_deny but allowed); off (all allowed, still audited).",
    )
    hide: list[str] = Field(
        default_factory=list, description="Tools removed from tools/list and denied."
    )
    all_tools: ToolRule | None = Field(
        default=None,
        description="Rule applied to every tool "
        "before its own: its action, checks and limits count.",
    )
    tools: dict[str, ToolRule] = Field(
        default_factory=dict,
        description="Rule per tool name; a listed tool is allowed unless it says otherwise.",
    )
    grants: dict[str, Grant] = Field(
        default_factory=dict,
        description="Client credentials by name. None: only the local stdio user.",
    )
    grants_file: str | None = Field(
        default=None, description="YAML/JSON file with more grants, relative to this file."
    )
    engines: dict[str, EngineProfile] = Field(
        default_factory=dict, description="Engine profiles by name (may override built-ins)."
    )
    quotas: Quotas = Field(default_factory=Quotas, description="Default quotas of every tool.")
    roles: dict[str, Role] = Field(
        default_factory=dict,
        description="Quotas by grant role (a name in some grant's `roles`), applied to every "
        "call of a grant holding the role, over the tool's and its engine profile's. A role "
        "no grant holds is a warning. Default: none.",
    )
    packages: Packages = Field(
        default_factory=Packages, description="Package allow-list and mirror."
    )
    approvals: ApprovalSettings = Field(
        default_factory=ApprovalSettings, description="Approval settings."
    )
    audit: AuditSettings = Field(default_factory=AuditSettings, description="Audit log settings.")
    state: StateSettings = Field(
        default_factory=StateSettings, description="Counter and approval store."
    )
    limits: list[CounterLimit] = Field(
        default_factory=list, description="Rate limits applied to every call."
    )
    secrets: list[SecretRule] = Field(
        default_factory=list,
        description="Brokered secrets: code sees a placeholder, the egress proxy puts the value "
        "only in requests to the secret's `hosts` (and refuses the placeholder elsewhere). An "
        "egress route lists the secrets its code may use. Default: none.",
    )
    server: ServerSettings = Field(
        default_factory=ServerSettings,
        description="Limits protecting the server itself (request size, sessions, disk) and "
        "its operator mounts.",
    )

    _warnings: tuple[Problem, ...] = PrivateAttr(default=())
    _source: Path | None = PrivateAttr(default=None)

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        return "1" if value == 1 and not isinstance(value, bool) else value

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """Things that load but are probably not what the author meant."""
        return self._warnings

    @property
    def source(self) -> Path | None:
        """The file this policy was loaded from, when it came from a file."""
        return self._source

    def profile(self, name: str) -> tuple[EngineKind, str | None, Quotas]:
        """Return (kind, runtime, quotas) of the engine profile `name`.

        Raises:
            KeyError: `name` is neither in `engines` nor a built-in profile.
        """
        if name in self.engines:
            prof = self.engines[name]
            default_runtime = "runc" if prof.kind == "container" else None
            return prof.kind, prof.runtime or default_runtime, prof.quotas
        kind, runtime = BUILTIN_PROFILES[name]
        return kind, runtime, Quotas()


def engine_requirements(
    policy: Policy, profiles: Iterable[str] | None = None
) -> dict[str, frozenset[str]]:
    """The boundary layers the policy requires of each engine it routes to, by engine key.

    An engine requires the union of `require` over the `profiles` that run on it (default:
    every profile the policy's rules name, and the default profile); a profile without
    `require` (every built-in one) requires every layer of its engine. Engines no profile
    routes to are left out (they require all of their layers).
    """
    if profiles is None:
        named = {rule.engine for rule in policy.tools.values() if rule.engine}
        if policy.all_tools is not None and policy.all_tools.engine:
            named.add(policy.all_tools.engine)
        profiles = {*named, DEFAULT_PROFILE}
    required: dict[str, frozenset[str]] = {}
    for name in sorted(set(profiles)):
        if name in policy.engines:
            profile = policy.engines[name]
            key, listed = profile.engine_key, profile.require
        elif name in BUILTIN_PROFILES:
            key, listed = _profile_key(*BUILTIN_PROFILES[name]), None
        else:
            continue
        layers = frozenset(layer_names(key) if listed is None else listed)
        required[key] = required.get(key, frozenset()) | layers
    return required
