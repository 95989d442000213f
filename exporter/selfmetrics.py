"""The exporter's own metrics, in an explicit registry (never the global one).

Importing this module changes nothing global: the process that serves them (`exporter.cli`)
turns prometheus-client's `_created` series off.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from exporter import __version__
from exporter.errors import LOOKUP_RESULTS, POLL_RESULTS, RELEASE_REGISTRIES


class ExporterMetrics:
    """Counters and gauges about polling, updated by the poller, rendered at scrape time."""

    def __init__(
        self,
        poll_interval: float,
        *,
        process: bool = True,
        registries: tuple[str, ...] = RELEASE_REGISTRIES,
    ) -> None:
        """``registries``: those whose release lookup runs, served from start-up at 0."""
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.up = Gauge(
            "letta_exporter_up", "1 when the last poll of the Letta API succeeded.", registry=r
        )
        self.last_success = Gauge(
            "letta_exporter_last_success_timestamp_seconds",
            "End time of the last successful poll, 0 before the first.",
            registry=r,
        )
        self.poll_duration = Gauge(
            "letta_exporter_poll_duration_seconds", "Wall time of the last poll.", registry=r
        )
        self.poll_interval = Gauge(
            "letta_exporter_poll_interval_seconds", "The configured poll interval.", registry=r
        )
        self.polls = Counter(
            "letta_exporter_polls", "Polls of the Letta API by result.", ["result"], registry=r
        )
        self.polls_skipped = Counter(
            "letta_exporter_polls_skipped",
            "Polls not started because the previous one was still running.",
            registry=r,
        )
        self.api_requests = Counter(
            "letta_exporter_api_requests",
            "Requests to the Letta API by HTTP status code, or timeout / connection_error.",
            ["code"],
            registry=r,
        )
        self.invalid_records = Counter(
            "letta_exporter_invalid_records",
            "Upstream rows skipped because they failed validation.",
            registry=r,
        )
        self.dropped = Counter(
            "letta_exporter_environments_dropped",
            "Environments left without per-environment series because of the cap, per poll.",
            registry=r,
        )
        self.release_lookups = Counter(
            "letta_exporter_release_lookups",
            "Lookups of the current Letta Code release, by registry (npm, pypi) and result.",
            ["registry", "result"],
            registry=r,
        )
        self.release_last_success = Gauge(
            "letta_exporter_release_last_success_timestamp_seconds",
            "Time of the last successful release lookup of each registry, 0 before the first.",
            ["registry"],
            registry=r,
        )
        build = Gauge(
            "letta_exporter_build_info",
            "The exporter's version, valued 1.",
            ["version"],
            registry=r,
        )
        build.labels(version=__version__).set(1)
        self.poll_interval.set(poll_interval)
        for result in POLL_RESULTS:
            self.polls.labels(result=result)
        for registry in registries:
            self.release_last_success.labels(registry=registry)
            for result in LOOKUP_RESULTS:
                self.release_lookups.labels(registry=registry, result=result)
        if process:
            ProcessCollector(registry=r)

    def observe_request(self, code: str) -> None:
        self.api_requests.labels(code=code).inc()

    def observe_release_lookup(self, registry: str, result: str) -> None:
        self.release_lookups.labels(registry=registry, result=result).inc()
        if result == "success":
            self.release_last_success.labels(registry=registry).set_to_current_time()

    def render(self) -> bytes:
        return generate_latest(self.registry)
