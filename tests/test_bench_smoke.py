"""The benchmark (`python -m bench`, `make bench`) at 1,000 environments, briefly: it runs end to
end and writes well-formed results. No timing is asserted: this only keeps it from rotting."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.__main__ import main
from bench.report import verdicts
from exporter.config import Config

pytestmark = pytest.mark.slow

SERVERS = {"exporter", "floor", "usual"}


def _positive(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_a_short_run_writes_tables_a_plot_and_positive_numbers(tmp_path: Path) -> None:
    raw_path = tmp_path / "raw.json"
    code = main(
        [
            "--sizes=1000",
            "--repeats=1",
            "--budget=0.2",
            "--memory-polls=2",
            f"--out={tmp_path}",
            f"--json={raw_path}",
            "--quiet",
        ]
    )
    assert code == 0
    raw = json.loads(raw_path.read_text())
    # Every measurement at the exporter's default page size; the 1,000-row page as a further case.
    default_page = Config.model_fields["page_size"].default
    assert raw["settings"]["page_sizes"] == [default_page, 1000]
    result, further = raw["sizes"]
    assert result["size"] == further["size"] == 1000
    assert (result["page_size"], result["full"]) == (default_page, True)
    assert (further["page_size"], further["full"]) == (1000, False)
    # The further case measures what a page size changes, and only that.
    assert further["cells"] == [] and "usual" not in further["series"]
    for key in ("plain@0", "gzip@0", "plain@50", "gzip@50"):
        assert further["during_poll"][key] and all(map(_positive, further["during_poll"][key]))
    for millis in ("0", "50"):
        assert all(map(_positive, further["polls"][millis]["exporter_wall"]))
    assert _positive(further["memory"]["peak_polls"])
    # Paged by 100, 1,000 environments are ten requests a poll: at 50 ms each, half a second.
    assert min(result["polls"]["50"]["bare_wall"]) >= 0.05 * 1000 / default_page
    assert _positive(result["exposition_bytes"]) and _positive(result["gzip_bytes"])
    # Every cell of every server has latencies, all positive; the bodies are what was served.
    cells = {(c["server"], c["gzipped"], c["clients"]): c for c in result["cells"]}
    assert set(cells) == {(s, g, n) for s in SERVERS for g in (False, True) for n in (1, 8)}
    for cell in cells.values():
        assert cell["latencies"] and all(map(_positive, cell["latencies"]))
        assert cell["errors"] == 0
        assert cell["clients"] == 1 or len(cell["latencies"]) >= cell["clients"]
    assert cells[("floor", False, 8)]["body_bytes"] == result["exposition_bytes"]
    assert cells[("floor", True, 8)]["body_bytes"] == result["gzip_bytes"]
    # The usual design serves the same series as the exporter.
    assert result["series"]["usual"] == result["series"]["exporter"] > 6000
    for key in ("plain@0", "gzip@0", "plain@50", "gzip@50"):
        assert result["during_poll"][key] and all(map(_positive, result["during_poll"][key]))
        assert result["idle"][key] and all(map(_positive, result["idle"][key]))
    for millis in ("0", "50"):
        for series in ("exporter_wall", "exporter_cpu", "bare_wall"):
            assert all(map(_positive, result["polls"][millis][series]))
    # At 50 ms a page, a one-page poll cannot be faster than the simulator's latency.
    assert min(result["polls"]["50"]["exporter_wall"]) >= 0.05
    for key in (
        "after_first_poll",
        "peak_polls",
        "peak_burst",
        "peak",
        "peak_polls_no_environment",
    ):
        assert _positive(result["memory"][key])
    stages = raw["stages"]
    assert all(map(_positive, stages["parse"] + stages["render"]))
    assert {"1", "3", "9"} <= set(stages["gzip"])
    assert stages["page_size"] == default_page and stages["pages"] == 1000 // default_page
    assert set(stages["page_decode"]) == {str(default_page), "1000"}
    assert all(map(_positive, stages["page_decode"]["1000"] + stages["own_registry"]))

    markdown = (tmp_path / "benchmarks.md").read_text()
    for heading in (
        "## Machine",
        "## Targets at 1,000 environments",
        "## Scrape latency",
        "## Scrape latency while a poll runs",
        "## Poll time",
        "## Memory",
        "## Page size at 1,000 environments",
        "## Poll stages, in-process",
    ):
        assert f"\n{heading}\n" in markdown
    assert "n/a" not in markdown.split("## Targets", 1)[1].split("## Scrape latency", 1)[0]
    assert f"default page size, {default_page} rows" in markdown
    page_rows = markdown.split("## Page size", 1)[1].split("## Poll stages", 1)[0]
    assert f"\n| {default_page} | {1000 // default_page} |" in page_rows
    assert "\n| 1,000 | 1 |" in page_rows and "n/a" not in page_rows
    assert all(check.passed is not None for check in verdicts(result))
    assert (tmp_path / "img" / "benchmarks.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
