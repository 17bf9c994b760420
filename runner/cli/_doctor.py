"""`sandgate doctor`: which boundary layers of each engine are in force on this host, and
whether the policy requires them (the same check every engine makes when it starts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from policies import PolicyError, default_policy_path, engine_requirements, load_policy
from sandboxes import CATALOG, LayerState, SandboxError, layer_names

EXIT_OK = 0
EXIT_MISSING = 1
EXIT_BAD_POLICY = 2


def doctor(policy_path: Path | None, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """Print, per engine, each layer (in force / missing, and why) and whether the policy
    requires it. Exit 1 when an engine the policy routes to lacks a layer it requires (that
    engine would refuse to start), 2 when the policy cannot be loaded, else 0."""
    path = policy_path or default_policy_path()
    try:
        policy = load_policy(path)
    except PolicyError as exc:
        print(f"sandgate doctor: cannot load the policy {path}: {exc}", file=err)
        return EXIT_BAD_POLICY
    routed = engine_requirements(policy)
    print(f"policy: {path} (routes to: {', '.join(sorted(routed))})", file=out)
    failing: list[str] = []
    for key, entry in CATALOG.items():
        required = routed.get(key, frozenset(layer_names(key)))
        where = "routed by the policy" if key in routed else "not routed; would require all"
        print(f"checking {key}...", file=err, flush=True)
        try:
            states = entry.layers()
        except SandboxError as exc:
            print(f"\n{key} ({where}): cannot tell which layers are in force: {exc}", file=out)
            if key in routed:
                failing.append(key)
            continue
        print(f"\n{key} ({where})", file=out)
        width = max(len(s.name) for s in states)
        for state in states:
            print("  " + _line(state, required, width), file=out)
        if key in routed and any(s.name in required and not s.in_force for s in states):
            failing.append(key)
    if failing:
        print(
            f"\nsandgate doctor: {', '.join(failing)} would refuse to start: a layer the policy "
            "requires is missing or could not be checked. Provide it (each line says when it is "
            "in force), or list under `engines.<profile>.require` only the layers you accept to "
            "rely on.",
            file=out,
        )
        return EXIT_MISSING
    print("\nsandgate doctor: every layer the policy requires is in force.", file=out)
    return EXIT_OK


def _line(state: LayerState, required: frozenset[str], width: int) -> str:
    status = "in force" if state.in_force else "MISSING "
    need = "required    " if state.name in required else "not required"
    text = f"{status}  {state.name:<{width}}  {need}  {state.why}"
    if not state.in_force:
        text += f"; in force when {state.layer.in_force_when}"
    return text
