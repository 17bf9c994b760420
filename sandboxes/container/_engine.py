"""The `container` engine: each run in its own single-use Docker container (runc or gVisor), or,
for a persistent session, in the session's live interpreter container (`_persistent.py`).

Pool design (why a run costs one round-trip on an open connection, not a `docker run`):
containers are created and started ahead of demand, each with its interpreter server waiting
on an attached stdin, and each mounting two fresh, empty *slot* folders of its own
(`<pool>/<id>/files` read-write at /workspace, `<pool>/<id>/site` read-only at /site).
Mounts are fixed at create time, so a run *lends* the session's entries to the slot: one
rename per top-level entry (same filesystem, no copy), the run, then the renames back (see
`_workspace.py`). The container therefore only ever sees its own slot; the slot holds only
that one session's files, for that one run; and the container is removed after the run,
never reused. A crash mid-run leaves a claim record that the next `start()` repairs.

Alternatives rejected: copying files in and out (slow for big workspaces); mount propagation
into running containers (host mount namespace surgery, and invisible to gVisor's gofer);
passing a directory fd (`..` walks out of the container's root); a per-session container
for fresh runs (a `docker run` on every new session, and state shared between runs: that is
what `state: persistent` asks for, and gets, by policy). When the session's
folders are on another filesystem than the pool, or a pool container is not ready, the run
starts its own container (a "cold" run, ~0.6 s with runc, ~1 s with gVisor).

A pool container can die while idle (dockerd restarted, something outside killed it). The pool
drops such containers rather than hand them out; one that dies just as the request is sent is
recognised by the exchange (`SandboxGone`: the code never ran), and the run moves, once, to a
freshly created container, so the user is never blamed for a container that was already dead.

Egress (`Limits.network == "egress"`, `ExecutionPlan.egress`): the container keeps no network
interface but loopback. Its creation bind-mounts the proxy's Unix socket and CA (`EgressMount`,
part of its `Shape`), which pool containers never have, so an egress run always starts its
own container (a persistent session's: one made for egress) and a `none` run never meets one.
Its interpreter server relays 127.0.0.1:`EGRESS_PORT` to the socket (`sandgate_egress`); the
run's lease (proxy variables with its credentials, CA paths, placeholders) travels in the
request, so a persistent interpreter holds each run's own and drops it after the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .._cancel import shielded
from .._copy import link_tree
from .._engine import Capabilities, EngineLifecycle
from .._engine import PoolStats as PoolFigures
from .._errors import (
    CapabilityMissing,
    EngineCrashed,
    EngineUnavailable,
    SandboxError,
    StateImageRefused,
)
from .._files import (
    DiskUsage,
    Snapshot,
    changed,
    disk_usage,
    drop_foreign_links,
    images_among,
    remove_tree,
    scan,
    snapshot,
    total_bytes,
)
from .._judge import workspace_limit
from .._layers import refuse_missing, required_layers
from .._lending import (
    MountsBefore,
    check_mounts,
    mount_budgets,
    mount_changes,
    mounts_before,
    writable,
)
from .._live import CANCELLED, LIMITS_CHANGED, PROCESS_DIED, LiveSessions, lost_line
from .._types import ExecutionPlan, HostMount, Image, Limits, RunResult
from ._docker import Docker
from ._errors import SandboxGone
from ._fleet import Fleet, check_daemon, egress_refusal, layer_states, remove_orphans
from ._image import default_cache_dir
from ._persistent import (
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_IDLE_S,
    Identity,
    LiveContainer,
    identity,
    lost_note,
)
from ._pool import Pool, PoolStats, Warm
from ._protocol import request_line
from ._result import to_result
from ._sandbox import Exchange
from ._saved import CHECKPOINT, Manifest, fingerprint, identity_of, refusal
from ._spec import (
    DEFAULT_CPUS,
    DEFAULT_IMAGE,
    EgressMount,
    Runtime,
    Shape,
    egress_environment,
    owner_labels,
)
from ._workspace import (
    Borrowing,
    CannotLend,
    adopt,
    give_back,
    lend,
    make_pool,
    recover,
    release_pool,
)

logger = logging.getLogger("sandgate.container")

Progress = Callable[[str], None]

DEFAULT_POOL_SIZE = 2
DEFAULT_IDLE_S = 300.0
SERVED_MEMORY = 1024
WATCH_EVERY_S = 0.02
"""How often a running sandbox's workspace is measured: RLIMIT_FSIZE caps each file in the
container, the watchdog caps their sum (a run past the workspace budget is killed)."""


class ContainerEngine(EngineLifecycle):
    """Runs each plan in a fresh, single-use container from a warm pool; a persistent plan
    (`state="persistent"`) in its session's live interpreter container (`_persistent.py`).

    Args:
        runtime: `runc` (Docker's default) or `runsc` (gVisor, registered with dockerd).
        image: The sandbox image (`scripts/docker-setup.sh` builds it offline).
        pool_size: Containers kept started ahead of demand (0: every run starts its own).
        idle_s: Seconds without a run after which idle pool containers are removed.
        docker_host: The daemon's address (default: `$DOCKER_HOST` or the local socket).
        progress: Called with a line of text as the engine starts.
        cpus: CPUs each sandbox may use (`nano_cpus`).
        pool_dir: Folder for pool slots; put it on the filesystem of the session workspaces
            (default: `$SANDGATE_CACHE/container-pool`). The engine touches only the
            folders it made there; files it cannot return go to its `lost+found`.
        require: The boundary layers (`sandboxes.ENGINE_LAYERS` names) this
            engine refuses to start without; None: every one it relies on.
        max_sessions: Most live interpreter containers of persistent sessions at once.
        session_idle_s: Seconds a persistent session's container may stay unused before it
            is paused to disk (gVisor: checkpointed, resumed by its next run) or removed (runc:
            its next run says the state was lost).

    Saved interpreters (`save_state`, `load_state`, paused sessions) wait in
    `<pool_dir>-saved/<instance>/`; see `_saved.py`.
    """

    name = "container"
    capabilities = Capabilities(
        final_expression=True,
        persistent_state=True,
        mounts=True,
        networks=frozenset({"none", "egress"}),
    )

    def __init__(
        self,
        *,
        runtime: Runtime = "runc",
        image: str = DEFAULT_IMAGE,
        pool_size: int = DEFAULT_POOL_SIZE,
        idle_s: float = DEFAULT_IDLE_S,
        docker_host: str | None = None,
        progress: Progress | None = None,
        cpus: float = DEFAULT_CPUS,
        pool_dir: Path | None = None,
        require: Iterable[str] | None = None,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
    ) -> None:
        if runtime not in ("runc", "runsc"):
            raise ValueError(f"runtime: expected 'runc' or 'runsc', got {runtime!r}")
        if pool_size < 0 or idle_s <= 0 or cpus <= 0:
            raise ValueError(
                f"expected pool_size >= 0, idle_s > 0 and cpus > 0; got pool_size={pool_size}, "
                f"idle_s={idle_s}, cpus={cpus}"
            )
        self.runtime: Runtime = runtime
        self._require = required_layers(f"container:{runtime}", require)
        self.image = image
        self._pool_size = pool_size
        self._idle_s = idle_s
        self._docker_host = docker_host
        self._progress = progress or (lambda line: logger.info("%s", line))
        self._cpus = cpus
        self._pools = pool_dir or default_cache_dir() / "container-pool"
        self.instance = uuid.uuid4().hex[:12]
        self._fleet: Fleet | None = None
        self._pool: Pool | None = None
        self._start_lock = asyncio.Lock()
        self._borrowing = Borrowing()
        self._mounted: dict[str, MountsBefore] = {}
        """Decision id → the read-write mounts' files before its run."""
        self._served: OrderedDict[str, str] = OrderedDict()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._reaper: asyncio.Future[None] | None = None
        self._closed = False
        self.capabilities = dataclasses.replace(self.capabilities, snapshots=runtime == "runsc")
        self._saved = Path(f"{self._pools}-saved") / self.instance
        self._image_id = ""
        self._no_egress: str | None = "the engine has not started"
        """Why egress runs cannot be lent the proxy here (None: they can)."""
        self._checkpoints: str | None = "the engine has not started"
        """Why interpreters cannot be checkpointed here (None: they can)."""
        self._live: LiveSessions[LiveContainer] = LiveSessions(
            f"container ({runtime})",
            self._end_live,
            max_sessions=max_sessions,
            idle_s=session_idle_s,
            save=self._save_live if runtime == "runsc" else None,
            images_root=self._saved / "images",
        )
        self._live_reaper: asyncio.Future[None] | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the daemon, runtime and image, clean up after crashed servers, warm the pool.

        Raises:
            EngineUnavailable: no daemon, runtime or image; the message says what to run.
            LayersMissing: a required boundary layer is not in force with this daemon.
        """
        async with self._start_lock:
            self._refuse_if_closed()
            if self._fleet is not None:
                return
            self._progress(f"container: connecting to dockerd ({self.runtime}, {self.image})")
            docker = await asyncio.to_thread(Docker.connect, self._docker_host)
            try:
                await asyncio.to_thread(check_daemon, docker, self.runtime, self.image)
                why = await asyncio.to_thread(egress_refusal, docker, self.runtime, self.image)
                self._no_egress = why
                if why is not None:
                    networks = self.capabilities.networks - {"egress"}
                    self.capabilities = dataclasses.replace(self.capabilities, networks=networks)
                    self._progress(f"container: no egress here: {why}")
                await asyncio.to_thread(self._probe_checkpoints, docker)
                if self._checkpoints is not None and self.capabilities.snapshots:
                    self.capabilities = dataclasses.replace(self.capabilities, snapshots=False)
                    self._progress(f"container: no snapshots here: {self._checkpoints}")
                states = await asyncio.to_thread(layer_states, docker, self.runtime)
                refuse_missing(f"container:{self.runtime}", states, self._require)
                await self._remove_leftovers(docker)
                labels = owner_labels(self.instance)
                folder = await asyncio.to_thread(make_pool, self._pools, labels)
            except BaseException:
                await asyncio.to_thread(docker.close)
                raise
            fleet = Fleet(
                docker,
                runtime=self.runtime,
                image=self.image,
                cpus=self._cpus,
                labels=labels,
                pool_folder=folder,
            )
            self._fleet = fleet
            self._pool = Pool(
                fleet.launch_slot, fleet.dispose, size=self._pool_size, idle_s=self._idle_s
            )
            self._reaper = asyncio.ensure_future(self._pool.reap())
            self._live_reaper = asyncio.ensure_future(self._reap_live())
            self._pool.fill(fleet.shape(Limits()))
            self._progress(f"container: ready; warming {self._pool_size} containers")

    async def _remove_leftovers(self, docker: Docker) -> None:
        dead = await asyncio.to_thread(remove_orphans, docker)
        if dead:
            self._progress(f"container: removed {dead} containers left by dead servers")
        restored = await asyncio.to_thread(recover, self._pools)
        for folder in restored:
            self._progress(f"container: gave files back to {folder} after a crash")

    async def wait_warm(self, timeout_s: float = 60.0) -> bool:
        """Wait until the pool is full; False when `timeout_s` ran out first."""
        await self.start()
        assert self._pool is not None
        return await self._pool.wait_full(timeout_s)

    def stats(self) -> PoolStats:
        """Idle and starting pool containers, and runs served warm, cold or retried so far."""
        return self._pool.stats() if self._pool is not None else PoolStats(0, 0, 0, 0, 0)

    @property
    def ready(self) -> bool:
        return self._fleet is not None and not self._closed

    def pool_stats(self) -> PoolFigures:
        """`stats()` as figures by name, for the server's metrics."""
        return {
            **dataclasses.asdict(self.stats()),
            "live_sessions": len(self._live),
            "paused": self._live.paused(),
            "max_live_sessions": self._live.max_sessions,
        }

    def live_sessions(self) -> tuple[str, ...]:
        """The session keys that hold a live interpreter container."""
        return self._live.keys()

    def container_for(self, decision_id: str) -> str | None:
        """The id of the container that ran decision `decision_id` (recent runs only)."""
        return self._served.get(decision_id)

    async def end_session(self, key: str) -> bool:
        """Remove the session's live interpreter container, if it has one (its files are the
        runner's); False when it had none."""
        return await self._live.end(key)

    async def aclose(self) -> None:
        """Remove every container and slot of this engine."""
        async with self._start_lock:
            self._closed = True
            for reaper in (self._reaper, self._live_reaper):
                if reaper is not None:
                    reaper.cancel()
                    await asyncio.gather(reaper, return_exceptions=True)
            await self._live.aclose()
            await asyncio.to_thread(remove_tree, self._saved)
            if self._pool is not None:
                await self._pool.close()
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
            if self._fleet is not None:
                await self._fleet.dispose_all()
                await asyncio.to_thread(release_pool, self._fleet.pool_folder)
                await asyncio.to_thread(self._fleet.docker.close)

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- runs -----------------------------------------------------------------------------

    async def run(self, plan: ExecutionPlan) -> RunResult:
        """Run `plan` in a fresh container, or in its session's live one (`state`
        "persistent"). User-code failures come back as a `RunResult`.

        Raises:
            EngineUnavailable: no daemon, runtime or image, or an unsupported network mode.
            EngineBusy: a persistent session needs a live container and every one that could
                give way is running a call.
            EngineCrashed: the daemon or the container failed (not a limit of the run), or
                a second container was dead before the code reached it (`SandboxGone`).
        """
        self._refuse_if_closed()
        self.capabilities.check(self.name, plan)
        await self.start()
        try:
            if plan.state == "persistent":
                async with self._live.lock(plan.session_key), self._borrowing.hold(plan.workspace):
                    return await self._run_live(plan)
            async with self._borrowing.hold(plan.workspace):
                return await self._run_locked(plan)
        finally:
            if self._pool is not None and not self._closed:
                self._pool.replenish()

    async def _run_locked(self, plan: ExecutionPlan) -> RunResult:
        assert self._pool is not None and self._fleet is not None
        fleet = self._fleet
        limits, workspace = plan.limits, plan.workspace
        egress = self._egress(plan)
        await asyncio.to_thread(drop_foreign_links, workspace)
        before = await asyncio.to_thread(snapshot, workspace.files)
        shape = fleet.shape(limits, await self._mounts_ready(plan), egress)
        request = self._request(plan, before)
        warm = await self._take(shape)
        pooled = warm is not None  # counted warm by the pool
        retried = False
        while True:
            if warm is None:
                warm = await fleet.launch_slot(shape)
            given, warm = warm, await self._lend(plan, warm)
            if pooled and warm is not given:  # it mounts the session directly: a cold run
                self._pool.moved_cold(was_warm=True, retried=False)
                pooled = False
            try:
                exchange = await self._exchange(plan, warm, request, before)
            except SandboxGone as exc:
                if retried:
                    raise
                logger.warning("container: %s; running the code on a fresh container", exc)
                self._pool.moved_cold(was_warm=pooled, retried=True)
                warm, pooled, retried = None, False, True
                continue
            # From here on the run is over: finish even if the caller is cancelled meanwhile.
            return await shielded(self._finish(plan, warm, exchange, before))

    def _egress(self, plan: ExecutionPlan) -> EgressMount | None:
        """What the container of `plan` is lent of the egress proxy: its socket and CA for an
        egress run, None for any other (its container has no path to the proxy).

        Raises:
            ValueError: an egress run without a lease (`plan.egress`) or its socket.
            EngineUnavailable: this image or daemon cannot lend the proxy (`egress_refusal`).
        """
        if plan.limits.network != "egress":
            return None
        if plan.egress is None:
            raise ValueError(
                "ExecutionPlan.egress: expected the run's egress lease for network 'egress', "
                "got None; the gate lends one with every egress plan"
            )
        if self._no_egress is not None:
            raise EngineUnavailable(f"container:{self.runtime}: no egress: {self._no_egress}")
        return EgressMount.of(plan.egress)

    async def _take(self, shape: Shape) -> Warm | None:
        """A warm pool container of `shape`, or None: start one. An egress run's container
        never comes from the pool (it alone is lent the proxy)."""
        assert self._pool is not None
        if shape.egress is not None:
            self._pool.passed_by()
            return None
        return await self._pool.take(shape)

    def _request(self, plan: ExecutionPlan, before: Snapshot, *, persistent: bool = False) -> bytes:
        """The request line of `plan`; `before` is what the workspace holds."""
        limits = plan.limits
        lease = plan.egress if limits.network == "egress" else None
        return request_line(
            kind=plan.program.kind,
            source=plan.program.source,
            variable=plan.program.variable_to_return,
            final_expression=plan.program.final_expression,
            stdin=plan.program.stdin,
            output_bytes=limits.output_bytes,
            cpu_s=limits.cpu_time_s,
            deadline_s=limits.wall_timeout_s,
            nproc=limits.processes if self.runtime == "runsc" else None,
            fsize_bytes=max(0, limits.workspace_bytes - total_bytes(before)),
            persistent=persistent,
            fsize_hard_bytes=limits.workspace_bytes,
            environment=egress_environment(lease) if lease is not None else None,
        )

    async def _lend(self, plan: ExecutionPlan, warm: Warm) -> Warm:
        """Lend the session's files to `warm`'s slot; the container that will run `plan`."""
        assert self._fleet is not None
        fleet, workspace = self._fleet, plan.workspace
        try:
            assert warm.slot is not None
            # The renames run to their end even if the call is cancelled meanwhile: only then
            # can `dispose` give back everything that was moved.
            await shielded(
                asyncio.to_thread(lend, warm.slot, workspace, uid=fleet.uid, gid=fleet.gid)
            )
        except CannotLend as exc:
            logger.info("container: %s; this run mounts the session directly", exc)
            self._spawn(fleet.dispose(warm))
            warm = await fleet.launch_direct(workspace, warm.shape)
        except BaseException:
            await shielded(fleet.dispose(warm))
            raise
        self._remember(plan.decision_id, warm.sandbox.id)
        return warm

    async def _exchange(
        self, plan: ExecutionPlan, warm: Warm, request: bytes, before: Snapshot
    ) -> Exchange:
        """Run the request in `warm` under the workspace watchdog; on any failure (including
        `SandboxGone`) or cancellation stop the container and give the files back before
        raising. Nothing is awaited once the exchange is over, so a cancellation arriving then
        reaches the caller's `_finish`, which gives the files back."""
        limits, workspace = plan.limits, plan.workspace
        folder = warm.slot.files if warm.slot is not None else workspace.files
        watched = [(folder, limits.workspace_bytes, limits.workspace_files)]
        watched += self._mount_budgets(plan)  # each read-write mount: a folder of its own
        watchdog = asyncio.ensure_future(_watch_workspace(warm, watched, limits))
        try:
            return await warm.sandbox.exchange(
                request, deadline_s=limits.wall_timeout_s, output_bytes=limits.output_bytes
            )
        except BaseException:  # cancelled, or the daemon failed: the container is stopped
            watchdog.cancel()
            await shielded(self._abandon(warm, plan))
            raise
        finally:
            watchdog.cancel()  # not awaited: its last measuring thread ends on its own

    async def _finish(
        self,
        plan: ExecutionPlan,
        warm: Warm,
        exchange: Exchange,
        before: Snapshot,
        *,
        keep: bool = False,
    ) -> RunResult:
        """Give the files back, see what the run wrote, remove the container (unless `keep`:
        it serves the session's next run), judge."""
        assert self._fleet is not None
        fleet, workspace = self._fleet, plan.workspace
        if warm.slot is not None:
            await asyncio.to_thread(give_back, warm.slot, workspace)
        found = await asyncio.to_thread(scan, workspace.files)  # by descriptor, real usage
        after = found.files
        written = changed(before, after)
        images = await asyncio.to_thread(images_among, workspace.files, written)
        written, images, held = await self._mount_changes(plan, written, images, found.usage)
        if keep:
            pass
        elif exchange.ended == "reply":  # its processes are gone: remove it off the clock
            self._spawn(fleet.dispose(warm))
        else:
            await fleet.dispose(warm)
        return to_result(
            exchange,
            plan.limits,
            runtime=fleet.runtime,
            files_written=written,
            images=images,
            workspace=held,
        )

    async def _abandon(self, warm: Warm, plan: ExecutionPlan) -> None:
        """A run was cancelled or the daemon failed: stop the container, give files back."""
        self._mounted.pop(plan.decision_id, None)
        with contextlib.suppress(SandboxError):
            await warm.sandbox.stop(kill=True)
        if warm.slot is not None:
            await asyncio.to_thread(give_back, warm.slot, plan.workspace)
        assert self._fleet is not None
        await self._fleet.dispose(warm)

    def _remember(self, decision_id: str, cid: str) -> None:
        self._served[decision_id] = cid
        while len(self._served) > SERVED_MEMORY:
            self._served.popitem(last=False)

    # ---- persistent sessions (`_persistent.py`) -------------------------------------------

    async def _run_live(self, plan: ExecutionPlan) -> RunResult:
        """Run `plan` in its session's live interpreter container, starting one when it has
        none (or its limits changed, or it died), under the session's lock."""
        assert self._pool is not None and self._fleet is not None
        fleet, live, key = self._fleet, self._live, plan.session_key
        await asyncio.to_thread(drop_foreign_links, plan.workspace)
        egress = self._egress(plan)
        before = await asyncio.to_thread(snapshot, plan.workspace.files)
        shape = fleet.shape(plan.limits, await self._mounts_ready(plan), egress)
        wanted = identity(shape, plan.limits)
        request = self._request(plan, before, persistent=True)
        claim = live.claim(key)
        state, held, image = claim.state, claim.interpreter, claim.image
        note: str | None = claim.note
        resumable = held is not None and held.resume is not None and held.identity == wanted
        if held is not None and resumable and not await self._wake(held):
            await live.drop(key, None)
            held, state, note = None, "lost", PROCESS_DIED
        if held is not None and (held.identity != wanted or not held.warm.sandbox.alive()):
            why = LIMITS_CHANGED if held.identity != wanted else PROCESS_DIED
            await live.drop(key, None)
            held, state, note = None, "lost", why
        retried = False
        while True:
            if held is None:
                await live.make_room(plan)
                warm = None
                if image is not None:  # saved: paused to disk, or a snapshot loaded
                    warm = await self._resume(key, image, shape, wanted)
                    if warm is None:  # it said why (`discard_image`): the state is lost
                        lost = live.claim(key)
                        state, note, image = lost.state, lost.note, None
                warm = warm or await self._take(shape) or await fleet.launch_slot(shape)
                held = LiveContainer(warm, wanted)
                live.add(plan, held)
                image = None
            try:
                if held.warm.slot is not None:
                    held.warm = await self._lend(plan, held.warm)
                else:  # it mounts the session's folders (they could not be lent)
                    self._remember(plan.decision_id, held.warm.sandbox.id)
                exchange = await self._exchange(plan, held.warm, request, before)
            except SandboxGone as exc:  # dead before the code reached it: the code never ran
                held.gone = True
                await live.drop(key, None)
                if retried:
                    raise
                logger.warning("container: %s; starting the session a fresh container", exc)
                if state == "kept":
                    state, note = "lost", PROCESS_DIED
                held, retried = None, True
                continue
            except BaseException:  # cancelled, or the daemon failed: the container is gone
                held.gone = True
                await shielded(live.drop(key, CANCELLED))
                raise
            break
        reply = exchange.collector.reply or {}
        keep = exchange.ended == "reply" and reply.get("kept") is True
        result = await shielded(self._finish(plan, held.warm, exchange, before, keep=keep))
        held.gone = not keep
        ended = lost_note(result, kept=keep)
        if ended is not None:
            await shielded(live.drop(key, ended))
        stderr = lost_line(note) + result.stderr if state == "lost" and note else result.stderr
        return dataclasses.replace(result, state=state, state_note=note, stderr=stderr)

    async def _end_live(self, held: LiveContainer) -> None:
        """Remove a session's interpreter container (never raises)."""
        if held.resume is not None:
            await asyncio.to_thread(remove_tree, held.resume)
            held.resume = None
        if held.gone or self._fleet is None:
            return
        held.gone = True
        with contextlib.suppress(SandboxError, OSError):
            await self._fleet.dispose(held.warm)

    # ---- saved interpreters (`_saved.py`) ------------------------------------------------

    def _probe_checkpoints(self, docker: Docker) -> None:
        """Note whether this daemon can checkpoint and restore this engine's containers."""
        self._image_id = docker.image_id(self.image) or ""
        if self.runtime != "runsc":
            self._checkpoints = "runc needs CRIU, which cannot checkpoint on this kernel"
        elif not docker.info().get("ExperimentalBuild"):
            self._checkpoints = (
                f"dockerd at {docker.where} runs without experimental features, and its "
                "checkpoint API needs them: start it with --experimental (or "
                '"experimental": true in /etc/docker/daemon.json; scripts/docker-setup.sh '
                "sets it)"
            )
        elif os.geteuid() != 0:
            self._checkpoints = (
                "the server does not run as root, and a checkpoint is resumed from dockerd's "
                "data root"
            )
        else:
            self._checkpoints = None

    async def _ready_to_save(self) -> None:
        """Start the engine and check it can checkpoint.

        Raises:
            CapabilityMissing: the runtime cannot save interpreters (runc), or this daemon
                cannot checkpoint (not `--experimental`; the engine said why as it started).
        """
        self._refuse_if_closed()
        if not self.capabilities.snapshots:
            raise CapabilityMissing(f"container:{self.runtime}", ("snapshots",))
        await self.start()
        if not self.capabilities.snapshots:  # this daemon cannot (said as the engine started)
            raise CapabilityMissing(f"container:{self.runtime}", ("snapshots",))

    async def save_state(self, key: str, folder: Path) -> bool:
        """Checkpoint the session's interpreter container into the empty `folder` (gVisor);
        its next run resumes from the checkpoint. False when the session holds none.

        Raises:
            CapabilityMissing: the session holds an interpreter and the engine cannot save it:
                runc (no CRIU), or a daemon without `--experimental`.
            EngineCrashed: the checkpoint failed.
        """
        self._refuse_if_closed()
        if key not in self._live and not self._live.has_image(key):
            return False
        await self._ready_to_save()
        return await self._live.save(key, folder)

    async def load_state(self, key: str, grant: str, folder: Path) -> None:
        """Make the interpreter saved in `folder` the session's: its next run resumes it in a
        new container (`state: kept`). `folder` is only read: load it into several sessions
        for independent forks.

        Raises:
            CapabilityMissing: runc (no CRIU), or a daemon without `--experimental`.
            StateImageRefused: `folder` holds no interpreter of this runtime and image.
        """
        await self._ready_to_save()
        why = await asyncio.to_thread(
            refusal, folder, runtime=self.runtime, image_id=self._image_id
        )
        if why is not None:
            raise StateImageRefused(f"container:{self.runtime}", why)
        await self._live.load(key, grant, folder)

    async def _save_live(self, held: LiveContainer, folder: Path) -> None:
        """`LiveSessions`' save hook: checkpoint `held` (its container exits; its next run
        starts a new one from the checkpoint, `_wake`) and copy the checkpoint into `folder`.

        Raises:
            EngineUnavailable: the daemon cannot checkpoint.
            EngineCrashed: the container had exited, or the checkpoint failed.
        """
        assert self._fleet is not None
        fleet = self._fleet
        if self._checkpoints is not None:
            raise EngineUnavailable(f"cannot checkpoint: {self._checkpoints}")
        if held.resume is None:
            if held.gone or not held.warm.sandbox.alive():
                raise EngineCrashed(f"the interpreter container {held.warm.sandbox.id[:12]} exited")
            place = self._saved / "resume" / uuid.uuid4().hex
            await asyncio.to_thread(place.mkdir, mode=0o700, parents=True)
            shape, _ = held.identity
            manifest = Manifest(
                self.runtime,
                self._image_id,
                fingerprint(held.identity),
                shape.memory_bytes,
                shape.processes,
            )
            try:
                cid = held.warm.sandbox.id
                await shielded(asyncio.to_thread(fleet.docker.checkpoint, cid, place, CHECKPOINT))
                await asyncio.to_thread(manifest.write, place)
            except BaseException:
                await asyncio.to_thread(remove_tree, place)
                raise
            held.resume = place
            held.gone = True
            await shielded(fleet.dispose(held.warm))  # exited: remove it and its empty slot
        await asyncio.to_thread(link_tree, held.resume, folder)

    async def _wake(self, held: LiveContainer) -> bool:
        """Start a new container for `held` from its checkpoint; False when it cannot be."""
        assert self._fleet is not None and held.resume is not None
        shape, _ = held.identity
        try:
            held.warm = await self._fleet.launch_restored(shape, held.resume / CHECKPOINT)
        except SandboxError as exc:
            logger.warning("container: could not resume a saved interpreter: %s", exc)
            return False
        finally:
            await asyncio.to_thread(remove_tree, held.resume)
            held.resume = None
        held.gone = False
        return True

    async def _resume(self, key: str, image: Path, shape: Shape, wanted: Identity) -> Warm | None:
        """A container resumed from the session's saved interpreter `image`, or None when it
        cannot be (the session's run then says why its state was lost)."""
        assert self._fleet is not None
        why = await asyncio.to_thread(refusal, image, runtime=self.runtime, image_id=self._image_id)
        if why is None and identity_of(image) != fingerprint(wanted):
            why = LIMITS_CHANGED
        if why is None:
            try:
                return await self._fleet.launch_restored(shape, image / CHECKPOINT)
            except (SandboxError, OSError) as exc:
                why = str(exc)
        logger.info("container: session %r cannot resume its saved interpreter: %s", key, why)
        self._live.discard_image(key, why)
        return None

    async def _reap_live(self) -> None:
        """Forever: remove the interpreter containers of sessions idle too long."""
        period = max(0.5, min(self._live.idle_s / 2, 30.0))
        while True:
            await asyncio.sleep(period)
            await self._live.reap_idle()

    # ---- operator mounts ------------------------------------------------------------------
    #
    # Bind-mounted at /mnt/NAME on the run's container (`Shape.mounts`), read-only unless the
    # mount is read-write: the kernel (runc) or gVisor's gofer (runsc) refuses every change to
    # a read-only one (EROFS), and nothing reaches the host. They are never lent through the
    # slot as the session's files are: an operator folder is shared by every session, and
    # moving its files into one run's slot would hide them from every other run and from the
    # operator meanwhile. Inside the container every path resolves in the container's own
    # file system, so a link in a mount pointing out of it (absolute, or with `..`) leads to
    # the container's files, never the host's. When the server runs as root, the sandbox user
    # is not: a read-write mount's entries are handed to that user before each run (as the
    # session's are), so code can change them; a read-only one keeps its owners.

    async def _mounts_ready(self, plan: ExecutionPlan) -> tuple[HostMount, ...]:
        """Check `plan`'s operator mounts, hand the read-write ones to the sandbox user and
        note their files before the run; the mounts its container must have."""
        assert self._fleet is not None
        fleet, mounts = self._fleet, check_mounts(plan.workspace.mounts)
        if writable(mounts):

            def ready() -> MountsBefore:
                for mount in writable(mounts):
                    adopt(mount.host, uid=fleet.uid, gid=fleet.gid)
                return mounts_before(mounts)

            self._mounted[plan.decision_id] = await asyncio.to_thread(ready)
        return mounts

    def _mount_budgets(self, plan: ExecutionPlan) -> list[tuple[Path, int, int]]:
        """What the watchdog holds each read-write mount to (`_lending.mount_budgets`)."""
        mounted = self._mounted.get(plan.decision_id)
        if mounted is None:
            return []
        return mount_budgets(plan.workspace.mounts, mounted, plan.limits)

    async def _mount_changes(
        self,
        plan: ExecutionPlan,
        written: tuple[str, ...],
        images: tuple[Image, ...],
        held: DiskUsage,
    ) -> tuple[tuple[str, ...], tuple[Image, ...], DiskUsage]:
        """The run's files and images with those of the read-write mounts after the
        workspace's (guest paths `/mnt/NAME/…`, as pyodide reports them), and the disk use the
        judge sees: a mount that ended past its budget counts as the workspace budget passed."""
        mounted = self._mounted.pop(plan.decision_id, None)
        if mounted is None:
            return written, images, held
        done = await asyncio.to_thread(
            mount_changes, plan.workspace.mounts, mounted, plan.limits, images_so_far=len(images)
        )
        if done.over is not None and not held.over(plan.limits):
            held = DiskUsage(max(done.over, plan.limits.workspace_bytes + 1), held.files)
        return written + done.touched, images + done.images, held


async def _watch_workspace(
    warm: Warm, folders: list[tuple[Path, int, int]], limits: Limits
) -> None:
    """Kill `warm`'s container once one of `folders` (the workspace, and each read-write
    operator mount: folder, bytes, inodes) occupies more disk or inodes than its budget (many
    files, each under the per-file cap, would otherwise fill the host's disk until the
    deadline); walked by descriptor (`disk_usage`)."""
    pause = WATCH_EVERY_S
    while True:
        await asyncio.sleep(pause)
        began = time.monotonic()
        for folder, max_bytes, max_files in folders:
            held = await asyncio.to_thread(disk_usage, folder, stop_after_files=max_files)
            if held.bytes > max_bytes or held.files > max_files or not held.complete:
                logger.info(
                    "container: %s: %s holds %s, over its %s; killing it",
                    warm.sandbox.id[:12],
                    folder,
                    held.describe(),
                    workspace_limit(limits),
                )
                with contextlib.suppress(SandboxError):
                    await asyncio.to_thread(warm.sandbox.docker.kill, warm.sandbox.id)
                return
        pause = max(WATCH_EVERY_S, 4 * (time.monotonic() - began))
