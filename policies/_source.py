"""Parse YAML/JSON policy text into data plus the line/column of every key path."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ._errors import Problem

KeyPath = tuple[str | int, ...]
Format = Literal["yaml", "json"]


class _Loader(yaml.SafeLoader):
    """Safe YAML loader where only true/false are booleans (so `mode: off` stays a string)."""


_Loader.yaml_implicit_resolvers = {
    first: [r for r in resolvers if r[0] != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


@dataclass(slots=True)
class Parsed:
    """Data of a policy text, where each key path sits, and problems found while parsing."""

    data: Any = None
    positions: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: KeyPath) -> tuple[int | None, int | None]:
        """Return (line, column) of `path`, or of its nearest ancestor that has a position."""
        for end in range(len(path), -1, -1):
            found = self.positions.get(path[:end])
            if found is not None:
                return found
        return None, None

    def problem(self, path: KeyPath, message: str) -> Problem:
        """Make a `Problem` at `path`, with its position in the text."""
        line, column = self.where(path)
        return Problem(path=format_path(path), message=message, line=line, column=column)


def format_path(path: KeyPath) -> str:
    """Render a key path as `tools.pip_install_package.limits[0].window`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_\-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{json.dumps(part)}]"
    return out


def guess_format(text: str, name: str | None) -> Format:
    """Pick JSON for `.json` files (or text starting with `{`), YAML otherwise."""
    if name is not None and name.lower().endswith(".json"):
        return "json"
    if name is not None and name.lower().endswith((".yaml", ".yml")):
        return "yaml"
    return "json" if text.lstrip().startswith("{") else "yaml"


def parse(text: str, fmt: Format) -> Parsed:
    """Parse `text`; syntax errors and duplicate keys become `problems`, never exceptions."""
    parsed = Parsed()
    if fmt == "json":
        try:
            parsed.data = json.loads(text)
        except json.JSONDecodeError as exc:
            parsed.problems.append(Problem("", f"invalid JSON: {exc.msg}", exc.lineno, exc.colno))
            return parsed
        # JSON has no tabs inside tokens, so spaces keep every column where it was.
        text = text.replace("\t", " ")
    try:
        node = yaml.compose(text, Loader=_Loader)
        if fmt == "yaml":
            parsed.data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
        detail = getattr(exc, "problem", None) or str(exc)
        if fmt == "yaml":
            parsed.problems.append(Problem("", f"invalid YAML: {detail}", line, column))
        return parsed
    if node is not None:
        parsed.positions[()] = (node.start_mark.line + 1, node.start_mark.column + 1)
        _walk(node, (), parsed)
    return parsed


def _walk(node: yaml.Node, path: KeyPath, parsed: Parsed) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node)
            child = (*path, key)
            position = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if key in seen:
                parsed.problems.append(
                    Problem(
                        format_path(child),
                        f"duplicate key {key!r}: keep only one of "
                        "them (a later one would silently replace the earlier)",
                        *position,
                    )
                )
            seen.add(key)
            parsed.positions.setdefault(child, position)
            _walk(value_node, child, parsed)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            parsed.positions.setdefault(
                child, (item.start_mark.line + 1, item.start_mark.column + 1)
            )
            _walk(item, child, parsed)
