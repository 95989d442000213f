"""Frozen models of the Letta Environments API, parsed at the edge.

They follow the reference (`GET /v1/environments`) field for field; unknown fields are ignored
and types are strict, so a row of the wrong shape fails validation instead of being coerced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

__all__ = [
    "Connection",
    "InvalidJSONError",
    "Machine",
    "Metadata",
    "Page",
    "SelfUpdate",
    "ValidRows",
    "ValidationError",
    "load_page",
]

_CONFIG = ConfigDict(frozen=True, extra="ignore", strict=True, populate_by_name=True)


class SelfUpdate(BaseModel):
    """What a Letta Code install says about updating itself."""

    model_config = _CONFIG

    supported: bool
    writable: bool
    install_path: str | None = None
    manual_command: str | None = None
    reason: str | None = None


class Machine(BaseModel):
    """The host Letta Code runs on (`metadata.machine`, Letta Code 0.34+); every key optional."""

    model_config = _CONFIG

    architecture: str | None = None
    os_name: str | None = Field(default=None, alias="osName")
    os_version: str | None = Field(default=None, alias="osVersion")
    model: str | None = None
    """`MacBook Pro`, a DMI product name, or exactly `Container` inside a container."""
    cpu: str | None = None
    memory_bytes: float | None = Field(default=None, alias="memoryBytes")
    gpus: tuple[str, ...] | None = Field(default=None, strict=False)


class Metadata(BaseModel):
    """Optional facts a Letta Code client reports about itself."""

    model_config = _CONFIG

    git_branch: str | None = Field(default=None, alias="gitBranch")
    letta_code_version: str | None = Field(default=None, alias="lettaCodeVersion")
    node_version: str | None = Field(default=None, alias="nodeVersion")
    os: str | None = None
    self_update: SelfUpdate | None = None
    # Lax only so that a JSON list becomes a tuple on the python path; items stay strict str.
    supported_commands: tuple[str, ...] | None = Field(default=None, strict=False)
    working_directory: str | None = Field(default=None, alias="workingDirectory")
    machine: Machine | None = None

    @field_validator("machine", mode="wrap")
    @classmethod
    def _machine_or_none(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A wrong-typed key costs that fact only, a wrong-typed `machine` all of them; the
        row itself stays valid (these facts are new and optional)."""
        if not isinstance(value, dict | Machine):
            return None
        try:
            return handler(value)
        except ValidationError as exc:
            if not isinstance(value, dict):
                return None
            bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
            try:
                return handler({key: v for key, v in value.items() if key not in bad})
            except ValidationError:
                return None


class Connection(BaseModel):
    """One row of the list: an environment and its (possibly absent) live lease.

    Timestamps are epoch milliseconds, as upstream sends them.
    """

    model_config = _CONFIG

    id: str
    connected_at: float | None = Field(alias="connectedAt")
    connection_id: str | None = Field(alias="connectionId")
    connection_name: str = Field(alias="connectionName")
    device_id: str = Field(alias="deviceId")
    first_seen_at: float = Field(alias="firstSeenAt")
    last_heartbeat: float | None = Field(alias="lastHeartbeat")
    last_seen_at: float = Field(alias="lastSeenAt")
    organization_id: str = Field(alias="organizationId")
    pod_id: str | None = Field(alias="podId")
    api_key_owner: str | None = Field(default=None, alias="apiKeyOwner")
    current_mode: str | None = Field(default=None, alias="currentMode")
    metadata: Metadata | None = None
    user_id: str | None = Field(default=None, alias="userId")


class _Envelope(BaseModel):
    """The page envelope alone, so that one bad row does not cost the whole page."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True)

    connections: list[Any]
    has_next_page: bool = Field(alias="hasNextPage")


@dataclass(frozen=True, slots=True)
class ValidRows:
    """The rows of a page that passed validation, and what was wrong with the others."""

    connections: tuple[Connection, ...]
    invalid: tuple[str, ...] = ()


_ROWS: TypeAdapter[list[Connection]] = TypeAdapter(list[Connection])
ROW_BATCH = 100  # rows validated per call: a call holds the GIL, and a scrape may be waiting


@dataclass(frozen=True, slots=True)
class Page:
    """A page decoded and its envelope checked; the rows are plain JSON values until
    `validate` (so the cursor is known, and the next page can be asked for, before that)."""

    rows: list[Any]
    has_next_page: bool
    last_id: str | None
    """The cursor for the next page: the `id` of the page's last row that has one."""

    def validate(self) -> ValidRows:
        """The valid rows as models; invalid ones become short error texts, not exceptions."""
        connections: list[Connection] = []
        invalid: list[str] = []
        for start in range(0, len(self.rows), ROW_BATCH):
            batch = self.rows[start : start + ROW_BATCH]
            try:
                connections += _ROWS.validate_python(batch)
            except ValidationError:  # one bad row: find it, keep the others
                for index, row in enumerate(batch, start):
                    try:
                        connections.append(Connection.model_validate(row))
                    except ValidationError as exc:
                        invalid.append(_describe(index, exc))
        return ValidRows(connections=tuple(connections), invalid=tuple(invalid))


def load_page(body: bytes) -> Page:
    """Decode one page and check its envelope; raises ``InvalidJSONError`` when the body is
    not JSON, ``ValidationError`` when the envelope is not the documented shape."""
    # Decoded in one call (~4 ms a 1,000-row page, the GIL held), then validated in batches:
    # validating straight from the bytes would hold the GIL ~9 ms a page, in one call.
    try:
        document = pydantic_core.from_json(body)  # shares repeated strings, unlike json.loads
    except ValueError:
        try:
            # The stdlib decoder also accepts what the fast one refuses (lone surrogates, say).
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            raise InvalidJSONError(f"body is not JSON: {type(exc).__name__}") from None
    loose = _Envelope.model_validate(document)
    last_id = None
    for row in reversed(loose.connections):
        if isinstance(row, dict) and isinstance(row.get("id"), str):
            last_id = row["id"]
            break
    return Page(rows=loose.connections, has_next_page=loose.has_next_page, last_id=last_id)


class InvalidJSONError(ValueError):
    """The body is not JSON at all."""


def _describe(index: int, exc: ValidationError) -> str:
    """A one-line account of why a row failed, without echoing its values."""
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "row"
    return f"row {index}: {where}: {first['msg']} ({exc.error_count()} error(s))"
