"""The pages of a fresh guest's memory that every call writes, made writable before the call.

A guest opened from an image (`_imaged`) starts with its memory copy-on-write: the derived
module's memory image is mapped from its file, or the image's pages were written in. The first
write to each other page then costs a page fault inside the call's turn: ~185 pages for
`out = 'hello'` (the harness running the program, its report, the door), ~0.3 ms of a ~1.1 ms
turn on a 2-core machine. The kernel makes those pages writable for much less in one go
(`madvise(MADV_POPULATE_WRITE)`, Linux 5.14), and a guest opened ahead of its call
(`_imaged.AheadGuest`) has it done before the call arrives.

Which pages: those a calibration turn writes (`learn`), run by the worker itself in a guest of
the same image and module that serves no call: a fixed program (`pass`) through the same
harness call every call makes. No tenant's call decides which pages another tenant's guest has
populated. Populating changes no byte of the guest's memory: a page is copied as it was.
"""

from __future__ import annotations

import array
import contextlib
import ctypes
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MADV_POPULATE_WRITE = 23
"""Linux 5.14: fault the range in writable (copy-on-write pages copied), as writes would."""
MAX_PAGES = 1024
"""At most this many pages (4 MiB) are populated per guest."""
PAGEMAP = "/proc/self/pagemap"
_PRESENT = 1 << 63
_FILE_OR_SHARED = 1 << 61

Runs = tuple[tuple[int, int], ...]
"""Page runs, (first page, pages), as offsets from the start of the guest's memory."""


def _madvise() -> Callable[[int, int, int], int] | None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        advise = libc.madvise
        advise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        advise.restype = ctypes.c_int
        return advise
    return None


_ADVISE = _madvise()


def written_pages(address: int, size: int) -> set[int] | None:
    """The pages of the memory at `address` (`size` bytes) this process has written since they
    were mapped (present and private: copied from their file, or zero-filled), as offsets; None
    where `/proc/self/pagemap` cannot be read."""
    first, count = address // PAGE, size // PAGE
    try:
        with open(PAGEMAP, "rb") as pagemap:
            pagemap.seek(first * 8)
            entries = array.array("Q")
            entries.frombytes(pagemap.read(count * 8))
    except (OSError, ValueError):
        return None
    return {i for i, e in enumerate(entries) if e & _PRESENT and not e & _FILE_OR_SHARED}


def runs_of(pages: Iterable[int], limit: int = MAX_PAGES) -> Runs:
    """`pages` (the lowest `limit` of them) as runs of consecutive pages."""
    found: list[list[int]] = []
    for page in sorted(pages)[:limit]:
        if found and found[-1][0] + found[-1][1] == page:
            found[-1][1] += 1
        else:
            found.append([page, 1])
    return tuple((first, count) for first, count in found)


@dataclass(frozen=True, slots=True)
class HotPages:
    """The pages a calibration turn wrote in a guest whose memory was `size` bytes when it
    opened (a guest of another size is not populated)."""

    runs: Runs
    size: int

    @property
    def pages(self) -> int:
        return sum(count for _, count in self.runs)

    @classmethod
    def learn(cls, before: set[int], after: set[int], size: int) -> HotPages:
        """The pages written between `before` and `after`, within the first `size` bytes."""
        within = size // PAGE
        return cls(runs_of(p for p in after - before if p < within), size)

    def populate(self, address: int, size: int) -> bool:
        """Make these pages of the memory at `address` writable now; False when the kernel
        refuses (before Linux 5.14) or the memory is not the size they were learned on."""
        if _ADVISE is None or size != self.size or not self.runs:
            return False
        for first, count in self.runs:
            if _ADVISE(address + first * PAGE, count * PAGE, MADV_POPULATE_WRITE) != 0:
                return False
        return True
