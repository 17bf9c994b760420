"""`sandgate policy|audit|approve|deny`: check/explain policies, read audit, answer approvals."""

from __future__ import annotations

import argparse
import collections
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from policies import (
    AUDIT_FILE,
    AuditEntry,
    AuditLog,
    AuditRecord,
    AuditSink,
    AuditUnavailable,
    Policy,
    PolicyError,
    PolicyLoadError,
    SqliteCounterStore,
    answer_approval,
    explain_egress,
    load_policy,
    open_audit_sink,
    open_counter_store,
    policy_json_schema,
    state_dir_default,
)

from ..operator._audit_query import AuditQuery, parse_time, query_audit
from ..operator._explain import explain_call

FOLLOW_INTERVAL_S = 0.5
"""`sandgate audit tail --follow`: seconds between reads of the sink when nothing was new."""
MIN_FOLLOW_INTERVAL_S = 0.01
MAX_FOLLOW_INTERVAL_S = 60.0


def _run(
    parser: argparse.ArgumentParser, argv: list[str], body: Callable[[argparse.Namespace], int]
) -> int:
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports usage errors (2) and --help (0) this way
        return exc.code if isinstance(exc.code, int) else 2
    return body(args)


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# -- sandgate policy ------------------------------------------------------------------------


def policy_main(argv: list[str]) -> int:
    """`sandgate policy check FILE...`, `policy explain FILE --tool T --args JSON`, `policy schema`.

    Returns:
        0 when every file is valid (check) or the explanation was printed; 1 for an invalid
        policy; 2 for a usage error.
    """
    parser = argparse.ArgumentParser(
        prog="sandgate policy", description="Check, explain and describe policy files."
    )
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("check", help="validate policy files (exit 1 if any is invalid)")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    explain = sub.add_parser("explain", help="say which rule decides a call, and why")
    explain.add_argument("file", type=Path, metavar="FILE")
    explain.add_argument(
        "--tool", help="tool name, e.g. run_python_code (required unless --egress)"
    )
    explain.add_argument(
        "--egress",
        metavar="HOST[:PORT]",
        help="say which rule of the tool's network route (default tool: run_code) allows or "
        "refuses this host (port default 443)",
    )
    explain.add_argument("--args", default="{}", help="the call's arguments as a JSON object")
    explain.add_argument(
        "--grant",
        default="local",
        help="the caller's grant (default local); the quotas of its roles apply",
    )
    explain.add_argument("--session", default="local", help="the session (default local)")
    explain.add_argument("--timeout-s", type=float, help="a caller-requested timeout")
    sub.add_parser("schema", help="print the JSON Schema of the policy format")
    return _run(parser, argv, _policy)


def _policy(args: argparse.Namespace) -> int:
    if args.action == "schema":
        print(json.dumps(policy_json_schema(), indent=2, sort_keys=True))
        return 0
    if args.action == "check":
        return max(_check(path) for path in args.files)
    return _explain(args)


def _check(path: Path) -> int:
    try:
        policy = load_policy(path)
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(problem.format(path))
        print(f"{path}: invalid ({len(exc.problems)} problem(s))")
        return 1
    for warning in policy.warnings:
        where = f"{path}:{warning.line}:{warning.column}" if warning.line else f"{path}"
        print(f"{where}: warning: {warning.path or '<file>'}: {warning.message}")
    print(f"{path}: ok ({len(policy.tools)} tool rule(s), {len(policy.warnings)} warning(s))")
    return 0


def _explain(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file)
    except PolicyLoadError as exc:
        for problem in exc.problems:
            print(problem.format(args.file))
        return 1
    if args.egress is not None:
        return _explain_egress(policy, args.tool or "run_code", args.egress, args.grant)
    if args.tool is None:
        _err("sandgate policy explain: give --tool TOOL (or --egress HOST[:PORT])")
        return 2
    try:
        call_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        _err(f"sandgate policy explain: --args must be a JSON object: {exc}")
        return 2
    if not isinstance(call_args, dict):
        _err(f"sandgate policy explain: --args must be a JSON object, got {args.args!r}")
        return 2
    found = explain_call(
        policy,
        tool=args.tool,
        args=call_args,
        grant=args.grant,
        session=args.session,
        timeout_s=args.timeout_s,
    )
    kind = "allow (audit mode: enforce would deny)" if found.decision == "would_deny" else ""
    print(f"decision: {kind or found.decision}")
    print(f"rule:     {found.rule}")
    print(f"reason:   {found.reason}")
    if found.mode is not None:
        print(f"mode:     {found.mode}")
    if found.roles:
        print(f"roles:    {', '.join(found.roles)} (their `roles` quotas apply, in this order)")
    if found.engine is not None and found.limits is not None:
        print(f"engine:   {found.engine}")
        print(f"limits:   {', '.join(f'{k}={v}' for k, v in found.limits.items())}")
    for line in found.counters:
        print(f"counter:  {line}")
    return 0


def _explain_egress(policy: Policy, tool: str, destination: str, grant: str) -> int:
    try:
        found = explain_egress(policy, tool, destination, grant=grant)
    except ValueError as exc:
        _err(f"sandgate policy explain: --egress: {exc}")
        return 2
    for label, value in found:
        print(f"{label + ':':<9} {value}")
    return 0


# -- sandgate audit -------------------------------------------------------------------------


def audit_main(argv: list[str]) -> int:
    """`sandgate audit tail [-n N]` and `sandgate audit query [--tool T] [--decision D] ...`.

    Records are printed as JSON lines, read from `--path`, from the sink `--policy` names (a
    Redis stream or a file), else from `<state dir>/audit.jsonl`. Returns 0, or 1 when the
    audit cannot be read.
    """
    parser = argparse.ArgumentParser(prog="sandgate audit", description="Read the audit log.")
    sub = parser.add_subparsers(dest="action", required=True)
    tail = sub.add_parser("tail", help="print the last records (and, with -f, new ones)")
    tail.add_argument("-n", type=int, default=10, help="how many (default 10)")
    tail.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="then keep printing records as they are written, until Ctrl-C (exit 0)",
    )
    tail.add_argument(
        "--interval",
        type=float,
        default=FOLLOW_INTERVAL_S,
        metavar="S",
        help=f"with --follow: seconds between reads of the sink (default {FOLLOW_INTERVAL_S}, "
        f"{MIN_FOLLOW_INTERVAL_S} to {MAX_FOLLOW_INTERVAL_S})",
    )
    query = sub.add_parser("query", help="print the records matching every filter given")
    query.add_argument("--tool")
    query.add_argument("--decision", choices=("allow", "deny", "would_deny", "needs_approval"))
    query.add_argument("--event", choices=("decision", "outcome", "approval"))
    query.add_argument("--grant")
    query.add_argument("--session")
    query.add_argument("--status", help="how the code ended: ok, error, timeout, ...")
    query.add_argument("--since", help="ISO-8601 time, e.g. 2025-01-31T12:00:00Z")
    for command in (tail, query):
        command.add_argument(
            "--path", type=Path, help="audit file (default: <state dir>/audit.jsonl)"
        )
        command.add_argument(
            "--policy",
            type=Path,
            help="the server's policy: read the audit sink it names (a Redis stream, or its "
            "audit.path)",
        )
    return _run(parser, argv, _audit)


def _audit_sink(args: argparse.Namespace) -> AuditSink | None:
    """The sink to read: `--path`, else the one `--policy` names, else the default file."""
    if args.path is None and args.policy is not None:
        policy = load_policy(args.policy)
        return open_audit_sink(
            policy.audit,
            state_url=policy.state.url,
            default_path=state_dir_default() / AUDIT_FILE,
            write=False,
        )
    path: Path = args.path or state_dir_default() / AUDIT_FILE
    if not path.is_file():
        _err(
            f"sandgate audit: no audit file at {path}; pass --path, --policy (for a Redis "
            "audit sink) or set SANDGATE_HOME"
        )
        return None
    return AuditLog(path, write=False)


def _audit(args: argparse.Namespace) -> int:
    try:
        sink = _audit_sink(args)
    except PolicyError as exc:
        _err(f"sandgate audit: {exc}")
        return 1
    if sink is None:
        return 1
    try:
        return _print_audit(args, sink)
    except AuditUnavailable as exc:
        _err(f"sandgate audit: {exc}")
        return 1
    finally:
        sink.close()


def _print_audit(args: argparse.Namespace, sink: AuditSink) -> int:
    if args.action == "tail":
        return _tail(sink, last=args.n, follow=args.follow, interval_s=args.interval)
    try:
        since = parse_time(args.since) if args.since else None
    except ValueError:
        _err(f"sandgate audit: --since must be an ISO-8601 time, got {args.since!r}")
        return 2
    query = AuditQuery(
        tool=args.tool,
        decision=args.decision,
        event=args.event,
        grant=args.grant,
        session=args.session,
        status=args.status,
        since=since,
    )
    records = query_audit(sink, query)
    for record in records:
        _print_record(record)
    return 0


def _print_record(record: AuditRecord, *, flush: bool = False) -> None:
    print(json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=False), flush=flush)


def _tail(sink: AuditSink, *, last: int, follow: bool, interval_s: float) -> int:
    """Print the `last` records; with `follow`, then each record written after them, read
    `after` the cursor of the last one seen every `interval_s`, until Ctrl-C."""
    if not MIN_FOLLOW_INTERVAL_S <= interval_s <= MAX_FOLLOW_INTERVAL_S:
        _err(
            f"sandgate audit tail: --interval must be {MIN_FOLLOW_INTERVAL_S} to "
            f"{MAX_FOLLOW_INTERVAL_S} seconds, got {interval_s}"
        )
        return 2
    kept: collections.deque[AuditEntry] = collections.deque(maxlen=max(last, 0))
    cursor: str | None = None
    try:
        for entry in sink.entries():
            kept.append(entry)
            cursor = entry.cursor
        for entry in kept:
            _print_record(entry.record, flush=follow)
        while follow:
            fresh = False
            for entry in sink.entries(after=cursor):
                _print_record(entry.record, flush=True)
                cursor, fresh = entry.cursor, True
            if not fresh:
                time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a follow ends
    except BrokenPipeError:  # the reader went (`... | head`): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


# -- sandgate approve / deny ----------------------------------------------------------------


def approve_main(argv: list[str], *, deny: bool = False) -> int:
    """`sandgate approve ID` (or `sandgate deny ID`): answer a pending approval.

    Returns:
        0 when answered; 1 when the id is unknown, expired or already answered, or the
        state store cannot be reached; 2 for a usage error.
    """
    verb = "deny" if deny else "approve"
    parser = argparse.ArgumentParser(
        prog=f"sandgate {verb}", description=f"{verb.title()} a pending call by its approval id."
    )
    parser.add_argument("approval_id", metavar="ID")
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="the server's state folder (default: $SANDGATE_HOME or ~/.local/state/sandgate)",
    )
    parser.add_argument(
        "--policy",
        type=Path,
        help="the server's policy, when its state or audit are configured there (e.g. Redis)",
    )
    parser.add_argument(
        "--by", help="who answers, audited as operator:NAME (default: your user name)"
    )
    parser.add_argument("--reason", help="why, kept in the audit record of the answer")
    return _run(parser, argv, lambda args: _approve(args, approved=not deny))


def _approve(args: argparse.Namespace, *, approved: bool) -> int:
    state_dir: Path = args.state_dir or state_dir_default()
    by = args.by or getpass.getuser()
    try:
        policy = load_policy(args.policy) if args.policy else None
        if policy is None and not (state_dir / "state.sqlite3").is_file():
            _err(
                f"sandgate: no state at {state_dir}; pass the server's --state-dir "
                "(or --policy when it uses Redis)"
            )
            return 1
        store = (
            open_counter_store(policy.state, state_dir)
            if policy is not None
            else SqliteCounterStore(state_dir / "state.sqlite3")
        )
        try:
            audit = (
                open_audit_sink(
                    policy.audit, state_url=policy.state.url, default_path=state_dir / AUDIT_FILE
                )
                if policy is not None
                else AuditLog(state_dir / AUDIT_FILE)
            )
            try:
                record = answer_approval(
                    store, audit, args.approval_id, approved, by, time.time(), note=args.reason
                )
            finally:
                audit.close()
        finally:
            store.close()
    except PolicyError as exc:
        _err(f"sandgate: {exc}")
        return 1
    done = "approved" if approved else "denied"
    then = (
        "the agent can now repeat the identical call once"
        if approved
        else "the identical call is refused"
    )
    print(
        f"{done} {record.approval_id} (by {record.resolved_by}): {record.tool} for grant "
        f"{record.grant}, session {record.session}, arguments sha256 {record.args_sha256}; {then}"
    )
    return 0
