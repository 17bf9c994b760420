"""sandgate's snapshot tools: snapshot a session, restore a snapshot into one, fork it into new
named sessions, list and delete snapshots. Each is decided by the gate and audited; what a
snapshot may hold and how many a client keeps are the policy's `server:` quotas."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from policies import ToolCall

from .._errors import ArgumentError, ServerLimit
from ..snapshots import CannotSnapshot, Restored, check_id
from ._arguments import (
    DeleteSnapshotArgs,
    ForkSessionArgs,
    ListSnapshotsArgs,
    RestoreSessionArgs,
    SnapshotSessionArgs,
)
from ._context import Caller, ToolContext
from ._outcome import Busy, Invalid, Outcome, Refused, Told

BUSY_RETRY_S = 1.0
PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _busy(session_name: str | None) -> Busy:
    which = f"session {session_name!r}" if session_name else "this session"
    return Busy(
        f"Error: {which} is running another call; a snapshot or restore waits for no run. "
        f"Retry after {BUSY_RETRY_S:g} s, once that call has ended.",
        BUSY_RETRY_S,
    )


async def snapshot_session(
    ctx: ToolContext, args: SnapshotSessionArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    session = ctx.session_of(caller, args.session)
    if session.busy > 1:
        return _busy(args.session)
    ctx.snapshots.check_room(caller.grant)
    call = ToolCall(tool="snapshot_session", args=dict(raw), grant=caller.grant, session=session.id)
    async with ctx.gated(call, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        try:
            info = await ctx.snapshots.take(
                session, label=args.label or "", interpreter=args.interpreter
            )
        except CannotSnapshot as exc:
            ticket.settle("refused", outcome="refused", error=str(exc))
            return Refused(exc.rule, f"Error: {exc}")
        except ServerLimit as exc:
            ticket.settle("refused", outcome="refused", error=str(exc))
            return Invalid(exc.rule, str(exc))
        kept = (
            f"the interpreters of {', '.join(info.engines)}"
            if info.engines
            else "no interpreter (none was live)"
        )
        text = (
            f"Snapshot {info.id}: {info.files} files and installed packages, {kept}; "
            f"{info.bytes} bytes on disk. restore_session or fork_session with this id brings "
            "it back."
        )
        if info.skipped:
            text += f" Left out (links and special files are never copied): {len(info.skipped)}."
        return Told(text, data={"snapshot": info.public()})


async def restore_session(
    ctx: ToolContext, args: RestoreSessionArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    info, folder = ctx.snapshots.store.get(caller.grant, check_id(args.snapshot_id))
    session = ctx.session_of(caller, args.session)
    if session.busy > 1:
        return _busy(args.session)
    call = ToolCall(tool="restore_session", args=dict(raw), grant=caller.grant, session=session.id)
    async with ctx.gated(call, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        restored = await ctx.snapshots.restore(info, folder, session)
        which = f"session {args.session!r}" if args.session else "this session"
        text = f"Restored {info.id} into {which}: its files and packages" + _interpreters(restored)
        return Told(
            text,
            is_error=bool(restored.not_restored),
            data={"snapshot_id": info.id, **restored.public()},
        )


async def fork_session(
    ctx: ToolContext, args: ForkSessionArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    info, folder = ctx.snapshots.store.get(caller.grant, check_id(args.snapshot_id))
    if args.count < 1:
        raise ArgumentError("count", "a whole number of sessions above 0", repr(args.count))
    prefix = args.prefix if args.prefix is not None else info.id
    if not PREFIX.match(prefix):
        raise ArgumentError(
            "prefix",
            "1 to 64 letters, digits, '_', '.' or '-', starting with a letter or digit",
            repr(prefix[:80]),
        )
    names = [f"{prefix}-{i}" for i in range(1, args.count + 1)]
    taken = [n for n in names if ctx.has_session(caller, n)]
    if taken:
        raise ArgumentError(
            "prefix",
            "a prefix none of your sessions uses yet (a fork never overwrites a session)",
            f"{prefix!r}; session {taken[0]!r} exists",
            hint="choose another prefix, or restore_session into an existing session",
        )
    ctx.snapshots.check_forks(caller.grant, info, args.count)
    call = ToolCall(tool="fork_session", args=dict(raw), grant=caller.grant, session=caller.session)
    async with ctx.gated(call, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        sessions = [ctx.session_of(caller, n) for n in names]
        forks = await ctx.snapshots.fork(info, folder, sessions)
        refused = {k: v for f in forks for k, v in f.not_restored.items()}
        interpreters = forks[0].interpreters if forks else ()
        text = (
            f"Forked {info.id} into {len(names)} new sessions: {', '.join(names)}. Each has "
            "its own copy of the files and packages"
            + _interpreters(Restored("", interpreters, refused))
            + " Run code in one with run_code(session=NAME)."
        )
        return Told(
            text,
            is_error=bool(refused),
            data={
                "snapshot_id": info.id,
                "sessions": names,
                "interpreters": list(interpreters),
                "not_restored": refused,
            },
        )


async def list_snapshots(
    ctx: ToolContext, args: ListSnapshotsArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    call = ToolCall(
        tool="list_snapshots", args=dict(raw), grant=caller.grant, session=caller.session
    )
    async with ctx.gated(call, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        kept = ctx.snapshots.store.list(caller.grant)
        lines = [
            f"{i.id}  {i.bytes} bytes  {i.files} files  interpreters: "
            f"{', '.join(i.engines) or 'none'}" + (f"  label: {i.label}" if i.label else "")
            for i in kept
        ]
        text = "\n".join(lines) if lines else "No snapshots (snapshot_session takes one)."
        return Told(text, data={"snapshots": [i.public() for i in kept]})


async def delete_snapshot(
    ctx: ToolContext, args: DeleteSnapshotArgs, raw: Mapping[str, Any], caller: Caller
) -> Outcome:
    ctx.snapshots.store.get(caller.grant, check_id(args.snapshot_id))
    call = ToolCall(
        tool="delete_snapshot", args=dict(raw), grant=caller.grant, session=caller.session
    )
    async with ctx.gated(call, caller) as ticket:
        if ticket.refused is not None:
            return ticket.refused
        info = ctx.snapshots.store.delete(caller.grant, args.snapshot_id)
        return Told(
            f"Deleted snapshot {info.id} ({info.bytes} bytes freed).",
            data={"deleted": info.id, "bytes": info.bytes},
        )


def _interpreters(restored: Restored) -> str:
    text = ""
    if restored.interpreters:
        text += (
            f", and the interpreters of {', '.join(restored.interpreters)}: the next run "
            "there continues with the snapshot's globals."
        )
    else:
        text += "; the snapshot held no interpreter, so the next run starts a new one."
    for key, why in restored.not_restored.items():
        text += (
            f" The {key} interpreter was not restored ({why}); the next run there starts a new one."
        )
    return text
