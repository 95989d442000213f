"""The Prometheus text format (0.0.4), written by hand: escaping, values, family headers.

Rendering by hand once per poll is what keeps scrapes cheap at fleet scale; correctness is
checked against prometheus-client's parser and `promtool check metrics` in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The fleet's bytes are valid OpenMetrics as they are (gauges and a histogram, no `"` in any
# HELP): only the exporter's own families, and `# EOF` after them, differ between the two.
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"

_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_HELP_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n"})


def clean(value: str, limit: int) -> str:
    """Valid UTF-8 (lone surrogates replaced) and at most ``limit`` characters."""
    if len(value) > limit:
        value = value[:limit]
    if not value.isascii():  # ASCII is valid UTF-8; only the rest can hold lone surrogates
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def escape_label_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:  # three scans cost less than translate
        return value.translate(_LABEL_ESCAPES)
    return value


def label_value(value: str, limit: int) -> str:
    """An upstream string as a label value: cleaned to ``limit`` characters, then escaped."""
    return escape_label_value(clean(value, limit))


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


def wants_openmetrics(accept: str) -> bool:
    """True when ``Accept`` ranks OpenMetrics (1.0.0, 0.0.1 or no version) at least as high
    as the text format, as Prometheus does by default."""
    openmetrics = text = 0.0
    for item in accept.split(","):
        media, *parameters = (part.strip() for part in item.split(";"))
        options = dict(parameter.partition("=")[::2] for parameter in parameters)
        try:
            quality = float(options.get("q", "1"))
        except ValueError:
            continue
        media = media.lower()
        if media == "application/openmetrics-text":
            if options.get("version", "1.0.0") in ("1.0.0", "0.0.1"):
                openmetrics = max(openmetrics, quality)
        elif media in ("text/plain", "text/*", "*/*"):
            text = max(text, quality)
    return openmetrics > 0 and openmetrics >= text


def accepts_gzip(accept_encoding: str) -> bool:
    """True when ``Accept-Encoding`` allows gzip: listed (or `*`, when gzip is not) with a
    non-zero quality; `gzip;q=0` refuses it (RFC 9110, section 12.5.3)."""
    named: float | None = None
    wildcard: float | None = None
    for item in accept_encoding.split(","):
        coding, *parameters = (part.strip() for part in item.split(";"))
        quality = 1.0
        for parameter in parameters:
            name, _, value = parameter.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        coding = coding.lower()
        if coding in ("gzip", "x-gzip"):
            named = max(named or 0.0, quality)
        elif coding == "*":
            wildcard = max(wildcard or 0.0, quality)
    if named is not None:
        return named > 0
    return wildcard is not None and wildcard > 0
