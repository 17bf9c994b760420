"""Fail closed: a Pyodide engine whose required OS layers are missing on this host refuses to
start; one told explicitly which layers it may run without starts and runs.

"This host lacks the layer" is made real, not mocked: PATH is an empty folder, so the probe
finds no util-linux `unshare` or `setpriv` (as on a host without util-linux).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sandboxes import LayersMissing, WorkspacePaths, layer_names
from sandboxes.pyodide import PyodideEngine

from .conftest import deno_children, make_plan

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide]

LACKING = ("net_namespace", "no_new_privs")


@pytest.fixture
def no_util_linux(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path_factory.mktemp("empty-path")))


async def test_an_engine_requiring_a_layer_this_host_lacks_refuses_to_start(
    assets_dir: Path, no_util_linux: None
) -> None:
    before = {p.pid for p in deno_children()}
    engine = PyodideEngine(assets_dir=assets_dir, pool_size=1)
    try:
        with pytest.raises(LayersMissing) as caught:
            await engine.start()
        assert (caught.value.engine, caught.value.missing) == ("pyodide", LACKING)
        assert engine.ready is False and engine.jail is None
        assert {p.pid for p in deno_children()} == before  # no Deno was started
    finally:
        await engine.aclose()


async def test_an_engine_told_it_may_run_without_them_starts_and_runs(
    assets_dir: Path, no_util_linux: None, workspace: WorkspacePaths
) -> None:
    accepted = [name for name in layer_names("pyodide") if name not in LACKING]
    async with PyodideEngine(assets_dir=assets_dir, pool_size=1, require=accepted) as engine:
        result = await engine.run(make_plan(workspace, "6 * 7", session="lax"))
        assert (result.status, result.value) == ("ok", "42")
        assert engine.jail is not None
        assert (engine.jail.net_namespace, engine.jail.no_new_privs) == (False, False)
