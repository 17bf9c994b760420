"""Turn run results, refusals and errors into MCP tool results, in each upstream tool's words."""

from __future__ import annotations

import base64
import json
from typing import Any, Literal

import mcp_types as types

from sandboxes import Image, RunResult

from .._mounts import WORKSPACE_GUEST_PATH
from ._outcome import Busy, Failed, Invalid, Outcome, Refused, Told

Family = Literal["run_python_code", "save_to_file_and_run", "run_python_file"]

_ERROR_PREFIX: dict[Family, str] = {
    "run_python_code": "Error running python code",
    "save_to_file_and_run": "Error saving and running code",
    "run_python_file": "Error running file",
}
_STOPPED = {
    "timeout": "the time limit",
    "memory": "the memory limit",
    "output_limit": "the output limit",
    "killed": "the sandbox",
}


def text_result(text: str, *, is_error: bool = False) -> types.CallToolResult:
    """A result holding one text block."""
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], is_error=is_error
    )


def error_result(text: str) -> types.CallToolResult:
    """An error result (`isError`) holding one text block."""
    return text_result(text, is_error=True)


def denied_result(
    rule: str, reason: str, *, structured: bool = False, retry_after_s: float | None = None
) -> types.CallToolResult:
    """A call the policy refused: names the deciding rule and its reason (and, for a rate
    limit, when the call would fit again)."""
    text = f"Error: denied by policy rule {rule}: {reason}"
    if not structured:
        return error_result(text)
    payload: dict[str, Any] = {"status": "denied", "rule": rule, "reason": reason}
    if retry_after_s is not None:
        payload["retry_after_s"] = retry_after_s
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=payload,
        is_error=True,
    )


def busy_result(text: str, retry_after_s: float, *, structured: bool) -> types.CallToolResult:
    """The server had no room for the run; nothing was counted. Retry after a moment."""
    if not structured:
        return error_result(text)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={"status": "busy", "retry_after_s": retry_after_s, "reason": text},
        is_error=True,
    )


def outcome_result(outcome: Outcome, *, structured: bool) -> types.CallToolResult:
    """The MCP result of every outcome but a run (`Ran` is worded by each tool).

    Args:
        structured: Give refusals and busy answers structured content (`run_code`).
    """
    if isinstance(outcome, Told):
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=outcome.text), *_blocks(outcome.images)],
            structured_content=outcome.data,
            is_error=outcome.is_error,
        )
    if isinstance(outcome, Refused):
        return denied_result(
            outcome.rule,
            outcome.reason,
            structured=structured,
            retry_after_s=outcome.retry_after_s,
        )
    if isinstance(outcome, Busy):
        return busy_result(outcome.reason, outcome.retry_after_s, structured=structured)
    if isinstance(outcome, Invalid):
        return error_result(f"Error: {outcome.reason}")
    if isinstance(outcome, Failed):
        return error_result(outcome.reason)
    raise AssertionError(f"a run is worded by its tool: {outcome!r}")


def _blocks(images: tuple[Image, ...]) -> list[types.ContentBlock]:
    return [
        types.ImageContent(
            type="image", data=base64.b64encode(img.data).decode("ascii"), mime_type=img.mime_type
        )
        for img in images
    ]


def _image_blocks(result: RunResult) -> list[types.ContentBlock]:
    return _blocks(result.images)


def _images_line(result: RunResult) -> str:
    if not result.images:
        return ""
    return "\n\nimages: " + ", ".join(img.path for img in result.images)


def _printed(result: RunResult) -> str:
    text = result.stdout
    if result.stderr:
        text += ("\n" if text and not text.endswith("\n") else "") + "[stderr]\n" + result.stderr
    return text


def _stopped_text(result: RunResult) -> str:
    what = _STOPPED.get(result.status, "a limit")
    text = f"Error: the code was stopped by {what}"
    if result.limit:
        text += f" ({result.limit})"
    text += "."
    printed = _printed(result)
    if printed:
        text += "\n--- output before it stopped ---\n" + printed
    return text


def python_result(
    family: Family, result: RunResult, *, variable: str | None, label: str
) -> types.CallToolResult:
    """The text result of the Python Code Runner tools, as upstream words it.

    Args:
        family: Which upstream tool's wording to use.
        result: How the run ended.
        variable: The `variable_to_return` asked for, if any.
        label: What ran, for the success message (`python code` or the file name).
    """
    blocks = _image_blocks(result)
    if result.status == "error":
        text = f"{_ERROR_PREFIX[family]}: {result.error or f'exit status {result.exit_code}'}"
        if result.stderr:
            text += "\n" + result.stderr
        if result.stdout:
            text += "\n--- output before the error ---\n" + result.stdout
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text + _images_line(result)), *blocks],
            is_error=True,
        )
    if result.status != "ok":
        return types.CallToolResult(
            content=[
                types.TextContent(type="text", text=_stopped_text(result) + _images_line(result)),
                *blocks,
            ],
            is_error=True,
        )
    if variable:
        text = (
            result.value
            if result.value_found and result.value is not None
            else (f"Variable {variable} not found")
        )
    else:
        printed = _printed(result)
        if family == "run_python_code":
            text = printed if printed else "successfully ran python code"
        else:
            text = f"successfully ran {label}" + (f"\n{printed}" if printed else "")
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text + _images_line(result)), *blocks]
    )


def structured(result: RunResult) -> dict[str, Any]:
    """The structured content of `run_code`."""
    usage = result.usage
    return {
        "status": result.status,
        "stdout": result.stdout,
        "stderr": result.stderr,
        "exit_code": result.exit_code,
        "error": result.error,
        "limit": result.limit,
        "truncated": list(result.truncated),
        "images": [img.path for img in result.images],
        "files_written": list(result.files_written),
        "state": result.state,
        "state_note": result.state_note,
        "usage": {
            "wall_ms": round(usage.wall_ms, 3),
            "cpu_ms": None if usage.cpu_ms is None else round(usage.cpu_ms, 3),
            "peak_memory_bytes": usage.peak_memory_bytes,
            "fuel": usage.fuel,
            "output_bytes": usage.output_bytes,
        },
    }


def run_code_result(result: RunResult) -> types.CallToolResult:
    """`run_code`'s result: structured content, its JSON as text, and image blocks."""
    payload = structured(result)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=json.dumps(payload)), *_image_blocks(result)],
        structured_content=payload,
        is_error=result.status != "ok",
    )


def guest_path(path: str) -> str:
    """Where code sees a file the run wrote: workspace-relative paths under `/workspace`;
    files in an operator mount come as their guest path (`/mnt/NAME/…`) already."""
    return path if path.startswith("/") else f"{WORKSPACE_GUEST_PATH}/{path}"


def execute_result(result: RunResult) -> types.CallToolResult:
    """`pyodide_execute`'s result: output, the final expression's value, images."""
    parts: list[str] = []
    if result.status == "error":
        parts.append(f"Error: {result.error or f'exit status {result.exit_code}'}")
    elif result.status != "ok":
        parts.append(f"Error: the code was stopped by {result.status} ({result.limit})")
    if result.stdout:
        parts.append(result.stdout.rstrip("\n"))
    if result.stderr:
        parts.append("[stderr]\n" + result.stderr.rstrip("\n"))
    if result.status == "ok" and result.value_found and result.value is not None:
        parts.append(f"Result: {result.value}")
    if result.images:
        parts.append("images: " + ", ".join(guest_path(i.path) for i in result.images))
    text = "\n".join(parts) if parts else "(no output)"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text), *_image_blocks(result)],
        is_error=result.status != "ok",
    )
