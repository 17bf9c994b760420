"""`sandgate audit tail --follow`, a real process reading while the test appends, from the
JSON-lines file and from a Redis stream (a real redis-server): the last records first, then
each new one as it is written, in order and once; Ctrl-C ends it with status 0 and no
traceback."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from policies import AuditLog, AuditRecord, AuditSink, RedisAuditSink
from runner import main
from tests.processes import sandgate_command, stop
from tests.redis_server import redis_url  # noqa: F401  (the fixture)

LINE_TIMEOUT_S = 30.0
"""How long a record may take to show up (the CLI's start-up included)."""


@dataclass
class Follower:
    """A running `sandgate audit tail --follow` and the lines it printed so far."""

    process: subprocess.Popen[bytes]
    lines: queue.Queue[bytes]

    def next_record(self) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=LINE_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError(f"nothing printed within {LINE_TIMEOUT_S} s") from None
        assert line, "the follower exited"
        found: dict[str, Any] = json.loads(line)
        return found


def _pump(stream: IO[bytes], lines: queue.Queue[bytes]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(b"")  # end of output


@pytest.fixture(params=["file", pytest.param("redis", marks=pytest.mark.redis)])
def sink_and_argv(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[AuditSink, list[str]]]:
    """A sink to append to, and the `sandgate audit` arguments that read it."""
    if request.param == "file":
        log = AuditLog(tmp_path / "audit.jsonl")
        yield log, ["--path", str(log.path)]
        log.close()
        return
    url: str = request.getfixturevalue("redis_url")
    stream = f"test-follow-{uuid.uuid4().hex[:8]}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"version: '1'\naudit: {{sink: redis, url: '{url}', stream: {stream}}}\n")
    sink = RedisAuditSink(url, stream=stream)
    yield sink, ["--policy", str(policy)]
    sink.close()


def _record(n: int) -> AuditRecord:
    return AuditRecord(time=f"2026-01-01T00:00:{n:02d}.000000Z", id=f"d{n}", event="decision")


def test_follow_prints_the_last_records_then_each_new_one_until_ctrl_c(
    sink_and_argv: tuple[AuditSink, list[str]],
) -> None:
    sink, where = sink_and_argv
    for n in (1, 2, 3):
        sink.append(_record(n))
    argv = [sandgate_command(), "audit", "tail", "-n", "2", "--follow", "--interval", "0.05"]
    process = subprocess.Popen([*argv, *where], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert process.stdout is not None and process.stderr is not None
        lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
        follower = Follower(process, lines)
        assert [follower.next_record()["id"] for _ in range(2)] == ["d2", "d3"]
        sink.append(_record(4))  # written after the follower printed the tail
        assert follower.next_record()["id"] == "d4"
        for n in (5, 6, 7):
            sink.append(_record(n))
        assert [follower.next_record()["id"] for _ in range(3)] == ["d5", "d6", "d7"]
        assert lines.empty()  # each record once
        began = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=LINE_TIMEOUT_S) == 0
        assert time.monotonic() - began < LINE_TIMEOUT_S
        assert lines.get(timeout=LINE_TIMEOUT_S) == b""  # nothing more was printed
        assert process.stderr.read() == b""  # no traceback
    finally:
        stop(process)


def test_follow_refuses_an_interval_out_of_bounds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    AuditLog(tmp_path / "audit.jsonl").close()
    argv = ["audit", "tail", "-f", "--interval", "0", "--path", str(tmp_path / "audit.jsonl")]
    assert main(argv) == 2
    assert "--interval must be 0.01 to 60.0 seconds, got 0.0" in capsys.readouterr().err
