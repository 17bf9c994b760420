"""Load a policy (file or text; parse, validate, check, warn), and find the shipped policies."""

from __future__ import annotations

import difflib
import logging
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ._checks import check_policy, load_grants_file, resolve_paths
from ._errors import PolicyLoadError, Problem
from ._model import Policy
from ._source import Format, KeyPath, Parsed, guess_format, parse

logger = logging.getLogger("sandgate.policy")

_HERE = Path(__file__).resolve().parent
DEFAULT_POLICY = "default.yaml"


def default_policy_path() -> Path:
    """The policy used when none is given: `default.yaml` inside the package."""
    return _HERE / DEFAULT_POLICY


def shipped_policy_paths() -> list[Path]:
    """Every policy file shipped inside the package (YAML and JSON), sorted by name."""
    return sorted(p for p in _HERE.iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of the policy format (every field with its description and default)."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema.setdefault("title", "sandgate policy")
    return schema


def load_policy(path: str | Path) -> Policy:
    """Load and check the policy file at `path` (YAML or JSON, by extension or content).

    Relative paths inside it (`grants_file`, `state.path`, `audit.path`, `packages.*`) are
    resolved against the file's folder.

    Raises:
        PolicyLoadError: The file cannot be read or is invalid; `problems` says where and why.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyLoadError(
            [Problem("", f"cannot read the policy file: {exc}; check the path and permissions")],
            source=str(path),
        ) from exc
    policy = load_policy_text(
        text, source=str(path), base_dir=path.resolve().parent, fmt=guess_format(text, path.name)
    )
    policy._source = path.resolve()
    return policy


def load_policy_text(
    text: str, *, source: str = "<string>", base_dir: Path | None = None, fmt: Format | None = None
) -> Policy:
    """Load and check a policy given as YAML or JSON text.

    Args:
        text: The policy.
        source: A name for messages (a file name).
        base_dir: Folder relative paths are resolved against; the current folder when `None`.
        fmt: `yaml` or `json`; guessed from `source` and the text when `None`.

    Raises:
        PolicyLoadError: The text is invalid; `problems` says where and why.
    """
    parsed = parse(text, fmt or guess_format(text, source))
    if parsed.problems:
        raise PolicyLoadError(parsed.problems, source=source)
    if not isinstance(parsed.data, dict):
        got = type(parsed.data).__name__ if parsed.data is not None else "an empty document"
        raise PolicyLoadError(
            [
                parsed.problem(
                    (),
                    f"a policy must be a mapping of keys (version, default, tools, ...), got {got}",
                )
            ],
            source=source,
        )
    try:
        policy = Policy.model_validate(parsed.data)
    except ValidationError as exc:
        raise PolicyLoadError(_problems(exc, parsed), source=source) from None
    base = base_dir if base_dir is not None else Path.cwd()
    extra_grants, problems = load_grants_file(policy, base, parsed)
    problems += check_policy(policy, parsed, extra_grants, warnings=False)
    if problems:
        raise PolicyLoadError(_sorted(problems), source=source)
    if extra_grants:
        policy = policy.model_copy(update={"grants": {**policy.grants, **extra_grants}})
    policy = resolve_paths(policy, base)
    warnings = _sorted(check_policy(policy, parsed, {}, warnings=True))
    for warning in warnings:
        logger.debug("policy warning: %s", warning.format(source))
    policy._warnings = tuple(warnings)
    return policy


def _sorted(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line or 0, p.column or 0))


def _problems(exc: ValidationError, parsed: Parsed) -> list[Problem]:
    problems = []
    for error in exc.errors(include_url=False):
        loc: KeyPath = tuple(p for p in error["loc"] if isinstance(p, int | str) and p != "[key]")
        problems.append(parsed.problem(loc, _message(error, loc)))
    return _sorted(problems)


def _message(error: Any, loc: KeyPath) -> str:
    kind = error["type"]
    key = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        hint = difflib.get_close_matches(str(key), allowed, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else "remove it or fix its spelling"
        return f"unknown key {key!r}; expected one of: {', '.join(allowed)}; {fix}"
    if kind == "missing":
        return f"missing required key {key!r}; add it"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return message
    return f"{message}, got {_short(error.get('input'))}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(loc: KeyPath) -> list[str]:
    """The keys allowed at `loc`, found by walking the model's annotations."""
    current: Any = Policy
    for part in loc:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(str(part))
            if field is None:
                return []
            current = field.annotation
        elif get_origin(current) is list:
            current = get_args(current)[0]
        elif get_origin(current) is dict:
            current = get_args(current)[1]
        else:
            return []
    current = _unwrap(current)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _unwrap(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation
