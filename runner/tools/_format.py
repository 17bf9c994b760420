"""Turn run results, refusals and errors into MCP tool results, in each upstream tool's words."""

from __future__ import annotations

import base64
from typing import Any, Literal

import mcp_types as types

from sandboxes import Image, NetworkUsage, RunResult

from .._mounts import WORKSPACE_GUEST_PATH
from ._fit import SavedOutput, Shown
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


def outcome_result(
    outcome: Outcome, *, structured: bool, run_shaped: bool = False
) -> types.CallToolResult:
    """The MCP result of every outcome but a run (`Ran` is worded by each tool).

    Args:
        structured: Give refusals and busy answers structured content.
        run_shaped: Give refusals, busy answers and errors `run_code`'s structured content
            (the keys of a run, `RUN_CODE_OUTPUT_SCHEMA`, with `rule` and `reason`).
    """
    if run_shaped and isinstance(outcome, Refused | Busy | Invalid | Failed):
        return not_run_result(outcome)
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


def _traceback(result: RunResult) -> str:
    """`stderr` for a text that already starts with the error line: without that line at its
    end (a syntax error or traceback would otherwise print it twice)."""
    text = result.stderr
    if result.status == "error" and result.error:
        body = text.rstrip("\n")
        if body == result.error or body.endswith("\n" + result.error):
            return body[: -len(result.error)]
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
        if traceback := _traceback(result):
            text += "\n" + traceback
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


RUN_CODE_STATUSES = (
    "ok",
    "error",
    "timeout",
    "memory",
    "output_limit",
    "killed",
    "denied",
    "busy",
    "invalid",
    "failed",
)
"""Every `status` of `run_code`: how the run ended, or why nothing ran (`denied` by the policy,
`busy` server, `invalid` arguments, `failed` server)."""

_TEXT = {"type": "string"}
_TEXTS = {"type": "array", "items": _TEXT}
_MAYBE_TEXT = {"type": ["string", "null"]}
RUN_CODE_OUTPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": list(RUN_CODE_STATUSES)},
        "stdout": _TEXT,
        "stderr": _TEXT,
        "exit_code": {"type": ["integer", "null"]},
        "error": _MAYBE_TEXT,
        "limit": _MAYBE_TEXT,
        "truncated": _TEXTS,
        "images": _TEXTS,
        "files_written": _TEXTS,
        "state": {"type": ["string", "null"], "enum": ["fresh", "new", "kept", "lost", None]},
        "state_note": _MAYBE_TEXT,
        "usage": {
            "type": "object",
            "properties": {
                "wall_ms": {"type": "number"},
                "cpu_ms": {"type": ["number", "null"]},
                "peak_memory_bytes": {"type": ["integer", "null"]},
                "fuel": {"type": ["integer", "null"]},
                "output_bytes": {"type": "integer"},
                "network": {
                    "type": ["object", "null"],
                    "description": "What the run did through the egress proxy (null: the "
                    "route has no network): bytes each way, connections made, each refused "
                    "connection (its refusal), and whether the byte quota cut a transfer.",
                    "properties": {
                        "bytes_up": {"type": "integer"},
                        "bytes_down": {"type": "integer"},
                        "connections": {"type": "integer"},
                        "refused": _TEXTS,
                        "cut": {"type": "boolean"},
                    },
                    "required": ["bytes_up", "bytes_down", "connections", "refused", "cut"],
                },
            },
            "required": [
                "wall_ms",
                "cpu_ms",
                "peak_memory_bytes",
                "fuel",
                "output_bytes",
                "network",
            ],
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "stream": {"type": "string", "enum": ["stdout", "stderr"]},
                    "path": _TEXT,
                    "uri": _TEXT,
                    "size_bytes": {"type": "integer"},
                },
                "required": ["stream", "path", "uri", "size_bytes"],
            },
        },
        "notes": _TEXTS,
        "rule": _MAYBE_TEXT,
        "reason": _MAYBE_TEXT,
        "retry_after_s": {"type": ["number", "null"]},
    },
    "required": [
        "status",
        "stdout",
        "stderr",
        "exit_code",
        "error",
        "limit",
        "truncated",
        "images",
        "files_written",
        "state",
        "state_note",
        "usage",
        "outputs",
        "notes",
        "rule",
        "reason",
        "retry_after_s",
    ],
}
"""`run_code`'s `outputSchema`: every status, run or not, has every key (`outputs`: streams
cut to fit the result, saved whole; `notes`: what was cut, scaled or left out and why)."""


def structured(result: RunResult, shown: Shown | None = None) -> dict[str, Any]:
    """The structured content of `run_code` for a run."""
    usage = result.usage
    shown = shown or Shown()
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
            "network": _network(usage.network),
        },
        "outputs": [_saved(saved) for saved in shown.saved],
        "notes": list(shown.notes),
        "rule": None,
        "reason": None,
        "retry_after_s": None,
    }


def _network(network: NetworkUsage | None) -> dict[str, Any] | None:
    if network is None:
        return None
    return {
        "bytes_up": network.bytes_up,
        "bytes_down": network.bytes_down,
        "connections": network.connections,
        "refused": list(network.refused),
        "cut": network.cut,
    }


def _saved(saved: SavedOutput) -> dict[str, Any]:
    return {
        "stream": saved.stream,
        "path": saved.path,
        "uri": saved.uri,
        "size_bytes": saved.size_bytes,
    }


def not_run(
    status: str, reason: str, *, rule: str | None = None, retry_after_s: float | None = None
) -> dict[str, Any]:
    """The structured content of `run_code` when nothing ran: a run's keys, empty."""
    return {
        "status": status,
        "stdout": "",
        "stderr": "",
        "exit_code": None,
        "error": reason,
        "limit": None,
        "truncated": [],
        "images": [],
        "files_written": [],
        "state": None,
        "state_note": None,
        "usage": {
            "wall_ms": 0.0,
            "cpu_ms": None,
            "peak_memory_bytes": None,
            "fuel": None,
            "output_bytes": 0,
            "network": None,
        },
        "outputs": [],
        "notes": [],
        "rule": rule,
        "reason": reason,
        "retry_after_s": retry_after_s,
    }


def not_run_result(outcome: Refused | Busy | Invalid | Failed) -> types.CallToolResult:
    """`run_code`'s result when nothing ran, with the shape of a run's."""
    if isinstance(outcome, Refused):
        payload = not_run(
            "denied", outcome.reason, rule=outcome.rule, retry_after_s=outcome.retry_after_s
        )
        text = f"Error: denied by policy rule {outcome.rule}: {outcome.reason}"
    elif isinstance(outcome, Busy):
        payload = not_run("busy", outcome.reason, retry_after_s=outcome.retry_after_s)
        text = outcome.reason
    elif isinstance(outcome, Invalid):
        payload = not_run("invalid", outcome.reason, rule=outcome.rule)
        text = f"Error: {outcome.reason}"
    else:
        payload = not_run("failed", outcome.reason)
        text = outcome.reason
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=payload,
        is_error=True,
    )


def run_code_result(result: RunResult, shown: Shown | None = None) -> types.CallToolResult:
    """`run_code`'s result: structured content, a short text naming what it holds (the
    printed text is sent once, in the structured content), links to cut streams, images."""
    payload = structured(result, shown)
    return types.CallToolResult(
        content=[
            types.TextContent(type="text", text=run_code_summary(payload)),
            *_image_blocks(result),
        ],
        structured_content=payload,
        is_error=result.status != "ok",
    )


def run_code_summary(payload: dict[str, Any]) -> str:
    """One short paragraph on a run for clients that show only text: how it ended and where
    the rest is (stdout and stderr are in the structured content, not repeated here)."""
    status = payload["status"]
    parts = [f"status: {status}"]
    if payload["exit_code"] is not None:
        parts.append(f"exit code {payload['exit_code']}")
    if payload["state"] is not None:
        parts.append(f"state {payload['state']}")
    parts.append(f"{payload['usage']['wall_ms']:.0f} ms")
    lines = [", ".join(parts)]
    if payload["error"]:
        lines.append(f"error: {payload['error']}")
    if payload["limit"]:
        lines.append(f"stopped by: {payload['limit']}")
    sizes = {name: len(payload[name].encode("utf-8")) for name in ("stdout", "stderr")}
    lines.append(
        f"stdout: {sizes['stdout']} bytes, stderr: {sizes['stderr']} bytes (the text is in the "
        "structured content: stdout, stderr)"
    )
    network = payload["usage"]["network"]
    if network is not None:
        lines.append(
            f"network: {network['connections']} connection(s), {network['bytes_up']} bytes up, "
            f"{network['bytes_down']} bytes down"
            + (" (cut: egress byte quota exhausted)" if network["cut"] else "")
        )
    if payload["images"]:
        lines.append("images: " + ", ".join(payload["images"]))
    lines += [f"whole {o['stream']}: {o['path']} ({o['uri']})" for o in payload["outputs"]]
    lines += [f"note: {note}" for note in payload["notes"]]
    return "\n".join(lines)


def with_shown(result: types.CallToolResult, shown: Shown) -> types.CallToolResult:
    """`result` with a resource link per stream saved whole and, for text results, a line per
    note (structured results carry them in `outputs` and `notes`)."""
    if not shown.saved and not shown.notes:
        return result
    links: list[types.ContentBlock] = [
        types.ResourceLink(
            type="resource_link",
            uri=saved.uri,
            name=saved.path.rsplit("/", 1)[-1],
            title=f"The whole {saved.stream} of this run",
            description=f"{saved.size_bytes} bytes; code sees it at {saved.path}",
            mime_type="text/plain",
            size=saved.size_bytes,
        )
        for saved in shown.saved
    ]
    notes: list[types.ContentBlock] = []
    content = list(result.content)
    payload = result.structured_content
    if payload is not None and "outputs" in payload:  # run_code: in its own keys
        payload = {**payload, "outputs": [_saved(s) for s in shown.saved], "notes": [*shown.notes]}
        content[:1] = [types.TextContent(type="text", text=run_code_summary(payload))]
    elif shown.notes:
        text = "\n".join(f"sandgate: {note}" for note in shown.notes)
        notes.append(types.TextContent(type="text", text=text))
    return types.CallToolResult(
        content=[*content[:1], *notes, *links, *content[1:]],
        structured_content=payload,
        is_error=result.is_error,
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
    if traceback := _traceback(result).rstrip("\n"):
        parts.append("[stderr]\n" + traceback)
    if result.status == "ok" and result.value_found and result.value is not None:
        parts.append(f"Result: {result.value}")
    if result.images:
        parts.append("images: " + ", ".join(guest_path(i.path) for i in result.images))
    text = "\n".join(parts) if parts else "(no output)"
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text), *_image_blocks(result)],
        is_error=result.status != "ok",
    )
