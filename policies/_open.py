"""Open what a policy names for its state and its audit: the counter store (`state:`) and
the audit sink (`audit:`). The factories sit above the stores and sinks they choose between;
the Redis ones load on first use (they import the `redis` client)."""

from __future__ import annotations

from pathlib import Path

from ._audit import AuditLog, AuditSink
from ._errors import AuditUnavailable
from ._model import AuditSettings, StateSettings
from ._store import STATE_FILE, CounterStore, state_dir_default


def open_audit_sink(
    settings: AuditSettings,
    *,
    state_url: str | None,
    default_path: Path,
    write: bool = True,
) -> AuditSink:
    """The sink `audit` settings name: the file (`audit.path`, else `default_path`) or the
    Redis stream `audit.stream` at `audit.url`, else `state.url` (`state_url`).

    Args:
        settings: The policy's `audit` section.
        state_url: The policy's `state.url`.
        default_path: The file when `audit.path` names none (`<state dir>/audit.jsonl`).
        write: False opens it for reading only.

    Raises:
        AuditUnavailable: The sink cannot be opened (or has no Redis URL).
    """
    if settings.sink == "file":
        path = Path(settings.path) if settings.path else default_path
        return AuditLog(path, fsync=settings.fsync, write=write)
    url = settings.url or state_url
    if url is None:
        raise AuditUnavailable(
            f"redis stream {settings.stream}",
            "audit.sink is 'redis' but no Redis URL is set; add audit.url or state.url "
            "(e.g. redis://host:6379/0)",
        )
    from ._audit_redis import RedisAuditSink

    return RedisAuditSink(url, stream=settings.stream, fsync=settings.fsync, write=write)


def open_counter_store(state: StateSettings, default_dir: Path | None = None) -> CounterStore:
    """Open the store a policy's `state` section names.

    Args:
        state: The policy's `state` settings.
        default_dir: Folder of the SQLite file when `state.path` is unset
            (default: `state_dir_default()`); the file is `<dir>/state.sqlite3`.

    Raises:
        StateUnavailable: The store cannot be opened.
    """
    if state.backend == "redis":
        from ._redis import RedisCounterStore

        if state.url is None:
            raise ValueError("state.url is required for backend 'redis' (got None)")
        return RedisCounterStore(state.url)
    from ._sqlite import SqliteCounterStore

    folder = default_dir if default_dir is not None else state_dir_default()
    return SqliteCounterStore(Path(state.path) if state.path else folder / STATE_FILE)
