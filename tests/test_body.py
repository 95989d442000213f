"""Reading a body under a cap: gzip inflated incrementally, never past the cap, nor the deadline."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator

import httpx
import pytest

from exporter.body import (
    BodyError,
    BodyTooLargeError,
    DeadlinePassedError,
    read_body,
)
from exporter.units import format_size

KiB = 1024
MiB = 1024 * KiB


class Chunks(httpx.SyncByteStream):
    """A streamed body that counts how many of its chunks were read."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.read = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.read += 1
            yield chunk


def _response(stream: Chunks, **headers: str) -> httpx.Response:
    return httpx.Response(200, headers=headers, stream=stream)


def _bomb(inflated: int) -> Iterator[bytes]:
    """A gzip body inflating to ``inflated`` bytes, compressed as it is sent, 64 KiB at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    for _ in range(inflated // MiB):
        compressed = compressor.compress(b" " * MiB)
        if compressed:
            yield compressed
    yield compressor.flush()


def test_a_gzip_bomb_is_inflated_only_up_to_the_cap() -> None:
    stream = Chunks(_bomb(1024 * MiB))  # 1 GiB inflated, ~1 MiB sent
    with pytest.raises(BodyTooLargeError, match="inflates to more than 1MiB"):
        read_body(_response(stream, **{"content-encoding": "gzip"}), MiB)
    assert stream.read < 20  # stopped within the first MiBs, not after the whole GiB


def test_a_plain_body_is_cut_at_the_cap_without_content_length() -> None:
    stream = Chunks(iter([b"x" * (64 * KiB)] * 1000))
    with pytest.raises(BodyTooLargeError, match="is more than 256KiB"):
        read_body(_response(stream), 256 * KiB)
    assert stream.read == 5  # the fifth chunk would pass the cap: refused before it is kept


def test_a_content_length_over_the_cap_is_refused_before_reading() -> None:
    stream = Chunks(iter([b"x" * 10]))
    with pytest.raises(BodyTooLargeError, match="Content-Length 11 is more than 10B"):
        read_body(_response(stream, **{"content-length": "11"}), 10)
    assert stream.read == 0


@pytest.mark.parametrize("encoding", ["identity", "gzip", "deflate"])
def test_a_body_of_exactly_the_cap_is_read_whole(encoding: str) -> None:
    data = b'{"a": "' + b"b" * 1000 + b'"}'
    body = {"identity": data, "gzip": gzip.compress(data), "deflate": zlib.compress(data)}[encoding]
    chunks = Chunks(iter([body[:7], body[7:]]))
    assert read_body(_response(chunks, **{"content-encoding": encoding}), len(data)) == data


def test_several_gzip_members_are_one_body() -> None:
    body = gzip.compress(b"hello, ") + gzip.compress(b"world")
    assert read_body(_response(Chunks(iter([body])), **{"content-encoding": "gzip"}), 100) == (
        b"hello, world"
    )


@pytest.mark.parametrize(
    ("encoding", "body", "message"),
    [
        ("br", b"x", "unsupported Content-Encoding 'br'"),
        ("gzip", gzip.compress(b"x" * 100)[:-12], "ends early"),
        ("gzip", b"not gzip at all", "corrupt compressed body"),
    ],
)
def test_unreadable_encodings_are_body_errors(encoding: str, body: bytes, message: str) -> None:
    with pytest.raises(BodyError, match=message):
        read_body(_response(Chunks(iter([body])), **{"content-encoding": encoding}), MiB)


def test_the_deadline_holds_however_slowly_the_body_arrives() -> None:
    now = [0.0]

    def trickle() -> Iterator[bytes]:
        for _ in range(100):
            now[0] += 2.0  # a byte every 2 s: each read is quick, the whole is not
            yield b" "

    stream = Chunks(trickle())
    with pytest.raises(DeadlinePassedError):
        read_body(_response(stream), MiB, deadline=10.0, monotonic=lambda: now[0])
    assert stream.read == 5  # the fifth byte arrives at 10 s: read no further


def test_sizes_are_shown_as_flags_take_them() -> None:
    assert [format_size(n) for n in (8 * MiB, 512 * KiB, 1024 * MiB, 1000)] == [
        "8MiB",
        "512KiB",
        "1GiB",
        "1000B",
    ]
