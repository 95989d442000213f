"""Scrape load: clients on loopback that time whole responses, as Prometheus would see them.

Each client thread keeps one connection (reopened when the server closes it), sends what a
Prometheus scrape sends, and times from the request to the last byte of the body. The body is
read, not decompressed or parsed: that is the scraper's cost, not the server's.
"""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
TIMEOUT = 600.0


@dataclass
class Scrapes:
    """Latencies (seconds) of one cell, and the body size last seen."""

    latencies: list[float] = field(default_factory=list)
    body_bytes: int = 0
    errors: int = 0


def _headers(gzipped: bool) -> dict[str, str]:
    headers = {"Accept": ACCEPT, "User-Agent": "bench/1"}
    if gzipped:
        headers["Accept-Encoding"] = "gzip"
    return headers


class _Buffer(threading.local):
    """A receive buffer per client thread, reused: the client should cost less than the server."""

    def __init__(self) -> None:
        self.data = bytearray(1 << 20)


_BUFFER = _Buffer()


def scrape_once(
    connection: http.client.HTTPConnection, headers: dict[str, str]
) -> tuple[float, int]:
    """One scrape: seconds from the request to the last byte of the body, and its length."""
    started = time.perf_counter()
    connection.request("GET", "/metrics", headers=headers)
    response = connection.getresponse()
    length = response.getheader("Content-Length")
    if length is None:
        size = len(response.read())
    else:
        size = int(length)
        if len(_BUFFER.data) < size:
            _BUFFER.data = bytearray(size)
        view = memoryview(_BUFFER.data)
        got = 0
        while got < size:
            read = response.readinto(view[got:size])
            if not read:
                raise http.client.IncompleteRead(bytes(view[:got]), size - got)
            got += read
        view.release()
        response.read()  # the end of the response, so that the connection can be reused
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}")
    if response.will_close:
        connection.close()
    return elapsed, size


def scrape(
    port: int,
    *,
    gzipped: bool,
    clients: int,
    per_client: int,
    budget: float,
    warmup: bool = True,
) -> Scrapes:
    """Up to ``per_client`` scrapes from each of ``clients`` concurrent clients.

    A client stops early once ``budget`` seconds have passed and it has made one scrape; the
    first scrape of each client is timed too, after one untimed warm-up scrape of the cell.
    """
    headers = _headers(gzipped)
    result = Scrapes()
    lock = threading.Lock()
    if warmup:
        warm = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        scrape_once(warm, headers)
        warm.close()
    barrier = threading.Barrier(clients)
    deadline = [0.0]

    def run() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        connection.connect()
        if barrier.wait() == 0:
            deadline[0] = time.perf_counter() + budget
        barrier.wait()
        for done in range(per_client):
            if done and time.perf_counter() > deadline[0]:
                break
            try:
                elapsed, size = scrape_once(connection, headers)
            except (OSError, RuntimeError, http.client.HTTPException):
                with lock:
                    result.errors += 1
                connection.close()
                continue
            with lock:
                result.latencies.append(elapsed)
                result.body_bytes = size
        connection.close()

    threads = [threading.Thread(target=run, name=f"client-{n}") for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return result


def scrape_during(port: int, *, gzipped: bool, busy: Callable[[], object]) -> Scrapes:
    """Scrape back to back from one client for as long as ``busy()`` runs in another thread."""
    headers = _headers(gzipped)
    result = Scrapes()
    finished = threading.Event()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.connect()

    def work() -> None:
        try:
            busy()
        finally:
            finished.set()

    worker = threading.Thread(target=work, name="busy")
    worker.start()
    while not finished.is_set():
        elapsed, size = scrape_once(connection, headers)
        result.latencies.append(elapsed)
        result.body_bytes = size
    worker.join()
    connection.close()
    return result
