"""A simulated Letta Environments API: a realistic fleet that changes over time, with faults.

It speaks `GET /v1/environments` exactly as the reference does (cursor `after`, `limit` and
`onlineOnly` as strings, `source`, `userId`, Bearer auth, epoch-millisecond timestamps), and has
a small admin API for tests and demos under `/_simulator/`:

- `POST /_simulator/faults` `{"status": 503, "count": 3, "retry_after": "1", "latency_ms": 50,
  "truncate": false, "non_json": false, "invalid_rows": 0, "repeat_cursor": false,
  "empty_pages": false, "duplicate_rows": false, "clock_skew_seconds": 0,
  "extra_fields": false}`; `DELETE /_simulator/faults` clears them. `count` limits how many list
  requests the fault applies to (absent: until cleared).
- `POST /_simulator/silence` `{"fraction": 0.3}` or `{"ids": [...]}`: those environments keep
  their lease but stop heartbeating; `DELETE /_simulator/silence` lets them heartbeat again.
- `GET /_simulator/state`: counts by state and the silenced ids.
- `GET /_registry/<package>`: an npm package document of Letta Code's releases (`dist-tags`,
  `time`), so the demo and the tests need no internet.

Each environment's state is a function of the clock: it cycles through online, stale (lease
held, silent) and offline with its own period and phase, so heartbeats advance and
environments drop off and come back without a background thread.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from exporter import clock as clocks

log = logging.getLogger(__name__)

LIST_PATH = "/v1/environments"
ORGANIZATION_ID = "org-5f1c2d9e-simulated"

_OS = (("darwin", 50), ("linux", 33), ("win32", 12), ("freebsd", 1), (None, 4))
_MODES = (
    ("standard", 36),
    ("acceptEdits", 18),
    ("default", 10),
    ("strict", 10),
    ("unrestricted", 8),
    ("bypassPermissions", 4),
    ("plan", 3),
    (None, 11),
)
_VERSIONS = (
    ("0.32.18", 40),
    ("0.32.17", 18),
    ("0.32.15", 10),
    ("0.31.4", 8),
    ("0.29.0", 4),
    ("0.32.18-next.1", 3),
    ("0.33.0-next.2", 2),
    (None, 5),
    ("0.28.x-dev", 1),
)
RELEASES = {  # version -> publication time, as the npm registry's `time` field has them
    "0.29.0": "2026-07-02T09:12:01.000Z",
    "0.31.4": "2026-08-27T16:40:22.000Z",
    "0.32.15": "2026-09-18T11:03:45.000Z",
    "0.32.17": "2026-09-22T07:12:47.042Z",
    "0.32.18-next.1": "2026-09-22T19:30:00.000Z",
    "0.32.18": "2026-09-23T06:25:43.503Z",
    "0.33.0-next.2": "2026-09-25T08:00:00.000Z",
}
LATEST_RELEASE = "0.32.18"
_NODES = (("v22.11.0", 45), ("v20.18.1", 30), ("v24.1.0", 15), ("v18.20.4", 7), (None, 3))
_SELF_UPDATE = (
    ({"supported": True, "writable": True, "install_path": "/usr/local/lib/node_modules"}, 55),
    (
        {
            "supported": True,
            "writable": False,
            "reason": "install path is not writable",
            "manual_command": "sudo npm install -g @letta-ai/letta-code@latest",
        },
        15,
    ),
    ({"supported": False, "writable": False, "reason": "managed by Letta Desktop"}, 10),
    (
        {
            "supported": False,
            "writable": True,
            "reason": "running from a source checkout",
            "manual_command": "git pull && npm install",
        },
        8,
    ),
    (None, 12),
)
_NAMES = ("macbook", "workstation", "ci-runner", "build-box", "laptop", "devbox", "server")
_PEOPLE = ("alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi", "ivan", "judy")


def _pick(rng: random.Random, table: Sequence[tuple[Any, int]]) -> Any:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights=weights)[0]


@dataclass(frozen=True, slots=True)
class EnvironmentSpec:
    """The fixed traits of one simulated environment; its state comes from the clock."""

    id: str
    device_id: str
    connection_name: str
    user_id: str | None
    source: str
    metadata: dict[str, Any] | None
    mode: str | None
    first_seen: float
    never_connected: bool
    period: float
    online_share: float
    stale_share: float
    phase: float


def build_fleet(
    size: int, seed: int, heartbeat_interval: float, epoch: float
) -> list[EnvironmentSpec]:
    """A deterministic fleet of ``size`` environments, sorted by id (the cursor order)."""
    rng = random.Random(seed)
    specs: list[EnvironmentSpec] = []
    device = ""
    for index in range(size):
        person = rng.choice(_PEOPLE)
        if not device or rng.random() > 0.06:  # a few devices run two environments
            device = f"dev-{rng.getrandbits(48):012x}"
        os_name = _pick(rng, _OS)
        metadata: dict[str, Any] | None = None
        if os_name is not None or rng.random() < 0.5:
            metadata = {
                key: value
                for key, value in {
                    "os": os_name,
                    "lettaCodeVersion": _pick(rng, _VERSIONS),
                    "nodeVersion": _pick(rng, _NODES),
                    "gitBranch": rng.choice(("main", "feature/login", f"{person}/spike")),
                    "workingDirectory": f"/home/{person}/src/project-{rng.randint(1, 30)}",
                    "self_update": _pick(rng, _SELF_UPDATE),
                    "supported_commands": ["upgrade-letta-code", "send-message"]
                    if rng.random() < 0.8
                    else ["send-message"],
                }.items()
                if value is not None
            }
        period = heartbeat_interval * rng.uniform(60, 240)
        specs.append(
            EnvironmentSpec(
                id=f"env-{rng.getrandbits(64):016x}",
                device_id=device,
                connection_name=f"{person}-{rng.choice(_NAMES)}-{index % 97}",
                user_id=None if rng.random() < 0.05 else f"user-{_PEOPLE.index(person):04d}",
                source="remote" if rng.random() < 0.15 else "local",
                metadata=metadata,
                mode=_pick(rng, _MODES),
                first_seen=epoch - rng.uniform(3600, 90 * 86400),
                never_connected=rng.random() < 0.05,
                period=period,
                online_share=rng.uniform(0.70, 0.95),
                stale_share=rng.uniform(0.02, 0.08),
                phase=rng.uniform(0, period),
            )
        )
    specs.sort(key=lambda spec: spec.id)
    return specs


@dataclass
class Faults:
    """What the simulator does wrong, and for how many more list requests."""

    status: int | None = None
    count: int | None = None
    retry_after: str | None = None
    retry_after_ms: str | None = None
    latency_ms: float = 0.0
    truncate: bool = False
    non_json: bool = False
    invalid_rows: int = 0
    repeat_cursor: bool = False
    empty_pages: bool = False
    duplicate_rows: bool = False
    clock_skew_seconds: float = 0.0
    extra_fields: bool = False

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Faults:
        known = cls.__dataclass_fields__
        unknown = set(document) - set(known)
        if unknown:
            raise ValueError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        return cls(**document)


@dataclass
class SimulatedFleet:
    """The fleet and its switches; every method is safe to call from several threads."""

    size: int = 200
    seed: int = 1
    heartbeat_interval: float = 30.0
    churn: bool = True
    max_page_size: int = 1000
    clock: Callable[[], float] = clocks.wall_clock
    specs: list[EnvironmentSpec] = field(init=False)
    faults: Faults = field(default_factory=Faults)
    silenced: dict[str, float] = field(default_factory=dict)
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = self.clock()
        self.specs = build_fleet(self.size, self.seed, self.heartbeat_interval, self._epoch)
        self._ids = [spec.id for spec in self.specs]

    # --- state as a function of the clock ---------------------------------------------
    def row(self, spec: EnvironmentSpec, now: float) -> tuple[dict[str, Any], str]:
        """The API row of one environment at ``now`` and its true state."""
        hb = self.heartbeat_interval
        lease_start: float | None
        last_heartbeat: float | None
        if spec.never_connected:
            state, lease_start, last_heartbeat = "offline", None, None
        elif spec.id in self.silenced:
            state, lease_start = "stale", self._epoch - spec.phase
            last_heartbeat = self.silenced[spec.id]
        elif not self.churn:
            state, lease_start = "online", self._epoch - spec.phase
            last_heartbeat = now - ((now + spec.phase) % hb)
        else:
            cycle_start = now - ((now + spec.phase) % spec.period)
            t = now - cycle_start
            online_end = spec.period * spec.online_share
            stale_end = online_end + max(spec.period * spec.stale_share, 6 * hb)
            lease_start = cycle_start
            if t < online_end:
                state, last_heartbeat = "online", now - ((now + spec.phase) % hb)
            elif t < stale_end:
                state, last_heartbeat = "stale", cycle_start + online_end
            else:
                state, last_heartbeat = "offline", cycle_start + stale_end
                lease_start = None
        skew = self.faults.clock_skew_seconds
        if last_heartbeat is not None and skew:
            last_heartbeat += skew
        connected = state != "offline"
        row: dict[str, Any] = {
            "id": spec.id,
            "connectedAt": _ms(lease_start) if connected and lease_start is not None else None,
            "connectionId": f"conn-{spec.id[4:12]}-{int(lease_start or 0) % 100000}"
            if connected
            else None,
            "connectionName": spec.connection_name,
            "deviceId": spec.device_id,
            "firstSeenAt": _ms(spec.first_seen),
            "lastHeartbeat": _ms(last_heartbeat) if last_heartbeat is not None else None,
            "lastSeenAt": _ms(last_heartbeat if last_heartbeat is not None else spec.first_seen),
            "organizationId": ORGANIZATION_ID,
            "podId": f"pod-{int(spec.phase) % 7}" if connected else None,
            "apiKeyOwner": spec.user_id,
        }
        if spec.mode is not None:
            row["currentMode"] = spec.mode
        if spec.metadata is not None:
            row["metadata"] = spec.metadata
        if spec.user_id is not None:
            row["userId"] = spec.user_id
        if row["apiKeyOwner"] is None:
            del row["apiKeyOwner"]
        if self.faults.extra_fields:
            row["capabilities"] = {"beta": True}
            row["currentMode"] = "yolo-2027"
        return row, state

    def state_counts(self) -> dict[str, Any]:
        now = self.clock()
        counts = {"online": 0, "stale": 0, "offline": 0}
        for spec in self.specs:
            counts[self.row(spec, now)[1]] += 1
        return {**counts, "silenced": sorted(self.silenced)}

    # --- switches ----------------------------------------------------------------------
    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults

    def silence(self, ids: Sequence[str] | None = None, fraction: float | None = None) -> list[str]:
        """Stop the heartbeats of these environments (connected ones, for ``fraction``)."""
        now = self.clock()
        if ids is None:
            connected = [s for s in self.specs if self.row(s, now)[1] != "offline"]
            count = round(len(connected) * (fraction or 0.0))
            ids = [s.id for s in random.Random(self.seed + 1).sample(connected, count)]
        chosen = [i for i in ids if i in set(self._ids)]
        with self._lock:
            for env_id in chosen:
                self.silenced.setdefault(env_id, now)
        return chosen

    def unsilence(self) -> None:
        with self._lock:
            self.silenced.clear()

    # --- the list endpoint ---------------------------------------------------------------
    def list_page(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Status, headers and body of one `GET /v1/environments`."""
        with self._lock:
            self.requests += 1
            faults = self.faults
            remaining = faults.count
            if remaining is not None:
                if remaining <= 0:
                    faults = self.faults = Faults()
                else:
                    self.faults = replace(faults, count=remaining - 1)
        if faults.latency_ms:
            time.sleep(faults.latency_ms / 1000)
        if faults.status is not None:
            headers = {}
            if faults.retry_after is not None:
                headers["Retry-After"] = faults.retry_after
            if faults.retry_after_ms is not None:
                headers["retry-after-ms"] = faults.retry_after_ms
            body = json.dumps({"error": f"simulated HTTP {faults.status}"}).encode()
            return faults.status, headers, body
        if faults.non_json:
            return 200, {}, b"<html><body>502 Bad Gateway</body></html>"
        try:
            limit = int(query.get("limit", "100"))
        except ValueError:
            return 400, {}, b'{"error": "limit must be a number"}'
        limit = max(1, min(limit, self.max_page_size))
        after = query.get("after")
        start = bisect.bisect_right(self._ids, after) if after else 0
        now = self.clock()
        online_only = query.get("onlineOnly", "").lower() == "true"
        rows: list[dict[str, Any]] = []
        index = start
        while index < len(self.specs) and len(rows) < limit:
            spec = self.specs[index]
            index += 1
            if query.get("source") and spec.source != query["source"]:
                continue
            if query.get("userId") and spec.user_id != query["userId"]:
                continue
            row, state = self.row(spec, now)
            if online_only and state != "online":
                continue
            rows.append(row)
        has_next = index < len(self.specs)
        if faults.empty_pages and after:
            rows, has_next = [], True
        elif faults.repeat_cursor and after:
            rows = [self.row(self.specs[0], now)[0]]
            has_next = True
        if faults.duplicate_rows and start > 0:
            rows.insert(0, self.row(self.specs[start - 1], now)[0])
        for position in range(min(faults.invalid_rows, len(rows))):
            rows[position] = {**rows[position], "lastSeenAt": "yesterday"}
        body = json.dumps({"connections": rows, "hasNextPage": has_next}).encode()
        if faults.truncate:
            return 200, {"X-Simulator-Truncated": "1"}, body[: len(body) // 2]
        return 200, {}, body


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


class SimulatorHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], fleet: SimulatedFleet, api_key: str | None
    ) -> None:
        self.fleet = fleet
        self.api_key = api_key
        super().__init__(address, SimulatorHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class SimulatorHandler(BaseHTTPRequestHandler):
    server: SimulatorHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/_registry/"):
            self._json(
                200,
                {
                    "name": unquote(parts.path.removeprefix("/_registry/")),
                    "dist-tags": {"latest": LATEST_RELEASE, "next": "0.33.0-next.2"},
                    "time": {"created": "2026-01-05T10:00:00.000Z", **RELEASES},
                },
            )
            return
        if parts.path == "/_simulator/state":
            self._json(200, self.server.fleet.state_counts())
            return
        if parts.path.rstrip("/") == LIST_PATH:
            if not self._authorised():
                self._json(401, {"error": "Unauthorized: missing or invalid API key"})
                return
            query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
            status, headers, body = self.server.fleet.list_page(query)
            truncated = headers.pop("X-Simulator-Truncated", None)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            for name, value in headers.items():
                self.send_header(name, value)
            # A truncated body announces its full length, then the connection drops.
            self.send_header("Content-Length", str(len(body) * 2 if truncated else len(body)))
            self.end_headers()
            self.wfile.write(body)
            if truncated:
                self.close_connection = True
            return
        self._json(404, {"error": "not found"})

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        try:
            length = int(self.headers.get("Content-Length", "0"))
            document = json.loads(self.rfile.read(length) or b"{}")
            if not isinstance(document, dict):
                raise ValueError("expected a JSON object")
            fleet = self.server.fleet
            if path == "/_simulator/faults":
                fleet.set_faults(Faults.from_json(document))
                self._json(200, {"ok": True})
            elif path == "/_simulator/silence":
                chosen = fleet.silence(ids=document.get("ids"), fraction=document.get("fraction"))
                self._json(200, {"silenced": chosen})
            else:
                self._json(404, {"error": "not found"})
        except (ValueError, TypeError) as exc:
            self._json(400, {"error": str(exc)})

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_simulator/faults":
            self.server.fleet.set_faults(Faults())
        elif path == "/_simulator/silence":
            self.server.fleet.unsilence()
        else:
            self._json(404, {"error": "not found"})
            return
        self._json(200, {"ok": True})

    def _authorised(self) -> bool:
        header = self.headers.get("Authorization", "")
        token = header[7:] if header.startswith("Bearer ") else ""
        if not token:
            return False
        return self.server.api_key is None or token == self.server.api_key

    def _json(self, status: int, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("simulator: %s", format % args)


def start_simulator(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    fleet_size: int = 200,
    seed: int = 1,
    api_key: str | None = None,
    heartbeat_interval: float = 30.0,
    churn: bool = True,
    max_page_size: int = 1000,
    clock: Callable[[], float] = clocks.wall_clock,
) -> SimulatorHTTPServer:
    """Serve a simulated fleet in a background thread; ``.url`` is its base URL."""
    fleet = SimulatedFleet(
        size=fleet_size,
        seed=seed,
        heartbeat_interval=heartbeat_interval,
        churn=churn,
        max_page_size=max_page_size,
        clock=clock,
    )
    server = SimulatorHTTPServer((host, port), fleet, api_key)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="simulator", daemon=True
    ).start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    """`letta-environments-simulator`: serve a simulated Letta Environments API."""
    from exporter.config import parse_duration

    parser = argparse.ArgumentParser(
        prog="letta-environments-simulator", description="A simulated Letta Environments API."
    )
    parser.add_argument("--web.listen-address", dest="listen", default="127.0.0.1:8378")
    parser.add_argument("--fleet-size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    parser.add_argument("--heartbeat-interval", default="30s")
    parser.add_argument("--max-page-size", type=int, default=1000)
    parser.add_argument(
        "--no-churn",
        dest="churn",
        action="store_false",
        help="keep every environment's state fixed",
    )
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    try:
        interval = parse_duration(args.heartbeat_interval)
        server = start_simulator(
            host=host or "0.0.0.0",
            port=int(port),
            fleet_size=args.fleet_size,
            seed=args.seed,
            api_key=args.api_key,
            heartbeat_interval=interval,
            churn=args.churn,
            max_page_size=args.max_page_size,
        )
    except (ValueError, OSError) as exc:
        print(f"letta-environments-simulator: error: {exc}", file=sys.stderr)
        return 2
    print(f"simulated Letta API with {args.fleet_size} environments at {server.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
