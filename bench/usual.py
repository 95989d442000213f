"""The usual design, for comparison: long-lived prometheus-client metrics with labels, set from
the same snapshot, and `generate_latest()` (then gzip at the library's level) on every scrape.

The series are those the exporter serves for the same fleet (the bench checks the counts).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Gauge, Histogram
from pydantic import SecretStr

from exporter.client import EnvironmentsClient
from exporter.config import Config
from exporter.exposition import clean
from exporter.fleet import (
    BEHIND,
    LONG_LABEL,
    NOT_UPGRADABLE_REASONS,
    STATES,
    UNKNOWN,
    capped,
    current_version,
    gaps,
    node_major,
    top_models,
    upgrade_blocker,
    view,
)
from exporter.rendering import CACHED, MEMORY_BUCKETS
from exporter.selfmetrics import ExporterMetrics
from exporter.snapshot import FleetSnapshot, SnapshotBuilder


def fetch_snapshot(config: Config, observe: Callable[[str], None] | None = None) -> FleetSnapshot:
    """One poll's snapshot, paged with the exporter's own client."""
    client = EnvironmentsClient(config.client_settings(), observe=observe)
    builder = SnapshotBuilder()
    try:
        for fetched in client.iter_pages(time.monotonic() + 600):
            builder.add(fetched.received_at, fetched.rows.connections, len(fetched.rows.invalid))
    finally:
        client.close()
    return builder.build(time.time())


def set_gauges(snapshot: FleetSnapshot, config: Config, registry: CollectorRegistry) -> None:
    """Register and set the fleet's metrics the usual way: one labelled child per series."""
    r = registry
    views = view(snapshot, config.online_threshold)
    current = current_version(views, config.version_target, None)
    gap_of = gaps(views, current)

    environments = Gauge(
        "letta_environments", CACHED, ["state", "os", "mode", "version"], registry=r
    )
    for (state, os_name, mode, version), n in Counter(
        (v.state, v.os, v.mode, v.version) for v in views
    ).items():
        environments.labels(state, os_name, mode, version).set(n)
    latest = Gauge(
        "letta_environments_latest_version_info", CACHED, ["version", "source"], registry=r
    )
    if current is not None:
        latest.labels(current.version, current.source).set(1)
    outdated = Gauge("letta_environments_outdated", CACHED, ["state", "behind"], registry=r)
    counts = Counter((v.state, gap) for v in views if (gap := gap_of[v.version]))
    for state in STATES:
        for gap in BEHIND:
            outdated.labels(state, gap).set(counts[(state, gap)])
    reasons = Counter(
        upgrade_blocker(v.environment.self_update, v.environment.supported_commands)
        for v in views
        if v.connected and gap_of[v.version]
    )
    Gauge("letta_environments_upgradable", CACHED, registry=r).set(reasons[None])
    not_upgradable = Gauge("letta_environments_not_upgradable", CACHED, ["reason"], registry=r)
    for reason in NOT_UPGRADABLE_REASONS:
        not_upgradable.labels(reason).set(reasons[reason])
    self_update = Gauge(
        "letta_environments_self_update", CACHED, ["supported", "writable"], registry=r
    )
    for v in views:
        if v.connected:
            update = v.environment.self_update
            pair = (
                ("unknown", "unknown")
                if update is None
                else (str(update.supported).lower(), str(update.writable).lower())
            )
            self_update.labels(*pair).inc()
    ages = Histogram(
        "letta_environments_heartbeat_age_seconds",
        CACHED,
        buckets=config.heartbeat_buckets,
        registry=r,
    )
    for v in views:
        if v.connected and (age := v.heartbeat_age) is not None:
            ages.observe(age)
    node = Gauge("letta_environments_node_major", CACHED, ["major", "state"], registry=r)
    for v in views:
        node.labels(node_major(v.environment.node_version), v.state).inc()
    machine = Gauge(
        "letta_environments_machine",
        CACHED,
        ["state", "runtime", "arch", "os_name", "os_version"],
        registry=r,
    )
    for v in views:
        machine.labels(v.state, *v.host).inc()
    memory = Histogram(
        "letta_environments_memory_bytes", CACHED, buckets=MEMORY_BUCKETS, registry=r
    )
    cpus: Counter[str] = Counter()
    gpus: Counter[str] = Counter()
    for v in views:
        facts = v.environment.machine
        if not v.connected or facts is None:
            continue
        if facts.memory_bytes is not None:
            memory.observe(facts.memory_bytes)
        cpus[clean(facts.cpu, 64) if facts.cpu else UNKNOWN] += 1
        names = {clean(g, 64) or UNKNOWN for g in facts.gpus} if facts.gpus else set()
        for name in names or {UNKNOWN if facts.gpus is None else "none"}:
            gpus[name] += 1
    for name, counts_of in (("cpu", cpus), ("gpu", gpus)):
        gauge = Gauge(f"letta_environments_{name}", CACHED, [name], registry=r)
        for model, n in top_models(counts_of):
            gauge.labels(model).set(n)

    info = Gauge(
        "letta_environment_info",
        CACHED,
        [
            "environment_id",
            "device_id",
            "connection_name",
            "os",
            "mode",
            "version",
            "node_version",
            "user_id",
            "runtime",
            "arch",
            "os_name",
            "os_version",
        ],
        registry=r,
    )
    connected = Gauge("letta_environment_connected", CACHED, ["environment_id"], registry=r)
    stamps = [
        (
            Gauge(
                f"letta_environment_{name}_timestamp_seconds",
                CACHED,
                ["environment_id"],
                registry=r,
            ),
            attribute,
        )
        for name, attribute in (
            ("last_heartbeat", "last_heartbeat"),
            ("last_seen", "last_seen_at"),
            ("connected", "connected_at"),
            ("first_seen", "first_seen_at"),
        )
    ]
    for v in capped(views, config.environment_max):
        e = v.environment
        env_id = clean(e.id, LONG_LABEL)
        info.labels(
            env_id,
            clean(e.device_id, LONG_LABEL),
            clean(e.connection_name, LONG_LABEL),
            v.os,
            v.mode,
            v.version,
            clean(e.node_version, 64) if e.node_version else "unknown",
            clean(e.user_id or "", LONG_LABEL),
            *v.host,
        ).set(1)
        connected.labels(env_id).set(0 if v.state == "offline" else 1)
        for gauge, attribute in stamps:
            millis = getattr(e, attribute)
            if millis is not None:
                gauge.labels(env_id).set(millis / 1000)


def usual_registry(base_url: str, page_size: int, api_key: str) -> tuple[CollectorRegistry, int]:
    """The exporter's own metrics plus the fleet as labelled Gauges; and the series count."""
    config = Config(
        api_key=SecretStr(api_key), base_url=base_url, page_size=page_size, poll_jitter=0.0
    )
    metrics = ExporterMetrics(config.poll_interval)
    registry = metrics.registry
    set_gauges(fetch_snapshot(config, metrics.observe_request), config, registry)
    series = sum(len(metric.samples) for metric in registry.collect())
    return registry, series
