"""Pure tests: every foreign exception is mapped, the wire decoders, the public names."""

from __future__ import annotations

import inspect
import json
import struct
from types import ModuleType
from typing import Any

import docker.errors
import pytest
import requests.exceptions
import urllib3.exceptions

import sandboxes.container
from sandboxes import EngineCrashed, EngineUnavailable, SandboxError
from sandboxes.container._errors import rule_for, translate
from sandboxes.container._protocol import Collector, DockerDemux, ProtocolViolation

pytestmark = [pytest.mark.container]

FOREIGN_MODULES: tuple[ModuleType, ...] = (docker.errors, requests.exceptions, urllib3.exceptions)


def _foreign_classes() -> list[type[Exception]]:
    found: dict[str, type[Exception]] = {}
    for module in FOREIGN_MODULES:
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, Exception)
                and not issubclass(value, Warning)
                and value.__module__.split(".")[0] in ("docker", "requests", "urllib3")
            ):
                found[f"{value.__module__}.{value.__qualname__}"] = value
    return [found[name] for name in sorted(found)]


def _instance(cls: type[Exception]) -> Exception:
    """An instance however the class wants its arguments (None for each required one)."""
    required = [
        p
        for p in list(inspect.signature(cls.__init__).parameters.values())[1:]
        if p.default is inspect.Parameter.empty
        and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    try:
        return cls(*(["boom"] + [None] * (len(required) - 1) if required else ["boom"]))
    except Exception:
        made = cls.__new__(cls)
        made.args = ("boom",)
        return made


@pytest.mark.parametrize("cls", _foreign_classes(), ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_foreign_exception_is_translated(cls: type[Exception]) -> None:
    assert rule_for(cls) is not None
    original = _instance(cls)
    with pytest.raises(SandboxError) as caught, translate("do it", where="unix:///test.sock"):
        raise original
    assert type(caught.value) in (EngineUnavailable, EngineCrashed)
    assert caught.value.__cause__ is original
    assert "do it" in str(caught.value)


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (requests.exceptions.ConnectionError("refused"), EngineUnavailable),
        (docker.errors.ImageNotFound("no such image"), EngineUnavailable),
        (docker.errors.NotFound("no such container"), EngineCrashed),
        (docker.errors.APIError("unknown or invalid runtime name: runsc"), EngineUnavailable),
        (docker.errors.APIError("conflict"), EngineCrashed),
        (requests.exceptions.ReadTimeout("slow"), EngineCrashed),
        (PermissionError(13, "denied"), EngineUnavailable),
        (ConnectionResetError(104, "reset"), EngineCrashed),
    ],
)
def test_the_translation_says_what_failed(raised: Exception, expected: type[SandboxError]) -> None:
    with pytest.raises(expected), translate("talk to dockerd", where="here"):
        raise raised


def test_our_own_and_unrelated_exceptions_pass_through() -> None:
    with pytest.raises(KeyError), translate("look up", where="here"):
        raise KeyError("x")
    with pytest.raises(EngineCrashed, match=r"^mine$"), translate("look up", where="here"):
        raise EngineCrashed("mine")


def _docker_frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def _server_frame(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">cI", tag, len(payload)) + payload


def test_frames_split_anywhere_decode_the_same() -> None:
    inner = (
        _server_frame(b"O", b"hello ")
        + _server_frame(b"E", b"warn")
        + _server_frame(b"O", b"world")
        + _server_frame(b"R", json.dumps({"exit_code": 0}).encode())
    )
    wire = (
        _docker_frame(1, inner[:7]) + _docker_frame(2, b"server note") + _docker_frame(1, inner[7:])
    )
    for size in (1, 3, 8, len(wire)):
        collector = Collector(cap=100)
        ends = [collector.feed(wire[i : i + size]) for i in range(0, len(wire), size)]
        assert [e for e in ends if e is not None] == ["reply"]
        assert (bytes(collector.stdout), bytes(collector.stderr)) == (b"hello world", b"warn")
        assert collector.reply == {"exit_code": 0}
        assert bytes(collector.diagnostics) == b"server note"


def test_output_over_the_cap_ends_the_exchange() -> None:
    collector = Collector(cap=5)
    assert collector.feed(_docker_frame(1, _server_frame(b"O", b"abcdefgh"))) == "output_limit"
    assert (bytes(collector.stdout), collector.truncated) == (b"abcde", ["stdout"])


@pytest.mark.parametrize(
    "wire",
    [
        _docker_frame(1, _server_frame(b"Z", b"?")),
        _docker_frame(1, _server_frame(b"R", b"[1, 2]")),
        _docker_frame(1, struct.pack(">cI", b"O", 1 << 30)),
        struct.pack(">BxxxI", 7, 1) + b"x",
    ],
)
def test_a_corrupt_stream_is_a_protocol_violation(wire: bytes) -> None:
    with pytest.raises(ProtocolViolation):
        Collector(cap=10).feed(wire)


def test_docker_demux_waits_for_whole_frames() -> None:
    demux = DockerDemux()
    frame = _docker_frame(1, b"abc")
    assert list(demux.feed(frame[:5])) == []
    assert list(demux.feed(frame[5:])) == [(1, b"abc")]


def _isort_key(name: str) -> tuple[int, str]:
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_public_names_are_sorted_and_exist() -> None:
    names: list[str] = list(sandboxes.container.__all__)
    assert names == sorted(names, key=_isort_key)
    missing: list[Any] = [n for n in names if not hasattr(sandboxes.container, n)]
    assert missing == []
