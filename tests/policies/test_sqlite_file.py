"""The SQLite store follows its file: removed → unavailable (fail closed), replaced → reopened."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from policies import CounterSpec, SqliteCounterStore, StateUnavailable

NOW = 1_700_000_000.0
SPEC = CounterSpec("runs|grant=g", window_s=3600.0, max=2)


def test_a_removed_state_file_makes_the_store_unavailable_not_empty(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteCounterStore(path)
    assert store.reserve([SPEC], NOW) is not None
    path.unlink()
    with pytest.raises(StateUnavailable, match="removed while the server ran"):
        store.reserve([SPEC], NOW + 1)
    with pytest.raises(StateUnavailable):
        store.used(SPEC, NOW + 1)
    assert not path.exists()  # never silently recreated with empty counters
    store.close()


def test_a_replaced_state_file_is_reopened(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    store = SqliteCounterStore(path)
    assert store.reserve([SPEC], NOW) is not None
    backup = sqlite3.connect(tmp_path / "backup.sqlite3")
    with sqlite3.connect(path) as source:
        source.backup(backup)
    backup.close()
    path.unlink()
    with pytest.raises(StateUnavailable):
        store.reserve([SPEC], NOW + 1)
    shutil.copy(tmp_path / "backup.sqlite3", tmp_path / "restoring")
    os.replace(tmp_path / "restoring", path)
    assert store.used(SPEC, NOW + 2)[0] == 1
    assert store.reserve([SPEC], NOW + 2) is not None
    assert store.reserve([SPEC], NOW + 3) is None  # the restored count still limits
    other = SqliteCounterStore(path)  # another process sees the same counts
    assert other.used(SPEC, NOW + 3)[0] == 2
    other.close()
    store.close()
