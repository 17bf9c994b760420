"""The one place where docker, requests, urllib3 and socket exceptions become `sandboxes` ones.

Foreign exception                                   → raised as
docker.errors.ImageNotFound                          EngineUnavailable (build the image)
docker.errors.NotFound                               EngineCrashed (the container vanished)
docker.errors.APIError naming an unknown runtime     EngineUnavailable (register runsc)
docker.errors.APIError (any other)                   EngineCrashed
docker.errors.BuildError, ImageLoadError             EngineUnavailable (image could not be built)
docker.errors.ContainerError, StreamParseError       EngineCrashed
docker.errors.DockerException (client config, no daemon) EngineUnavailable
requests ConnectionError, urllib3 NewConnectionError EngineUnavailable (start dockerd)
requests/urllib3 timeouts                            EngineCrashed (the daemon did not answer)
requests bad-address errors (InvalidURL…)            EngineUnavailable (fix docker_host)
requests/urllib3/http.client other errors            EngineCrashed
PermissionError                                      EngineUnavailable (no access to the socket)
FileNotFoundError, ConnectionRefusedError            EngineUnavailable (start dockerd)
OSError (any other: reset, broken pipe…)             EngineCrashed

One exception of the engine's own, `SandboxGone(EngineCrashed)`: the container handed to a run
was dead before the request reached it, so the user's code never ran. The engine retries such
a run once on a fresh container; when it escapes, the runner treats it like any
`EngineCrashed` (an infrastructure failure, not counted).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.client import HTTPException

from .._errors import EngineCrashed, EngineUnavailable, SandboxError

SETUP_HINT = "run `sudo bash scripts/docker-setup.sh` (installs Docker and gVisor, starts dockerd)"
IN_IMAGE_ENV = "SANDGATE_IN_IMAGE"
"""Set to 1 by the server image's Dockerfile: sandgate runs in its own container, where no
dockerd runs and the setup script does not apply."""
IN_IMAGE_HINT = (
    "sandgate runs in its server image, which has no Docker of its own: mount the host's Docker "
    'socket (`docker run -v /var/run/docker.sock:/var/run/docker.sock --group-add "$(stat -c %g '
    '/var/run/docker.sock)"`, plus a state folder at the same path on the host and inside). '
    "Mounting the socket gives the server root on the host: do it only on a host dedicated to "
    "sandgate (README, The server image)"
)


def daemon_hint() -> str:
    """What to do when no Docker daemon answers: run the setup script, or, inside the server
    image, mount the host's socket."""
    return IN_IMAGE_HINT if os.environ.get(IN_IMAGE_ENV) == "1" else SETUP_HINT


Rule = tuple[type[BaseException], str]
"""A foreign exception class and the rule name that maps it."""


class SandboxGone(EngineCrashed):
    """The container handed to a run was dead or gone before the request reached it (it died
    while idle, was removed, or dockerd restarted): the user's code never ran.

    Attributes:
        container_id: The container's id.
        evidence: How the engine knows the code never ran, in words.
    """

    def __init__(self, container_id: str, evidence: str) -> None:
        super().__init__(
            f"the sandbox container {container_id[:12]} was dead before the run began "
            f"({evidence}); dockerd may have restarted, or something outside sandgate killed it"
        )
        self.container_id = container_id
        self.evidence = evidence


def _rules() -> list[Rule]:
    """Foreign classes, most specific first; the first `isinstance` match decides."""
    import docker.errors as de
    import requests.exceptions as re
    import urllib3.exceptions as ue

    return [
        (de.ImageNotFound, "image-missing"),
        (de.NotFound, "vanished"),
        (de.APIError, "api"),
        (de.BuildError, "image-build"),
        (de.ImageLoadError, "image-build"),
        (de.ContainerError, "crashed"),
        (de.StreamParseError, "crashed"),
        (de.DockerException, "unreachable"),
        (re.ConnectTimeout, "unreachable"),
        (re.Timeout, "timeout"),
        (re.ConnectionError, "unreachable"),
        (re.URLRequired, "address"),
        (re.MissingSchema, "address"),
        (re.InvalidSchema, "address"),
        (re.InvalidURL, "address"),
        (re.InvalidProxyURL, "address"),
        (re.RequestException, "crashed"),
        (ue.NewConnectionError, "unreachable"),
        (ue.ConnectTimeoutError, "unreachable"),
        (ue.TimeoutError, "timeout"),
        (ue.LocationValueError, "address"),
        (ue.ProxySchemeUnsupported, "address"),
        (ue.HTTPError, "crashed"),
        (HTTPException, "crashed"),
        (PermissionError, "permission"),
        (FileNotFoundError, "unreachable"),
        (ConnectionRefusedError, "unreachable"),
        (OSError, "crashed"),
    ]


def rule_for(exc_type: type[BaseException]) -> str | None:
    """The name of the rule that maps `exc_type`, or None when none does."""
    for cls, rule in _rules():
        if issubclass(exc_type, cls):
            return rule
    return None


def _mapped(exc: BaseException, rule: str, action: str, where: str) -> SandboxError:
    said = f"{type(exc).__name__}: {_text(exc)}"
    messages: dict[str, Callable[[], SandboxError]] = {
        "image-missing": lambda: EngineUnavailable(
            f"could not {action}: the sandbox image is missing ({said}); build it with "
            "`sudo bash scripts/docker-setup.sh` (offline) or "
            "`docker build -t sandgate-python:latest sandboxes/images/python`"
        ),
        "vanished": lambda: EngineCrashed(
            f"could not {action}: the container is gone ({said}); something outside sandgate "
            "removed it, or dockerd restarted"
        ),
        "image-build": lambda: EngineUnavailable(
            f"could not {action}: the image could not be built ({said}); see the build output"
        ),
        "crashed": lambda: EngineCrashed(f"could not {action} on {where}: {said}"),
        "timeout": lambda: EngineCrashed(
            f"could not {action}: the Docker daemon at {where} did not answer in time ({said})"
        ),
        "unreachable": lambda: EngineUnavailable(
            f"could not {action}: no Docker daemon answers at {where} ({said}); {daemon_hint()}"
        ),
        "address": lambda: EngineUnavailable(
            f"could not {action}: {where} is not a Docker daemon address ({said}); pass "
            "docker_host like unix:///var/run/docker.sock or tcp://127.0.0.1:2375"
        ),
        "permission": lambda: EngineUnavailable(
            f"could not {action}: permission denied on the Docker socket at {where} ({said}); "
            "run sandgate as root or as a member of the `docker` group"
        ),
    }
    if rule == "api":
        text = _text(exc).lower()
        if "runtime" in text and ("unknown" in text or "not found" in text or "invalid" in text):
            return EngineUnavailable(
                f"could not {action}: dockerd does not know that runtime ({said}); {SETUP_HINT} "
                "(it registers runsc in /etc/docker/daemon.json)"
            )
        return EngineCrashed(f"could not {action}: the Docker daemon refused ({said})")
    return messages[rule]()


def _text(exc: BaseException) -> str:
    """`str(exc)`, or its arguments when the foreign class cannot describe itself."""
    try:
        return str(exc)
    except Exception:
        return repr(exc.args)


def translate_exception(exc: BaseException, *, action: str, where: str) -> SandboxError | None:
    """The `sandboxes` exception for a foreign one, or None when `exc` is not foreign."""
    if isinstance(exc, SandboxError):
        return None
    rule = rule_for(type(exc))
    return None if rule is None else _mapped(exc, rule, action, where)


@contextmanager
def translate(action: str, *, where: str) -> Iterator[None]:
    """Run a block of SDK or socket calls, turning foreign exceptions into `sandboxes` ones.

    Args:
        action: What the block does, in words ("start container 1a2b…"), for the message.
        where: The daemon's address, for the message.

    Raises:
        EngineUnavailable: the daemon, the image or a runtime is missing, or unreachable.
        EngineCrashed: the daemon or a container failed while in use.
    """
    try:
        yield
    except Exception as exc:
        mapped = translate_exception(exc, action=action, where=where)
        if mapped is None:
            raise
        raise mapped from exc
