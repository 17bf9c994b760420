"""The containers one engine instance owns: how they are specified, launched and removed."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from pathlib import Path

from .._errors import EngineUnavailable, SandboxError
from .._layers import ENGINE_LAYERS, LayerState
from .._types import HostMount, Limits, WorkspacePaths
from ._docker import Docker
from ._pool import Warm
from ._sandbox import Sandbox
from ._spec import (
    LABEL_EGRESS,
    LABEL_PROTOCOL,
    PROTOCOL,
    SANDBOX_GID,
    SANDBOX_UID,
    ContainerSpec,
    EgressMount,
    Runtime,
    Shape,
    owner_alive,
)
from ._workspace import Slot, adopt

logger = logging.getLogger("sandgate.container")

RUNSC_PIDS_BASE = 64
RUNSC_PIDS_PER_PROCESS = 20
"""gVisor's sentry needs host tasks of its own (~38 idle, up to ~12 per guest process at the
peak of a fork bomb with the ptrace platform); the host pids limit is only a backstop there,
the guest's limit is RLIMIT_NPROC, which gVisor counts per sandbox."""


class Fleet:
    """Launches sandboxes for one engine instance and removes them, tracking every one.

    Args:
        docker: The daemon connection.
        runtime: The OCI runtime of every container.
        image: The sandbox image.
        cpus: CPUs per container.
        labels: Ownership labels put on every container.
        pool_folder: This instance's folder for slots.
    """

    def __init__(
        self,
        docker: Docker,
        *,
        runtime: Runtime,
        image: str,
        cpus: float,
        labels: dict[str, str],
        pool_folder: Path,
    ) -> None:
        self.docker = docker
        self.runtime: Runtime = runtime
        self._image = image
        self._cpus = cpus
        self._labels = labels
        self.pool_folder = pool_folder
        root = os.geteuid() == 0
        self.uid, self.gid = (SANDBOX_UID, SANDBOX_GID) if root else (os.getuid(), os.getgid())
        self._live: dict[str, Warm] = {}

    def shape(
        self,
        limits: Limits,
        mounts: tuple[HostMount, ...] = (),
        egress: EgressMount | None = None,
    ) -> Shape:
        """What a container for `limits`, the operator `mounts` and the egress proxy lent to
        it (egress runs only) is created with."""
        shape = Shape.of(limits, cpus=self._cpus, mounts=mounts, egress=egress)
        if self.runtime == "runsc":
            pids = RUNSC_PIDS_BASE + RUNSC_PIDS_PER_PROCESS * limits.processes
            shape = dataclasses.replace(shape, processes=pids)
        return shape

    def _spec(self, shape: Shape, files: Path, site: Path) -> ContainerSpec:
        return ContainerSpec(
            image=self._image,
            runtime=self.runtime,
            shape=shape,
            files=files,
            site=site,
            user=f"{self.uid}:{self.gid}",
            labels=dict(self._labels),
        )

    async def _launch(self, spec: ContainerSpec, slot: Slot | None, shape: Shape) -> Warm:
        sandbox = await Sandbox.launch(self.docker, spec)
        warm = Warm(sandbox, slot, shape)
        self._live[sandbox.id] = warm
        return warm

    async def launch_slot(self, shape: Shape) -> Warm:
        """A container mounting a fresh, empty slot (for the pool, or a cold run)."""
        slot = await asyncio.to_thread(Slot.make, self.pool_folder, uid=self.uid, gid=self.gid)
        try:
            return await self._launch(self._spec(shape, slot.files, slot.site), slot, shape)
        except BaseException:
            await asyncio.to_thread(slot.discard)
            raise

    async def launch_restored(self, shape: Shape, checkpoint: Path) -> Warm:
        """A container mounting a fresh, empty slot, started from a gVisor checkpoint (the
        folder of a saved interpreter's checkpoint, `_saved.py`)."""
        slot = await asyncio.to_thread(Slot.make, self.pool_folder, uid=self.uid, gid=self.gid)
        try:
            spec = self._spec(shape, slot.files, slot.site)
            sandbox = await Sandbox.restore(self.docker, spec, checkpoint)
        except BaseException:
            await asyncio.to_thread(slot.discard)
            raise
        warm = Warm(sandbox, slot, shape)
        self._live[sandbox.id] = warm
        return warm

    async def launch_direct(self, workspace: WorkspacePaths, shape: Shape) -> Warm:
        """A container mounting the session's own folders (when they cannot be lent)."""
        files, site = workspace.files, workspace.site
        site.mkdir(mode=0o755, exist_ok=True)
        await asyncio.to_thread(adopt, files, uid=self.uid, gid=self.gid)
        await asyncio.to_thread(adopt, site, uid=self.uid, gid=self.gid)
        return await self._launch(self._spec(shape, files, site), None, shape)

    async def dispose(self, warm: Warm) -> None:
        """Remove a container, then its slot (files still lent are given back first)."""
        self._live.pop(warm.sandbox.id, None)
        try:
            await warm.sandbox.remove()
        except SandboxError as exc:
            logger.warning("container: could not remove %s: %s", warm.sandbox.id[:12], exc)
        if warm.slot is not None:
            await asyncio.to_thread(warm.slot.discard)

    async def dispose_all(self) -> None:
        """Remove every container still tracked."""
        live = list(self._live.values())
        await asyncio.gather(*(self.dispose(w) for w in live), return_exceptions=True)


def check_daemon(docker: Docker, runtime: Runtime, image: str) -> None:
    """Check that dockerd has `runtime` and `image`, built for this protocol.

    Raises:
        EngineUnavailable: something is missing; the message says what to run.
    """
    runtimes = docker.runtimes()
    if runtime not in runtimes:
        raise EngineUnavailable(
            f"dockerd at {docker.where} has no runtime {runtime!r} (it has "
            f"{', '.join(sorted(runtimes)) or 'none'}); run `sudo bash scripts/docker-setup.sh`, "
            "which registers runsc in /etc/docker/daemon.json"
        )
    labels = docker.image_labels(image)
    if labels is None:
        raise EngineUnavailable(
            f"the sandbox image {image} is missing; build it with "
            "`sudo bash scripts/docker-setup.sh` (offline) or "
            f"`docker build -t {image} sandboxes/images/python`"
        )
    if labels.get(LABEL_PROTOCOL) != str(PROTOCOL):
        raise EngineUnavailable(
            f"the image {image} speaks interpreter-server protocol "
            f"{labels.get(LABEL_PROTOCOL)!r}, expected {PROTOCOL}; rebuild it with "
            "`python -m sandboxes.container build-image --force`"
        )


HOST_UDS_OPEN = ("--host-uds=open", "--host-uds=all")
"""runsc flags that let a sandbox connect to a host Unix socket its mounts show it."""


def egress_refusal(docker: Docker, runtime: Runtime, image: str) -> str | None:
    """Why this daemon and image cannot lend egress runs the proxy (None: they can): the image
    must relay it (`LABEL_EGRESS`), and gVisor must be allowed to connect to the bind-mounted
    host socket (`--host-uds=open` in runsc's runtimeArgs)."""
    labels = docker.image_labels(image) or {}
    if labels.get(LABEL_EGRESS) != "1":
        return (
            f"the image {image} cannot relay egress (no {LABEL_EGRESS} label: built before "
            "egress); rebuild it with `python -m sandboxes.container build-image`"
        )
    if runtime == "runsc":
        runtimes = docker.info().get("Runtimes") or {}
        arguments = [str(a) for a in (runtimes.get("runsc") or {}).get("runtimeArgs") or []]
        if not any(a in HOST_UDS_OPEN for a in arguments):
            return (
                f"dockerd at {docker.where} runs runsc with {' '.join(arguments) or 'no flags'}: "
                "without --host-uds=open gVisor refuses the proxy's socket; run "
                "`sudo bash scripts/docker-setup.sh`, which adds it to /etc/docker/daemon.json"
            )
    return None


def layer_states(docker: Docker, runtime: Runtime) -> tuple[LayerState, ...]:
    """Which layers of the `container:<runtime>` engine are in force with this daemon.

    The runtime, seccomp and cgroup support are read from `docker info`; the rest are set on
    every container the engine creates, and dockerd refuses to create one it cannot apply.
    """
    info = docker.info()
    runtimes = sorted((info.get("Runtimes") or {}).keys())
    security = [str(option) for option in info.get("SecurityOptions") or []]
    memory, swap = bool(info.get("MemoryLimit")), bool(info.get("SwapLimit"))
    probed: dict[str, tuple[bool, str]] = {
        "oci_runtime": (
            runtime in runtimes,
            f"dockerd at {docker.where} has runtimes: {', '.join(runtimes) or 'none'}",
        ),
        "seccomp": (
            any(option.startswith("name=seccomp") for option in security),
            f"dockerd's security options: {', '.join(security) or 'none'}",
        ),
        "memory_cgroup": (
            memory and swap,
            f"dockerd reports MemoryLimit={memory}, SwapLimit={swap}",
        ),
        "pids_cgroup": (
            bool(info.get("PidsLimit")),
            f"dockerd reports PidsLimit={bool(info.get('PidsLimit'))}",
        ),
    }
    set_on_create = (True, "set on every container the engine creates")
    return tuple(
        LayerState(layer, *probed.get(layer.name, set_on_create))
        for layer in ENGINE_LAYERS[f"container:{runtime}"]
    )


def remove_orphans(docker: Docker) -> int:
    """Remove every sandbox container whose owning server process is gone; how many."""
    dead = [c.id for c in docker.labelled() if not owner_alive(c.labels)]
    for cid in dead:
        docker.remove(cid)
    return len(dead)
