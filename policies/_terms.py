"""The terms every policy model shares: the pydantic model config, the scopes a counter
keeps apart, and window lengths (`minute`, `hour`, `day`, ISO-8601 durations)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ConfigDict

Scope = Literal["grant", "session", "tool", "global"]

NAMED_WINDOWS_S: dict[str, float] = {"minute": 60.0, "hour": 3600.0, "day": 86400.0}
_ISO_DURATION = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)
MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True)


def window_seconds(window: str) -> float:
    """Return the length in seconds of `minute`, `hour`, `day` or an ISO-8601 duration.

    Raises:
        ValueError: `window` is none of those (years and months are refused as ambiguous).
    """
    if window in NAMED_WINDOWS_S:
        return NAMED_WINDOWS_S[window]
    match = _ISO_DURATION.match(window)
    if match is None or window in ("P", "PT") or window.endswith("T"):
        raise ValueError(
            f"window must be 'minute', 'hour', 'day' or an ISO-8601 duration such as 'PT30S' "
            f"or 'P1D' (no years or months), got {window!r}"
        )
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    seconds = (
        parts["w"] * 604800 + parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]
    )
    if seconds <= 0:
        raise ValueError(f"window must be longer than zero, got {window!r}")
    return seconds
