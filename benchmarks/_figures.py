"""What the benchmarks share: the percentile they report, the `sandgate` command they start
(the one beside this interpreter, i.e. the venv's, never a shim found first on PATH) and how a
stdio server of another checkout is started."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from mcp import StdioServerParameters


def percentile(values: list[float], q: float) -> float:
    """The `q` quantile of `values` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def sandgate_command() -> str:
    """The `sandgate` executable beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("sandgate")
    return str(beside) if beside.exists() else (shutil.which("sandgate") or "sandgate")


def stdio_server(args: list[str], tree: str | None = None) -> StdioServerParameters:
    """`sandgate` with `args` on stdio; `tree`: another checkout's packages first on the path
    (a baseline, in the same run)."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = tree
    # The server's workers run `-m sandboxes.wasm`, which puts the working folder first on the
    # path: the tree's own, so a baseline's workers run the baseline's code.
    return StdioServerParameters(
        command=sandgate_command(),
        args=args,
        env=env,
        cwd=tree or str(Path(__file__).resolve().parents[1]),
    )
