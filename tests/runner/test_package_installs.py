"""`pip_install_package` over MCP: allow-listed wheels from a real mirror, per session, offline."""

from __future__ import annotations

import hashlib
import shutil
import socket
import sysconfig
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client

from runner import build_server, connection_scope
from runner.packages.mirror import load_allowlist, sync_mirror
from sandboxes import WasmEngine
from tests.conftest import service_for
from tests.results import text_of

pytestmark = [pytest.mark.anyio, pytest.mark.wasm]

ALLOWLIST = """\
[packages]
six = "*"
python-slugify = ">=8,<10"
"""
"""python-slugify needs text-unidecode; neither is in the guest's own bundle (six is)."""
IMPORTS = "import slugify, text_unidecode; print('imported', slugify.slugify('Hello World'))"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A mirror synced once from the real upstream index (the only network use)."""
    root = tmp_path_factory.mktemp("mirror")
    allowlist = root / "allow.toml"
    allowlist.write_text(ALLOWLIST)
    report = sync_mirror(load_allowlist(allowlist), root / "mirror")
    assert report.ok, report.failures
    return allowlist, root / "mirror"


def _policy(tmp_path: Path, allowlist: Path, mirror_dir: Path) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: '1'\ndefault: deny\n"
        f"packages: {{allowlist: '{allowlist}', mirror: '{mirror_dir}'}}\n"
        "tools:\n  run_python_code: {}\n  pip_install_package:\n    limits:\n"
        "      - {counter: installs, window: minute, max: 50, scope: grant}\n"
    )
    return policy


async def _calls(server: Any, name: str, calls: list[tuple[str, dict[str, Any]]]) -> list[str]:
    with connection_scope(name):
        async with Client(server) as client:
            out = []
            for tool, args in calls:
                result = await client.call_tool(tool, args)
                assert isinstance(result, types.CallToolResult)
                out.append(("ERROR " if result.is_error else "") + text_of(result))
            return out


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """No network: proxies point at a closed port and any connect attempt is recorded."""
    attempts: list[Any] = []
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    real_connect = socket.socket.connect

    def refuse(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("network use during an install")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield attempts


def _site_packages_fingerprint() -> str:
    root = Path(sysconfig.get_paths()["purelib"])
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        stat = path.lstat()
        digest.update(f"{path.relative_to(root)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


async def test_an_install_is_importable_in_its_session_only_and_offline(
    wasm_engine: WasmEngine, tmp_path: Path, mirror: tuple[Path, Path], offline: list[Any]
) -> None:
    before = _site_packages_fingerprint()
    policy = _policy(tmp_path, *mirror)
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        server = build_server(service)
        first = await _calls(
            server,
            "first",
            [
                ("run_python_code", {"code": IMPORTS}),
                ("pip_install_package", {"package_name": "python-slugify"}),
                ("run_python_code", {"code": IMPORTS}),
                ("pip_install_package", {"package_name": "python-slugify"}),
            ],
        )
        second = await _calls(server, "second", [("run_python_code", {"code": IMPORTS})])
    assert first[0].startswith("ERROR") and "ModuleNotFoundError" in first[0]
    assert "successfully installed package python-slugify" in first[1]
    assert "text-unidecode" in first[1] or "text_unidecode" in first[1]
    assert first[2].strip() == "imported hello-world"
    assert "already present" in first[3]
    assert second[0].startswith("ERROR") and "ModuleNotFoundError" in second[0]
    assert offline == []
    assert _site_packages_fingerprint() == before


async def test_a_name_off_the_list_is_refused_with_a_suggestion(
    wasm_engine: WasmEngine, tmp_path: Path, mirror: tuple[Path, Path]
) -> None:
    policy = _policy(tmp_path, *mirror)
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        [refused] = await _calls(
            build_server(service), "c", [("pip_install_package", {"package_name": "sixx"})]
        )
    assert refused.startswith("ERROR") and "six" in refused and "allow" in refused


async def test_a_tampered_wheel_is_refused_and_nothing_is_installed(
    wasm_engine: WasmEngine, tmp_path: Path, mirror: tuple[Path, Path]
) -> None:
    allowlist, original = mirror
    copy = tmp_path / "mirror"
    shutil.copytree(original, copy)
    [wheel] = [p for p in (copy / "files").iterdir() if p.name.startswith("text_unidecode-")]
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0xFF
    wheel.write_bytes(bytes(data))
    policy = _policy(tmp_path, allowlist, copy)
    async with service_for(tmp_path / "state", wasm_engine, policy) as service:
        results = await _calls(
            build_server(service),
            "t",
            [
                ("pip_install_package", {"package_name": "python-slugify"}),
                ("run_python_code", {"code": "import slugify"}),
            ],
        )
        sites = list((tmp_path / "state" / "workspaces").glob("*/*/site"))
    assert results[0].startswith("ERROR") and "sha256" in results[0].lower()
    assert results[1].startswith("ERROR") and "ModuleNotFoundError" in results[1]
    assert all(not any(p.suffix == ".py" for p in site.rglob("*")) for site in sites)


async def test_every_refusal_is_audited(
    wasm_engine: WasmEngine, tmp_path: Path, mirror: tuple[Path, Path]
) -> None:
    import json

    policy = _policy(tmp_path, *mirror)
    state = tmp_path / "state"
    async with service_for(state, wasm_engine, policy) as service:
        await _calls(
            build_server(service),
            "a",
            [
                ("pip_install_package", {"package_name": "sixx"}),
                ("pip_install_package", {"package_name": "git+https://example.invalid/x"}),
            ],
        )
    records = [json.loads(line) for line in (state / "audit.jsonl").read_text().splitlines()]
    off_list = [r for r in records if r.get("event") == "outcome" and r.get("status") == "refused"]
    malformed = [r for r in records if r.get("rule") == "/arguments/package_name"]
    assert len(off_list) == 1 and "six" in off_list[0]["error"]
    assert len(malformed) == 1 and malformed[0]["decision"] == "deny"
