"""Sync and install against a local file:// index of hand-made wheels (no network)."""

from __future__ import annotations

import platform
import threading
from pathlib import Path

import pytest

from runner.packages.mirror import (
    AllowList,
    InstallFailed,
    InstallResult,
    NotAllowed,
    UnsafeWheel,
    allowlist_from_mapping,
    install,
    installed_packages,
    load_lock,
    parse_requirement,
    sync_mirror,
)

from ._builders import make_wheel, symlink_member, tree_digest, write_index

THREAD_JOIN_S = 60.0
_ARCH = {"amd64": "x86_64", "arm64": "aarch64"}.get(
    platform.machine().lower(), platform.machine().lower()
)


def _allow(packages: dict[str, str], **engines: dict[str, str]) -> AllowList:
    return allowlist_from_mapping({"packages": packages, **engines})


def _deps(mirror: Path, engine: str) -> dict[str, tuple[str, ...]]:
    lock = load_lock(mirror)
    return {p.name: p.dependencies for p in lock.packages if engine in p.engines}


@pytest.fixture
def index(tmp_path: Path) -> str:
    wheels = tmp_path / "built"
    made = [
        make_wheel(
            wheels,
            "alpha",
            "1.0",
            requires=[
                'beta; python_version < "3.12"',
                'gamma; sys_platform == "emscripten"',
                "delta[fast]>=1",
            ],
        ),
        make_wheel(wheels, "beta", "1.0"),
        make_wheel(wheels, "gamma", "1.0"),
        make_wheel(wheels, "delta", "1.0", requires=['epsilon; extra == "fast"']),
        make_wheel(wheels, "epsilon", "1.0"),
        make_wheel(wheels, "cext", "1.0", tag=f"cp311-cp311-manylinux_2_17_{_ARCH}"),
        make_wheel(wheels, "pre", "1.0"),
        make_wheel(wheels, "pre", "2.0b1"),
        make_wheel(wheels, "newpy", "1.0"),
        make_wheel(wheels, "newpy", "2.0", requires_python=">=3.14"),
        make_wheel(wheels, "needsold", "1.0", requires=["zeta<1"]),
        make_wheel(wheels, "zeta", "0.5"),
        make_wheel(wheels, "zeta", "1.5"),
        make_wheel(wheels, "broken", "1.0", requires=["missing-dep"]),
    ]
    return write_index(tmp_path / "index", made, sdists=["sdistonly-1.0.tar.gz"])


def test_markers_and_extras_are_evaluated_per_engine(index: str, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    report = sync_mirror(_allow({"alpha": "*"}), mirror, index_url=index)
    assert report.failures == ()
    assert _deps(mirror, "container")["alpha"] == ("beta", "delta")
    assert _deps(mirror, "pyodide")["alpha"] == ("delta", "gamma")
    assert _deps(mirror, "wasm")["alpha"] == ("delta",)
    for engine in ("wasm", "pyodide", "container"):
        assert _deps(mirror, engine)["delta"] == ("epsilon",)
    lock = load_lock(mirror)
    epsilon = lock.find("epsilon", "wasm")
    assert epsilon is not None and not epsilon.direct
    beta = lock.find("beta", "container")
    assert beta is not None and beta.engines == ("container",)


def test_what_cannot_be_fetched_is_reported_without_failing_the_rest(
    index: str, tmp_path: Path
) -> None:
    allow = _allow(
        {
            "cext": "*",
            "sdistonly": "*",
            "nowhere": "*",
            "needsold": "*",
            "zeta": "*",
            "broken": "*",
            "beta": "*",
        }
    )
    report = sync_mirror(allow, tmp_path / "mirror", index_url=index)
    failed = {(f.package, f.engine) for f in report.failures}
    everywhere = {"sdistonly", "nowhere", "needsold", "broken"}
    assert failed == {(n, e) for n in everywhere for e in ("wasm", "pyodide", "container")} | {
        ("cext", "wasm"),
        ("cext", "pyodide"),
    }
    reasons = {f.package: f.reason for f in report.failures if f.engine == "container"}
    assert "sdists are never mirrored" in reasons["sdistonly"]
    assert "not on the index" in reasons["nowhere"]
    assert "zeta==1.5" in reasons["needsold"]
    assert "missing-dep" in reasons["broken"]
    locked = {(p.name, e) for p in report.locked for e in p.engines}
    assert ("cext", "container") in locked
    assert ("zeta", "wasm") in locked and ("beta", "wasm") in locked
    assert not any(name == "missing-dep" for name, _ in locked)


def test_prereleases_and_requires_python(index: str, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    sync_mirror(
        _allow({"pre": "*", "newpy": "*"}, wasm={"pre": ">=2.0b1"}), mirror, index_url=index
    )
    lock = load_lock(mirror)
    versions = {(p.name, e): p.version for p in lock.packages for e in p.engines}
    assert versions[("pre", "container")] == "1.0"
    assert versions[("pre", "wasm")] == "2.0b1"
    assert versions[("newpy", "wasm")] == "2.0"
    assert versions[("newpy", "container")] == "1.0"


def test_syncing_one_engine_keeps_the_others(index: str, tmp_path: Path) -> None:
    mirror = tmp_path / "mirror"
    sync_mirror(_allow({"alpha": "*"}), mirror, index_url=index)
    again = sync_mirror(_allow({"beta": "*"}), mirror, index_url=index, engines=("wasm",))
    assert again.downloaded == ()
    lock = load_lock(mirror)
    assert lock.find("alpha", "container") is not None
    assert lock.find("alpha", "wasm") is None
    assert lock.find("beta", "wasm") is not None


def test_index_hash_mismatch_is_a_failure_and_leaves_no_file(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "built", "alpha", "1.0")
    url = write_index(tmp_path / "index", [wheel])
    (tmp_path / "index" / "files" / wheel.name).write_bytes(b"not the wheel the index hashed")
    report = sync_mirror(_allow({"alpha": "*"}), tmp_path / "mirror", index_url=url)
    assert {f.package for f in report.failures} == {"alpha"}
    assert "sha256" in report.failures[0].reason
    assert not (tmp_path / "mirror" / "files" / wheel.name).exists()


def _mirror_of(tmp_path: Path, *wheels: Path, allow: dict[str, str]) -> Path:
    url = write_index(tmp_path / "index", wheels)
    mirror = tmp_path / "mirror"
    report = sync_mirror(_allow(allow), mirror, index_url=url, engines=("wasm",))
    assert report.failures == ()
    return mirror


@pytest.mark.parametrize(
    "member",
    [
        {"../evil.py": b"x"},
        {"/abs.py": b"x"},
        {"pkg/../../evil.py": b"x"},
        {"pkg\\evil.py": b"x"},
        {"C:/evil.py": b"x"},
    ],
)
def test_unsafe_member_paths_are_refused(tmp_path: Path, member: dict[str, bytes]) -> None:
    wheel = make_wheel(tmp_path / "built", "evil", "1.0", files={"evil_ok.py": b"", **member})
    mirror = _mirror_of(tmp_path, wheel, allow={"evil": "*"})
    site = tmp_path / "ws" / "site"
    site.mkdir(parents=True)
    before = tree_digest(tmp_path / "ws")
    with pytest.raises(UnsafeWheel) as caught:
        install(parse_requirement("evil"), mirror_dir=mirror, site_dir=site, engine="wasm")
    assert caught.value.member == next(iter(member))
    assert tree_digest(tmp_path / "ws") == before
    assert not (tmp_path / "evil.py").exists()


def test_symlink_member_is_refused(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path / "built", "linky", "1.0", raw_members=[symlink_member("linky/etc", "/etc")]
    )
    mirror = _mirror_of(tmp_path, wheel, allow={"linky": "*"})
    site = tmp_path / "site"
    with pytest.raises(UnsafeWheel) as caught:
        install(parse_requirement("linky"), mirror_dir=mirror, site_dir=site, engine="wasm")
    assert caught.value.member == "linky/etc"
    assert list(site.iterdir()) == []


def test_size_cap_refuses_before_anything_lands(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "built", "big", "1.0", files={"big.py": b"#" * 100_000})
    mirror = _mirror_of(tmp_path, wheel, allow={"big": "*"})
    site = tmp_path / "site"
    with pytest.raises(UnsafeWheel):
        install(
            parse_requirement("big"),
            mirror_dir=mirror,
            site_dir=site,
            engine="wasm",
            max_bytes=10_000,
        )
    assert list(site.iterdir()) == []


def test_data_purelib_goes_to_the_root_and_scripts_are_skipped(tmp_path: Path) -> None:
    wheel = make_wheel(
        tmp_path / "built",
        "datapkg",
        "1.0",
        files={
            "datapkg.py": b"",
            "datapkg-1.0.data/purelib/datapkg_extra.py": b"",
            "datapkg-1.0.data/scripts/run-me": b"#!/bin/sh\n",
        },
    )
    mirror = _mirror_of(tmp_path, wheel, allow={"datapkg": "*"})
    site = tmp_path / "site"
    install(parse_requirement("datapkg"), mirror_dir=mirror, site_dir=site, engine="wasm")
    assert (site / "datapkg_extra.py").is_file()
    assert not (site / "run-me").exists()
    assert not any(p.name.endswith(".data") for p in site.iterdir())


def test_dependency_only_package_is_not_installable_by_itself(tmp_path: Path) -> None:
    mirror = _mirror_of(
        tmp_path,
        make_wheel(tmp_path / "built", "top", "1.0", requires=["dep"]),
        make_wheel(tmp_path / "built", "dep", "1.0"),
        allow={"top": "*"},
    )
    with pytest.raises(NotAllowed):
        install(
            parse_requirement("dep"), mirror_dir=mirror, site_dir=tmp_path / "site", engine="wasm"
        )


def test_a_new_locked_version_replaces_the_old_files(tmp_path: Path) -> None:
    old = make_wheel(tmp_path / "v1", "up", "1.0", files={"up.py": b"V = 1\n", "up_old.py": b""})
    mirror = _mirror_of(tmp_path / "a", old, allow={"up": "*"})
    site = tmp_path / "site"
    install(parse_requirement("up"), mirror_dir=mirror, site_dir=site, engine="wasm")
    new = make_wheel(tmp_path / "v2", "up", "2.0", files={"up.py": b"V = 2\n"})
    url = write_index(tmp_path / "b", [new])
    sync_mirror(_allow({"up": "*"}), mirror, index_url=url, engines=("wasm",))
    result = install(parse_requirement("up"), mirror_dir=mirror, site_dir=site, engine="wasm")
    assert result == InstallResult(installed=("up==2.0",), already_present=())
    assert (site / "up.py").read_text() == "V = 2\n"
    assert not (site / "up_old.py").exists()
    assert not (site / "up-1.0.dist-info").exists()
    assert installed_packages(site) == {"up": "2.0"}


def test_concurrent_installs_of_one_site_take_turns(tmp_path: Path) -> None:
    wheels = [make_wheel(tmp_path / "built", f"p{i}", "1.0") for i in range(3)]
    mirror = _mirror_of(tmp_path, *wheels, allow={f"p{i}": "*" for i in range(3)})
    site = tmp_path / "site"
    results: list[InstallResult] = []
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            results.append(
                install(parse_requirement(name), mirror_dir=mirror, site_dir=site, engine="wasm")
            )
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(f"p{i % 3}",)) for i in range(9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(THREAD_JOIN_S)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert sorted(n for r in results for n in r.installed) == ["p0==1.0", "p1==1.0", "p2==1.0"]
    assert sum(len(r.already_present) for r in results) == 6
    assert installed_packages(site) == {"p0": "1.0", "p1": "1.0", "p2": "1.0"}


def test_a_link_planted_in_the_site_folder_stops_the_install_before_any_file_moves(
    tmp_path: Path,
) -> None:
    wheel = make_wheel(
        tmp_path / "built", "nest", "1.0", files={"aaa.py": b"", "nest/__init__.py": b""}
    )
    mirror = _mirror_of(tmp_path, wheel, allow={"nest": "*"})
    site = tmp_path / "site"
    outside = tmp_path / "outside"
    outside.mkdir()
    site.mkdir()
    (site / "nest").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InstallFailed):
        install(parse_requirement("nest"), mirror_dir=mirror, site_dir=site, engine="wasm")
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in site.iterdir()) == ["nest"]
