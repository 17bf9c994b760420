"""The per-tool parts of a policy: `ToolRule`, `CounterLimit`, `Predicate` and `Quotas`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ._egress import EgressRule
from ._terms import MODEL_CONFIG, Scope, window_seconds

Action = Literal["allow", "deny", "hide", "require_approval"]
Mode = Literal["enforce", "audit", "off"]
PredicateOp = Literal[
    "eq", "neq", "in", "not_in", "lt", "lte", "gt", "gte", "regex", "contains", "exists", "len_lte"
]

_PATH = re.compile(r"^(?:args(?:\.[A-Za-z0-9_\-]+)+|grant|session|tool|roles)$")
_NUMBER_OPS = frozenset({"lt", "lte", "gt", "gte"})


def check_path(path: str) -> str:
    """Validate an argument path (`args.x`, `args.x.y`, `grant`, `session`, `tool`, `roles`)."""
    if not _PATH.match(path):
        raise ValueError(
            f"path must be 'args.NAME' (dots for nested keys) or one of grant, session, tool, "
            f"roles, got {path!r}"
        )
    return path


class Predicate(BaseModel):
    """A test on one argument (or the caller). False when the argument is missing."""

    model_config = MODEL_CONFIG

    path: str = Field(
        description="What to test: `args.NAME` (dots for nested keys), "
        "`grant`, `session`, `tool` or `roles` (the grant's roles)."
    )
    op: PredicateOp = Field(
        description="The comparison. `exists` and `len_lte` look at the "
        "whole value; the others at each item of a list argument."
    )
    value: Any = Field(
        default=None,
        description="The operand: a list for in/not_in, a number "
        "for lt/lte/gt/gte, a regex (Python `re.search`) for regex, an int "
        "for len_lte; ignored for exists.",
    )

    @field_validator("path")
    @classmethod
    def _path_parses(cls, value: str) -> str:
        return check_path(value)

    @model_validator(mode="after")
    def _value_fits_op(self) -> Predicate:
        op, value = self.op, self.value
        if op in ("in", "not_in") and not isinstance(value, list):
            raise ValueError(f"op {op!r} needs a list value, got {value!r}")
        if op in _NUMBER_OPS and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"op {op!r} needs a number value, got {value!r}")
        if op == "len_lte" and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"op 'len_lte' needs an integer value >= 0, got {value!r}")
        if op == "regex":
            if not isinstance(value, str):
                raise ValueError(f"op 'regex' needs a string value, got {value!r}")
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"value is not a valid regular expression: {exc}") from exc
        if op in ("eq", "neq", "contains") and value is None:
            raise ValueError(f"op {op!r} needs a value; use op 'exists' to test presence")
        return self


class CounterLimit(BaseModel):
    """A sliding-window rate limit: at most `max` units per `window` per `scope`."""

    model_config = MODEL_CONFIG

    counter: str = Field(
        min_length=1,
        description="Counter name. Limits naming the same counter (and scope) share its count.",
    )
    window: str = Field(
        description="Sliding window: `minute`, `hour`, `day` or an ISO-8601 "
        "duration (`PT30S`, `P1D`)."
    )
    max: int = Field(ge=0, description="Most units allowed inside the window; 0 denies all.")
    scope: Scope = Field(
        default="grant",
        description="Who shares the count: one per `grant` "
        "(client credential), `session`, `tool`, or `global`.",
    )
    increment: int = Field(default=1, ge=0, description="Units one call adds.")
    increment_from: str | None = Field(
        default=None,
        description="An `args.NAME` path whose "
        "number (or list length) is the call's units instead "
        "of `increment`; `increment` is used when it is missing.",
    )

    @field_validator("window")
    @classmethod
    def _window_parses(cls, value: str) -> str:
        window_seconds(value)
        return value

    @field_validator("increment_from")
    @classmethod
    def _increment_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("args."):
            raise ValueError(f"increment_from must be an 'args.NAME' path, got {value!r}")
        return None if value is None else check_path(value)

    @property
    def window_s(self) -> float:
        """The window length in seconds."""
        return window_seconds(self.window)


PositiveFloat = Annotated[float, Field(gt=0)]


class Quotas(BaseModel):
    """Resource ceilings of one run. Unset fields inherit, the later layer winning: built-in ←
    `quotas` ← `all_tools` ← engine profile ← tool ← the caller's grant roles (`roles`)."""

    model_config = MODEL_CONFIG

    timeout_s: PositiveFloat | None = Field(
        default=None,
        description="Wall-clock seconds per "
        "run; also the ceiling for caller-set timeouts. "
        "Built-in: 30.",
    )
    cpu_s: PositiveFloat | None = Field(
        default=None,
        description="CPU seconds per run. Built-in: unset (the wall timeout bounds CPU).",
    )
    memory_mb: int | None = Field(
        default=None, ge=1, description="Memory per run in MiB. Built-in: 512."
    )
    output_bytes: int | None = Field(
        default=None, ge=0, description="Bytes kept per output stream. Built-in: 1048576 (1 MiB)."
    )
    workspace_mb: int | None = Field(
        default=None,
        ge=0,
        description="Session workspace size in MiB of disk actually occupied (allocated "
        "blocks of every file, folder and link; a sparse file counts what it occupies). "
        "Built-in: 256.",
    )
    workspace_files: int | None = Field(
        default=None,
        ge=1,
        description="Session workspace size in inodes: files, folders, links and other "
        "entries, each counted once. Built-in: 10000.",
    )
    processes: int | None = Field(
        default=None,
        ge=1,
        description="Processes/threads per run (container engine). Built-in: 64.",
    )
    network: Literal["none", "mirror"] | EgressRule | None = Field(
        default=None,
        description="Network of the guest: none, only the package mirror, or an egress route "
        "(`allow:` hosts, reached through the server's egress proxy, with byte and connection "
        "quotas). Built-in: none.",
    )
    max_code_bytes: int | None = Field(
        default=None,
        ge=0,
        description="Largest `code` argument in UTF-8 bytes. Built-in: 1048576 (1 MiB).",
    )
    fuel: int | None = Field(
        default=None,
        ge=1,
        description="Instruction budget for engines that meter fuel. Built-in: unset.",
    )


class ToolRule(BaseModel):
    """What the policy says about one tool (or, as `all_tools`, about every tool)."""

    model_config = MODEL_CONFIG

    action: Action = Field(
        default="allow",
        description="allow, deny, hide (removed from "
        "tools/list and denied) or require_approval (a human says yes "
        "first).",
    )
    reason: str | None = Field(default=None, description="Sentence the agent sees on deny.")
    engine: str | None = Field(
        default=None,
        description="Engine profile: a name from "
        "`engines` or a built-in (wasm, pyodide, container, gvisor). "
        "Default: wasm.",
    )
    mode: Mode | None = Field(
        default=None, description="Overrides the policy's mode for this tool."
    )
    state: Literal["fresh", "persistent"] | None = Field(
        default=None,
        description="persistent: the calls of one session share one live interpreter "
        "(globals, imports, objects), every limit still per call; fresh: every call in an "
        "interpreter no other call touched. Default: the tool's own (persistent for "
        "run_python_code and pyodide_execute, as upstream; fresh for the others).",
    )
    limits: list[CounterLimit] = Field(
        default_factory=list, description="Rate limits; all must fit or the call is denied."
    )
    quotas: Quotas = Field(
        default_factory=Quotas, description="Resource ceilings of this tool's runs."
    )
    require: list[Predicate] = Field(
        default_factory=list,
        description="Every predicate must hold (for list arguments: every item), else deny.",
    )
    deny_if: list[Predicate] = Field(
        default_factory=list,
        description="Deny when any predicate holds (for list arguments: any item).",
    )
    approve_if: list[Predicate] = Field(
        default_factory=list, description="Ask a human when any predicate holds."
    )
    args_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the arguments must satisfy."
    )


class Operator(BaseModel):
    """One person who may open the operator console: a name (audited) and a token's sha256."""

    model_config = MODEL_CONFIG

    name: str = Field(
        pattern=r"^[A-Za-z0-9_.@-]{1,64}$",
        description="Who this is, as the audit trail records their answers "
        "(`operator:NAME`): letters, digits, `_.@-`, at most 64.",
    )
    token_sha256: str = Field(
        pattern=r"^[0-9a-fA-F]{64}$",
        description="Hex sha256 of the operator's console token (never the token itself): "
        "`printf %s TOKEN | sha256sum`. Must differ from every grant's token.",
    )

    @field_validator("token_sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class ConsoleSettings(BaseModel):
    """The operator console at `/console` of `sandgate serve --transport streamable-http`."""

    model_config = MODEL_CONFIG

    operators: list[Operator] = Field(
        min_length=1,
        description="Who may open the console (a login form, or `Authorization: Bearer TOKEN` "
        "on its JSON endpoints). A client's grant token never opens it.",
    )
    allow_plain_http: bool = Field(
        default=False,
        description="Serve the console over plain HTTP to clients off this host. Default: "
        "false (only over HTTPS, or from a loopback address: put a TLS proxy in front).",
    )
    hold_approvals_s: float = Field(
        default=60.0,
        ge=0,
        le=3600,
        description="Seconds a call that needs an operator's approval waits, its client "
        "connected, for an answer from the console (or `sandgate approve`) before it is "
        "refused with its approval id; never longer than `approvals.timeout_s`. 0: refused at "
        "once. Default: 60.",
    )
    session_s: float = Field(
        default=28800.0,
        gt=0,
        description="Seconds a console login lasts. Default: 28800 (8 h).",
    )

    @model_validator(mode="after")
    def _distinct(self) -> ConsoleSettings:
        names = [o.name for o in self.operators]
        hashes = [o.token_sha256 for o in self.operators]
        if len(set(names)) != len(names) or len(set(hashes)) != len(hashes):
            raise ValueError(
                "operators: every name and every token_sha256 must be unique, got "
                f"names {names}; give each operator a token of their own"
            )
        return self
