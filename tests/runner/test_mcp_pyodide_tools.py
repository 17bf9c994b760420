"""The Mcp Pyodide tool set over MCP on the real Deno + Pyodide engine, default policy."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import mcp_types as types
import pytest
from mcp import Client

from runner import ArgumentError, Config, build_server, open_service
from runner import main as cli_main
from runner._mounts import parse_mount, parse_mounts
from sandboxes import WasmEngine
from sandboxes.pyodide import setup_pyodide
from tests.conftest import IN_CI
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.pyodide, pytest.mark.slow]

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
)
UPSTREAM = {
    "pyodide_execute": {"code", "timeout"},
    "pyodide_install-packages": {"package"},
    "pyodide_get-mount-points": set(),
    "pyodide_list-mounted-directory": {"mountName"},
    "pyodide_read-image": {"mountName", "imagePath"},
}


@pytest.fixture(scope="module")
def pyodide_assets() -> Path:
    try:
        return setup_pyodide()
    except Exception as exc:
        if IN_CI:
            pytest.fail(f"the Pyodide assets are required in CI: {exc}")
        pytest.skip(f"Pyodide is not available here: {exc}")


@pytest.fixture
async def client(
    wasm_engine: WasmEngine, tmp_path: Path, pyodide_assets: Path
) -> AsyncIterator[Client]:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "chart.png").write_bytes(PNG)
    (shared / "notes.txt").write_text("hello")
    config = Config(state_dir=tmp_path / "state", mounts=(parse_mount(f"shared={shared}"),))
    async with (
        open_service(config, engines={"wasm": wasm_engine}) as service,
        Client(build_server(service)) as c,
    ):
        yield c


async def test_the_five_tools_are_listed_with_upstream_arguments(client: Client) -> None:
    listed = {tool.name: tool for tool in (await client.list_tools()).tools}
    for name, arguments in UPSTREAM.items():
        assert set(listed[name].input_schema.get("properties", {})) == arguments, name
    assert listed["pyodide_execute"].input_schema["properties"]["timeout"]["default"] == 5000


async def test_output_and_final_value_come_back_and_state_is_kept(client: Client) -> None:
    first = await client.call_tool("pyodide_execute", {"code": "x = 20\nprint('hi')\nx + 1"})
    assert not first.is_error and "hi" in text_of(first) and "Result: 21" in text_of(first)
    second = await client.call_tool("pyodide_execute", {"code": "x * 2"})
    assert "Result: 40" in text_of(second)


async def test_an_exception_returns_the_traceback_as_an_error(client: Client) -> None:
    result = await client.call_tool("pyodide_execute", {"code": "def f():\n    1/0\nf()"})
    assert result.is_error and "ZeroDivisionError" in text_of(result)


async def test_the_timeout_stops_the_code_and_the_next_call_works(client: Client) -> None:
    stopped = await client.call_tool(
        "pyodide_execute", {"code": "while True: pass", "timeout": 1000}
    )
    assert stopped.is_error and "timeout" in text_of(stopped)
    again = await client.call_tool("pyodide_execute", {"code": "1 + 1"})
    assert "Result: 2" in text_of(again)


async def test_mount_points_listing_and_images(client: Client) -> None:
    mounts = json.loads(text_of(await client.call_tool("pyodide_get-mount-points", {})))
    assert [m["name"] for m in mounts] == ["workspace", "shared"]
    listing = json.loads(
        text_of(await client.call_tool("pyodide_list-mounted-directory", {"mountName": "shared"}))
    )
    assert sorted(e["name"] for e in listing["entries"]) == ["chart.png", "notes.txt"]
    image = await client.call_tool(
        "pyodide_read-image", {"mountName": "shared", "imagePath": "chart.png"}
    )
    assert isinstance(image, types.CallToolResult) and not image.is_error
    [block] = [b for b in image.content if isinstance(b, types.ImageContent)]
    assert base64.b64decode(block.data) == PNG and block.mime_type == "image/png"


@pytest.mark.parametrize("path", ["../../etc/passwd", "/etc/passwd", "notes.txt"])
async def test_read_image_refuses_paths_out_of_the_mount_and_non_images(
    client: Client, path: str
) -> None:
    result = await client.call_tool(
        "pyodide_read-image", {"mountName": "shared", "imagePath": path}
    )
    assert result.is_error and "argument 'imagePath'" in text_of(result)
    assert "root:" not in text_of(result)


async def test_an_image_the_code_writes_comes_back_and_as_a_resource(client: Client) -> None:
    encoded = base64.b64encode(PNG).decode()
    code = f"import base64\nopen('/workspace/dot.png', 'wb').write(base64.b64decode({encoded!r}))"
    result = await client.call_tool("pyodide_execute", {"code": code})
    assert not result.is_error, text_of(result)
    assert any(isinstance(b, types.ImageContent) for b in result.content)
    assert "/workspace/dot.png" in text_of(result)
    uris = [str(r.uri) for r in (await client.list_resources()).resources]
    assert "file:///workspace/dot.png" in uris and "file:///mounts/shared/notes.txt" in uris
    read = await client.read_resource("file:///mounts/shared/notes.txt")
    assert isinstance(read.contents[0], types.TextResourceContents)
    assert read.contents[0].text == "hello"


async def test_installs_without_a_mirror_are_refused_item_by_item(client: Client) -> None:
    result = await client.call_tool("pyodide_install-packages", {"package": "six attrs"})
    assert result.is_error and "mirror" in text_of(result)
    bad = await client.call_tool("pyodide_install-packages", {"package": "six --index-url=x"})
    assert bad.is_error and "argument 'package'" in text_of(bad)


async def test_installs_come_from_the_mirror_and_import_in_the_session(
    wasm_engine: WasmEngine, tmp_path: Path, pyodide_assets: Path
) -> None:
    from runner.packages.mirror import load_allowlist, sync_mirror

    allowlist = tmp_path / "allow.toml"
    allowlist.write_text('[packages]\npython-slugify = ">=8,<10"\n')
    mirror = tmp_path / "mirror"
    assert sync_mirror(load_allowlist(allowlist), mirror, engines=("pyodide",)).ok
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        f"packages: {{allowlist: '{allowlist}', mirror: '{mirror}'}}\n"
        "tools:\n  pyodide_execute: {engine: pyodide}\n  pyodide_install-packages: {}\n"
    )
    config = Config(policy_path=policy, state_dir=tmp_path / "state")
    async with (
        open_service(config, engines={"wasm": wasm_engine}) as service,
        Client(build_server(service)) as client,
    ):
        installed = await client.call_tool(
            "pyodide_install-packages", {"package": "python-slugify sixx"}
        )
        text = text_of(installed)
        assert installed.is_error  # one of the two was refused
        assert "successfully installed package python-slugify" in text
        assert "sixx" in text and "allow" in text
        used = await client.call_tool(
            "pyodide_execute", {"code": "import slugify\nslugify.slugify('Hello World')"}
        )
        assert "hello-world" in text_of(used), text_of(used)


# -- operator mounts: /mnt/NAME inside Pyodide ---------------------------------------------


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """A read-only mount (a file, and links to a secret outside it), a read-write mount, and
    the outside folder."""
    data, out, outside = tmp_path / "data", tmp_path / "out", tmp_path / "outside"
    for folder in (data, out, outside):
        folder.mkdir()
    (data / "input.csv").write_text("a,b\n1,2\n")
    (outside / "secret.txt").write_text("host secret")
    (data / "secret-link.txt").symlink_to(outside / "secret.txt")
    (data / "outside-dir").symlink_to(outside)
    (out / "stale.txt").write_text("delete me")
    return {"data": data, "out": out, "outside": outside}


@pytest.fixture
async def mounted(
    wasm_engine: WasmEngine, tmp_path: Path, pyodide_assets: Path, folders: dict[str, Path]
) -> AsyncIterator[Client]:
    """A server started as with `--mount data=DIR --mount out=DIR:rw`."""
    mounts = parse_mounts([f"data={folders['data']}", f"out={folders['out']}:rw"])
    config = Config(state_dir=tmp_path / "state", mounts=mounts)
    async with (
        open_service(config, engines={"wasm": wasm_engine}) as service,
        Client(build_server(service)) as c,
    ):
        yield c


async def _run(client: Client, code: str) -> types.CallToolResult:
    result = await client.call_tool("pyodide_execute", {"code": code})
    assert isinstance(result, types.CallToolResult)
    return result


async def test_operator_mounts_are_shown_at_mnt_with_their_mode(mounted: Client) -> None:
    listed = json.loads(text_of(await mounted.call_tool("pyodide_get-mount-points", {})))
    assert listed == [
        {"name": "workspace", "mountPoint": "/workspace", "readOnly": False, "visibleToCode": True},
        {"name": "data", "mountPoint": "/mnt/data", "readOnly": True, "visibleToCode": True},
        {"name": "out", "mountPoint": "/mnt/out", "readOnly": False, "visibleToCode": True},
    ]


async def test_code_reads_a_file_of_a_read_only_mount(mounted: Client) -> None:
    result = await _run(mounted, "import csv\nlist(csv.reader(open('/mnt/data/input.csv')))")
    assert not result.is_error, text_of(result)
    assert "Result: [['a', 'b'], ['1', '2']]" in text_of(result)


async def test_code_cannot_change_a_read_only_mount(
    mounted: Client, folders: dict[str, Path]
) -> None:
    attempts = """
import os
refused = []
for attempt in (
    lambda: open('/mnt/data/input.csv', 'w').write('overwritten'),
    lambda: open('/mnt/data/new.txt', 'w').write('new'),
    lambda: os.chmod('/mnt/data/input.csv', 0o666),
    lambda: os.remove('/mnt/data/input.csv'),
    lambda: os.rename('/mnt/data', '/mnt/elsewhere'),
    lambda: os.mkdir('/mnt/data/sub'),
):
    try:
        attempt()
    except OSError as exc:
        refused.append(exc.errno)
len(refused), open('/mnt/data/input.csv').read()
"""
    result = await _run(mounted, attempts)
    assert not result.is_error, text_of(result)
    assert "Result: (6, 'a,b\\n1,2\\n')" in text_of(result)
    assert sorted(p.name for p in folders["data"].iterdir()) == [
        "input.csv",
        "outside-dir",
        "secret-link.txt",
    ]
    assert (folders["data"] / "input.csv").read_text() == "a,b\n1,2\n"


async def test_files_and_images_written_to_a_read_write_mount_reach_the_host(
    mounted: Client, folders: dict[str, Path]
) -> None:
    encoded = base64.b64encode(PNG).decode()
    code = f"""
import base64, os
os.makedirs('/mnt/out/plots', exist_ok=True)
open('/mnt/out/plots/dot.png', 'wb').write(base64.b64decode({encoded!r}))
open('/mnt/out/report.txt', 'w').write('done')
os.remove('/mnt/out/stale.txt')
"""
    result = await _run(mounted, code)
    assert not result.is_error, text_of(result)
    [image] = [b for b in result.content if isinstance(b, types.ImageContent)]
    assert base64.b64decode(image.data) == PNG and image.mime_type == "image/png"
    assert "/mnt/out/plots/dot.png" in text_of(result)
    out = folders["out"]
    assert (out / "plots" / "dot.png").read_bytes() == PNG
    assert (out / "report.txt").read_text() == "done"
    assert not (out / "stale.txt").exists()
    again = await mounted.call_tool(
        "pyodide_read-image", {"mountName": "out", "imagePath": "plots/dot.png"}
    )
    assert isinstance(again, types.CallToolResult) and not again.is_error


async def test_host_changes_to_a_mount_reach_the_session_on_its_next_call(
    mounted: Client, folders: dict[str, Path]
) -> None:
    first = await _run(mounted, "open('/mnt/data/input.csv').read()")
    assert "1,2" in text_of(first)
    (folders["data"] / "input.csv").write_text("a,b\n3,4\n")
    (folders["data"] / "added.txt").write_text("added")
    second = await _run(
        mounted, "open('/mnt/data/input.csv').read(), open('/mnt/data/added.txt').read()"
    )
    assert "Result: ('a,b\\n3,4\\n', 'added')" in text_of(second), text_of(second)


async def test_links_inside_a_mount_are_not_visible_to_code(
    mounted: Client, folders: dict[str, Path]
) -> None:
    code = """
import os
listed = sorted(os.listdir('/mnt/data'))
found = [p for p in ('/mnt/data/secret-link.txt', '/mnt/data/outside-dir/secret.txt')
         if os.path.lexists(p)]
listed, found
"""
    result = await _run(mounted, code)
    assert not result.is_error, text_of(result)
    assert "Result: (['input.csv'], [])" in text_of(result)
    assert "host secret" not in text_of(result)


@pytest.mark.parametrize(
    ("arguments", "argument"),
    [
        ({"mountName": "out", "imagePath": "../data/input.png"}, "imagePath"),
        ({"mountName": "out", "imagePath": "/mnt/out/plots/dot.png"}, "imagePath"),
        ({"mountName": "../out", "imagePath": "dot.png"}, "mountName"),
        ({"mountName": "data", "imagePath": "outside-dir/secret.png"}, "imagePath"),
    ],
)
async def test_image_reads_that_leave_a_mount_are_refused(
    mounted: Client, arguments: dict[str, str], argument: str
) -> None:
    result = await mounted.call_tool("pyodide_read-image", arguments)
    assert result.is_error and f"argument '{argument}'" in text_of(result)


async def test_the_python_code_runner_on_wasm_still_runs_with_mounts_configured(
    mounted: Client,
) -> None:
    result = await mounted.call_tool("run_python_code", {"code": "print(6 * 7)"})
    assert not result.is_error and "42" in text_of(result)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("data={dir}:xx", "':ro' (read-only, the default) or ':rw'"),
        ("data{dir}", "NAME=DIR[:ro|:rw]"),
        ("workspace={dir}", "reserved"),
        ("data={dir}/missing:rw", "an existing folder"),
    ],
)
def test_mount_options_that_are_wrong_name_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, expected: str
) -> None:
    code = cli_main(["serve", "--state-dir", str(tmp_path), "--mount", value.format(dir=tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "argument '--mount'" in err and expected in err


def test_a_mount_name_given_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError) as refused:
        parse_mounts([f"out={tmp_path}", f"out={tmp_path}:rw"])
    assert refused.value.argument == "--mount"


def test_mount_modes_default_to_read_only(tmp_path: Path) -> None:
    odd = tmp_path / "odd:name"
    odd.mkdir()
    parsed = parse_mounts([f"a={tmp_path}", f"b={tmp_path}:ro", f"c={tmp_path}:rw", f"d={odd}"])
    assert [(m.name, m.read_only, m.guest) for m in parsed] == [
        ("a", True, "/mnt/a"),
        ("b", True, "/mnt/b"),
        ("c", False, "/mnt/c"),
        ("d", True, "/mnt/d"),
    ]
    assert parsed[3].host == odd


async def test_mounts_named_in_the_policy_are_listed_and_seen_by_code(
    wasm_engine: WasmEngine, tmp_path: Path, pyodide_assets: Path, folders: dict[str, Path]
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        "tools:\n  pyodide_execute: {engine: pyodide}\n  pyodide_get-mount-points: {}\n"
        "server:\n  mounts:\n"
        f"    - {{name: data, path: '{folders['data']}'}}\n"
        f"    - {{name: out, path: '{folders['out']}', read_only: false}}\n"
    )
    flag = tmp_path / "flag"
    flag.mkdir()
    config = Config(
        policy_path=policy, state_dir=tmp_path / "state", mounts=parse_mounts([f"flag={flag}"])
    )
    async with (
        open_service(config, engines={"wasm": wasm_engine}) as service,
        Client(build_server(service)) as client,
    ):
        listed = json.loads(text_of(await client.call_tool("pyodide_get-mount-points", {})))
        assert [(m["name"], m["mountPoint"], m["readOnly"]) for m in listed] == [
            ("workspace", "/workspace", False),
            ("flag", "/mnt/flag", True),
            ("data", "/mnt/data", True),
            ("out", "/mnt/out", False),
        ]
        code = (
            "import os\ntext = open('/mnt/data/input.csv').read()\n"
            "open('/mnt/out/copy.csv', 'w').write(text)\nsorted(os.listdir('/mnt'))"
        )
        result = await _run(client, code)
        assert "Result: ['data', 'flag', 'out']" in text_of(result), text_of(result)
    assert (folders["out"] / "copy.csv").read_text() == "a,b\n1,2\n"
