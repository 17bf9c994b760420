"""The exceptions of `runner`: what a caller did wrong, or what the server could not do.

RunnerError
├── ArgumentError      a tool argument is missing, extra, of the wrong type or refused
│   └── NotFound       it names a file (a resource) that does not exist
├── UnknownTool        no tool of that name is served
├── ServerLimit        the call would take the server past one of its own limits (`server:`)
└── SetupError         the server cannot start as configured (bad policy path, no engine)
"""

from __future__ import annotations


class RunnerError(Exception):
    """Root of every exception `runner` raises."""


class ArgumentError(RunnerError):
    """A tool argument is wrong.

    Attributes:
        argument: The argument's name.
        expected: What was expected, in words.
        got: What came, in words (never the whole value when it is large).
    """

    def __init__(self, argument: str, expected: str, got: str, *, hint: str = "") -> None:
        message = f"argument '{argument}': expected {expected}, got {got}"
        if hint:
            message += f"; {hint}"
        super().__init__(message)
        self.argument = argument
        self.expected = expected
        self.got = got


class NotFound(ArgumentError):
    """An argument names a file (an MCP resource) that does not exist: `got` is the name."""


class UnknownTool(RunnerError):
    """No tool of that name is served.

    Attributes:
        name: The name the client asked for.
        available: The tools this server serves to that client.
    """

    def __init__(self, name: str, available: list[str]) -> None:
        super().__init__(
            f"unknown tool '{name}'; this server serves: {', '.join(sorted(available))}"
        )
        self.name = name
        self.available = available


class ServerLimit(RunnerError):
    """A call would take the server past one of its own limits (the policy's `server:` section).

    Attributes:
        setting: The `server:` setting, e.g. `max_sessions_per_grant`.
        limit: Its value.
        value: What the call would have needed or reached (same unit as `limit`).
    """

    def __init__(self, setting: str, limit: float, value: float, message: str) -> None:
        super().__init__(message)
        self.setting = setting
        self.limit = limit
        self.value = value

    @property
    def rule(self) -> str:
        """The rule the refusal is audited under: `/server/<setting>`."""
        return f"/server/{self.setting}"


class SetupError(RunnerError):
    """The server cannot start as configured; the message says what to change.

    Attributes:
        setting: The setting at fault when it is one (`server.mounts[0].path`), else "".
    """

    def __init__(self, message: str, *, setting: str = "") -> None:
        super().__init__(message)
        self.setting = setting
