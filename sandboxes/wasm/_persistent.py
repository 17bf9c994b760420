"""Persistent sessions on the wasm engine (`state: persistent`): one live guest per session,
kept between the session's runs, each in a worker process of its own.

Why a process of its own, not a pinned pool worker: the pool's `workers` keep serving fresh
runs exactly as before (a live session never holds one, so sessions cannot starve fresh calls);
a guest that does not stop at its deadline is stopped by killing a process, which then ends
that one session's guest and nobody else's; a process's peak memory is that session's alone;
and ending a session gives all of its memory back to the system. The cost is a process's
memory per live session (about 75 MB on CPython 3.11, bounded by `max_sessions`), and a process
start: loading the compiled module takes a new process about a second, so one process is kept
warm ahead of the next session (`_standby`), whose first run then costs a guest's opening
(about 30 ms) instead.

The guest is granted the session's own folders in place (its files at `/workspace`, its site
folder, the operator mounts; `_resident`), never lent through a slot: between runs the files
are in the session folder, where other tools and calls see them, and a run's writes land there
directly. Its calls enter the session's `SessionUses` as calls that share the folder, so a
fresh call of the same session never moves the files away while a persistent run uses them.

Every limit is the run's own: the deadline, output cap, fuel and workspace watchdog apply per
turn. The memory cap is fixed when a guest starts, so a run asking for another one (or other
mounts, fuel metering, a replaced folder) ends the live guest and starts another: that run
says `lost` and why. A run stopped by a limit, or whose guest ended (a trap, `os._exit`),
ends the guest: the next run says `lost` with the reason (`LiveSessions.drop`).

Saved guests (`Capabilities.snapshots`): `LiveSessions` saves a live guest through `_save`
(the worker writes its memory into a folder, `_saved`) for a snapshot, or to pause an idle one
to disk; a session whose next run finds a saved guest (`Claim.image`) gets a new process that
resumes it (`_resume`) before the run, or, when it cannot, a fresh guest and `state: lost`
with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .._cancel import shielded
from .._errors import EngineCrashed
from .._lending import check_mounts, folder_identity, mounts_before, writable
from .._live import Claim, LiveSessions, lost_line
from .._types import ExecutionPlan, HostMount, RunResult, StateOutcome
from ._answer import backstop_result, run_request, settle
from ._pool import Worker, WorkerDied
from ._prepared import MountSpec
from ._saved import SaveRefused, read_manifest
from ._sharing import SessionUses
from ._worker import _HARNESS

logger = logging.getLogger("sandgate.wasm")

DEFAULT_MAX_SESSIONS = 16
"""Live guests (processes) the engine keeps at once."""
DEFAULT_IDLE_S = 600.0
"""Seconds a live guest may stay unused before it ends."""
REAP_EVERY_S = 30.0
"""The most seconds between two looks for idle guests."""
WARM_TIMEOUT_S = 120.0
"""Seconds a standby process may take to load the compiled module."""
HOST_GRACE_S = 15.0
"""Seconds past the run's deadline before the host kills the guest's process (the deadline
covers the turn; the grace covers a guest's opening too)."""
SAVE_TIMEOUT_S = 60.0
"""Seconds a guest's process may take to save it (or resume one) before it is killed."""
PROCESS_DIED = "its process died"
CANCELLED = "the previous run was cancelled"
MEMORY_CHANGED = "the memory limit changed"


@dataclass(frozen=True, slots=True)
class LiveShape:
    """What a live guest was started with; a run asking for other values needs another guest.

    Attributes:
        memory_bytes: The guest's memory cap.
        metered: Whether its turns count fuel.
        mounts: The operator mounts granted at `/mnt/NAME`.
        folders: The (device, inode) of the workspace, the site folder and each mount when
            they were granted (a folder replaced since is not the one the guest holds).
    """

    memory_bytes: int
    metered: bool
    mounts: tuple[MountSpec, ...]
    folders: tuple[tuple[int, int] | None, ...]

    @classmethod
    def of(cls, plan: ExecutionPlan) -> LiveShape:
        """The shape `plan` needs (reads the folders' identities: call off the event loop)."""
        mounts = tuple((m.name, str(m.host), m.read_only) for m in plan.workspace.mounts)
        paths = [
            plan.workspace.files,
            plan.workspace.site,
            *(m.host for m in plan.workspace.mounts),
        ]
        return cls(
            plan.limits.memory_bytes,
            plan.limits.fuel is not None,
            mounts,
            tuple(folder_identity(Path(p)) for p in paths),
        )

    def change(self, wanted: LiveShape) -> str | None:
        """Why a guest of this shape cannot serve a run that needs `wanted` (None: it can)."""
        if wanted.memory_bytes != self.memory_bytes:
            return MEMORY_CHANGED
        if wanted.metered != self.metered:
            return "the fuel limit was set or lifted"
        if wanted.mounts != self.mounts:
            return "the operator mounts changed"
        if wanted.folders != self.folders:
            return "the session's folders were replaced"
        return None


@dataclass(slots=True)
class LiveGuest:
    """A live session's guest, as the engine holds it: its worker process and its shape."""

    worker: Worker
    shape: LiveShape


async def _close(guest: LiveGuest) -> None:
    await guest.worker.kill()


async def _save(guest: LiveGuest, folder: Path) -> None:
    """Have the guest's process write the guest, at rest, into `folder` (`LiveSessions`'s
    save hook); the guest stays live.

    Raises:
        SaveRefused: the guest holds what a resumed one could not have.
        EngineCrashed: its process died, or did not answer in time (it is then killed).
    """
    try:
        answer = await guest.worker.request(
            {"op": "save", "folder": str(folder)}, timeout_s=SAVE_TIMEOUT_S
        )
    except TimeoutError:
        await guest.worker.kill()  # its answer would come late, to another request
        raise EngineCrashed(f"saving a wasm session's guest took over {SAVE_TIMEOUT_S} s") from None
    if not answer.get("ok"):
        raise SaveRefused(str(answer.get("refused") or answer.get("error")))
    logger.debug(
        "wasm: saved %d bytes of memory in %.1f ms", answer["bytes"], 1000 * answer["seconds"]
    )


class PersistentRuns:
    """The wasm engine's live sessions: runs them, ends them, reaps the idle ones.

    Args:
        uses: The engine's calls in flight per session folder (shared with fresh runs).
        cache_dir: The compiled-module cache the guests' processes load from.
        mpl_dir: matplotlib's cache folder, granted read-only.
        max_sessions: Most live guests at once (`LiveSessions`).
        idle_s: Seconds a live guest may stay unused before it is paused to disk.
        images_root: Where saved guests wait for their session's next run.
    """

    def __init__(
        self,
        uses: SessionUses,
        *,
        cache_dir: Path,
        mpl_dir: Path,
        max_sessions: int,
        idle_s: float,
        images_root: Path,
    ) -> None:
        self.sessions: LiveSessions[LiveGuest] = LiveSessions(
            "wasm",
            _close,
            max_sessions=max_sessions,
            idle_s=idle_s,
            save=_save,
            images_root=images_root,
        )
        self._uses = uses
        self._cache_dir = cache_dir
        self._mpl_dir = mpl_dir
        self._reaper: asyncio.Task[None] | None = None
        self._standby: asyncio.Task[Worker] | None = None
        self._closed = False

    def prepare(self) -> None:
        """Warm a process for the next session's guest, in the background (none while one is
        warm or warming)."""
        if self._standby is None and not self._closed:
            self._standby = asyncio.create_task(self._spawn_warm())

    async def _spawn_warm(self) -> Worker:
        worker = await Worker.spawn(self._cache_dir)
        try:
            answer = await worker.request({"op": "warm"}, timeout_s=WARM_TIMEOUT_S)
        except BaseException:
            await shielded(worker.kill())
            raise
        if not answer.get("ok"):
            await worker.kill()
            raise EngineCrashed(f"a wasm session process failed its warm-up: {answer}")
        return worker

    async def _take_worker(self) -> Worker:
        """The warm standby process (waiting for it if it is still warming), or a new one;
        then another standby starts warming."""
        task, self._standby = self._standby, None
        if task is None:
            self.prepare()
            return await Worker.spawn(self._cache_dir)
        try:
            worker = await shielded(task)  # the warm-up ends even if this call is cancelled
        except asyncio.CancelledError:
            warmed = not task.cancelled() and task.exception() is None
            if warmed and self._standby is None and not self._closed:
                self._standby = task  # still the standby, for the next session
            elif warmed:
                await shielded(task.result().kill())
            raise
        except Exception as exc:  # a failed warm-up costs only the head start
            logger.warning("wasm: a standby session process failed: %s", exc)
            self.prepare()
            return await Worker.spawn(self._cache_dir)
        self.prepare()
        if worker.reachable():
            return worker
        await worker.kill()
        return await Worker.spawn(self._cache_dir)

    async def run(self, plan: ExecutionPlan) -> RunResult:
        """Run `plan` in its session's live guest (started when there is none).

        Raises:
            EngineBusy: no room for another live guest (`LiveSessions.make_room`); nothing ran.
            EngineCrashed: the guest's process died or could not open the guest.
        """
        self._start_reaper()
        key = plan.session_key
        mounts = check_mounts(plan.workspace.mounts)
        async with self.sessions.lock(key):
            if key not in self.sessions:
                await self.sessions.make_room(plan)
            claim = self.sessions.claim(key)
            shape = await asyncio.to_thread(LiveShape.of, plan)
            state: StateOutcome = claim.state
            note = claim.note
            guest = claim.interpreter
            if guest is not None:
                why = PROCESS_DIED if not guest.worker.reachable() else guest.shape.change(shape)
                if why is not None:
                    await self.sessions.drop(key, None)  # said by this run
                    guest, state, note = None, "lost", why
            started = guest is None
            if guest is None:
                worker = await self._take_worker()
                if claim.image is not None:
                    worker, claim = await self._resume(plan, worker, claim.image, mounts)
                    state, note, started = claim.state, claim.note, claim.state != "kept"
                guest = LiveGuest(worker, shape)
                self.sessions.add(plan, guest)
            async with self._uses.enter(plan.workspace.files, wants_to_move=False):
                result = await self._run_in(plan, guest, mounts, started=started)
        if state == "lost" and note is not None:
            result = dataclasses.replace(result, stderr=lost_line(note) + result.stderr)
        return dataclasses.replace(result, state=state, state_note=note)

    async def _resume(
        self,
        plan: ExecutionPlan,
        worker: Worker,
        image: Path,
        mounts: tuple[HostMount, ...],
    ) -> tuple[Worker, Claim[LiveGuest]]:
        """Resume the session's saved guest (`image`) in `worker`, with `plan`'s folders and
        memory cap. When it cannot be, the image is discarded and the worker (or another, if
        it died) opens a fresh guest at the run: the session's claim then says `lost` and why.
        """
        key = plan.session_key
        request = run_request(plan, mounts, None, self._mpl_dir, may_move=False)
        request.update(op="resume", image=str(image))
        try:
            answer = await worker.request(request, timeout_s=SAVE_TIMEOUT_S)
        except (TimeoutError, WorkerDied) as exc:
            await shielded(worker.kill())
            answer = {"ok": False, "refused": f"its process failed: {type(exc).__name__}"}
            worker = await self._take_worker()
        except BaseException:  # cancelled: the image stays for the session's next run
            await shielded(worker.kill())
            raise
        if not answer.get("ok"):
            why = str(answer.get("refused") or answer.get("error"))
            logger.warning("wasm: session %r could not be resumed: %s", key, why)
            self.sessions.discard_image(key, why)
        else:
            logger.debug("wasm: session %r resumed in %.1f ms", key, 1000 * answer["seconds"])
        return worker, self.sessions.claim(key)

    async def _run_in(
        self,
        plan: ExecutionPlan,
        guest: LiveGuest,
        mounts: tuple[HostMount, ...],
        *,
        started: bool,
    ) -> RunResult:
        """Run `plan` as the next turn of `guest` (`started`: opened for this run), and end the
        guest when the run was stopped by a limit or ended it."""
        key, limits = plan.session_key, plan.limits
        mounted = await asyncio.to_thread(mounts_before, mounts) if writable(mounts) else None
        request = run_request(plan, mounts, mounted, self._mpl_dir, may_move=False)
        request["live"] = True
        began = time.perf_counter()
        try:
            answer = await guest.worker.request(
                request, timeout_s=limits.wall_timeout_s + HOST_GRACE_S
            )
        except TimeoutError:  # the guest did not stop at its deadline: the host did
            result = backstop_result(limits, began)
            await self.sessions.drop(key, f"the previous run was stopped by {result.limit}")
            return result
        except WorkerDied:
            await self.sessions.drop(key, PROCESS_DIED)
            raise
        except BaseException:  # cancelled mid-run: the guest stops with the call
            await shielded(self.sessions.drop(key, CANCELLED))
            raise
        if not answer.get("ok"):  # a guest that never opened kept nothing to lose
            await self.sessions.drop(key, None if started else PROCESS_DIED)
            raise EngineCrashed(f"the wasm session's guest could not run: {answer.get('error')}")
        result = await settle(answer, plan, mounts, mounted)
        ended = answer.get("ended")
        if result.limit is not None:
            await self.sessions.drop(key, f"the previous run was stopped by {result.limit}")
        elif ended is not None:
            await self.sessions.drop(key, f"the previous run ended its interpreter ({ended})")
        return result

    async def end(self, key: str) -> bool:
        """End the session's live guest; False if it had none."""
        return await self.sessions.end(key)

    def _start_reaper(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap())

    async def _reap(self) -> None:
        every = min(REAP_EVERY_S, self.sessions.idle_s / 4)
        while True:
            await asyncio.sleep(every)
            try:
                await self.sessions.reap_idle()
            except Exception as exc:  # the reaper outlives one failed look
                logger.error("wasm: reaping idle sessions failed: %s", exc)

    async def aclose(self) -> None:
        """End every live guest, the standby process and the reaper."""
        self._closed = True
        standby, self._standby = self._standby, None
        if standby is not None:
            standby.cancel()
            with contextlib.suppress(BaseException):
                await (await standby).kill()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(BaseException):
                await self._reaper
        await self.sessions.aclose()

    async def save(self, key: str, folder: Path) -> bool:
        """Save the session's guest (live or paused) into `folder`; False if it has none.

        Raises:
            SaveRefused: the guest holds what a resumed one could not have.
            EngineCrashed: its process died or did not answer.
        """
        return await self.sessions.save(key, folder)

    async def load(self, key: str, grant: str, folder: Path) -> None:
        """Make the guest saved in `folder` the session's; its next run resumes it.

        Raises:
            StateImageRefused: `folder` holds no guest this build can resume.
        """
        await asyncio.to_thread(read_manifest, folder, _HARNESS)
        await self.sessions.load(key, grant, folder)
