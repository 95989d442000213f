"""Golden exposition of the fixture fleet; `UPDATE_GOLDEN=1` rewrites the golden file."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from exporter.rendering import render_fleet
from tests.conftest import render_options, require_tool
from tests.fleet import fixture_snapshot

GOLDEN = Path(__file__).parent / "golden" / "fleet.prom"


def test_fixture_fleet_matches_the_golden_exposition() -> None:
    text = render_fleet(fixture_snapshot(), render_options()).text
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_bytes(text)
    assert text.decode() == GOLDEN.read_text(encoding="utf-8")


def test_golden_exposition_parses_and_passes_promtool() -> None:
    text = GOLDEN.read_text(encoding="utf-8")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert "letta_environments" in names
    assert "letta_environment_info" in names
    result = subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=text.encode(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode() + result.stdout.decode()
