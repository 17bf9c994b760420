"""The `pyodide` engine: Pyodide under a jailed Deno, one warm process per session.

Pyodide alone is no boundary: Python in it can reach JavaScript, and JavaScript can reach
whatever the runtime allows. So each layer below assumes the one above it has fallen:

1. Python import gate (`_guest.py`), a courtesy and not a layer: `js`, `pyodide_js`,
   `pyodide.ffi`, `_pyodide_core`, `pyodide.code` and `pyodide.http` are dropped from
   `sys.modules` and refused by a meta-path finder, so `import js` gives a clear
   `ModuleNotFoundError`. Code can delete that finder; Pyodide's own JS finder is removed and
   its `js`/`pyodide_js` modules unregistered, so even then neither imports, but
   `_pyodide_core` (a builtin) and objects holding JS proxies still lead to the realm's global
   object. Everything below assumes the JS realm is reached.
2. JS realm (`host.mjs`): `jsglobals` is an empty object, and before any user code runs every
   global outside a fixed list of language and pure Web APIs is deleted (`Deno`, `process`,
   `fetch`, `WebSocket`, `Worker`, `prompt`...). Node built-ins (`import("node:fs")`) still
   load but break without `Deno`. Wasm memory growth is capped (MemoryError in Python). The
   protocol is framed with a per-process secret token, so guest writes to fd 1 cannot pass
   for answers, and the host checks every answer field anyway.
3. Deno permissions: read of the Pyodide assets and the snapshot only; `--deny-write`,
   `--deny-net`, `--deny-env`, `--deny-run`, `--deny-ffi`, `--deny-sys`, `--deny-import`,
   `--no-prompt`. Even code holding `Deno.readTextFileSync` gets `NotCapable`. Neither the
   workspace nor the operator mounts are readable by Deno at all: files are copied in and out
   by the host (`_sync.py`), never through a link; the installed packages (`/site`) and
   read-only mounts are never copied back, and their nodes in Pyodide's file system refuse
   writes, `chmod` and renames (as does `/` for the names `site` and `mnt`).
4. OS (`_jail.py`), each required unless the caller lists fewer (`require`: the engine
   refuses to start without a required one; see `sandboxes._layers`): a network namespace
   with no interface (`unshare --net`), `no_new_privs` and an empty capability bounding set
   (`setpriv`), a cgroup v1 memory cap (the OOM killer ends the process: `memory`) and
   thread cap, a `RLIMIT_CPU` budget per call, a minimal environment, and a process-group
   kill at the wall deadline (`timeout`). Deno's own V8 heap is capped by `--max-old-space-size`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .._cancel import shielded
from .._engine import Capabilities, EngineLifecycle, PoolStats
from .._errors import EngineBusy, EngineNotReady, EngineUnavailable
from .._layers import refuse_missing, required_layers
from .._types import DEFAULT_MEMORY_BYTES, ExecutionPlan, RunResult
from ._assets import Assets, Progress, build_snapshot, find_deno, locate
from ._jail import JailInfo, clean_stale, limit_cpu, probe
from ._pool import Pool, Spawn
from ._process import DenoProcess, ProcessDied
from ._results import Meter, from_death, from_report, timed_out
from ._sync import Mirror
from ._sync import plan as plan_copy
from ._transfer import COPY_TIMEOUT_S, Settled, copy_in, copy_out, scanned_roots

logger = logging.getLogger("sandgate.pyodide")

DEFAULT_POOL_SIZE = 2
DEFAULT_MAX_SESSIONS = 32
DEFAULT_SESSION_IDLE_S = 900.0
DEFAULT_JS_HEAP_BYTES = 256 * 1024 * 1024
RUNTIME_OVERHEAD_BYTES = 384 * 1024 * 1024
"""Memory a Deno process holds besides the guest's (V8, Pyodide, the snapshot: ~220 MB RSS)."""
DEFAULT_READY_TIMEOUT_S = 120.0
CPU_BACKSTOP_FACTOR = 4.0
"""Without a CPU limit, a run may use this many times its wall timeout (all threads)."""
_MISSING = "Pyodide assets are missing: run `sandgate setup pyodide`"


@dataclass(slots=True)
class _Session:
    process: DenoProcess
    grant: str
    mirror: Mirror = field(default_factory=Mirror)
    last_used: float = field(default_factory=time.monotonic)


RECLAIMED = "it was idle and another session needed an interpreter"
STOPPED = "its last call was cancelled or failed before it ended"


class PyodideEngine(EngineLifecycle):
    """Runs plans in Pyodide under Deno; a session keeps its interpreter (and globals).

    Args:
        assets_dir: Where `setup_pyodide` put the assets (default `$SANDGATE_CACHE/pyodide`).
        pool_size: Processes kept booted and idle, ready for new sessions.
        max_sessions: Sessions that may hold a process at once. A new session past it takes
            the interpreter of the least recently used idle session (of the grant holding the
            most); with none idle it gets `EngineBusy`. One grant holds at most
            `ExecutionPlan.pool_share` of them (its own idle ones are reclaimed first).
        session_idle_s: A session idle this long loses its process (and its globals).
        persistent: False gives every run a fresh interpreter (the process is dropped after).
        js_heap_bytes: V8 heap cap of each Deno process (Python memory is capped per run).
        ready_timeout_s: How long a run waits for a booted process.
        progress: Called with a line of text while the engine prepares.
        harden_js: Only for tests of the permission layer: False keeps the JS globals (and
            is itself the explicit allowance to run without the `js_realm` layer).
        require: The boundary layers (`sandboxes.ENGINE_LAYERS["pyodide"]` names) this
            engine refuses to start without; None: every one it relies on.
    """

    name = "pyodide"
    capabilities = Capabilities(final_expression=True, persistent_state=True, mounts=True)

    def __init__(
        self,
        *,
        assets_dir: Path | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
        persistent: bool = True,
        js_heap_bytes: int = DEFAULT_JS_HEAP_BYTES,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        progress: Progress | None = None,
        harden_js: bool = True,
        require: Iterable[str] | None = None,
    ) -> None:
        if pool_size < 0 or max_sessions < 1:
            raise ValueError(
                f"pool_size >= 0 and max_sessions >= 1 expected, got {pool_size}, {max_sessions}"
            )
        self._assets_dir = assets_dir
        self._pool_size = pool_size
        self._max_sessions = max_sessions
        self._idle_s = session_idle_s
        self._persistent = persistent
        self._js_heap_bytes = js_heap_bytes
        self._ready_timeout_s = ready_timeout_s
        self._progress = progress or (lambda line: logger.info("%s", line))
        self._harden = harden_js
        self._require = required_layers(self.name, require) - (
            frozenset() if harden_js else {"js_realm"}
        )
        self._sessions: dict[str, _Session] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._restarted: dict[str, str] = {}
        self._pool: Pool | None = None
        self._jail: JailInfo | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._started = False
        self._start_lock = asyncio.Lock()

    @property
    def jail(self) -> JailInfo | None:
        """The OS layers in force (known once started)."""
        return self._jail

    @property
    def sessions(self) -> tuple[str, ...]:
        """Keys (`ExecutionPlan.session_key`) of the sessions that currently hold a process."""
        return tuple(self._sessions)

    def session_pid(self, key: str) -> int | None:
        """The pid of the Deno process serving the session `key`, if it holds one."""
        session = self._sessions.get(key)
        return None if session is None else session.process.pid

    @property
    def ready(self) -> bool:
        return self._started and not self._closed

    def pool_stats(self) -> PoolStats:
        """Figures for the metrics: booted idle processes, sessions holding one, the maximum."""
        idle = len(self._pool.pids()) if self._pool else 0
        return {"idle": idle, "sessions": len(self._sessions), "max_sessions": self._max_sessions}

    def process_ids(self) -> tuple[int, ...]:
        """Pids of every Deno process the engine holds (pool and sessions)."""
        pooled = self._pool.pids() if self._pool else ()
        return (*pooled, *(s.process.pid for s in self._sessions.values()))

    async def start(self) -> None:
        """Check Deno and the assets, build the snapshot if needed, begin warming the pool.

        Raises:
            EngineUnavailable: Deno or the Pyodide assets are missing.
            LayersMissing: a required boundary layer is not in force on this host.
        """
        async with self._start_lock:
            self._refuse_if_closed()
            if not self._started:
                await self._start()

    async def _start(self) -> None:
        find_deno()
        assets = locate(self._assets_dir)
        if assets is None:
            raise EngineUnavailable(_MISSING)
        if not assets.snapshot.is_file():
            await asyncio.to_thread(build_snapshot, assets, progress=self._progress)
        jail = await asyncio.to_thread(probe)
        refuse_missing(self.name, jail.layers(harden_js=self._harden), self._require)
        self._jail = jail
        await asyncio.to_thread(clean_stale)
        self._pool = Pool(self._spawner(assets), size=self._pool_size, progress=self._progress)
        self._pool.start()
        self._reaper = asyncio.create_task(self._reap_idle())
        self._started = True

    def _spawner(self, assets: Assets) -> Spawn:
        jail = self._jail
        assert jail is not None

        async def spawn() -> DenoProcess:
            return await DenoProcess.spawn(
                assets,
                jail,
                js_heap_bytes=self._js_heap_bytes,
                memory_limit_bytes=DEFAULT_MEMORY_BYTES + RUNTIME_OVERHEAD_BYTES,
                harden=self._harden,
            )

        return spawn

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until a booted process is idle in the pool.

        Raises:
            EngineNotReady: none after `timeout_s`.
            EngineUnavailable: processes fail to start.
        """
        await self.start()
        assert self._pool is not None
        await self._pool.wait_ready(self._ready_timeout_s if timeout_s is None else timeout_s)

    async def run(self, plan: ExecutionPlan) -> RunResult:
        """Run `plan` in its session's interpreter (taken from the pool on first use).

        Raises:
            EngineUnavailable, EngineNotReady, EngineBusy: the engine's own failures.
            CapabilityMissing, EngineClosed: see the `Engine` contract.
        """
        self._refuse_if_closed()
        self.capabilities.check(self.name, plan)
        await self.start()
        sid = plan.session_key
        lock = self._locks.setdefault(sid, asyncio.Lock())
        async with lock:
            note = self._restarted.pop(sid, None)
            session = self._sessions.get(sid)
            if session is not None and not session.process.alive:
                await self._drop(sid)
                session, note = None, note or "its process ended between calls"
            mounted = None if session is None else session.mirror.mounts
            if session is not None and mounted is not None and mounted != plan.workspace.mounts:
                await self._drop(sid)
                session, note = None, note or "the operator mounts changed"
            if session is None:
                await self._make_room(plan)
                session = _Session(await self._take(), plan.grant)
                self._sessions[sid] = session
            try:
                result = await self._run_in(session, plan)
            finally:
                session.last_used = time.monotonic()
                if not session.process.alive or not self._persistent:
                    await self._drop(sid)
        if not self._persistent and not lock.locked():
            self._locks.pop(sid, None)
        return result if note is None else _with_note(result, note)

    async def _take(self) -> DenoProcess:
        assert self._pool is not None
        try:
            return await self._pool.take(self._ready_timeout_s)
        except TimeoutError:
            raise EngineNotReady(
                f"no Pyodide process booted within {self._ready_timeout_s:g} s; retry shortly",
                waited_s=self._ready_timeout_s,
            ) from None

    async def _run_in(self, session: _Session, plan: ExecutionPlan) -> RunResult:
        limits, proc, program = plan.limits, session.process, plan.program
        sent = await asyncio.to_thread(
            plan_copy, plan.workspace, session.mirror, limits.workspace_bytes
        )
        request = {
            "op": "run",
            "kind": program.kind,
            "source": program.source,
            "variable": program.variable_to_return,
            "final_expression": program.final_expression,
            "stdin": program.stdin.decode("utf-8", "replace"),
            "scan": scanned_roots(sent),
            "output_bytes": limits.output_bytes,
            "memory_bytes": limits.memory_bytes,
        }
        proc.cgroup.set_memory_limit(limits.memory_bytes + RUNTIME_OVERHEAD_BYTES)
        proc.cgroup.reset_peak()
        limit_cpu(proc.pid, limits.cpu_time_s or limits.wall_timeout_s * CPU_BACKSTOP_FACTOR + 1)
        meter = Meter(proc)
        proc.clear_output()
        try:
            async with asyncio.timeout(COPY_TIMEOUT_S):
                await copy_in(proc, sent)
            answer = await proc.request(request, timeout_s=limits.wall_timeout_s)
        except TimeoutError:
            spent = meter.usage()
            await shielded(proc.kill())
            self._restarted[plan.session_key] = "stopped at its wall-time deadline"
            out, err = proc.take_output("stdout"), proc.take_output("stderr")
            return timed_out(limits, spent, stdout=out, stderr=err, cut=proc.streams_cut())
        except ProcessDied:
            code = await proc.wait()
            spent = meter.usage()
            oom = proc.cgroup.oom_kills() > 0
            await shielded(proc.kill())
            self._restarted[plan.session_key] = "its process ended"
            return from_death(
                code,
                oom_killed=oom,
                stderr_tail=proc.stderr_text(),
                limits=limits,
                usage=spent,
                stdout=proc.take_output("stdout"),
                stderr=proc.take_output("stderr"),
                cut=proc.streams_cut(),
            )
        except BaseException:  # cancelled (or failed) mid-run: the interpreter goes
            await shielded(proc.kill())
            self._restarted[plan.session_key] = STOPPED
            raise
        spent = meter.usage(answer)
        stdout, stderr = proc.take_output("stdout"), proc.take_output("stderr")
        lost: str | None = None
        try:
            done = await copy_out(
                proc,
                answer,
                sent,
                session.mirror,
                budget=limits.workspace_bytes,
                max_files=limits.workspace_files,
            )
        except (TimeoutError, ProcessDied):
            await shielded(proc.kill())
            lost = "its files could not be copied back"
            self._restarted[plan.session_key] = lost
            done = Settled((), (), True)  # the host keeps what came back; the rest is lost
        except BaseException:  # cancelled while copying back: what the guest holds is unknown
            await shielded(proc.kill())
            self._restarted[plan.session_key] = STOPPED
            raise
        if answer.get("fatal"):
            await shielded(proc.kill())
            self._restarted[plan.session_key] = "its interpreter failed"
        return from_report(
            answer,
            limits,
            stdout=stdout,
            stderr=stderr,
            usage=spent,
            written=done.touched,
            images=done.images,
            workspace_over=done.over_budget,
            lost=lost,
        )

    async def _make_room(self, plan: ExecutionPlan) -> None:
        """Before a new session of `plan.grant` takes a process: keep the grant within its
        share and the engine within `max_sessions`, reclaiming idle sessions' interpreters.

        Raises:
            EngineBusy: every session that would have to give way is running a call.
        """
        share = max(1, int(self._max_sessions * plan.pool_share))
        by_grant: dict[str, list[str]] = {}
        for key, session in self._sessions.items():
            by_grant.setdefault(session.grant, []).append(key)
        mine = by_grant.get(plan.grant, [])
        if len(mine) >= share:
            if not await self._reclaim(mine):
                raise EngineBusy(
                    f"your client holds {len(mine)} Pyodide interpreters, its share of this "
                    f"server's {self._max_sessions} (server.grant_share), and all of them are "
                    "running calls; retry when one finishes, or end a session you no longer use",
                    retry_after_s=5.0,
                )
            return
        if len(self._sessions) < self._max_sessions:
            return
        for keys in sorted(by_grant.values(), key=len, reverse=True):
            if await self._reclaim(keys):
                return
        raise EngineBusy(
            f"the pyodide engine holds {len(self._sessions)} interpreters, its maximum, and all "
            "of them are running calls; retry shortly",
            retry_after_s=5.0,
        )

    async def _reclaim(self, keys: list[str]) -> bool:
        """End the least recently used idle session among `keys`; False if all are busy."""
        idle = [
            k
            for k in keys
            if k in self._sessions and not (k in self._locks and self._locks[k].locked())
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda k: self._sessions[k].last_used)
        logger.info("pyodide: reclaiming the idle interpreter of session %r", victim)
        self._restarted[victim] = RECLAIMED
        await self._drop(victim)
        return True

    async def end_session(self, key: str) -> bool:
        """Kill the process of the session `key` (`ExecutionPlan.session_key`); its globals go
        with it. False if it held none."""
        lock = self._locks.get(key)
        if lock is None:
            return False
        async with lock:
            found = key in self._sessions
            await self._drop(key)
        self._locks.pop(key, None)
        self._restarted.pop(key, None)
        return found

    async def _drop(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None:
            await shielded(session.process.kill())

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(60.0, self._idle_s / 4)))
            cutoff = time.monotonic() - self._idle_s
            for sid, session in list(self._sessions.items()):
                lock = self._locks.get(sid)
                if session.last_used < cutoff and lock is not None and not lock.locked():
                    logger.info("pyodide: session %s idled out", sid)
                    await self.end_session(sid)

    async def aclose(self) -> None:
        """Kill every process (pool and sessions) and stop the background tasks."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        for sid in list(self._sessions):
            await self._drop(sid)
        if self._pool is not None:
            await self._pool.aclose()
        self._started = False


def _with_note(result: RunResult, note: str) -> RunResult:
    line = f"sandgate: this session's interpreter was restarted ({note}); its globals are gone\n"
    return replace(result, stderr=line + result.stderr)
