"""A simulated Letta Environments API: a realistic fleet that changes over time, with faults.

It speaks `GET /v1/environments` exactly as the reference does (cursor `after`, `limit` and
`onlineOnly` as strings, `source`, `userId`, Bearer auth, epoch-millisecond timestamps), and
behaves as Letta Code and its relay do:

- a machine heartbeats every 30 s while it runs; when it dies the relay clears its lease
  `lease_timeout` (120 s) after the last heartbeat, so it goes from online to offline; a small
  share of leases get stuck instead (held, heartbeat old: `stale`);
- a machine that comes back (a restart, a self-upgrade) often re-registers under a new row
  `id`; its old row stays, offline, until it ages out `row_ttl` after it was last seen;
- rows of Letta Code Desktop (`deviceId` `desktop:...`) and Letta Cloud sandboxes
  (`sandbox-...`) beside CLIs; `metadata.machine` on Letta Code 0.34+ only; clients installed
  from PyPI, which cannot update themselves.

A small admin API for tests and demos lives under `/_simulator/`:

- `POST /_simulator/faults` `{"status": 503, "count": 3, "retry_after": "1", "latency_ms": 50,
  "truncate": false, "non_json": false, "invalid_rows": 0, "repeat_cursor": false,
  "empty_pages": false, "duplicate_rows": false, "clock_skew_seconds": 0,
  "extra_fields": false}`; `DELETE /_simulator/faults` clears them. `count` limits how many list
  requests the fault applies to (absent: until cleared).
- `POST /_simulator/silence` `{"fraction": 0.3}` or `{"ids": [...]}`: a stuck lease: those
  machines stop heartbeating but the relay never clears their lease;
  `DELETE /_simulator/silence` lets them heartbeat again.
- `POST /_simulator/stop` `{"names": [...]}` or `{"ids": [...]}`: those machines die; the relay
  clears their lease `lease_timeout` later. `DELETE /_simulator/stop` starts them again, each
  under a new row `id` (the old row stays, offline).
- `POST /_simulator/hide` `{"names": [...]}`: those machines' rows vanish from the list;
  `DELETE /_simulator/hide` lists them again.
- `GET /_simulator/state`: rows by state, the silenced ids, the stopped and hidden machines.
- `GET /_registry/<package>`: an npm package document of Letta Code's releases (`dist-tags`,
  `time`), and `GET /_pypi/pypi/<project>/json` PyPI's document of them, so the demo and the
  tests need no internet.

Each machine's state is a function of the clock (and of the switches above): it cycles through
running and dead with its own period and phase, so heartbeats advance, leases drop and rows
come and go without a background thread.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import logging
import random
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from exporter import clock as clocks
from letta_simulator.listeners import (
    Listener,
    ListenerRegistry,
    RegistrationError,
    ReRegistration,
)
from letta_simulator.relay import RELAY_PATH, Relay

log = logging.getLogger(__name__)

LIST_PATH = "/v1/environments"
REGISTER_PATH = "/v1/environments/register"
ORGANIZATION_ID = "org-5f1c2d9e-simulated"
LISTENER_SOURCE = "local"  # a `letta server` on a machine of its own, not a Letta Cloud sandbox

_OS = (("darwin", 50), ("linux", 33), ("win32", 12), ("freebsd", 1), (None, 4))
_MODES = (
    ("standard", 36),
    ("acceptEdits", 18),
    ("default", 10),
    ("strict", 10),
    ("unrestricted", 8),
    ("bypassPermissions", 4),
    ("fullAccess", 3),
    (None, 11),
)
_VERSIONS = (
    ("0.34.12", 30),
    ("0.34.10", 10),
    ("0.33.4", 12),
    ("0.32.18", 14),
    ("0.32.17", 6),
    ("0.31.4", 5),
    ("0.29.0", 3),
    ("0.34.13-next.1", 3),
    ("0.35.0-next.2", 2),
    (None, 5),
    ("0.28.x-dev", 1),
)
RELEASES = {  # version -> publication time, as the npm registry's `time` field has them
    "0.29.0": "2026-07-02T09:12:01.000Z",
    "0.31.4": "2026-08-27T16:40:22.000Z",
    "0.32.17": "2026-09-22T07:12:47.042Z",
    "0.32.18": "2026-09-23T06:25:43.503Z",
    "0.33.4": "2026-10-14T13:02:10.118Z",
    "0.34.10": "2026-11-12T10:31:05.000Z",
    "0.34.12": "2026-11-19T08:47:29.731Z",
    "0.34.13-next.1": "2026-11-24T17:20:00.000Z",
    "0.35.0-next.2": "2026-11-28T09:00:00.000Z",
}
LATEST_RELEASE = "0.34.12"
NEXT_RELEASE = "0.35.0-next.2"
_NODES = (("v22.11.0", 45), ("v20.18.1", 30), ("v24.1.0", 15), ("v18.20.4", 7), (None, 3))
# Letta Code's own words (src/updater/auto-update.ts).
_NPM_COMMAND = "npm install -g @letta-ai/letta-code@latest"
DESKTOP_UPDATE = {
    "supported": False,
    "writable": False,
    "reason": "Self-update is disabled because this Letta Code runtime is managed by Letta "
    "Code Desktop.",
    "manual_command": "Update Letta Code Desktop to upgrade the bundled Letta Code runtime.",
}
PYPI_UPDATE = {  # as Letta Code 0.34.12 installed by pip reports it
    "supported": False,
    "writable": False,
    "reason": "This Letta Code runtime is managed by a Python package installer.",
    "manual_command": "Upgrade with your installer: uv tool upgrade letta, pipx upgrade letta, "
    "or python -m pip install --upgrade letta",
}
_SELF_UPDATE = (
    ({"supported": True, "writable": True, "install_path": "/usr/local/lib/node_modules"}, 55),
    (
        {
            "supported": True,
            "writable": False,
            "install_path": "/usr/lib/node_modules",
            "reason": "Self-update requires write access to /usr/lib/node_modules. Run "
            f"{_NPM_COMMAND} manually or reinstall Letta Code in a user-writable npm prefix.",
            "manual_command": _NPM_COMMAND,
        },
        15,
    ),
    (PYPI_UPDATE, 8),
    (
        {
            "supported": False,
            "writable": True,
            "reason": "Self-update is disabled for development/source checkouts.",
        },
        6,
    ),
    (None, 12),
)
_NAMES = ("macbook", "workstation", "ci-runner", "build-box", "laptop", "devbox", "server")
_PEOPLE = ("alice", "bob", "carol", "dan", "erin", "frank", "grace", "heidi", "ivan", "judy")
_KINDS = (("cli", 86), ("desktop", 8), ("sandbox", 6))
GIB = 2**30
# What `metadata.machine` looks like by OS: names, versions, models, CPUs, GPUs, memory.
_MAC: dict[str, Any] = {
    "os": (("macOS", ("15.1.1", "15.2", "14.7.1", "26.0.1")),),
    "model": ("MacBook Pro", "MacBook Air", "Mac mini", "Mac Studio"),
    "cpu": ("Apple M1", "Apple M2 Pro", "Apple M3 Max", "Apple M4 Pro"),
    "memory": (16, 18, 24, 32, 36, 48, 64, 96, 128),
}
_LINUX: dict[str, Any] = {
    "os": (
        ("Ubuntu", ("24.04", "22.04", "24.10")),
        ("Ubuntu", ("24.04",)),
        ("Debian GNU/Linux", ("12", "13")),
        ("Fedora Linux", ("41", "42")),
        ("Alpine Linux", ("3.20.3", "3.21.0")),
        ("Arch Linux", ("rolling",)),
    ),
    "model": ("PowerEdge R650", "Standard PC (Q35 + ICH9, 2009)", "ThinkPad X1 Carbon Gen 11"),
    "cpu": (
        "AMD EPYC 7B13",
        "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
        "AMD Ryzen 9 7950X 16-Core Processor",
        "Neoverse-N1",
    ),
    "memory": (16, 32, 64, 128, 256, 512),
}
_WINDOWS: dict[str, Any] = {
    "os": (
        ("Microsoft Windows 11 Pro", ("10.0.22631", "10.0.26100")),
        ("Microsoft Windows 11 Home", ("10.0.22631", "10.0.26100")),
        ("Microsoft Windows 10 Pro", ("10.0.19045",)),
        ("Windows", ("10.0.26100",)),
    ),
    "model": ("XPS 15 9530", "Surface Laptop 7", "OptiPlex 7090"),
    "cpu": ("13th Gen Intel(R) Core(TM) i7-13700H", "AMD Ryzen 7 7840U w/ Radeon 780M Graphics"),
    "memory": (8, 16, 32, 64),
}
_LINUX_GPUS = (
    (),
    (),
    (),
    ("NVIDIA L4",),
    ("NVIDIA A100-SXM4-80GB",) * 8,
    ("NVIDIA H100 80GB HBM3",) * 4,
)
_WINDOWS_GPUS = (
    ("NVIDIA GeForce RTX 4070 Laptop GPU", "Intel(R) UHD Graphics"),
    ("Intel(R) Iris(R) Xe Graphics",),
    ("AMD Radeon 780M Graphics",),
)


def _pick(rng: random.Random, table: Sequence[tuple[Any, int]]) -> Any:
    values, weights = zip(*table, strict=True)
    return rng.choices(values, weights=weights)[0]


def _has_machine_facts(version: str | None) -> bool:
    """Letta Code reports `metadata.machine` from 0.34 on."""
    head = (version or "").split(".")
    return len(head) >= 2 and head[0] == "0" and head[1].isdigit() and int(head[1]) >= 34


def machine_facts(rng: random.Random, os_name: str | None, kind: str) -> dict[str, Any]:
    """A plausible `metadata.machine` for an environment of this OS and kind."""
    container = kind == "sandbox" or (os_name == "linux" and rng.random() < 0.35)
    table = {"darwin": _MAC, "win32": _WINDOWS}.get(os_name or "", _LINUX)
    name, versions = ("Debian GNU/Linux", ("12",)) if kind == "sandbox" else rng.choice(table["os"])
    facts: dict[str, Any] = {
        "architecture": "arm64"
        if (os_name == "darwin" and rng.random() < 0.85) or rng.random() < 0.15
        else "x64",
        "osName": name,
        "osVersion": rng.choice(versions),
        "model": "Container" if container else rng.choice(table["model"]),
        "cpu": rng.choice(table["cpu"]),
        "memoryBytes": (rng.choice((2, 4, 8, 16)) if container else rng.choice(table["memory"]))
        * GIB,
    }
    if os_name == "darwin":
        facts["gpus"] = [facts["cpu"]]
    elif os_name == "win32":
        facts["gpus"] = list(rng.choice(_WINDOWS_GPUS))
    else:
        facts["gpus"] = [] if container else list(rng.choice(_LINUX_GPUS))
    if rng.random() < 0.05:  # every key is optional
        del facts[rng.choice(sorted(facts))]
    return facts


@dataclass(frozen=True, slots=True)
class EnvironmentSpec:
    """The fixed traits of one simulated machine; its rows and their state come from the clock.

    `id` is the row id the machine registered with first; later registrations append to it.
    """

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
    phase: float


def build_fleet(
    size: int, seed: int, heartbeat_interval: float, epoch: float
) -> list[EnvironmentSpec]:
    """A deterministic fleet of ``size`` machines, sorted by id (the cursor order)."""
    rng = random.Random(seed)
    specs: list[EnvironmentSpec] = []
    device = ""
    for index in range(size):
        person = rng.choice(_PEOPLE)
        kind = _pick(rng, _KINDS)
        if kind == "desktop":
            device = f"desktop:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        elif kind == "sandbox":
            device = f"sandbox-agent-{uuid.UUID(int=rng.getrandbits(128), version=4)}"
        elif not device or device.startswith(("desktop:", "sandbox-")) or rng.random() > 0.06:
            device = str(uuid.UUID(int=rng.getrandbits(128), version=4))  # a few run two
        os_name = _pick(rng, _OS)
        if kind == "sandbox":
            os_name = "linux"
        elif kind == "desktop":
            os_name = rng.choice(("darwin", "darwin", "win32"))
        metadata: dict[str, Any] | None = None
        if os_name is not None or rng.random() < 0.5:
            version = _pick(rng, _VERSIONS)
            update = DESKTOP_UPDATE if kind == "desktop" else _pick(rng, _SELF_UPDATE)
            metadata = {
                key: value
                for key, value in {
                    "os": os_name,
                    "lettaCodeVersion": version,
                    "nodeVersion": _pick(rng, _NODES),
                    "gitBranch": rng.choice(("main", "feature/login", f"{person}/spike")),
                    "workingDirectory": f"/home/{person}/src/project-{rng.randint(1, 30)}",
                    "self_update": update,
                    "supported_commands": ["upgrade-letta-code", "clear", "doctor", "compact"]
                    if rng.random() < 0.8
                    else ["clear", "doctor"],
                    "machine": machine_facts(rng, os_name, kind)
                    if _has_machine_facts(version)
                    else None,
                }.items()
                if value is not None
            }
        period = heartbeat_interval * rng.uniform(60, 240)
        name = f"{person}-{rng.choice(_NAMES)}-{index % 97}"
        specs.append(
            EnvironmentSpec(
                id=f"env-{rng.getrandbits(64):016x}",
                device_id=device,
                connection_name=f"sandbox-{name}" if kind == "sandbox" else name,
                user_id=None if rng.random() < 0.05 else f"user-{_PEOPLE.index(person):04d}",
                source="remote" if rng.random() < 0.15 else "local",
                metadata=metadata,
                mode=_pick(rng, _MODES),
                first_seen=epoch - rng.uniform(3600, 90 * 86400),
                never_connected=rng.random() < 0.05,
                period=period,
                online_share=rng.uniform(0.70, 0.95),
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


@dataclass(frozen=True, slots=True)
class Registration:
    """One row of a machine that was stopped or started by hand: when it ran, when it died."""

    id: str
    started: float
    stopped: float | None = None


def _chance(seed: int, key: str, cycle: int) -> float:
    """A fraction in [0, 1) fixed by its arguments: the dice of one machine's cycle."""
    return zlib.crc32(f"{seed}:{key}:{cycle}".encode()) / 2**32


_RowState = tuple[str, float | None, float]  # state, lease start, last heartbeat
ID_LENGTH = len("env-") + 16  # a machine's first row id; its later rows' ids start with it


@dataclass
class SimulatedFleet:
    """The fleet and its switches; every method is safe to call from several threads."""

    size: int = 200
    seed: int = 1
    heartbeat_interval: float = 30.0
    churn: bool = True
    max_page_size: int = 1000
    clock: Callable[[], float] = clocks.wall_clock
    lease_timeout: float | None = None
    """Seconds of silence after which the relay clears a lease (default 4 heartbeats: 120 s)."""
    row_ttl: float | None = None
    """Seconds after which an old row ages out of the list (default 120 heartbeats: 1 h)."""
    stuck_share: float = 0.03
    """Share of deaths whose lease the relay fails to clear (held until the machine returns)."""
    reregister_share: float = 0.3
    """Share of returns under a new row id (a restart, a self-upgrade) instead of the old row."""
    reregistration: ReRegistration = ReRegistration.SAME_ROW
    """What a real listener's second registration under the same device and name does."""
    specs: list[EnvironmentSpec] = field(init=False)
    faults: Faults = field(default_factory=Faults)
    silenced: dict[str, float] = field(default_factory=dict)
    stopped: dict[str, list[Registration]] = field(default_factory=dict)
    hidden: set[str] = field(default_factory=set)
    requests: int = 0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = self.clock()
        if self.lease_timeout is None:
            self.lease_timeout = 4 * self.heartbeat_interval
        if self.row_ttl is None:
            self.row_ttl = 120 * self.heartbeat_interval
        self.specs = build_fleet(self.size, self.seed, self.heartbeat_interval, self._epoch)
        self._ids = [spec.id for spec in self.specs]
        self._by_name: dict[str, list[EnvironmentSpec]] = {}
        for spec in self.specs:
            self._by_name.setdefault(spec.connection_name, []).append(spec)
        self.listeners = ListenerRegistry(
            lease_timeout=self._lease_timeout,
            row_ttl=self._row_ttl,
            reregistration=self.reregistration,
            clock=self.clock,
        )

    # --- state as a function of the clock ---------------------------------------------
    def rows(self, spec: EnvironmentSpec, now: float) -> list[tuple[dict[str, Any], str]]:
        """The API rows of one machine at ``now`` (oldest registration first), with states."""
        if spec.id in self.hidden:
            return []
        if spec.id in self.stopped:
            return self._registered_by_hand(spec, now)
        if spec.never_connected:
            return [self._row(spec, spec.id, ("offline", None, None), now)]
        hb = self.heartbeat_interval
        # Read once: another thread may lift the silence between a check and a lookup.
        silenced_at = self.silenced.get(spec.id)
        if silenced_at is not None:  # a stuck lease: held, no heartbeats
            return [self._row(spec, spec.id, ("stale", self._epoch - spec.phase, silenced_at), now)]
        if not self.churn:
            beat = now - ((now + spec.phase) % hb)
            return [self._row(spec, spec.id, ("online", self._epoch - spec.phase, beat), now)]
        cycle = int((now + spec.phase) // spec.period)
        start = cycle * spec.period - spec.phase
        death = start + spec.period * spec.online_share
        registered = self._registered_in(spec, cycle)
        current: _RowState
        if now < death:
            current = ("online", start, now - ((now + spec.phase) % hb))
        elif _chance(self.seed, "stuck" + spec.id, cycle) < self.stuck_share:
            current = ("stale", start, death)
        elif now < death + self._lease_timeout:
            current = ("online", start, death)  # the relay has not noticed yet
        else:
            current = ("offline", None, death)
        rows = [self._row(spec, self._row_id(spec, registered), current, now)]
        # Rows of earlier registrations stay, offline, until they age out.
        first = self._first_cycle(spec)
        while registered > first:
            previous = self._registered_in(spec, registered - 1)
            last = (registered - 1) * spec.period - spec.phase + spec.period * spec.online_share
            if now - last > self._row_ttl:
                break
            rows.append(self._row(spec, self._row_id(spec, previous), ("offline", None, last), now))
            registered = previous
        rows.reverse()
        return rows

    def row(self, spec: EnvironmentSpec, now: float) -> tuple[dict[str, Any], str]:
        """The machine's current row (its newest registration) and its state."""
        rows = self.rows(spec, now)
        if not rows:
            raise LookupError(f"{spec.connection_name} is hidden")
        return rows[-1]

    @property
    def _lease_timeout(self) -> float:
        return float(self.lease_timeout or 0.0)

    @property
    def _row_ttl(self) -> float:
        return float(self.row_ttl or 0.0)

    def _first_cycle(self, spec: EnvironmentSpec) -> int:
        return int((self._epoch + spec.phase) // spec.period)

    def _registered_in(self, spec: EnvironmentSpec, cycle: int) -> int:
        """The cycle in which the row alive in ``cycle`` registered."""
        first = self._first_cycle(spec)
        while cycle > first and _chance(self.seed, spec.id, cycle) >= self.reregister_share:
            cycle -= 1
        return max(cycle, first)

    def _row_id(self, spec: EnvironmentSpec, registered: int) -> str:
        if registered <= self._first_cycle(spec):
            return spec.id
        return f"{spec.id}-{registered:08x}"

    def _registered_by_hand(
        self, spec: EnvironmentSpec, now: float
    ) -> list[tuple[dict[str, Any], str]]:
        rows = []
        history = self.stopped[spec.id]
        for index, run in enumerate(history):
            newest = index == len(history) - 1
            hb = self.heartbeat_interval
            state: _RowState
            if run.stopped is None:
                beat = max(run.started, now - ((now - run.started) % hb))
                silenced_at = self.silenced.get(spec.id)
                if silenced_at is not None:
                    state = ("stale", run.started, silenced_at)
                else:
                    state = ("online", run.started, beat)
            elif newest and now < run.stopped + self._lease_timeout:
                state = ("online", run.started, run.stopped)
            else:
                if now - run.stopped > self._row_ttl and not newest:
                    continue
                state = ("offline", None, run.stopped)
            rows.append(self._row(spec, run.id, state, now))
        return rows

    def _row(
        self,
        spec: EnvironmentSpec,
        row_id: str,
        lease: tuple[str, float | None, float | None],
        now: float,
    ) -> tuple[dict[str, Any], str]:
        """One API row of ``spec``: ``lease`` is its state, lease start and last heartbeat."""
        state, lease_start, last_heartbeat = lease
        connected = state != "offline"
        row: dict[str, Any] = {
            "id": row_id,
            "connectedAt": _ms(lease_start) if connected and lease_start is not None else None,
            "connectionId": f"conn-{row_id[4:12]}-{int(lease_start or 0) % 100000}"
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
        return self._faulted(row), state

    def _listener_row(self, listener: Listener) -> tuple[dict[str, Any], str]:
        """The API row of a registered real listener, and its state (online while leased)."""
        leased = listener.connected_at is not None
        beat = listener.last_heartbeat
        row: dict[str, Any] = {
            "id": listener.id,
            "connectedAt": None if listener.connected_at is None else _ms(listener.connected_at),
            "connectionId": listener.connection_id if leased else None,
            "connectionName": listener.connection_name,
            "deviceId": listener.device_id,
            "firstSeenAt": _ms(listener.first_seen),
            "lastHeartbeat": _ms(beat) if beat is not None else None,
            "lastSeenAt": _ms(beat if beat is not None else listener.registered),
            "organizationId": ORGANIZATION_ID,
            "podId": "pod-relay" if leased else None,
            "apiKeyOwner": listener.user_id,
            "userId": listener.user_id,
        }
        if listener.metadata is not None:
            row["metadata"] = listener.metadata
        return self._faulted(row), "online" if leased else "offline"

    def _faulted(self, row: dict[str, Any]) -> dict[str, Any]:
        """``row`` as the clock-skew and extra-field switches change it."""
        skew = self.faults.clock_skew_seconds
        if row["lastHeartbeat"] is not None and skew:  # lastSeenAt is that heartbeat too
            row["lastHeartbeat"] = row["lastSeenAt"] = row["lastHeartbeat"] + _ms(skew)
        if self.faults.extra_fields:
            row["capabilities"] = {"beta": True}
            row["currentMode"] = "yolo-2027"
        return row

    def state_counts(self) -> dict[str, Any]:
        now = self.clock()
        counts = {"online": 0, "stale": 0, "offline": 0}
        for spec in self.specs:
            for _, state in self.rows(spec, now):
                counts[state] += 1
        listeners = [self._listener_row(listener) for listener in self.listeners.rows()]
        for _, state in listeners:
            counts[state] += 1
        return {
            **counts,
            "silenced": sorted(self.silenced),
            "stopped": sorted(
                spec_id
                for spec_id, runs in list(self.stopped.items())
                if runs[-1].stopped is not None
            ),
            "hidden": sorted(self.hidden),
            "listeners": [
                {"connectionName": row["connectionName"], "id": row["id"], "state": state}
                for row, state in listeners
            ],
        }

    # --- switches ----------------------------------------------------------------------
    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults

    def machines(self, ids: Sequence[str] = (), names: Sequence[str] = ()) -> list[EnvironmentSpec]:
        """The machines with these first row ids or connection names."""
        by_id = {spec.id: spec for spec in self.specs}
        chosen = [by_id[i] for i in ids if i in by_id]
        for name in names:
            chosen += self._by_name.get(name, [])
        return chosen

    def silence(self, ids: Sequence[str] | None = None, fraction: float | None = None) -> list[str]:
        """Stop the heartbeats of these machines (connected ones, for ``fraction``); the relay
        keeps their leases (stuck)."""
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

    def stop(self, machines: Sequence[EnvironmentSpec]) -> dict[str, float]:
        """These machines die now: their last heartbeat is now; the relay clears their lease
        `lease_timeout` later. Returns each machine's last heartbeat (epoch seconds)."""
        now = self.clock()
        last: dict[str, float] = {}
        with self._lock:
            for spec in machines:
                row, _ = self.row(spec, now)
                beat = now if row["lastHeartbeat"] is None else row["lastHeartbeat"] / 1000
                started = now if row["connectedAt"] is None else row["connectedAt"] / 1000
                history = self.stopped.setdefault(spec.id, [Registration(row["id"], started)])
                if history[-1].stopped is None:
                    history[-1] = replace(history[-1], stopped=beat)
                last[spec.connection_name] = history[-1].stopped or beat
        return last

    def start(self) -> None:
        """Every stopped machine comes back, registering a new row (the old one stays)."""
        now = self.clock()
        with self._lock:
            for spec_id, history in self.stopped.items():
                if history[-1].stopped is not None:
                    history.append(Registration(f"{spec_id}-m{len(history):07d}", now, None))

    def hide(self, machines: Sequence[EnvironmentSpec]) -> None:
        with self._lock:
            self.hidden.update(spec.id for spec in machines)

    def unhide(self) -> None:
        with self._lock:
            self.hidden.clear()

    # --- the list endpoint ---------------------------------------------------------------
    def _rows_of(
        self, machine: EnvironmentSpec | Listener, now: float
    ) -> list[tuple[dict[str, Any], str]]:
        if isinstance(machine, Listener):
            return [self._listener_row(machine)]
        return self.rows(machine, now)

    def _machines_from(
        self, start: int, after: str, query: dict[str, str]
    ) -> Iterator[EnvironmentSpec | Listener]:
        """The synthetic machines from ``start`` and the registered listeners after ``after``,
        merged in cursor order (each machine's rows follow its first row id), filters applied."""
        source, user = query.get("source"), query.get("userId")
        specs = (
            spec
            for spec in (self.specs[index] for index in range(start, len(self.specs)))
            if (not source or spec.source == source) and (not user or spec.user_id == user)
        )
        listeners = (
            listener
            for listener in self.listeners.rows()
            if listener.id[:ID_LENGTH] >= after[:ID_LENGTH]
            and source in (None, "", LISTENER_SOURCE)
            and (not user or listener.user_id == user)
        )
        return heapq.merge(specs, listeners, key=lambda machine: machine.id)

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
        # A machine's rows follow its first row id, which starts each of their ids.
        start = bisect.bisect_left(self._ids, after[:ID_LENGTH]) if after else 0
        now = self.clock()
        online_only = query.get("onlineOnly", "").lower() == "true"
        rows: list[dict[str, Any]] = []
        cursor_row: list[dict[str, Any]] = []  # the row `after` names, for duplicate_rows
        full = False
        for machine in self._machines_from(start, after or "", query):
            for row, state in self._rows_of(machine, now):
                if after and row["id"] == after:
                    cursor_row = [row]
                if (after and row["id"] <= after) or (online_only and state != "online"):
                    continue
                if len(rows) == limit:
                    full = True  # one row more than the page holds: there is a next page
                    break
                rows.append(row)
            if full:
                break
        has_next = full
        if faults.empty_pages and after:
            rows, has_next = [], True
        elif faults.repeat_cursor and after:  # the first machine's newest row, on every page
            first = next(iter(self._machines_from(0, "", {})), None)
            listed = self._rows_of(first, now) if first is not None else []
            rows = [listed[-1][0]] if listed else []
            has_next = True
        if faults.duplicate_rows and after:
            rows[:0] = cursor_row
        for position in range(min(faults.invalid_rows, len(rows))):
            rows[position] = {**rows[position], "lastSeenAt": "yesterday"}
        body = json.dumps({"connections": rows, "hasNextPage": has_next}).encode()
        if faults.truncate:
            return 200, {"X-Simulator-Truncated": "1"}, body[: len(body) // 2]
        return 200, {}, body


def pypi_project(name: str, latest: str = LATEST_RELEASE) -> dict[str, Any]:
    """PyPI's JSON document of Letta Code's releases (`/pypi/NAME/json`), one wheel each."""
    return {
        "info": {"name": name, "version": latest},
        "releases": {
            version: [{"upload_time_iso_8601": stamp, "yanked": False}]
            for version, stamp in RELEASES.items()
        },
    }


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
        # What each registry calls the newest release; the two channels need not agree.
        self.latest = {"npm": LATEST_RELEASE, "pypi": LATEST_RELEASE}
        self.relay = Relay(
            fleet.listeners,
            ping_interval=fleet.heartbeat_interval,
            lease_timeout=fleet.listeners.lease_timeout,
        )
        super().__init__(address, SimulatorHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.relay.close()
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up mid-answer is no error of the server's; anything else is."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class SimulatorHandler(BaseHTTPRequestHandler):
    server: SimulatorHTTPServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        if parts.path.startswith("/_registry/"):
            self._json(
                200,
                {
                    "name": unquote(parts.path.removeprefix("/_registry/")),
                    "dist-tags": {"latest": self.server.latest["npm"], "next": NEXT_RELEASE},
                    "time": {"created": "2026-01-05T10:00:00.000Z", **RELEASES},
                },
            )
            return
        if parts.path.startswith("/_pypi/pypi/") and parts.path.endswith("/json"):
            self._json(200, pypi_project(parts.path.split("/")[3], self.server.latest["pypi"]))
            return
        if parts.path == "/_simulator/state":
            self._json(200, self.server.fleet.state_counts())
            return
        if parts.path == "/v1/health":
            self._json(200, {"status": "ok", "version": "simulated"})
            return
        if parts.path == RELAY_PATH and self.headers.get("Upgrade", "").lower() == "websocket":
            self.server.relay.serve(
                self.connection,
                self.path,
                list(self.headers.items()),
                connection_id=query.get("connectionId", ""),
                authorised=self._authorised(),
            )
            self.close_connection = True
            return
        if parts.path.rstrip("/") == LIST_PATH:
            if not self._authorised():
                self._json(401, {"error": "Unauthorized: missing or invalid API key"})
                return
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
            if path == REGISTER_PATH:
                self._register(document)
            elif path == "/_simulator/faults":
                fleet.set_faults(Faults.from_json(document))
                self._json(200, {"ok": True})
            elif path == "/_simulator/silence":
                chosen = fleet.silence(ids=document.get("ids"), fraction=document.get("fraction"))
                self._json(200, {"silenced": chosen})
            elif path in ("/_simulator/stop", "/_simulator/hide"):
                machines = fleet.machines(document.get("ids", ()), document.get("names", ()))
                if not machines:
                    raise ValueError("no machine has these ids or names")
                if path.endswith("stop"):
                    self._json(200, {"last_heartbeat": fleet.stop(machines)})
                else:
                    fleet.hide(machines)
                    self._json(200, {"hidden": sorted({m.connection_name for m in machines})})
            else:
                self._json(404, {"error": "not found"})
        except RegistrationError as exc:
            self._json(exc.status, {"error": str(exc)})
        except (ValueError, TypeError) as exc:
            self._json(400, {"error": str(exc)})

    def _register(self, document: dict[str, Any]) -> None:
        """`POST /v1/environments/register`: a real listener's row, and where its relay is."""
        if not self._authorised():
            self._json(401, {"error": "Unauthorized: missing or invalid API key"})
            return
        listener = self.server.fleet.listeners.register(self._token(), document)
        host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
        log.info("simulator: %s registered as %s", listener.connection_name, listener.id)
        self._json(
            200,
            {
                "connectionId": listener.connection_id,
                "wsUrl": f"ws://{host}{RELAY_PATH}?connectionId={listener.connection_id}",
            },
        )

    def do_DELETE(self) -> None:
        path = urlsplit(self.path).path
        if path == "/_simulator/faults":
            self.server.fleet.set_faults(Faults())
        elif path == "/_simulator/silence":
            self.server.fleet.unsilence()
        elif path == "/_simulator/stop":
            self.server.fleet.start()
        elif path == "/_simulator/hide":
            self.server.fleet.unhide()
        else:
            self._json(404, {"error": "not found"})
            return
        self._json(200, {"ok": True})

    def _token(self) -> str:
        header = self.headers.get("Authorization", "")
        return header[7:] if header.startswith("Bearer ") else ""

    def _authorised(self) -> bool:
        token = self._token()
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
    lease_timeout: float | None = None,
    row_ttl: float | None = None,
    reregistration: ReRegistration = ReRegistration.SAME_ROW,
) -> SimulatorHTTPServer:
    """Serve a simulated fleet in a background thread; ``.url`` is its base URL."""
    fleet = SimulatedFleet(
        size=fleet_size,
        seed=seed,
        heartbeat_interval=heartbeat_interval,
        churn=churn,
        max_page_size=max_page_size,
        clock=clock,
        lease_timeout=lease_timeout,
        row_ttl=row_ttl,
        reregistration=reregistration,
    )
    server = SimulatorHTTPServer((host, port), fleet, api_key)
    threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="simulator", daemon=True
    ).start()
    return server


def main(argv: Sequence[str] | None = None) -> int:
    """`letta-environments-simulator`: serve a simulated Letta Environments API."""
    from exporter.units import parse_duration

    parser = argparse.ArgumentParser(
        prog="letta-environments-simulator",
        description="A simulated Letta Environments API: a synthetic fleet, and the platform "
        "side (registration, relay) that real Letta Code listeners connect to.",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="listen",
        default="127.0.0.1:8378",
        help="host:port of the API and the relay (default: %(default)s)",
    )
    parser.add_argument(
        "--fleet-size",
        type=int,
        default=200,
        help="synthetic environments; 0 lists only the listeners that register (default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=1, help="seed of the synthetic fleet (default: %(default)s)"
    )
    parser.add_argument("--api-key", default=None, help="accept only this key (default: any)")
    parser.add_argument(
        "--heartbeat-interval",
        default="30s",
        help="how often synthetic machines heartbeat and the relay pings (default: %(default)s)",
    )
    parser.add_argument(
        "--max-page-size",
        type=int,
        default=1000,
        help="most rows a list page holds, whatever `limit` asks (default: %(default)s)",
    )
    parser.add_argument(
        "--lease-timeout",
        default=None,
        help="silence after which the relay clears a lease (default: 4 heartbeat intervals)",
    )
    parser.add_argument(
        "--row-ttl",
        default=None,
        help="age after which an old row leaves the list (default: 120 heartbeat intervals)",
    )
    parser.add_argument(
        "--no-churn",
        dest="churn",
        action="store_false",
        help="keep every synthetic environment's state fixed",
    )
    parser.add_argument(
        "--reregister",
        choices=[rule.value for rule in ReRegistration],
        default=ReRegistration.SAME_ROW.value,
        help="what a listener registering again under the same device and name gets: its "
        "row again, or a new row (the real platform's rule is not documented; default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=["debug", "info", "warn", "error"],
        default="info",
        help="registrations and relay connections are logged at info (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper().replace("WARN", "WARNING"),
        format="ts=%(asctime)s level=%(levelname)s msg=%(message)r",
        stream=sys.stderr,
    )
    host, _, port = args.listen.rpartition(":")
    try:
        interval = parse_duration(args.heartbeat_interval)
        lease = parse_duration(args.lease_timeout) if args.lease_timeout else None
        ttl = parse_duration(args.row_ttl) if args.row_ttl else None
        server = start_simulator(
            host=host or "0.0.0.0",
            port=int(port),
            fleet_size=args.fleet_size,
            seed=args.seed,
            api_key=args.api_key,
            heartbeat_interval=interval,
            churn=args.churn,
            max_page_size=args.max_page_size,
            lease_timeout=lease,
            row_ttl=ttl,
            reregistration=ReRegistration(args.reregister),
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
