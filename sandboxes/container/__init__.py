"""The `container` engine: single-use Docker containers (runc or gVisor) from a warm pool, and
one live interpreter container per persistent session."""

from ._engine import DEFAULT_IDLE_S, DEFAULT_POOL_SIZE, ContainerEngine
from ._image import IMAGE_CONTEXT, build_image_offline, context_sha256, image_is_current
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
    "context_sha256",
    "image_is_current",
]
