"""Builds the sandbox image without any registry: debootstrap, `docker import`, a thin build."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .._errors import EngineUnavailable
from ._docker import Docker
from ._spec import DEFAULT_IMAGE, LABEL_CONTEXT_SHA

logger = logging.getLogger("sandgate.container")

Progress = Callable[[str], None]

IMAGE_CONTEXT = Path(__file__).resolve().parents[1] / "images" / "python"
"""The build context: the Dockerfile and the interpreter server."""
GUEST_MODULES = Path(__file__).resolve().parents[1] / "guest"
"""Guest-side modules every engine installs before user code (`sandgate_egress.py`); the
build copies them into the context beside the server."""
BASE_IMAGE = "sandgate-rootfs:bookworm-pip"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
ROOTFS_PACKAGES = ("python3", "python3-pip")
"""pip too: code may `pip install` through the egress proxy when its policy allows the index."""
ROOTFS_TARBALL = f"{SUITE}-minbase-python3-pip.tar"
DEBOOTSTRAP_TIMEOUT_S = 1200.0


def default_cache_dir() -> Path:
    """sandgate's cache folder: `$SANDGATE_CACHE`, else `~/.cache/sandgate`."""
    if env := os.environ.get("SANDGATE_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sandgate"


def context_files() -> list[Path]:
    """The files of the build context: the image folder's and the guest modules."""
    files = [p for p in sorted(IMAGE_CONTEXT.iterdir()) if p.is_file()]
    return [*files, GUEST_MODULES / "sandgate_egress.py"]


def context_sha256() -> str:
    """The hash of this checkout's build context (Dockerfile, interpreter server, guest
    modules); images built by `build_image_offline` carry it as a label, so a changed context
    is rebuilt."""
    digest = hashlib.sha256()
    for path in context_files():
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def image_is_current(docker: Docker, tag: str) -> bool:
    """Whether `tag` exists and was built from this checkout's build context."""
    labels = docker.image_labels(tag)
    return labels is not None and labels.get(LABEL_CONTEXT_SHA) == context_sha256()


def rootfs_tarball(
    cache_dir: Path, *, mirror: str = DEFAULT_MIRROR, progress: Progress | None = None
) -> Path:
    """The cached root filesystem tarball (Debian minbase + python3), made once with debootstrap.

    Raises:
        EngineUnavailable: debootstrap is missing, not run as root, or failed.
    """
    say = progress or (lambda line: logger.info("%s", line))
    target = cache_dir / "images" / ROOTFS_TARBALL
    if target.is_file():
        say(f"image: using the cached root filesystem {target}")
        return target
    debootstrap = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None
    )
    if debootstrap is None or os.geteuid() != 0:
        raise EngineUnavailable(
            "building the sandbox image offline needs root and debootstrap "
            f"(root: {os.geteuid() == 0}, debootstrap: {debootstrap or 'missing'}); "
            "run `sudo bash scripts/docker-setup.sh`"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = target.parent / "rootfs.partial"
    shutil.rmtree(folder, ignore_errors=True)
    packages = ",".join(ROOTFS_PACKAGES)
    say(f"image: debootstrap {SUITE} (minbase + {packages}) into {folder}; about a minute")
    began = time.monotonic()
    include = f"--include={packages}"
    command = [debootstrap, "--variant=minbase", include, SUITE, str(folder), mirror]
    _stream(command, say, prefix="debootstrap: ")
    say(f"image: debootstrap done in {time.monotonic() - began:.0f} s; packing {target.name}")
    partial = target.with_suffix(".partial")
    _stream(["tar", "--numeric-owner", "-C", str(folder), "-cf", str(partial), "."], say, "tar: ")
    os.replace(partial, target)
    shutil.rmtree(folder, ignore_errors=True)
    return target


def _stream(command: list[str], say: Progress, prefix: str) -> None:
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None
        tail: list[str] = []
        for line in process.stdout:
            line = line.rstrip()
            tail = [*tail[-19:], line]
            if line:
                say(prefix + line)
        code = process.wait(timeout=DEBOOTSTRAP_TIMEOUT_S)
    if code != 0:
        raise EngineUnavailable(
            f"{command[0]} failed with status {code}; last lines:\n" + "\n".join(tail)
        )


def build_image_offline(
    tag: str = DEFAULT_IMAGE,
    *,
    progress: Progress | None = None,
    docker_host: str | None = None,
    cache_dir: Path | None = None,
    mirror: str = DEFAULT_MIRROR,
    force: bool = False,
) -> str:
    """Build the sandbox image with no registry: a debootstrap root filesystem (cached as a
    tarball), `docker import`ed as `BASE_IMAGE`, then the repository's Dockerfile
    built on top of it (`--build-arg BASE=...`, no network).

    Args:
        tag: The image to build.
        progress: Called with each line of progress.
        docker_host: The daemon's address (default: `$DOCKER_HOST` or the local socket).
        cache_dir: Where the root filesystem tarball is kept (default: `default_cache_dir()`).
        mirror: The Debian mirror debootstrap downloads from.
        force: Rebuild even when `tag` is current, and re-import the base image.

    Returns:
        The image tag.

    Raises:
        EngineUnavailable: no daemon, no root/debootstrap, or a step failed.
    """
    say = progress or (lambda line: logger.info("%s", line))
    docker = Docker.connect(docker_host)
    try:
        if not force and image_is_current(docker, tag):
            say(f"image: {tag} is current")
            return tag
        _import_base(docker, say, cache_dir=cache_dir, mirror=mirror, force=force)
        say(f"image: building {tag} from {IMAGE_CONTEXT} on {BASE_IMAGE}")
        previous = docker.image_id(tag)
        with tempfile.TemporaryDirectory(prefix="sandgate-image-") as context:
            for path in context_files():
                shutil.copy2(path, Path(context) / path.name)
            for line in docker.build(
                Path(context),
                tag=tag,
                buildargs={"BASE": BASE_IMAGE},
                labels={LABEL_CONTEXT_SHA: context_sha256()},
            ):
                say(f"build: {line}")
        replaced = previous is not None and previous != docker.image_id(tag)
        if replaced and previous is not None and docker.remove_image(previous):
            say(f"image: removed the previous build {previous[:19]}")  # unless still in use
        say(f"image: {tag} is ready")
        return tag
    finally:
        docker.close()


def ensure_base_image(
    *,
    progress: Progress | None = None,
    docker_host: str | None = None,
    cache_dir: Path | None = None,
    mirror: str = DEFAULT_MIRROR,
) -> str:
    """The base every sandgate image builds on (`BASE_IMAGE`, the debootstrap root
    filesystem), imported when the daemon lacks it (debootstrap runs once; its tarball is
    cached). Returns its tag. The server image's build (`scripts/server-image.sh`) asks for
    it here, so both images name one base.

    Raises:
        EngineUnavailable: no daemon, no root/debootstrap, or a step failed.
    """
    say = progress or (lambda line: logger.info("%s", line))
    docker = Docker.connect(docker_host)
    try:
        _import_base(docker, say, cache_dir=cache_dir, mirror=mirror, force=False)
        return BASE_IMAGE
    finally:
        docker.close()


def _import_base(
    docker: Docker, say: Progress, *, cache_dir: Path | None, mirror: str, force: bool
) -> None:
    if force or docker.image_labels(BASE_IMAGE) is None:
        tarball = rootfs_tarball(cache_dir or default_cache_dir(), mirror=mirror, progress=say)
        say(f"image: docker import {tarball.name} as {BASE_IMAGE}")
        repository, _, base_tag = BASE_IMAGE.partition(":")
        docker.import_image(tarball, repository=repository, tag=base_tag)
