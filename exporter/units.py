"""Durations and sizes as operators write them: the one parser of each, for flags and files.

`parse_duration` reads the exporter's flags (`30s`, `1.5m`, `1h30m`, or plain seconds such as
`45`); with ``strict=True`` it reads only Prometheus' own syntax (`5m`, `1h30m`, no fractions,
units in order), as the monitoring bundle's settings must, since Prometheus reads them back.
"""

from __future__ import annotations

import math
import re

KiB = 1024
MiB = KiB * KiB
GiB = KiB * MiB

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_PROMETHEUS_DURATION = re.compile(r"^(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?$")
_UNITS = {"y": 365 * 86400, "w": 7 * 86400, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?")
_SIZE_UNITS = {"B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB}


def parse_duration(text: str, *, strict: bool = False) -> float:
    """Seconds from `30s`, `2m`, `1h30m`, `250ms` or plain seconds such as `45`; with
    ``strict``, from a Prometheus duration only (`90s`, `5m`, `1h30m`, `2w`)."""
    if strict:
        return _prometheus_duration(text)
    value = str(text).strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise ValueError(
                f"invalid duration {value!r} (use e.g. 30s, 2m, 1h or seconds)"
            ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def _prometheus_duration(text: str) -> float:
    match = _PROMETHEUS_DURATION.match(text)
    if not text or match is None:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    seconds = 0.0
    for part in filter(None, match.groups()):
        unit = "ms" if part.endswith("ms") else part[-1]
        seconds += int(part[: -len(unit)]) * _UNITS[unit]
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def parse_size(text: str) -> int:
    """Bytes from `8MiB`, `512KiB`, `1GiB` or plain bytes; as in Prometheus, `MB` is `MiB`."""
    value = str(text).strip()
    match = _SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f"invalid size {value!r} (use e.g. 8MiB, 512KiB or bytes)")
    unit = (match.group(2) or "B").replace("KB", "KiB").replace("MB", "MiB").replace("GB", "GiB")
    size = int(match.group(1)) * _SIZE_UNITS[unit]
    if size < 1:
        raise ValueError(f"size must be positive, got {value!r}")
    return size


def format_size(size: int) -> str:
    """`16MiB`, `512KiB` or `1000B`: the form the flags take."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


def format_duration(seconds: float) -> str:
    """`500ms`, `10s`, `120s`, `10m` or `1h`: the form the flags take (minutes from 5m on)."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    if seconds >= 300 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
