"""`sandgate policy|audit|approve|deny`: check/explain policies, read audit, answer approvals."""

from __future__ import annotations

import argparse
import collections
import getpass
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from policies import (
    Allowed,
    AuditLog,
    AuditRecord,
    Denied,
    Gate,
    Policy,
    PolicyError,
    PolicyLoadError,
    SqliteCounterStore,
    ToolCall,
    answer_approval,
    load_policy,
    open_counter_store,
    policy_json_schema,
    read_audit,
    state_dir_default,
)
from sandboxes import Program, WorkspacePaths

_CODE_TOOLS = frozenset({"run_python_code", "save_to_file_and_run", "run_code", "pyodide_execute"})


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
    explain.add_argument("--tool", required=True, help="tool name, e.g. run_python_code")
    explain.add_argument("--args", default="{}", help="the call's arguments as a JSON object")
    explain.add_argument("--grant", default="local", help="the caller's grant (default local)")
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
    try:
        call_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        _err(f"sandgate policy explain: --args must be a JSON object: {exc}")
        return 2
    if not isinstance(call_args, dict):
        _err(f"sandgate policy explain: --args must be a JSON object, got {args.args!r}")
        return 2
    with tempfile.TemporaryDirectory(prefix="sandgate-explain-") as tmp:
        scratch = Path(tmp)
        store = SqliteCounterStore(scratch / "state.sqlite3")
        audit = AuditLog(scratch / "audit.jsonl")
        try:
            gate = Gate(policy, store, audit)
            workspace = WorkspacePaths(files=scratch / "files", site=scratch / "site")
            program = _program(args.tool, call_args)
            decision = gate.decide(
                ToolCall(
                    tool=args.tool,
                    args=call_args,
                    grant=args.grant,
                    session=args.session,
                    program=program,
                    workspace=workspace if program else None,
                    requested_timeout_s=args.timeout_s,
                )
            )
        finally:
            store.close()
            audit.close()
    if isinstance(decision, Allowed):
        kind = "allow (audit mode: enforce would deny)" if decision.would_deny else "allow"
    else:
        kind = "deny" if isinstance(decision, Denied) else "needs_approval"
    reason = decision.reason
    if kind == "needs_approval":  # the id in the reason belongs to the throwaway store
        reason = "A human must approve this exact call before it runs (sandgate approve ID)."
    print(f"decision: {kind}")
    print(f"rule:     {decision.rule}")
    print(f"reason:   {reason}")
    if isinstance(decision, Allowed):
        print(f"mode:     {decision.mode}")
        if decision.plan is not None:
            plan = decision.plan
            print(f"engine:   {plan.engine} (profile {plan.profile})")
            limits = ", ".join(f"{k}={v}" for k, v in _limits(plan.limits).items())
            print(f"limits:   {limits}")
    for line in _counters(policy, args.tool):
        print(line)
    return 0


def _program(tool: str, call_args: dict[str, Any]) -> Program | None:
    code = call_args.get("code")
    if tool in _CODE_TOOLS and isinstance(code, str):
        return Program(kind="code", source=code)
    file_name = call_args.get("file_name")
    if tool == "run_python_file" and isinstance(file_name, str):
        return Program(kind="file", source=file_name)
    return None


def _limits(limits: Any) -> dict[str, Any]:
    return {name: getattr(limits, name) for name in limits.__dataclass_fields__}


def _counters(policy: Policy, tool: str) -> Iterator[str]:
    rules = [("/limits", policy.limits)]
    if policy.all_tools is not None:
        rules.append(("/all_tools/limits", policy.all_tools.limits))
    if tool in policy.tools:
        rules.append((f"/tools/{tool}/limits", policy.tools[tool].limits))
    for where, limits in rules:
        for limit in limits:
            yield (
                f"counter:  {where}/{limit.counter}: at most {limit.max} per {limit.window} "
                f"per {limit.scope}"
            )


# -- sandgate audit -------------------------------------------------------------------------


def audit_main(argv: list[str]) -> int:
    """`sandgate audit tail [-n N]` and `sandgate audit query [--tool T] [--decision D] ...`.

    Records are printed as JSON lines. Returns 0, or 1 when the audit file cannot be read.
    """
    parser = argparse.ArgumentParser(prog="sandgate audit", description="Read the audit log.")
    sub = parser.add_subparsers(dest="action", required=True)
    tail = sub.add_parser("tail", help="print the last records")
    tail.add_argument("-n", type=int, default=10, help="how many (default 10)")
    query = sub.add_parser("query", help="print the records matching every filter given")
    query.add_argument("--tool")
    query.add_argument("--decision", choices=("allow", "deny", "would_deny", "needs_approval"))
    query.add_argument("--event", choices=("decision", "outcome", "approval"))
    query.add_argument("--grant")
    query.add_argument("--session")
    query.add_argument("--since", help="ISO-8601 time, e.g. 2025-01-31T12:00:00Z")
    for command in (tail, query):
        command.add_argument(
            "--path", type=Path, help="audit file (default: <state dir>/audit.jsonl)"
        )
    return _run(parser, argv, _audit)


def _audit(args: argparse.Namespace) -> int:
    path = args.path or state_dir_default() / "audit.jsonl"
    if not path.is_file():
        _err(f"sandgate audit: no audit file at {path}; pass --path or set SANDGATE_HOME")
        return 1
    records: Iterator[AuditRecord] | collections.deque[AuditRecord]
    if args.action == "tail":
        records = collections.deque(read_audit(path), maxlen=max(args.n, 0))
    else:
        try:
            since = _parse_time(args.since) if args.since else None
        except ValueError:
            _err(f"sandgate audit: --since must be an ISO-8601 time, got {args.since!r}")
            return 2
        records = (r for r in read_audit(path) if _matches(r, args, since))
    for record in records:
        print(json.dumps(record.to_dict(), ensure_ascii=False, sort_keys=False))
    return 0


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _matches(record: AuditRecord, args: argparse.Namespace, since: datetime | None) -> bool:
    for name in ("tool", "decision", "event", "grant", "session"):
        wanted = getattr(args, name)
        if wanted is not None and getattr(record, name) != wanted:
            return False
    if since is not None:
        try:
            return _parse_time(record.time) >= since
        except ValueError:
            return False
    return True


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
        audit_path = (
            Path(policy.audit.path) if policy and policy.audit.path else (state_dir / "audit.jsonl")
        )
        try:
            audit = AuditLog(audit_path)
            try:
                record = answer_approval(store, audit, args.approval_id, approved, by, time.time())
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
