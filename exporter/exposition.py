"""The Prometheus text format (0.0.4), written by hand: escaping, values, family headers.

Rendering by hand once per poll is what keeps scrapes cheap at fleet scale; correctness is
checked against prometheus-client's parser and `promtool check metrics` in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


def clean(value: str, limit: int) -> str:
    """Valid UTF-8 (lone surrogates replaced) and at most ``limit`` characters."""
    if len(value) > limit:
        value = value[:limit]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def escape_label_value(value: str) -> str:
    return value.translate(_LABEL_ESCAPES)


def format_value(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def labels(pairs: Sequence[tuple[str, str]]) -> str:
    """`{a="x",b="y"}` with values escaped, or empty for no labels."""
    if not pairs:
        return ""
    return "{" + ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs) + "}"


def header(name: str, kind: str, help_text: str) -> str:
    return f"# HELP {name} {help_text.translate(_HELP_ESCAPES)}\n# TYPE {name} {kind}\n"


def family(name: str, kind: str, help_text: str, samples: Iterable[tuple[str, str, float]]) -> str:
    """One family: header, then `name+suffix{labels} value` per (suffix, labels, value)."""
    lines = [header(name, kind, help_text)]
    lines.extend(
        f"{name}{suffix}{label_text} {format_value(value)}\n"
        for suffix, label_text, value in samples
    )
    return "".join(lines)
