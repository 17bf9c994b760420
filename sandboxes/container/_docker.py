"""Typed facade over the untyped `docker` SDK; the only module that touches it.

Every SDK call is blocking: callers run them through `asyncio.to_thread`. Every foreign
exception (docker, requests, urllib3, socket `OSError`) becomes a `sandboxes` exception in
`translate`, the one place that maps them (see `_errors.py` for the table).
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .._lending import mount_guest
from ._errors import translate
from ._spec import (
    EGRESS_CA_GUEST,
    EGRESS_SOCKET_GUEST,
    LABEL_ENGINE,
    WORKSPACE_GUEST,
    ContainerSpec,
)

DEFAULT_API_TIMEOUT_S = 60
MAX_POOL_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class ContainerState:
    """What `docker inspect` says of a container's process.

    Attributes:
        running: Whether its process still runs.
        exit_code: Its exit status once stopped.
        oom_killed: Whether the kernel's OOM killer ended it.
        error: The daemon's error text, if any.
        lifetime_s: Seconds from its start to its exit by the daemon's clock; None while it
            runs or when the daemon does not say.
    """

    running: bool
    exit_code: int | None
    oom_killed: bool
    error: str
    lifetime_s: float | None = None


@dataclass(frozen=True, slots=True)
class Labelled:
    """A container found by label, with its labels."""

    id: str
    labels: dict[str, str]


class Attached:
    """The hijacked attach connection of one container: its stdin, stdout and stderr."""

    def __init__(self, holder: Any) -> None:
        self._holder = holder  # keeps the HTTP response (and its pooled connection) alive
        raw = getattr(holder, "_sock", holder)
        if not isinstance(raw, socket.socket):
            raise TypeError(f"attach: expected a socket from the SDK, got {type(raw).__name__}")
        self.sock = raw
        self.sock.setblocking(False)

    def close(self) -> None:
        for closer in (self.sock.close, getattr(self._holder, "close", None)):
            if closer is not None:
                with contextlib.suppress(OSError):
                    closer()


class Docker:
    """One connection to a Docker daemon, as typed methods."""

    def __init__(self, api: Any, where: str) -> None:
        self._api = api
        self.where = where

    @classmethod
    def connect(cls, docker_host: str | None, *, timeout_s: int = DEFAULT_API_TIMEOUT_S) -> Docker:
        """Connect and negotiate the API version.

        Raises:
            EngineUnavailable: no SDK, or no daemon answering at `docker_host`.
        """
        where = docker_host or "the default socket ($DOCKER_HOST or /var/run/docker.sock)"
        with translate("connect to the Docker daemon", where=where):
            try:
                import docker
            except ImportError as exc:
                from .._errors import EngineUnavailable

                raise EngineUnavailable(
                    "the container engine needs the `docker` Python SDK: pip install 'docker>=7,<8'"
                ) from exc
            options: dict[str, Any] = (
                {"base_url": docker_host} if docker_host else docker.utils.kwargs_from_env()
            )
            api = docker.APIClient(
                version="auto", timeout=timeout_s, max_pool_size=MAX_POOL_CONNECTIONS, **options
            )
            # requests would read proxy and netrc variables on every call, iterating os.environ
            # from worker threads: a KeyError whenever the process changes its environment.
            api.trust_env = False
            api.ping()
        return cls(api, where)

    def close(self) -> None:
        with translate("close the Docker connection", where=self.where):
            self._api.close()

    def info(self) -> dict[str, Any]:
        """The daemon's `docker info` (runtimes, cgroup support, security options…)."""
        with translate("read the daemon's info", where=self.where):
            info: dict[str, Any] = self._api.info()
        return info

    def runtimes(self) -> frozenset[str]:
        """The OCI runtimes dockerd knows (`runc`, `runsc`…)."""
        with translate("read the daemon's runtimes", where=self.where):
            info: dict[str, Any] = self._api.info()
        return frozenset((info.get("Runtimes") or {}).keys())

    def image_labels(self, tag: str) -> dict[str, str] | None:
        """The labels of image `tag`, or None when there is no such image."""
        import docker.errors

        with translate(f"inspect image {tag}", where=self.where):
            try:
                found: dict[str, Any] = self._api.inspect_image(tag)
            except docker.errors.ImageNotFound:
                return None
        return dict((found.get("Config") or {}).get("Labels") or {})

    def image_id(self, tag: str) -> str | None:
        """The id of image `tag`, or None when there is no such image."""
        import docker.errors

        with translate(f"inspect image {tag}", where=self.where):
            try:
                return str(self._api.inspect_image(tag)["Id"])
            except docker.errors.ImageNotFound:
                return None

    def remove_image(self, image_id: str) -> bool:
        """Remove an image no tag or container uses any more; False when one still does."""
        import docker.errors

        with translate(f"remove image {image_id[:19]}", where=self.where):
            try:
                self._api.remove_image(image_id)
            except docker.errors.APIError as exc:
                if exc.status_code in (404, 409):
                    return False
                raise
        return True

    def create(self, spec: ContainerSpec) -> str:
        """Create (not start) a container for `spec` and return its id."""
        import docker.types

        mounts = [
            docker.types.Mount(WORKSPACE_GUEST, str(spec.files), type="bind", read_only=False),
            docker.types.Mount("/site", str(spec.site), type="bind", read_only=True),
            *(
                docker.types.Mount(mount_guest(m), str(m.host), type="bind", read_only=m.read_only)
                for m in spec.shape.mounts
            ),
        ]
        if spec.shape.egress is not None:  # egress runs' containers only: the proxy's socket
            egress = spec.shape.egress
            mounts += [
                docker.types.Mount(EGRESS_SOCKET_GUEST, str(egress.socket), "bind", True),
                docker.types.Mount(EGRESS_CA_GUEST, str(egress.ca_certificate), "bind", True),
            ]
        with translate(f"create a container from {spec.image}", where=self.where):
            host_config = self._api.create_host_config(
                mounts=mounts,
                tmpfs=dict(spec.tmpfs),
                read_only=True,
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=spec.shape.processes,
                mem_limit=spec.shape.memory_bytes,
                memswap_limit=spec.shape.memory_bytes,
                nano_cpus=spec.shape.nano_cpus,
                runtime=spec.runtime,
                ipc_mode="private",
                shm_size=16 * 1024 * 1024,
                log_config=docker.types.LogConfig(type="none"),
                init=False,
                privileged=False,
                devices=[],
            )
            created: dict[str, Any] = self._api.create_container(
                spec.image,
                command=list(spec.command),
                user=spec.user,
                environment=dict(spec.environment),
                working_dir=WORKSPACE_GUEST,
                labels=dict(spec.labels),
                host_config=host_config,
                hostname="sandbox",
                stdin_open=True,  # with detach=False: StdinOnce, so a dead host closes stdin
                detach=False,
                tty=False,
                network_disabled=True,
            )
        return str(created["Id"])

    def attach(self, cid: str) -> Attached:
        """Attach to stdin/stdout/stderr (call before `start` so no output is missed)."""
        params = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
        with translate(f"attach to container {cid[:12]}", where=self.where):
            return Attached(self._api.attach_socket(cid, params=params))

    def start(self, cid: str) -> None:
        with translate(f"start container {cid[:12]}", where=self.where):
            self._api.start(cid)

    def checkpoint(self, cid: str, folder: Path, name: str) -> None:
        """Checkpoint the container's processes into `folder/name` (gVisor's `runsc
        checkpoint`, through dockerd's experimental checkpoint API); the container exits.
        The SDK has no call for it: the Engine API's `POST /containers/{id}/checkpoints`."""
        with translate(f"checkpoint container {cid[:12]}", where=self.where):
            reply = self._api._post_json(
                self._api._url("/containers/{0}/checkpoints", cid),
                data={"CheckpointID": name, "CheckpointDir": str(folder), "Exit": True},
            )
            self._api._raise_for_status(reply)

    def start_from_checkpoint(self, cid: str, name: str) -> None:
        """Start a created container from its checkpoint `name` (in its own checkpoint folder,
        `checkpoint_folder`: dockerd restores from no other)."""
        with translate(f"restore container {cid[:12]}", where=self.where):
            reply = self._api._post(
                self._api._url("/containers/{0}/start", cid), params={"checkpoint": name}
            )
            self._api._raise_for_status(reply)

    def checkpoint_folder(self, cid: str, name: str) -> Path:
        """Where dockerd looks for checkpoint `name` of container `cid` (its data root)."""
        with translate("read the daemon's info", where=self.where):
            info: dict[str, Any] = self._api.info()
        return Path(str(info["DockerRootDir"])) / "containers" / cid / "checkpoints" / name

    def kill(self, cid: str) -> None:
        """SIGKILL every process of the container; a container already stopped is fine."""
        import docker.errors

        with translate(f"kill container {cid[:12]}", where=self.where):
            try:
                self._api.kill(cid)
            except docker.errors.APIError as exc:
                if exc.status_code not in (404, 409):
                    raise

    def wait(self, cid: str, *, timeout_s: float) -> None:
        """Wait until the container has stopped, at most `timeout_s` seconds."""
        with translate(f"wait for container {cid[:12]}", where=self.where):
            self._api.wait(cid, timeout=max(1, int(timeout_s + 0.999)))

    def state(self, cid: str) -> ContainerState:
        with translate(f"inspect container {cid[:12]}", where=self.where):
            state: dict[str, Any] = self._api.inspect_container(cid).get("State") or {}
        running = bool(state.get("Running"))
        return ContainerState(
            running=running,
            exit_code=None if running else state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=str(state.get("Error") or ""),
            lifetime_s=None
            if running
            else _seconds_between(state.get("StartedAt"), state.get("FinishedAt")),
        )

    def oom_reported(self, cid: str, *, since: float) -> bool:
        """Whether the daemon logged an `oom` event for the container since `since` (Unix
        seconds). The event is the daemon's record of the kernel's OOM kill; its `OOMKilled`
        flag can miss it (dockerd 20.10 logged the event and still showed the flag false when
        the OOM and the exit arrived together, seen for gVisor under load)."""
        filters = {"container": [cid], "event": ["oom"]}
        with translate(f"read the events of container {cid[:12]}", where=self.where):
            stream = self._api.events(
                since=int(since) - 1, until=int(time.time()) + 1, filters=filters, decode=True
            )
            try:
                return any(event.get("Action") == "oom" for event in stream)
            finally:
                stream.close()

    def remove(self, cid: str) -> None:
        """Remove the container, killing it first; one already gone is fine."""
        import docker.errors

        with translate(f"remove container {cid[:12]}", where=self.where):
            try:
                self._api.remove_container(cid, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code != 409 or "already in progress" not in str(exc):
                    raise

    def labelled(self, **labels: str) -> list[Labelled]:
        """Every container (running or not) carrying the engine label and `labels`."""
        wanted = [f"{LABEL_ENGINE}=container"] + [f"{k}={v}" for k, v in labels.items()]
        with translate("list sandbox containers", where=self.where):
            found: list[dict[str, Any]] = self._api.containers(all=True, filters={"label": wanted})
        return [Labelled(str(c["Id"]), dict(c.get("Labels") or {})) for c in found]

    def import_image(self, tarball: Path, *, repository: str, tag: str) -> None:
        """`docker import` a root filesystem tarball as `repository:tag`."""
        with translate(f"import {tarball}", where=self.where):
            self._api.import_image(src=str(tarball), repository=repository, tag=tag)

    def build(
        self, context: Path, *, tag: str, buildargs: dict[str, str], labels: dict[str, str]
    ) -> Iterator[str]:
        """`docker build` `context` as `tag`, yielding the build's progress lines.

        Raises:
            EngineUnavailable: the build failed (the message carries the daemon's error).
        """
        with translate(f"build {tag}", where=self.where):
            stream = self._api.build(
                path=str(context),
                tag=tag,
                buildargs=buildargs,
                labels=labels,
                rm=True,
                forcerm=True,
                decode=True,
                pull=False,
                network_mode="none",
            )
            for chunk in stream:
                if "error" in chunk:
                    from .._errors import EngineUnavailable

                    detail = chunk.get("errorDetail") or chunk["error"]
                    raise EngineUnavailable(f"building {tag} failed: {json.dumps(detail)}")
                text = str(chunk.get("stream") or chunk.get("status") or "").rstrip()
                if text:
                    yield text


def _timestamp(value: Any) -> datetime | None:
    """A Docker RFC 3339 timestamp (nanoseconds, `Z`), or None for Go's zero time or junk."""
    if not isinstance(value, str) or value.startswith("0001-"):
        return None
    text = value.replace("Z", "+00:00")
    whole, dot, rest = text.partition(".")
    if dot:  # Python parses at most 6 fractional digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{whole}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _seconds_between(started: Any, finished: Any) -> float | None:
    """Seconds from `started` to `finished` (Docker timestamps); None when either is unknown."""
    begin, end = _timestamp(started), _timestamp(finished)
    if begin is None or end is None:
        return None
    return (end - begin).total_seconds()
