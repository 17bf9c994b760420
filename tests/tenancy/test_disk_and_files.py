"""Disk budgets count real usage, and host-side file access never blocks, on every engine,
over real streamable HTTP.

- Sparse files count the blocks they occupy: a session of sparse files leaves the server-wide
  total small, so other grants still start sessions.
- A tree past PATH_MAX is counted and, over the budget, removed: the run is `killed` by the
  workspace limit and the session's workspace emptied; a deep tree the code deletes leaves no
  host copy behind.
- An inode budget (`workspace_files`).
- A FIFO or socket in a workspace is refused quickly by every host-side path (resources,
  mount tools, run_python_file, runs), and a dozen reads of one hold no other client up.
"""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxes import DiskUsage, disk_usage
from tests.tenancy._server import (
    TenantServer,
    engine_params,
    result_text,
    tenant_policy,
    tenant_server,
)

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

MIB = 1024 * 1024
SMALL_MB = 4
"""`run_code`'s workspace budget in these tests (MiB); the other tools keep the default 256."""
SMALL_FILES = 300
"""`run_code`'s inode budget in these tests."""
TOTAL_BYTES = 1024 * MIB
"""The server-wide total: far below what sparse files would claim by their length."""
PROMPT_S = 20.0
"""Longest wait for an answer that must come promptly (engines under load included)."""

TOOLS = (
    "  run_code:\n"
    f"    quotas: {{workspace_mb: {SMALL_MB}, workspace_files: {SMALL_FILES}, timeout_s: 60}}\n"
    "  run_python_code: {}\n"
    "  run_python_file: {}\n"
    "  save_to_file_and_run: {}\n"
    "  pyodide_list-mounted-directory: {}\n"
    "  pyodide_read-image: {}\n"
)


@pytest.fixture(scope="module", params=engine_params())
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TenantServer]:
    engine = request.param
    policy = tenant_policy(
        engine,
        tools=TOOLS,
        sections=f"server:\n  max_workspace_bytes_total: {TOTAL_BYTES}\n",
    )
    with tenant_server(tmp_path_factory.mktemp(f"disk-{engine}"), engine, policy=policy) as running:
        yield running


def workspaces(server: TenantServer) -> Path:
    return server.state_dir / "workspaces"


def host_usage(server: TenantServer) -> DiskUsage:
    """What every session workspace of the server occupies on the host (by descriptor)."""
    return disk_usage(workspaces(server))


def folder_holding(server: TenantServer, marker: str) -> Path:
    """The host folder of the session workspace that holds the file `marker`."""
    for candidate in workspaces(server).glob(f"*/*/files/{marker}"):
        return candidate.parent
    raise AssertionError(f"no session workspace holds {marker}")


def structured(message: dict[str, Any] | None) -> dict[str, Any]:
    assert message is not None and "result" in message, message
    content = message["result"].get("structuredContent")
    assert isinstance(content, dict), message
    return content


async def run_code(session: Any, code: str) -> dict[str, Any]:
    status, answer = await asyncio.wait_for(
        session.call_tool("run_code", {"code": code}), timeout=180
    )
    assert status == 200
    return structured(answer)


# -- sparse files -------------------------------------------------------------------------------


def sparse_code(server: TenantServer) -> tuple[str, int]:
    """Code making sparse files, and their total length. Pyodide's files live in the guest's
    memory, where a sparse file is dense: there it makes fewer, smaller ones."""
    count, size = (4, 20 * MIB) if server.engine == "pyodide" else (40, 190 * MIB)
    code = (
        f"for i in range({count}):\n"
        f"    with open(f'sparse-{{i}}', 'wb') as f:\n"
        f"        f.truncate({size})\n"
        "print('made')"
    )
    return code, count * size


async def test_sparse_files_count_what_they_occupy_and_leave_room_for_other_grants(
    server: TenantServer,
) -> None:
    code, length = sparse_code(server)
    async with server.raw("alice") as alice:
        status, answer = await alice.call_tool("run_python_code", {"code": code})
        assert status == 200 and answer is not None
    assert length > TOTAL_BYTES or server.engine == "pyodide"
    used = host_usage(server)
    assert used.bytes < TOTAL_BYTES, used
    async with server.raw("bob") as bob:  # a new session of another grant starts
        status, answer = await bob.call_tool("run_python_code", {"code": "print(6*7)"})
        assert status == 200
        assert "42" in result_text(answer), answer


# -- deep trees -----------------------------------------------------------------------------------

DEEP = (
    "import os\n"
    "start = os.getcwd()\n"
    "os.makedirs('deep', exist_ok=True)\n"
    "os.chdir('deep')\n"
    "for _ in range(66):\n"
    "    os.mkdir('d' * 60)\n"
    "    os.chdir('d' * 60)\n"
    "for i in range({files}):\n"
    "    with open(f'blob-{{i}}', 'wb') as f:\n"
    "        f.write(os.urandom(1024 * 1024))\n"
    "os.chdir(start)\n"
    "print('written')\n"
)


async def test_a_tree_past_path_max_over_the_budget_is_killed_and_emptied(
    server: TenantServer,
) -> None:
    async with server.raw("carol") as carol:
        result = await run_code(
            carol, "open('kept-before.txt', 'w').write('x')\n" + DEEP.format(files=SMALL_MB * 2)
        )
        assert result["status"] == "killed", result
        assert result["limit"].startswith("workspace"), result
        assert "emptied" in result["limit"], result
        after = await run_code(carol, "import os\nprint(sorted(os.listdir('.')))")
        assert after["stdout"].strip() == "[]", after
    used = host_usage(server)
    assert used.bytes <= TOTAL_BYTES and used.complete


async def test_a_deep_tree_the_code_deletes_leaves_nothing_on_the_host(
    server: TenantServer,
) -> None:
    async with server.raw("alice") as alice:
        made = await run_code(
            alice, "open('anchor-deep.txt', 'w').write('a')\n" + DEEP.format(files=1)
        )
        assert made["status"] == "ok", made
        folder = folder_holding(server, "anchor-deep.txt")
        held = disk_usage(folder)
        assert held.bytes >= MIB and held.files >= 66, held  # the host holds the deep file
        gone = await run_code(alice, "import shutil\nshutil.rmtree('deep')\nprint('gone')")
        assert gone["status"] == "ok", gone
        left = disk_usage(folder)
        assert left.files == 1 and left.bytes < MIB, left  # only the anchor


# -- inodes ---------------------------------------------------------------------------------------


async def test_the_inode_budget_stops_a_run_and_empties_its_workspace(
    server: TenantServer,
) -> None:
    code = (
        "import os\nos.mkdir('many')\n"
        f"for i in range({SMALL_FILES * 2}):\n"
        "    open(f'many/{i}', 'w').close()\n"
        "print('made')"
    )
    async with server.raw("bob") as bob:
        result = await run_code(bob, code)
        assert result["status"] == "killed", result
        assert f"{SMALL_FILES} files" in result["limit"], result
        after = await run_code(bob, "import os\nprint(len(os.listdir('.')))")
        assert after["stdout"].strip() == "0", after


# -- FIFOs, sockets and other files that are not regular ------------------------------------------


def plant_specials(folder: Path) -> list[socket.socket]:
    """A FIFO, a socket and a FIFO named like an image and a script, in a session folder (as a
    guest of the container engine can leave them). Returns the sockets to close."""
    os.mkfifo(folder / "ff")
    os.mkfifo(folder / "picture.png")
    os.mkfifo(folder / "script.py")
    sock = socket.socket(socket.AF_UNIX)
    short = Path(tempfile.mkdtemp(dir="/tmp"))  # a socket's path must be short: made, then moved
    sock.bind(str(short / "s"))
    os.rename(short / "s", folder / "sock")
    short.rmdir()
    return [sock]


async def test_fifos_and_sockets_are_refused_quickly_on_every_host_path(
    server: TenantServer,
) -> None:
    async with server.raw("alice") as alice:
        await run_code(alice, "open('anchor-fifo.txt', 'w').write('a')")
        keep = plant_specials(folder_holding(server, "anchor-fifo.txt"))
        try:
            for uri in ("file:///workspace/ff", "file:///workspace/sock"):
                began = time.monotonic()
                _, answer = await asyncio.wait_for(
                    alice.request("resources/read", {"uri": uri}), PROMPT_S
                )
                assert time.monotonic() - began < PROMPT_S
                assert answer is not None and "error" in answer, answer
                assert (
                    "FIFO" in answer["error"]["message"] or "socket" in answer["error"]["message"]
                )
            _, listed = await asyncio.wait_for(alice.request("resources/list", {}), PROMPT_S)
            assert listed is not None and "result" in listed
            names = [r["name"] for r in listed["result"]["resources"]]
            assert "workspace/ff" not in names and "workspace/sock" not in names
            _, image = await asyncio.wait_for(
                alice.call_tool(
                    "pyodide_read-image", {"mountName": "workspace", "imagePath": "picture.png"}
                ),
                PROMPT_S,
            )
            assert image is not None and image["result"]["isError"], image
            _, listing = await asyncio.wait_for(
                alice.call_tool("pyodide_list-mounted-directory", {"mountName": "workspace"}),
                PROMPT_S,
            )
            assert listing is not None and not listing["result"].get("isError"), listing
            assert '"kind": "other"' in result_text(listing)
            _, script = await asyncio.wait_for(
                alice.call_tool("run_python_file", {"file_name": "script.py"}), PROMPT_S
            )
            assert script is not None and script["result"]["isError"], script
            assert "regular file" in result_text(script)
            ran = await asyncio.wait_for(run_code(alice, "print(6*7)"), PROMPT_S * 3)
            assert ran["stdout"].strip() == "42", ran  # copy-in/out and budget walks go on
        finally:
            for sock in keep:
                sock.close()


async def test_a_dozen_reads_of_a_fifo_hold_no_other_client_up(server: TenantServer) -> None:
    async with server.raw("alice") as alice, server.raw("bob") as bob:
        await run_code(alice, "open('anchor-dozen.txt', 'w').write('a')")
        keep = plant_specials(folder_holding(server, "anchor-dozen.txt"))
        try:
            reads = [
                asyncio.ensure_future(
                    alice.request("resources/read", {"uri": "file:///workspace/ff"})
                )
                for _ in range(12)
            ]
            began = time.monotonic()
            ran = await asyncio.wait_for(run_code(bob, "print(6*7)"), PROMPT_S * 3)
            assert ran["stdout"].strip() == "42", ran
            answers = await asyncio.wait_for(asyncio.gather(*reads), PROMPT_S)
            assert time.monotonic() - began < PROMPT_S * 3
            assert all(a is not None and "error" in a for _, a in answers), answers
        finally:
            for sock in keep:
                sock.close()


@pytest.mark.parametrize("engine", engine_params("container", "gvisor"))
async def test_a_fifo_the_container_guest_makes_is_refused(tmp_path: Path, engine: str) -> None:
    with tenant_server(tmp_path, engine) as running:
        async with running.raw("alice") as alice:
            made = await run_code(alice, "import os\nos.mkfifo('ff')\nprint('made')")
            assert made["status"] == "ok", made
            reads = [
                asyncio.ensure_future(
                    alice.request("resources/read", {"uri": "file:///workspace/ff"})
                )
                for _ in range(12)
            ]
            answers = await asyncio.wait_for(asyncio.gather(*reads), PROMPT_S)
            # runc leaves the FIFO on the host, refused as one; gVisor keeps a guest's FIFO
            # inside its own file system, so the host has no such file.
            seen = "FIFO" if engine == "container" else "which does not exist there"
            for _, answer in answers:
                assert answer is not None and seen in answer["error"]["message"], answer
            async with running.raw("bob") as bob:
                ran = await asyncio.wait_for(run_code(bob, "print(6*7)"), PROMPT_S * 3)
                assert ran["stdout"].strip() == "42", ran
