"""Batch mode: run many jobs through the policy gate, locally or on a Ray cluster, resumably."""

from ._api import DEFAULT_CONCURRENCY, arun_batch, batch, run_batch
from ._cli import batch_main
from ._errors import BatchError, NodeSetupError, RayUnavailable, ResultsFileError
from ._execute import BATCH_GRANT, Start
from ._jobs import JOB_FIELDS, Job, read_jobs_file
from ._progress import BatchProgress, Progress
from ._results import BatchStatus, JobResult
from ._run import BatchSummary, JobInput

__all__ = [
    "BATCH_GRANT",
    "DEFAULT_CONCURRENCY",
    "JOB_FIELDS",
    "BatchError",
    "BatchProgress",
    "BatchStatus",
    "BatchSummary",
    "Job",
    "JobInput",
    "JobResult",
    "NodeSetupError",
    "Progress",
    "RayUnavailable",
    "ResultsFileError",
    "Start",
    "arun_batch",
    "batch",
    "batch_main",
    "read_jobs_file",
    "run_batch",
]
