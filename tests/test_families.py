"""Fleet families as pure functions of a snapshot: states, labels, counts, caps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from exporter.fleet import STATES, classify, latest_version, normalise_mode, os_version_label, view
from exporter.models import Connection
from exporter.rendering import render_fleet
from exporter.snapshot import Environment, SnapshotBuilder
from tests.conftest import render_options
from tests.fleet import (
    FIXTURE_TIME,
    fixture_snapshot,
    samples_by_name,
    snapshot_from,
    total,
    upstream_row,
)

T_MS = int(FIXTURE_TIME * 1000)


def _connection(**overrides: Any) -> Connection:
    """A leased row whose heartbeat arrived as its page did, with ``overrides``."""
    fresh = {"connectedAt": T_MS, "connectionId": "c", "lastHeartbeat": T_MS, "lastSeenAt": T_MS}
    row = upstream_row(**{**fresh, **overrides})
    return Connection.model_validate_json(json.dumps(row))


def _environment(**overrides: Any) -> Environment:
    builder = SnapshotBuilder()
    builder.add(FIXTURE_TIME, (_connection(**overrides),), 0)
    ((environment, _),) = builder.build(FIXTURE_TIME).observations()
    return environment


@pytest.mark.parametrize(
    ("overrides", "state"),
    [
        ({}, "online"),
        ({"lastHeartbeat": T_MS - 119_999}, "online"),
        ({"lastHeartbeat": T_MS - 120_000}, "stale"),
        ({"lastHeartbeat": None}, "stale"),
        ({"lastHeartbeat": T_MS + 3_600_000}, "online"),  # clock skew: from the future
        ({"connectionId": None}, "offline"),
        ({"connectionId": None, "lastHeartbeat": T_MS}, "offline"),
    ],
)
def test_state_is_judged_at_fetch_time(overrides: dict[str, Any], state: str) -> None:
    assert classify(_environment(**overrides), FIXTURE_TIME, 120.0) == state


@pytest.mark.parametrize(
    ("raw", "mode"),
    [
        ("default", "standard"),
        ("bypassPermissions", "unrestricted"),
        ("fullAccess", "unrestricted"),
        ("standard", "standard"),
        ("acceptEdits", "acceptEdits"),
        ("strict", "strict"),
        ("plan", "plan"),
        (None, "unknown"),
        ("", "unknown"),
        ("x" * 500, "x" * 64),
    ],
)
def test_modes_are_normalised_and_unknown_ones_pass_through_bounded(
    raw: str | None, mode: str
) -> None:
    assert normalise_mode(raw) == mode


def test_fixture_fleet_counts() -> None:
    s = samples_by_name(render_fleet(fixture_snapshot(), render_options()).text)
    envs = s["letta_environments"]
    assert total(envs) == 8  # the ninth row is invalid and never counted
    assert total(envs, state="online") == 4  # a, b, f (119 s) and g (future heartbeat)
    assert total(envs, state="stale") == 3  # c (400 s), d (no heartbeat), h (121 s)
    assert total(envs, state="offline") == 1
    assert total(envs, mode="standard") == 2  # a and b ("default")
    assert total(envs, mode="unrestricted") == 2  # c ("bypassPermissions") and h
    assert total(envs, mode="unknown", os="unknown", version="unknown") == 1  # d
    assert total(envs, mode="plan", os="freebsd", version="weird-build") == 1
    assert s["letta_environments_latest_version_info"] == [
        ({"version": "0.32.18", "source": "observed"}, 1.0)
    ]
    outdated = {st: total(s["letta_environments_outdated"], state=st) for st in STATES}
    # b (0.32.17) online, c (0.32.18-next.1: a prerelease is older) stale, e (0.29.0) offline;
    # f's unparseable and d's unknown versions never count.
    assert outdated == {"online": 1.0, "stale": 1.0, "offline": 1.0}
    gaps = {(lb["state"], lb["behind"]): v for lb, v in s["letta_environments_outdated"] if v}
    assert gaps == {("online", "patch"): 1, ("stale", "prerelease"): 1, ("offline", "minor"): 1}
    assert len(s["letta_environments_outdated"]) == 12  # every state x behind, zeros included
    updates = {
        (lb["supported"], lb["writable"]): v for lb, v in s["letta_environments_self_update"]
    }
    assert updates == {
        ("true", "true"): 1,
        ("true", "false"): 1,
        ("false", "true"): 1,
        ("false", "false"): 1,
        ("unknown", "unknown"): 3,
    }
    assert sum(updates.values()) == 7  # connected only: e is offline


def test_heartbeat_histogram_covers_connected_environments_with_a_heartbeat() -> None:
    s = samples_by_name(render_fleet(fixture_snapshot(), render_options()).text)
    buckets = {lb["le"]: v for lb, v in s["letta_environments_heartbeat_age_seconds_bucket"]}
    # Ages: a 10, b 45, c 400, f 119, g 0 (future, clamped), h 121; d has none, e offline.
    assert buckets["15.0"] == 2
    assert buckets["60.0"] == 3
    assert buckets["120.0"] == 4
    assert buckets["300.0"] == 5
    assert buckets["600.0"] == 6
    assert buckets["+Inf"] == 6
    assert s["letta_environments_heartbeat_age_seconds_count"] == [({}, 6.0)]
    assert s["letta_environments_heartbeat_age_seconds_sum"] == [({}, 695.0)]


def test_heartbeat_buckets_are_configurable() -> None:
    s = samples_by_name(
        render_fleet(fixture_snapshot(), render_options(heartbeat_buckets=(60.0, 600.0))).text
    )
    les = [lb["le"] for lb, _ in s["letta_environments_heartbeat_age_seconds_bucket"]]
    assert les == ["60.0", "600.0", "+Inf"]


def test_per_environment_series_omit_null_timestamps() -> None:
    s = samples_by_name(render_fleet(fixture_snapshot(), render_options()).text)
    info = {lb["environment_id"]: lb for lb, _ in s["letta_environment_info"]}
    assert len(info) == 8
    assert info["env-a"] == {
        "environment_id": "env-a",
        "device_id": "dev-a",
        "connection_name": "host-a",
        "os": "darwin",
        "mode": "standard",
        "version": "0.32.18",
        "node_version": "v22.11.0",
        "user_id": "user-1",
        "runtime": "host",
        "arch": "arm64",
        "os_name": "macOS",
        "os_version": "15.1",
    }
    assert info["env-g"]["connection_name"] == 'quote " back \\ new\nline {brace} \U0001f600'
    connected = {lb["environment_id"]: v for lb, v in s["letta_environment_connected"]}
    assert connected["env-e"] == 0
    assert connected["env-a"] == 1
    heartbeats = {
        lb["environment_id"] for lb, _ in s["letta_environment_last_heartbeat_timestamp_seconds"]
    }
    assert "env-d" not in heartbeats
    assert len(heartbeats) == 7
    leases = {
        lb["environment_id"]: v for lb, v in s["letta_environment_connected_timestamp_seconds"]
    }
    assert "env-e" not in leases
    assert leases["env-a"] == FIXTURE_TIME - 3600


def test_private_labels_are_absent_unless_allowed() -> None:
    plain = render_fleet(fixture_snapshot(), render_options()).text
    assert b"secret-project" not in plain
    assert b"secret-feature" not in plain
    allowed = render_fleet(
        fixture_snapshot(),
        render_options(environment_extra_labels=("working_directory", "git_branch")),
    ).text
    info = {
        lb["environment_id"]: lb for lb, _ in samples_by_name(allowed)["letta_environment_info"]
    }
    assert info["env-a"]["working_directory"] == "/Users/alice/src/secret-project"
    assert info["env-a"]["git_branch"] == "alice/secret-feature"


def test_the_environment_collector_can_be_turned_off() -> None:
    text = render_fleet(fixture_snapshot(), render_options(collector_environment=False)).text
    assert b"letta_environment_" not in text
    assert b"letta_environments{" in text


def test_the_cap_keeps_connected_environments_first_and_counts_the_rest() -> None:
    rendered = render_fleet(fixture_snapshot(), render_options(environment_max=3))
    assert rendered.dropped_environments == 5
    ids = {
        lb["environment_id"] for lb, _ in samples_by_name(rendered.text)["letta_environment_info"]
    }
    assert ids == {"env-a", "env-b", "env-c"}  # connected, then by id; e (offline) never first
    assert total(samples_by_name(rendered.text)["letta_environments"]) == 8  # aggregates keep all


def test_no_release_in_the_fleet_means_no_current_version_and_nothing_outdated() -> None:
    rows = [upstream_row("x", metadata={"lettaCodeVersion": "1.0.0-next.1"})]
    snap = snapshot_from(json.dumps({"connections": rows, "hasNextPage": False}).encode())
    s = samples_by_name(render_fleet(snap, render_options()).text)
    assert "letta_environments_latest_version_info" not in s
    assert total(s["letta_environments_outdated"]) == 0


def test_latest_version_orders_by_semver_not_by_text() -> None:
    rows = [
        _connection(id=str(i), metadata={"lettaCodeVersion": v})
        for i, v in enumerate(["0.9.0", "0.10.0", "0.10.1-next.3", "v0.2.0"])
    ]
    builder = SnapshotBuilder()
    builder.add(FIXTURE_TIME, tuple(rows), 0)
    assert latest_version(view(builder.build(FIXTURE_TIME), 120)) == "0.10.0"


def test_an_empty_fleet_renders_headers_and_zeros() -> None:
    snap = snapshot_from(b'{"connections": [], "hasNextPage": false}')
    s = samples_by_name(render_fleet(snap, render_options()).text)
    assert "letta_environments" not in s  # no combination is non-zero
    assert total(s["letta_environments_outdated"]) == 0
    assert s["letta_environments_heartbeat_age_seconds_count"] == [({}, 0.0)]


def test_rows_seen_on_two_pages_count_once() -> None:
    builder = SnapshotBuilder()
    builder.add(FIXTURE_TIME, (_connection(id="a"), _connection(id="b")), 0)
    builder.add(FIXTURE_TIME, (_connection(id="b"), _connection(id="c")), 0)
    snap = builder.build(FIXTURE_TIME)
    assert len(list(snap.observations())) == 3
    assert builder.duplicates == 1


def test_rendering_is_a_pure_function_of_the_snapshot() -> None:
    snap = fixture_snapshot()
    assert render_fleet(snap, render_options()).text == render_fleet(snap, render_options()).text


def test_machine_inventory_of_the_fixture_fleet() -> None:
    s = samples_by_name(render_fleet(fixture_snapshot(), render_options()).text)
    machines = s["letta_environments_machine"]
    for state in STATES:  # the same environments as letta_environments, by other labels
        assert total(machines, state=state) == total(s["letta_environments"], state=state)
    by_runtime = {r: total(machines, runtime=r) for r in ("desktop", "sandbox", "container")}
    assert by_runtime == {"desktop": 1, "sandbox": 1, "container": 1}  # h, f, b
    assert total(machines, runtime="host") == 2  # a (macOS) and c (Windows)
    assert total(machines, runtime="unknown") == 3  # d, e (no machine), g (not an object)
    assert {
        (lb["runtime"], lb["arch"], lb["os_name"], lb["os_version"])
        for lb, _ in machines
        if lb["runtime"] != "unknown"
    } == {
        ("host", "arm64", "macOS", "15.1"),
        ("container", "x64", "Ubuntu", "24.04"),
        ("host", "x64", "Microsoft Windows 11 Pro", "10.0"),
        ("sandbox", "unknown", "unknown", "unknown"),
        ("desktop", "arm64", "macOS", "14.6"),
    }
    info = {lb["environment_id"]: lb for lb, _ in s["letta_environment_info"]}
    assert (info["env-b"]["runtime"], info["env-b"]["os_name"]) == ("container", "Ubuntu")
    assert info["env-g"]["runtime"] == info["env-g"]["arch"] == "unknown"


def test_memory_cpu_and_gpu_of_connected_machines() -> None:
    s = samples_by_name(render_fleet(fixture_snapshot(), render_options()).text)
    gib = 2**30
    buckets = {float(lb["le"]): v for lb, v in s["letta_environments_memory_bytes_bucket"]}
    # Connected with memoryBytes: b 8 GiB, h 16 GiB, c 32 GiB, a 36 GiB.
    assert buckets[8 * gib] == 1 and buckets[16 * gib] == 2 and buckets[32 * gib] == 3
    assert buckets[64 * gib] == 4 and buckets[float("inf")] == 4
    assert s["letta_environments_memory_bytes_sum"] == [({}, 92.0 * gib)]
    cpus = {lb["cpu"]: v for lb, v in s["letta_environments_cpu"]}
    assert cpus == {
        "Apple M3 Pro": 1,
        "AMD EPYC 7B13": 1,
        "13th Gen Intel(R) Core(TM) i7-13700H": 1,
        "unknown": 1,  # h reports its machine but not its CPU
    }
    gpus = {lb["gpu"]: v for lb, v in s["letta_environments_gpu"]}
    assert gpus == {
        "Apple M3 Pro": 1,
        "none": 1,  # b: an empty list
        "NVIDIA GeForce RTX 4060 Laptop GPU": 1,  # c has two GPU models: once in each
        "Intel(R) Iris(R) Xe Graphics": 1,
        "unknown": 1,  # h
    }


def test_cpu_models_beyond_the_most_common_count_as_other() -> None:
    rows = [
        upstream_row(
            f"e{i:03d}",
            connectionId="c",
            lastHeartbeat=T_MS,
            metadata={"machine": {"cpu": f"cpu-{i % 25:02d}"}},
        )
        for i in range(100)
    ]
    snap = snapshot_from(json.dumps({"connections": rows, "hasNextPage": False}).encode())
    cpus = {
        lb["cpu"]: v
        for lb, v in samples_by_name(render_fleet(snap, render_options()).text)[
            "letta_environments_cpu"
        ]
    }
    assert len(cpus) == 21 and cpus["other"] == 20  # 5 models of 4 environments each
    assert sum(cpus.values()) == 100


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("15.1.1", "15.1"),
        ("24.04", "24.04"),
        ("12", "12"),
        ("10.0.22631", "10.0"),
        ("v14.6", "14.6"),
        (" 11 (bullseye)", "11"),
        ("Sonoma", "unknown"),
        ("", "unknown"),
        (None, "unknown"),
    ],
)
def test_os_version_keeps_two_numeric_parts(text: str | None, label: str) -> None:
    assert os_version_label(text) == label


@pytest.mark.parametrize(
    ("device_id", "machine", "runtime"),
    [
        ("desktop:abc", {"model": "Container"}, "desktop"),
        ("sandbox-agent-1", None, "sandbox"),
        ("d", {"model": "Container"}, "container"),
        ("d", {"model": "container"}, "host"),  # exactly `Container`, as Letta Code writes it
        ("d", {}, "host"),
        ("d", None, "unknown"),
    ],
)
def test_runtime_from_device_and_machine(
    device_id: str, machine: dict[str, Any] | None, runtime: str
) -> None:
    metadata = None if machine is None else {"machine": machine}
    row = upstream_row("x", deviceId=device_id, metadata=metadata)
    snap = snapshot_from(json.dumps({"connections": [row], "hasNextPage": False}).encode())
    (v,) = view(snap, 120)
    assert v.host.runtime == runtime


def test_memory_that_is_not_a_positive_size_is_left_out() -> None:
    rows = [
        upstream_row(
            f"e{i}", connectionId="c", lastHeartbeat=T_MS, metadata={"machine": {"memoryBytes": m}}
        )
        for i, m in enumerate((-5, 0, 8 * 2**30))
    ]
    snap = snapshot_from(json.dumps({"connections": rows, "hasNextPage": False}).encode())
    s = samples_by_name(render_fleet(snap, render_options()).text)
    assert s["letta_environments_memory_bytes_count"] == [({}, 1.0)]
