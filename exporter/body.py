"""Reading an answer's body under a byte cap, inflating gzip as it streams in, never beyond it.

httpx would read a whole body into memory, and inflate a compressed one without bound. Here the
raw bytes are read chunk by chunk (`Response.iter_raw`) and inflated with ``max_length``, so no
more than the cap (plus one byte, to tell "exactly the cap" from "over it") is ever held.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable

import httpx

from exporter import clock
from exporter.units import format_size

ACCEPT_ENCODING = "gzip"
_GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS  # auto-detect the gzip or zlib container


class BodyError(ValueError):
    """The body cannot be read within the rules: over the cap, an unknown or corrupt encoding."""


class BodyTooLargeError(BodyError):
    """The body, decompressed, is larger than the cap; reading stopped there."""


class DeadlinePassedError(Exception):
    """The deadline passed while the body was still arriving."""


class _Inflater:
    """Incremental gzip/zlib (``deflate``) decoding that never outputs past a limit."""

    def __init__(self) -> None:
        self._inflate = zlib.decompressobj(_GZIP_OR_ZLIB)

    def feed(self, data: bytes, out: bytearray, limit: int) -> None:
        try:
            while data:
                out += self._inflate.decompress(data, limit - len(out) + 1)
                if len(out) > limit:
                    raise BodyTooLargeError(f"inflates to more than {format_size(limit)}")
                if self._inflate.eof and self._inflate.unused_data:
                    data = self._inflate.unused_data  # a gzip body may hold several members
                    self._inflate = zlib.decompressobj(_GZIP_OR_ZLIB)
                else:
                    data = self._inflate.unconsumed_tail
        except zlib.error as exc:
            raise BodyError(f"corrupt compressed body ({exc})") from None

    def finish(self) -> None:
        if not self._inflate.eof:
            raise BodyError("the compressed body ends early")


def read_body(
    response: httpx.Response,
    limit: int,
    *,
    deadline: float | None = None,
    monotonic: Callable[[], float] = clock.monotonic,
) -> bytes:
    """The body of a streamed ``response``, decompressed, of at most ``limit`` bytes.

    Raises ``BodyTooLargeError`` as soon as it would pass the limit, ``BodyError`` for an
    encoding other than identity, gzip or deflate, and ``DeadlinePassedError`` once the
    ``monotonic`` ``deadline`` has passed (a body trickling in never restarts a clock here).
    httpx's own errors (timeouts, a dropped connection) pass through.
    """
    chunks: Iterable[bytes]
    try:  # a response built from bytes (an `httpx.MockTransport` answer) comes read, decoded
        chunks, encoding = (response.content,), "identity"
    except httpx.ResponseNotRead:
        chunks = response.iter_raw()
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
    inflater: _Inflater | None = None
    if encoding in ("gzip", "x-gzip", "deflate"):
        inflater = _Inflater()
    elif encoding not in ("identity", ""):
        raise BodyError(f"unsupported Content-Encoding {encoding[:32]!r}")
    else:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise BodyTooLargeError(f"Content-Length {declared} is more than {format_size(limit)}")
    body = bytearray()
    for chunk in chunks:
        if deadline is not None and monotonic() >= deadline:
            raise DeadlinePassedError
        if inflater is not None:
            inflater.feed(chunk, body, limit)
        elif len(body) + len(chunk) > limit:
            raise BodyTooLargeError(f"is more than {format_size(limit)}")
        else:
            body += chunk
    if inflater is not None:
        inflater.finish()
    return bytes(body)  # a copy for a moment: the parsers take bytes
