"""Operator mounts from the policy's `server.mounts`, merged with `--mount` at start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import ServerMount
from runner import Config, SetupError, open_service
from runner import main as cli_main
from runner._mounts import merge_mounts, parse_mounts, policy_mounts


def _policy(tmp_path: Path, *mounts: str) -> Path:
    policy = tmp_path / "policy.yaml"
    entries = "".join(f"    - {m}\n" for m in mounts)
    policy.write_text(f"version: '1'\nserver:\n  mounts:\n{entries}")
    return policy


def test_policy_mounts_come_after_the_flags_at_mnt_with_their_mode(tmp_path: Path) -> None:
    data, out, flag = tmp_path / "data", tmp_path / "out", tmp_path / "flag"
    for folder in (data, out, flag):
        folder.mkdir()
    entries = [
        ServerMount(name="data", path=str(data)),
        ServerMount(name="out", path=str(out), read_only=False),
    ]
    merged = merge_mounts(
        parse_mounts([f"flag={flag}:rw"]), policy_mounts(entries, source="p.yaml"), source="p.yaml"
    )
    assert [(m.name, m.host, m.guest, m.read_only) for m in merged] == [
        ("flag", flag, "/mnt/flag", False),
        ("data", data, "/mnt/data", True),
        ("out", out, "/mnt/out", False),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["missing", "a file"])
async def test_a_policy_mount_that_is_not_a_folder_stops_the_start(
    tmp_path: Path, kind: str
) -> None:
    bad = tmp_path / "bad"
    if kind == "a file":
        bad.write_text("not a folder")
    policy = _policy(tmp_path, f"{{name: ok, path: '{tmp_path}'}}", f"{{name: bad, path: '{bad}'}}")
    config = Config(policy_path=policy, state_dir=tmp_path / "state")
    with pytest.raises(SetupError) as refused:
        async with open_service(config):
            pass
    assert refused.value.setting == "server.mounts[1].path"
    assert str(bad) in str(refused.value) and str(policy) in str(refused.value)
    assert not (tmp_path / "state").exists()  # refused before anything was opened


@pytest.mark.anyio
async def test_a_name_given_by_both_the_policy_and_a_flag_stops_the_start(tmp_path: Path) -> None:
    policy = _policy(tmp_path, f"{{name: data, path: '{tmp_path}'}}")
    flags = parse_mounts([f"data={tmp_path}:rw"])
    config = Config(policy_path=policy, state_dir=tmp_path / "state", mounts=flags)
    with pytest.raises(SetupError) as refused:
        async with open_service(config):
            pass
    assert refused.value.setting == "server.mounts[0].name"
    message = str(refused.value)
    assert f"--mount data={tmp_path}" in message and str(policy) in message


def test_the_cli_reports_a_name_given_twice_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = _policy(tmp_path, f"{{name: data, path: '{tmp_path}'}}")
    state = tmp_path / "state"
    argv = [
        "serve",
        "--policy",
        str(policy),
        "--state-dir",
        str(state),
        "--mount",
        f"data={tmp_path}",
    ]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "server.mounts[0].name" in err and "--mount data=" in err
