"""The exceptions of batch mode, under one root.

```
BatchError                      anything that stops a batch before every job has a result
├── ResultsFileError(path, line) the results file cannot be resumed or written
├── RayUnavailable              `--ray` was asked for and Ray cannot be used
└── NodeSetupError(node)        a Ray node could not open its sandgate service
```

A job's own failure (its code raised, timed out, was denied or was malformed) is never an
exception: it is a result line with that status.
"""

from __future__ import annotations

from pathlib import Path


class BatchError(Exception):
    """A batch stopped before every job had a result; re-running it resumes where it stopped."""


class ResultsFileError(BatchError):
    """The results file cannot be used.

    Attributes:
        path: The results file.
        line: The 1-based line at fault, when one is.
    """

    def __init__(self, path: Path, problem: str, *, line: int | None = None) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"results file {where}: {problem}")
        self.path = path
        self.line = line


class RayUnavailable(BatchError):
    """`ray_address` was given but Ray is not installed or the cluster cannot be reached."""


class NodeSetupError(BatchError):
    """A Ray node could not open its sandgate service (policy, state store or engine).

    Attributes:
        node: The Ray node id.
    """

    def __init__(self, node: str, problem: str) -> None:
        super().__init__(f"Ray node {node[:12]} could not start sandgate: {problem}")
        self.node = node
