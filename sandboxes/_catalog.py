"""The one table of engines: adding an engine means one package under `sandboxes/` and one
entry here. The runner makes its engines from this table and never branches on their kind."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._engine import Engine
from ._layers import WASM_LAYERS, LayerState, in_force
from ._types import engine_key

Progress = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """What a server tells every engine it makes.

    Attributes:
        workers: Guests (or runs) one engine serves at once.
        state_dir: The server's state folder; engines keep their slots and pools beside the
            session workspaces, on their file system (a session's files move by rename).
        progress: Called with a line of text while an engine prepares.
        prepare_guests: Keep guests prepared ahead of the next call (wasm).
        embedded_guests: Run calls in fresh guests of sandgate's own embedding, opened from a
            worker's image (wasm).
        require: Per engine key, the boundary layers that engine refuses to start without
            (`sandboxes.ENGINE_LAYERS` names); an engine not listed requires all of its own.
    """

    workers: int
    state_dir: Path
    progress: Progress
    prepare_guests: bool = True
    embedded_guests: bool = True
    require: Mapping[str, frozenset[str]] | None = None

    def required(self, key: str) -> frozenset[str] | None:
        """The layers engine `key` is told to require (None: all of its own)."""
        return None if self.require is None else self.require.get(key)


@dataclass(frozen=True, slots=True)
class EngineEntry:
    """One engine the catalog knows: its kind, runtime (for kinds with several), maker, and
    the probe of which of its boundary layers are in force on this host (`sandgate doctor`).
    The probe may raise `EngineUnavailable` (e.g. no daemon to ask)."""

    kind: str
    runtime: str | None
    make: Callable[[EngineSettings], Engine]
    layers: Callable[[], tuple[LayerState, ...]]
    prepare: Callable[[Progress], str] | None = None
    """Prepares what the engine needs once, ahead of serving (`sandgate setup NAME`), with
    progress; returns a line saying what is ready. None: set up outside sandgate (Docker:
    `scripts/docker-setup.sh`)."""

    @property
    def key(self) -> str:
        return engine_key(self.kind, self.runtime)


def _wasm(settings: EngineSettings) -> Engine:
    from .wasm import WasmEngine

    return WasmEngine(
        workers=settings.workers,
        progress=settings.progress,
        slots_dir=settings.state_dir / "wasm-slots",
        prepare_guests=settings.prepare_guests,
        embedded_guests=settings.embedded_guests,
    )


def _prepare_wasm(progress: Progress) -> str:
    import asyncio
    import time

    from .wasm import WasmEngine, default_cache_dir, is_compiled

    began = time.monotonic()
    if is_compiled():
        progress(f"wasm: a compiled module is cached in {default_cache_dir()}")

    async def prepare() -> None:
        async with WasmEngine(workers=1, progress=progress) as engine:
            await engine.wait_ready()

    asyncio.run(prepare())
    return f"wasm: ready in {time.monotonic() - began:.1f} s"


def _prepare_pyodide(progress: Progress) -> str:
    from .pyodide import setup_pyodide

    return f"pyodide: assets ready in {setup_pyodide(progress=progress)}"


def _pyodide(settings: EngineSettings) -> Engine:
    from .pyodide import PyodideEngine

    return PyodideEngine(
        progress=settings.progress,
        require=settings.required("pyodide"),
        saved_dir=settings.state_dir / "pyodide-saved",
    )


def _wasm_layers() -> tuple[LayerState, ...]:
    return in_force(WASM_LAYERS, "in-process: wasmtime applies it to every guest")


def _pyodide_layers() -> tuple[LayerState, ...]:
    from .pyodide._jail import probe

    return probe().layers()


def _container_layers(runtime: str) -> Callable[[], tuple[LayerState, ...]]:
    def layers() -> tuple[LayerState, ...]:
        from .container._docker import Docker
        from .container._fleet import layer_states

        docker = Docker.connect(None)
        try:
            return layer_states(docker, runtime)  # type: ignore[arg-type]
        finally:
            docker.close()

    return layers


def _container(runtime: str) -> Callable[[EngineSettings], Engine]:
    def make(settings: EngineSettings) -> Engine:
        from .container import ContainerEngine

        return ContainerEngine(
            runtime=runtime,  # type: ignore[arg-type]
            pool_dir=settings.state_dir / f"container-pool-{runtime}",
            progress=settings.progress,
            require=settings.required(f"container:{runtime}"),
        )

    return make


DEFAULT_ENGINE = "wasm"
"""The embedded engine: what a policy routes to unless it says otherwise, started by every
server and prepared by a bare `sandgate setup`."""

CATALOG: dict[str, EngineEntry] = {
    entry.key: entry
    for entry in (
        EngineEntry("wasm", None, _wasm, _wasm_layers, _prepare_wasm),
        EngineEntry("pyodide", None, _pyodide, _pyodide_layers, _prepare_pyodide),
        EngineEntry("container", "runc", _container("runc"), _container_layers("runc")),
        EngineEntry("container", "runsc", _container("runsc"), _container_layers("runsc")),
    )
}
"""Every engine sandgate can run, by key (`wasm`, `pyodide`, `container:runc`, …)."""
