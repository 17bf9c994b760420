"""The body of the Ray actor each node hosts: its own service and engines, many jobs at once."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._app import Config, open_service
from .._errors import SetupError
from ._errors import BatchError
from ._execute import BATCH_GRANT, JobExecutor
from ._jobs import Job

logger = logging.getLogger("sandgate.batch.node")

SETUP_ERROR_KEY = "setup_error"
"""Key of the answer a node gives instead of a result when its service cannot open."""


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """What every node needs to open the same service as the driver would.

    Attributes:
        policy_text: The policy file's text (`None`: the shipped default policy).
        policy_path: Where the driver read it; used as is on a node that has the same file.
        state_dir: Counters, audit trail and workspaces (an absolute path on every node).
        workers: WASM worker processes on the node.
        grant: The grant jobs are decided under.
        from_snapshot: A snapshot of `grant` every job's session starts from (the node's
            state folder must hold it: a shared state folder, or the same snapshot copied).
    """

    policy_text: str | None
    policy_path: str | None
    state_dir: str
    workers: int
    grant: str = BATCH_GRANT
    from_snapshot: str | None = None


class NodeRunner:
    """Opens a service on first use, runs jobs on it concurrently, closes it on `close`.

    Args:
        spec: How to open the service.
    """

    def __init__(self, spec: NodeSpec) -> None:
        self._spec = spec
        self._lock = asyncio.Lock()
        self._stack: AsyncExitStack | None = None
        self._executor: JobExecutor | None = None
        self._scratch: Path | None = None

    def _policy_path(self) -> Path | None:
        spec = self._spec
        if spec.policy_text is None:
            return None
        if spec.policy_path is not None:
            same = Path(spec.policy_path)
            try:
                if same.is_file() and same.read_text(encoding="utf-8") == spec.policy_text:
                    return same  # the driver's own file: relative paths keep their meaning
            except OSError:
                pass
        self._scratch = Path(tempfile.mkdtemp(prefix="sandgate-batch-"))
        suffix = Path(spec.policy_path).suffix if spec.policy_path else ".yaml"
        copy = self._scratch / f"policy{suffix}"
        copy.write_text(spec.policy_text, encoding="utf-8")
        logger.warning(
            "the policy %s is not on this node; using its text from the driver (relative "
            "paths in it resolve against %s)",
            spec.policy_path,
            self._scratch,
        )
        return copy

    async def _open(self) -> JobExecutor:
        async with self._lock:
            if self._executor is None:
                config = Config(
                    policy_path=self._policy_path(),
                    state_dir=Path(self._spec.state_dir),
                    workers=self._spec.workers,
                    tool_sets=("native",),
                    progress=logger.info,
                )
                stack = AsyncExitStack()
                service = await stack.enter_async_context(open_service(config))
                self._stack = stack
                executor = JobExecutor(
                    service, grant=self._spec.grant, from_snapshot=self._spec.from_snapshot
                )
                executor.check_snapshot()
                self._executor = executor
            return self._executor

    async def run(self, job: dict[str, Any]) -> dict[str, Any]:
        """Run one job (`Job.to_json()`); its `JobResult.to_json()`, or `{setup_error: …}`."""
        try:
            executor = await self._open()
        except (SetupError, BatchError) as exc:
            return {SETUP_ERROR_KEY: str(exc)}
        result = await executor.run(Job.from_json(job))
        return result.to_json()

    async def runs(self) -> int:
        """Guests this node has started."""
        return 0 if self._executor is None else self._executor.runs

    async def close(self) -> None:
        """Close the service (engines, sessions, state store)."""
        async with self._lock:
            if self._stack is not None:
                await self._stack.aclose()
            self._stack = None
            self._executor = None
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None
