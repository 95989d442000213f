"""Exceptions of the exporter, translated at the boundary where they arise.

ExporterError
├── ConfigError                  bad flags, environment or config file (exit code 2)
└── UpstreamError                a poll of the Letta API failed; ``kind`` labels polls_total
    ├── AuthError                401/403: the API key is wrong or lacks rights (no retry)
    ├── RateLimitedError         429 after every retry
    ├── HTTPStatusError          another non-2xx status after every retry
    ├── TransportError           no answer at all
    │   ├── UpstreamTimeoutError     connect or read timeout
    │   └── UpstreamConnectionError  refused, reset, DNS
    ├── InvalidResponseError     a body that is not the documented JSON shape
    └── PaginationError          a repeated cursor, an empty page that claims more, too many pages
"""

from __future__ import annotations


class ExporterError(Exception):
    """Base of every error the exporter raises on purpose."""


class ConfigError(ExporterError):
    """The configuration is invalid; the message lists every problem found."""


class UpstreamError(ExporterError):
    """A poll of the Letta API failed; the last good snapshot stays."""

    kind = "upstream_error"


class AuthError(UpstreamError):
    kind = "auth_error"


class RateLimitedError(UpstreamError):
    kind = "rate_limited"


class HTTPStatusError(UpstreamError):
    kind = "http_error"


class TransportError(UpstreamError):
    kind = "connection_error"


class UpstreamTimeoutError(TransportError):
    kind = "timeout"


class UpstreamConnectionError(TransportError):
    kind = "connection_error"


class InvalidResponseError(UpstreamError):
    kind = "invalid_response"


class PaginationError(UpstreamError):
    kind = "pagination_error"


POLL_RESULTS: tuple[str, ...] = (
    "success",
    AuthError.kind,
    RateLimitedError.kind,
    HTTPStatusError.kind,
    UpstreamTimeoutError.kind,
    UpstreamConnectionError.kind,
    InvalidResponseError.kind,
    PaginationError.kind,
    "internal_error",
)
"""Every value of ``letta_exporter_polls_total{result}``, served from start-up at zero."""

LOOKUP_RESULTS = ("success", "http_error", "timeout", "connection_error", "invalid_response")
"""Every value of ``letta_exporter_release_lookups_total{result}``."""
RELEASE_REGISTRIES = ("npm", "pypi")
"""Every value of ``letta_exporter_release_lookups_total{registry}``: Letta Code's channels."""
