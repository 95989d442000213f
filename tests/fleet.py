"""Builders shared by the family and golden tests."""

from __future__ import annotations

from pathlib import Path

from exporter.models import parse_page
from exporter.snapshot import FleetSnapshot, SnapshotBuilder

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_TIME = 1_800_000_000.0  # the instant the fixture fleet's page "arrived"


def snapshot_from(body: bytes, observed_at: float = FIXTURE_TIME) -> FleetSnapshot:
    page = parse_page(body)
    builder = SnapshotBuilder()
    builder.add(observed_at, page.connections, len(page.invalid))
    return builder.build(observed_at)


def fixture_snapshot() -> FleetSnapshot:
    return snapshot_from((FIXTURES / "fleet.json").read_bytes())
