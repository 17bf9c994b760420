"""OS-level jail of a Deno process: network namespace, no_new_privs, cgroup caps, CPU rlimit."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import resource
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .._layers import PYODIDE_LAYERS, LayerState

CGROUP_V1 = Path("/sys/fs/cgroup")
CGROUP_PARENT = "sandgate-pyodide"
PIDS_MAX = 256
"""Threads a Deno process may hold (V8 and Tokio workers; it starts no processes)."""
CPU_HARD_GRACE_S = 2
_PROBE_TIMEOUT_S = 10.0
_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class JailInfo:
    """Which OS layers this host allows; the engine applies every one that is available.

    Attributes:
        net_namespace: Deno runs in a network namespace of its own with no interface but a
            down loopback (`unshare --net`, root only).
        no_new_privs: Deno runs with `PR_SET_NO_NEW_PRIVS` and, as root, with every
            capability dropped from its bounding set (`setpriv`).
        memory_cgroup: A cgroup v1 memory cap per process (the OOM killer ends it past the cap).
        pids_cgroup: A cgroup v1 cap on the process's threads.
        cpu_rlimit: `RLIMIT_CPU` set per call on the running process (always available).
        why: Per layer name, what the probe found (why it is missing, or how it was checked).
    """

    net_namespace: bool
    no_new_privs: bool
    memory_cgroup: bool
    pids_cgroup: bool
    cpu_rlimit: bool = True
    why: Mapping[str, str] = field(default_factory=dict)

    def layers(self, *, harden_js: bool = True) -> tuple[LayerState, ...]:
        """The state of every layer the pyodide engine relies on (`PYODIDE_LAYERS`, in order).

        Args:
            harden_js: Whether the engine deletes the host globals of the JS realm (only tests
                of the permission layer turn it off).
        """
        probed = {
            "net_namespace": self.net_namespace,
            "no_new_privs": self.no_new_privs,
            "memory_cgroup": self.memory_cgroup,
            "pids_cgroup": self.pids_cgroup,
            "cpu_rlimit": self.cpu_rlimit,
            "js_realm": harden_js,
        }
        states = []
        for layer in PYODIDE_LAYERS:
            on = probed.get(layer.name, True)
            default = "set on every Deno process" if on else "turned off (harden_js=False)"
            states.append(LayerState(layer, on, self.why.get(layer.name, default)))
        return tuple(states)


def _works(tool: str, args: list[str]) -> str | None:
    """None when `tool args… -- true` succeeds here, else why not."""
    found = shutil.which(tool)
    if found is None:
        return f"`{tool}` is not on PATH (install util-linux)"
    true = shutil.which("true") or "/bin/true"
    try:
        done = subprocess.run(
            [found, *args, "--", true], capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`{found} {' '.join(args)}` could not run: {exc}"
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip()[-200:]
        return f"`{found} {' '.join(args)}` failed (exit {done.returncode}: {said})"
    return None


def _cgroup_usable(controller: str) -> str | None:
    """None when this process can make cgroup v1 folders for `controller`, else why not."""
    parent = CGROUP_V1 / controller / CGROUP_PARENT
    try:
        parent.mkdir(exist_ok=True)
        probe = parent / f"probe-{os.getpid()}-{secrets.token_hex(4)}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot make a cgroup under {CGROUP_V1 / controller}: {exc.strerror or exc}"
    return None


def probe() -> JailInfo:
    """Find out, once, which layers work here (each probe runs a trivial command)."""
    found = {
        "net_namespace": _works("unshare", ["--net"]),
        "no_new_privs": _works("setpriv", ["--no-new-privs"]),
        "memory_cgroup": _cgroup_usable("memory"),
        "pids_cgroup": _cgroup_usable("pids"),
    }
    return JailInfo(
        net_namespace=found["net_namespace"] is None,
        no_new_privs=found["no_new_privs"] is None,
        memory_cgroup=found["memory_cgroup"] is None,
        pids_cgroup=found["pids_cgroup"] is None,
        why={name: why or "probed: works here" for name, why in found.items()},
    )


class Cgroup:
    """The cgroup v1 folders (memory, pids) of one Deno process."""

    def __init__(self, info: JailInfo) -> None:
        name = f"{os.getpid()}-{next(_counter)}-{secrets.token_hex(3)}"
        self.memory = CGROUP_V1 / "memory" / CGROUP_PARENT / name if info.memory_cgroup else None
        self.pids = CGROUP_V1 / "pids" / CGROUP_PARENT / name if info.pids_cgroup else None
        if self.memory is not None:
            self.memory.mkdir()
            _write(self.memory / "memory.swappiness", "0")
        if self.pids is not None:
            self.pids.mkdir()
            _write(self.pids / "pids.max", str(PIDS_MAX))

    def procs_files(self) -> list[str]:
        """The `cgroup.procs` files the launcher writes its pid into before exec."""
        return [str(d / "cgroup.procs") for d in (self.memory, self.pids) if d is not None]

    def set_memory_limit(self, limit_bytes: int) -> bool:
        """Cap the process's memory (RSS + page cache); False when the host refused it."""
        if self.memory is None:
            return False
        return _write(self.memory / "memory.limit_in_bytes", str(limit_bytes))

    def reset_peak(self) -> None:
        if self.memory is not None:
            _write(self.memory / "memory.max_usage_in_bytes", "0")

    def peak_bytes(self) -> int | None:
        return _read_int(self.memory / "memory.max_usage_in_bytes") if self.memory else None

    def oom_kills(self) -> int:
        """How many times the OOM killer acted in this cgroup."""
        if self.memory is None:
            return 0
        try:
            text = (self.memory / "memory.oom_control").read_text()
        except OSError:
            return 0
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        failcnt = _read_int(self.memory / "memory.failcnt")
        return 1 if failcnt else 0

    def remove(self) -> None:
        """Remove the folders (the process must be gone)."""
        for folder in (self.memory, self.pids):
            if folder is not None:
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
    except OSError:
        return False
    return True


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def wrap(command: list[str], info: JailInfo, cgroup: Cgroup) -> list[str]:
    """`command` behind every available layer: cgroups join before exec, then netns, privs."""
    layers: list[str] = []
    procs = cgroup.procs_files()
    if procs:
        script = 'for f in "$@"; do [ "$f" = -- ] && break; echo $$ > "$f" || exit 97; done; '
        script += 'while [ "$1" != -- ]; do shift; done; shift; exec "$@"'
        layers += ["/bin/sh", "-c", script, "sandgate-jail", *procs, "--"]
    if info.net_namespace:
        layers += [shutil.which("unshare") or "unshare", "--net", "--"]
    if info.no_new_privs:
        layers += [shutil.which("setpriv") or "setpriv", "--no-new-privs"]
        if os.geteuid() == 0:
            layers += ["--bounding-set=-all", "--inh-caps=-all"]
        layers += ["--"]
    return layers + command


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system, all threads) the process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def limit_cpu(pid: int, budget_s: float) -> bool:
    """Let the process use `budget_s` more CPU seconds (SIGXCPU, then SIGKILL past that)."""
    used = cpu_seconds(pid)
    if used is None:
        return False
    soft = math.ceil(used + budget_s)
    try:
        resource.prlimit(pid, resource.RLIMIT_CPU, (soft, soft + CPU_HARD_GRACE_S))
    except PermissionError:
        # Without CAP_SYS_RESOURCE the hard limit cannot be raised again later: move only the
        # soft one (SIGXCPU still ends the process).
        try:
            _soft, hard = resource.prlimit(pid, resource.RLIMIT_CPU)
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            resource.prlimit(pid, resource.RLIMIT_CPU, (soft, hard))
        except (OSError, ValueError):
            return False
    except (OSError, ValueError):
        return False
    return True


def clean_stale() -> None:
    """Remove cgroup folders left by engines of processes that no longer exist."""
    for controller in ("memory", "pids"):
        parent = CGROUP_V1 / controller / CGROUP_PARENT
        with contextlib.suppress(OSError):
            for child in parent.iterdir():
                owner = child.name.split("-", 1)[0]
                if child.is_dir() and owner.isdigit() and not Path(f"/proc/{owner}").exists():
                    with contextlib.suppress(OSError):
                        child.rmdir()
