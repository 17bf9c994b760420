"""Assemble a running sandgate from its configuration: policy, state, audit, engines, sessions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from policies import (
    AUDIT_FILE,
    Gate,
    PolicyError,
    default_policy_path,
    engine_requirements,
    grant_share,
    load_policy,
    open_audit_sink,
    open_counter_store,
    state_dir_default,
)
from sandboxes import DEFAULT_WORKERS, Engine

from ._admission import Admission
from ._engines import Engines, default_factories, routed_engine_keys
from ._errors import SetupError
from ._mounts import MountPoint, merge_mounts, policy_mounts
from ._service import Service
from ._sessions import Sessions
from .packages import Installer
from .snapshots import SnapshotStore
from .tools import ALL_TOOL_SETS, ToolSet

logger = logging.getLogger("sandgate.app")

REAP_EVERY_S = 60.0
MIN_REAP_EVERY_S = 0.05


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Config:
    """How to run a server.

    Attributes:
        policy_path: The policy file; `None` uses the shipped `policies/default.yaml`.
        state_dir: Counters, audit trail and workspaces live here.
        workers: WASM worker processes (guests that run at once).
        prepared_guests: Each WASM worker keeps a guest prepared ahead of the next call.
        embedded_guests: WASM calls run in fresh guests of sandgate's own embedding, opened
            from each worker's image of a guest with its harness loaded.
        tool_sets: Which tool sets to serve.
        mounts: Operator folders from `--mount` (code on every engine sees them at
            `/mnt/NAME`, the Mcp Pyodide mount tools list and read them); the policy's
            `server.mounts` come after them, read once at start.
        idle_s: Seconds of inactivity after which a session's workspace is removed;
            `None` (the default) takes the policy's `server.session_idle_s`.
        progress: Where start-up progress lines go.
        clock: Unix time source for session idling (tests pass a fake clock).
        snapshots_dir: Where session snapshots live (default: `snapshots` in `state_dir`);
            several servers may share one (the nodes of a cluster).
    """

    policy_path: Path | None = None
    state_dir: Path = field(default_factory=state_dir_default)
    workers: int = DEFAULT_WORKERS
    prepared_guests: bool = True
    embedded_guests: bool = True
    tool_sets: tuple[ToolSet, ...] = ALL_TOOL_SETS
    mounts: tuple[MountPoint, ...] = ()
    idle_s: float | None = None
    progress: Callable[[str], None] = _stderr
    clock: Callable[[], float] = time.time
    snapshots_dir: Path | None = None


@asynccontextmanager
async def open_service(
    config: Config,
    *,
    engines: dict[str, Engine] | None = None,
    gate_type: type[Gate] = Gate,
) -> AsyncIterator[Service]:
    """A ready-to-serve `Service`; everything it opened is closed on exit.

    Args:
        config: The configuration.
        engines: Engines already running, by key, used instead of starting those (tests).
        gate_type: The gate's class (a cluster node's records its calls in flight).

    Raises:
        SetupError: the policy does not load, one of its mounts is not a folder or has the
            name of a `--mount` one, or the state store cannot open.
    """
    path = config.policy_path or default_policy_path()
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        raise SetupError(f"cannot load the policy {path}: {exc}") from exc
    mounts = merge_mounts(
        config.mounts,
        policy_mounts(policy.server.mounts, source=str(path)),
        source=str(path),
    )
    config.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        store = open_counter_store(policy.state, default_dir=config.state_dir)
    except PolicyError as exc:
        raise SetupError(f"cannot open the policy state store: {exc}") from exc
    try:
        audit = open_audit_sink(
            policy.audit, state_url=policy.state.url, default_path=config.state_dir / AUDIT_FILE
        )
    except PolicyError as exc:
        store.close()
        raise SetupError(f"cannot open the audit sink of {path}: {exc}") from exc
    for said in audit.warnings:
        logger.warning("audit: %s", said)
    gate = gate_type(policy, store, audit, policy_path=Path(path))
    for warning in policy.warnings:
        logger.warning("policy %s: %s", path, warning)
    running = Engines(
        default_factories(
            workers=config.workers,
            state_dir=config.state_dir,
            progress=config.progress,
            prepared_guests=config.prepared_guests,
            embedded_guests=config.embedded_guests,
            require=engine_requirements(policy),
        ),
        ready=engines,
    )
    workspaces = config.state_dir / "workspaces" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    sessions = Sessions(
        workspaces,
        idle_s=config.idle_s,
        settings=lambda: gate.policy.server,
        share=lambda grant: grant_share(gate.policy, grant),
        clock=config.clock,
    )
    packages = policy.packages
    installer = Installer(
        mirror_dir=Path(packages.mirror) if packages and packages.mirror else None,
        allowlist=Path(packages.allowlist) if packages and packages.allowlist else None,
    )
    service = Service(
        gate=gate,
        engines=running,
        sessions=sessions,
        installer=installer,
        tool_sets=config.tool_sets,
        admission=Admission(config.workers),
        operator_mounts=mounts,
        snapshot_store=SnapshotStore(config.snapshots_dir or config.state_dir / "snapshots"),
        egress_dir=config.state_dir,
    )
    reaper = asyncio.create_task(_reap(sessions, running))
    # The engines start while the server already answers (`initialize`, `tools/list` need
    # none): a call waits for its engine (`Engines.get`), as it would for one started late.
    starting = asyncio.create_task(running.start(routed_engine_keys(gate, service.tool_names())))
    starting.add_done_callback(_said_if_failed)
    try:
        yield service
    finally:
        for task in (starting, reaper):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for key in sessions.held():  # engines shared with others keep nothing of this server's
            await running.end_session(key)
        await running.aclose()
        await service.egress.aclose()
        sessions.close()
        shutil.rmtree(workspaces, ignore_errors=True)
        store.close()
        audit.close()


def _said_if_failed(task: asyncio.Task[None]) -> None:
    """Log an engine start that failed other than by `EngineUnavailable` (which `Engines`
    logs and keeps for the engine's calls): a call to that engine tries again."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("starting the engines failed", exc_info=exc)


async def _reap(sessions: Sessions, engines: Engines) -> None:
    """Remove idle sessions, checking every `REAP_EVERY_S` (more often for short idle times)."""
    while True:
        await asyncio.sleep(min(REAP_EVERY_S, max(MIN_REAP_EVERY_S, sessions.idle_s / 4)))
        try:
            for gone in await asyncio.to_thread(sessions.reap_idle):
                await engines.end_session(gone)
        except Exception:  # a failed sweep must not end the reaping
            logger.exception("could not remove idle sessions")
