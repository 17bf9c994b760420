"""Writing outside the workspace and persisting: host files, `~/.bashrc`, the import path,
the planted read-only file, and file arguments from a hostile client. The host files must be
unchanged afterwards and the next session must not run anything the attack left behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ._arena import Arena

pytestmark = [pytest.mark.anyio, pytest.mark.security, pytest.mark.slow]

WRITE_OUTSIDE = """
import os
home = os.path.expanduser("~")
targets = [SECRET_PATH, RO_PATH, home + "/.bashrc", "/root/.bashrc", "/root/.profile",
           "/etc/profile.d/sg-" + MARKER + ".sh", "/etc/sg-" + MARKER,
           SECRET_DIR + "/sg-new-" + MARKER, "/proc/1/root" + SECRET_DIR + "/sg-proc-" + MARKER,
           "/workspace/" + "../" * 16 + SECRET_DIR.lstrip("/") + "/sg-up-" + MARKER]
for path in targets:
    attempt("append " + path, lambda p=path: open(p, "a").write("echo pwned\\n"))
attempt("chmod readonly", lambda: os.chmod(RO_PATH, 0o666))
attempt("unlink secret", lambda: os.unlink(SECRET_PATH))
attempt("rename readonly", lambda: os.rename(RO_PATH, RO_PATH + ".moved"))
report()
"""

WRITE_READONLY = """
import os
attempt("open w", lambda: open(RO_PATH, "w").write("pwned"))
attempt("open r+", lambda: open(RO_PATH, "r+").write("pwned"))
attempt("chmod", lambda: os.chmod(RO_PATH, 0o666))
attempt("utime", lambda: os.utime(RO_PATH, (0, 0)))
attempt("truncate", lambda: os.truncate(RO_PATH, 0))
attempt("site write", lambda: open("/site/sg_planted.py", "w").write("PLANTED = 'pwned'"))
attempt("site chmod", lambda: os.chmod("/site/sg_planted.py", 0o666))
attempt("site unlink", lambda: os.unlink("/site/sg_planted.py"))
attempt("site new", lambda: open("/site/sg_new.py", "w").write("pwned"))
report()
"""

PERSIST = """
import os, sys, site
payload = ("import os\\nprint('PERSISTED-' + %r)\\n"
           "open(os.path.join(os.getcwd(), 'persisted.txt'), 'w').write('x')\\n") % MARKER
folders = {p for p in sys.path if p} | {"/site", "/usr/local/lib", os.path.expanduser("~")}
for name in ("getsitepackages", "getusersitepackages"):
    try:
        found = getattr(site, name)()
        folders |= set([found] if isinstance(found, str) else found)
    except Exception:
        pass
for folder in sorted(folders):
    if os.path.realpath(folder) == os.path.realpath(os.getcwd()):
        continue  # the session's own workspace: writing there is allowed
    for name in ("sitecustomize.py", "usercustomize.py", "sg_planted.py"):
        attempt(name + " in " + folder,
                lambda f=folder, n=name: open(os.path.join(f, n), "w").write(payload))
    attempt("pth in " + folder, lambda f=folder: open(os.path.join(f, "zz-sg.pth"), "w").write(
        "import os; print('PERSISTED-' + %r)\\n" % MARKER))
report()
"""

GUEST_LINKS_FOR_THE_HOST = """
import os
attempt("link out.txt", lambda: os.symlink(RO_PATH, "out.txt"))
attempt("link dir", lambda: os.symlink(SECRET_DIR, "d"))
report()
"""

NEXT_SESSION = """
import sg_planted
print(sg_planted.PLANTED)
"""


async def test_writes_outside_the_workspace(arena: Arena) -> None:
    outcome = await arena.attack(WRITE_OUTSIDE)
    marker, folder = arena.plant.marker, arena.plant.secret_path.parent
    made = [
        Path(f"/etc/profile.d/sg-{marker}.sh"),
        Path(f"/etc/sg-{marker}"),
        folder / f"sg-new-{marker}",
        folder / f"sg-proc-{marker}",
        folder / f"sg-up-{marker}",
    ]
    assert [p for p in made if os.path.lexists(p)] == []
    await arena.verify(outcome, statuses={"ok"})


async def test_writes_to_the_planted_read_only_files(arena: Arena) -> None:
    outcome = await arena.attack(WRITE_READONLY)
    assert not (arena.workspace().site / "sg_new.py").exists()
    await arena.verify(outcome, statuses={"ok"})


async def test_persistence_on_the_import_path(arena: Arena) -> None:
    outcome = await arena.attack(PERSIST)
    site = arena.workspace().site
    assert sorted(os.listdir(site)) == ["sg_planted.py"]
    nxt = arena.new_session()
    (arena.workspace(nxt).site / "sg_planted.py").write_text("PLANTED = 'next session'\n")
    later = await arena.call(NEXT_SESSION, session=nxt)
    assert later.status == "ok", later.text
    assert later.stdout == "next session\n"
    assert not (arena.workspace(nxt).files / "persisted.txt").exists()
    persisted = f"PERSISTED-{arena.plant.marker}"
    await arena.verify(outcome, statuses={"ok"}, also=[later], needles=(persisted,))


async def test_file_arguments_through_a_planted_hard_link(arena: Arena) -> None:
    """A `files` argument naming a workspace file that is a hard link to a host file."""
    os.link(arena.plant.readonly_path, arena.workspace().files / "h-ro.txt")
    outcome = await arena.call("print('ran')", files={"h-ro.txt": "pwned by the client"})
    await arena.verify(outcome, statuses={"ok"})


async def test_file_arguments_through_links_the_guest_made(arena: Arena) -> None:
    """The guest leaves links to host paths; the client then names them in `files`."""
    first = await arena.attack(GUEST_LINKS_FOR_THE_HOST)
    files = arena.workspace().files
    for name, link in (("out.txt", "out.txt"), ("d/new.txt", "d")):
        made = (files / link).is_symlink()  # wasm and Pyodide guests cannot leave one
        answer = await arena.call("print('ran')", files={name: "pwned by the client"})
        if made:
            assert answer.status != "ok" and "ran" not in answer.stdout, (name, answer.text)
    assert not (arena.plant.secret_path.parent / "new.txt").exists()
    await arena.verify(first, statuses={"ok"})


async def test_file_arguments_from_a_hostile_client(arena: Arena) -> None:
    """`files` names outside the workspace are refused before anything runs."""
    plant = arena.plant
    names = [
        f"../../../../../../../../..{plant.readonly_path}",
        str(plant.readonly_path),
        "~/.bashrc",
        "a/../../escape.txt",
        "a\\..\\..\\escape.txt",
    ]
    for name in names:
        refused = await arena.call("print('ran')", files={name: "pwned"})
        assert refused.status != "ok" and "ran" not in refused.stdout, (name, refused.text)
    escaped = list(arena.target.state_dir.rglob("escape.txt"))
    assert escaped == []
    outcome = await arena.call("print('ran')", files={"inside/ok.txt": "fine"})
    await arena.verify(outcome, statuses={"ok"})
