"""What one sandbox container is made of: a value the Docker facade turns into a create call."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .._types import Egress, HostMount, Limits

Runtime = Literal["runc", "runsc"]

DEFAULT_IMAGE = "sandgate-python:latest"
PROTOCOL = 3
"""Version of the host ↔ interpreter-server protocol; the image carries it as a label."""
SERVER_PATH = "/opt/sandgate/server.py"
WORKSPACE_GUEST = "/workspace"
SITE_GUEST = "/site"
TMP_BYTES = 64 * 1024 * 1024
SHM_BYTES = 16 * 1024 * 1024
DEFAULT_CPUS = 1.0
SANDBOX_UID = 65534
SANDBOX_GID = 65534

LABEL_ENGINE = "sandgate.engine"
LABEL_INSTANCE = "sandgate.instance"
LABEL_OWNER_PID = "sandgate.owner-pid"
LABEL_OWNER_START = "sandgate.owner-start"
LABEL_PROTOCOL = "sandgate.protocol"
LABEL_CONTEXT_SHA = "sandgate.context-sha256"
LABEL_EGRESS = "sandgate.egress"
"""Set ("1") on images whose server relays egress (`sandgate_egress.serve_forwarder`)."""

EGRESS_SOCKET_GUEST = "/run/sandgate/egress.sock"
"""Where an egress run's container is lent the proxy's Unix socket (no other container has
it); the interpreter server relays 127.0.0.1:`EGRESS_PORT` to it."""
EGRESS_CA_GUEST = "/run/sandgate/egress-ca.pem"
"""Where an egress run's container is shown the proxy's interception CA (read-only)."""
EGRESS_PORT = 3128
"""The forwarder's port on the sandbox's own loopback (the server's `EGRESS_PORT`)."""
EGRESS_FLAG = "SANDGATE_EGRESS"
"""Set to "1" for an egress run (`sandgate_egress.ENVIRONMENT_FLAG`)."""

GUEST_ENVIRONMENT: dict[str, str] = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONPATH": SITE_GUEST,
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "Agg",
    "MPLCONFIGDIR": "/tmp/matplotlib",
}
"""The guest's whole environment: nothing of the server's own environment is passed on."""


@dataclass(frozen=True, slots=True)
class EgressMount:
    """What a container of egress runs is lent when it is created: the proxy's Unix socket
    (at `EGRESS_SOCKET_GUEST`) and its CA certificate (at `EGRESS_CA_GUEST`), both bind-mounted
    read-only. The credentials are not: each run brings its own in its request.

    Attributes:
        socket: The proxy's Unix socket on the host.
        ca_certificate: The proxy's CA certificate (PEM) on the host.
    """

    socket: Path
    ca_certificate: Path

    @classmethod
    def of(cls, egress: Egress) -> EgressMount:
        """The mount of `egress`.

        Raises:
            ValueError: `egress.socket` is None (this engine lends the socket, not a port).
        """
        if egress.socket is None:
            raise ValueError(
                "ExecutionPlan.egress.socket: the container engine lends the guest the proxy's "
                "Unix socket, got None; start the egress proxy with a socket"
            )
        return cls(egress.socket, egress.ca_certificate)


def egress_environment(egress: Egress) -> dict[str, str]:
    """A run's egress variables inside the container: the proxy (the forwarder, with this
    run's credentials) for every scheme and no exception, the CA for every client, and the
    lease's own variables (brokered secrets' placeholders)."""
    proxy = egress.proxy_url("127.0.0.1", EGRESS_PORT)
    environment = {
        name: proxy for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    }
    environment.update(NO_PROXY="", no_proxy="")
    environment.update(
        {name: EGRESS_CA_GUEST for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT")}
    )
    environment[EGRESS_FLAG] = "1"  # every interpreter of the run raises refusals (`.pth`)
    environment.update(dict(egress.environment))
    return environment


@dataclass(frozen=True, slots=True)
class Shape:
    """What is fixed when a container is created (it cannot change later): its resource
    limits and its operator mounts.

    Attributes:
        memory_bytes: `mem_limit` and `memswap_limit` (no swap).
        processes: `pids_limit`.
        nano_cpus: CPU share in units of 1e-9 CPUs.
        mounts: Operator folders bind-mounted at `/mnt/NAME`, read-only unless the mount is
            read-write. A server's mounts are the same for every run, so the pool aims at
            them after the first run and warm containers keep serving.
        egress: The egress proxy lent to the container (egress runs only; None: the
            container has no path to the proxy).
    """

    memory_bytes: int
    processes: int
    nano_cpus: int
    mounts: tuple[HostMount, ...] = ()
    egress: EgressMount | None = None

    @classmethod
    def of(
        cls,
        limits: Limits,
        *,
        cpus: float,
        mounts: tuple[HostMount, ...] = (),
        egress: EgressMount | None = None,
    ) -> Shape:
        return cls(limits.memory_bytes, limits.processes, int(cpus * 1e9), mounts, egress)


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything `docker create` is told about one sandbox; nothing else is granted.

    Attributes:
        image: Image tag.
        runtime: OCI runtime registered with dockerd (`runc`, or `runsc` for gVisor).
        shape: Memory, process and CPU limits.
        files: Host folder bind-mounted read-write at /workspace (the only writable mount).
        site: Host folder bind-mounted read-only at /site (on the guest's import path).
        user: `uid:gid` the server runs as (never root).
        labels: Ownership labels, for clean-up after a crash.
    """

    image: str
    runtime: Runtime
    shape: Shape
    files: Path
    site: Path
    user: str
    labels: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ("python3", "-I", SERVER_PATH)
    environment: dict[str, str] = field(default_factory=lambda: dict(GUEST_ENVIRONMENT))
    tmpfs: dict[str, str] = field(
        default_factory=lambda: {"/tmp": f"rw,noexec,nosuid,nodev,size={TMP_BYTES},mode=1777"}
    )


def sandbox_user(files: Path) -> tuple[int, int]:
    """The uid/gid sandboxes run as: `nobody` when the server is root (it then hands the
    workspace to that user), otherwise the server's own non-root uid (it owns the workspace)."""
    if os.geteuid() == 0:
        return SANDBOX_UID, SANDBOX_GID
    st = files.stat()
    return st.st_uid, st.st_gid


def process_start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot), to tell a live owner from a reused
    pid; None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Field 22 (starttime) counted after the command name, which ends at the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def owner_labels(instance: str) -> dict[str, str]:
    """The labels every container of this server instance carries."""
    pid = os.getpid()
    return {
        LABEL_ENGINE: "container",
        LABEL_INSTANCE: instance,
        LABEL_OWNER_PID: str(pid),
        LABEL_OWNER_START: str(process_start_ticks(pid) or 0),
    }


def owner_alive(labels: dict[str, str]) -> bool:
    """Whether the server process named by a container's labels still runs on this host."""
    try:
        pid = int(labels.get(LABEL_OWNER_PID, ""))
    except ValueError:
        return False
    started = process_start_ticks(pid)
    return started is not None and str(started) == labels.get(LABEL_OWNER_START)
