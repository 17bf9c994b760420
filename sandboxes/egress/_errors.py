"""The exceptions of the egress proxy (under `sandboxes.SandboxError`).

SandboxError
└── EgressUnavailable   the proxy cannot start (mitmproxy's venv missing, it exited at start)
"""

from __future__ import annotations

from .._errors import SandboxError


class EgressUnavailable(SandboxError):
    """The egress proxy cannot run; the message says what to install or run."""
