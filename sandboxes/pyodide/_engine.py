"""The `pyodide` engine: Pyodide under a jailed Deno, from a pool of booted processes.

A `persistent` plan runs in its session's interpreter (kept in `LiveSessions`, the registry
every engine shares); a `fresh` plan takes a booted process from the pool, runs, and kills it.
A process never serves two sessions.

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
3. Deno permissions: read of the Pyodide assets and the snapshot only (a resumed process: its
   saved folder instead of the snapshot); `--deny-write`, `--deny-net`, `--deny-env`,
   `--deny-run`, `--deny-ffi`, `--deny-sys`, `--deny-import`, `--no-prompt`. Even code holding
   `Deno.readTextFileSync` gets `NotCapable`. Neither the workspace nor the operator mounts
   are readable by Deno at all: files are copied in and out by the host (`_sync.py`), never
   through a link; the installed packages (`/site`) and read-only mounts are never copied
   back, and their nodes in Pyodide's file system refuse writes, `chmod` and renames (as does
   `/` for the names `site` and `mnt`).
4. OS (`_jail.py`), each required unless the caller lists fewer (`require`: the engine
   refuses to start without a required one; see `sandboxes._layers`): a network namespace
   with no interface (`unshare --net`), `no_new_privs` and an empty capability bounding set
   (`setpriv`), a cgroup v1 memory cap (the OOM killer ends the process: `memory`) and
   thread cap, a `RLIMIT_CPU` budget per call, a minimal environment, and a process-group
   kill at the wall deadline (`timeout`). Deno's own V8 heap is capped by `--max-old-space-size`.

Saved interpreters (`capabilities.snapshots`: snapshots, forks, idle sessions paused to disk;
`_saved.py` says what the folder holds). A save asks the session's idle process for a Pyodide
memory snapshot of itself, taken where the interpreter rests between runs: the wasm memory
(globals, imported modules, objects), the JS-bridge slots it holds, and the files it made in
its in-memory file system outside the host's folders, with its working folder. A resume boots
a new jailed process from that snapshot (`host.mjs resume`, read access to the assets and that
folder only), puts the files back, then seals, warms and closes the JS realm exactly as a
pooled process does, before any code runs; the workspace, `/site` and mounts are copied in by
the session's next run, as for a new process. Refused (`SaveRefused`, with why) when the
interpreter could not come back as it is: a file is open, an asyncio task is pending (its
timer lives in JS), or Python code holds JavaScript objects. The trade: a resumed process runs
the saved image's own code while booting, before the realm is closed; that image came from the
same session's guest, so it is held by layers 3 and 4 (which bound every process) as a guest
that reached the JS realm is.

Egress (`network: egress`): Deno keeps every permission and the jail it has (no network
namespace interface, `--deny-net`); it reaches no proxy itself. For a run whose plan carries a
lease, `host.mjs` hands the guest a door for that run only: the guest's HTTP client
(`sandboxes/guest/sandgate_relay.py`: urllib's openers, `requests`' adapter, a `pyodide.http` of its
own with `pyfetch` and `open_url`) writes a frame as a protocol line and blocks on a
synchronous read of stdin (`Deno.stdin.readSync`), while this process performs the request
through the egress proxy with the run's credentials (`sandboxes._relay.Relay`, bounded by the
run's time limit) and writes the answer back. Handing Deno a Unix socket instead would mean
`--allow-net`/`--allow-read` on a path and a socket reachable from a realm code can climb to;
this way the jail is unchanged and the lease never enters the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from .._cancel import shielded
from .._engine import Capabilities, EngineLifecycle, PoolStats
from .._errors import EngineNotReady, EngineUnavailable, SandboxError, StateImageRefused
from .._layers import refuse_missing, required_layers
from .._live import LiveSessions, lost_line
from .._relay import Relay
from .._types import DEFAULT_MEMORY_BYTES, ExecutionPlan, RunResult
from ._assets import Assets, Progress, build_snapshot, find_deno, locate
from ._jail import JailInfo, clean_stale, limit_cpu, probe
from ._pool import Pool, Spawn
from ._process import DenoProcess, ProcessDied
from ._results import Meter, from_death, from_report, timed_out
from ._saved import FILES, HEAP, SaveRefused, check, write_manifest
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
SAVE_TIMEOUT_S = 120.0
"""Longest a save of one interpreter may take (its heap is sent whole: ~31 MB when fresh)."""
CPU_BACKSTOP_FACTOR = 4.0
"""Without a CPU limit, a run may use this many times its wall timeout (all threads)."""
_MISSING = "Pyodide assets are missing: run `sandgate setup pyodide`"


STOPPED = "its last call was cancelled or failed before it ended"
DIED = "its process died"
DIED_BETWEEN_CALLS = "its process ended between calls"
MOUNTS_CHANGED = "the operator mounts changed"


@dataclass(slots=True)
class _Interpreter:
    """One Deno process serving one session (or one fresh run), and what it holds of the
    host's files. `ended`: why the last run stopped it (None while it lives)."""

    process: DenoProcess
    mirror: Mirror = field(default_factory=Mirror)
    ended: str | None = None


async def _close(interpreter: _Interpreter) -> None:
    await interpreter.process.kill()


class PyodideEngine(EngineLifecycle):
    """Runs plans in Pyodide under Deno; a `persistent` session keeps its interpreter.

    Args:
        assets_dir: Where `setup_pyodide` put the assets (default `$SANDGATE_CACHE/pyodide`).
        pool_size: Processes kept booted and idle, ready for new sessions.
        max_sessions: Persistent sessions that may hold a process at once (`LiveSessions`:
            past it, or past a grant's `ExecutionPlan.pool_share`, the least recently used
            idle one gives its process up; with none idle, `EngineBusy`).
        session_idle_s: A session idle this long loses its process (and its globals).
        js_heap_bytes: V8 heap cap of each Deno process (Python memory is capped per run).
        ready_timeout_s: How long a run waits for a booted process.
        progress: Called with a line of text while the engine prepares.
        harden_js: Only for tests of the permission layer: False keeps the JS globals (and
            is itself the explicit allowance to run without the `js_realm` layer).
        require: The boundary layers (`sandboxes.ENGINE_LAYERS["pyodide"]` names) this
            engine refuses to start without; None: every one it relies on.
        saved_dir: Where sessions paused to disk and loaded snapshots wait for their next run
            (default: a folder in the system's temporary folder).
    """

    name = "pyodide"
    capabilities = Capabilities(
        final_expression=True,
        persistent_state=True,
        mounts=True,
        snapshots=True,
        networks=frozenset({"none", "egress"}),
    )

    def __init__(
        self,
        *,
        assets_dir: Path | None = None,
        pool_size: int = DEFAULT_POOL_SIZE,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        session_idle_s: float = DEFAULT_SESSION_IDLE_S,
        js_heap_bytes: int = DEFAULT_JS_HEAP_BYTES,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        progress: Progress | None = None,
        harden_js: bool = True,
        require: Iterable[str] | None = None,
        saved_dir: Path | None = None,
    ) -> None:
        if pool_size < 0 or max_sessions < 1:
            raise ValueError(
                f"pool_size >= 0 and max_sessions >= 1 expected, got {pool_size}, {max_sessions}"
            )
        self._assets_dir = assets_dir
        self._pool_size = pool_size
        self._js_heap_bytes = js_heap_bytes
        self._ready_timeout_s = ready_timeout_s
        self._progress = progress or (lambda line: logger.info("%s", line))
        self._harden = harden_js
        self._require = required_layers(self.name, require) - (
            frozenset() if harden_js else {"js_realm"}
        )
        self._live = LiveSessions[_Interpreter](
            self.name,
            _close,
            max_sessions=max_sessions,
            idle_s=session_idle_s,
            save=self._save,
            images_root=saved_dir,
        )
        self._assets: Assets | None = None
        self._fresh: set[DenoProcess] = set()
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
        return self._live.keys()

    def session_pid(self, key: str) -> int | None:
        """The pid of the Deno process serving the session `key`, if it holds one."""
        interpreter = self._live.get(key)
        return None if interpreter is None else interpreter.process.pid

    @property
    def ready(self) -> bool:
        return self._started and not self._closed

    def pool_stats(self) -> PoolStats:
        """Figures for the metrics: booted idle processes, the persistent sessions holding one
        (`sessions`, also as `live_sessions`, the name every engine uses), their maximum, and
        the sessions whose interpreter waits saved on disk (`paused`)."""
        idle = len(self._pool.pids()) if self._pool else 0
        live = len(self._live)
        return {
            "idle": idle,
            "sessions": live,
            "live_sessions": live,
            "max_sessions": self._live.max_sessions,
            "paused": self._live.paused(),
        }

    def process_ids(self) -> tuple[int, ...]:
        """Pids of every Deno process the engine holds (pool, sessions, fresh runs)."""
        pooled = self._pool.pids() if self._pool else ()
        kept = (i.process.pid for i in self._live.interpreters())
        return (*pooled, *kept, *(p.pid for p in self._fresh))

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
        self._assets = assets
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
        """Run `plan` in its session's interpreter (`persistent`: taken from the pool on the
        session's first run, kept after) or in a process of its own (`fresh`).

        Raises:
            EngineUnavailable, EngineNotReady, EngineBusy: the engine's own failures.
            CapabilityMissing, EngineClosed: see the `Engine` contract.
        """
        self._refuse_if_closed()
        self.capabilities.check(self.name, plan)
        await self.start()
        if plan.state == "fresh":
            return await self._run_fresh(plan)
        return await self._run_kept(plan)

    async def _run_fresh(self, plan: ExecutionPlan) -> RunResult:
        """Run `plan` in a booted process no run touched, then kill it: nothing is kept."""
        interpreter = _Interpreter(await self._take())
        self._fresh.add(interpreter.process)
        try:
            result = await self._run_in(interpreter, plan, persistent=False)
        finally:
            self._fresh.discard(interpreter.process)
            await shielded(interpreter.process.kill())
        return replace(result, state="fresh")

    async def _run_kept(self, plan: ExecutionPlan) -> RunResult:
        """Run `plan` in its session's live interpreter, starting one if it holds none, and
        keep it unless the run stopped it (then the session's next run says why)."""
        key, live = plan.session_key, self._live
        async with live.lock(key):
            claim = live.claim(key)
            held = claim.interpreter
            if held is not None and not held.process.alive:
                await live.drop(key, DIED_BETWEEN_CALLS)
                claim = live.claim(key)
            elif held is not None and held.mirror.mounts not in (None, plan.workspace.mounts):
                await live.drop(key, MOUNTS_CHANGED)
                claim = live.claim(key)
            interpreter = claim.interpreter
            if interpreter is None:
                await live.make_room(plan)
                if claim.image is not None:
                    interpreter = await self._resume(key, claim.image)
                    claim = claim if interpreter is not None else live.claim(key)
                if interpreter is None:
                    interpreter = _Interpreter(await self._take())
                live.add(plan, interpreter)
            try:
                result = await self._run_in(interpreter, plan, persistent=True)
                if interpreter.ended is None and result.limit is not None:
                    interpreter.ended = f"the previous run was stopped by {result.limit}"
            finally:
                if interpreter.ended is None and not interpreter.process.alive:
                    interpreter.ended = DIED
                if interpreter.ended is not None:
                    await live.drop(key, interpreter.ended)
        result = replace(result, state=claim.state, state_note=claim.note)
        if claim.note is None:
            return result
        return replace(result, stderr=lost_line(claim.note) + result.stderr)

    async def _resume(self, key: str, folder: Path) -> _Interpreter | None:
        """The interpreter saved in `folder`, booted in a process of its own; None when it
        cannot be resumed (the session's saved state is then discarded, saying why)."""
        assets, jail = self._assets, self._jail
        assert assets is not None and jail is not None
        try:
            heap_bytes = await asyncio.to_thread(check, folder)
            process = await DenoProcess.spawn(
                assets,
                jail,
                js_heap_bytes=self._js_heap_bytes,
                # the boot holds the heap twice (the file, then the wasm memory)
                memory_limit_bytes=max(DEFAULT_MEMORY_BYTES, 2 * heap_bytes)
                + RUNTIME_OVERHEAD_BYTES,
                harden=self._harden,
                saved=folder,
            )
        except StateImageRefused as exc:
            self._live.discard_image(key, exc.reason)
            return None
        except ProcessDied as exc:
            self._live.discard_image(key, f"its process did not start ({exc})"[:600])
            return None
        return _Interpreter(process)

    async def _save(self, interpreter: _Interpreter, folder: Path) -> None:
        """Write `interpreter` (idle) into the empty `folder`; it stays live.

        Raises:
            SaveRefused: it holds what a resumed interpreter could not have.
            SandboxError: its process is gone, or failed while saving (it is then ended).
        """
        proc = interpreter.process
        if interpreter.ended is not None or not proc.alive:
            raise SandboxError(
                f"the session's interpreter cannot be saved: {interpreter.ended or DIED}"
            )
        files = {"heap": folder / HEAP, "files": folder / FILES}
        try:
            answer = await proc.save(files, timeout_s=SAVE_TIMEOUT_S)
        except (TimeoutError, ProcessDied) as exc:
            interpreter.ended = "its process failed while it was being saved"
            await shielded(proc.kill())
            raise SandboxError(f"the session's interpreter could not be saved: {exc}") from None
        except BaseException:  # cancelled mid-save: the protocol is out of step
            interpreter.ended = STOPPED
            await shielded(proc.kill())
            raise
        if answer.get("saved") is not True:
            refused = answer.get("refused")
            raise SaveRefused(refused[:600] if isinstance(refused, str) else f"it said {answer}")
        await asyncio.to_thread(
            write_manifest,
            folder,
            heap_bytes=answer["heap_bytes"],
            files_bytes=answer["files_bytes"],
        )

    async def save_state(self, key: str, folder: Path) -> bool:
        """Save the interpreter of session `key` into the empty `folder` (see the `Engine`
        contract); False when the session holds none.

        Raises:
            SaveRefused: it holds what a resumed interpreter could not have (say why).
            SandboxError: its process failed while saving.
            EngineClosed: after `aclose`.
        """
        self._refuse_if_closed()
        return await self._live.save(key, folder)

    async def load_state(self, key: str, grant: str, folder: Path) -> None:
        """Make the interpreter saved in `folder` the one of session `key` of `grant`: its
        next persistent run resumes from it (`state: kept`).

        Raises:
            StateImageRefused: `folder` holds no interpreter this build can resume.
            EngineClosed: after `aclose`.
        """
        self._refuse_if_closed()
        await asyncio.to_thread(check, folder)
        await self._live.load(key, grant, folder)

    async def _take(self) -> DenoProcess:
        assert self._pool is not None
        try:
            return await self._pool.take(self._ready_timeout_s)
        except TimeoutError:
            raise EngineNotReady(
                f"no Pyodide process booted within {self._ready_timeout_s:g} s; retry shortly",
                waited_s=self._ready_timeout_s,
            ) from None

    async def _run_in(
        self, interpreter: _Interpreter, plan: ExecutionPlan, *, persistent: bool
    ) -> RunResult:
        """Run `plan` in `interpreter`'s process; a run that has to stop the process kills it
        and says why in `interpreter.ended`. `persistent`: the process serves a session."""
        limits, proc, program = plan.limits, interpreter.process, plan.program
        sent = await asyncio.to_thread(
            plan_copy, plan.workspace, interpreter.mirror, limits.workspace_bytes
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
        if limits.network == "egress" and plan.egress is not None:
            request["egress"] = True  # the host performs its requests (`sandboxes._relay`)
            proc.relay = Relay(plan.egress, deadline_s=limits.wall_timeout_s)
        proc.cgroup.set_memory_limit(limits.memory_bytes + RUNTIME_OVERHEAD_BYTES)
        proc.cgroup.reset_peak()
        limit_cpu(proc.pid, limits.cpu_time_s or limits.wall_timeout_s * CPU_BACKSTOP_FACTOR + 1)
        meter = Meter(proc)
        proc.clear_output()
        try:
            async with asyncio.timeout(COPY_TIMEOUT_S):
                await copy_in(proc, sent)
            try:
                answer = await proc.request(request, timeout_s=limits.wall_timeout_s)
            finally:
                if proc.relay is not None:
                    proc.relay.close()
                    proc.relay = None
        except TimeoutError:
            spent = meter.usage()
            await shielded(proc.kill())
            out, err = proc.take_output("stdout"), proc.take_output("stderr")
            return self._stopped(
                interpreter,
                timed_out(
                    limits,
                    spent,
                    stdout=out,
                    stderr=err,
                    cut=proc.streams_cut(),
                    persistent=persistent,
                ),
            )
        except ProcessDied:
            code = await proc.wait()
            spent = meter.usage()
            oom = proc.cgroup.oom_kills() > 0
            await shielded(proc.kill())
            died = from_death(
                code,
                oom_killed=oom,
                stderr_tail=proc.stderr_text(),
                limits=limits,
                usage=spent,
                stdout=proc.take_output("stdout"),
                stderr=proc.take_output("stderr"),
                cut=proc.streams_cut(),
                persistent=persistent,
            )
            return self._stopped(interpreter, died)
        except BaseException:  # cancelled (or failed) mid-run: the interpreter goes
            interpreter.ended = STOPPED
            await shielded(proc.kill())
            raise
        spent = meter.usage(answer)
        stdout, stderr = proc.take_output("stdout"), proc.take_output("stderr")
        lost: str | None = None
        try:
            done = await copy_out(
                proc,
                answer,
                sent,
                interpreter.mirror,
                budget=limits.workspace_bytes,
                max_files=limits.workspace_files,
            )
        except (TimeoutError, ProcessDied):
            lost = interpreter.ended = "its files could not be copied back"
            await shielded(proc.kill())
            done = Settled((), (), True)  # the host keeps what came back; the rest is lost
        except BaseException:  # cancelled while copying back: what the guest holds is unknown
            interpreter.ended = STOPPED
            await shielded(proc.kill())
            raise
        if answer.get("fatal"):
            interpreter.ended = interpreter.ended or "its interpreter failed"
            await shielded(proc.kill())
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
            persistent=persistent,
        )

    @staticmethod
    def _stopped(interpreter: _Interpreter, result: RunResult) -> RunResult:
        """`result` of a run whose process the host killed or saw die: `interpreter.ended`
        says by which limit, if one."""
        limit = result.limit
        interpreter.ended = f"the previous run was stopped by {limit}" if limit else DIED
        return result

    async def end_session(self, key: str) -> bool:
        """Kill the process of the session `key` (`ExecutionPlan.session_key`); its globals go
        with it. False if it held none."""
        return await self._live.end(key)

    async def _reap_idle(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, min(60.0, self._live.idle_s / 4)))
            await self._live.reap_idle()

    async def aclose(self) -> None:
        """Kill every process (pool, sessions, fresh runs) and stop the background tasks."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        await self._live.aclose()
        await asyncio.gather(*(p.kill() for p in self._fresh), return_exceptions=True)
        if self._pool is not None:
            await self._pool.aclose()
        self._started = False
