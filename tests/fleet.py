"""Builders shared by the family and golden tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from exporter.models import Connection, load_page
from exporter.selfmetrics import ExporterMetrics
from exporter.snapshot import Environment, FleetSnapshot, SnapshotBuilder

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_TIME = 1_800_000_000.0  # the instant the fixture fleet's page "arrived"


def upstream_row(env_id: str = "e", **overrides: Any) -> dict[str, Any]:
    """A minimal valid row of `GET /v1/environments`: no lease, no heartbeat, no metadata."""
    row: dict[str, Any] = {
        "id": env_id,
        "connectedAt": None,
        "connectionId": None,
        "connectionName": "n",
        "deviceId": "d",
        "firstSeenAt": 0,
        "lastHeartbeat": None,
        "lastSeenAt": 0,
        "organizationId": "o",
        "podId": None,
    }
    row.update(overrides)
    return row


@dataclass(frozen=True)
class ParsedPage:
    """A page decoded and validated in one step, as the tests read it."""

    connections: tuple[Connection, ...]
    invalid: tuple[str, ...]
    has_next_page: bool
    last_id: str | None


def parse_page(body: bytes) -> ParsedPage:
    page = load_page(body)
    rows = page.validate()
    return ParsedPage(rows.connections, rows.invalid, page.has_next_page, page.last_id)


def snapshot_from(body: bytes, observed_at: float = FIXTURE_TIME) -> FleetSnapshot:
    page = parse_page(body)
    builder = SnapshotBuilder()
    builder.add(observed_at, page.connections, len(page.invalid))
    return builder.build(observed_at)


def environment_of(row: dict[str, Any], observed_at: float = FIXTURE_TIME) -> Environment:
    """One upstream row as the snapshot keeps it."""
    body = json.dumps({"connections": [row], "hasNextPage": False}).encode()
    ((environment, _),) = snapshot_from(body, observed_at).observations()
    return environment


def fixture_snapshot() -> FleetSnapshot:
    return snapshot_from((FIXTURES / "fleet.json").read_bytes())


Samples = dict[str, list[tuple[dict[str, str], float]]]


def samples_by_name(text: bytes) -> Samples:
    """Every sample of an exposition, parsed by prometheus-client, grouped by sample name."""
    out: Samples = {}
    for metric in text_string_to_metric_families(text.decode()):
        for sample in metric.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def total(samples: list[tuple[dict[str, str], float]], **match: str) -> float:
    """The sum of the samples whose labels include ``match``."""
    return sum(v for labels, v in samples if all(labels.get(k) == x for k, x in match.items()))


def served_value(url: str, name: str, **labels: str) -> float:
    """The sum of the samples named ``name`` with ``labels`` that ``url``/metrics serves now."""
    text = httpx.get(f"{url}/metrics", timeout=30).content
    return total(samples_by_name(text).get(name, []), **labels)


def metric_value(metrics: ExporterMetrics, name: str, **labels: str) -> float:
    """The value of one of the exporter's own samples; fails when it is not served."""
    for sample_labels, value in samples_by_name(metrics.render()).get(name, []):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    raise AssertionError(f"{name}{labels} not found")
