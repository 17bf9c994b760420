"""The server image and the sandbox image build on one base: the debootstrap root filesystem
the container engine imports (`python -m sandboxes.container base-image`), so a fresh machine
that prepared the sandbox image can build the server image with no registry."""

from __future__ import annotations

import json
import subprocess
import sys

from sandboxes.container._image import BASE_IMAGE
from tests.image.conftest import REPO, docker


def _layers(image: str) -> list[str]:
    return list(
        json.loads(docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", image))
    )


def test_base_image_names_the_imported_root_filesystem(server_image: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sandboxes.container", "base-image"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == BASE_IMAGE
    assert _layers(BASE_IMAGE)  # the daemon holds it


def test_the_server_and_redis_images_start_from_the_sandbox_images_base(server_image: str) -> None:
    base = _layers(BASE_IMAGE)
    for image in (server_image, "sandgate-redis:bookworm", "sandgate-python:latest"):
        assert _layers(image)[: len(base)] == base, f"{image} is not built on {BASE_IMAGE}"
