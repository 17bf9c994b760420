"""The exceptions of `sandboxes`: infrastructure failures, never failures of the user's code.

SandboxError
├── EngineUnavailable   the engine cannot run anything (not set up, runtime missing)
│   └── LayersMissing   a boundary layer it is required to have is not in force here
├── EngineNotReady      the engine is still starting (first compile) and the wait ran out
├── EngineCrashed       the process hosting a guest died for a reason other than a limit
├── EngineBusy          every worker is busy and the queue is full; retry after a moment
├── EngineClosed        the engine was closed (`aclose`); make a new one
└── CapabilityMissing   the plan needs what the engine cannot do (refused before it ran)
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


class EngineClosed(SandboxError):
    """The engine was closed with `aclose`; it does not restart. Make a new engine."""

    def __init__(self, engine: str) -> None:
        super().__init__(
            f"the {engine} engine is closed (aclose was called) and does not restart; "
            "make a new engine"
        )
        self.engine = engine


class CapabilityMissing(SandboxError):
    """The plan needs a capability the engine lacks; nothing ran.

    Attributes:
        engine: The engine's name.
        capabilities: What it lacks (`final_expression`, `mounts`, `network=mirror`, …).
    """

    def __init__(self, engine: str, capabilities: tuple[str, ...]) -> None:
        lacking = ", ".join(capabilities)
        super().__init__(
            f"the {engine} engine cannot do what this call needs ({lacking}); nothing ran. "
            "Route the tool to an engine that can (the policy's `engine:`), or drop what it "
            "lacks from the call or the policy"
        )
        self.engine = engine
        self.capabilities = capabilities


class StateImageRefused(SandboxError):
    """A saved interpreter cannot be resumed by this engine (another engine's or build's, or
    damaged); nothing changed.

    Attributes:
        engine: The engine's name.
        reason: Why, in words.
    """

    def __init__(self, engine: str, reason: str) -> None:
        super().__init__(
            f"the {engine} engine cannot resume this saved interpreter: {reason}. Restore it "
            "on the engine that saved it, or save the session again on this one"
        )
        self.engine = engine
        self.reason = reason


class LayersMissing(EngineUnavailable):
    """The engine refuses to start: boundary layers it is required to have are missing here.

    Attributes:
        engine: The engine's key (`pyodide`, `container:runc`, …).
        missing: The names of the required layers that are not in force.
    """

    def __init__(self, message: str, *, engine: str, missing: tuple[str, ...]) -> None:
        super().__init__(message)
        self.engine = engine
        self.missing = missing
