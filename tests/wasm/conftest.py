"""Fixtures shared by the wasm tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from wasi_python import _places


@pytest.fixture
def swapped_after_walk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Each folder named in the list is moved aside (to NAME-judged) right after wasi_python
    walks and judges a call's grants, and a new empty folder is made at its path, before
    wasmtime opens it."""
    targets: list[Path] = []
    real = _places._walk_grants

    def walk_then_swap(*args: Any, **kwargs: Any) -> Any:
        walked = real(*args, **kwargs)
        for folder in targets:
            folder.rename(folder.with_name(folder.name + "-judged"))
            folder.mkdir()
        return walked

    monkeypatch.setattr(_places, "_walk_grants", walk_then_swap)
    yield targets
