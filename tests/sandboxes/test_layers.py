"""The boundary-layer model: every engine names its layers, probes them here, and refuses to
start without a required one (fail closed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxes import (
    CATALOG,
    ENGINE_LAYERS,
    EngineUnavailable,
    LayersMissing,
    LayerState,
    layer_names,
)
from sandboxes._layers import PYODIDE_LAYERS, in_force, refuse_missing, required_layers
from sandboxes.container import ContainerEngine
from sandboxes.pyodide import PyodideEngine
from sandboxes.pyodide._jail import probe
from tests.conftest import IN_CI


def test_every_engine_of_the_catalog_names_its_layers() -> None:
    assert set(ENGINE_LAYERS) == set(CATALOG)
    for key, layers in ENGINE_LAYERS.items():
        names = layer_names(key)
        assert len(set(names)) == len(names) == len(layers) > 0, key
        assert all(layer.what and layer.in_force_when for layer in layers), key


@pytest.mark.parametrize("key", ["wasm", "pyodide"])
def test_a_probe_answers_for_every_declared_layer_in_order(key: str) -> None:
    states = CATALOG[key].layers()
    assert all(isinstance(s, LayerState) for s in states)
    assert tuple(s.name for s in states) == layer_names(key)
    assert all(s.why for s in states)


@pytest.mark.parametrize("key", ["container:runc", "container:runsc"])
def test_the_container_probe_asks_the_daemon(key: str) -> None:
    try:
        states = CATALOG[key].layers()
    except EngineUnavailable as exc:
        if IN_CI:
            raise
        pytest.skip(f"no Docker daemon: {exc}")
    assert tuple(s.name for s in states) == layer_names(key)
    # scripts/docker-setup.sh registers both runtimes, and CI runs it.
    assert {s.name: s.in_force for s in states}["oci_runtime"] is True


def test_wasm_layers_are_in_process_and_always_in_force() -> None:
    assert all(s.in_force for s in CATALOG["wasm"].layers())


def test_without_unshare_and_setpriv_on_path_those_layers_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no util-linux tools
    states = {s.name: s for s in probe().layers()}
    assert (states["net_namespace"].in_force, states["no_new_privs"].in_force) == (False, False)
    assert "unshare" in states["net_namespace"].why
    assert "setpriv" in states["no_new_privs"].why


def test_a_jail_without_js_hardening_reports_the_realm_missing() -> None:
    states = {s.name: s.in_force for s in probe().layers(harden_js=False)}
    assert states["js_realm"] is False


def test_the_default_requirement_is_every_layer() -> None:
    assert required_layers("pyodide", None) == frozenset(layer_names("pyodide"))
    assert required_layers("pyodide", ["net_namespace"]) == frozenset({"net_namespace"})


def test_an_unknown_layer_name_is_refused_with_the_expected_names() -> None:
    with pytest.raises(ValueError, match="require") as caught:
        required_layers("pyodide", ["net_namespace", "seccomp"])
    assert "'seccomp'" in str(caught.value)
    assert all(name in str(caught.value) for name in layer_names("pyodide"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: PyodideEngine(require=["no_such_layer"]),
        lambda: ContainerEngine(runtime="runsc", require=["no_such_layer"]),
    ],
)
def test_engines_validate_their_requirement_when_made(make: object) -> None:
    assert callable(make)
    with pytest.raises(ValueError, match="no_such_layer"):
        make()


def _states(missing: set[str]) -> tuple[LayerState, ...]:
    return tuple(LayerState(layer, layer.name not in missing, "test") for layer in PYODIDE_LAYERS)


def test_a_missing_required_layer_refuses_naming_it() -> None:
    with pytest.raises(LayersMissing) as caught:
        refuse_missing(
            "pyodide", _states({"net_namespace", "pids_cgroup"}), frozenset(layer_names("pyodide"))
        )
    assert isinstance(caught.value, EngineUnavailable)
    assert (caught.value.engine, caught.value.missing) == (
        "pyodide",
        ("net_namespace", "pids_cgroup"),
    )


def test_a_missing_layer_the_caller_does_not_require_is_accepted() -> None:
    accepted = frozenset(layer_names("pyodide")) - {"net_namespace"}
    refuse_missing("pyodide", _states({"net_namespace"}), accepted)


def test_in_force_states_say_how_it_is_known() -> None:
    states = in_force(PYODIDE_LAYERS[:2], "checked")
    assert [(s.in_force, s.why) for s in states] == [(True, "checked"), (True, "checked")]


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroup v1 folders need root")
def test_as_root_on_this_machine_kind_every_pyodide_layer_is_in_force() -> None:
    """CI and the developers' machines run as root with util-linux and cgroup v1."""
    missing = [s.name for s in probe().layers() if not s.in_force]
    assert missing == []
