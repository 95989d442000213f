"""The platform's side of real Letta Code listeners: registration and the rows they become.

A listener (`letta server --env-name NAME`) registers with `POST /v1/environments/register`,
then opens the relay's WebSocket with the `connectionId` it was given. The socket holds the
row's lease (`connectionId`, `connectedAt`, `podId`); every ping and pong on it refreshes
`lastHeartbeat`. The lease is cleared when the socket closes, or after `lease_timeout` of
silence. What the real platform does when a listener registers again under the same device
and name is not documented: `ReRegistration` names the two rules the simulator can follow.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from exporter import clock as clocks

MAX_LISTENERS = 10_000  # rows of registered listeners the simulator keeps at most
_MAX_TEXT = 256  # longest device id or connection name taken


class ReRegistration(StrEnum):
    """What a second registration of the same device and connection name does."""

    SAME_ROW = "same-row"
    """The row is reused: same `id`, a new `connectionId` (what the stable listener id suggests)."""
    NEW_ROW = "new-row"
    """A new row `id`; the old row stays, offline, until it ages out (as the synthetic fleet's
    machines often do)."""


class RegistrationError(ValueError):
    """A registration the platform refuses, with the HTTP status it answers."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Listener:
    """One registered row, as of its last change; its state comes from its lease and the clock."""

    id: str
    device_id: str
    connection_name: str
    user_id: str
    metadata: dict[str, Any] | None
    first_seen: float
    registered: float
    connection_id: str
    """The connection id of the newest registration: the one the relay accepts (empty once
    a newer row replaced this one)."""
    connected_at: float | None = None
    """When the socket holding the lease opened; None while no socket holds it."""
    last_heartbeat: float | None = None
    lease: int = 0
    """Which socket holds the lease (0: none): a listener that reconnects with the same
    `connectionId` takes the lease over, and the old socket's end no longer clears it."""

    @property
    def replaced(self) -> bool:
        """A newer row of the same device and name took this one's place (`new-row`)."""
        return not self.connection_id


def user_of(api_key: str) -> str:
    """The user an API key belongs to, stable for the key (the platform knows it; we derive it)."""
    return "user-" + hashlib.sha256(api_key.encode()).hexdigest()[:12]


def _text(document: dict[str, Any], key: str) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise RegistrationError(400, f"{key} must be a non-empty string of at most 256 characters")
    return value


@dataclass
class ListenerRegistry:
    """Registered listeners and their leases; every method is safe to call from several threads."""

    lease_timeout: float = 120.0
    row_ttl: float = 3600.0
    reregistration: ReRegistration = ReRegistration.SAME_ROW
    clock: Callable[[], float] = clocks.wall_clock
    max_listeners: int = MAX_LISTENERS
    _rows: dict[str, Listener] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _leases: int = 0

    def register(self, api_key: str, document: dict[str, Any]) -> Listener:
        """A listener's `POST /v1/environments/register` body -> its row, with a new
        connection id. The lease is taken when the socket opens, not here."""
        device_id = _text(document, "deviceId")
        name = _text(document, "connectionName")
        metadata = document.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise RegistrationError(400, "metadata must be an object")
        now = self.clock()
        connection_id = f"conn-{uuid.uuid4()}"
        user = user_of(api_key)
        with self._lock:
            self._expire(now)
            same = [
                row
                for row in self._rows.values()
                if (row.device_id, row.connection_name, row.user_id) == (device_id, name, user)
            ]
            if same and self.reregistration is ReRegistration.SAME_ROW:
                row = replace(
                    next(r for r in same if not r.replaced),
                    metadata=metadata,
                    registered=now,
                    connection_id=connection_id,
                    connected_at=None,
                    lease=0,
                )
            else:
                if len(self._rows) >= self.max_listeners:
                    raise RegistrationError(503, "the simulator holds its most listeners")
                row = Listener(
                    id=f"env-{uuid.uuid4().hex[:16]}",
                    device_id=device_id,
                    connection_name=name,
                    user_id=user,
                    metadata=metadata,
                    first_seen=now,
                    registered=now,
                    connection_id=connection_id,
                )
                for old in same:  # a newer row replaces them: their leases and connections end
                    self._rows[old.id] = replace(old, connected_at=None, lease=0, connection_id="")
            self._rows[row.id] = row
            return row

    def connect(self, connection_id: str) -> int | None:
        """A socket of ``connection_id`` opened: its row's lease is this socket's (returned),
        whichever socket held it before. None when no row's newest registration has that id."""
        now = self.clock()
        with self._lock:
            for row in self._rows.values():
                if connection_id and row.connection_id == connection_id:
                    self._leases += 1
                    self._rows[row.id] = replace(
                        row, connected_at=now, last_heartbeat=now, lease=self._leases
                    )
                    return self._leases
        return None

    def heartbeat(self, lease: int) -> bool:
        """A ping or pong on the socket holding ``lease`` arrived; False once the lease is
        gone (timed out, taken over by a newer socket, or its row registered again)."""
        now = self.clock()
        with self._lock:
            row = self._holding(lease)
            if row is None:
                return False
            beat = row.last_heartbeat if row.last_heartbeat is not None else now
            if now - beat > self.lease_timeout:  # too late: the lease was lost
                self._rows[row.id] = replace(row, connected_at=None, lease=0)
                return False
            self._rows[row.id] = replace(row, last_heartbeat=now)
            return True

    def disconnect(self, lease: int) -> None:
        """The socket holding ``lease`` closed or fell silent: the lease is cleared, unless
        another socket took it over."""
        with self._lock:
            row = self._holding(lease)
            if row is not None:
                self._rows[row.id] = replace(row, connected_at=None, lease=0)

    def _holding(self, lease: int) -> Listener | None:
        return next((r for r in self._rows.values() if lease and r.lease == lease), None)

    def rows(self) -> list[Listener]:
        """Every listed row, by id (the cursor order), silent leases cleared as of now."""
        now = self.clock()
        with self._lock:
            self._expire(now)
            return sorted(self._rows.values(), key=lambda r: r.id)

    def _expire(self, now: float) -> None:
        """Clear the leases silent for longer than the lease timeout; drop replaced rows past
        their ttl (the newest row of a device and name stays, however old)."""
        for row in list(self._rows.values()):
            beat = row.last_heartbeat if row.last_heartbeat is not None else row.registered
            if row.connected_at is not None and now - beat > self.lease_timeout:
                self._rows[row.id] = row = replace(row, connected_at=None, lease=0)
            if row.replaced and now - beat > self.row_ttl:
                del self._rows[row.id]
