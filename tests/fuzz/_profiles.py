"""Hypothesis profiles of the fuzz suite, registered from `tests/conftest.py` so that
`--hypothesis-profile=long` works however pytest is started (see `tests/fuzz/conftest.py`)."""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings

LONG_EXAMPLES = int(os.environ.get("SANDGATE_FUZZ_EXAMPLES") or 2000)
_COMMON: dict[str, Any] = {
    "deadline": None,  # a real server's latency varies; each example has its own time bound
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
        HealthCheck.function_scoped_fixture,
    ],
    "print_blob": True,
}
settings.register_profile("ci", max_examples=150, database=None, **_COMMON)
settings.register_profile("dev", max_examples=200, **_COMMON)
settings.register_profile("long", max_examples=LONG_EXAMPLES, **_COMMON)
PROFILES = ("ci", "dev", "long")
