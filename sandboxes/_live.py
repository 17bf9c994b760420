"""Live interpreters kept per session (`state: persistent`), the same way on every engine.

An engine that keeps a session's interpreter between runs holds it here, keyed by
`ExecutionPlan.session_key`: one interpreter per session, never shared. `LiveSessions` owns the
rules every engine keeps alike:

- **One run at a time per session** (`lock`), so a session's calls never interleave in one
  interpreter.
- **Bounded and fairly shared**: at most `max_sessions` live interpreters; a grant holds at
  most its share (`ExecutionPlan.pool_share`) of them while others need room. Room is made by
  ending the least recently used *idle* interpreter (of the grant itself when it is at its
  share, else of the grant holding the most); when every candidate is running a call, the new
  session is refused with `EngineBusy` (nothing ran, nothing counted).
- **Lost state is said, once**: an interpreter that ends for any reason but the session's end
  (a limit stopped a run, it was reclaimed, it idled out, its process died, its limits changed)
  leaves a note, and the session's next run reports `state="lost"` with that note (`claim`).
- **Idle interpreters end** after `idle_s` (`reap_idle`, run by the engine's own task).
- **Saved interpreters** (engines with `Capabilities.snapshots`, which pass `save`): an idle
  interpreter that is reclaimed or idles out is *paused to disk* instead (saved into a folder
  of its own under `images_root`, then ended), and `load` places a saved one (a snapshot, a
  fork) for a session. Either way the session's next run gets it in `Claim.image`: the engine
  resumes the interpreter from that folder and `add`s it (`state: kept`), or says why it
  could not (`discard_image`, then `state: lost`). At most `max_images` wait on disk; beyond
  that the oldest is discarded (its session's next run says so: `NO_ROOM_ON_DISK`).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from ._cancel import shielded
from ._copy import link_tree
from ._errors import EngineBusy, SandboxError
from ._files import remove_tree
from ._types import ExecutionPlan, StateOutcome

logger = logging.getLogger("sandgate.live")

T = TypeVar("T")

RECLAIMED = "it was idle and another session needed room"
IDLED_OUT = "it was idle longer than the engine keeps interpreters"
PROCESS_DIED = "its process died"
CANCELLED = "the previous run was cancelled"
LIMITS_CHANGED = "the limits changed"
"""A run whose fixed limits (memory, processes, mounts: what the interpreter was made with)
differ from its session's interpreter's: that one ends and a new one starts."""
BUSY_RETRY_S = 5.0
DEFAULT_MAX_IMAGES = 1024
"""Saved interpreters (paused or placed) one engine keeps on disk at once: enough for every
session the server's grants may hold (forks place one per session, as hard links of the
snapshot's files); beyond it the oldest is discarded (`NO_ROOM_ON_DISK`)."""
NO_ROOM_ON_DISK = (
    "it was paused to disk and later discarded: the engine keeps at most that many paused "
    "interpreters"
)


@dataclass(slots=True)
class _Live(Generic[T]):
    interpreter: T
    grant: str
    last_used: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class _Image:
    folder: Path
    grant: str
    since: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class Claim(Generic[T]):
    """What a run of a persistent session gets: the interpreter to run in (None: start one,
    then `add` it), and how the session's state stands (`new`, `kept` or `lost` with why).

    Attributes:
        image: With no live interpreter, a saved one to resume from (paused to disk, or
            placed by `load`): the engine starts the interpreter from this folder and `add`s
            it, or calls `discard_image` with why it could not (the run is then `lost`).
    """

    interpreter: T | None
    state: StateOutcome
    note: str | None = None
    image: Path | None = None


class LiveSessions(Generic[T]):
    """The live interpreters of one engine, by session key.

    Args:
        engine: The engine's name, for messages.
        close: Ends an interpreter (kills its process); must not raise.
        max_sessions: Most live interpreters at once.
        idle_s: Seconds an interpreter may stay unused before `reap_idle` ends it.
        save: Writes a live, idle interpreter into an empty folder (engines that can save
            interpreters); then idle interpreters are paused to disk instead of ended. It
            raises `SandboxError` when it cannot (the interpreter is then ended, as without).
        images_root: Where saved interpreters wait (default: a folder in the system's
            temporary folder).
        max_images: Most saved interpreters waiting at once.
    """

    def __init__(
        self,
        engine: str,
        close: Callable[[T], Awaitable[None]],
        *,
        max_sessions: int,
        idle_s: float,
        save: Callable[[T, Path], Awaitable[None]] | None = None,
        images_root: Path | None = None,
        max_images: int = DEFAULT_MAX_IMAGES,
    ) -> None:
        if max_sessions < 1 or idle_s <= 0:
            raise ValueError(
                f"expected max_sessions >= 1 and idle_s > 0, got {max_sessions} and {idle_s}"
            )
        self.engine = engine
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self._close = close
        self._live: dict[str, _Live[T]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._lost: dict[str, str] = {}
        self._save = save
        self._images_root = images_root
        self._images: dict[str, _Image] = {}
        self.max_images = max_images

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, key: object) -> bool:
        return key in self._live

    def keys(self) -> tuple[str, ...]:
        """The sessions that hold a live interpreter."""
        return tuple(self._live)

    def interpreters(self) -> tuple[T, ...]:
        """Every live interpreter."""
        return tuple(live.interpreter for live in self._live.values())

    def get(self, key: str) -> T | None:
        """The live interpreter of session `key`, if it holds one (not counted as a use)."""
        live = self._live.get(key)
        return None if live is None else live.interpreter

    def lock(self, key: str) -> asyncio.Lock:
        """The lock a run of session `key` holds from `claim` to its end."""
        return self._locks.setdefault(key, asyncio.Lock())

    @property
    def saves(self) -> bool:
        """Whether interpreters can be saved (paused to disk, snapshots)."""
        return self._save is not None

    def has_image(self, key: str) -> bool:
        """Whether a saved interpreter waits for session `key`'s next run."""
        return key in self._images

    def paused(self) -> int:
        """Saved interpreters waiting on disk for their session's next run."""
        return len(self._images)

    def claim(self, key: str) -> Claim[T]:
        """The session's interpreter and how its state stands (call under `lock(key)`). A
        lost note stays until `add` gives the session its next interpreter, so a run refused
        before that (`EngineBusy`, no process ready) leaves it for the next one to say."""
        note = self._lost.get(key)
        live = self._live.get(key)
        if live is not None:
            live.last_used = time.monotonic()
            return Claim(live.interpreter, "kept")
        image = self._images.get(key)
        if image is not None:
            return Claim(None, "kept", image=image.folder)
        if note is not None:
            return Claim(None, "lost", note)
        return Claim(None, "new")

    async def make_room(self, plan: ExecutionPlan) -> None:
        """Before `plan`'s session adds an interpreter: keep its grant within its share and
        the engine within `max_sessions`, ending idle interpreters (least recently used).

        Raises:
            EngineBusy: every interpreter that would have to give way is running a call.
        """
        share = max(1, int(self.max_sessions * plan.pool_share))
        by_grant: dict[str, list[str]] = {}
        for key, live in self._live.items():
            by_grant.setdefault(live.grant, []).append(key)
        mine = by_grant.get(plan.grant, [])
        if len(mine) >= share:
            if not await self._reclaim(mine):
                raise EngineBusy(
                    f"your client holds {len(mine)} live {self.engine} interpreters, its share "
                    f"of this server's {self.max_sessions} (server.grant_share), and all of "
                    "them are running calls; retry when one finishes, or end a session you no "
                    "longer use",
                    retry_after_s=BUSY_RETRY_S,
                )
            return
        if len(self._live) < self.max_sessions:
            return
        for keys in sorted(by_grant.values(), key=len, reverse=True):
            if await self._reclaim(keys):
                return
        raise EngineBusy(
            f"the {self.engine} engine holds {len(self._live)} live interpreters, its maximum, "
            "and all of them are running calls; retry shortly",
            retry_after_s=BUSY_RETRY_S,
        )

    def add(self, plan: ExecutionPlan, interpreter: T) -> None:
        """Keep `interpreter` as the live one of `plan`'s session (after `make_room`); the
        session's lost note, said by this run, is forgotten."""
        self._lost.pop(plan.session_key, None)
        image = self._images.pop(plan.session_key, None)
        if image is not None:
            remove_tree(image.folder)
        self._live[plan.session_key] = _Live(interpreter, plan.grant)

    def discard_image(self, key: str, why: str) -> None:
        """The session's saved interpreter could not be resumed (`why`): it is removed, and
        the session's run says its state was lost."""
        image = self._images.pop(key, None)
        if image is not None:
            remove_tree(image.folder)
            self._lost[key] = f"its saved state could not be resumed: {why}"

    async def save(self, key: str, folder: Path) -> bool:
        """Save the session's interpreter into the empty `folder`, after any run of it ends;
        it stays live (or paused). False when the session holds none.

        Raises:
            SandboxError: the engine could not save it.
        """
        if self._save is None:
            raise SandboxError(f"the {self.engine} engine cannot save interpreters")
        async with self.lock(key):
            live = self._live.get(key)
            if live is not None:
                await self._save(live.interpreter, folder)
                return True
            image = self._images.get(key)
            if image is None:
                return False
            await asyncio.to_thread(link_tree, image.folder, folder)
            return True

    async def load(self, key: str, grant: str, folder: Path) -> None:
        """Make the interpreter saved in `folder` the session's: its live one (if any) ends
        and its next run resumes from a copy of `folder` (the caller keeps `folder`)."""
        async with self.lock(key):
            await self.drop(key, None)
            self._lost.pop(key, None)
            old = self._images.pop(key, None)
            if old is not None:
                await asyncio.to_thread(remove_tree, old.folder)
            place = self._new_image_folder()
            try:
                await asyncio.to_thread(link_tree, folder, place)
            except BaseException:
                await asyncio.to_thread(remove_tree, place)
                raise
            self._images[key] = _Image(place, grant)
        await self._bound_images()

    def _new_image_folder(self) -> Path:
        if self._images_root is None:
            self._images_root = Path(tempfile.mkdtemp(prefix=f"sandgate-{self.engine}-saved-"))
        self._images_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self._images_root / uuid.uuid4().hex

    async def _pause(self, key: str, note: str) -> None:
        """Pause the idle interpreter of `key` to disk (its lock held by the caller), or end
        it with `note` when it cannot be saved."""
        live = self._live.get(key)
        if live is None:
            return
        if self._save is None:
            await self.drop(key, note)
            return
        place = self._new_image_folder()
        place.mkdir(mode=0o700)
        try:
            await self._save(live.interpreter, place)
        except SandboxError as exc:
            logger.warning("%s: could not pause session %r to disk: %s", self.engine, key, exc)
            await asyncio.to_thread(remove_tree, place)
            await self.drop(key, note)
            return
        self._live.pop(key, None)
        await shielded(self._close(live.interpreter))
        self._images[key] = _Image(place, live.grant)
        logger.info("%s: session %r paused to disk", self.engine, key)
        await self._bound_images()

    async def _bound_images(self) -> None:
        while len(self._images) > self.max_images:
            key = min(self._images, key=lambda k: self._images[k].since)
            image = self._images.pop(key)
            self._lost[key] = NO_ROOM_ON_DISK
            await asyncio.to_thread(remove_tree, image.folder)

    async def drop(self, key: str, note: str | None) -> None:
        """End the session's interpreter; `note` (why) is said by its next run, None when
        nothing needs saying (the session ended)."""
        live = self._live.pop(key, None)
        if note is not None and live is not None:
            self._lost[key] = note
        if live is not None:
            await shielded(self._close(live.interpreter))

    async def end(self, key: str) -> bool:
        """The session ended: its interpreter goes, nothing is remembered. False if it held
        none."""
        lock = self._locks.get(key)
        if lock is None:
            self._lost.pop(key, None)
            image = self._images.pop(key, None)
            if image is not None:
                await asyncio.to_thread(remove_tree, image.folder)
            return image is not None
        async with lock:
            found = key in self._live or key in self._images
            await self.drop(key, None)
            image = self._images.pop(key, None)
            if image is not None:
                await asyncio.to_thread(remove_tree, image.folder)
        self._locks.pop(key, None)
        self._lost.pop(key, None)
        return found

    async def reap_idle(self) -> None:
        """Pause to disk (or end) every interpreter unused for `idle_s` whose session is not
        running a call."""
        cutoff = time.monotonic() - self.idle_s
        for key, live in list(self._live.items()):
            lock = self.lock(key)
            if live.last_used < cutoff and not lock.locked():
                logger.info("%s: session %r idled out", self.engine, key)
                async with lock:
                    await self._pause(key, IDLED_OUT)

    async def aclose(self) -> None:
        """End every interpreter and remove every saved one."""
        for key in list(self._live):
            await self.drop(key, None)
        self._lost.clear()
        for image in self._images.values():
            await asyncio.to_thread(remove_tree, image.folder)
        self._images.clear()

    async def _reclaim(self, keys: list[str]) -> bool:
        """End the least recently used idle interpreter among `keys`; False if all are busy."""
        idle = [
            k
            for k in keys
            if k in self._live and not (k in self._locks and self._locks[k].locked())
        ]
        if not idle:
            return False
        victim = min(idle, key=lambda k: self._live[k].last_used)
        logger.info("%s: reclaiming the idle interpreter of session %r", self.engine, victim)
        async with self.lock(victim):  # free: acquired at once
            await self._pause(victim, RECLAIMED)
        return True


def stopped_by(limit: str) -> str:
    """The note of an interpreter ended because a limit (`RunResult.limit`) stopped its run."""
    return f"the previous run was stopped by {limit}"


def lost_line(note: str) -> str:
    """The stderr line of a run whose session's interpreter was lost since its last run."""
    return f"sandgate: this session's interpreter was restarted ({note}); its globals are gone\n"
