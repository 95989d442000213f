"""The poll job: whole snapshots, failures keep the last good fleet, counted and logged once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from freezegun import freeze_time
from prometheus_client.parser import text_string_to_metric_families

from exporter.client import EnvironmentsClient
from exporter.poller import Poller
from exporter.selfmetrics import ExporterMetrics
from exporter.store import Store
from tests.conftest import make_config
from tests.fleet import metric_value

FROZEN = "2027-01-15 12:00:00"


def _row(
    env_id: str, heartbeat_ms: int | None, connected: bool = True, **extra: Any
) -> dict[str, Any]:
    return {
        "id": env_id,
        "connectedAt": 0,
        "connectionId": "c" if connected else None,
        "connectionName": env_id,
        "deviceId": "d",
        "firstSeenAt": 0,
        "lastHeartbeat": heartbeat_ms,
        "lastSeenAt": 0,
        "organizationId": "o",
        "podId": None,
        **extra,
    }


class Upstream:
    """A scripted upstream: a list of handlers, one per request, the last one repeating."""

    def __init__(self, *handlers: Callable[[httpx.Request], httpx.Response]) -> None:
        self.handlers = list(handlers)
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        handler = self.handlers.pop(0) if len(self.handlers) > 1 else self.handlers[0]
        return handler(request)


def _page(*rows: dict[str, Any], more: bool = False) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(
        200, json={"connections": list(rows), "hasNextPage": more}
    )


def _poller(
    upstream: Upstream, wall_clock: Callable[[], float] | None = None, **config: Any
) -> tuple[Poller, Store, ExporterMetrics]:
    cfg = make_config(max_retries=0, **config)
    metrics = ExporterMetrics(cfg.poll_interval, process=False)
    state = Store()
    client = EnvironmentsClient(
        cfg.client_settings(),
        transport=httpx.MockTransport(upstream),
        observe=metrics.observe_request,
        sleep=lambda s: None,
        **({"wall_clock": wall_clock} if wall_clock else {}),
    )
    return Poller(cfg.poll_settings(), client, state, metrics), state, metrics


def _states(state: Store) -> dict[str, float]:
    assert state.fleet is not None
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(state.fleet.plain.decode()):
        for sample in family.samples:
            if sample.name == "letta_environments":
                key = sample.labels["state"]
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def test_states_are_evaluated_with_the_clock_at_fetch_time() -> None:
    with freeze_time(FROZEN) as frozen:
        import time

        now_ms = int(time.time() * 1000)
        upstream = Upstream(
            _page(
                _row("fresh", now_ms - 5_000),
                _row("old", now_ms - 600_000),
                _row("none", None),
                _row("gone", now_ms, connected=False),
            )
        )
        # Pages arrive on the client's worker thread, where freezegun shows the real time.
        fetched_at = time.time()
        poller, state, metrics = _poller(upstream, wall_clock=lambda: fetched_at)
        assert poller.poll_once()
        assert _states(state) == {"online": 1, "stale": 2, "offline": 1}
        assert metric_value(metrics, "letta_exporter_last_success_timestamp_seconds") == time.time()
        frozen.tick(3600)  # an hour later, without a new poll, nothing is re-judged
        assert _states(state) == {"online": 1, "stale": 2, "offline": 1}


def test_a_failed_poll_keeps_the_last_good_fleet_and_marks_down() -> None:
    good = _page(_row("a", None), _row("b", None))
    upstream = Upstream(good, lambda r: httpx.Response(503), good)
    poller, state, metrics = _poller(upstream)
    assert poller.poll_once()
    first = state.fleet
    assert metric_value(metrics, "letta_exporter_up") == 1
    assert not poller.poll_once()
    assert state.fleet is first
    assert metric_value(metrics, "letta_exporter_up") == 0
    assert metric_value(metrics, "letta_exporter_polls_total", result="http_error") == 1
    assert metric_value(metrics, "letta_exporter_api_requests_total", code="503") == 1
    assert poller.poll_once()
    assert state.fleet is not first
    assert metric_value(metrics, "letta_exporter_up") == 1
    assert metric_value(metrics, "letta_exporter_polls_total", result="success") == 2


def test_a_poll_that_fails_part_way_never_publishes_a_partial_fleet() -> None:
    upstream = Upstream(_page(_row("a", None), more=True), lambda r: httpx.Response(500))
    poller, state, metrics = _poller(upstream)
    assert not poller.poll_once()
    assert state.fleet is None and not state.ready
    assert metric_value(metrics, "letta_exporter_last_success_timestamp_seconds") == 0


def test_invalid_rows_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    bad = {**_row("bad", None), "lastSeenAt": "never"}
    upstream = Upstream(_page(_row("a", None), bad))
    poller, state, metrics = _poller(upstream)
    with caplog.at_level(logging.INFO, logger="exporter"):
        for _ in range(3):
            assert poller.poll_once()
    assert metric_value(metrics, "letta_exporter_invalid_records_total") == 3
    warnings = [r for r in caplog.records if "invalid upstream row" in r.getMessage()]
    assert len(warnings) == 1 and "lastSeenAt" in warnings[0].getMessage()
    assert sum(_states(state).values()) == 1


def test_a_failure_streak_is_logged_once_and_the_recovery_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream = Upstream(*([lambda r: httpx.Response(502)] * 4), _page(_row("a", None)))
    poller, _, metrics = _poller(upstream)
    with caplog.at_level(logging.INFO, logger="exporter"):
        for _ in range(5):
            poller.poll_once()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    recovered = [r for r in caplog.records if "recovered" in r.getMessage()]
    assert len(errors) == 1 and "http_error" in errors[0].getMessage()
    assert len(recovered) == 1
    assert metric_value(metrics, "letta_exporter_polls_total", result="http_error") == 4


def test_an_unexpected_bug_is_counted_and_does_not_escape(caplog: pytest.LogCaptureFixture) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("bug")

    poller, _, metrics = _poller(Upstream(broken))
    with caplog.at_level(logging.ERROR):
        assert poller.poll_once() is False
    assert metric_value(metrics, "letta_exporter_polls_total", result="internal_error") == 1


def test_the_cap_drop_count_accumulates_per_poll() -> None:
    upstream = Upstream(_page(*[_row(f"e{i}", None) for i in range(5)]))
    poller, _, metrics = _poller(upstream, environment_max=2)
    poller.poll_once()
    poller.poll_once()
    assert metric_value(metrics, "letta_exporter_environments_dropped_total") == 6


def test_fleet_bytes_are_withdrawn_after_the_maximum_data_age() -> None:
    clock = [100.0]
    upstream = Upstream(_page(_row("a", None)))
    cfg = make_config()
    metrics = ExporterMetrics(cfg.poll_interval, process=False)
    state = Store()
    client = EnvironmentsClient(cfg.client_settings(), transport=httpx.MockTransport(upstream))
    Poller(cfg.poll_settings(), client, state, metrics, monotonic=lambda: clock[0]).poll_once()
    assert state.fresh_fleet(600, now=clock[0] + 600) is state.fleet
    assert state.fresh_fleet(600, now=clock[0] + 600.5) is None


def test_gzip_bytes_hold_the_same_exposition() -> None:
    import gzip

    poller, state, _ = _poller(Upstream(_page(_row("a", None))))
    poller.poll_once()
    assert state.fleet is not None
    assert gzip.decompress(state.fleet.gzipped.finish(b"tail\n")) == state.fleet.plain + b"tail\n"
    assert gzip.decompress(state.fleet.gzipped.finish(b"")) == state.fleet.plain
