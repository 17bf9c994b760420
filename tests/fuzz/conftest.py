"""Hypothesis profiles of the fuzz suite, and the policy the fuzzed servers run.

Profiles (examples per property; the slow transports scale them down):

- `ci`: few examples, no example database; picked when `CI=true` (the whole suite stays under
  about three minutes).
- `dev`: a few more; the default on a workstation.
- `long`: `SANDGATE_FUZZ_EXAMPLES` examples (default 2000); picked by
  `pytest tests/fuzz --hypothesis-profile=long`, or by setting `SANDGATE_FUZZ_EXAMPLES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import settings

from tests.conftest import IN_CI

from ._profiles import PROFILES

F = TypeVar("F", bound=Callable[..., Any])


def profile_name() -> str:
    """The profile in force: one given with `--hypothesis-profile`, else `long` when
    `SANDGATE_FUZZ_EXAMPLES` is set, else `ci` under `CI=true`, else `dev`."""
    loaded = settings.get_current_profile_name()
    if loaded in PROFILES:
        return loaded
    if os.environ.get("SANDGATE_FUZZ_EXAMPLES"):
        return "long"
    return "ci" if IN_CI else "dev"


def fuzz_settings(*, scale: float = 1.0) -> Callable[[F], F]:
    """Settings of one property: the profile's, with `scale` times its examples (at least 5)."""
    parent = settings.get_profile(profile_name())
    examples = max(5, int(parent.max_examples * scale))
    decorate: Callable[[F], F] = settings(parent=parent, max_examples=examples)
    return decorate


FUZZ_POLICY = """
version: "1"
description: Every tool allowed, generous limits, short runs (fuzzing the protocol, not limits).
default: deny
quotas:
  timeout_s: 5
  memory_mb: 256
all_tools:
  engine: wasm
  limits:
    - {counter: fuzz, window: minute, max: 1000000, scope: grant}
tools:
  run_python_code: {}
  save_to_file_and_run: {}
  run_python_file: {}
  pip_install_package: {}
  run_code: {}
  pyodide_execute: {}
  pyodide_install-packages: {}
  pyodide_get-mount-points: {}
  pyodide_list-mounted-directory: {}
  pyodide_read-image: {}
server:
  max_sessions_per_grant: 100000
"""


def write_fuzz_policy(folder: Path, extra: str = "") -> Path:
    """The fuzz policy (plus `extra` YAML) as a file in `folder`."""
    path = folder / "fuzz-policy.yaml"
    path.write_text(FUZZ_POLICY + extra)
    return path
