"""The HTTP endpoints, served for real on loopback."""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from exporter.rendering import render_fleet
from exporter.selfmetrics import ExporterMetrics
from exporter.server import ExporterHTTPServer, serve_in_background
from exporter.store import GzipPrefix, PublishedExposition, Store
from tests.conftest import render_options
from tests.fleet import fixture_snapshot


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def served() -> Iterator[tuple[str, Store, Clock]]:
    state, clock = Store(), Clock()
    server = ExporterHTTPServer(
        ("127.0.0.1", 0),
        store=state,
        metrics=ExporterMetrics(60, process=True),
        telemetry_path="/metrics",
        max_data_age=600,
        monotonic=clock,
    )
    serve_in_background(server)
    try:
        yield f"http://127.0.0.1:{server.server_port}", state, clock
    finally:
        server.shutdown()
        server.server_close()


def _publish(state: Store, at: float) -> bytes:
    text = render_fleet(fixture_snapshot(), render_options()).text
    state.publish(
        PublishedExposition(
            plain=text,
            gzipped=GzipPrefix(text, 1),
            environments=8,
            completed_at=1.8e9,
            published_monotonic=at,
        )
    )
    return text


def _names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


def test_health_is_up_at_once_and_ready_only_after_the_first_poll(served: tuple) -> None:
    url, state, clock = served
    assert httpx.get(f"{url}/-/healthy").status_code == 200
    not_ready = httpx.get(f"{url}/-/ready")
    assert not_ready.status_code == 503 and "no successful poll" in not_ready.text
    _publish(state, clock.now)
    assert httpx.get(f"{url}/-/ready").status_code == 200


def test_metrics_before_the_first_poll_serve_the_exporters_own_families(served: tuple) -> None:
    url, _, _ = served
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    names = _names(response.text)
    assert {"letta_exporter_up", "letta_exporter_polls", "letta_exporter_build_info"} <= names
    assert "process_resident_memory_bytes" in names
    assert "letta_environments" not in names


def test_metrics_serve_the_published_fleet_plain_and_gzipped(served: tuple) -> None:
    url, state, clock = served
    fleet = _publish(state, clock.now)
    plain = httpx.get(f"{url}/metrics", headers={"Accept-Encoding": "identity"})
    assert plain.content.startswith(fleet) and "content-encoding" not in plain.headers
    zipped = httpx.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept, Accept-Encoding"
    body = zipped.content  # one gzip member: every client can read it
    assert body.startswith(fleet) and b"letta_exporter_up 0.0" in body
    with (
        httpx.Client() as client,
        client.stream("GET", f"{url}/metrics", headers={"Accept-Encoding": "gzip"}) as raw,
    ):
        compressed = b"".join(raw.iter_raw())
    assert gzip.decompress(compressed).startswith(fleet)
    assert len(compressed) < len(body)


def test_a_fleet_older_than_the_maximum_age_is_withdrawn_but_own_metrics_stay(
    served: tuple,
) -> None:
    url, state, clock = served
    _publish(state, clock.now)
    clock.now += 599
    assert "letta_environments" in _names(httpx.get(f"{url}/metrics").text)
    clock.now += 2
    names = _names(httpx.get(f"{url}/metrics").text)
    assert "letta_environments" not in names and "letta_environment_info" not in names
    assert "letta_exporter_up" in names and "letta_exporter_last_success_timestamp_seconds" in names
    assert httpx.get(f"{url}/-/ready").status_code == 200  # ready means "has polled once"


def test_landing_page_links_to_metrics(served: tuple) -> None:
    url, _, _ = served
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="/metrics"' in page.text


def test_head_unknown_paths_and_query_strings(served: tuple) -> None:
    url, _, _ = served
    head = httpx.head(f"{url}/metrics")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 0
    assert httpx.get(f"{url}/nope").status_code == 404
    assert httpx.get(f"{url}/metrics?debug=1").status_code == 200
    assert httpx.post(f"{url}/metrics").status_code == 501


def test_keep_alive_connections_serve_several_scrapes(served: tuple) -> None:
    url, state, clock = served
    _publish(state, clock.now)
    with httpx.Client() as client:
        for _ in range(5):
            assert client.get(f"{url}/metrics").status_code == 200


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,"
    "application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
)


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
def test_openmetrics_when_asked_first_the_same_fleet_bytes_then_own_families_and_eof(
    served: tuple, encoding: str
) -> None:
    url, state, clock = served
    fleet = _publish(state, clock.now)
    response = httpx.get(
        f"{url}/metrics", headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": encoding}
    )
    assert response.headers["content-type"] == (
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert response.content.startswith(fleet) and response.content.endswith(b"# EOF\n")
    families = {f.name for f in openmetrics_families(response.text)}  # the strict parser
    assert {"letta_environments", "letta_exporter_polls", "letta_environment_info"} <= families


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("gzip, deflate, br", True),
        ("GZIP;q=0.5", True),
        ("br;q=1.0, gzip;q=0.8, *;q=0.1", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("identity, gzip;q=0", False),
        ("*;q=0.5, gzip;q=0", False),
        ("identity", False),
        ("", False),
        ("gzip;q=soon", False),
    ],
)
def test_gzip_only_when_accept_encoding_allows_it(
    served: tuple, accept_encoding: str, gzipped: bool
) -> None:
    url, state, clock = served
    fleet = _publish(state, clock.now)
    response = httpx.get(f"{url}/metrics", headers={"Accept-Encoding": accept_encoding})
    assert response.status_code == 200
    assert (response.headers.get("content-encoding") == "gzip") is gzipped
    assert fleet in response.content  # httpx inflates a gzipped body: the same bytes either way
