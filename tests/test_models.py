"""The edge models against the reference: every field, nullability, strictness, bad rows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from exporter.models import Connection, InvalidJSONError, ValidationError
from tests.fleet import parse_page, upstream_row

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"  # copies of the API reference pages


def _row(**overrides: Any) -> dict[str, Any]:
    return upstream_row("env-1", **{"firstSeenAt": 1, "lastSeenAt": 2, **overrides})


def test_reference_example_parses_field_for_field() -> None:
    page = parse_page((FIXTURES / "reference_example.json").read_bytes())
    assert page.has_next_page is True
    assert page.invalid == ()
    (c,) = page.connections
    assert (c.id, c.connection_id, c.connection_name, c.device_id) == (
        "id",
        "connectionId",
        "connectionName",
        "deviceId",
    )
    assert (c.connected_at, c.first_seen_at, c.last_heartbeat, c.last_seen_at) == (0, 0, 0, 0)
    assert (c.organization_id, c.pod_id, c.api_key_owner, c.current_mode, c.user_id) == (
        "organizationId",
        "podId",
        "apiKeyOwner",
        "default",
        "userId",
    )
    assert c.metadata is not None
    assert c.metadata.self_update is not None
    m = c.metadata
    assert (m.git_branch, m.letta_code_version, m.node_version, m.os, m.working_directory) == (
        "gitBranch",
        "lettaCodeVersion",
        "nodeVersion",
        "os",
        "workingDirectory",
    )
    assert m.supported_commands == ("string",)
    su = m.self_update
    assert (su.supported, su.writable, su.install_path, su.manual_command, su.reason) == (
        True,
        True,
        "install_path",
        "manual_command",
        "reason",
    )


def test_model_fields_match_the_reference_pages() -> None:
    """Every field the reference lists for a connection is a field (by alias) of the model."""
    text = (REFERENCE / "environments-list-endpoint.txt").read_text()
    listed = {
        "id",
        "connectedAt",
        "connectionId",
        "connectionName",
        "deviceId",
        "firstSeenAt",
        "lastHeartbeat",
        "lastSeenAt",
        "organizationId",
        "podId",
        "apiKeyOwner",
        "currentMode",
        "metadata",
        "userId",
    }
    for name in listed:
        assert f"{name}" in text, f"{name} is not in the reference any more"
    aliases = {field.alias or name for name, field in Connection.model_fields.items()}
    assert aliases == listed


def test_nullable_fields_accept_null_and_optional_fields_may_be_absent() -> None:
    page = parse_page(json.dumps({"connections": [_row()], "hasNextPage": False}).encode())
    (c,) = page.connections
    assert c.connected_at is None
    assert c.connection_id is None
    assert c.last_heartbeat is None
    assert c.metadata is None
    assert c.current_mode is None
    assert c.user_id is None


def test_models_are_frozen() -> None:
    (c,) = parse_page(
        json.dumps({"connections": [_row()], "hasNextPage": False}).encode()
    ).connections
    with pytest.raises(ValidationError):
        c.id = "other"  # type: ignore[misc]


def test_unknown_fields_and_new_modes_are_accepted() -> None:
    row = _row(newField={"x": 1}, currentMode="yolo", metadata={"os": "linux", "future": [1]})
    (c,) = parse_page(json.dumps({"connections": [row], "hasNextPage": False}).encode()).connections
    assert c.current_mode == "yolo"
    assert c.metadata is not None
    assert c.metadata.os == "linux"


@pytest.mark.parametrize(
    ("override", "where"),
    [
        ({"id": 7}, "id"),
        ({"lastSeenAt": "yesterday"}, "lastSeenAt"),
        ({"connectedAt": "0"}, "connectedAt"),
        ({"metadata": {"self_update": {"supported": "yes", "writable": True}}}, "metadata"),
        ({"metadata": {"supported_commands": [1]}}, "metadata"),
        ({"deviceId": None}, "deviceId"),
    ],
)
def test_a_row_of_the_wrong_type_is_skipped_and_described(
    override: dict[str, object], where: str
) -> None:
    rows = [_row(id="good-1"), _row(**override), _row(id="good-2")]
    page = parse_page(json.dumps({"connections": rows, "hasNextPage": True}).encode())
    assert [c.id for c in page.connections] == ["good-1", "good-2"]
    assert len(page.invalid) == 1
    assert page.invalid[0].startswith(f"row 1: {where}")
    assert page.last_id == "good-2"


def test_a_row_missing_a_required_field_is_skipped() -> None:
    row = _row()
    del row["organizationId"]
    page = parse_page(json.dumps({"connections": [row, 3, "x"], "hasNextPage": False}).encode())
    assert page.connections == ()
    assert len(page.invalid) == 3


def test_cursor_is_the_last_row_with_an_id_even_when_that_row_is_invalid() -> None:
    rows = [_row(id="ok"), _row(id="bad", lastSeenAt="later")]
    page = parse_page(json.dumps({"connections": rows, "hasNextPage": True}).encode())
    assert page.last_id == "bad"


def test_lone_surrogates_do_not_cost_the_page() -> None:
    body = json.dumps({"connections": [_row(connectionName="a\ud800b")], "hasNextPage": False})
    page = parse_page(body.encode())
    assert page.connections[0].connection_name == "a\ud800b"


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"connections": [', b"", b"\xff\xfe"])
def test_non_json_bodies_raise_invalid_json(body: bytes) -> None:
    with pytest.raises(InvalidJSONError):
        parse_page(body)


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"connections": []},
        {"hasNextPage": False},
        {"connections": {}, "hasNextPage": False},
        {"connections": [], "hasNextPage": "false"},
    ],
)
def test_a_body_of_the_wrong_shape_is_a_validation_error(document: object) -> None:
    with pytest.raises(ValidationError):
        parse_page(json.dumps(document).encode())


def test_machine_facts_parse_when_present() -> None:
    machine = {
        "architecture": "arm64",
        "osName": "macOS",
        "osVersion": "15.1",
        "model": "MacBook Pro",
        "cpu": "Apple M3 Pro",
        "memoryBytes": 38654705664,
        "gpus": ["Apple M3 Pro"],
    }
    body = json.dumps({"connections": [_row(metadata={"machine": machine})], "hasNextPage": False})
    (c,) = parse_page(body.encode()).connections
    assert c.metadata is not None and c.metadata.machine is not None
    m = c.metadata.machine
    assert (m.architecture, m.os_name, m.os_version, m.model, m.cpu) == (
        "arm64",
        "macOS",
        "15.1",
        "MacBook Pro",
        "Apple M3 Pro",
    )
    assert m.memory_bytes == 38654705664 and m.gpus == ("Apple M3 Pro",)


@pytest.mark.parametrize(
    ("machine", "kept"),
    [
        ("a string", None),
        ([1, 2], None),
        (7, None),
        ({"architecture": 64, "osName": "Ubuntu"}, {"os_name": "Ubuntu"}),
        ({"memoryBytes": "16 GB", "cpu": "x"}, {"cpu": "x"}),
        ({"memoryBytes": True}, {}),
        ({"gpus": "Apple M3", "model": "Container"}, {"model": "Container"}),
        ({"gpus": [1, "x"]}, {}),
    ],
)
def test_a_wrong_typed_machine_costs_its_facts_never_the_row(
    machine: object, kept: dict[str, object] | None
) -> None:
    rows = [_row(metadata={"lettaCodeVersion": "0.34.12", "machine": machine})]
    page = parse_page(json.dumps({"connections": rows, "hasNextPage": False}).encode())
    assert page.invalid == ()
    (c,) = page.connections
    assert c.metadata is not None and c.metadata.letta_code_version == "0.34.12"
    if kept is None:
        assert c.metadata.machine is None
    else:
        assert c.metadata.machine is not None
        given = {k: v for k, v in c.metadata.machine.model_dump().items() if v is not None}
        assert given == kept
