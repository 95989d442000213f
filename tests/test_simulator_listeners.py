"""The simulator's platform side for real listeners: registration, the relay WebSocket, leases,
and their rows in the list. The WebSocket peers here are the `websockets` library's client and a
raw socket that goes silent; the real Letta Code client is in test_letta_code.py."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from letta_simulator import SimulatorHTTPServer, start_simulator
from letta_simulator.listeners import ListenerRegistry, RegistrationError, ReRegistration, user_of
from tests.conftest import API_KEY, wait_until

AUTH = {"Authorization": f"Bearer {API_KEY}"}
LEASE_TIMEOUT = 1.0


@pytest.fixture
def platform() -> Iterator[SimulatorHTTPServer]:
    server = start_simulator(
        fleet_size=25,
        seed=5,
        api_key=API_KEY,
        churn=False,
        heartbeat_interval=0.25,
        lease_timeout=LEASE_TIMEOUT,
    )
    try:
        yield server
    finally:
        server.close()


def register(sim: SimulatorHTTPServer, name: str, device: str = "dev-1", **extra: Any) -> Any:
    body = {"deviceId": device, "connectionName": name, "metadata": {"os": "linux"}, **extra}
    response = httpx.post(f"{sim.url}/v1/environments/register", json=body, headers=AUTH)
    response.raise_for_status()
    return response.json()


def every_row(sim: SimulatorHTTPServer, limit: int = 7, **params: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after: str | None = None
    for _ in range(100):
        query = {"limit": str(limit), **params, **({"after": after} if after else {})}
        page = httpx.get(f"{sim.url}/v1/environments", params=query, headers=AUTH).json()
        rows += page["connections"]
        if not page["hasNextPage"]:
            return rows
        after = page["connections"][-1]["id"]
    raise AssertionError("more than 100 pages")


def row_of(sim: SimulatorHTTPServer, name: str) -> dict[str, Any]:
    (row,) = [r for r in every_row(sim, limit=1000) if r["connectionName"] == name]
    return row


def test_health_and_a_registration_answer_where_the_relay_is(platform: SimulatorHTTPServer) -> None:
    assert httpx.get(f"{platform.url}/v1/health").status_code == 200
    answer = register(platform, "box-1")
    assert answer["connectionId"].startswith("conn-")
    assert answer["wsUrl"].startswith(f"ws://{urlsplit(platform.url).netloc}/v1/environments/")
    row = row_of(platform, "box-1")
    # Registered, not yet connected: listed, offline, attributed to the key's owner.
    assert row["connectionId"] is None and row["connectedAt"] is None
    assert row["userId"] == row["apiKeyOwner"] == user_of(API_KEY)
    assert row["metadata"] == {"os": "linux"}


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, {"deviceId": "d", "connectionName": "n"}, 401),
        ({"Authorization": "Bearer wrong"}, {"deviceId": "d", "connectionName": "n"}, 401),
        (AUTH, {"connectionName": "n"}, 400),
        (AUTH, {"deviceId": "d", "connectionName": "x" * 300}, 400),
        (AUTH, {"deviceId": "d", "connectionName": "n", "metadata": [1]}, 400),
    ],
    ids=["no key", "wrong key", "no device", "name too long", "metadata not an object"],
)
def test_a_refused_registration_never_becomes_a_row(
    platform: SimulatorHTTPServer, headers: dict[str, str], body: dict[str, Any], status: int
) -> None:
    before = [r["id"] for r in every_row(platform)]
    response = httpx.post(f"{platform.url}/v1/environments/register", json=body, headers=headers)
    assert response.status_code == status, response.text
    assert [r["id"] for r in every_row(platform)] == before


@pytest.fixture
def long_leases() -> Iterator[SimulatorHTTPServer]:
    """A relay that waits a minute before it clears a silent lease: what clears one sooner is
    the socket's end."""
    server = start_simulator(
        fleet_size=0, api_key=API_KEY, heartbeat_interval=0.25, lease_timeout=60
    )
    try:
        yield server
    finally:
        server.close()


def test_the_socket_holds_the_lease_answers_pings_and_closing_it_clears_the_lease(
    long_leases: SimulatorHTTPServer,
) -> None:
    platform = long_leases
    answer = register(platform, "box-2")
    with connect(answer["wsUrl"], additional_headers=AUTH) as ws:
        row = wait_until(lambda: row_of(platform, "box-2")["connectionId"], 10, "the lease")
        assert row == answer["connectionId"]
        ws.send(json.dumps({"type": "ping"}))
        assert json.loads(ws.recv(timeout=5)) == {"type": "pong"}
        leased = row_of(platform, "box-2")
        # The client library answers the relay's pings: the heartbeat advances, the lease stays.
        wait_until(
            lambda: row_of(platform, "box-2")["lastHeartbeat"] > leased["lastHeartbeat"],
            5,
            "a newer heartbeat",
        )
        assert row_of(platform, "box-2")["connectedAt"] == leased["connectedAt"]
    wait_until(lambda: row_of(platform, "box-2")["connectionId"] is None, 10, "the lease cleared")
    # A second socket of the same connection takes the lease; the first one's end leaves it.
    url = answer["wsUrl"]
    with connect(url, additional_headers=AUTH) as first:
        held = wait_until(lambda: row_of(platform, "box-2")["connectedAt"], 10, "the lease")
        with connect(url, additional_headers=AUTH) as second:
            taken = wait_until(
                lambda: (at := row_of(platform, "box-2")["connectedAt"]) != held and at,
                10,
                "the second socket's lease",
            )
            first.close()
            second.send(json.dumps({"type": "ping"}))
            assert json.loads(second.recv(timeout=5)) == {"type": "pong"}
            assert row_of(platform, "box-2")["connectedAt"] == taken
    wait_until(lambda: row_of(platform, "box-2")["connectionId"] is None, 10, "cleared again")


def test_a_handshake_the_protocol_refuses_is_a_400(long_leases: SimulatorHTTPServer) -> None:
    answer = register(long_leases, "box-5")
    headers = {**AUTH, "X-Padding": "x" * 9000}  # http.server takes it; the protocol does not
    with pytest.raises(InvalidStatus) as refused:
        connect(answer["wsUrl"], additional_headers=headers)
    assert refused.value.response.status_code == 400


def test_the_cursor_faults_reach_registered_rows(long_leases: SimulatorHTTPServer) -> None:
    for index in range(3):
        register(long_leases, f"real-{index}", device=f"dev-{index}")
    first, *rest = every_row(long_leases, limit=1)
    httpx.post(f"{long_leases.url}/_simulator/faults", json={"duplicate_rows": True})
    query = {"limit": "1", "after": first["id"]}
    page = httpx.get(f"{long_leases.url}/v1/environments", params=query, headers=AUTH).json()
    assert [r["id"] for r in page["connections"]] == [first["id"], rest[0]["id"]]
    httpx.post(f"{long_leases.url}/_simulator/faults", json={"repeat_cursor": True})
    query = {"limit": "1", "after": rest[1]["id"]}
    page = httpx.get(f"{long_leases.url}/v1/environments", params=query, headers=AUTH).json()
    assert [r["id"] for r in page["connections"]] == [first["id"]] and page["hasNextPage"]


@pytest.mark.parametrize(
    ("token", "connection", "status"),
    [("wrong", None, 401), (API_KEY, "conn-unknown", 404)],
    ids=["wrong key", "unknown connection"],
)
def test_the_relay_refuses_a_wrong_key_and_an_unknown_connection(
    platform: SimulatorHTTPServer, token: str, connection: str | None, status: int
) -> None:
    answer = register(platform, "box-3")
    url = answer["wsUrl"]
    if connection:
        url = url.replace(answer["connectionId"], connection)
    with pytest.raises(InvalidStatus) as refused:
        connect(url, additional_headers={"Authorization": f"Bearer {token}"})
    assert refused.value.response.status_code == status
    assert row_of(platform, "box-3")["connectionId"] is None


def test_a_silent_socket_loses_its_lease_after_the_timeout(platform: SimulatorHTTPServer) -> None:
    """A raw socket that completes the handshake, then never answers: a frozen process."""
    answer = register(platform, "box-4")
    parts = urlsplit(answer["wsUrl"])
    with socket.create_connection((parts.hostname, parts.port)) as sock:
        sock.sendall(
            (
                f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                f"Authorization: Bearer {API_KEY}\r\n\r\n"
            ).encode()
        )
        assert sock.recv(12) == b"HTTP/1.1 101"
        leased = wait_until(lambda: row_of(platform, "box-4")["connectedAt"], 10, "the lease")
        wait_until(lambda: row_of(platform, "box-4")["connectionId"] is None, 10, "lease cleared")
        # Not before the timeout: the lease began at `connectedAt`, its only heartbeat.
        assert time.time() - leased / 1000 >= LEASE_TIMEOUT
        assert row_of(platform, "box-4")["lastHeartbeat"] == leased  # it never beat again
        sock.settimeout(5)
        received = b""
        while chunk := sock.recv(4096):  # the relay closes the socket after its close frame
            received += chunk
        assert b"lease timed out" in received


def test_registered_rows_page_with_the_synthetic_fleet_and_its_filters(
    platform: SimulatorHTTPServer,
) -> None:
    synthetic = every_row(platform, limit=1000)
    for index in range(9):
        register(platform, f"real-{index}", device=f"dev-{index}")
    rows = every_row(platform, limit=4)
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == len(ids) == len(synthetic) + 9
    mine = every_row(platform, userId=user_of(API_KEY))
    assert sorted(r["connectionName"] for r in mine) == [f"real-{i}" for i in range(9)]
    assert {r["connectionName"] for r in every_row(platform, source="remote")}.isdisjoint(
        {f"real-{i}" for i in range(9)}
    )
    assert all(r["connectionId"] for r in every_row(platform, onlineOnly="true"))
    # The fault switches reach registered rows too.
    httpx.post(f"{platform.url}/_simulator/faults", json={"extra_fields": True})
    assert all(r["currentMode"] == "yolo-2027" for r in every_row(platform, limit=1000))
    httpx.delete(f"{platform.url}/_simulator/faults")
    state = httpx.get(f"{platform.url}/_simulator/state").json()
    assert len(state["listeners"]) == 9


def test_a_fleet_of_size_zero_lists_only_what_registered() -> None:
    sim = start_simulator(fleet_size=0, api_key=API_KEY)
    try:
        assert every_row(sim) == []
        register(sim, "only-one")
        assert [r["connectionName"] for r in every_row(sim)] == ["only-one"]
    finally:
        sim.close()


# --- the registry's rules, on a clock of the test's own ---------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("rule", list(ReRegistration), ids=[r.value for r in ReRegistration])
def test_registering_again_follows_the_chosen_rule(rule: ReRegistration) -> None:
    clock = Clock()
    registry = ListenerRegistry(lease_timeout=3, row_ttl=60, reregistration=rule, clock=clock)
    body = {"deviceId": "dev", "connectionName": "box"}
    first = registry.register("key", body)
    old_lease = registry.connect(first.connection_id)
    assert old_lease is not None
    clock.now += 1
    second = registry.register("key", body)
    assert second.connection_id != first.connection_id
    # The old connection no longer holds a lease; the new one can take it.
    assert not registry.heartbeat(old_lease)
    assert registry.connect(first.connection_id) is None
    new_lease = registry.connect(second.connection_id)
    assert new_lease is not None
    rows = registry.rows()
    if rule is ReRegistration.SAME_ROW:
        assert [r.id for r in rows] == [first.id] and rows[0].first_seen == first.first_seen
    else:
        assert {r.id for r in rows} == {first.id, second.id}
        clock.now += 61  # the replaced row ages out; the newest row stays whatever its age
        assert registry.heartbeat(new_lease) is False  # silent too long: cleared
        assert [r.id for r in registry.rows()] == [second.id]
    # Another key's owner registering the same device and name is another machine's row.
    assert registry.register("other", body).user_id == user_of("other")


def test_a_lease_is_cleared_after_the_timeout_without_a_heartbeat() -> None:
    clock = Clock()
    registry = ListenerRegistry(lease_timeout=3, row_ttl=60, clock=clock)
    listener = registry.register("key", {"deviceId": "d", "connectionName": "n"})
    lease = registry.connect(listener.connection_id)
    assert lease is not None
    clock.now += 2.9
    assert registry.heartbeat(lease)
    clock.now += 2.9
    assert registry.rows()[0].connected_at is not None
    clock.now += 0.2
    assert registry.rows()[0].connected_at is None


def test_a_socket_that_reconnects_takes_the_lease_and_the_old_ones_end_leaves_it() -> None:
    """A listener reconnects with the same connectionId while its old socket is still open
    (a half-open connection): the new socket holds the lease; the old one's heartbeats and its
    end change nothing."""
    clock = Clock()
    registry = ListenerRegistry(lease_timeout=120, clock=clock)
    listener = registry.register("key", {"deviceId": "d", "connectionName": "n"})
    old = registry.connect(listener.connection_id)
    clock.now += 90
    new = registry.connect(listener.connection_id)
    assert old is not None and new is not None and old != new
    assert not registry.heartbeat(old)
    registry.disconnect(old)
    (row,) = registry.rows()
    assert row.connected_at == clock.now and registry.heartbeat(new)
    registry.disconnect(new)
    assert registry.rows()[0].connected_at is None


def test_registered_in_the_same_instant_the_replaced_row_still_ages_out() -> None:
    clock = Clock()
    registry = ListenerRegistry(row_ttl=60, reregistration=ReRegistration.NEW_ROW, clock=clock)
    body = {"deviceId": "d", "connectionName": "n"}
    registry.register("key", body)
    newest = registry.register("key", body)  # the same clock reading
    clock.now += 61
    assert [r.id for r in registry.rows()] == [newest.id]


def test_the_registry_is_bounded() -> None:
    registry = ListenerRegistry(max_listeners=2)
    for index in range(2):
        registry.register("key", {"deviceId": f"d{index}", "connectionName": "n"})
    with pytest.raises(RegistrationError) as full:
        registry.register("key", {"deviceId": "d9", "connectionName": "n"})
    assert full.value.status == 503
