"""The monitoring bundle's one generator: every generated file is current, the command line
behaves, and the jsonnet mixin renders to exactly the generated rules and dashboards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import _jsonnet
import pytest
import yaml

from monitoring.files import FILES, render_all
from monitoring.settings import check_config, load_config, merge
from tests.conftest import ROOT

GENERATE = ROOT / "alerts" / "generate.py"
MIXIN = ROOT / "mixin" / "mixin.libsonnet"


def generate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(GENERATE), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return render_all(check_config(load_config()))


def test_the_generated_files_are_the_rules_prometheusrule_dashboards_and_mixin() -> None:
    assert {path.split("/")[0] for path in FILES} == {"alerts", "deploy", "grafana", "mixin"}
    assert "alerts/letta-environments.rules.yml" in FILES
    assert "deploy/kubernetes/prometheusrule.yaml" in FILES
    assert sorted(p for p in FILES if p.startswith("grafana/")) == sorted(
        f"grafana/dashboards/{path.name}" for path in (ROOT / "grafana" / "dashboards").glob("*")
    )
    assert sorted(p for p in FILES if p.startswith("mixin/")) == sorted(
        f"mixin/{path.name}" for path in (ROOT / "mixin").glob("*")
    )


@pytest.mark.parametrize("path", sorted(FILES))
def test_every_generated_file_is_current(path: str, rendered: dict[str, str]) -> None:
    assert (ROOT / path).read_text(encoding="utf-8") == rendered[path], (
        f"{path} drifted from alerts/config.yml: run `python alerts/generate.py`"
    )


def test_the_command_checks_and_writes_every_file(tmp_path: Path) -> None:
    current = generate("--check")
    assert current.returncode == 0, current.stderr

    missing = generate("--check", f"--root={tmp_path}")
    assert missing.returncode == 1
    assert "out of date: alerts/letta-environments.rules.yml" in missing.stderr
    assert "grafana/dashboards/letta-fleet-overview.json" in missing.stderr

    written = generate(f"--root={tmp_path}")
    assert written.returncode == 0, written.stderr
    for path in FILES:
        assert (tmp_path / path).read_bytes() == (ROOT / path).read_bytes(), path
    assert generate("--check", f"--root={tmp_path}").returncode == 0

    # One setting changed: every file that depends on it drifts, and only those.
    config = tmp_path / "config.yml"
    config.write_text(
        (ROOT / "alerts" / "config.yml").read_text().replace("missed_polls: 3", "missed_polls: 4")
    )
    drifted = generate("--check", f"--root={tmp_path}", f"--config={config}")
    assert drifted.returncode == 1
    stale = drifted.stderr.split("out of date: ", 1)[1].split(";")[0].split(", ")
    assert "alerts/letta-environments.rules.yml" in stale
    assert "grafana/dashboards/letta-exporter-health.json" in stale
    assert "grafana/dashboards/letta-environment-detail.json" not in stale


def test_a_bad_configuration_is_one_line_and_exit_code_2(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text(
        (ROOT / "alerts" / "config.yml").read_text().replace("missed_polls: 3", "missed_polls: x")
    )
    result = generate("--check", f"--config={config}")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "missed_polls: expected a whole number" in result.stderr
    assert "Traceback" not in result.stderr


# --- the mixin ----------------------------------------------------------------------------


def evaluate() -> dict[str, Any]:
    """The mixin's outputs, the rule groups joined as kube-prometheus joins them."""
    snippet = """
local mixin = import 'mixin.libsonnet';
{
  rules: { groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups },
  dashboards: mixin.grafanaDashboards,
  config: mixin._config,
}
"""
    result: dict[str, Any] = json.loads(
        _jsonnet.evaluate_snippet("test", snippet, jpathdir=[str(MIXIN.parent)])
    )
    return result


def expected(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The rule file and the dashboards the generator makes from ``config``."""
    files = render_all(check_config(config))
    rules = yaml.safe_load(files["alerts/letta-environments.rules.yml"])
    dashboards = {
        path.rsplit("/", 1)[1]: json.loads(text)
        for path, text in files.items()
        if path.startswith("grafana/dashboards/")
    }
    return rules, dashboards


def test_the_mixin_renders_to_exactly_the_generated_files() -> None:
    mixin = evaluate()
    assert mixin["config"] == load_config(), "_config is alerts/config.yml"
    assert mixin["rules"] == yaml.safe_load(
        (ROOT / "alerts" / "letta-environments.rules.yml").read_text()
    )
    assert set(mixin["dashboards"]) == {p.name for p in (ROOT / "grafana/dashboards").glob("*")}
    for name, dashboard in mixin["dashboards"].items():
        assert dashboard == json.loads((ROOT / "grafana" / "dashboards" / name).read_text()), name


def test_settings_overridden_in_the_mixin_apply_as_the_generator_applies_them() -> None:
    overrides: dict[str, Any] = {
        "job_selector": 'job="letta", namespace="monitoring"',
        "replica_labels": ["instance", "pod", "replica"],
        "runbook_base_url": "https://wiki.example.com/letta",
        "alerts": {
            "LettaExporterDown": {"for": "5m", "severity": "warning"},
            "LettaExporterRateLimited": {"window": "20m"},
            "LettaEnvironmentsUnrestrictedMode": {"selector": 'os="linux"'},
            "LettaEnvironmentsNoneOnline": {"enabled": False},
        },
    }
    # jsonnet replaces a nested object unless merged with `+:`: spell it as users would.
    alerts = ", ".join(f"{name}+: {json.dumps(v)}" for name, v in overrides["alerts"].items())
    settings = ", ".join(f"{k}: {json.dumps(v)}" for k, v in overrides.items() if k != "alerts")
    snippet = f"""
local mixin = (import 'mixin.libsonnet') + {{
  _config+:: {{ {settings}, alerts+: {{ {alerts} }} }},
}};
{{
  rules: {{ groups: mixin.prometheusRules.groups + mixin.prometheusAlerts.groups }},
  dashboards: mixin.grafanaDashboards,
}}
"""
    mixin = json.loads(_jsonnet.evaluate_snippet("test", snippet, jpathdir=[str(MIXIN.parent)]))
    rules, dashboards = expected(merge(load_config(), overrides))
    assert mixin["rules"] == rules
    assert mixin["dashboards"] == dashboards
    # The override did change something: the shipped files differ.
    assert rules != yaml.safe_load((ROOT / "alerts" / "letta-environments.rules.yml").read_text())
    assert "LettaEnvironmentsNoneOnline" not in json.dumps(mixin["rules"])
