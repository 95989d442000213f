"""The list page exactly as the reference defines it, strict: the simulator's answers follow it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from exporter.models import Connection


class EnvironmentListResponse(BaseModel):
    """One page of `GET /v1/environments`, every row valid (the exporter's own parsing skips
    bad rows instead: see `exporter.models.load_page`)."""

    model_config = ConfigDict(frozen=True, extra="ignore", strict=True, populate_by_name=True)

    connections: tuple[Connection, ...]
    has_next_page: bool = Field(alias="hasNextPage")
