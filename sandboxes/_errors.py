"""The exceptions of `sandboxes`: infrastructure failures, never failures of the user's code.

SandboxError
├── EngineUnavailable   the engine cannot run anything (not set up, runtime missing)
├── EngineNotReady      the engine is still starting (first compile) and the wait ran out
├── EngineCrashed       the process hosting a guest died for a reason other than a limit
└── EngineBusy          every worker is busy and the queue is full; retry after a moment
"""

from __future__ import annotations


class SandboxError(Exception):
    """Root of every exception `sandboxes` raises."""


class EngineUnavailable(SandboxError):
    """The engine cannot run anything; the message says what to install or run."""


class EngineNotReady(SandboxError):
    """The engine is still preparing (e.g. compiling CPython-WASI) and the call gave up waiting.

    Attributes:
        waited_s: How long the call waited.
    """

    def __init__(self, message: str, *, waited_s: float) -> None:
        super().__init__(message)
        self.waited_s = waited_s


class EngineCrashed(SandboxError):
    """The host process of a guest died without a limit explaining it."""


class EngineBusy(SandboxError):
    """Every worker is busy and the queue is full.

    Attributes:
        retry_after_s: A suggested wait before retrying.
    """

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
