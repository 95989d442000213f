"""The simulator speaks the real API: the official SDK pages through it; its switches work."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from letta_client import Letta

from letta_simulator import SimulatedFleet, SimulatorHTTPServer, start_simulator
from letta_simulator.schema import EnvironmentListResponse
from tests.conftest import API_KEY


def _all_ids(sdk: Letta, **params: str) -> list[str]:
    ids: list[str] = []
    after: str | None = None
    while True:
        kwargs = dict(params)
        if after is not None:
            kwargs["after"] = after
        page = sdk.environments.list(**kwargs)  # type: ignore[arg-type]
        ids.extend(c.id for c in page.connections)
        if not page.has_next_page:
            return ids
        after = page.connections[-1].id


@pytest.fixture
def sdk(simulator: SimulatorHTTPServer) -> Iterator[Letta]:
    client = Letta(api_key=API_KEY, base_url=simulator.url, max_retries=0)
    try:
        yield client
    finally:
        client.close()


def test_the_official_sdk_pages_through_the_whole_fleet(
    sdk: Letta, simulator: SimulatorHTTPServer
) -> None:
    ids = _all_ids(sdk, limit="7")
    assert ids == sorted(ids) and len(ids) == len(set(ids)) == 60
    assert ids == [spec.id for spec in simulator.fleet.specs]


def test_sdk_models_and_ours_agree_on_every_row() -> None:
    # A still clock: the two requests below must see the very same heartbeats.
    server = start_simulator(fleet_size=60, seed=3, api_key=API_KEY, clock=lambda: 1.8e9)
    sdk = Letta(api_key=API_KEY, base_url=server.url, max_retries=0)
    try:
        _compare_sdk_and_ours(sdk)
    finally:
        sdk.close()
        server.close()


def _compare_sdk_and_ours(sdk: Letta) -> None:
    page = sdk.environments.list(limit="60")
    raw = sdk.environments.with_raw_response.list(limit="60")
    ours = EnvironmentListResponse.model_validate_json(raw.http_response.content)
    assert [c.id for c in page.connections] == [c.id for c in ours.connections]
    for theirs, mine in zip(page.connections, ours.connections, strict=True):
        assert theirs.connection_id == mine.connection_id
        assert theirs.last_heartbeat == mine.last_heartbeat
        assert theirs.current_mode == mine.current_mode


def test_sdk_filters_reach_the_simulator(sdk: Letta, simulator: SimulatorHTTPServer) -> None:
    online = _all_ids(sdk, online_only="true", limit="10")
    assert set(online) <= {s.id for s in simulator.fleet.specs}
    states = simulator.fleet.state_counts()
    assert len(online) == states["online"]
    remote = _all_ids(sdk, source="remote")
    assert remote == [s.id for s in simulator.fleet.specs if s.source == "remote"]
    user = simulator.fleet.specs[0].user_id or "user-0000"
    assert _all_ids(sdk, user_id=user) == [s.id for s in simulator.fleet.specs if s.user_id == user]


def test_requests_without_the_key_are_refused(simulator: SimulatorHTTPServer) -> None:
    assert httpx.get(f"{simulator.url}/v1/environments").status_code == 401
    wrong = httpx.get(f"{simulator.url}/v1/environments", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401


def _get(url: str, **params: str) -> httpx.Response:
    return httpx.get(
        f"{url}/v1/environments", params=params, headers={"Authorization": f"Bearer {API_KEY}"}
    )


def test_the_fleet_mixes_states_modes_oses_and_versions() -> None:
    now = [1_800_000_000.0]  # a fixed clock: the fleet's state is a function of it
    fleet = SimulatedFleet(size=400, seed=11, heartbeat_interval=30.0, clock=lambda: now[0])
    rows = [fleet.row(spec, fleet.clock())[0] for spec in fleet.specs]
    modes = {r.get("currentMode") for r in rows}
    assert {
        "standard",
        "default",
        "bypassPermissions",
        "unrestricted",
        "acceptEdits",
        "strict",
        None,
    } <= modes
    oses = {(r.get("metadata") or {}).get("os") for r in rows}
    assert {"darwin", "linux", "win32", None} <= oses
    versions = {(r.get("metadata") or {}).get("lettaCodeVersion") for r in rows}
    assert any(v and "-next" in v for v in versions) and len(versions) >= 5
    stale = 0
    for _ in range(12):  # two hours: stuck leases are rare, so look at several moments
        now[0] += 600
        states = fleet.state_counts()
        assert states["online"] > states["offline"] > states["stale"]
        stale += states["stale"]
    assert stale > 0
    devices = [r["deviceId"] for r in rows]
    assert len(set(devices)) < len(devices)  # some devices run several environments


def test_heartbeats_advance_and_environments_come_and_go() -> None:
    now = [1_800_000_000.0]
    fleet = SimulatedFleet(size=200, seed=5, heartbeat_interval=30.0, clock=lambda: now[0])
    before = {s.id: fleet.row(s, now[0]) for s in fleet.specs}
    now[0] += 1800
    after = {s.id: fleet.row(s, now[0]) for s in fleet.specs}
    changed = [i for i in before if before[i][1] != after[i][1]]
    assert changed, "no environment changed state in half an hour"
    online_both = [i for i in before if before[i][1] == after[i][1] == "online"]
    assert all(after[i][0]["lastHeartbeat"] > before[i][0]["lastHeartbeat"] for i in online_both)


def test_silence_makes_environments_stale_and_release_restores_them() -> None:
    now = [1_800_000_000.0]
    fleet = SimulatedFleet(
        size=50, seed=2, heartbeat_interval=1.0, churn=False, clock=lambda: now[0]
    )
    connected = fleet.state_counts()["online"]
    chosen = fleet.silence(fraction=0.2)
    assert len(chosen) == round(0.2 * connected)
    now[0] += 10
    rows = {s.id: fleet.row(s, now[0]) for s in fleet.specs}
    assert all(rows[i][1] == "stale" and rows[i][0]["connectionId"] for i in chosen)
    assert all(now[0] * 1000 - rows[i][0]["lastHeartbeat"] >= 10_000 for i in chosen)
    fleet.unsilence()
    assert all(fleet.row(s, now[0])[1] == "online" for s in fleet.specs if s.id in chosen)


def test_fault_switches_over_http(simulator: SimulatorHTTPServer) -> None:
    url = simulator.url
    httpx.post(f"{url}/_simulator/faults", json={"status": 429, "count": 2, "retry_after": "3"})
    first, second, third = (_get(url) for _ in range(3))
    assert (first.status_code, second.status_code, third.status_code) == (429, 429, 200)
    assert first.headers["retry-after"] == "3"
    httpx.post(f"{url}/_simulator/faults", json={"non_json": True})
    assert _get(url).text.startswith("<html>")
    httpx.post(f"{url}/_simulator/faults", json={"invalid_rows": 2})
    rows = _get(url, limit="5").json()["connections"]
    assert [r["lastSeenAt"] for r in rows[:2]] == ["yesterday", "yesterday"]
    httpx.delete(f"{url}/_simulator/faults")
    assert _get(url).status_code == 200
    bad = httpx.post(f"{url}/_simulator/faults", json={"explode": True})
    assert bad.status_code == 400 and "unknown fault" in bad.json()["error"]


def test_truncated_bodies_end_the_connection_early(simulator: SimulatorHTTPServer) -> None:
    httpx.post(f"{simulator.url}/_simulator/faults", json={"truncate": True, "count": 1})
    with pytest.raises(httpx.RemoteProtocolError):
        _get(simulator.url)
    assert _get(simulator.url).status_code == 200


def test_pagination_faults(simulator: SimulatorHTTPServer) -> None:
    url = simulator.url
    first = _get(url, limit="5").json()
    cursor = first["connections"][-1]["id"]
    httpx.post(f"{url}/_simulator/faults", json={"empty_pages": True})
    assert _get(url, limit="5", after=cursor).json() == {"connections": [], "hasNextPage": True}
    httpx.post(f"{url}/_simulator/faults", json={"duplicate_rows": True})
    dup = _get(url, limit="5", after=cursor).json()["connections"]
    assert dup[0]["id"] == cursor
    httpx.post(f"{url}/_simulator/faults", json={"repeat_cursor": True})
    again = _get(url, limit="5", after=cursor).json()
    assert again["hasNextPage"] and again["connections"][0]["id"] == first["connections"][0]["id"]


def test_state_endpoint_and_page_size_cap() -> None:
    server = start_simulator(fleet_size=30, seed=9, max_page_size=4, churn=False)
    try:
        page = httpx.get(
            f"{server.url}/v1/environments",
            params={"limit": "100"},
            headers={"Authorization": "Bearer any"},
        ).json()
        assert len(page["connections"]) == 4 and page["hasNextPage"]
        state = httpx.get(f"{server.url}/_simulator/state").json()
        assert state["online"] + state["stale"] + state["offline"] == 30
    finally:
        server.close()


# --- the relay's behaviour ------------------------------------------------------------------


def _all_rows(fleet: SimulatedFleet, now: float) -> list[dict[str, object]]:
    return [row for spec in fleet.specs for row, _ in fleet.rows(spec, now)]


def test_a_dead_machine_loses_its_lease_after_the_relay_timeout_and_returns_as_a_new_row() -> None:
    now = [1_800_000_000.0]
    fleet = SimulatedFleet(
        size=20,
        seed=4,
        heartbeat_interval=30.0,
        churn=False,
        clock=lambda: now[0],
        row_ttl=3600.0,
    )
    spec = next(s for s in fleet.specs if not s.never_connected)
    last = fleet.stop(fleet.machines(names=[spec.connection_name]))[spec.connection_name]
    assert now[0] - 30 < last <= now[0]  # its last regular heartbeat
    now[0] = last + 119  # the relay has not given up yet: still leased, heartbeat old
    row, state = fleet.row(spec, now[0])
    assert row["connectionId"] and row["lastHeartbeat"] == int(last * 1000)
    assert state == "online"
    now[0] = last + 121  # ~120 s of silence: the lease is cleared
    row, state = fleet.row(spec, now[0])
    assert (row["connectionId"], row["connectedAt"], state) == (None, None, "offline")
    assert row["id"] == spec.id

    fleet.start()  # it comes back under a new row; the old one stays, offline
    (old, old_state), (new, new_state) = fleet.rows(spec, now[0])
    assert (old["id"], old_state) == (spec.id, "offline")
    assert new["id"] != spec.id and str(new["id"]).startswith(spec.id)
    assert new_state == "online" and new["connectionName"] == spec.connection_name
    now[0] += 3601  # the old row ages out
    assert [r["id"] for r, _ in fleet.rows(spec, now[0])] == [new["id"]]


def test_a_churning_fleet_drops_leases_on_time_gets_some_stuck_and_re_registers() -> None:
    now = [1_800_000_000.0]
    hb = 30.0
    fleet = SimulatedFleet(size=300, seed=8, heartbeat_interval=hb, clock=lambda: now[0])
    lease_timeout, ttl = 4 * hb, 120 * hb
    seen_new_rows = stale = leased_and_silent = 0
    for _ in range(48):  # 8 hours, every 10 minutes
        now[0] += 600
        for spec in fleet.specs:
            rows = fleet.rows(spec, now[0])
            assert [r["id"] for r, _ in rows] == sorted(r["id"] for r, _ in rows)
            assert sum(1 for _, state in rows if state != "offline") <= 1  # one live row
            for row, state in rows:
                beat = row["lastHeartbeat"]
                age = None if beat is None else now[0] - beat / 1000
                if state == "stale":
                    stale += 1
                elif state == "online":
                    assert age is not None and age < lease_timeout
                    leased_and_silent += age > hb
                else:
                    assert row["connectionId"] is None
                    assert age is None or age >= lease_timeout or row is not rows[-1][0]
                    assert age is None or age <= ttl + spec.period  # old rows age out
            seen_new_rows += sum(1 for r, _ in rows if len(str(r["id"])) > len(spec.id))
    assert seen_new_rows > 0, "no machine re-registered under a new row id"
    assert leased_and_silent > 0, "no machine was seen dead before the relay noticed"
    online = sum(1 for spec in fleet.specs for _, s in fleet.rows(spec, now[0]) if s == "online")
    assert 0 < stale < online * 48 * 0.1, "stuck leases should be real, but rare"


def test_the_official_sdk_pages_through_several_rows_per_machine() -> None:
    clock = 1_800_000_000.0
    server = start_simulator(fleet_size=80, seed=6, api_key=API_KEY, clock=lambda: clock)
    fleet = server.fleet
    for spec in fleet.specs[:10]:  # ten machines restarted: two rows each
        fleet.stop([spec])
    fleet.start()
    sdk = Letta(api_key=API_KEY, base_url=server.url, max_retries=0)
    try:
        ids = _all_ids(sdk, limit="7")
    finally:
        sdk.close()
        server.close()
    expected = [row["id"] for row in _all_rows(fleet, clock)]
    assert len(expected) >= 90
    assert ids == expected == sorted(expected) and len(set(ids)) == len(ids)


def test_hidden_machines_vanish_from_the_list_and_come_back(
    simulator: SimulatorHTTPServer,
) -> None:
    url = simulator.url
    name = simulator.fleet.specs[0].connection_name
    assert httpx.post(f"{url}/_simulator/hide", json={"names": [name]}).status_code == 200
    names = {r["connectionName"] for r in _get(url, limit="100").json()["connections"]}
    assert name not in names and len(names) >= 50
    assert httpx.get(f"{url}/_simulator/state").json()["hidden"] == [simulator.fleet.specs[0].id]
    httpx.delete(f"{url}/_simulator/hide")
    names = {r["connectionName"] for r in _get(url, limit="100").json()["connections"]}
    assert name in names
    missing = httpx.post(f"{url}/_simulator/stop", json={"names": ["no-such-machine"]})
    assert missing.status_code == 400


def test_the_fleet_has_desktops_sandboxes_containers_and_machine_facts_from_0_34_on() -> None:
    fleet = SimulatedFleet(size=600, seed=12, heartbeat_interval=30.0, churn=False)
    rows = [row for row, _ in (fleet.row(spec, fleet.clock()) for spec in fleet.specs)]
    devices = [str(r["deviceId"]) for r in rows]
    assert any(d.startswith("desktop:") for d in devices)
    assert any(d.startswith("sandbox-") for d in devices)
    machines = []
    for row in rows:
        metadata = row.get("metadata") or {}
        assert isinstance(metadata, dict)
        version = str(metadata.get("lettaCodeVersion") or "")
        if "machine" in metadata:
            assert version.startswith(("0.34.", "0.35.")), version
            machines.append(metadata["machine"])
        elif version.startswith(("0.34.", "0.35.")):
            pytest.fail(f"a {version} client without metadata.machine")
    assert {m.get("architecture") for m in machines} >= {"x64", "arm64"}
    assert any(m.get("model") == "Container" for m in machines)
    names = {m.get("osName") for m in machines}
    assert {"macOS", "Ubuntu", "Debian GNU/Linux"} <= names
    assert any(str(n).startswith("Microsoft Windows") for n in names)
    assert len({m.get("osVersion") for m in machines if m.get("osName") == "macOS"}) >= 2
    reasons = {((r.get("metadata") or {}).get("self_update") or {}).get("reason") for r in rows}
    assert "This Letta Code runtime is managed by a Python package installer." in reasons
