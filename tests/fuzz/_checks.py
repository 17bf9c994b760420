"""What every answer to a malformed input must satisfy: a tool result (or a JSON-RPC error),
no traceback of the server's own code, no internal error for a caller's mistake."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types

from tests.results import text_of

REPO_ROOT = Path(__file__).resolve().parents[2]
TRACEBACK = "Traceback (most recent call last)"
INTERNAL_ERROR = "an internal error, logged on the server"
"""The tool boundary's answer to an unexpected exception: a bug when the input was the cause."""
_FRAME = re.compile(r'File "([^"]+)"')
_HOST_PREFIXES = tuple({str(REPO_ROOT), sys.prefix, sys.base_prefix, sys.exec_prefix})
_INTERNAL_MARKS = ("site-packages", "/runner/", "/policies/", "/sandboxes/", "errors.pydantic.dev")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def internal_leaks(text: str) -> list[str]:
    """What in `text` shows the server's own internals: frames of a host traceback (the
    server's files, its Python, site-packages), or pydantic's own error text."""
    found = [mark for mark in ("errors.pydantic.dev",) if mark in text]
    if TRACEBACK in text or _FRAME.search(text):
        for path in _FRAME.findall(text):
            if path.startswith(_HOST_PREFIXES) or any(m in path for m in _INTERNAL_MARKS):
                found.append(path)
    return found


def assert_clean_text(text: str) -> None:
    """No internals in an answer's text."""
    leaks = internal_leaks(text)
    assert not leaks, f"the answer shows the server's internals {leaks}: {text[:2000]!r}"


def assert_clean_result(result: object) -> None:
    """A tool result that shows no internals and is not an internal error."""
    assert isinstance(result, types.CallToolResult), f"not a tool result: {result!r}"
    strings = [text_of(result), *_strings(result.structured_content)]
    for text in strings:
        assert_clean_text(text)
        assert INTERNAL_ERROR not in text, f"a caller's input caused an internal error: {text!r}"
