"""The mirror end to end against the real upstream index: sync, verify, install, import."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.packages.mirror import (
    HashMismatch,
    NotAllowed,
    NoWheel,
    VersionNotAllowed,
    check_allowed,
    install,
    installed_packages,
    list_mirror,
    load_allowlist,
    load_lock,
    mirror_main,
    parse_requirement,
    sync_mirror,
    verify_mirror,
)

from ._builders import RealMirror, listing_digest, tree_digest

IMPORT_TIMEOUT_S = 60
BLACKHOLE = "http://127.0.0.1:9"


class NetworkUsed(AssertionError):
    """A socket connection was attempted while the network was cut."""


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[object]]:
    """Proxies point at a closed port and every socket connect raises (and is recorded)."""
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(var, BLACKHOLE)
    attempts: list[object] = []

    def refuse(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise NetworkUsed(f"connection attempted to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield attempts


def _version(mirror: Path, name: str) -> str:
    found = load_lock(mirror).find(name, "wasm")
    assert found is not None
    return found.version


def test_sync_locks_allowed_packages_and_dependencies(real_mirror: RealMirror) -> None:
    report = real_mirror.report
    by_name = {p.name: p for p in report.locked}
    assert set(by_name) == {"python-dateutil", "six"}
    dateutil, six = by_name["python-dateutil"], by_name["six"]
    assert dateutil.version.startswith("2.")
    assert dateutil.dependencies == ("six",)
    assert six.engines == ("wasm", "pyodide", "container")
    assert all(p.filename.endswith(".whl") and len(p.sha256) == 64 for p in report.locked)
    assert [(f.package, f.engine) for f in report.failures] == [("markupsafe", "wasm")]
    assert "no wheel" in report.failures[0].reason
    assert set(report.downloaded) == {p.filename for p in report.locked}
    assert real_mirror.progress
    page = (real_mirror.path / "simple" / "six" / "index.html").read_text()
    assert f"../../files/{six.filename}#sha256={six.sha256}" in page
    assert list_mirror(real_mirror.path) == sorted(report.locked, key=lambda p: p.name)
    assert verify_mirror(real_mirror.path) == []


def test_second_sync_downloads_nothing(real_mirror: RealMirror, mirror_copy: Path) -> None:
    lines: list[str] = []
    again = sync_mirror(
        load_allowlist(real_mirror.allowlist_file), mirror_copy, progress=lines.append
    )
    assert again.downloaded == ()
    assert again.bytes_downloaded == 0
    assert set(again.reused) == {p.filename for p in real_mirror.report.locked}
    assert again.locked == real_mirror.report.locked
    assert any(line.startswith("have ") for line in lines)


def test_install_then_import_in_a_fresh_interpreter(
    real_mirror: RealMirror,
    tmp_path: Path,
    no_network: list[object],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    purelib = Path(sysconfig.get_paths()["purelib"])
    server_before = listing_digest(purelib)
    site = tmp_path / "session" / "site"
    mirror = real_mirror.path
    mirror_before = tree_digest(mirror / "files")

    first = install(
        parse_requirement("python-dateutil"), mirror_dir=mirror, site_dir=site, engine="wasm"
    )
    expected = {
        f"python-dateutil=={_version(mirror, 'python-dateutil')}",
        f"six=={_version(mirror, 'six')}",
    }
    assert set(first.installed) == expected
    assert first.already_present == ()
    second = install(
        parse_requirement("python-dateutil"), mirror_dir=mirror, site_dir=site, engine="wasm"
    )
    assert second.installed == ()
    assert set(second.already_present) == expected
    six_only = install(parse_requirement("six"), mirror_dir=mirror, site_dir=site, engine="wasm")
    assert six_only.installed == ()
    assert installed_packages(site) == {
        "python-dateutil": _version(mirror, "python-dateutil"),
        "six": _version(mirror, "six"),
    }

    assert no_network == []
    assert listing_digest(purelib) == server_before
    assert tree_digest(mirror / "files") == mirror_before
    assert sorted(p.name for p in site.parent.iterdir()) == ["site"]

    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import six, dateutil.parser; "
        "print(six.__file__); print(dateutil.parser.parse('2024-02-29T12:00').isoformat())"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(site)],
        capture_output=True,
        text=True,
        timeout=IMPORT_TIMEOUT_S,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.upper().endswith("PROXY")},
    )
    assert done.returncode == 0, done.stderr
    six_file, parsed = done.stdout.split()
    assert Path(six_file).is_relative_to(site)
    assert parsed == "2024-02-29T12:00:00"


def test_checks_against_the_real_allowlist(real_mirror: RealMirror) -> None:
    allowlist = load_allowlist(real_mirror.allowlist_file)
    lock = load_lock(real_mirror.path)
    six = check_allowed(parse_requirement("six"), allowlist, lock, "pyodide")
    assert six.name == "six"

    with pytest.raises(NotAllowed) as near:
        check_allowed(parse_requirement("sixx"), allowlist, lock, "wasm")
    assert (near.value.package, near.value.suggestion) == ("sixx", "six")
    assert "did you mean `six`?" in str(near.value)

    with pytest.raises(NotAllowed) as squat:
        check_allowed(parse_requirement("python-dateutils"), allowlist, lock, "wasm")
    assert squat.value.suggestion == "python-dateutil"

    with pytest.raises(VersionNotAllowed) as version:
        check_allowed(parse_requirement("python-dateutil==3.0.0"), allowlist, lock, "wasm")
    assert (version.value.requested, version.value.allowed) == ("3.0.0", "<3,>=2.8")

    with pytest.raises(NoWheel) as nowheel:
        check_allowed(parse_requirement("markupsafe"), allowlist, lock, "wasm")
    assert (nowheel.value.package, nowheel.value.engine) == ("markupsafe", "wasm")
    assert "sandgate mirror sync" in str(nowheel.value)

    with pytest.raises(NotAllowed) as elsewhere:
        check_allowed(parse_requirement("markupsafe"), allowlist, lock, "container")
    assert not isinstance(elsewhere.value, VersionNotAllowed)

    with pytest.raises(NoWheel) as other_pin:
        check_allowed(parse_requirement("six==1.16.0"), allowlist, lock, "wasm")
    assert other_pin.value.version == "1.16.0"


def test_tampered_wheel_installs_nothing_and_verify_finds_it(
    mirror_copy: Path, tmp_path: Path, no_network: list[object]
) -> None:
    lock = load_lock(mirror_copy)
    six = lock.find("six", "wasm")
    assert six is not None
    wheel = lock.wheel_path(six)
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01
    wheel.write_bytes(bytes(data))

    site = tmp_path / "ws" / "site"
    site.mkdir(parents=True)
    (site / "keep.txt").write_text("untouched")
    before = tree_digest(site)
    with pytest.raises(HashMismatch) as caught:
        install(
            parse_requirement("python-dateutil"),
            mirror_dir=mirror_copy,
            site_dir=site,
            engine="container",
        )
    assert caught.value.file == wheel
    assert caught.value.expected == six.sha256
    assert caught.value.actual != six.sha256
    assert tree_digest(site) == before
    assert sorted(p.name for p in site.parent.iterdir()) == ["site"]
    assert no_network == []

    problems = verify_mirror(mirror_copy)
    assert [(p.file, p.kind) for p in problems] == [(f"files/{six.filename}", "hash_mismatch")]
    out, err = io.StringIO(), io.StringIO()
    assert mirror_main(["verify", "--mirror", str(mirror_copy)], stdout=out, stderr=err) == 1
    assert six.filename in out.getvalue()

    wheel.unlink()
    assert [p.kind for p in verify_mirror(mirror_copy)] == ["missing"]


def test_cli_sync_verify_list(real_mirror: RealMirror, mirror_copy: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["sync", "--allowlist", str(real_mirror.allowlist_file), "--mirror", str(mirror_copy)]
    assert mirror_main(argv, stdout=out, stderr=err) == 3
    assert "0 downloaded" in out.getvalue()
    assert "not mirrored: markupsafe [wasm]" in out.getvalue()
    assert "have six-" in err.getvalue()

    out = io.StringIO()
    assert mirror_main(["verify", "--mirror", str(mirror_copy)], stdout=out, stderr=err) == 0
    out = io.StringIO()
    assert mirror_main(["list", "--mirror", str(mirror_copy)], stdout=out, stderr=err) == 0
    listed = out.getvalue().splitlines()
    assert [line.split()[0] for line in listed] == [str(p) for p in list_mirror(mirror_copy)]
    out = io.StringIO()
    assert mirror_main(["list", "--json", "--mirror", str(mirror_copy)], stdout=out) == 0
    assert '"name": "six"' in out.getvalue()
