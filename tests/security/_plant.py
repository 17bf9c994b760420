"""What each attack case plants on the host before it runs, and how the host checks it after.

Every check here reads the host, never the guest's word: a secret in the server's
environment and in a file outside every workspace, a read-only file whose hash and metadata
must not change, loopback listeners (TCP, UDP, and raw ICMP as root) that must receive
nothing, and sentinels of the server's own environment (its site-packages, `~/.bashrc`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import site
import socket
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

SECRET_ENV = "SANDGATE_SECURITY_SECRET"
"""The server-process variable every case plants (its value changes per case)."""
SESSION_SECRET_ENV = "SANDGATE_SECURITY_SESSION_SECRET"
"""Planted once, before any engine of the suite starts (so every child could inherit it)."""
MAX_SCANNED_FILE_BYTES = 8 * 1024 * 1024
MAX_SCANNED_FILES = 2000
MIN_FREE_DISK_BYTES = 512 * 1024 * 1024
PID_HEADROOM = 0.9


def token(kind: str) -> str:
    """An unguessable marker such as `sgsec-file-1f2e…`."""
    return f"sgsec-{kind}-{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class FileState:
    """What must not change about a host file: content hash, owner, mode, size, mtime."""

    sha256: str
    uid: int
    gid: int
    mode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileState:
        st = path.lstat()
        return cls(
            hashlib.sha256(path.read_bytes()).hexdigest(),
            st.st_uid,
            st.st_gid,
            st.st_mode,
            st.st_size,
            st.st_mtime_ns,
        )


def server_site_fingerprint() -> dict[str, tuple[tuple[str, ...], int]]:
    """Each site-packages folder of the server: its entries and its mtime (any install shows)."""
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    found: dict[str, tuple[tuple[str, ...], int]] = {}
    for folder in folders:
        with contextlib.suppress(OSError):
            found[folder] = (tuple(sorted(os.listdir(folder))), os.stat(folder).st_mtime_ns)
    return found


def bashrc_state() -> str | None:
    """The sha256 of the server user's `~/.bashrc` (None when it has none)."""
    path = Path.home() / ".bashrc"
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


@dataclass
class Listeners:
    """Loopback listeners a sandbox must never reach; `touched()` says what reached them."""

    tcp: socket.socket
    udp: socket.socket
    icmp: socket.socket | None

    @classmethod
    def open(cls) -> Listeners:
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind(("127.0.0.1", 0))
        tcp.listen(16)
        tcp.setblocking(False)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        icmp: socket.socket | None = None
        if os.geteuid() == 0:  # a raw socket sees every ICMP packet that reaches this host
            icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            icmp.setblocking(False)
        return cls(tcp, udp, icmp)

    @property
    def tcp_port(self) -> int:
        return int(self.tcp.getsockname()[1])

    @property
    def udp_port(self) -> int:
        return int(self.udp.getsockname()[1])

    def touched(self, marker: str) -> list[str]:
        """What reached the listeners: TCP connections, UDP datagrams, ICMP with `marker`."""
        seen: list[str] = []
        with contextlib.suppress(BlockingIOError):
            while True:
                conn, peer = self.tcp.accept()
                conn.close()
                seen.append(f"a TCP connection from {peer}")
        with contextlib.suppress(BlockingIOError):
            while True:
                data, peer = self.udp.recvfrom(65536)
                seen.append(f"a UDP datagram from {peer}: {data[:60]!r}")
        if self.icmp is not None:
            with contextlib.suppress(BlockingIOError):
                while True:
                    packet = self.icmp.recv(65536)
                    if marker.encode() in packet:
                        seen.append(f"an ICMP packet carrying the case marker: {packet[:60]!r}")
        return seen

    def close(self) -> None:
        for sock in (self.tcp, self.udp, self.icmp):
            if sock is not None:
                sock.close()


@dataclass
class Plant:
    """Everything one case planted on the host, with the states it must keep."""

    env_secret: str
    session_secret: str
    file_secret: str
    marker: str
    secret_path: Path
    readonly_path: Path
    listeners: Listeners
    files: dict[Path, FileState] = field(default_factory=dict)
    site_fingerprint: dict[str, tuple[tuple[str, ...], int]] = field(default_factory=dict)
    bashrc: str | None = None

    @classmethod
    def make(cls, folder: Path, *, env_secret: str, session_secret: str) -> Plant:
        folder.mkdir(parents=True, exist_ok=True)
        file_secret = token("file")
        secret_path = folder / "host-secret.txt"
        secret_path.write_text(file_secret + "\n")
        secret_path.chmod(0o600)
        readonly_path = folder / "host-readonly.txt"
        readonly_path.write_text("read-only " + token("ro") + "\n")
        readonly_path.chmod(0o444)
        plant = cls(
            env_secret=env_secret,
            session_secret=session_secret,
            file_secret=file_secret,
            marker=token("marker")[:40],
            secret_path=secret_path,
            readonly_path=readonly_path,
            listeners=Listeners.open(),
        )
        plant.files = {p: FileState.of(p) for p in (secret_path, readonly_path)}
        plant.site_fingerprint = server_site_fingerprint()
        plant.bashrc = bashrc_state()
        return plant

    def watch(self, path: Path) -> None:
        """Add a host file whose state must not change."""
        self.files[path] = FileState.of(path)

    @property
    def secrets(self) -> tuple[str, ...]:
        return (self.env_secret, self.session_secret, self.file_secret)

    def planted_inodes(self) -> set[tuple[int, int]]:
        """The (device, inode) of the planted host files: links to them are the plant itself."""
        return {(s.st_dev, s.st_ino) for s in (p.lstat() for p in self.files)}

    def changed_files(self) -> list[str]:
        problems = []
        for path, before in self.files.items():
            try:
                now = FileState.of(path)
            except OSError as exc:
                problems.append(f"{path} is gone or unreadable: {exc}")
                continue
            if now != before:
                problems.append(f"{path} changed: {before} -> {now}")
        return problems

    def changed_server(self) -> list[str]:
        problems = []
        if server_site_fingerprint() != self.site_fingerprint:
            problems.append("the server's site-packages changed")
        if bashrc_state() != self.bashrc:
            problems.append("the server user's ~/.bashrc changed")
        return problems

    def close(self) -> None:
        self.listeners.close()


def leaked(haystack: str, needles: tuple[str, ...]) -> list[str]:
    """The needles found in `haystack`, as they are or hex-encoded."""
    found = []
    for needle in needles:
        if needle in haystack or needle.encode().hex() in haystack:
            found.append(needle)
    return found


def workspace_text(
    folders: tuple[Path, ...], *, skip: set[tuple[int, int]]
) -> tuple[str, int, list[str]]:
    """The regular files under `folders` as one text (links never followed, planted inodes
    skipped), their total size in bytes, and the paths that are setuid/setgid root files."""
    parts: list[str] = []
    total = 0
    scanned = 0
    setuid_root: list[str] = []
    for folder in folders:
        for root, dirs, names in os.walk(folder):
            for name in [*names, *dirs]:
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if st.st_mode & (stat.S_ISUID | stat.S_ISGID) and st.st_uid == 0:
                    setuid_root.append(path)
                if not stat.S_ISREG(st.st_mode):
                    continue
                total += st.st_size
                if (st.st_dev, st.st_ino) in skip or scanned >= MAX_SCANNED_FILES:
                    continue
                scanned += 1
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    data = os.read(fd, MAX_SCANNED_FILE_BYTES)
                finally:
                    os.close(fd)
                parts.append(data.decode("latin-1"))
    return "\n".join(parts), total, setuid_root


def host_room(folder: Path) -> list[str]:
    """Problems with what the host has left: free PIDs, a working fork, free disk."""
    problems = []
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    pids = sum(1 for name in os.listdir("/proc") if name.isdigit())
    if pids > pid_max * PID_HEADROOM:
        problems.append(f"the host has {pids} processes of at most {pid_max}")
    if subprocess.run(["true"], check=False, timeout=10).returncode != 0:
        problems.append("the host cannot start a process")
    vfs = os.statvfs(folder)
    free = vfs.f_bavail * vfs.f_frsize
    if free < MIN_FREE_DISK_BYTES:
        problems.append(f"the host has {free} bytes of disk left")
    if vfs.f_files and vfs.f_favail < vfs.f_files * 0.05:
        problems.append(f"the host has {vfs.f_favail} inodes left")
    return problems


def mount_points_under(folders: tuple[Path, ...]) -> list[str]:
    """Mount points of the host's mount namespace that lie under `folders`."""
    found = []
    prefixes = tuple(str(f.resolve()) for f in folders)
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4]
            if point.startswith(prefixes):
                found.append(point)
    return found


@contextlib.contextmanager
def restored(path: Path) -> Iterator[None]:
    """Put a host setting file back as it was if a case managed to change it."""
    try:
        before = path.read_text()
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if path.read_text() != before:
                path.write_text(before)
