"""Boundary layers: what each engine relies on, which are in force on this host, and the
refusal to start when one the configuration requires is missing (fail closed).

An engine names its layers here (`ENGINE_LAYERS`, pure values the policy validates against);
its package probes them (`LayerState` per layer, same order) and its `start()` calls
`refuse_missing`. By default an engine requires every layer it names; a caller (the policy's
`engines.<profile>.require`) lists fewer to accept running without the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._errors import LayersMissing


@dataclass(frozen=True, slots=True)
class Layer:
    """One boundary layer an engine relies on.

    Attributes:
        name: What the policy calls it (`engines.<profile>.require`).
        what: What it stops, in one line.
        in_force_when: The condition under which it is in force (and so, how to get it).
    """

    name: str
    what: str
    in_force_when: str


@dataclass(frozen=True, slots=True)
class LayerState:
    """Whether one layer is in force on this host.

    Attributes:
        layer: The layer.
        in_force: True when the engine applies it here.
        why: When it is missing, what the probe found; when in force, how it was checked.
    """

    layer: Layer
    in_force: bool
    why: str

    @property
    def name(self) -> str:
        return self.layer.name


_ALWAYS = "always (set by the engine itself on every process)"
_IN_PROCESS = "always (in-process: wasmtime enforces it inside the worker)"
_CONTAINER = "always while dockerd runs the container (it refuses to create one it cannot apply)"

WASM_LAYERS = (
    Layer(
        "wasi_capabilities",
        "the guest sees only /workspace, /site and the stdlib; no sockets",
        _IN_PROCESS,
    ),
    Layer(
        "epoch_deadline", "wasmtime interrupts the guest at its wall-clock deadline", _IN_PROCESS
    ),
    Layer("memory_limit", "wasmtime caps the guest's linear memory", _IN_PROCESS),
)
PYODIDE_LAYERS = (
    Layer(
        "js_realm",
        "host globals (Deno, process, fetch, workers...) are deleted before user code runs",
        _ALWAYS,
    ),
    Layer(
        "deno_permissions",
        "Deno reads the Pyodide assets only: no write, net, env, run, ffi, sys, import",
        _ALWAYS,
    ),
    Layer("v8_heap_cap", "Deno's V8 heap is capped (--max-old-space-size)", _ALWAYS),
    Layer("wasm_memory_cap", "the guest's wasm memory growth is capped (MemoryError)", _ALWAYS),
    Layer("cpu_rlimit", "RLIMIT_CPU budget per call on the Deno process", _ALWAYS),
    Layer(
        "net_namespace",
        "Deno runs in a network namespace with no interface (unshare --net)",
        "util-linux `unshare` is on PATH and may create a network namespace (root, or "
        "unprivileged user namespaces)",
    ),
    Layer(
        "no_new_privs",
        "Deno runs with no_new_privs and, as root, an empty capability bounding set (setpriv)",
        "util-linux `setpriv` is on PATH",
    ),
    Layer(
        "memory_cgroup",
        "a cgroup v1 memory cap per Deno process (the OOM killer ends it)",
        "/sys/fs/cgroup/memory is a writable cgroup v1 hierarchy (root)",
    ),
    Layer(
        "pids_cgroup",
        "a cgroup v1 cap on the Deno process's threads",
        "/sys/fs/cgroup/pids is a writable cgroup v1 hierarchy (root)",
    ),
)
_CONTAINER_LAYERS = (
    Layer("no_network", "network_mode none: no interface but loopback", _CONTAINER),
    Layer("read_only_root", "the container's root file system is read-only", _CONTAINER),
    Layer("cap_drop_all", "every capability dropped (empty bounding set)", _CONTAINER),
    Layer("no_new_privs", "no-new-privileges: setuid binaries gain nothing", _CONTAINER),
    Layer(
        "non_root_user",
        "the guest runs as uid 65534 (or the server's own non-root uid)",
        _CONTAINER,
    ),
    Layer(
        "seccomp",
        "Docker's default seccomp profile filters the guest's syscalls",
        "dockerd reports seccomp among its security options",
    ),
    Layer(
        "memory_cgroup",
        "memory cap without swap (mem_limit = memswap_limit)",
        "dockerd reports MemoryLimit and SwapLimit support (cgroup memory controller, swap "
        "accounting)",
    ),
    Layer("pids_cgroup", "cap on the container's processes", "dockerd reports PidsLimit support"),
)
RUNC_LAYERS = (
    Layer(
        "oci_runtime",
        "runc: Linux namespaces and cgroups around the guest (shared host kernel)",
        "dockerd has the runtime `runc` registered",
    ),
    *_CONTAINER_LAYERS,
)
RUNSC_LAYERS = (
    Layer(
        "oci_runtime",
        "runsc: gVisor's user-space kernel between the guest and the host kernel",
        "dockerd has the runtime `runsc` registered (scripts/docker-setup.sh)",
    ),
    *_CONTAINER_LAYERS,
)

ENGINE_LAYERS: Mapping[str, tuple[Layer, ...]] = {
    "wasm": WASM_LAYERS,
    "pyodide": PYODIDE_LAYERS,
    "container:runc": RUNC_LAYERS,
    "container:runsc": RUNSC_LAYERS,
}
"""The layers each engine relies on, by engine key (`sandboxes.engine_key`)."""


def layer_names(key: str) -> tuple[str, ...]:
    """The names of the layers engine `key` relies on, in order.

    Raises:
        KeyError: no engine has that key.
    """
    return tuple(layer.name for layer in ENGINE_LAYERS[key])


def unknown_layers(key: str, names: Iterable[str]) -> str | None:
    """What is wrong with `names` as layers of engine `key` ("expected …, got …"), or None."""
    known = layer_names(key)
    wrong = sorted({n for n in names if n not in known})
    if not wrong:
        return None
    return f"expected names of the {key} engine's layers ({', '.join(known)}), got {wrong!r}"


def required_layers(key: str, require: Iterable[str] | None) -> frozenset[str]:
    """The layers engine `key` must have: `require`, or every one it relies on when None.

    Raises:
        ValueError: `require` names a layer engine `key` does not have.
    """
    if require is None:
        return frozenset(layer_names(key))
    names = frozenset(require)
    problem = unknown_layers(key, names)
    if problem is not None:
        raise ValueError(f"require: {problem}; fix the names or leave `require` out")
    return names


def refuse_missing(key: str, states: Iterable[LayerState], required: frozenset[str]) -> None:
    """Raise unless every layer in `required` is in force.

    Raises:
        LayersMissing: naming each missing layer, why it is missing and what to do.
    """
    missing = [s for s in states if s.name in required and not s.in_force]
    if not missing:
        return
    lines = "; ".join(f"{s.name} ({s.why}; in force when {s.layer.in_force_when})" for s in missing)
    names = ", ".join(s.name for s in missing)
    kept = sorted(required - {s.name for s in missing})
    raise LayersMissing(
        f"the {key} engine refuses to start: required boundary layers are missing on this "
        f"host: {lines}. Provide them (see `sandgate doctor`), or accept running without "
        f"them by listing only the layers you require in the policy, e.g. "
        f"`engines.<profile>.require: [{', '.join(kept)}]` (without {names})",
        engine=key,
        missing=tuple(s.name for s in missing),
    )


def in_force(layers: Iterable[Layer], why: str) -> tuple[LayerState, ...]:
    """States of layers that are in force whenever the engine runs (`why`: how it knows)."""
    return tuple(LayerState(layer, True, why) for layer in layers)
