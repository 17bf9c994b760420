"""Value types shared by every engine: what to run, under which limits, and how it ended."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._files import DiskUsage

Status = Literal["ok", "error", "timeout", "memory", "output_limit", "killed", "denied"]
"""How a run ended. Everything but `ok` and `error` names the limit (or event) that stopped it."""

NetworkMode = Literal["none", "mirror", "egress"]
"""`none`: no network at all. `mirror`: only the local package mirror (container engine).
`egress`: no network interface either, but the policy's egress proxy outside the sandbox,
reached only through what the engine lends the guest (`ExecutionPlan.egress`)."""

ProgramKind = Literal["code", "file"]

StateMode = Literal["fresh", "persistent"]
"""`fresh`: every run in an interpreter no other run touched. `persistent`: the runs of one
session share one live interpreter (globals, imports, objects) while it lives."""

StateOutcome = Literal["fresh", "new", "kept", "lost"]
"""How a run found its session's state: `fresh` (a fresh interpreter, by `StateMode`), `new`
(persistent, the session's first interpreter), `kept` (persistent, the interpreter of the
session's previous run) or `lost` (persistent, the previous interpreter ended: a limit stopped
a run, it was reclaimed or idled out; `RunResult.state_note` says why)."""

DEFAULT_WALL_TIMEOUT_S = 30.0
DEFAULT_MEMORY_BYTES = 512 * 1024 * 1024
DEFAULT_OUTPUT_BYTES = 1024 * 1024
DEFAULT_PROCESSES = 64
DEFAULT_WORKSPACE_BYTES = 256 * 1024 * 1024
DEFAULT_WORKSPACE_FILES = 10_000
DEFAULT_WORKERS = min(8, (os.cpu_count() or 1) + 1)
"""Guests (runs) one engine serves at once when the server does not say."""
DEFAULT_POOL_SHARE = 0.5
"""Fraction of a pool one grant may hold while others need it."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use. Every field carries its unit; the gate fills it from the policy.

    Attributes:
        wall_timeout_s: Wall-clock seconds before the runtime stops the run (`timeout`).
        cpu_time_s: CPU seconds; `None` means the wall timeout alone bounds CPU.
        memory_bytes: Most memory the guest may hold (`memory`).
        output_bytes: Most bytes kept per output stream (`output_limit`).
        processes: Most processes/threads (container engine; WASM guests have none).
        workspace_bytes: Most bytes of disk the session workspace may occupy: allocated blocks
            of every file, folder and link in it (a sparse file counts what it occupies).
        workspace_files: Most inodes the session workspace may hold: files, folders, links
            and other entries, each counted once.
        network: Network reachable from the guest.
        fuel: Instruction budget for engines that meter fuel; `None` for none.
    """

    wall_timeout_s: float = DEFAULT_WALL_TIMEOUT_S
    cpu_time_s: float | None = None
    memory_bytes: int = DEFAULT_MEMORY_BYTES
    output_bytes: int = DEFAULT_OUTPUT_BYTES
    processes: int = DEFAULT_PROCESSES
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES
    workspace_files: int = DEFAULT_WORKSPACE_FILES
    network: NetworkMode = "none"
    fuel: int | None = None


@dataclass(frozen=True, slots=True)
class Program:
    """What to run.

    Attributes:
        kind: `code` runs `source` as Python text; `file` runs the workspace file `source`
            (a path relative to the workspace, already checked by the caller).
        source: Python text or a workspace-relative path.
        variable_to_return: A global whose `str()` comes back as `RunResult.value`.
        stdin: The guest's standard input.
        final_expression: As a REPL does: when the code (`kind` "code") ends in an expression
            statement, evaluate it and return its `repr()` as `RunResult.value` (unless it is
            `None`). Ignored when `variable_to_return` is set (that wins) and for files.
    """

    kind: ProgramKind
    source: str
    variable_to_return: str | None = None
    stdin: bytes = b""
    final_expression: bool = False


@dataclass(frozen=True, slots=True)
class HostMount:
    """An operator folder shown to code at `/mnt/NAME` (every engine shows them).

    Attributes:
        name: The mount's name: letters, digits, `-` and `_` (the caller checks it).
        host: The host folder (absolute). Links inside it are never followed.
        read_only: True: changes the code makes are never written back (and refused where
            the engine can refuse them). False: they are written back to `host`.
    """

    name: str
    host: Path
    read_only: bool = True


@dataclass(frozen=True, slots=True)
class WorkspacePaths:
    """The host folders of one session: `files` is the guest's writable working directory,
    `site` holds installed packages and is mounted read-only on the guest's import path,
    `mounts` are operator folders, shown at `/mnt/NAME`."""

    files: Path
    site: Path
    mounts: tuple[HostMount, ...] = ()


@dataclass(frozen=True, slots=True)
class Egress:
    """The one way out of a sandbox whose run may reach the network (`Limits.network` is
    `egress`): an HTTP proxy on the host that decides every connection by the policy, pins the
    name to the address it resolved, counts bytes and connections and audits each one. The
    sandbox still has no network interface: the engine lends the guest a path to this proxy
    and nothing else.

    What every engine does with it, the same way: code's plain `urllib.request.urlopen` (and
    `requests` and `pip` where installed) reach allowed hosts unchanged (`HTTP_PROXY`,
    `HTTPS_PROXY` and their lower-case forms point at a proxy address valid inside the guest,
    with `credentials`); `ca_certificate` is trusted for HTTPS (`SSL_CERT_FILE`,
    `REQUESTS_CA_BUNDLE`, `PIP_CERT`); `environment` is added to the guest's environment; a
    proxy answer carrying the `Sandgate-Refused` header is raised inside the code as
    `PermissionError(<that header's text>)`.

    Attributes:
        host: The proxy's loopback address on the host (`127.0.0.1`).
        port: The proxy's TCP port on the host.
        socket: The proxy's Unix socket on the host, for engines that lend a socket (a
            bind-mount) rather than a host port; the same proxy.
        credentials: `USER:TOKEN` naming this run to the proxy (proxy basic auth): its
            decisions, quotas and audit records are this run's.
        ca_certificate: The server's interception CA certificate (PEM) to trust.
        environment: Variables for the guest, e.g. brokered secrets' placeholders.
    """

    host: str
    port: int
    socket: Path | None
    credentials: str
    ca_certificate: Path
    environment: tuple[tuple[str, str], ...] = ()

    def proxy_url(self, host: str | None = None, port: int | None = None) -> str:
        """The proxy URL with this run's credentials, at `host:port` as the guest reaches it
        (default: the host's own address)."""
        return f"http://{self.credentials}@{host or self.host}:{port or self.port}"


REFUSAL_HEADER = "Sandgate-Refused"
"""The header of a proxy answer that refuses a connection; its text is raised in the code as
`PermissionError`."""


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    """The only thing an engine runs. Made by the policy gate after an allow decision.

    Attributes:
        decision_id: The audit id of the decision that allowed this run.
        engine: The engine kind (`wasm`, `pyodide`, `container`).
        program: What to run.
        limits: The limits, already clamped to the policy's ceilings.
        workspace: The session's folders.
        session_id: The session the run belongs to, as its grant names it.
        profile: The policy's engine profile name (e.g. `gvisor`).
        runtime: The engine's runtime where a kind has several (`runc`, `runsc` for the
            container kind); `None` for kinds with one. With `engine` it names the engine that
            runs the plan (`engine_key`): nobody looks into the policy again after the gate.
        grant: The grant (client credential) that owns the session. Session ids are names
            inside one grant: two grants may both have a session `x`, and they are two.
        pool_share: The fraction (0 < share <= 1) of any pooled resource of the engine
            (interpreters, slots) this grant may hold while other grants need them.
        state: Whether the run shares its session's live interpreter (`persistent`) or gets
            one no other run touched (`fresh`).
        egress: The proxy the run may reach when `limits.network` is `egress`; None
            otherwise.
    """

    decision_id: str
    engine: str
    program: Program
    limits: Limits
    workspace: WorkspacePaths
    session_id: str
    profile: str = "default"
    runtime: str | None = None
    grant: str = "local"
    pool_share: float = DEFAULT_POOL_SHARE
    state: StateMode = "fresh"
    egress: Egress | None = None

    @property
    def session_key(self) -> str:
        """The session's key across grants: what an engine keys per-session state by."""
        return session_key(self.grant, self.session_id)

    @property
    def engine_key(self) -> str:
        """The engine that runs this plan (`wasm`, `pyodide`, `container:runsc`, …)."""
        return engine_key(self.engine, self.runtime)


def engine_key(kind: str, runtime: str | None) -> str:
    """The key of an engine: its kind, and the runtime where the kind has several
    (`container:runc`, `container:runsc`)."""
    return f"{kind}:{runtime}" if runtime else kind


def session_key(grant: str, session_id: str) -> str:
    """The one key of a grant's session (engines key interpreters, runners workspaces by it)."""
    return f"{grant}\x00{session_id}"


@dataclass(frozen=True, slots=True)
class NetworkUsage:
    """What a run did through the egress proxy.

    Attributes:
        bytes_up: Bytes sent to hosts (request lines, headers, bodies).
        bytes_down: Bytes received from them.
        connections: Connections made (a client connection to one host:port).
        refused: Each refused connection, as its refusal (`egress to HOST:PORT refused by
            policy rule POINTER: reason`).
        cut: Whether the byte quota cut a transfer.
    """

    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    refused: tuple[str, ...] = ()
    cut: bool = False


@dataclass(frozen=True, slots=True)
class Usage:
    """What a run used: wall and CPU milliseconds, peak memory and fuel where measurable,
    and its network figures when it ran with egress (`network`; None otherwise)."""

    wall_ms: float
    cpu_ms: float | None = None
    peak_memory_bytes: int | None = None
    fuel: int | None = None
    output_bytes: int = 0
    network: NetworkUsage | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """An image the run produced: its workspace-relative path (or its guest path `/mnt/NAME/…`
    when it is in an operator mount), MIME type and bytes."""

    path: str
    mime_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended. Failure of the user's code is data here, never an exception.

    Attributes:
        status: `ok`, `error` (the code raised or exited non-zero) or the limit that stopped it.
        stdout: Captured standard output (decoded, capped).
        stderr: Captured standard error, including the traceback on `error`.
        exit_code: The guest's exit status; `None` when the runtime stopped it.
        value: `str()` of `variable_to_return`, when asked for and found.
        value_found: Whether `variable_to_return` existed (and was not `None`).
        error: The exception line (`ZeroDivisionError: division by zero`) on `error`.
        limit: The limit that stopped the run, in words, when one did.
        truncated: Streams whose output passed `Limits.output_bytes`.
        images: Images written by the code (or open matplotlib figures).
        files_written: Workspace-relative paths created or changed by the run (guest paths
            `/mnt/NAME/…` for files in a writable operator mount).
        usage: What the run used.
        state: How the run found its session's state (`StateOutcome`).
        state_note: Why the session's previous interpreter was lost (`state` "lost").
        workspace_usage: What the workspace held when the engine walked it after the run
            (its whole usage, never cut short), so the runner's budget check need not walk it
            again; `None` when the engine did not walk it whole after the run.
    """

    status: Status
    stdout: str
    stderr: str
    exit_code: int | None
    usage: Usage
    value: str | None = None
    value_found: bool = False
    error: str | None = None
    limit: str | None = None
    truncated: tuple[str, ...] = ()
    images: tuple[Image, ...] = ()
    files_written: tuple[str, ...] = field(default=())
    state: StateOutcome = "fresh"
    state_note: str | None = None
    workspace_usage: DiskUsage | None = None
