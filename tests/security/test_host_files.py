"""Reading host files: absolute paths, `..`, links made by the guest or planted by the host,
and `/proc`. The planted secrets must never come back, in the reply or in any workspace file."""

from __future__ import annotations

import os

import pytest

from ._arena import Arena

pytestmark = [pytest.mark.anyio, pytest.mark.security, pytest.mark.slow]

READ_ABSOLUTE = """
import os
attempt("!secret", read, SECRET_PATH)
attempt("!listdir secret dir", os.listdir, SECRET_DIR)
attempt("!readonly", read, RO_PATH)
for path in ("/etc/shadow", "/root/.bashrc", "/root/.ssh/id_rsa", "/etc/hostname"):
    attempt(path, read, path)
attempt("root listing", lambda: sorted(os.listdir("/")))
attempt("!proc 1 root", read, "/proc/1/root" + SECRET_PATH)
attempt("!proc self root", read, "/proc/self/root" + SECRET_PATH)
report()
"""

READ_DOTDOT = """
import os
up = "../" * 16 + SECRET_PATH.lstrip("/")
attempt("!relative", read, up)
attempt("!from workspace", read, "/workspace/" + up)
attempt("!from site", read, "/site/" + up)
attempt("parent", os.listdir, "..")
attempt("grandparent", os.listdir, "../..")
here = os.getcwd()
def climb():
    for _ in range(16):
        os.chdir("..")
    return read(SECRET_PATH.lstrip("/"))
attempt("!chdir climb", climb)
os.chdir(here)
report()
"""

GUEST_SYMLINKS = """
import os
links = {"s-secret": SECRET_PATH, "s-dir": SECRET_DIR, "s-root": "/", "s-up": "../" * 16,
         "leak.png": SECRET_PATH, "s-proc": "/proc/1/root", "s-ro": RO_PATH}
for name, target in links.items():
    attempt("link " + name, lambda t=target, n=name: os.symlink(t, n))
attempt("!read s-secret", read, "s-secret")
attempt("!read leak.png", read, "leak.png")
attempt("!read via dir", read, "s-dir/" + os.path.basename(SECRET_PATH))
attempt("!read via root", read, "s-root" + SECRET_PATH)
attempt("!read via up", read, "s-up" + SECRET_PATH.lstrip("/"))
attempt("!read via proc", read, "s-proc" + SECRET_PATH)
attempt("write s-ro", lambda: open("s-ro", "w").write("pwned"))
attempt("tmp link", lambda: (os.symlink(SECRET_PATH, "/tmp/sg-link"), read("/tmp/sg-link")))
report()
"""

GUEST_HARDLINKS = """
import os
links = {"h-secret": SECRET_PATH, "h-ro": RO_PATH, "h-passwd": "/etc/passwd",
         "h-proc": "/proc/1/root" + SECRET_PATH}
for name, target in links.items():
    attempt("link " + name, lambda t=target, n=name: os.link(t, n))
attempt("!read h-secret", read, "h-secret")
attempt("!read h-proc", read, "h-proc")
attempt("write h-ro", lambda: open("h-ro", "w").write("pwned"))
report()
"""

PLANTED_LINKS = """
import os
inside = "p-dir/" + os.path.basename(SECRET_PATH)
for name in ("p-secret", "p-leak.png", "p-ro", "/site/p-site", inside):
    attempt("!read " + name, read, name)
attempt("!list p-dir", os.listdir, "p-dir")
attempt("write p-ro", lambda: open("p-ro", "w").write("pwned"))
attempt("append p-secret", lambda: open("p-secret", "a").write("pwned"))
attempt("copy p-secret", lambda: open("copy.txt", "wb").write(read("p-secret")))
report()
"""

PLANTED_HARDLINKS = """
import os
for name in ("h-secret.txt", "/site/h-secret.txt", "deep/h-secret.txt"):
    attempt("!read " + name, read, name)
attempt("copy", lambda: open("copy.txt", "wb").write(read("h-secret.txt")))
attempt("chmod h-ro.txt", os.chmod, "h-ro.txt", 0o666)
attempt("write h-ro.txt", lambda: open("h-ro.txt", "w").write("pwned"))
report()
"""

PROC = """
import os
for path in ("/proc/self/environ", "/proc/self/cmdline", "/proc/self/mountinfo",
             "/proc/1/environ", "/proc/1/cmdline", "/proc/self/root" + SECRET_PATH,
             "/proc/1/root" + SECRET_PATH, "/proc/self/cwd/" + "../" * 16 + SECRET_PATH):
    attempt(path, read, path)
def every_environ():
    found = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                found[pid] = read("/proc/%s/environ" % pid)
            except OSError as exc:
                found[pid] = type(exc).__name__
    return found
attempt("every environ", every_environ)
def fds():
    return {fd: os.readlink("/proc/self/fd/" + fd) for fd in os.listdir("/proc/self/fd")}
attempt("fds", fds)
attempt("parent environ", lambda: read("/proc/%d/environ" % os.getppid()))
report()
"""


async def test_read_absolute_paths(arena: Arena) -> None:
    outcome = await arena.attack(READ_ABSOLUTE)
    await arena.verify(outcome, statuses={"ok"})


async def test_read_through_dotdot(arena: Arena) -> None:
    outcome = await arena.attack(READ_DOTDOT)
    await arena.verify(outcome, statuses={"ok"})


async def test_symlinks_made_by_the_guest(arena: Arena) -> None:
    outcome = await arena.attack(GUEST_SYMLINKS)
    await arena.verify(outcome, statuses={"ok"})


async def test_hard_links_made_by_the_guest(arena: Arena) -> None:
    outcome = await arena.attack(GUEST_HARDLINKS)
    await arena.verify(outcome, statuses={"ok"})


async def test_symlinks_planted_in_the_workspace(arena: Arena) -> None:
    paths, plant = arena.workspace(), arena.plant
    os.symlink(plant.secret_path, paths.files / "p-secret")
    os.symlink(plant.secret_path, paths.files / "p-leak.png")
    os.symlink(plant.readonly_path, paths.files / "p-ro")
    os.symlink(plant.secret_path.parent, paths.files / "p-dir")
    os.symlink(plant.secret_path, paths.site / "p-site")
    outcome = await arena.attack(PLANTED_LINKS)
    await arena.verify(outcome, statuses={"ok"})


async def test_hard_links_planted_in_the_workspace(arena: Arena) -> None:
    paths, plant = arena.workspace(), arena.plant
    (paths.files / "deep").mkdir()
    os.link(plant.secret_path, paths.files / "h-secret.txt")
    os.link(plant.secret_path, paths.files / "deep" / "h-secret.txt")
    os.link(plant.secret_path, paths.site / "h-secret.txt")
    os.link(plant.readonly_path, paths.files / "h-ro.txt")
    outcome = await arena.attack(PLANTED_HARDLINKS)
    await arena.verify(outcome, statuses={"ok"})


async def test_proc_files(arena: Arena) -> None:
    outcome = await arena.attack(PROC)
    await arena.verify(outcome, statuses={"ok"})
