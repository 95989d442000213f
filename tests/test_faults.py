"""The fault matrix: every way the API misbehaves, against the real simulator on loopback.

Each case writes down what the exporter must show while the fault lasts (`letta_exporter_up`,
the last-success time, the published fleet, the requests made, the one log line of the streak)
and after the upstream recovers. The rule in every case: the last good fleet stays until a
complete poll replaces it, and the first poll after the upstream recovers succeeds.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.procs import memory_of
from exporter.client import EnvironmentsClient
from exporter.poller import Poller
from exporter.selfmetrics import ExporterMetrics
from exporter.store import PublishedExposition, Store
from letta_simulator import LATEST_RELEASE, SimulatedFleet, SimulatorHTTPServer
from tests.conftest import API_KEY, exporter_process, free_port, make_config, wait_until
from tests.fleet import served_value
from tests.hostile import HostileServer, prepare

FLEET = 60  # the `simulator` fixture's fleet: 3 pages of 25, 25 and 10 rows
FAULT_POLLS = 3
BASE = {
    "page_size": 25,
    "request_timeout": 0.2,
    "max_retries": 1,
    "retry_backoff": 0.01,
    "retry_backoff_max": 0.02,
    "poll_timeout": 1.5,
}


# --- reading what the exporter shows ---------------------------------------------------------


def _samples(text: bytes | str) -> list[Any]:
    decoded = text.decode() if isinstance(text, bytes) else text
    return [s for f in text_string_to_metric_families(decoded) for s in f.samples]


def _value(metrics: ExporterMetrics, name: str, **labels: str) -> float:
    for sample in _samples(metrics.render()):
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return 0.0


def _codes(metrics: ExporterMetrics) -> Counter[str]:
    return Counter(
        {
            s.labels["code"]: int(s.value)
            for s in _samples(metrics.render())
            if s.name == "letta_exporter_api_requests_total"
        }
    )


@dataclass(frozen=True)
class Fleet:
    """What a published fleet says: environments by state and mode, ids, heartbeat ages."""

    total: float
    states: dict[str, float]
    modes: dict[str, float]
    ids: frozenset[str]
    heartbeat_age_sum: float
    heartbeats: dict[str, float]

    @classmethod
    def of(cls, fleet: PublishedExposition | None) -> Fleet:
        assert fleet is not None
        states: Counter[str] = Counter()
        modes: Counter[str] = Counter()
        ids, heartbeats, age_sum = set(), {}, -1.0
        for s in _samples(fleet.plain):
            if s.name == "letta_environments":
                states[s.labels["state"]] += s.value
                modes[s.labels["mode"]] += s.value
            elif s.name == "letta_environment_connected":
                ids.add(s.labels["environment_id"])
            elif s.name == "letta_environment_last_heartbeat_timestamp_seconds":
                heartbeats[s.labels["environment_id"]] = s.value
            elif s.name == "letta_environments_heartbeat_age_seconds_sum":
                age_sum = s.value
        return cls(
            sum(states.values()), dict(states), dict(modes), frozenset(ids), age_sum, heartbeats
        )


# --- the table -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One fault: what the simulator does, and what the exporter must show for each poll."""

    name: str
    fault: dict[str, Any]
    result: str  # letta_exporter_polls_total{result} of each poll during the fault
    requests: tuple[int, ...]  # list requests the simulator sees, poll by poll
    codes: dict[str, int]  # letta_exporter_api_requests_total{code} added by the fault's polls
    log: str  # the one line (regex) logged for the whole streak, WARNING or ERROR
    config: dict[str, Any] = field(default_factory=dict)
    fleet: Callable[[Fleet, Fleet, SimulatedFleet], None] | None = None  # survivable: check it
    settle: float = 0.0  # seconds the upstream asked us to wait before the recovery poll
    max_duration: float = 1.5  # no poll runs past this (the poll's deadline)


def _all_there(fleet: Fleet, good: Fleet, simulated: SimulatedFleet) -> None:
    assert fleet.total == FLEET and fleet.ids == {spec.id for spec in simulated.specs}


def _six_rows_skipped(fleet: Fleet, good: Fleet, simulated: SimulatedFleet) -> None:
    bad = {simulated.specs[i].id for i in (0, 1, 25, 26, 50, 51)}  # the first 2 of each page
    assert fleet.total == FLEET - 6 and fleet.ids == good.ids - bad


def _new_mode_passes_through(fleet: Fleet, good: Fleet, simulated: SimulatedFleet) -> None:
    assert fleet.modes == {"yolo-2027": FLEET} and fleet.ids == good.ids


def _future_heartbeats_have_age_zero(fleet: Fleet, good: Fleet, simulated: SimulatedFleet) -> None:
    assert fleet.states == good.states  # a heartbeat from the future is fresh, not stale
    assert fleet.heartbeat_age_sum == 0  # and its age is clamped at 0, never negative
    assert all(fleet.heartbeats[i] > good.heartbeats[i] + 3500 for i in good.heartbeats)


HTTP_ERROR = r"poll failed \({kind}\): {what} \(after 2 attempt\(s\)\); serving the last good fleet"
CASES = [
    Case(
        "5xx for several polls",
        {"status": 503},
        result="http_error",
        requests=(2, 2, 2),
        codes={"503": 6},
        log=HTTP_ERROR.format(kind="http_error", what="HTTP 503 from /v1/environments"),
    ),
    Case(
        "429 storm with a Retry-After inside the deadline",
        {"status": 429, "retry_after_ms": "150"},
        result="rate_limited",
        requests=(2, 2, 2),
        codes={"429": 6},
        log=HTTP_ERROR.format(kind="rate_limited", what="HTTP 429 from /v1/environments"),
        settle=0.15,
    ),
    Case(
        "429 storm with a Retry-After past the deadline",
        {"status": 429, "retry_after_ms": "900"},
        result="rate_limited",
        requests=(1, 0, 0),  # then it waits, calling nobody, until the Retry-After has passed
        codes={"429": 1},
        log=r"poll failed \(rate_limited\): HTTP 429 from /v1/environments \(the next retry "
        r"would pass the poll's deadline\); serving the last good fleet",
        config={"poll_timeout": 0.5},
        settle=0.9,
        max_duration=0.2,  # it never sleeps: waiting would pass the deadline
    ),
    Case(
        "read timeout",
        {"latency_ms": 500},
        result="timeout",
        requests=(2, 2, 2),
        codes={"timeout": 6},
        log=HTTP_ERROR.format(kind="timeout", what="ReadTimeout calling /v1/environments"),
    ),
    Case(
        "truncated body",
        {"truncate": True},
        result="connection_error",
        requests=(2, 2, 2),
        codes={"connection_error": 6},
        log=HTTP_ERROR.format(
            kind="connection_error", what="RemoteProtocolError calling /v1/environments"
        ),
    ),
    Case(
        "non-JSON body",
        {"non_json": True},
        result="invalid_response",
        requests=(1, 1, 1),  # not retried: the same proxy would answer the same way
        codes={"200": 3},
        log=r"poll failed \(invalid_response\): page 1: body is not JSON: JSONDecodeError; "
        r"serving the last good fleet",
    ),
    Case(
        "401",
        {"status": 401},
        result="auth_error",
        requests=(1, 1, 1),  # no retry storm
        codes={"401": 3},
        log=r"poll failed \(auth_error\): HTTP 401 from /v1/environments: the API key is invalid "
        r"or not allowed to list environments; serving the last good fleet",
    ),
    Case(
        "403",
        {"status": 403},
        result="auth_error",
        requests=(1, 1, 1),
        codes={"403": 3},
        log=r"poll failed \(auth_error\): HTTP 403 from .*",
    ),
    Case(
        "repeated cursor",
        {"repeat_cursor": True},
        result="pagination_error",
        requests=(3, 3, 3),
        codes={"200": 9},
        log=r"poll failed \(pagination_error\): page 3 repeats cursor 'env-[0-9a-f]{16}'; "
        r"serving the last good fleet",
    ),
    Case(
        "hasNextPage true with empty pages",
        {"empty_pages": True},
        result="pagination_error",
        requests=(2, 2, 2),
        codes={"200": 6},
        log=r"poll failed \(pagination_error\): page 2 is empty but hasNextPage is true; "
        r"serving the last good fleet",
    ),
    Case(
        "rows with wrong types",
        {"invalid_rows": 2},
        result="success",
        requests=(3, 3, 3),
        codes={"200": 9},
        log=r"skipped 6 invalid upstream row\(s\); first: row 0: lastSeenAt: Input should be a "
        r"valid number \(1 error\(s\)\)",
        fleet=_six_rows_skipped,
    ),
    Case(
        "the same row on two pages",
        {"duplicate_rows": True},
        result="success",
        requests=(3, 3, 3),
        codes={"200": 9},
        log="",  # nothing worth a warning: counted once, by id
        fleet=_all_there,
    ),
    Case(
        "new fields and a new permission mode",
        {"extra_fields": True},
        result="success",
        requests=(3, 3, 3),
        codes={"200": 9},
        log="",
        fleet=_new_mode_passes_through,
    ),
    Case(
        "heartbeats from the future (clock skew)",
        {"clock_skew_seconds": 3600},
        result="success",
        requests=(3, 3, 3),
        codes={"200": 9},
        log="",
        fleet=_future_heartbeats_have_age_zero,
    ),
]


class SkippingClock:
    """The monotonic clock, which a test may move ahead: time that passes without waiting."""

    def __init__(self) -> None:
        self.skipped = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skipped

    def skip(self, seconds: float) -> None:
        self.skipped += seconds


@dataclass
class Rig:
    """A Poller with the real client against an upstream, and what it publishes."""

    poller: Poller
    state: Store
    metrics: ExporterMetrics
    client: EnvironmentsClient
    clock: SkippingClock


@contextmanager
def _rig(base_url: str, **overrides: Any) -> Iterator[Rig]:
    config = make_config(base_url=base_url, **{**BASE, **overrides})
    metrics = ExporterMetrics(config.poll_interval, process=False)
    state = Store()
    clock = SkippingClock()
    client = EnvironmentsClient(
        config.client_settings(), observe=metrics.observe_request, monotonic=clock
    )
    try:
        poller = Poller(config.poll_settings(), client, state, metrics, monotonic=clock)
        yield Rig(poller, state, metrics, client, clock)
    finally:
        client.close()


def _set_faults(simulator: SimulatorHTTPServer, faults: dict[str, Any]) -> None:
    response = httpx.post(f"{simulator.url}/_simulator/faults", json=faults)
    assert response.status_code == 200, response.text


def _clear_faults(simulator: SimulatorHTTPServer) -> None:
    assert httpx.delete(f"{simulator.url}/_simulator/faults").status_code == 200


def _streak_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_fault(
    case: Case, simulator: SimulatorHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter")
    with _rig(simulator.url, **case.config) as rig:
        # A good poll first: this fleet must survive the fault.
        assert rig.poller.poll_once()
        good_fleet = rig.state.fleet
        good = Fleet.of(good_fleet)
        _all_there(good, good, simulator.fleet)
        good_at = _value(rig.metrics, "letta_exporter_last_success_timestamp_seconds")
        assert good_at > 0 and _value(rig.metrics, "letta_exporter_up") == 1
        caplog.clear()

        _set_faults(simulator, case.fault)
        codes_before = _codes(rig.metrics)
        requests = []
        last_at = good_at
        for _ in range(FAULT_POLLS):
            before = simulator.fleet.requests
            ok = rig.poller.poll_once()
            requests.append(simulator.fleet.requests - before)
            assert _value(rig.metrics, "letta_exporter_poll_duration_seconds") < case.max_duration
            success_at = _value(rig.metrics, "letta_exporter_last_success_timestamp_seconds")
            if case.result == "success":
                assert ok and _value(rig.metrics, "letta_exporter_up") == 1
                assert success_at > last_at and rig.state.fleet is not good_fleet
                assert case.fleet is not None
                case.fleet(Fleet.of(rig.state.fleet), good, simulator.fleet)
            else:
                assert not ok and _value(rig.metrics, "letta_exporter_up") == 0
                assert success_at == good_at
                assert rig.state.fleet is good_fleet  # the last good fleet, byte for byte
            last_at = success_at
        assert tuple(requests) == case.requests
        assert _codes(rig.metrics) - codes_before == Counter(case.codes)
        assert _value(rig.metrics, "letta_exporter_polls_total", result=case.result) == (
            FAULT_POLLS + (1 if case.result == "success" else 0)
        )
        lines = _streak_lines(caplog)
        if case.log:
            assert len(lines) == 1, lines  # once per streak, not once per poll
            assert re.fullmatch(case.log, lines[0]), lines[0]
        else:
            assert lines == []
        assert API_KEY not in caplog.text
        caplog.clear()

        # The upstream recovers: the very next poll, once any Retry-After has passed, succeeds.
        _clear_faults(simulator)
        rig.clock.skip(case.settle)
        assert rig.poller.poll_once()
        assert _value(rig.metrics, "letta_exporter_up") == 1
        assert _value(rig.metrics, "letta_exporter_last_success_timestamp_seconds") > last_at
        recovered = Fleet.of(rig.state.fleet)
        _all_there(recovered, good, simulator.fleet)
        assert recovered.states == good.states and recovered.modes == good.modes
        messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
        if case.result != "success":
            assert messages == [f"poll recovered after {case.result}"]
        elif case.name == "rows with wrong types":
            assert messages == ["skipped 0 invalid upstream row(s)"]
        else:
            assert messages == []


def test_the_same_row_on_two_pages_is_logged_at_debug_only(
    simulator: SimulatorHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter")
    _set_faults(simulator, {"duplicate_rows": True})
    with _rig(simulator.url) as rig:
        assert rig.poller.poll_once()
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert "ignored 2 row(s) seen on an earlier page" in debug


def test_a_poll_that_is_still_running_makes_the_next_one_skip_not_overlap(
    simulator: SimulatorHTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    _set_faults(simulator, {"latency_ms": 300})
    with _rig(simulator.url, request_timeout=2.0, poll_timeout=5.0) as rig:
        results: list[bool] = []
        first = threading.Thread(target=lambda: results.append(rig.poller.poll_once()))
        first.start()
        wait_until(lambda: simulator.fleet.requests >= 1, 5, "the first poll's first request", 0.01)
        with caplog.at_level(logging.WARNING, logger="exporter"):
            assert rig.poller.poll_once() is False
            # Skipped at once, not queued behind it: the first poll has not finished yet.
            assert first.is_alive() and results == []
            assert rig.poller.poll_once() is False  # the next tick: counted, not logged again
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 1, messages
        assert re.fullmatch(
            r"a poll is still running after \d+\.\ds \(interval 60s\); polls are skipped "
            r"until it ends",
            messages[0],
        )
        assert _value(rig.metrics, "letta_exporter_polls_skipped_total") == 2
        first.join(10)
        assert results == [True]
        assert simulator.fleet.requests == 3  # the first poll's three pages, nothing else
        assert _value(rig.metrics, "letta_exporter_polls_total", result="success") == 1
        assert sum(_codes(rig.metrics).values()) == 3


# --- a body that trickles in: the poll still ends by its deadline ----------------------------

TRICKLE_EVERY = 0.1  # a byte every 100 ms: a 0.5 s read timeout never fires
TRICKLE_DEADLINE = 1.0


def test_a_trickling_answer_cannot_hold_a_poll_past_its_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="exporter")
    server = HostileServer()
    server.trickle_every = TRICKLE_EVERY
    try:
        with _rig(server.url, poll_timeout=TRICKLE_DEADLINE, request_timeout=0.5) as rig:
            assert rig.poller.poll_once()
            good_fleet = rig.state.fleet
            server.mode = "trickle"  # a good page of ~42 KB, sent a byte at a time
            results: list[bool] = []
            poll = threading.Thread(target=lambda: results.append(rig.poller.poll_once()))
            poll.start()
            poll.join(30)  # far past the deadline: the trickle would last over an hour
            assert results == [False]
            assert rig.state.fleet is good_fleet
            assert _value(rig.metrics, "letta_exporter_polls_total", result="timeout") == 1
            assert _value(rig.metrics, "letta_exporter_up") == 0
            # It ran to its deadline (the poll's own record), and ended there: the join above
            # returned while the page had hours of bytes left to trickle.
            duration = _value(rig.metrics, "letta_exporter_poll_duration_seconds")
            assert duration >= TRICKLE_DEADLINE
            # The request is cut at the next byte after the deadline: the server sent a few
            # bytes, never the page.
            wait_until(server.trickle_cut.is_set, 10, "the trickle cut off")
            assert 0 < server.trickled < server.trickle_length
            wait_until(lambda: _codes(rig.metrics)["timeout"] == 1, 10, "the request counted")
        assert [r.getMessage() for r in caplog.records] == [
            "poll failed (timeout): the poll's deadline passed while page 1 was arriving; "
            "serving the last good fleet"
        ]
    finally:
        server.close()


def test_the_real_cli_against_a_trickle_times_polls_out_without_scheduler_warnings() -> None:
    server = HostileServer()
    server.mode = "trickle"
    try:
        with exporter_process(
            f"--letta.base-url={server.url}",
            "--letta.poll-interval=1s",
            "--letta.request-timeout=5s",
            ready=False,
        ) as running:

            def timeouts() -> float:
                response = httpx.get(f"{running.url}/metrics", timeout=5)
                return sum(
                    s.value
                    for s in _samples(response.text)
                    if s.name == "letta_exporter_polls_total" and s.labels["result"] == "timeout"
                )

            wait_until(lambda: timeouts() >= 4, 30, "four polls timed out")
            log = running.log()
        lines = [line for line in log.splitlines() if "level=" in line]
        assert not [line for line in lines if "apscheduler" in line or "skipped" in line], lines
        failed = [line for line in lines if "poll failed" in line]
        assert len(failed) == 1, lines  # once for the streak
        assert (
            "poll failed (timeout): the poll's deadline passed while page 1 was arriving"
            in (failed[0])
        )
    finally:
        server.close()


# --- connection refused and connect timeouts: the upstream host goes away --------------------


class ClosableSimulator(SimulatorHTTPServer):
    """A simulator whose close() also drops its open connections, like a process that dies."""

    def __init__(self, port: int) -> None:
        self.connections: list[socket.socket] = []
        super().__init__(("127.0.0.1", port), SimulatedFleet(size=FLEET, seed=3, churn=False), None)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}).start()

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        self.connections.append(connection)
        return connection, address

    def close(self) -> None:
        super().close()
        for connection in self.connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


@contextmanager
def _black_hole(port: int) -> Iterator[None]:
    """A port that accepts no connection and refuses none: connects hang until they time out."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = []
    try:
        while True:  # fill the accept queue; then the kernel drops further SYNs
            filler = socket.socket()
            filler.settimeout(0.2)
            fillers.append(filler)
            try:
                filler.connect(("127.0.0.1", port))
            except TimeoutError:
                break
            assert len(fillers) < 16, "the accept queue never filled"
        yield
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_connection_refused_then_connect_timeouts_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="exporter")
    port = free_port()
    upstream = ClosableSimulator(port)
    with _rig(f"http://127.0.0.1:{port}") as rig:
        assert rig.poller.poll_once()
        good_fleet = rig.state.fleet
        good_at = _value(rig.metrics, "letta_exporter_last_success_timestamp_seconds")
        upstream.close()

        for _ in range(2):  # the process is gone: connections are refused
            assert not rig.poller.poll_once()
        assert _codes(rig.metrics)["connection_error"] == 4
        assert _value(rig.metrics, "letta_exporter_polls_total", result="connection_error") == 2

        with _black_hole(port):  # the host is there but does not answer: connects time out
            for _ in range(2):
                assert not rig.poller.poll_once()
                assert _value(rig.metrics, "letta_exporter_poll_duration_seconds") < 1.5
        assert _codes(rig.metrics)["timeout"] == 4
        assert _value(rig.metrics, "letta_exporter_polls_total", result="timeout") == 2
        assert rig.state.fleet is good_fleet
        assert _value(rig.metrics, "letta_exporter_up") == 0
        assert _value(rig.metrics, "letta_exporter_last_success_timestamp_seconds") == good_at

        restarted = ClosableSimulator(port)
        try:
            assert rig.poller.poll_once()
        finally:
            restarted.close()
        assert Fleet.of(rig.state.fleet).total == FLEET
        assert _value(rig.metrics, "letta_exporter_up") == 1
    assert [r.getMessage() for r in caplog.records] == [
        "poll failed (connection_error): ConnectError calling /v1/environments "
        "(after 2 attempt(s)); serving the last good fleet",
        "poll failed (timeout): ConnectTimeout calling /v1/environments "
        "(after 2 attempt(s)); serving the last good fleet",
        "poll recovered after timeout",
    ]


# --- the whole process -------------------------------------------------------------------------


def test_the_real_cli_keeps_serving_through_a_fault_and_recovers_within_one_interval(
    simulator: SimulatorHTTPServer,
) -> None:
    with exporter_process(
        f"--letta.base-url={simulator.url}",
        "--letta.poll-interval=1s",
        "--letta.max-retries=0",
    ) as running:

        def scrape() -> dict[str, float]:
            response = httpx.get(f"{running.url}/metrics", timeout=2)
            assert response.status_code == 200
            samples = _samples(response.text)
            return {
                "up": next(s.value for s in samples if s.name == "letta_exporter_up"),
                "environments": sum(s.value for s in samples if s.name == "letta_environments"),
            }

        wait_until(lambda: scrape()["up"] == 1, 10, "a successful poll")
        _set_faults(simulator, {"status": 500})
        wait_until(lambda: scrape()["up"] == 0, 10, "the failing poll")
        assert scrape()["environments"] == FLEET  # still serving the last good fleet
        assert httpx.get(f"{running.url}/-/healthy").status_code == 200
        assert httpx.get(f"{running.url}/-/ready").status_code == 200
        failed = served_value(running.url, "letta_exporter_polls_total", result="http_error")
        _clear_faults(simulator)
        wait_until(lambda: scrape()["up"] == 1, 10, "the recovery", interval=0.05)
        # Within one interval: at most the poll already running when the fault cleared failed.
        assert served_value(running.url, "letta_exporter_polls_total", result="http_error") <= (
            failed + 1
        )
        assert "poll recovered after http_error" in running.log()


# --- hostile answers: the exporter's memory stays bounded whatever the upstream sends ---------

# No case may push the exporter's peak RSS (`VmHWM`) past this. Measured with the caps: 53 to
# 144 MiB. Before the caps, the same answers took it to 1,239 MiB (gzip bomb), 2,097 MiB
# (endless answer), 498 MiB (value flood), 285 MiB (string flood), 836 MiB (row flood),
# 4,077 MiB (registry bomb); the endless answer and the string flood even counted as successful
# polls and replaced the last good fleet with an empty one.
PEAK_BOUND_MIB = 200


@dataclass(frozen=True)
class Hostile:
    """One hostile answer: the server's mode, the flags, what the exporter must count and log."""

    name: str
    mode: str
    counter: tuple[str, str]  # (metric, result) that counts the failure
    log: str  # the ERROR or WARNING line naming it
    args: tuple[str, ...] = ()
    registry: bool = False


HOSTILE = [
    Hostile(
        "gzip bomb: 1 MiB that inflates to 1 GiB of valid JSON",
        "gzip_bomb",
        ("letta_exporter_polls_total", "invalid_response"),
        r"poll failed \(invalid_response\): the answer from /v1/environments inflates to more "
        r"than 8MiB \(--letta.max-response-size=8MiB\); serving the last good fleet",
    ),
    Hostile(
        "endless plain answer: 1 GiB with no Content-Length",
        "endless",
        ("letta_exporter_polls_total", "invalid_response"),
        r"poll failed \(invalid_response\): the answer from /v1/environments is more than "
        r"8MiB \(--letta.max-response-size=8MiB\); serving the last good fleet",
    ),
    Hostile(
        "value flood: 2.8 million empty rows in 8 MiB",
        "value_flood",
        ("letta_exporter_polls_total", "invalid_response"),
        r"poll failed \(invalid_response\): the answer from /v1/environments holds \d+ JSON "
        r"values; real rows filling --letta.max-response-size=8MiB hold at most 1048576; "
        r"serving the last good fleet",
    ),
    Hostile(
        "string flood: 930,000 short strings, the costliest page the value count lets by",
        "string_flood",
        ("letta_exporter_polls_total", "pagination_error"),
        r"poll failed \(pagination_error\): more than --letta.max-rows=200000 rows \(\d+ "
        r"with page 1\); serving the last good fleet",
    ),
    Hostile(
        "row flood: pages of 4,000 rows whatever the limit, without end",
        "row_flood",
        ("letta_exporter_polls_total", "pagination_error"),
        r"poll failed \(pagination_error\): more than --letta.max-rows=20000 rows \(24000 with "
        r"page 6\); serving the last good fleet",
        args=("--letta.max-rows=20000",),
    ),
    Hostile(
        "registry bomb: an npm document that inflates to 1 GiB",
        "gzip_bomb",
        ("letta_exporter_release_lookups_total", "invalid_response"),
        r"release lookup in npm failed \(invalid_response\): the document inflates to more "
        r"than 16MiB "
        rf"\(--version.max-response-size=16MiB\); keeping {re.escape(LATEST_RELEASE)}",
        args=("--version.refresh-interval=1s",),
        registry=True,
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[case.name for case in HOSTILE])
def test_a_hostile_answer_is_cut_off_and_memory_stays_bounded(case: Hostile) -> None:
    prepare(case.mode)
    server = HostileServer()
    try:
        registry = (
            (f"--version.registry-url={server.url}/registry", "--no-version.pypi")
            if case.registry
            else ()
        )
        with exporter_process(
            f"--letta.base-url={server.url}",
            # Each poll's deadline (the interval) is not what these cases are about: room for a
            # machine with its other core busy to read and refuse 8 MiB.
            "--letta.poll-interval=2s",
            "--letta.max-retries=0",
            *registry,
            *case.args,
        ) as running:

            def scrape() -> list[Any]:
                response = httpx.get(f"{running.url}/metrics", timeout=5)
                assert response.status_code == 200
                return _samples(response.text)

            def value(samples: list[Any], name: str, **labels: str) -> float:
                return sum(
                    s.value
                    for s in samples
                    if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
                )

            def latest(samples: list[Any]) -> set[tuple[str, str]]:
                return {
                    (s.labels["version"], s.labels["source"])
                    for s in samples
                    if s.name == "letta_environments_latest_version_info"
                }

            good = wait_until(
                lambda: (s := scrape()) and value(s, "letta_environments") == FLEET and s,
                20,
                "a good poll",
            )
            if case.registry:
                assert latest(good) == {(LATEST_RELEASE, "registry")}
                server.registry_mode = case.mode
            else:
                server.mode = case.mode
            metric, result = case.counter
            wait_until(
                lambda: value(scrape(), metric, result=result) >= 1, 60, f"{metric}{{{result}}}"
            )
            samples = scrape()
            assert value(samples, "letta_environments") == FLEET  # the last good fleet, kept
            assert value(samples, "letta_exporter_up") == (1 if case.registry else 0)
            if case.registry:
                assert latest(samples) == {(LATEST_RELEASE, "registry")}  # the last good answer
                wait_until(  # and polls go on while the lookups fail
                    lambda: value(scrape(), "letta_exporter_polls_total", result="success") >= 2,
                    20,
                    "a second successful poll",
                )
            lines = [
                line
                for line in running.log().splitlines()
                if "level=error" in line or "level=warn" in line
            ]
            assert any(re.search(case.log, line) for line in lines), lines
            peak = memory_of(running.process.pid)["VmHWM"] / 2**20
            assert peak < PEAK_BOUND_MIB, f"peak RSS {peak:.0f} MiB"
    finally:
        server.close()
