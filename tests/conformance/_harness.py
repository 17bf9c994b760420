"""The conformance suite's harness: the engines, the policy that routes every tool to one of
them, the bench (a running service on one engine), what a client sees of a result, the matrix."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest

from runner import TOOLS, Caller, Service
from runner.tools._format import run_code_summary
from sandboxes import Engine

ENGINES = ("wasm", "pyodide", "container", "gvisor")
"""The columns of the matrix: the policy's built-in engine profiles."""
ENGINE_PARAMS = [
    pytest.param("wasm", marks=pytest.mark.wasm, id="wasm"),
    pytest.param("pyodide", marks=[pytest.mark.pyodide, pytest.mark.slow], id="pyodide"),
    pytest.param("container", marks=pytest.mark.container, id="container"),
    pytest.param("gvisor", marks=pytest.mark.container, id="gvisor"),
]
ENGINE_KEYS = {
    "wasm": "wasm",
    "pyodide": "pyodide",
    "container": "container:runc",
    "gvisor": "container:runsc",
}
"""The key each profile's engine runs under in the server (`Service.pool_stats`)."""
GRANT = "local"

TIMEOUT_S = 3
"""The policy's wall time of `run_python_code` (its one limit a client cannot ask for)."""
RUN_TIMEOUT_S = 2
"""The wall time the `run_code` and `pyodide_execute` cases ask for."""
MEMORY_MB = 192
OUTPUT_BYTES = 10_000
WORKSPACE_MB = 64

PACKAGE = "sgconform"
"""The one allow-listed package of the suite's local mirror (a hand-made wheel)."""
PACKAGE_VERSION = "1.0"

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
"""A 1x1 PNG, written by code as plain bytes (no matplotlib needed)."""
RO_TEXT = "read me, do not change me\n"


def policy_text(profile: str, *, allowlist: Path, mirror: Path) -> str:
    """A policy that serves every tool of the registry, each routed to `profile`."""
    lines = [
        "version: '1'",
        "default: deny",
        f"packages: {{allowlist: '{allowlist}', mirror: '{mirror}'}}",
        "quotas:",
        "  timeout_s: 10",
        f"  memory_mb: {MEMORY_MB}",
        f"  output_bytes: {OUTPUT_BYTES}",
        f"  workspace_mb: {WORKSPACE_MB}",
        "tools:",
    ]
    for spec in TOOLS:
        quotas = f", quotas: {{timeout_s: {TIMEOUT_S}}}" if spec.name == "run_python_code" else ""
        lines.append(f"  {spec.name}: {{engine: {profile}{quotas}}}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True, slots=True)
class Seen:
    """What a client sees of a tool result, usage figures aside: `isError`, each content
    block (text as text, an image as its MIME type and the sha256 of its bytes) and the
    structured content."""

    is_error: bool
    blocks: tuple[tuple[str, ...], ...]
    structured: Mapping[str, Any] | None

    @property
    def text(self) -> str:
        """The first block's text (every tool answers with one text block first)."""
        kind, *rest = self.blocks[0]
        assert kind == "text", self.blocks
        return rest[0]

    @property
    def images(self) -> tuple[tuple[str, ...], ...]:
        return tuple(b for b in self.blocks if b[0] == "image")


STRUCTURED_AS_JSON = "<the summary of the structured content>"
"""How `Seen` shows `run_code`'s text block, once checked to be its summary of the structured
content (`run_code_summary`: the printed text is sent once, in the structured content)."""


USAGE_FIGURES = frozenset(
    {"wall_ms", "cpu_ms", "peak_memory_bytes", "fuel", "output_bytes", "network"}
)
"""The figures under `usage` (their values differ by engine and run; their names do not)."""


def image_block(data: bytes, mime_type: str = "image/png") -> tuple[str, ...]:
    """How `Seen` shows an image block of `data`."""
    return ("image", mime_type, hashlib.sha256(data).hexdigest())


def seen(result: types.CallToolResult) -> Seen:
    """What a client sees of `result`, with the run's usage figures left out."""
    assert isinstance(result, types.CallToolResult), result
    blocks: list[tuple[str, ...]] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            blocks.append(("text", block.text))
        elif isinstance(block, types.ImageContent):
            blocks.append(image_block(base64.b64decode(block.data), block.mime_type))
        elif isinstance(block, types.ResourceLink):
            blocks.append(("resource_link", block.uri))
        else:
            raise AssertionError(f"unexpected content block {block!r}")
    structured = None
    if result.structured_content is not None:
        structured = {k: v for k, v in result.structured_content.items() if k != "usage"}
        if "usage" in result.structured_content:  # a run: its text sums the payload up
            usage = result.structured_content["usage"]
            assert isinstance(usage, dict) and set(usage) == USAGE_FIGURES, usage
            summary = run_code_summary(result.structured_content)
            assert blocks[0] == ("text", summary), blocks[0]
            blocks[0] = ("text", STRUCTURED_AS_JSON)
    return Seen(bool(result.is_error), tuple(blocks), structured)


@dataclass
class Bench:
    """A running service whose policy routes every tool to one engine, with an operator
    mount `ro` (read-only) and `rw` (read-write)."""

    profile: str
    service: Service
    ro: Path
    rw: Path
    sessions: set[str] = field(default_factory=set)

    @property
    def engine(self) -> Engine:
        """The engine the policy routes every tool to, as the server runs it."""
        return self.service.engines.running()[ENGINE_KEYS[self.profile]]

    def new_session(self, label: str) -> str:
        """A session id of its own (ended when the bench closes, or by `end_session`)."""
        session = f"{label}-{secrets.token_hex(4)}"
        self.sessions.add(session)
        return session

    async def call(self, tool: str, args: Mapping[str, Any], *, session: str) -> Seen:
        caller = Caller(grant=GRANT, session=session)
        return seen(await self.service.call_tool(tool, dict(args), caller))

    async def end_session(self, session: str) -> bool:
        self.sessions.discard(session)
        return await self.service.end_session(GRANT, session)


class Matrix:
    """Verdicts of every case on every engine, printed at the end of the run."""

    def __init__(self) -> None:
        self.verdicts: dict[tuple[str, str], str] = {}

    def verdict(self, case: str, engine: str, verdict: str) -> None:
        if self.verdicts.get((case, engine)) in ("FAIL", "ERROR"):
            return  # a teardown after a failed call does not hide the failure
        self.verdicts[(case, engine)] = verdict

    def lines(self) -> list[str]:
        cases = list(dict.fromkeys(case for case, _ in self.verdicts))
        width = max(len(c) for c in cases) + 2
        cols = max(len(e) for e in ENGINES) + 3
        rows = ["case".ljust(width) + "".join(e.ljust(cols) for e in ENGINES)]
        rows.append("-" * (width + cols * len(ENGINES)))
        for case in cases:
            cells = [self.verdicts.get((case, e), "-").ljust(cols) for e in ENGINES]
            rows.append(case.ljust(width) + "".join(cells))
        failing = sum(v in ("FAIL", "ERROR") for v in self.verdicts.values())
        passing = sum(v not in ("FAIL", "ERROR", "skip") for v in self.verdicts.values())
        rows.append(f"{passing} cells pass, {failing} fail, of {len(self.verdicts)}")
        return rows


def text_seen(text: str, *, is_error: bool = False) -> Seen:
    """What a client sees of a tool's one-text-block answer."""
    return Seen(is_error, (("text", text),), None)


RUN_OK: dict[str, Any] = {
    "status": "ok",
    "stdout": "",
    "stderr": "",
    "exit_code": 0,
    "error": None,
    "limit": None,
    "truncated": [],
    "images": [],
    "files_written": [],
    "state": "fresh",
    "state_note": None,
    "outputs": [],
    "notes": [],
    "rule": None,
    "reason": None,
    "retry_after_s": None,
}
"""`run_code`'s structured content (usage aside) of a run that printed and wrote nothing (in
a fresh interpreter, `run_code`'s own default)."""


def stop_notice(stderr: str, limit: str) -> str:
    """The engine's own detail in the stop line `sandgate: stopped: LIMIT[; DETAIL]` that
    ends `stderr` ("" when there is none); fails when the line is not there. The judge lets an
    engine add what is true of it only (Pyodide restarts the session's interpreter) there."""
    assert stderr.endswith("\n"), stderr
    last = stderr.rstrip("\n").rsplit("\n", 1)[-1]
    shared = f"sandgate: stopped: {limit}"
    assert last.startswith(shared), (last, shared)
    detail = last.removeprefix(shared)
    assert detail == "" or detail.startswith("; "), last
    return detail


def exception_class(error: str | None) -> str:
    """The exception's class name of an `error` line (`PermissionError: [Errno 13] …`)."""
    assert error is not None
    return error.split(":", 1)[0]


def traceback_of(structured: Mapping[str, Any]) -> str:
    """The traceback in `stderr` of a run that raised, checked to start as Python's does and
    to end with the `error` line (its caret lines follow the engine's Python version)."""
    stderr, error = structured["stderr"], structured["error"]
    assert isinstance(stderr, str) and isinstance(error, str), structured
    assert stderr.startswith("Traceback (most recent call last):\n"), stderr
    assert stderr.endswith(f"\n{error}\n"), (stderr, error)
    return stderr
