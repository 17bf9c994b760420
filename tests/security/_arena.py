"""The attack arena: one engine behind a real `Service`, a case's plants, and the host's verdict.

A case sends guest code through `Service.call_tool("run_code", …)` (the real server path:
argument checks, the policy gate, the engine the policy routes to, the formatter) and then
`verify` judges what the host sees: everything it got back, the workspace it would serve,
the planted files and listeners, the server's own environment, what the host has left, and a
health call on the same session. What the guest prints about itself decides nothing, except
that a guest *admitting* an attempt labelled `!…` succeeded counts against the engine.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types

from runner import Caller, Service
from sandboxes import WorkspacePaths

from ._plant import SECRET_ENV, Plant, host_room, leaked, mount_points_under, workspace_text

ENGINES = ("wasm", "pyodide", "container-runc", "container-runsc")
"""The engines (and container runtimes) every case runs on, as test ids."""
PROFILES = {
    "wasm": "wasm",
    "pyodide": "pyodide",
    "container-runc": "container",
    "container-runsc": "gvisor",
}
"""The built-in policy profile that routes `run_code` to each engine."""
ENGINE_KEYS = {
    "wasm": "wasm",
    "pyodide": "pyodide",
    "container-runc": "container:runc",
    "container-runsc": "container:runsc",
}
EMULATED = frozenset({"pyodide"})
"""Engines whose guests get make-believe success from calls that touch no host: Emscripten's
in-memory file system takes a chown or a mknod, its `setuid` is a stub, its `getaddrinfo`
hands out made-up addresses. A `!` attempt there proves nothing; the host's checks judge."""
GRANT = "security"
WALL_TIMEOUT_S = 5
"""The policy's ceiling: attacks run under it unless they ask for less."""
SHORT_TIMEOUT_S = 2.0
"""What resource attacks ask for."""
MEMORY_MB = 256
OUTPUT_BYTES = 64 * 1024
WORKSPACE_MB = 64
PROCESSES = 64
WORKSPACE_SLACK_BYTES = 512 * 1024 * 1024
"""How far past its budget a workspace may be found after a run: what a guest writes while
the engine's watchdog notices and stops it (measured up to ~400 MB under gVisor, whose
sentry writes its cache back late). Without a watchdog a 2 s run writes gigabytes."""
HOST_BOUND_S = 120.0
"""Longest any call may take, seen from the host (a cold container or Pyodide boot included)."""
HEALTH_CODE = "print('ok')"
_LIMIT_KINDS = ("wall", "CPU", "memory", "processes", "workspace", "output", "fuel")


def policy_text(profile: str) -> str:
    """A policy that serves only `run_code`, routed to `profile`, with the suite's quotas."""
    return (
        "version: '1'\n"
        "default: deny\n"
        "quotas:\n"
        f"  timeout_s: {WALL_TIMEOUT_S}\n"
        f"  memory_mb: {MEMORY_MB}\n"
        f"  output_bytes: {OUTPUT_BYTES}\n"
        f"  workspace_mb: {WORKSPACE_MB}\n"
        f"  processes: {PROCESSES}\n"
        "  network: none\n"
        "tools:\n"
        f"  run_code: {{engine: {profile}}}\n"
    )


@dataclass
class Target:
    """One engine's running service, or why it is not available here."""

    engine: str
    state_dir: Path
    service: Service | None = None
    unavailable: str | None = None
    sessions: set[str] = field(default_factory=set)

    async def end_session(self, session: str) -> None:
        """Forget a session: its workspace, and its engine process where it keeps one."""
        if self.service is None:
            return
        await self.service.end_session(GRANT, session)
        self.sessions.discard(session)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the host got back from one call."""

    status: str
    structured: dict[str, Any]
    text: str
    elapsed_s: float
    attempts: dict[str, str]

    @property
    def limit(self) -> str:
        return str(self.structured.get("limit") or "")

    @property
    def stdout(self) -> str:
        return str(self.structured.get("stdout") or "")

    @property
    def stderr(self) -> str:
        return str(self.structured.get("stderr") or "")

    def cell(self) -> str:
        """The status and the kind of limit that stopped the run, for the summary table."""
        kind = next((k for k in _LIMIT_KINDS if k in self.limit), None)
        if kind is None or self.status.startswith(kind):
            return self.status
        return f"{self.status}:{kind}"


def _everything(result: types.CallToolResult) -> str:
    parts: list[str] = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        elif isinstance(block, types.ImageContent):
            parts.append(base64.b64decode(block.data).decode("latin-1"))
    parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def _attempts(stdout: str) -> dict[str, str]:
    for line in reversed(stdout.splitlines()):
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict):
            return {str(k): str(v) for k, v in found.items()}
    return {}


PROLOGUE = """\
import json as _json
_RESULTS = {}
def attempt(label, fn, *args):
    try:
        value = fn(*args)
    except BaseException as exc:
        _RESULTS[label] = type(exc).__name__ + ": " + str(exc)[:160]
    else:
        _RESULTS[label] = "ok " + repr(value)[:600]
def read(path, size=65536):
    with open(path, "rb") as handle:
        return handle.read(size)
def report():
    print(_json.dumps(_RESULTS, sort_keys=True))
"""


class Table:
    """Outcomes of every case on every engine, printed at the end of the run."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], str] = {}
        self.verdicts: dict[tuple[str, str], str] = {}

    def note(self, case: str, engine: str, text: str) -> None:
        self.outcomes[(case, engine)] = text

    def verdict(self, case: str, engine: str, verdict: str) -> None:
        self.verdicts[(case, engine)] = verdict

    def lines(self) -> list[str]:
        cases = list(dict.fromkeys(c for c, _ in [*self.verdicts, *self.outcomes]))
        width = max([len(c) for c in cases] + [4]) + 2
        cols = 24
        rows = ["case".ljust(width) + "".join(e.ljust(cols) for e in ENGINES)]
        rows.append("-" * (width + cols * len(ENGINES)))
        for case in cases:
            cells = []
            for engine in ENGINES:
                verdict = self.verdicts.get((case, engine), "-")
                outcome = self.outcomes.get((case, engine), "")
                cells.append(f"{verdict} {outcome}".strip()[: cols - 1].ljust(cols))
            rows.append(case.ljust(width) + "".join(cells))
        return rows


class Arena:
    """One case on one engine: planted host state, the case's session, calls, and the verdict."""

    def __init__(
        self, target: Target, plant: Plant, *, case: str, table: Table, session: str, host: Path
    ) -> None:
        assert target.service is not None
        self.target = target
        self.engine = target.engine
        self.service: Service = target.service
        self.plant = plant
        self.case = case
        self.table = table
        self.session = session
        self.host = host
        self._extra: list[str] = []

    def workspace(self, session: str | None = None) -> WorkspacePaths:
        """The host folders of a session (made on first use, as the server would)."""
        return self.service.sessions.get(GRANT, session or self.session).workspace

    def reset_workspace(self) -> None:
        """Empty the session's folders, then plant a package in its site folder to watch."""
        paths = self.workspace()
        for folder in (paths.files, paths.site):
            for entry in os.scandir(folder):
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        planted = paths.site / "sg_planted.py"
        planted.write_text("PLANTED = 'by the host'\n")
        planted.chmod(0o444)
        self.plant.watch(planted)

    def new_session(self) -> str:
        """A fresh session of this case (ended with the case)."""
        session = f"{self.case}-{self.engine}-{secrets.token_hex(4)}"
        self._extra.append(session)
        self.target.sessions.add(session)
        return session

    def prologue(self) -> str:
        plant = self.plant
        constants = {
            "SECRET_PATH": str(plant.secret_path),
            "SECRET_DIR": str(plant.secret_path.parent),
            "RO_PATH": str(plant.readonly_path),
            "TCP_PORT": plant.listeners.tcp_port,
            "UDP_PORT": plant.listeners.udp_port,
            "SECRET_ENV": SECRET_ENV,
            "MARKER": plant.marker,
        }
        lines = [f"{name} = {value!r}" for name, value in constants.items()]
        return "\n".join(lines) + "\n" + PROLOGUE

    async def call(
        self,
        code: str,
        *,
        session: str | None = None,
        timeout_s: float | None = None,
        files: dict[str, str] | None = None,
    ) -> Outcome:
        """One `run_code` call through the service, bounded on the host side."""
        args: dict[str, Any] = {"code": code}
        if timeout_s is not None:
            args["timeout_s"] = timeout_s
        if files is not None:
            args["files"] = files
        caller = Caller(grant=GRANT, session=session or self.session)
        began = time.monotonic()
        with anyio.fail_after(HOST_BOUND_S):
            result = await self.service.call_tool("run_code", args, caller)
        elapsed = time.monotonic() - began
        structured = dict(result.structured_content or {})
        status = str(structured.get("status") or ("error" if result.is_error else "?"))
        stdout = str(structured.get("stdout") or "")
        return Outcome(status, structured, _everything(result), elapsed, _attempts(stdout))

    async def attack(
        self, code: str, *, timeout_s: float | None = None, session: str | None = None
    ) -> Outcome:
        """Run attack `code` after the prologue (planted paths, ports, `attempt`, `report`)."""
        return await self.call(self.prologue() + code, timeout_s=timeout_s, session=session)

    async def verify(
        self,
        outcome: Outcome,
        *,
        statuses: Collection[str] | None = None,
        limits: Collection[str] = (),
        also: Sequence[Outcome] = (),
        needles: tuple[str, ...] = (),
        admissions: bool = True,
    ) -> None:
        """Judge the case from the host; record its cell; raise with every problem found.

        Args:
            outcome: The attack's outcome.
            statuses: Statuses the attack may end with (None: any).
            limits: Words of which one must name the limit that stopped it (none: no check).
            also: Further outcomes the host got back in this case (other sessions' runs).
            needles: Further strings that must not come back (besides the planted secrets).
            admissions: Whether a guest saying a `!` attempt worked counts (False where the
                guest's success is make-believe, such as Emscripten's stubbed `setuid`).
        """
        problems: list[str] = []
        tags: list[str] = []

        def problem(tag: str, text: str) -> None:
            problems.append(text)
            if tag not in tags:
                tags.append(tag)

        if statuses is not None and outcome.status not in statuses:
            problem(
                "status",
                f"status {outcome.status!r}, expected one of {sorted(statuses)} (limit "
                f"{outcome.limit!r}, error {outcome.structured.get('error')!r}, stderr "
                f"{outcome.stderr[-300:]!r})",
            )
        if limits and not any(word in outcome.limit for word in limits):
            problem("limit", f"limit {outcome.limit!r} names none of {sorted(limits)}")
        for out in (outcome, *also) if admissions else ():
            for label, said in out.attempts.items():
                if label.startswith("!") and said.startswith("ok"):
                    problem("admitted", f"the guest says {label!r} worked: {said[:200]}")
        paths = self.workspace()
        kept, held, setuid_root = await anyio.to_thread.run_sync(
            lambda: workspace_text((paths.files, paths.site), skip=self.plant.planted_inodes())
        )
        wanted = (*self.plant.secrets, *needles)
        for where, text in [("the reply", o.text) for o in (outcome, *also)] + [
            ("the workspace", kept)
        ]:
            for found in leaked(text, wanted):
                problem("leak", f"{found[:24]}… came back in {where}")
        for text in self.plant.changed_files():
            problem("changed", text)
        for text in self.plant.changed_server():
            problem("server", text)
        for text in self.plant.listeners.touched(self.plant.marker):
            problem("network", f"the host's loopback listener got {text}")
        budget = WORKSPACE_MB * 1024 * 1024
        if held > budget + WORKSPACE_SLACK_BYTES:
            problem("disk", f"the workspace holds {held} bytes; its budget is {budget}")
        for path in setuid_root:
            problem("setuid", f"a setuid/setgid root file is in the workspace: {path}")
        for point in mount_points_under((self.target.state_dir, self.host)):
            problem("mount", f"a host mount appeared at {point}")
        for text in await anyio.to_thread.run_sync(host_room, self.target.state_dir):
            problem("host", text)
        health = await self.call(HEALTH_CODE)
        if (health.status, health.stdout) != ("ok", "ok\n"):
            problem("health", f"the health call answered {health.status}: {health.text[:300]}")
        cell = outcome.cell() + (f" [{','.join(tags)}]" if tags else "")
        self.table.note(self.case, self.engine, cell)
        assert not problems, f"{self.case} on {self.engine}:\n  " + "\n  ".join(problems)

    async def close(self) -> None:
        for session in self._extra:
            await self.target.end_session(session)
