"""One contract, two sinks: the JSON-lines file and a Redis stream (a real redis-server) keep
the same `AuditSink` behaviour; then what only Redis has (its durability settings, Redis down)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import (
    AuditLog,
    AuditRecord,
    AuditSink,
    AuditUnavailable,
    PolicyLoadError,
    RedisAuditSink,
    load_policy_text,
    open_audit_sink,
    records,
)
from policies._audit import iso_time
from tests.redis_server import redis_server


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sink(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[AuditSink]:
    """A fresh sink of each kind (a stream key of its own on the shared redis-server)."""
    opened: AuditSink
    if kind == "file":
        opened = AuditLog(tmp_path / "audit.jsonl")
    else:
        url = request.getfixturevalue("redis_url")
        opened = RedisAuditSink(url, stream=f"test-audit-{uuid.uuid4().hex[:8]}")
    yield opened
    opened.close()


def reader(sink: AuditSink) -> AuditSink:
    """The same sink opened for reading only, as `sandgate audit` opens it."""
    if isinstance(sink, AuditLog):
        return AuditLog(sink.path, write=False)
    assert isinstance(sink, RedisAuditSink)
    return RedisAuditSink(sink.url, stream=sink.stream, write=False)


def record(n: int, *, at: float = 1_700_000_000.0, **more: object) -> AuditRecord:
    return AuditRecord(time=iso_time(at + n), id=f"d{n}", event="decision", **more)  # type: ignore[arg-type]


def test_records_come_back_in_order_with_every_field(sink: AuditSink) -> None:
    first = record(
        1,
        decision="allow",
        tool="run_code",
        grant="alice",
        arg_keys=("code",),
        limits={"wall_timeout_s": 5.0},
        reason="naïve \ud800 text",  # an unpaired surrogate from a caller's text
    )
    sink.append(first)
    sink.append_fields({"time": iso_time(1_700_000_002.0), "id": "d2", "event": "outcome"})
    back = list(records(reader(sink)))
    assert [r.id for r in back] == ["d1", "d2"]
    assert back[0].arg_keys == ("code",) and back[0].limits == {"wall_timeout_s": 5.0}
    assert back[0].reason == "naïve \ud800 text"
    assert back[1].event == "outcome" and back[1].decision is None


def test_reading_after_a_cursor_yields_only_what_came_since(sink: AuditSink) -> None:
    for n in range(3):
        sink.append(record(n))
    seen = list(sink.entries())
    assert [e.record.id for e in seen] == ["d0", "d1", "d2"]
    assert list(sink.entries(after=seen[-1].cursor)) == []
    sink.append(record(3))
    sink.append(record(4))
    tail = list(sink.entries(after=seen[-1].cursor))
    assert [e.record.id for e in tail] == ["d3", "d4"]
    assert [e.record.id for e in sink.entries(after=seen[0].cursor)] == ["d1", "d2", "d3", "d4"]


def test_since_keeps_the_records_written_at_or_after_a_time(sink: AuditSink) -> None:
    now = 1_700_000_000.0
    for n in range(4):
        sink.append(record(n, at=now))
    assert [r.id for r in records(sink, since=now + 2)] == ["d2", "d3"]
    assert [r.id for r in records(sink, since=now + 2.5)] == ["d3"]


def test_concurrent_appends_are_each_kept_once(sink: AuditSink) -> None:
    def writer(n: int) -> None:
        for i in range(50):
            sink.append(AuditRecord(time="t", id=f"{n}-{i}", event="decision", reason="x" * 3000))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    ids = [r.id for r in records(sink)]
    assert len(ids) == 300 and len(set(ids)) == 300
    for n in range(6):  # each writer's records stay in the order it wrote them
        assert [i for i in ids if i.startswith(f"{n}-")] == [f"{n}-{i}" for i in range(50)]


def test_after_close_appends_raise_and_reading_still_works(sink: AuditSink) -> None:
    sink.append(record(1))
    sink.close()
    with pytest.raises(AuditUnavailable) as raised:
        sink.append(record(2))
    assert sink.where in str(raised.value)
    assert [r.id for r in records(reader(sink))] == ["d1"]


def test_a_sink_opened_to_read_refuses_appends(sink: AuditSink) -> None:
    with pytest.raises(AuditUnavailable):
        reader(sink).append(record(1))
    assert list(records(sink)) == []


def test_the_policy_names_the_sink(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "redis":
        url = request.getfixturevalue("redis_url")
        section = (
            f"audit: {{sink: redis, stream: s-{uuid.uuid4().hex[:6]}}}\n"
            f"state: {{backend: redis, url: '{url}'}}\n"
        )
    else:
        section = f"audit: {{path: '{tmp_path / 'named.jsonl'}'}}\n"
    policy = load_policy_text("version: '1'\n" + section)
    opened = open_audit_sink(
        policy.audit, state_url=policy.state.url, default_path=tmp_path / "default.jsonl"
    )
    try:
        expected = RedisAuditSink if kind == "redis" else AuditLog
        assert isinstance(opened, expected)
        opened.append(record(1))
        assert [r.id for r in records(opened)] == ["d1"]
    finally:
        opened.close()
    assert not (tmp_path / "default.jsonl").exists()


# -- Redis only -------------------------------------------------------------------------------


def test_a_redis_sink_or_redis_sessions_need_a_url() -> None:
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text("version: '1'\naudit: {sink: redis}\n")
    (problem,) = raised.value.problems
    assert problem.path == "audit.sink"
    assert "audit.url" in problem.message and "state.url" in problem.message
    with pytest.raises(PolicyLoadError) as raised:
        load_policy_text("version: '1'\nserver: {http_sessions: redis}\n")
    (problem,) = raised.value.problems
    assert problem.path == "server.http_sessions" and "state.url" in problem.message
    text = "version: '1'\naudit: {sink: redis, url: 'redis://r:6379/1'}\n"
    assert load_policy_text(text).audit.url == "redis://r:6379/1"  # its own URL is enough


@pytest.mark.redis
def test_redis_without_aof_is_a_warning_and_refused_when_fsync_is_asked(redis_url: str) -> None:
    plain = RedisAuditSink(redis_url, stream="test-aof")
    try:
        (warning,) = plain.warnings
        assert "appendonly no" in warning and "appendonly yes" in warning
    finally:
        plain.close()
    with pytest.raises(AuditUnavailable) as raised:
        RedisAuditSink(redis_url, stream="test-aof", fsync=True)
    assert "appendfsync always" in raised.value.detail


@pytest.mark.redis
def test_redis_with_aof_always_satisfies_fsync(tmp_path_factory: pytest.TempPathFactory) -> None:
    with redis_server(tmp_path_factory.mktemp("aof")) as server:
        durable = RedisAuditSink(server.url, fsync=True)
        try:
            assert durable.warnings == ()
            durable.append(record(1))
        finally:
            durable.close()
        server.stop()
        server.start()  # the acknowledged record is in the AOF
        assert [r.id for r in records(RedisAuditSink(server.url, write=False))] == ["d1"]


@pytest.mark.redis
def test_redis_down_is_audit_unavailable(tmp_path_factory: pytest.TempPathFactory) -> None:
    with redis_server(tmp_path_factory.mktemp("down")) as server:
        sink = RedisAuditSink(server.url, timeout_s=1.0)
        sink.append(record(1))
        server.stop()
        with pytest.raises(AuditUnavailable) as raised:
            sink.append(record(2))
        assert raised.value.path == sink.where and "Redis" in raised.value.detail
        with pytest.raises(AuditUnavailable):
            list(sink.entries())
        sink.close()
    with pytest.raises(AuditUnavailable):
        RedisAuditSink(server.url, timeout_s=1.0)
