"""Clock functions looked up at call time, so that freezegun and test clocks reach them."""

from __future__ import annotations

import time


def wall_clock() -> float:
    """Seconds since the epoch."""
    return time.time()


def monotonic() -> float:
    """Seconds on a clock that never goes back, for deadlines and ages."""
    return time.monotonic()
