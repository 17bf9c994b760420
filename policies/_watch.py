"""Watch a policy file (and its grants file) and reload it when it changes; refuse bad edits."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from ._compile import CompiledPolicy, compile_policy
from ._errors import PolicyLoadError
from ._loader import load_policy

logger = logging.getLogger("sandgate.policy")

Signature = tuple[tuple[int, ...], ...]


class PolicyWatcher:
    """Reloads a policy when a stat of its files shows a change.

    A stat costs about a microsecond, so the gate polls on every call. A file that fails to
    load is refused and logged once per change; the caller keeps its previous policy.

    Args:
        path: The policy file.
        current: The compiled policy now in force (its `grants_file` is watched too).
    """

    def __init__(self, path: Path, current: CompiledPolicy) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._signature = self._stat(current)

    def changed(self, current: CompiledPolicy) -> bool:
        """Whether `poll` would look at the files again: a stat of each, nothing read. An edit
        that was refused is not a change until the files change again."""
        return self._stat(current) != self._signature

    def poll(self, current: CompiledPolicy) -> CompiledPolicy | None:
        """The newly loaded policy if the files changed and load cleanly, else `None`."""
        signature = self._stat(current)
        if signature == self._signature:
            return None
        with self._lock:
            if signature == self._signature:
                return None
            self._signature = signature  # a refused edit is not retried until it changes again
            try:
                policy = load_policy(self.path)
            except PolicyLoadError as exc:
                logger.error(
                    "refusing the changed policy %s, keeping the previous one: %s", self.path, exc
                )
                return None
            compiled = compile_policy(policy)
            self._signature = self._stat(compiled)
            logger.info("reloaded policy %s", self.path)
            for warning in policy.warnings:
                logger.warning("policy %s", warning.format(self.path))
            return compiled

    def _stat(self, compiled: CompiledPolicy) -> Signature:
        files = [self.path]
        if compiled.policy.grants_file is not None:
            files.append(Path(compiled.policy.grants_file))
        signature: list[tuple[int, ...]] = []
        for path in files:
            try:
                st = os.stat(path)
            except OSError as exc:
                signature.append((-1, exc.errno or 0))
                continue
            signature.append((st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino))
        return tuple(signature)
