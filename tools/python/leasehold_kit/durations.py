"""Durations as the server reads them: one parser, the mirror of Swift's `parseDuration`
(Sources/LeaseholdApp/Options.swift).

`250ms`, `5s`, `2m`, `1h`, `7d`; a bare number is seconds; positive and at most ten years.
Both parsers are checked against the same vectors (Tests/LeaseholdAppTests/Golden/durations.json).
"""

from __future__ import annotations

import math

# Bounds.longestDelay in Swift: ten years of 365.25 days, in seconds.
LONGEST = 10 * 365.25 * 86400.0
_UNITS = [("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0), ("d", 86400.0)]


class BadDuration(ValueError):
    """Text that is not a duration the server accepts."""


def _number(text: str) -> float | None:
    """`text` as Swift's `Double(_:)` reads it (finite values only), or None."""
    # Python's float() also reads surrounding spaces and "_" digit separators, which Swift's
    # Double(_:) refuses; Swift reads hexadecimal floats ("0x1.8p1"), which float() refuses.
    if not text or text.strip() != text or "_" in text:
        return None
    try:
        digits = text.lstrip("+-")
        value = float.fromhex(text) if digits[:2].lower() == "0x" else float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_duration(text: str, name: str = "duration") -> float:
    """Seconds in `text`; raises BadDuration naming `name` when it is not a duration."""
    trimmed = text.strip(" ").lower()

    def checked(seconds: float) -> float:
        if seconds > LONGEST:
            raise BadDuration(f"{name}: '{text}' is longer than ten years")
        return round(seconds * 1000) / 1000

    for suffix, scale in _UNITS:
        if not trimmed.endswith(suffix):
            continue
        value = _number(trimmed[: -len(suffix)])
        if value is not None and value > 0:
            return checked(value * scale)
        if suffix == "s" and trimmed.endswith("ms"):
            continue
        raise BadDuration(f"{name}: '{text}' is not a duration (use e.g. 250ms, 5s, 2m)")
    value = _number(trimmed)
    if value is not None and value > 0:
        return checked(value)
    raise BadDuration(f"{name}: '{text}' is not a duration (use e.g. 250ms, 5s, 2m)")
