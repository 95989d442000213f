"""HTTP server: /metrics, /, /-/healthy, /-/ready. It never calls upstream or parses JSON.

A scrape concatenates the fleet bytes rendered at the last poll with the exporter's own small
registry; with gzip, it finishes the fleet's pre-compressed, still open gzip member. With a web
config, every path is behind TLS and basic auth (as in exporter-toolkit) and carries its headers.
Each connection has its own thread and a deadline: a client gets ``connection_timeout`` seconds
to finish its TLS handshake and to send each request, however slowly it trickles bytes.
"""

from __future__ import annotations

import html
import io
import logging
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from exporter import __version__, clock
from exporter.exposition import (
    CONTENT_TYPE,
    OPENMETRICS_CONTENT_TYPE,
    accepts_gzip,
    wants_openmetrics,
)
from exporter.poller import FleetState, gzip_member
from exporter.selfmetrics import ExporterMetrics
from exporter.webconfig import BasicAuth, TLSContextSource, WebConfig

log = logging.getLogger(__name__)

CONNECTION_TIMEOUT = 10.0  # seconds a client may take to send its request: slow clients lose
UNAUTHORIZED = {"WWW-Authenticate": 'Basic realm="letta-environments-exporter", charset="UTF-8"'}


class ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(
        self,
        address: tuple[str, int],
        *,
        state: FleetState,
        metrics: ExporterMetrics,
        telemetry_path: str,
        max_data_age: float,
        monotonic: Callable[[], float] = clock.monotonic,
        web: WebConfig | None = None,
        connection_timeout: float = CONNECTION_TIMEOUT,
    ) -> None:
        self.state = state
        self.metrics = metrics
        self.telemetry_path = telemetry_path
        self.max_data_age = max_data_age
        self.monotonic = monotonic
        self.web = web or WebConfig()
        self.connection_timeout = connection_timeout
        self.auth = BasicAuth(self.web.users) if self.web.users else None
        self.tls = TLSContextSource(self.web.tls) if self.web.tls else None
        if self.auth is not None and self.tls is None:
            log.warning("basic auth without TLS: passwords cross the network in clear text")
        super().__init__(address, MetricsHandler)

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Serve one connection, in its own thread: the TLS handshake happens here, not in the
        accept loop, so a client that never finishes it holds up nobody but itself."""
        if self.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.connection_timeout)  # bounds the whole handshake
        try:
            connection = self.tls.context().wrap_socket(request, server_side=True)
        except OSError as exc:  # ssl.SSLError and timeouts included
            log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that resets or stalls is routine: log it quietly, no traceback on stderr."""
        log.debug("connection from %s ended: %r", client_address[0], sys.exc_info()[1])

    def body(self, gzipped: bool, openmetrics: bool = False) -> tuple[bytes, ...]:
        """The exposition for one scrape, as parts sent one after the other (the fleet's bytes
        are never copied); fleet bytes are withdrawn once they are too old. The fleet's bytes
        are valid OpenMetrics as they are; only the exporter's own families differ."""
        own = (
            openmetrics_latest(self.metrics.registry)  # type: ignore[no-untyped-call]
            if openmetrics
            else self.metrics.render()
        )
        fleet = self.state.fresh_fleet(self.max_data_age, self.monotonic())
        if gzipped:
            return (gzip_member(own),) if fleet is None else fleet.gzipped.finish_parts(own)
        return (own,) if fleet is None else (fleet.plain, own)


class MetricsHandler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else small responses stall ~40 ms on delayed ACKs
    timeout = CONNECTION_TIMEOUT
    server_version = f"letta-environments-exporter/{__version__}"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self._timeout = self.server.connection_timeout
        self.connection.settimeout(self._timeout)
        self.rfile.close()
        self._reader = _DeadlineReader(self.connection, self._timeout)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.start()  # the next request, headers included, must arrive in time
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        self.connection.settimeout(self._timeout)  # the response gets a full timeout of its own
        return parsed

    def end_headers(self) -> None:
        for name, value in self.server.web.headers:
            self.send_header(name, value)
        super().end_headers()

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        auth = self.server.auth
        if auth is not None and not auth.check(self.headers.get("Authorization")):
            self._send(
                401, "text/plain; charset=utf-8", b"Unauthorized\n", head=head, headers=UNAUTHORIZED
            )
            return
        path = self.path.split("?", 1)[0]
        if path == self.server.telemetry_path:
            gzipped = accepts_gzip(self.headers.get("Accept-Encoding", ""))
            openmetrics = wants_openmetrics(self.headers.get("Accept", ""))
            body = self.server.body(gzipped, openmetrics)
            extra = {"Vary": "Accept, Accept-Encoding"}
            if gzipped:
                extra["Content-Encoding"] = "gzip"
            kind = OPENMETRICS_CONTENT_TYPE if openmetrics else CONTENT_TYPE
            self._send(200, kind, body, head=head, headers=extra)
        elif path == "/":
            self._send(
                200, "text/html; charset=utf-8", _landing(self.server.telemetry_path), head=head
            )
        elif path == "/-/healthy":
            self._send(200, "text/plain; charset=utf-8", b"OK\n", head=head)
        elif path == "/-/ready":
            if self.server.state.ready:
                self._send(200, "text/plain; charset=utf-8", b"OK\n", head=head)
            else:
                self._send(
                    503,
                    "text/plain; charset=utf-8",
                    b"Not ready: no successful poll yet\n",
                    head=head,
                )
        else:
            self._send(404, "text/plain; charset=utf-8", b"Not found\n", head=head)

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes | tuple[bytes, ...],
        *,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        parts = (body,) if isinstance(body, bytes) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(part) for part in parts)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self._write(parts)

    def _write(self, parts: tuple[bytes, ...]) -> None:
        """Send the body. Over plain TCP, through a blocking socket with a kernel send timeout:
        a large body then leaves in one system call, not one per socket buffer, each of which
        would wait for the GIL while a poll runs (measured in bench/)."""
        connection = self.connection
        if isinstance(connection, ssl.SSLSocket):
            for part in parts:
                self.wfile.write(part)
            return
        seconds = int(self._timeout)
        limit = struct.pack("ll", seconds, int((self._timeout - seconds) * 1_000_000))
        connection.settimeout(None)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
        try:
            for part in parts:
                connection.sendall(part)
        finally:
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 0, 0))
            connection.settimeout(self._timeout)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline per request, so trickling bytes cannot stretch it."""

    def __init__(self, connection: socket.socket, timeout: float) -> None:
        self._connection = connection
        self._timeout = timeout
        self._deadline = clock.monotonic() + timeout

    def start(self) -> None:
        self._deadline = clock.monotonic() + self._timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - clock.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self._connection.settimeout(remaining)
        return self._connection.recv_into(buffer)


def _landing(telemetry_path: str) -> bytes:
    path = html.escape(telemetry_path)
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Letta Environments Exporter</title></head>
<body><h1>Letta Environments Exporter</h1>
<p>Version {html.escape(__version__)}.</p>
<ul>
<li><a href="{path}">Metrics</a></li>
<li><a href="/-/healthy">Health</a></li>
<li><a href="/-/ready">Readiness</a> (after the first successful poll)</li>
</ul></body></html>
""".encode()


def parse_listen_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_in_background(server: ExporterHTTPServer) -> threading.Thread:
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
    )
    thread.start()
    return thread
