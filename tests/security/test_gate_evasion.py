"""Policy-gate evasion: installing packages from inside code instead of through the gated
`pip_install_package` tool (subprocess, `os.system`, pip imported, `ensurepip`, a download from
PyPI). Nothing may be installed: the session's site folder and the server's site-packages are
unchanged, and nothing reached the network. How the run ended does not matter (a Pyodide
interpreter that a `subprocess` call broke is restarted for the next call)."""

from __future__ import annotations

import os

import pytest

from ._arena import Arena

pytestmark = [pytest.mark.anyio, pytest.mark.security, pytest.mark.slow]

SUBPROCESS = """
import os, shutil, subprocess, sys
def run(command):
    done = subprocess.run(command, capture_output=True, timeout=3, stdin=subprocess.DEVNULL)
    return done.returncode, done.stdout[-200:], done.stderr[-200:]
attempt("which", lambda: [shutil.which(n) for n in ("pip", "pip3", "uv", "easy_install")])
attempt("python -m pip", run, [sys.executable, "-m", "pip", "install", "six"])
attempt("pip --target /site",
        run, [sys.executable, "-m", "pip", "install", "--target", "/site", "six"])
attempt("pip3 --user", run, ["pip3", "install", "--user", "six"])
attempt("os.system", lambda: os.system("p""ip install six >/dev/null 2>&1"))
attempt("os.popen", lambda: os.popen("P=p; $P'ip' install six 2>&1").read()[-200:])
report()
"""

IN_PROCESS = """
import importlib, runpy, sys
attempt("import pip", lambda: importlib.import_module("p" + "ip").__version__)
def pip_main():
    from pip._internal.cli.main import main
    return main(["install", "--target", "/site", "six"])
attempt("pip main", pip_main)
def pip_runpy():
    sys.argv = ["pip", "install", "six"]
    runpy.run_module("pip", run_name="__main__", alter_sys=True)
attempt("runpy pip", pip_runpy)
attempt("ensurepip", lambda: importlib.import_module("ensurepip").bootstrap(root="/site"))
attempt("ensurepip user", lambda: importlib.import_module("ensurepip").bootstrap(user=True))
attempt("micropip", lambda: importlib.import_module("micropip"))
report()
"""

DOWNLOAD = """
import urllib.request, zipfile, io
def get(url):
    return urllib.request.urlopen(url, timeout=2).read(4096)
attempt("!pypi simple", get, "https://pypi.org/simple/six/")
attempt("!pypi json", get, "https://pypi.org/pypi/six/json")
attempt("!files host", get, "https://files.pythonhosted.org/")
report()
"""

PACKAGE_NAMES = ("six", "six.py", "pip", "setuptools")


def _installed(arena: Arena) -> list[str]:
    paths = arena.workspace()
    found = [f"site/{n}" for n in os.listdir(paths.site) if n != "sg_planted.py"]
    found += [n for n in os.listdir(paths.files) if n.split("-")[0] in PACKAGE_NAMES]
    return found


async def test_pip_through_subprocesses(arena: Arena) -> None:
    outcome = await arena.attack(SUBPROCESS)
    assert _installed(arena) == []
    await arena.verify(outcome)


async def test_pip_inside_the_interpreter(arena: Arena) -> None:
    outcome = await arena.attack(IN_PROCESS)
    assert _installed(arena) == []
    await arena.verify(outcome)


async def test_download_from_pypi(arena: Arena) -> None:
    outcome = await arena.attack(DOWNLOAD)
    assert _installed(arena) == []
    await arena.verify(outcome)
