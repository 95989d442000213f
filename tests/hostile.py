"""A hostile upstream on loopback: good answers first, then whatever its `mode` says.

It serves the Letta list (`/v1/environments`, from a real `SimulatedFleet`) and an npm
document (`/registry/<package>`) well until a test sets `mode`, then answers as a broken or
hostile server would: a gzip bomb, an endless body, a flood of values or rows, a trickle.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from letta_simulator import LATEST_RELEASE, RELEASES, SimulatedFleet

MiB = 1024 * 1024
BOMB_INFLATED = 1024 * MiB
LIST_HEAD = b'{"connections": ['
LIST_TAIL = b'], "hasNextPage": false}'
PACKUMENT_HEAD = b'{"dist-tags": {"latest": "9.9.9"}, "x": "'
PACKUMENT_TAIL = b'"}'


@functools.cache
def gzip_bomb(head: bytes = LIST_HEAD, tail: bytes = LIST_TAIL) -> bytes:
    """About 1 MiB of gzip that inflates to 1 GiB of valid JSON (spaces inside the list)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(head)]
    block = b" " * MiB
    for _ in range(BOMB_INFLATED // MiB):
        parts.append(compressor.compress(block))
    parts.append(compressor.compress(tail) + compressor.flush())
    return b"".join(parts)


def prepare(mode: str) -> None:
    """Make the costly answers of ``mode`` before a poll asks: compressing the bombs takes
    seconds of CPU, which a poll's deadline must not pay for."""
    if mode == "gzip_bomb":
        gzip_bomb()
        gzip_bomb(PACKUMENT_HEAD, PACKUMENT_TAIL)


def packument(latest: str = LATEST_RELEASE) -> bytes:
    return json.dumps(
        {"name": "@letta-ai/letta-code", "dist-tags": {"latest": latest}, "time": RELEASES}
    ).encode()


class HostileServer(ThreadingHTTPServer):
    """Modes: good, gzip_bomb, endless, value_flood, string_flood, row_flood, trickle;
    `trickled` counts the body bytes the trickle wrote before the client went away."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, fleet_size: int = 60) -> None:
        self.fleet = SimulatedFleet(size=fleet_size, seed=3, churn=False)
        self.mode = "good"
        self.registry_mode = "good"
        self.flood_rows = 4000  # rows per page of the row flood, whatever `limit` says
        self.flood_pages = 200
        self.trickle_every = 0.2
        self.trickled = 0
        self.trickle_length = 0  # the length of the page the trickle sends
        self.trickle_cut = threading.Event()
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), HostileHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client cutting an answer off is what the tests want, not a traceback

    @functools.cached_property
    def flood_page(self) -> bytes:
        """One page of `flood_rows` real rows; ids are made unique per page by their prefix."""
        fleet = SimulatedFleet(size=self.flood_rows, seed=5, churn=False)
        fleet.max_page_size = self.flood_rows
        return fleet.list_page({"limit": str(self.flood_rows)})[2]


class HostileHandler(BaseHTTPRequestHandler):
    server: HostileServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        if parts.path.startswith("/registry/"):
            if self.server.registry_mode == "gzip_bomb":
                self._send(gzip_bomb(PACKUMENT_HEAD, PACKUMENT_TAIL), gzip=True)
            else:
                self._send(packument())
            return
        mode = self.server.mode
        if mode == "good":
            self._send(self.server.fleet.list_page(query)[2])
        elif mode == "gzip_bomb":
            self._send(gzip_bomb(), gzip=True)
        elif mode == "endless":
            self._endless()
        elif mode == "value_flood":  # just under 8 MiB of empty rows: 2.8 million of them
            rows = 8 * MiB // 3 - 20
            self._send(LIST_HEAD + b"{}," * rows + b"{}" + LIST_TAIL)
        elif mode == "string_flood":  # short distinct strings, as many as the value guard lets by
            strings = b",".join(b'"%06x"' % i for i in range(8 * MiB // 9 - 16))
            self._send(LIST_HEAD + strings + LIST_TAIL)
        elif mode == "row_flood":
            self._row_flood(query)
        elif mode == "trickle":
            self._trickle(self.server.fleet.list_page(query)[2])

    def _send(self, body: bytes, gzip: bool = False) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if gzip:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self._write(body)

    def _write(self, data: bytes) -> bool:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:  # the client cut the answer off: what it should do
            self.close_connection = True
            return False
        return True

    def _endless(self) -> None:
        """1 GiB of valid JSON, plain, with no Content-Length: only reading tells its size."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        block = b" " * (256 * 1024)
        if not self._write(LIST_HEAD):
            return
        for _ in range(BOMB_INFLATED // len(block)):
            if not self._write(block):
                return
        self._write(LIST_TAIL)

    def _row_flood(self, query: dict[str, str]) -> None:
        """Pages of real rows, far more than `limit` asks for, with a next page each time."""
        page = int(query.get("after", "p0-").split("-")[0][1:] or 0) + 1
        body = self.server.flood_page.replace(b'"env-', b'"p%d-' % page)
        more = page < self.server.flood_pages
        self._send(
            body.replace(
                b'"hasNextPage": false', b'"hasNextPage": %s' % (b"true" if more else b"false")
            )
        )

    def _trickle(self, body: bytes) -> None:
        """A good page, a byte every `trickle_every` seconds: a read timeout never fires."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.server.trickle_length = len(body)
        for index in range(len(body)):
            if not self._write(body[index : index + 1]):
                self.server.trickle_cut.set()
                return
            with self.server.lock:
                self.server.trickled += 1
            time.sleep(self.server.trickle_every)

    def log_message(self, format: str, *args: Any) -> None:
        pass
