"""The policies shipped with sandgate, and the JSON Schema of the policy format."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._model import Policy

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
