"""The store: the last published fleet, plain and gzip-ready; the poller writes, the server reads.

A poll publishes by one reference swap; a scrape reads without locks and only concatenates.
"""

from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass

# Measured in bench/ (docs/benchmarks.md): at 100,000 environments level 3 costs ~10% more
# than 1 for ~5% fewer bytes; level 4 costs ~60% more, 6 twice as much, 9 five times.
GZIP_LEVEL = 3


class GzipPrefix:
    """An open gzip member holding the fleet bytes, ready to be finished per scrape.

    The fleet is compressed once per poll and the deflate stream is left open (sync flush);
    a scrape copies the compressor, appends the exporter's own small exposition and closes
    the member, so every response is one ordinary gzip member (not all clients read two).
    """

    def __init__(self, data: bytes, level: int) -> None:
        compressor = zlib.compressobj(level, zlib.DEFLATED, 31)  # 31: gzip container
        self.prefix = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
        self._compressor = compressor
        self._lock = threading.Lock()

    def finish(self, tail: bytes) -> bytes:
        return b"".join(self.finish_parts(tail))

    def finish_parts(self, tail: bytes) -> tuple[bytes, bytes]:
        """The member as two parts to send one after the other, so the prefix is not copied."""
        with self._lock:  # copy() reads the shared state; held for microseconds
            compressor = self._compressor.copy()
        return self.prefix, compressor.compress(tail) + compressor.flush()


def gzip_member(data: bytes) -> bytes:
    """``data`` as one gzip member, at the level chosen for scrapes."""
    return GzipPrefix(b"", GZIP_LEVEL).finish(data)


@dataclass(frozen=True, slots=True)
class PublishedExposition:
    """What a scrape serves of the fleet: bytes rendered once, plain and gzip-ready."""

    plain: bytes
    gzipped: GzipPrefix
    environments: int
    completed_at: float
    published_monotonic: float


class Store:
    """The current published fleet; replaced by one reference swap, read without locks."""

    def __init__(self) -> None:
        self._fleet: PublishedExposition | None = None

    @property
    def fleet(self) -> PublishedExposition | None:
        return self._fleet

    def publish(self, fleet: PublishedExposition) -> None:
        self._fleet = fleet

    @property
    def ready(self) -> bool:
        return self._fleet is not None

    def fresh_fleet(self, max_age: float, now: float) -> PublishedExposition | None:
        """The fleet, unless it is older than ``max_age`` (then it is withdrawn)."""
        fleet = self._fleet
        if fleet is None or now - fleet.published_monotonic > max_age:
            return None
        return fleet
