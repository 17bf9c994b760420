"""mirror_main: argv in, exit code out; progress on stderr, results on stdout."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from runner.packages.mirror import default_mirror_dir, mirror_main

from ._builders import make_wheel, write_index


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = mirror_main(argv, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_sync_verify_list_on_a_local_index(tmp_path: Path) -> None:
    url = write_index(tmp_path / "index", [make_wheel(tmp_path / "w", "tiny", "1.0")])
    allow = tmp_path / "allow.yaml"
    allow.write_text("packages:\n  tiny: '*'\n")
    mirror = tmp_path / "mirror"
    code, out, err = _run(
        [
            "sync",
            "--allowlist",
            str(allow),
            "--mirror",
            str(mirror),
            "--index-url",
            url,
            "--engine",
            "wasm",
            "--engine",
            "pyodide",
        ]
    )
    assert code == 0, err
    assert "1 wheel(s) locked" in out
    assert "download tiny-1.0-py3-none-any.whl" in err
    code, out, _ = _run(["verify", "--mirror", str(mirror)])
    assert code == 0
    code, out, _ = _run(["list", "--mirror", str(mirror)])
    assert code == 0
    assert out.split()[:3] == ["tiny==1.0", "wasm,pyodide", "allowed"]


def test_partial_sync_exits_3(tmp_path: Path) -> None:
    url = write_index(tmp_path / "index", [make_wheel(tmp_path / "w", "tiny", "1.0")])
    allow = tmp_path / "allow.toml"
    allow.write_text('[packages]\ntiny = "*"\nghost = "*"\n')
    code, out, _ = _run(
        [
            "sync",
            "--allowlist",
            str(allow),
            "--mirror",
            str(tmp_path / "m"),
            "--index-url",
            url,
            "--engine",
            "wasm",
        ]
    )
    assert code == 3
    assert "not mirrored: ghost [wasm]" in out


@pytest.mark.parametrize(
    "argv", [[], ["sync"], ["frobnicate"], ["sync", "--allowlist", "a", "--engine", "jvm"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert mirror_main(argv) == 2
    assert "usage" in capsys.readouterr().err


def test_errors_exit_1_with_the_fix(tmp_path: Path) -> None:
    code, _, err = _run(["verify", "--mirror", str(tmp_path / "none")])
    assert code == 1
    assert "sandgate mirror sync" in err
    bad = tmp_path / "allow.toml"
    bad.write_text('[packages]\nsix = "1.0"\n')
    code, _, err = _run(["sync", "--allowlist", str(bad), "--mirror", str(tmp_path / "m")])
    assert code == 1
    assert "packages.six" in err


def test_default_mirror_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SANDGATE_HOME", str(tmp_path / "home"))
    assert default_mirror_dir() == tmp_path / "home" / "mirror"
    monkeypatch.delenv("SANDGATE_HOME")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_mirror_dir() == tmp_path / "state" / "sandgate" / "mirror"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_mirror_dir() == tmp_path / ".local" / "state" / "sandgate" / "mirror"
