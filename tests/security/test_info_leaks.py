"""Information leaks: the server's environment, another session's workspace, and who the host
is (its users, machine id and name). The host compares what came back with its own values."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ._arena import Arena
from ._plant import token

pytestmark = [pytest.mark.anyio, pytest.mark.security, pytest.mark.slow]

GENERIC_HOSTNAMES = {"localhost", "sandbox", "vm", "host", "ubuntu", "debian", "runner"}

SERVER_ENV = """
import os
attempt("environ", lambda: dict(os.environ))
attempt("getenv", lambda: os.environ.get(SECRET_ENV))
attempt("self environ", read, "/proc/self/environ")
attempt("pid 1 environ", read, "/proc/1/environ")
attempt("parent environ", lambda: read("/proc/%d/environ" % os.getppid()))
report()
"""

WRITE_MARKER = """
open("marker-a.txt", "w").write(MARKER_A)
try:
    open("/tmp/marker-a.txt", "w").write(MARKER_A)
except OSError:
    pass  # a guest without /tmp (wasm)
print("written")
"""

FIND_MARKER = """
import os
def search(top, limit=20000):
    hits, seen = [], 0
    for root, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev")]
        for name in files:
            seen += 1
            if seen > limit:
                return hits
            if "marker" in name:
                path = os.path.join(root, name)
                try:
                    hits.append((path, read(path, 200)))
                except OSError as exc:
                    hits.append((path, type(exc).__name__))
    return hits
attempt("walk /", search, "/")
attempt("parent", lambda: os.listdir(".."))
attempt("tmp", lambda: os.listdir("/tmp"))
attempt("tmp marker", read, "/tmp/marker-a.txt")
report()
"""

HOST_IDENTITY = """
import os, socket
attempt("hostname", socket.gethostname)
attempt("uname", lambda: tuple(os.uname()))
for path in ("/etc/passwd", "/etc/group", "/etc/hostname", "/etc/machine-id",
             "/var/lib/dbus/machine-id", "/etc/hosts", "/proc/sys/kernel/hostname"):
    attempt(path, read, path)
def users():
    import pwd
    return [(u.pw_name, u.pw_uid, u.pw_dir) for u in pwd.getpwall()]
attempt("pwd", users)
report()
"""


def host_identity() -> tuple[str, ...]:
    """What identifies this host and must not come back: its users' passwd lines (those a
    stock image does not have), its machine id, its name when distinctive, its whole passwd."""
    found: list[str] = []
    passwd = Path("/etc/passwd").read_text()
    found.append(passwd)
    for line in passwd.splitlines():
        fields = line.split(":")
        if len(fields) > 5 and fields[2].isdigit() and 1000 <= int(fields[2]) < 65534:
            found.append(line)
            found.append(f"{fields[0]}:x:{fields[2]}:")
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if len(text) >= 16:
            found.append(text)
    name = socket.gethostname()
    if len(name) >= 6 and name.lower() not in GENERIC_HOSTNAMES:
        found.append(name)
    return tuple(dict.fromkeys(found))


async def test_server_environment(arena: Arena) -> None:
    outcome = await arena.attack(SERVER_ENV)
    await arena.verify(outcome, statuses={"ok"})


async def test_another_sessions_workspace(arena: Arena) -> None:
    marker = token("session-a")
    first = arena.new_session()
    wrote = await arena.call(f"MARKER_A = {marker!r}\n" + WRITE_MARKER, session=first)
    assert wrote.status == "ok", wrote.text
    assert (arena.workspace(first).files / "marker-a.txt").read_text() == marker
    outcome = await arena.attack(FIND_MARKER)
    await arena.verify(outcome, statuses={"ok", "timeout"}, needles=(marker,))


async def test_host_name_and_users(arena: Arena) -> None:
    outcome = await arena.attack(HOST_IDENTITY)
    await arena.verify(outcome, statuses={"ok"}, needles=host_identity())
