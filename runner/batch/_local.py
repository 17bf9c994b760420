"""Run a batch on this machine: one service, its engines, and a bounded pool of jobs."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from .._app import Config, open_service
from .._errors import SetupError
from ._errors import BatchError
from ._execute import FROM_NOTHING, JobExecutor, Start
from ._jobs import Job
from ._results import JobResult

Emit = Callable[[JobResult], None]


async def run_local(
    items: Iterator[Job | JobResult],
    *,
    config: Config,
    concurrency: int,
    emit: Emit,
    start: Start = FROM_NOTHING,
) -> int:
    """Run every job of `items`, at most `concurrency` at once, and pass each result to
    `emit` as it completes (`invalid` results go straight through). Returns the guest runs.

    Raises:
        BatchError: the service could not open (policy, state store, engine).
    """
    try:
        async with open_service(config) as service:
            executor = JobExecutor(service, grant=start.grant, from_snapshot=start.from_snapshot)
            executor.check_snapshot()
            await _pool(items, executor, concurrency, emit)
            return executor.runs
    except SetupError as exc:
        raise BatchError(f"sandgate could not start: {exc}") from exc


async def _pool(
    items: Iterator[Job | JobResult], executor: JobExecutor, concurrency: int, emit: Emit
) -> None:
    slots = asyncio.Semaphore(concurrency)

    async def one(job: Job) -> None:
        try:
            emit(await executor.run(job))
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as group:
            for item in items:
                if isinstance(item, JobResult):
                    emit(item)
                    continue
                await slots.acquire()
                group.create_task(one(item))
    except BaseExceptionGroup as group_error:
        # One job's failure to be written (disk full, ...) stops the batch: raise it as is.
        first = group_error.exceptions[0]
        raise first from group_error
