"""`sandgate batch JOBS --out RESULTS`: the command line of batch mode."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from .._app import Config
from .._errors import RunnerError
from ._api import DEFAULT_CONCURRENCY, batch
from ._errors import BatchError
from ._execute import BATCH_GRANT, Start

EXIT_OK = 0
EXIT_INFRA = 1
"""Every job has a result, but some are `infra_error` (sandgate, not the code, failed)."""
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of jobs above 0, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    """The `sandgate batch` argument parser."""
    cli = argparse.ArgumentParser(
        prog="sandgate batch",
        description="Run a JSON-lines file of jobs through the policy gate and the sandboxes; "
        "write one JSON result line per job (resumable: jobs with a result are not re-run).",
    )
    cli.add_argument("jobs", type=Path, help='jobs file: {"id", "code", "timeout_s", ...} a line')
    cli.add_argument("--out", type=Path, required=True, help="results file (JSON lines)")
    cli.add_argument("--policy", type=Path, help="policy file (default: the shipped one)")
    cli.add_argument("--state-dir", type=Path, help="counters, audit trail and workspaces")
    cli.add_argument(
        "--concurrency",
        type=_positive,
        default=DEFAULT_CONCURRENCY,
        help=f"jobs in flight at once, per node with --ray (default {DEFAULT_CONCURRENCY})",
    )
    cli.add_argument(
        "--from-snapshot",
        metavar="ID",
        help="start every job's session from this snapshot (snapshot_session; it must belong "
        "to --grant and live in --state-dir)",
    )
    cli.add_argument(
        "--grant",
        default=BATCH_GRANT,
        help=f"the grant jobs run under and that owns --from-snapshot (default {BATCH_GRANT})",
    )
    cli.add_argument("--ray", metavar="ADDRESS", help="run on a Ray cluster (host:port or auto)")
    cli.add_argument("--no-progress", action="store_true", help="no progress on stderr")
    cli.add_argument("-v", "--verbose", action="store_true", help="log more")
    return cli


def batch_main(argv: Sequence[str]) -> int:
    """Run `sandgate batch`; returns the exit status (0 done, 1 some `infra_error`,
    2 could not start or had to stop, 130 interrupted)."""
    args = parser().parse_args(list(argv))
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.jobs.is_file():
        print(f"sandgate batch: no jobs file at {args.jobs}", file=sys.stderr)
        return EXIT_USAGE
    config = Config(
        policy_path=args.policy,
        workers=args.concurrency,
        tool_sets=("native",),
        **({"state_dir": args.state_dir} if args.state_dir else {}),
    )
    try:
        summary = batch(
            args.jobs,
            out=args.out,
            config=config,
            concurrency=args.concurrency,
            ray_address=args.ray,
            progress="off" if args.no_progress else "auto",
            start=Start(grant=args.grant, from_snapshot=args.from_snapshot),
        )
    except (BatchError, RunnerError) as exc:
        print(f"sandgate batch: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("sandgate batch: interrupted; run it again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(summary.describe(), file=sys.stderr)
    return EXIT_INFRA if summary.statuses.get("infra_error") else EXIT_OK
