"""The `container` engine: single-use Docker containers (runc or gVisor) from a warm pool."""

from ._engine import DEFAULT_IDLE_S, DEFAULT_POOL_SIZE, ContainerEngine
from ._image import IMAGE_CONTEXT, build_image_offline, image_is_current, server_sha256
from ._pool import PoolStats
from ._spec import DEFAULT_IMAGE, PROTOCOL, Runtime

__all__ = [
    "DEFAULT_IDLE_S",
    "DEFAULT_IMAGE",
    "DEFAULT_POOL_SIZE",
    "IMAGE_CONTEXT",
    "PROTOCOL",
    "ContainerEngine",
    "PoolStats",
    "Runtime",
    "build_image_offline",
    "image_is_current",
    "server_sha256",
]
