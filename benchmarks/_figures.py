"""What the benchmarks share: the percentile they report and the `sandgate` command they start
(the one beside this interpreter, i.e. the venv's, never a shim found first on PATH)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sandgate_command() -> str:
    """The `sandgate` executable beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("sandgate")
    return str(beside) if beside.exists() else (shutil.which("sandgate") or "sandgate")
