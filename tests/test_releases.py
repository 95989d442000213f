"""The current release from a fake npm registry on loopback, and the drift families."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType
from typing import Any

import pytest

from exporter.fleet import (
    CurrentVersion,
    ReleaseInfo,
    behind,
    current_version,
    newest_release,
    node_major,
    parse_version,
    upgrade_blocker,
    view,
)
from exporter.release_lookup import ReleaseLookup, parse_packument, parse_pypi_project
from exporter.rendering import render_fleet
from exporter.selfmetrics import ExporterMetrics
from letta_simulator import LATEST_RELEASE, RELEASES, SimulatorHTTPServer
from tests.conftest import make_config, render_options
from tests.fleet import (
    FIXTURE_TIME,
    environment_of,
    fixture_snapshot,
    metric_value,
    samples_by_name,
    upstream_row,
)

PACKAGE = "@letta-ai/letta-code"
LAST_LOOKUP = "letta_exporter_release_last_success_timestamp_seconds"


def npm_lookups(metrics: ExporterMetrics, result: str) -> float:
    return metric_value(
        metrics, "letta_exporter_release_lookups_total", registry="npm", result=result
    )


class FakeRegistry(ThreadingHTTPServer):
    """An npm registry on loopback whose answer the test sets."""

    daemon_threads = True

    def __init__(self) -> None:
        self.status = 200
        self.body: bytes = json.dumps(
            {
                "name": PACKAGE,
                "dist-tags": {"latest": "1.4.2", "next": "1.5.0-next.1"},
                "time": {
                    "created": "2026-01-01T00:00:00.000Z",
                    "modified": "x",
                    "1.4.2": "2026-11-20T10:00:00.000Z",
                    "1.4.1": "2026-11-19T10:00:00Z",
                    "1.3.0": "2026-10-01T00:00:00.000+00:00",
                    "0.9.0": "not a date",
                },
            }
        ).encode()
        self.paths: list[str] = []
        self.redirect_body: bytes | None = None  # a redirect to /moved with this body, first
        super().__init__(("127.0.0.1", 0), _RegistryHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer is no error of the server's; anything else is."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _RegistryHandler(BaseHTTPRequestHandler):
    server: FakeRegistry

    def do_GET(self) -> None:
        self.server.paths.append(self.path)
        if self.server.redirect_body is not None and self.path != "/moved":
            self.send_response(302)
            self.send_header("Location", "/moved")
            # It announces far more than it sends: a client that reads the body waits for it.
            self.send_header("Content-Length", str(1 << 30))
            self.end_headers()
            self.wfile.write(self.server.redirect_body)
            return
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    server = FakeRegistry()
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    ).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _lookup(registry: FakeRegistry, metrics: ExporterMetrics) -> ReleaseLookup:
    config = make_config(version_registry_url=registry.url, version_registry_timeout=2.0)
    return ReleaseLookup(config.lookup_settings()[0], observe=metrics.observe_release_lookup)


def test_lookup_reads_latest_and_release_dates(registry: FakeRegistry) -> None:
    metrics = ExporterMetrics(60, process=False)
    lookup = _lookup(registry, metrics)
    try:
        assert lookup.refresh()
    finally:
        lookup.close()
    assert registry.paths == ["/@letta-ai%2Fletta-code"]
    assert lookup.current is not None and lookup.current.latest == "1.4.2"
    published = lookup.current.published
    assert published["1.4.2"] == 1_795_168_800.0 and published["1.3.0"] == 1_790_812_800.0
    assert "created" not in published and "0.9.0" not in published  # odd dates are skipped
    assert (
        metric_value(
            metrics, "letta_exporter_release_lookups_total", registry="npm", result="success"
        )
        == 1
    )
    assert (
        metric_value(
            metrics, "letta_exporter_release_last_success_timestamp_seconds", registry="npm"
        )
        > 0
    )


@pytest.mark.parametrize(
    ("status", "body", "result"),
    [
        (503, b"{}", "http_error"),
        (404, b'{"error": "not found"}', "http_error"),
        (200, b"<html>captive portal</html>", "invalid_response"),
        (200, b'{"dist-tags": {}}', "invalid_response"),
        (
            200,
            b'{"dist-tags": {"latest": "9.9.9"}, "x": "' + b"y" * (17 << 20) + b'"}',
            "invalid_response",
        ),
    ],
    ids=["503", "404", "not JSON", "no latest", "over --version.max-response-size"],
)
def test_a_failed_lookup_keeps_the_last_good_answer_and_is_counted(
    registry: FakeRegistry,
    status: int,
    body: bytes,
    result: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ExporterMetrics(60, process=False)
    lookup = _lookup(registry, metrics)
    try:
        assert lookup.refresh()
        good = lookup.current
        registry.status, registry.body = status, body
        with caplog.at_level(logging.WARNING, logger="exporter.release_lookup"):
            assert not lookup.refresh()
            assert not lookup.refresh()
    finally:
        lookup.close()
    assert lookup.current is good
    assert npm_lookups(metrics, result) == 2
    assert len([r for r in caplog.records if "release lookup in npm failed" in r.getMessage()]) == 1


def test_a_redirect_is_followed_without_reading_its_body(registry: FakeRegistry) -> None:
    # Never read: a gigabyte announced, a megabyte sent; reading it would wait out the timeout.
    registry.redirect_body = b"x" * (1 << 20)
    metrics = ExporterMetrics(60, process=False)
    lookup = _lookup(registry, metrics)
    try:
        assert lookup.refresh()
    finally:
        lookup.close()
    assert registry.paths == ["/@letta-ai%2Fletta-code", "/moved"]
    assert lookup.current is not None and lookup.current.latest == "1.4.2"


def test_an_unreachable_registry_is_a_connection_error() -> None:
    from tests.conftest import free_port

    metrics = ExporterMetrics(60, process=False)
    lookup = ReleaseLookup(
        make_config(version_registry_url=f"http://127.0.0.1:{free_port()}").lookup_settings()[0],
        observe=metrics.observe_release_lookup,
    )
    try:
        assert not lookup.refresh()
    finally:
        lookup.close()
    assert lookup.current is None
    assert (
        metric_value(
            metrics,
            "letta_exporter_release_lookups_total",
            registry="npm",
            result="connection_error",
        )
        == 1
    )


def test_the_simulator_serves_a_registry_document(simulator: SimulatorHTTPServer) -> None:
    lookup = ReleaseLookup(
        make_config(version_registry_url=f"{simulator.url}/_registry").lookup_settings()[0]
    )
    try:
        assert lookup.refresh()
    finally:
        lookup.close()
    assert lookup.current is not None and lookup.current.latest == LATEST_RELEASE
    assert set(lookup.current.published) == set(RELEASES)


def test_the_simulator_serves_a_pypi_document_and_each_registry_gets_its_own_path(
    simulator: SimulatorHTTPServer,
) -> None:
    config = make_config(
        version_registry_url=f"{simulator.url}/_registry",
        version_pypi_url=f"{simulator.url}/_pypi",
    )
    npm, pypi = config.lookup_settings()
    assert (npm.registry, pypi.registry) == ("npm", "pypi")
    assert pypi.document_url == f"{simulator.url}/_pypi/pypi/letta/json"
    simulator.latest["pypi"] = "0.34.13-next.1"  # a channel may call a pre-release its newest
    metrics = ExporterMetrics(60, process=False)
    lookup = ReleaseLookup(pypi, observe=metrics.observe_release_lookup)
    try:
        assert lookup.refresh()
    finally:
        lookup.close()
    assert lookup.current is not None
    assert (lookup.current.latest, lookup.current.source) == ("0.34.13-next.1", "pypi")
    assert set(lookup.current.published) == set(RELEASES)
    name = "letta_exporter_release_lookups_total"
    assert metric_value(metrics, name, registry="pypi", result="success") == 1
    assert metric_value(metrics, name, registry="npm", result="success") == 0


def test_which_registries_are_asked() -> None:
    assert [s.registry for s in make_config().lookup_settings()] == ["npm", "pypi"]
    assert [s.registry for s in make_config(version_pypi=False).lookup_settings()] == ["npm"]
    assert [s.registry for s in make_config(version_registry=False).lookup_settings()] == ["pypi"]
    assert make_config(version_target="0.34.12").lookup_settings() == ()
    # Only the registries asked have lookup series.
    served = ExporterMetrics(60, process=False, registries=("npm",)).render().decode()
    assert 'registry="npm"' in served and 'registry="pypi"' not in served


def test_pypi_documents_read_the_first_upload_and_skip_yanked_files() -> None:
    body = json.dumps(
        {
            "info": {"version": "0.34.12", "summary": "Letta Code"},
            "releases": {
                "0.34.12": [
                    {"upload_time_iso_8601": "2026-10-12T20:47:52.141521Z", "yanked": False},
                    {"upload_time_iso_8601": "2026-10-12T20:40:00.000000Z", "yanked": False},
                ],
                "0.34.11": [{"upload_time_iso_8601": "2026-10-10T00:00:00Z", "yanked": True}],
                "0.34.10": [{"upload_time_iso_8601": "not a date"}],
                "0.16.8": [],
            },
        }
    ).encode()
    info = parse_pypi_project(body, fetched_at=5.0)
    assert (info.latest, info.source, info.fetched_at) == ("0.34.12", "pypi", 5.0)
    assert dict(info.published) == {"0.34.12": 1_791_837_600.0}
    for bad in (b"[]", b'{"releases": {}}', b'{"info": {"version": ""}}', b"<html>"):
        with pytest.raises(ValueError, match=r"PyPI|version"):
            parse_pypi_project(bad, fetched_at=0)


def test_the_newest_release_of_both_channels_counts() -> None:
    npm = ReleaseInfo(
        latest="0.32.18",
        published=MappingProxyType({"0.32.18": 100.0, "0.34.12": 300.0}),
        fetched_at=1.0,
        source="registry",
    )
    pypi = ReleaseInfo(
        latest="0.34.12",
        published=MappingProxyType({"0.34.12": 200.0, "0.33.8": 150.0}),
        fetched_at=2.0,
        source="pypi",
    )
    for order in ((npm, pypi), (pypi, npm), (None, npm, pypi)):
        newest = newest_release(order)
        assert newest is not None and (newest.latest, newest.source) == ("0.34.12", "pypi")
        # Each version's first publication in either registry; the latest lookup's time.
        assert dict(newest.published) == {"0.32.18": 100.0, "0.34.12": 200.0, "0.33.8": 150.0}
        assert newest.fetched_at == 2.0
    same = replace(pypi, latest="0.32.18")
    tie = newest_release((npm, same))
    assert tie is not None and tie.source == "registry"  # a tie: the first given, npm
    odd = newest_release((replace(npm, latest="garbage"), pypi))
    assert odd is not None and odd.source == "pypi"  # an unparsable answer never wins
    kept = newest_release((npm, replace(pypi, latest="garbage")))
    assert kept is not None and kept.source == "registry"
    assert newest_release((None, None)) is None
    # With the fleet of the real clients (0.34.12 and 0.33.8): npm alone counts 0.33.8 current.
    views = view(fixture_snapshot(), 120)
    newest = newest_release((npm, pypi))
    assert newest is not None
    current = current_version(views, None, newest)
    assert current is not None and (current.version, current.source) == ("0.34.12", "pypi")
    assert behind("0.33.8", current) == "minor"
    npm_only = current_version(views, None, npm)
    assert npm_only is not None and behind("0.33.8", npm_only) is None


def _current(version: str, source: str = "registry") -> CurrentVersion:
    parsed = parse_version(version)
    assert parsed is not None
    return CurrentVersion(version=version, parsed=parsed, source=source)


@pytest.mark.parametrize(
    ("version", "target", "gap"),
    [
        ("0.32.17", "0.32.18", "patch"),
        ("0.31.9", "0.32.18", "minor"),
        ("0.9.0", "0.32.18", "minor"),  # semver order, not text order
        ("1.9.9", "2.0.0", "major"),
        ("0.32.18-next.1", "0.32.18", "prerelease"),
        ("0.32.17-next.4", "0.32.18", "patch"),
        ("0.32.18", "0.32.18", None),
        ("0.33.0-next.2", "0.32.18", None),  # ahead of the release
        ("v0.32.17", "0.32.18", "patch"),
        ("weird", "0.32.18", None),
        ("unknown", "0.32.18", None),
    ],
)
def test_how_far_behind(version: str, target: str, gap: str | None) -> None:
    assert behind(version, _current(target)) == gap


def test_precedence_pinned_then_registry_then_observed() -> None:
    views = view(fixture_snapshot(), 120)
    releases = ReleaseInfo(latest="0.40.0")
    pinned = current_version(views, "0.32.17", releases)
    assert pinned is not None and (pinned.version, pinned.source) == ("0.32.17", "pinned")
    registry = current_version(views, None, releases)
    assert registry is not None and (registry.version, registry.source) == ("0.40.0", "registry")
    observed = current_version(views, None, None)
    assert observed is not None and (observed.version, observed.source) == ("0.32.18", "observed")
    broken = current_version(views, None, ReleaseInfo(latest="garbage"))
    assert broken is not None and broken.source == "observed"


def test_drift_families_of_the_fixture_fleet_against_a_registry_release() -> None:
    releases = ReleaseInfo(
        latest="0.33.0",
        published={"0.32.18": 1_790_144_743.5, "0.29.0": 1_782_983_521.0, "9.9.9": 1.0},
    )
    s = samples_by_name(render_fleet(fixture_snapshot(), render_options(), releases).text)
    assert s["letta_environments_latest_version_info"] == [
        ({"version": "0.33.0", "source": "registry"}, 1.0)
    ]
    gaps = {(lb["state"], lb["behind"]): v for lb, v in s["letta_environments_outdated"] if v}
    # a, g (0.32.18) and b (0.32.17) online; c (prerelease of 0.32.18) and h stale; e offline.
    assert gaps == {("online", "minor"): 3, ("stale", "minor"): 2, ("offline", "minor"): 1}
    # Connected and outdated: a (can: supported, writable, has the command), b (not writable),
    # c (installed from PyPI), g (no self_update), h (desktop).
    assert s["letta_environments_upgradable"] == [({}, 1.0)]
    reasons = {lb["reason"]: v for lb, v in s["letta_environments_not_upgradable"]}
    assert reasons == {
        "desktop_managed": 1,
        "source_checkout": 0,
        "python_installer": 1,
        "not_writable": 1,
        "unsupported": 0,
        "no_upgrade_command": 0,
        "unknown": 1,
    }
    stamps = {lb["version"]: v for lb, v in s["letta_code_release_timestamp_seconds"]}
    assert stamps == {"0.32.18": 1_790_144_743.5, "0.29.0": 1_782_983_521.0}  # only present ones
    majors = {(lb["major"], lb["state"]): v for lb, v in s["letta_environments_node_major"]}
    assert majors[("22", "online")] == 1 and majors[("20", "online")] == 1
    assert sum(majors.values()) == 8


def test_a_pinned_target_wins() -> None:
    s = samples_by_name(
        render_fleet(
            fixture_snapshot(),
            render_options(version_target="0.32.17"),
            ReleaseInfo(latest="0.40.0"),
        ).text
    )
    assert s["letta_environments_latest_version_info"] == [
        ({"version": "0.32.17", "source": "pinned"}, 1.0)
    ]
    gaps = {(lb["state"], lb["behind"]): v for lb, v in s["letta_environments_outdated"] if v}
    assert gaps == {("offline", "minor"): 1}  # only e (0.29.0) is older than 0.32.17


def not_upgradable_reason(metadata: dict[str, Any] | None) -> str | None:
    e = environment_of(upstream_row(connectionId="c", metadata=metadata))
    return upgrade_blocker(e.self_update, e.supported_commands)


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (
            {
                "self_update": {"supported": True, "writable": True},
                "supported_commands": ["upgrade-letta-code"],
            },
            None,
        ),
        ({"self_update": {"supported": True, "writable": True}}, "no_upgrade_command"),
        (
            {
                "self_update": {"supported": True, "writable": True},
                "supported_commands": ["send-message"],
            },
            "no_upgrade_command",
        ),
        (
            {
                "self_update": {
                    "supported": False,
                    "writable": False,
                    "reason": "Managed by Letta Desktop",
                }
            },
            "desktop_managed",
        ),
        (
            {
                "self_update": {
                    "supported": False,
                    "writable": True,
                    "reason": "running from a source checkout",
                }
            },
            "source_checkout",
        ),
        ({"self_update": {"supported": True, "writable": False}}, "not_writable"),
        # Letta Code's own words (src/updater/auto-update.ts); a path may hold any word.
        (
            {
                "self_update": {
                    "supported": False,
                    "writable": True,
                    "reason": "This Letta Code runtime is managed by a Python package installer.",
                    "manual_command": "Upgrade with your installer: uv tool upgrade letta, "
                    "pipx upgrade letta, or python -m pip install --upgrade letta",
                }
            },
            "python_installer",
        ),
        (
            {
                "self_update": {
                    "supported": False,
                    "writable": False,
                    "reason": "Self-update is disabled because this Letta Code runtime is "
                    "managed by Letta Code Desktop.",
                }
            },
            "desktop_managed",
        ),
        (
            {
                "self_update": {
                    "supported": False,
                    "writable": True,
                    "reason": "Self-update is disabled for development/source checkouts.",
                }
            },
            "source_checkout",
        ),
        (
            {
                "self_update": {
                    "supported": True,
                    "writable": False,
                    "reason": "Self-update requires write access to /Users/bob/Desktop/git/"
                    "python/lib. Run npm install -g @letta-ai/letta-code@latest manually or "
                    "reinstall Letta Code in a user-writable npm prefix.",
                }
            },
            "not_writable",
        ),
        (
            {"self_update": {"supported": False, "writable": True, "reason": "beta build"}},
            "unsupported",
        ),
        ({"os": "linux"}, "unknown"),
        (None, "unknown"),
    ],
)
def test_not_upgradable_reasons_are_a_bounded_set(
    metadata: dict[str, Any] | None, reason: str | None
) -> None:
    assert not_upgradable_reason(metadata) == reason


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ("v22.11.0", "22"),
        ("20.18.1", "20"),
        ("v24", "24"),
        (None, "unknown"),
        ("", "unknown"),
        ("bun-1.1", "unknown"),
        ("v99999.0.0", "unknown"),
    ],
)
def test_node_major(text: str | None, major: str) -> None:
    assert node_major(text) == major


def test_packument_dates_in_both_registry_styles() -> None:
    info = parse_packument(
        json.dumps(
            {
                "dist-tags": {"latest": "1.0.0"},
                "time": {
                    "1.0.0": "2026-09-23T06:25:43.503Z",
                    "0.9.0": "2026-09-23T06:25:43.503000+00:00",
                },
            }
        ).encode(),
        FIXTURE_TIME,
    )
    assert info.published["1.0.0"] == info.published["0.9.0"]
    assert info.fetched_at == FIXTURE_TIME
