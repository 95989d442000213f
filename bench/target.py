"""A server under test, in its own process, driven over stdin/stdout by the benchmark.

`python -m bench.target exporter --base-url URL --page-size N` serves the real exporter (the
classes the CLI wires: client, poller, fleet state, HTTP server) and polls only when told, so
that the benchmark knows exactly when a poll runs. `floor` serves fixed bytes with a minimal
`http.server`; `usual` serves long-lived prometheus-client Gauges with `generate_latest()` per
scrape.

Each prints one JSON line `{"port": ...}` when ready, then answers one JSON line per command:
`poll`, `bare` (page without parsing), `rss`, `quit`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
from prometheus_client import disable_created_metrics

from bench.procs import API_KEY, memory_of


def memory() -> dict[str, int]:
    """VmHWM (peak) and VmRSS of this process, in bytes."""
    return memory_of(os.getpid())


def _timed(run: Callable[[], object]) -> dict[str, Any]:
    wall, cpu = time.perf_counter(), time.process_time()
    outcome = run()
    return {
        "wall": time.perf_counter() - wall,
        "cpu": time.process_time() - cpu,
        "ok": outcome is not False,
    }


class BarePages:
    """Pages through the list as the exporter does, without parsing: the floor of a poll."""

    def __init__(self, base_url: str, page_size: int) -> None:
        self._page_size = page_size
        headers = {"Authorization": f"Bearer {API_KEY}", "Accept": "application/json"}
        # One client reused across polls, as the exporter reuses its own.
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=60)

    def __call__(self) -> int:
        pages = 0
        params = {"limit": str(self._page_size)}
        while True:
            body = self._http.get("/v1/environments", params=params).content
            pages += 1
            if body.endswith(b'"hasNextPage": false}'):
                return pages
            # The cursor is the last row's id: found by searching, not by parsing.
            start = body.rindex(b'{"id": "') + 8
            params["after"] = body[start : body.index(b'"', start)].decode()


class _FloorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    bodies: ClassVar[dict[bool, bytes]] = {}

    def do_GET(self) -> None:
        gzipped = "gzip" in self.headers.get("Accept-Encoding", "")
        body = self.bodies[gzipped]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Floor(ThreadingHTTPServer):
    daemon_threads = True


def _exporter(args: argparse.Namespace) -> tuple[int, dict[str, Callable[[], Any]]]:
    from exporter.client import EnvironmentsClient
    from exporter.config import load_config
    from exporter.poller import Poller
    from exporter.selfmetrics import ExporterMetrics
    from exporter.server import ExporterHTTPServer, serve_in_background
    from exporter.store import Store

    config = load_config(
        [
            f"--letta.base-url={args.base_url}",
            f"--letta.page-size={args.page_size}",
            "--letta.poll-interval=10m",
            "--letta.poll-jitter=1s",
            "--no-version.registry",
            "--no-version.pypi",
        ],
        {"LETTA_API_KEY": API_KEY},
    ).config
    metrics = ExporterMetrics(config.poll_interval)
    state = Store()
    client = EnvironmentsClient(config.client_settings(), observe=metrics.observe_request)
    poller = Poller(config.poll_settings(), client, state, metrics)
    server = ExporterHTTPServer(
        ("127.0.0.1", 0),
        store=state,
        metrics=metrics,
        telemetry_path="/metrics",
        max_data_age=config.effective_max_data_age,
    )
    serve_in_background(server)
    if not poller.poll_once():
        raise SystemExit("the first poll failed")
    bare = BarePages(args.base_url, args.page_size)
    bare()
    commands = {
        "poll": lambda: _timed(poller.poll_once),
        "bare": lambda: _timed(bare),
    }
    return server.server_port, commands


def _floor(args: argparse.Namespace) -> tuple[int, dict[str, Callable[[], Any]]]:
    _FloorHandler.bodies = {
        False: Path(args.plain).read_bytes(),
        True: Path(args.gzip).read_bytes(),
    }
    server = _Floor(("127.0.0.1", 0), _FloorHandler)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_port, {}


def _usual(args: argparse.Namespace) -> tuple[int, dict[str, Callable[[], Any]]]:
    from prometheus_client import start_http_server

    from bench.usual import usual_registry

    registry, series = usual_registry(args.base_url, args.page_size, API_KEY)
    server, _ = start_http_server(0, addr="127.0.0.1", registry=registry)
    return server.server_port, {"series": lambda: {"series": series}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.target")
    parser.add_argument("kind", choices=("exporter", "floor", "usual"))
    parser.add_argument("--base-url")
    parser.add_argument("--page-size", type=int, help="rows per page (exporter, usual)")
    parser.add_argument("--plain")
    parser.add_argument("--gzip")
    args = parser.parse_args(argv)
    if args.kind != "floor" and not (args.base_url and args.page_size):
        parser.error(f"{args.kind} needs --base-url and --page-size")
    disable_created_metrics()  # as the exporter's command line sets its process up
    start = {"exporter": _exporter, "floor": _floor, "usual": _usual}[args.kind]
    port, commands = start(args)
    commands["rss"] = memory
    print(json.dumps({"port": port, **memory()}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "quit":
            break
        answer = commands[command]() if command in commands else {"error": command}
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
