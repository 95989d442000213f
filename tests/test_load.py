"""Load: many scrapers at once while polls run, and clients that stall, on loopback.

The numbers asserted here are generous bounds that catch a server that serialises or stalls;
the real figures are measured by the benchmark (bench/).
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from exporter.client import EnvironmentsClient
from exporter.poller import Poller
from exporter.selfmetrics import ExporterMetrics
from exporter.server import ExporterHTTPServer, serve_in_background
from exporter.store import Store
from letta_simulator import start_simulator
from tests.conftest import API_KEY, ROOT, make_config, wait_until

SCRAPERS = 32
DURATION = 3.0
CONNECTION_TIMEOUT = 1.0
FLEET = 300


@dataclass
class Served:
    url: str
    port: int
    state: Store
    polls: list[float] = field(default_factory=list)  # completion times of successful polls


@contextmanager
def _exporter_under_polls() -> Iterator[Served]:
    """A real server, and a poller that polls the simulator back to back in the background."""
    simulator = start_simulator(fleet_size=FLEET, seed=5, api_key=API_KEY, churn=True)
    config = make_config(base_url=simulator.url, page_size=100)
    metrics = ExporterMetrics(config.poll_interval)
    state = Store()
    client = EnvironmentsClient(config.client_settings(), observe=metrics.observe_request)
    poller = Poller(config.poll_settings(), client, state, metrics)
    server = ExporterHTTPServer(
        ("127.0.0.1", 0),
        store=state,
        metrics=metrics,
        telemetry_path="/metrics",
        max_data_age=600,
        connection_timeout=CONNECTION_TIMEOUT,
    )
    serve_in_background(server)
    served = Served(f"http://127.0.0.1:{server.server_port}", server.server_port, state)
    stop = threading.Event()

    def poll_forever() -> None:
        while not stop.is_set():
            if poller.poll_once():
                served.polls.append(time.monotonic())
            stop.wait(0.2)

    polling = threading.Thread(target=poll_forever, name="poller")
    polling.start()
    try:
        wait_until(lambda: state.ready, 10, "the first poll")
        yield served
    finally:
        stop.set()
        polling.join(10)
        server.shutdown()
        server.server_close()
        client.close()
        simulator.close()


def _hang_up_time(sock: socket.socket, trickle: bytes, started: float) -> tuple[float, bytes]:
    """Send ``trickle`` a byte every 0.1 s until the server hangs up; (seconds, bytes received)."""
    received = b""
    for byte in trickle or b"\0" * 1000:
        if trickle:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                break
        readable, _, _ = select.select([sock], [], [], 0.1)
        if readable:
            try:
                chunk = sock.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            received += chunk
    return time.monotonic() - started, received


def scrape_for(url: str, scrapers: int, duration: float) -> dict[str, Any]:
    """Run ``scrapers`` threads scraping ``url`` for ``duration`` seconds; latencies, failures.

    Run in a process of its own (see `_scrape_in_another_process`), as Prometheus would be:
    scrapers in the server's process would compete with it for the GIL.
    """
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + duration

    def scrape(index: int) -> None:
        headers = {"Accept-Encoding": "gzip" if index % 2 else "identity"}
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                started = time.monotonic()
                try:
                    response = client.get(url, headers=headers)
                except httpx.HTTPError as exc:
                    problem: str | None = repr(exc)
                else:
                    content = response.content
                    problem = None
                    if response.status_code != 200:
                        problem = f"HTTP {response.status_code}"
                    elif b"letta_environments{" not in content or not content.endswith(b"\n"):
                        problem = "an incomplete exposition"
                with lock:
                    latencies.append(time.monotonic() - started)
                    if problem is not None:
                        failures.append(problem)

    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(scrapers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "failures": failures}


def _scrape_in_another_process(url: str) -> subprocess.Popen[str]:
    code = (
        "import json, sys; from tests.test_load import scrape_for; "
        "print(json.dumps(scrape_for(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, url, str(SCRAPERS), str(DURATION)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_many_scrapers_and_stalled_clients_while_polls_run() -> None:
    with _exporter_under_polls() as served:
        stalled: dict[str, tuple[float, bytes]] = {}

        def stall(name: str, trickle: bytes) -> None:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", served.port)) as sock:
                stalled[name] = _hang_up_time(sock, trickle, started)

        request = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n"
        stallers = [
            threading.Thread(target=stall, args=("byte at a time", request)),
            threading.Thread(target=stall, args=("connects and says nothing", b"")),
        ]
        idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(40)]
        polls_before = len(served.polls)
        scrapers = _scrape_in_another_process(f"{served.url}/metrics")
        for thread in stallers:
            thread.start()
        output, _ = scrapers.communicate(timeout=DURATION + 30)
        for thread in stallers:
            thread.join(10)
        for sock in idle:
            sock.close()
        polls = len(served.polls) - polls_before
        names = {
            f.name for f in text_string_to_metric_families(httpx.get(served.url + "/metrics").text)
        }

    assert scrapers.returncode == 0
    result = json.loads(output)
    latencies = sorted(result["latencies"])
    assert result["failures"] == []
    assert len(latencies) > SCRAPERS * 5, len(latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 1.0, f"p99 {p99:.3f}s over {len(latencies)} scrapes"
    assert polls >= 3  # fleets were swapped under the scrapers
    assert {"letta_environments", "letta_environment_info", "letta_exporter_up"} <= names

    for name in ("byte at a time", "connects and says nothing"):
        seconds, received = stalled[name]
        assert received == b"", name  # hung up on, never answered
        assert CONNECTION_TIMEOUT * 0.9 < seconds < CONNECTION_TIMEOUT + 1.0, (name, seconds)


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout() -> None:
    server = ExporterHTTPServer(
        ("127.0.0.1", 0),
        store=Store(),
        metrics=ExporterMetrics(60, process=False),
        telemetry_path="/metrics",
        max_data_age=600,
        connection_timeout=CONNECTION_TIMEOUT,
    )
    serve_in_background(server)
    try:
        with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
            sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answered = time.monotonic()
            seconds, received = _hang_up_time(sock, b"", answered)
    finally:
        server.shutdown()
        server.server_close()
    assert received.startswith(b"HTTP/1.1 200 OK\r\n") and received.endswith(b"\r\n\r\nOK\n")
    assert CONNECTION_TIMEOUT * 0.9 < seconds < CONNECTION_TIMEOUT + 1.0
