"""Hypothesis strategies for malformed input: JSON junk, tool arguments near and far from their
schemas, and raw JSON-RPC lines."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from runner import TOOLS

MIB = 1024 * 1024
MAX_HUGE_BYTES = 2 * MIB
"""The largest string any strategy makes (bounded: the fuzz suite must stay fast)."""

METHODS = (
    "initialize",
    "notifications/initialized",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "resources/subscribe",
    "prompts/list",
    "prompts/get",
    "logging/setLevel",
    "completion/complete",
    "server/discover",
    "tasks/get",
    "tasks/list",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
    "sampling/createMessage",
    "elicitation/create",
)

# -- text -----------------------------------------------------------------------------------

tricky_chars = st.sampled_from(
    ["\x00", "\n", "\r", "\t", "\\", '"', "'", "\u2028", "\ufeff", "\U0001f600", "é", "..", "/"]
)
small_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(tricky_chars, st.text(max_size=3)), max_size=12).map("".join),
)
lone_surrogates = st.lists(
    st.one_of(st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff"]), st.text(max_size=3)),
    min_size=1,
    max_size=6,
).map("".join)
"""Text no UTF-8 can carry (only an in-process caller can send it)."""


@st.composite
def huge_text(draw: st.DrawFn, max_bytes: int = MAX_HUGE_BYTES) -> str:
    """A long string (up to `max_bytes`), made by repeating a short piece."""
    size = draw(st.sampled_from([4096, 65536, 1 * MIB + 1, max_bytes]))
    piece = draw(st.sampled_from(["x", "é", "print(1)\n", "\U0001f600", "a\nb"]))
    return piece * max(1, size // len(piece.encode()))


def nested(depth: int, leaf: Any = 0, *, kind: str = "list") -> Any:
    """`leaf` wrapped `depth` times in lists (or single-key objects)."""
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


# -- JSON values ------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**400]),
    st.floats(allow_nan=False, allow_infinity=False),
    small_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(small_text, inner, max_size=4)
    ),
    max_leaves=12,
)
deep_values = st.builds(
    nested,
    st.integers(min_value=1, max_value=3000),
    json_scalars,
    kind=st.sampled_from(["list", "dict"]),
)
"""Deeply nested arrays and objects (deeper than any JSON parser on the wire takes)."""


def junk(*, wire: bool) -> st.SearchStrategy[Any]:
    """Any value a client might send in place of an argument; with `wire=False` also what only
    an in-process caller can send (lone surrogates, very deep nesting)."""
    parts = [json_values, huge_text(), st.builds(nested, st.integers(1, 150), json_scalars)]
    if not wire:
        parts += [lone_surrogates, deep_values, st.floats()]
    return st.one_of(*parts)


# -- tool arguments ---------------------------------------------------------------------------

FILE_NAMES = st.one_of(
    st.sampled_from(
        [
            "a.py",
            "dir/b.py",
            "../escape.py",
            "/etc/passwd",
            "a/../../b.py",
            "notes.txt",
            "",
            ".",
            "./.py",
            "x" * 300 + ".py",
            "nul\x00.py",
            "~/a.py",
            "C:\\a.py",
            "a.py/",
        ]
    ),
    small_text,
)
FIELD_HINTS: dict[str, st.SearchStrategy[Any]] = {
    "file_name": FILE_NAMES,
    "package_name": st.sampled_from(
        ["six", "six==1.16.0", "-r x", "git+https://x/y", "../pkg", "numpy[all]", "a" * 300]
    ),
    "package": st.sampled_from(["six", "six numpy", "", "  ", "--index-url x", "a==1 b==2"]),
    "mountName": st.sampled_from(["workspace", "data", "../", "", "x" * 500]),
    "imagePath": st.one_of(FILE_NAMES, st.sampled_from(["img.png", "../../etc/shadow"])),
    "code": st.sampled_from(["print(1)", "1/0", "x = 41 + 1", "", "import sys\nprint(sys.argv)"]),
}


def _valid_for(name: str, schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the type `schema` asks for (not necessarily sensible ones)."""
    if "anyOf" in schema:
        return st.one_of(*(_valid_for(name, s) for s in schema["anyOf"]))
    kind = schema.get("type")
    if kind == "string":
        return st.one_of(FIELD_HINTS.get(name, small_text), small_text)
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return st.one_of(st.integers(-5, 600), st.sampled_from([0, -1, 2**63, 10**400]))
    if kind == "number":
        return st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=1e6),
            st.sampled_from([0, -0.0, 1e-9, 1e308, 10**400]),
        )
    if kind == "null":
        return st.none()
    if kind == "object":
        return st.dictionaries(FILE_NAMES, st.one_of(small_text, json_values), max_size=4)
    return json_values


def arguments_for(schema: dict[str, Any], *, wire: bool) -> st.SearchStrategy[Any]:
    """Arguments for a tool with input `schema`: each known argument right-typed or junk, some
    required ones left out, unknown ones added; sometimes not an object at all."""
    properties: dict[str, Any] = schema.get("properties", {})
    value_of = {
        name: st.one_of(_valid_for(name, prop), _valid_for(name, prop), junk(wire=wire))
        for name, prop in properties.items()
    }
    unknown_names = st.one_of(small_text, lone_surrogates) if not wire else small_text
    shaped = st.builds(
        lambda known, extra: {**extra, **known},
        st.fixed_dictionaries({}, optional=value_of),
        st.dictionaries(unknown_names, junk(wire=wire), max_size=2),
    )
    return st.one_of(shaped, shaped, shaped, st.none(), st.just({}))


TOOL_NAMES = tuple(spec.name for spec in TOOLS)


@st.composite
def tool_calls(draw: st.DrawFn, *, wire: bool) -> tuple[str, Any]:
    """A (tool name, arguments) pair: mostly a served tool, sometimes a name nobody serves."""
    spec = draw(st.sampled_from(TOOLS))
    name = draw(
        st.one_of(
            st.just(spec.name),
            st.just(spec.name),
            st.just(spec.name),
            small_text,
            st.sampled_from([spec.name.upper(), spec.name + " ", "", "tools/call", "x" * 10000]),
            st.just(spec.name) if wire else lone_surrogates,
        )
    )
    return name, draw(arguments_for(spec.schema(), wire=wire))


# -- raw JSON-RPC lines -----------------------------------------------------------------------

request_ids = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53), st.text(min_size=1, max_size=12)
)
"""Ids a request may carry (JSON-RPC: a string or a number)."""
odd_ids = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(min_value=2**64, max_value=2**80),
)
"""Ids no request may carry."""


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object shaped more or less like a JSON-RPC message."""
    message: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        message["jsonrpc"] = draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2, None]))
    shape = draw(st.sampled_from(["request", "request", "notification", "response", "other"]))
    if shape in ("request", "notification", "other"):
        message["method"] = draw(st.one_of(st.sampled_from(METHODS), small_text, st.integers()))
    if shape == "request" or (shape == "notification" and draw(st.booleans())):
        message["id"] = draw(st.one_of(request_ids, request_ids, odd_ids, st.none()))
    if shape == "response":
        message["id"] = draw(st.one_of(request_ids, st.none()))
        if draw(st.booleans()):
            message["result"] = draw(json_values)
        else:
            message["error"] = draw(
                st.one_of(
                    st.fixed_dictionaries({"code": st.integers(), "message": small_text}),
                    json_values,
                )
            )
    if draw(st.booleans()):
        message["params"] = draw(params_for(message.get("method")))
    if shape == "other":
        message.update(draw(st.dictionaries(small_text, json_values, max_size=3)))
    return message


@st.composite
def params_for(draw: st.DrawFn, method: Any) -> Any:
    """Params for `method`: a plausible object for tools/call and friends, or junk."""
    if method == "tools/call" and draw(st.integers(0, 3)):
        name, arguments = draw(tool_calls(wire=True))
        params: dict[str, Any] = {"name": name}
        if draw(st.integers(0, 5)):
            params["arguments"] = arguments
        return params
    if method == "initialize" and draw(st.booleans()):
        return {
            "protocolVersion": draw(st.sampled_from(["2025-06-18", "2025-11-25", "1999-01-01"])),
            "capabilities": draw(st.one_of(st.just({}), json_values)),
            "clientInfo": draw(st.one_of(st.just({"name": "fuzz", "version": "0"}), json_values)),
        }
    if method == "resources/read" and draw(st.booleans()):
        uri = draw(st.sampled_from(["file:///etc/passwd", "file://x/../../", "nope", "", "file:"]))
        return {"uri": uri}
    return draw(st.one_of(json_values, st.dictionaries(small_text, json_values, max_size=3)))


def encode(value: Any) -> bytes:
    """`value` as compact JSON text (UTF-8)."""
    return json.dumps(value, separators=(",", ":")).encode()


@st.composite
def raw_lines(draw: st.DrawFn) -> bytes:
    """One line of bytes (no newline) a client might write: JSON-RPC-ish objects most often,
    else invalid JSON, invalid UTF-8, JSON that is no object, deep nesting, huge lines."""
    kind = draw(
        st.sampled_from(
            ["message"] * 6 + ["bytes", "utf8", "json", "deep", "huge", "batch", "truncated"]
        )
    )
    if kind == "message":
        return encode(draw(messages()))
    if kind == "bytes":
        return draw(st.binary(max_size=64)).replace(b"\n", b" ")
    if kind == "utf8":
        return (
            b'{"jsonrpc":"2.0","id":1,"method":"ping","x":"'
            + draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]))
            + b'"}'
        )
    if kind == "json":
        return encode(draw(json_values))
    if kind == "deep":
        depth = draw(st.integers(min_value=100, max_value=20000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        return opener * depth + b"0" + closer * depth
    if kind == "huge":
        text = draw(huge_text())
        return encode(
            {
                "jsonrpc": "2.0",
                "id": draw(request_ids),
                "method": "tools/call",
                "params": {"name": "run_code", "arguments": {"code": text}},
            }
        )
    if kind == "batch":
        return encode(draw(st.lists(messages(), max_size=3)))
    whole = encode(draw(messages()))
    return whole[: draw(st.integers(0, max(0, len(whole) - 1)))]
