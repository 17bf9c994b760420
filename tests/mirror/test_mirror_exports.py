"""runner.packages.mirror: sorted `__all__`, one exception root, the tree drawn."""

from __future__ import annotations

import inspect

import runner.packages.mirror as mirror
from runner.packages.mirror import _errors


def _isort_key(name: str) -> tuple[int, str]:
    kind = 0 if name.isupper() else 1 if name[0].isupper() else 2
    return kind, name


def test_all_is_sorted_and_complete() -> None:
    assert mirror.__all__ == sorted(mirror.__all__, key=_isort_key)
    for name in mirror.__all__:
        assert hasattr(mirror, name), name


def test_every_exception_is_exported_under_one_root_and_drawn() -> None:
    classes = [
        obj
        for _, obj in inspect.getmembers(_errors, inspect.isclass)
        if issubclass(obj, Exception) and obj.__module__ == _errors.__name__
    ]
    assert mirror.MirrorError in classes
    doc = _errors.__doc__ or ""
    for cls in classes:
        assert issubclass(cls, mirror.MirrorError), cls
        assert cls.__name__ in mirror.__all__, cls
        assert cls.__name__ in doc, cls
