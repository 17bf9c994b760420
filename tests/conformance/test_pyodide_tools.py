"""The Mcp Pyodide tools answer the same whichever engine the policy routes them to: the
final expression's value, output, errors and time limits of `pyodide_execute`, installs, and
the mount tools (which run no code, and must not change with the routing either)."""

from __future__ import annotations

import json

import pytest

from ._harness import (
    PACKAGE,
    PACKAGE_VERSION,
    PNG,
    RO_TEXT,
    RUN_TIMEOUT_S,
    Bench,
    Seen,
    image_block,
    stop_notice,
    text_seen,
)

pytestmark = pytest.mark.anyio


async def test_pyodide_execute_final_expression(bench: Bench, session: str) -> None:
    answer = await bench.call("pyodide_execute", {"code": "x = 6\nx * 7"}, session=session)
    assert answer == text_seen("Result: 42")


async def test_pyodide_execute_output_and_value(bench: Bench, session: str) -> None:
    code = "print('printed')\nword = 'value'\nword"
    answer = await bench.call("pyodide_execute", {"code": code}, session=session)
    assert answer == text_seen("printed\nResult: 'value'")


async def test_pyodide_execute_none_gives_no_result(bench: Bench, session: str) -> None:
    answer = await bench.call("pyodide_execute", {"code": "x = 1\nNone"}, session=session)
    assert answer == text_seen("(no output)")


async def test_pyodide_execute_error(bench: Bench, session: str) -> None:
    answer = await bench.call("pyodide_execute", {"code": "print('p')\n1/0"}, session=session)
    assert (answer.is_error, len(answer.blocks), answer.structured) == (True, 1, None)
    lines = answer.text.split("\n")
    assert lines[:6] == [
        "Error: ZeroDivisionError: division by zero",
        "p",
        "[stderr]",
        "Traceback (most recent call last):",
        '  File "<code>", line 2, in <module>',
        "    1/0",
    ]
    assert answer.text.count("ZeroDivisionError: division by zero") == 1  # said once, first


async def test_pyodide_execute_timeout(bench: Bench, session: str) -> None:
    asked = {"code": "while True: pass", "timeout": RUN_TIMEOUT_S * 1000}
    answer = await bench.call("pyodide_execute", asked, session=session)
    limit = f"wall time {RUN_TIMEOUT_S} s"
    head = f"Error: the code was stopped by timeout ({limit})\n[stderr]\n"
    assert (answer.is_error, len(answer.blocks), answer.structured) == (True, 1, None)
    assert answer.text.startswith(head), answer.text
    stop_notice(answer.text.removeprefix(head) + "\n", limit)


async def test_pyodide_install_packages_then_import(bench: Bench, session: str) -> None:
    installed = await bench.call("pyodide_install-packages", {"package": PACKAGE}, session=session)
    imported = await bench.call(
        "pyodide_execute", {"code": f"import {PACKAGE}\n{PACKAGE}.NAME"}, session=session
    )
    assert installed == text_seen(
        f"successfully installed package {PACKAGE} ({PACKAGE}=={PACKAGE_VERSION}, from the "
        "local mirror, hashes verified)"
    )
    assert imported == text_seen(f"Result: {PACKAGE!r}")


async def test_pyodide_get_mount_points(bench: Bench, session: str) -> None:
    answer = await bench.call("pyodide_get-mount-points", {}, session=session)
    listed = [
        {"name": "workspace", "mountPoint": "/workspace", "readOnly": False, "visibleToCode": True},
        {"name": "ro", "mountPoint": "/mnt/ro", "readOnly": True, "visibleToCode": True},
        {"name": "rw", "mountPoint": "/mnt/rw", "readOnly": False, "visibleToCode": True},
    ]
    assert answer == text_seen(json.dumps(listed, indent=2))


async def test_pyodide_list_mounted_directory(bench: Bench, session: str) -> None:
    answer = await bench.call(
        "pyodide_list-mounted-directory", {"mountName": "ro"}, session=session
    )
    entries = [
        {"name": "chart.png", "path": "chart.png", "kind": "file", "size": len(PNG)},
        {"name": "notes.txt", "path": "notes.txt", "kind": "file", "size": len(RO_TEXT)},
    ]
    assert answer == text_seen(json.dumps({"mount": "ro", "entries": entries}, indent=2))


async def test_pyodide_read_image(bench: Bench, session: str) -> None:
    answer = await bench.call(
        "pyodide_read-image", {"mountName": "ro", "imagePath": "chart.png"}, session=session
    )
    assert answer == Seen(False, (("text", "ro/chart.png"), image_block(PNG)), None)
