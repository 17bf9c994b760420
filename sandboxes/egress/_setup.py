"""`sandgate setup egress`: mitmproxy's own venv (it pins cryptography and h11 versions the
server's venv cannot share), made once and checked on every call."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ._errors import EgressUnavailable
from ._proxy import egress_venv
from ._values import MITMPROXY_REQUIREMENT


def _installed(venv: Path) -> str | None:
    """The mitmproxy version in `venv`, or None."""
    python = venv / "bin" / "python"
    if not python.exists() or not (venv / "bin" / "mitmdump").exists():
        return None
    done = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('mitmproxy'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def prepare_egress(progress: Callable[[str], None], venv: Path | None = None) -> str:
    """Make (or check) the egress venv with `MITMPROXY_REQUIREMENT`; returns what is ready.

    Raises:
        EgressUnavailable: The venv could not be made; the message says why.
    """
    venv = venv or egress_venv()
    wanted = MITMPROXY_REQUIREMENT.partition("==")[2]
    if _installed(venv) == wanted:
        return f"egress: mitmproxy {wanted} ready in {venv}"
    python = sys.executable  # the server's Python (mitmproxy 11 runs on 3.10 and later)
    if not (venv / "bin" / "python").exists():
        progress(f"egress: creating {venv} (with {python})")
        venv.parent.mkdir(parents=True, exist_ok=True)
        _run([python, "-m", "venv", str(venv)], "create the egress venv")
    progress(f"egress: installing {MITMPROXY_REQUIREMENT} into {venv} (about a minute)")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "--upgrade", "pip"], "upgrade pip in the egress venv")
    _run([*pip, MITMPROXY_REQUIREMENT], f"install {MITMPROXY_REQUIREMENT}")
    if _installed(venv) != wanted:
        raise EgressUnavailable(
            f"egress: {venv} still lacks {MITMPROXY_REQUIREMENT} after installing; remove the "
            "folder and run `sandgate setup egress` again"
        )
    return f"egress: mitmproxy {wanted} ready in {venv}"


def _run(argv: list[str], what: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise EgressUnavailable(
            f"egress: could not {what} (exit {done.returncode}): {done.stderr.strip()[-800:]}"
        )
