"""The batch API: `run_batch` (and `arun_batch`, `batch`) runs jobs into a resumable file."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Iterator, Sized
from pathlib import Path

from policies import default_policy_path

from .._app import Config
from ._errors import BatchError
from ._execute import FROM_NOTHING, Start
from ._jobs import Job, count_jobs, read_jobs_file
from ._local import run_local
from ._node import NodeSpec
from ._progress import Progress
from ._ray import RayStats, run_on_ray
from ._results import JobResult
from ._run import BatchRun, BatchSummary, JobInput

DEFAULT_CONCURRENCY = 4
"""Jobs in flight at once (per node with Ray); also the WASM workers started for them."""


def _ray(
    items: Iterator[Job | JobResult],
    run: BatchRun,
    config: Config,
    per_node: int,
    address: str,
    start: Start,
) -> RayStats:
    return run_on_ray(
        items,
        address=address,
        spec=_node_spec(config, start),
        per_node=per_node,
        emit=run.emit,
        say=run.meter.say,
    )


def _check(concurrency: int) -> None:
    if concurrency < 1:
        raise ValueError(f"concurrency: expected at least 1 job in flight, got {concurrency}")


async def arun_batch(
    jobs: Iterable[JobInput],
    *,
    out: Path,
    config: Config | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    ray_address: str | None = None,
    progress: Progress = "auto",
    total: int | None = None,
    start: Start = FROM_NOTHING,
) -> BatchSummary:
    """`run_batch` for callers already inside an event loop (Ray's driver loop then runs in
    a worker thread)."""
    _check(concurrency)
    config = _batch_config(config, concurrency)
    run = BatchRun(Path(out), progress, _total(jobs, total))
    try:
        items = run.pending(jobs)
        if items is None:
            return run.summary()
        if ray_address is None:
            runs = await run_local(
                items, config=config, concurrency=concurrency, emit=run.emit, start=start
            )
            return run.summary(runs)
        stats = await asyncio.to_thread(_ray, items, run, config, concurrency, ray_address, start)
        return run.summary(stats=stats)
    finally:
        run.close()


def _total(jobs: Iterable[JobInput], total: int | None) -> int | None:
    if total is None and isinstance(jobs, Sized):
        return len(jobs)
    return total


def _batch_config(config: Config | None, concurrency: int) -> Config:
    """The configuration to run with: `run_code` served, `concurrency` workers by default."""
    if config is None:
        return Config(workers=concurrency, tool_sets=("native",))
    if "native" not in config.tool_sets:
        return dataclasses.replace(config, tool_sets=(*config.tool_sets, "native"))
    return config


def _node_spec(config: Config, start: Start = FROM_NOTHING) -> NodeSpec:
    """What Ray nodes need to open the same service; the policy is checked here first.

    Raises:
        BatchError: the policy file cannot be read or does not load.
    """
    from policies import PolicyError, load_policy

    path = config.policy_path
    try:
        load_policy(path or default_policy_path())
        text = None if path is None else Path(path).read_text(encoding="utf-8")
    except (PolicyError, OSError) as exc:
        raise BatchError(f"cannot load the policy {path or 'default'}: {exc}") from exc
    return NodeSpec(
        policy_text=text,
        policy_path=None if path is None else str(Path(path).resolve()),
        state_dir=str(config.state_dir.resolve()),
        workers=config.workers,
        grant=start.grant,
        from_snapshot=start.from_snapshot,
    )


def run_batch(
    jobs: Iterable[JobInput],
    *,
    out: Path,
    config: Config | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    ray_address: str | None = None,
    progress: Progress = "auto",
    total: int | None = None,
    start: Start = FROM_NOTHING,
) -> BatchSummary:
    """Run every job through the policy gate and a sandbox; one result line per job in `out`.

    Each job runs as a `run_code` call of the grant `batch` in a session of its own (a fresh
    workspace, removed afterwards), so its limits are clamped by the policy and its decision
    is audited. Results are appended to `out` (and flushed) as jobs complete. A job whose id
    already has a result in `out` is not run again, so an interrupted batch resumes.

    Args:
        jobs: `Job`s or job mappings (`{"id", "code", "timeout_s", "stdin",
            "expected_stdout", "memory_mb"}`); a malformed one gets an `invalid` result.
        out: The JSON-lines results file (created, or resumed when it exists).
        config: Policy, state folder and workers (default: shipped policy, `concurrency`
            workers).
        concurrency: Jobs in flight at once (on each Ray node with `ray_address`).
        ray_address: Run on this Ray cluster (`host:port`, `auto`) instead of this machine.
        progress: `auto`, `bar`, `lines`, `off`, or a callable given a `BatchProgress`.
        total: Jobs in the input, for the progress bar (lists are counted).
        start: The grant jobs run under (default `batch`) and a snapshot of that grant every
            job's session starts from (`Start(from_snapshot=ID)`: its files, packages and,
            where the policy keeps interpreters, its globals).

    Raises:
        BatchError: the batch could not start or had to stop (results written so far stay,
            and running it again resumes).
    """
    _check(concurrency)
    config = _batch_config(config, concurrency)
    run = BatchRun(Path(out), progress, _total(jobs, total))
    try:
        items = run.pending(jobs)
        if items is None:
            return run.summary()
        if ray_address is None:
            coro = run_local(
                items, config=config, concurrency=concurrency, emit=run.emit, start=start
            )
            return run.summary(asyncio.run(coro))
        return run.summary(stats=_ray(items, run, config, concurrency, ray_address, start))
    finally:
        run.close()


def batch(
    jobs: Path | str | Iterable[JobInput],
    *,
    out: Path | str,
    config: Config | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    ray_address: str | None = None,
    progress: Progress = "auto",
    start: Start = FROM_NOTHING,
) -> BatchSummary:
    """`run_batch` taking a JSON-lines jobs file (a path) as well as jobs themselves."""
    total = None
    if isinstance(jobs, str | Path):
        path = Path(jobs)
        total = count_jobs(path)
        jobs = read_jobs_file(path)
    return run_batch(
        jobs,
        out=Path(out),
        config=config,
        concurrency=concurrency,
        ray_address=ray_address,
        progress=progress,
        total=total,
        start=start,
    )
