"""Guest-side code the suites run in the sandbox, on any engine."""

TRY_ALL_REFUSED = """
import errno
allowed = []
for name, attempt in attempts.items():
    try:
        attempt()
        allowed.append(name)
    except OSError as exc:
        assert exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS), (name, exc)
"""
"""Guest code that tries each of the `attempts` it finds defined (name → change), lists in
`allowed` the ones that went through, and fails on any error but a refusal (PermissionError,
or OSError with EROFS)."""
