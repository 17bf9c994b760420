"""A batch's bookkeeping: which jobs still run, the results file, progress and the summary."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._jobs import Job, parse_job
from ._progress import Meter, Progress
from ._ray import RayStats
from ._results import JobResult, ResultsFile

JobInput = Job | Mapping[str, Any] | JobResult
"""A job, a job mapping (parsed; malformed gets an `invalid` result), or an `invalid` result
as `read_jobs_file` yields for a line that is not JSON (written as it is)."""


@dataclass(frozen=True, slots=True)
class BatchSummary:
    """How a batch went.

    Attributes:
        out: The results file.
        total: Jobs in the input (malformed and duplicate lines included).
        written: Result lines written by this run.
        skipped: Jobs that already had a result in the file (resumed), not run again.
        duplicates: Jobs whose id came earlier in the input; ignored, with a warning.
        statuses: Result lines written by this run, by status.
        passed: Results this run whose stdout matched `expected_stdout`.
        failed: Results this run that had an expected output and did not match it.
        runs: Guests started this run (retries after a lost node or a server error count).
        retried: Jobs run again because their Ray node was lost.
        nodes: Ray nodes that hosted an actor (0 without Ray).
        elapsed_s: Wall-clock seconds of this run.
    """

    out: Path
    total: int
    written: int
    skipped: int
    duplicates: int
    statuses: Mapping[str, int]
    passed: int
    failed: int
    runs: int
    retried: int
    nodes: int
    elapsed_s: float

    def describe(self) -> str:
        """A few lines for a person."""
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items())) or "none"
        rate = self.written / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"{self.written} results written to {self.out} in {self.elapsed_s:.1f} s "
            f"({rate:.1f}/s); {self.skipped} already there, {self.duplicates} duplicate ids\n"
            f"statuses: {statuses}; expected output: {self.passed} passed, {self.failed} failed"
            + (f"\nRay: {self.nodes} nodes, {self.retried} jobs re-run" if self.nodes else "")
        )


def _pending(
    jobs: Iterable[JobInput], done: frozenset[str], counts: Counter[str], meter: Meter
) -> Iterator[Job | JobResult]:
    """Jobs still to run: parsed, without those already done or seen earlier in the input."""
    seen: set[str] = set()
    for position, raw in enumerate(jobs, start=1):
        counts["total"] += 1
        item = raw if isinstance(raw, JobResult) else parse_job(raw, line=position)
        key = item.key if isinstance(item, JobResult) else item.id
        if key in done:
            counts["skipped"] += 1
            continue
        if key in seen:
            counts["duplicates"] += 1
            meter.uncount()
            continue
        seen.add(key)
        yield item


class BatchRun:
    """One batch's bookkeeping: the results file, the progress meter and the counts."""

    def __init__(self, out: Path, progress: Progress, total: int | None) -> None:
        self.out = out
        self.began = time.monotonic()
        self.counts: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.results = ResultsFile(out)
        resumed = self.results.open()
        self.done = resumed.done
        self.meter = Meter(progress, total=total, already=len(resumed.done))
        if resumed.dropped_tail:
            self.meter.say(f"sandgate batch: {out}: a truncated last line was dropped; it re-runs")

    def pending(self, jobs: Iterable[JobInput]) -> Iterator[Job | JobResult] | None:
        """The jobs to run, or `None` when every one has a result (nothing to start)."""
        items = _pending(jobs, self.done, self.counts, self.meter)
        first = next(items, None)
        return None if first is None else itertools.chain([first], items)

    def emit(self, result: JobResult) -> None:
        """Write a result (once per id) and count it."""
        if self.results.write(result):
            self.statuses[result.status] += 1
            self.counts["passed"] += result.passed is True
            self.counts["failed"] += result.passed is False
            self.meter.add(result)

    def close(self) -> None:
        self.meter.close()
        self.results.close()
        if self.counts["duplicates"]:
            self.meter.say(
                f"sandgate batch: {self.counts['duplicates']} jobs repeated an earlier id; "
                "only the first of each ran"
            )

    def summary(self, runs: int = 0, stats: RayStats | None = None) -> BatchSummary:
        return BatchSummary(
            out=self.out,
            total=self.counts["total"],
            written=sum(self.statuses.values()),
            skipped=self.counts["skipped"],
            duplicates=self.counts["duplicates"],
            statuses=dict(self.statuses),
            passed=self.counts["passed"],
            failed=self.counts["failed"],
            runs=stats.runs if stats else runs,
            retried=stats.retried if stats else 0,
            nodes=stats.nodes if stats else 0,
            elapsed_s=time.monotonic() - self.began,
        )
