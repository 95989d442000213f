"""A short soak: ~100 polls of a churning 500-environment fleet; RSS must stay flat."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.conftest import ROOT

SOAK = ROOT / "scripts" / "soak.py"


def _start(*args: str) -> subprocess.Popen[str]:
    # A process of its own: RSS must be the exporter's alone, not the test suite's.
    return subprocess.Popen(
        [sys.executable, str(SOAK), "--json", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, dict[str, Any]]:
    output, errors = process.communicate(timeout=120)
    assert output, errors
    return process.returncode, json.loads(output)


def test_rss_stays_flat_over_100_polls_of_a_churning_fleet() -> None:
    soak = _start("--polls", "100", "--fleet-size", "500", "--reseed-every", "25")
    # The same script with a leak planted, run alongside: the verdict can say `growing`.
    leaky = _start(
        "--polls", "40", "--fleet-size", "50", "--sample-every", "5", "--leak", "1000000"
    )
    code, summary = _finish(soak)
    leaky_code, leaky_summary = _finish(leaky)

    assert code == 0 and summary["verdict"] == "flat", summary
    assert summary["failed_polls"] == 0
    assert summary["growth_mib"] < 8.0
    samples = summary["samples"]
    assert [s["poll"] for s in samples] == list(range(0, 101, 10))
    assert all(s["environments"] >= 500 for s in samples)  # machines re-register: more rows

    assert leaky_code == 1 and leaky_summary["verdict"] == "growing"
    assert leaky_summary["growth_mib"] > 10
