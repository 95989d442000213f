"""The immutable result of one complete poll, swapped in whole."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from exporter.models import Connection


@dataclass(frozen=True, slots=True)
class SnapshotPage:
    """Rows of one upstream page and the wall-clock time the page arrived."""

    observed_at: float
    connections: tuple[Connection, ...]


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    """Every environment of one poll, each `id` once, with when its page arrived."""

    pages: tuple[SnapshotPage, ...]
    completed_at: float
    invalid_records: int = 0

    def __len__(self) -> int:
        return sum(len(page.connections) for page in self.pages)

    def observations(self) -> Iterator[tuple[Connection, float]]:
        """Each connection with the time it was observed."""
        for page in self.pages:
            for connection in page.connections:
                yield connection, page.observed_at


class SnapshotBuilder:
    """Collects pages of one poll, keeping the first row seen for each `id`."""

    def __init__(self) -> None:
        self._pages: list[SnapshotPage] = []
        self._ids: set[str] = set()
        self.invalid_records = 0
        self.duplicates = 0

    def add(self, observed_at: float, connections: tuple[Connection, ...], invalid: int) -> None:
        fresh = []
        for connection in connections:
            if connection.id in self._ids:
                self.duplicates += 1
                continue
            self._ids.add(connection.id)
            fresh.append(connection)
        self.invalid_records += invalid
        self._pages.append(SnapshotPage(observed_at=observed_at, connections=tuple(fresh)))

    def build(self, completed_at: float) -> FleetSnapshot:
        return FleetSnapshot(
            pages=tuple(self._pages),
            completed_at=completed_at,
            invalid_records=self.invalid_records,
        )
