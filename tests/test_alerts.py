"""The alerting bundle: rules generated from one config, checked and unit-tested by promtool,
runbooks for every alert, and the example Alertmanager configuration checked by amtool."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from exporter.config import EXTRA_LABELS
from exporter.rendering import render_fleet
from monitoring.files import (
    EXAMPLE_HEADER,
    RULES_HEADER,
    WATCHING_EXAMPLE,
    render_rules,
    render_watching_example,
)
from monitoring.rules import ALERTS_GROUP, NOTHING, ROW_LABELS, RULES_GROUP
from monitoring.settings import ConfigError, check_config, load_config, merge, parse_duration
from tests.conftest import ROOT, render_options, require_tool, wait_until
from tests.fleet import fixture_snapshot, samples_by_name

ALERTS_DIR = ROOT / "alerts"
RULES_PATH = ALERTS_DIR / "letta-environments.rules.yml"
RULE_TESTS = sorted((ALERTS_DIR / "tests").glob("*.yml"))
ALERTMANAGER_EXAMPLE = ALERTS_DIR / "alertmanager.example.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
JOB = "letta-environments-exporter"
RECEIVERS = {"critical": "letta-pager", "warning": "letta-ticket", "info": "letta-low-noise"}
EXPECTED_ALERTS = {
    "LettaExporterDown": "critical",
    "LettaExporterReplicaDown": "warning",
    "LettaExporterPollFailing": "warning",
    "LettaExporterRateLimited": "warning",
    "LettaEnvironmentHeartbeatStale": "warning",
    "LettaEnvironmentOffline": "warning",
    "LettaEnvironmentsOnlineDrop": "critical",
    "LettaEnvironmentsNoneOnline": "critical",
    "LettaEnvironmentsVersionDrift": "warning",
    "LettaEnvironmentsUnrestrictedMode": "info",
}


def rules_text(config: dict[str, Any]) -> str:
    """The rule file the generator makes from ``config`` (alerts/config.yml, maybe merged)."""
    return render_rules(check_config(config))


def alerting_rules(text: str) -> dict[str, dict[str, Any]]:
    document = yaml.safe_load(text)
    return {
        rule["alert"]: rule
        for group in document["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="module")
def amtool() -> str:
    return require_tool("amtool")


@pytest.fixture(scope="module")
def shipped() -> dict[str, dict[str, Any]]:
    return alerting_rules(RULES_PATH.read_text(encoding="utf-8"))


# --- the generator (tests/test_bundle.py checks every generated file for drift) ---------


def test_the_watching_example_differs_from_the_shipped_rules_in_the_selector_alone() -> None:
    shipped_text = render_rules(check_config(load_config()))
    example = render_watching_example(check_config(load_config()))
    assert example.startswith(EXAMPLE_HEADER)
    assert example.removeprefix(EXAMPLE_HEADER) == shipped_text.removeprefix(RULES_HEADER).replace(
        NOTHING, WATCHING_EXAMPLE
    )
    assert NOTHING in shipped_text, "the shipped rules watch nothing"


def test_the_shipped_alerts_and_severities(shipped: dict[str, dict[str, Any]]) -> None:
    assert {name: rule["labels"]["severity"] for name, rule in shipped.items()} == EXPECTED_ALERTS


def test_overrides_change_thresholds_selectors_and_switches(promtool: str, tmp_path: Path) -> None:
    config = merge(
        load_config(),
        {
            "job_selector": 'job="letta", namespace="monitoring"',
            "replica_labels": ["instance", "pod", "replica"],
            "alerts": {
                "LettaEnvironmentHeartbeatStale": {"threshold": "90s", "for": "30s"},
                "LettaEnvironmentsUnrestrictedMode": {"selector": 'os="linux"'},
                "LettaEnvironmentsNoneOnline": {"enabled": False},
            },
        },
    )
    text = rules_text(config)
    rules = alerting_rules(text)
    assert "LettaEnvironmentsNoneOnline" not in rules
    stale = rules["LettaEnvironmentHeartbeatStale"]
    assert stale["for"] == "30s"
    assert "> 90\n" in stale["expr"]
    assert "(threshold 90s)" in stale["annotations"]["description"]
    recorded = {
        rule["record"]: rule["expr"]
        for group in yaml.safe_load(text)["groups"]
        for rule in group["rules"]
        if "record" in rule
    }
    assert (
        "job:letta_environments_unrestricted:sum"
        in (rules["LettaEnvironmentsUnrestrictedMode"]["expr"])
    )
    assert 'mode="unrestricted", os="linux"' in recorded["job:letta_environments_unrestricted:sum"]
    assert 'up{job="letta", namespace="monitoring"}' in rules["LettaExporterDown"]["expr"]
    assert "without (instance, pod, replica)" in stale["expr"]
    # The base config is not changed by merging.
    assert load_config()["alerts"]["LettaEnvironmentsNoneOnline"].get("enabled", True)

    path = tmp_path / "variant.rules.yml"
    path.write_text(text, encoding="utf-8")
    checked = run(promtool, "check", "rules", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_config_errors_are_reported_together() -> None:
    config = merge(
        load_config(),
        {
            "job_selector": 'job=~"letta.*"',
            "replica_labels": ["instance", "shard"],
            "missed_polls": 0,
            "surprise": 1,
            "alerts": {
                "LettaExporterDown": {"for": "soon"},
                "LettaExporterRateLimited": {"ratio": 1.5},
                "LettaEnvironmentsVersionDrift": {"severity": "page", "colour": "red"},
                "LettaSomethingElse": {"for": "1m"},
            },
        },
    )
    with pytest.raises(ConfigError) as caught:
        rules_text(config)
    message = str(caught.value)
    for fragment in (
        "unknown key 'surprise'",
        "job_selector: must fix job with an = matcher",
        "replica_labels: must not hold job or a shard label",
        "missed_polls: expected a whole number of at least 1",
        "alerts.LettaExporterDown.for: not a Prometheus duration: 'soon'",
        "alerts.LettaExporterRateLimited.ratio: expected a ratio between 0 and 1",
        "alerts.LettaEnvironmentsVersionDrift.severity: expected one of critical, warning, info",
        "alerts.LettaEnvironmentsVersionDrift: unknown key 'colour'",
        "alerts: unknown alert 'LettaSomethingElse'",
    ):
        assert fragment in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("1h30m", 5400), ("1d", 86400), ("250ms", 0.25), ("2w", 1209600)],
)
def test_prometheus_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "1.5m", "m5", "5m1h", "0s"])
def test_prometheus_durations_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


# --- every alert: labels, annotations, runbooks -------------------------------------------


def runbook_anchors() -> set[str]:
    """GitHub's anchors of the headings of docs/runbooks.md."""
    anchors = set()
    for line in RUNBOOKS.read_text(encoding="utf-8").splitlines():
        if match := re.match(r"^#{1,6}\s+(.+?)\s*$", line):
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def runbook_sections() -> dict[str, str]:
    text = RUNBOOKS.read_text(encoding="utf-8")
    parts = re.split(r"^## (\S+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_every_alert_has_severity_summary_description_and_runbook(
    shipped: dict[str, dict[str, Any]],
) -> None:
    base = load_config()["runbook_base_url"]
    anchors = runbook_anchors()
    for name, rule in shipped.items():
        assert re.fullmatch(r"Letta[A-Z][A-Za-z]+", name), name
        assert rule["labels"]["severity"] in RECEIVERS, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        summary = annotations["summary"]
        assert "{{" not in summary and summary.endswith(".") and summary.count(". ") == 0, name
        assert "{{" in annotations["description"], f"{name}: description is not templated"
        url = annotations["runbook_url"]
        assert url == f"{base}#{name.lower()}", name
        assert url.split("#", 1)[1] in anchors, f"{name}: no heading {name} in docs/runbooks.md"


def test_every_runbook_says_what_it_means_how_to_confirm_and_what_to_do(
    shipped: dict[str, dict[str, Any]],
) -> None:
    sections = runbook_sections()
    assert set(sections) == set(shipped), "one runbook heading per alert, no more"
    for name, body in sections.items():
        for part in ("**Meaning.**", "**Confirm.**", "**Action.**"):
            assert part in body, f"{name}: runbook lacks {part}"
        assert "```promql" in body, f"{name}: runbook has no query to confirm it"


def promql_blocks() -> Iterator[str]:
    yield from re.findall(r"```promql\n(.*?)```", RUNBOOKS.read_text(encoding="utf-8"), re.S)


def test_runbook_queries_parse() -> None:
    blocks = list(promql_blocks())
    assert len(blocks) >= len(EXPECTED_ALERTS)
    for query in blocks:
        promql_parser.parse(query)  # raises on a syntax error


# --- promtool -----------------------------------------------------------------------------


def test_promtool_checks_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", str(RULES_PATH))
    assert result.returncode == 0, result.stdout + result.stderr
    rules = sum(len(g["rules"]) for g in yaml.safe_load(RULES_PATH.read_text())["groups"])
    assert f"SUCCESS: {rules} rules found" in result.stdout


def test_every_rule_test_file_evaluates_the_recording_rules_first() -> None:
    # Without it promtool evaluates the two groups in a random order at each step.
    for path in RULE_TESTS:
        order = yaml.safe_load(path.read_text(encoding="utf-8")).get("group_eval_order")
        assert order == [RULES_GROUP, ALERTS_GROUP], f"{path.name}: group_eval_order"


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    assert RULE_TESTS, "no promtool test files in alerts/tests/"
    result = run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_TESTS)


def rule_test_groups() -> list[dict[str, Any]]:
    return [
        group
        for path in RULE_TESTS
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]
    ]


def replicas_in(group: dict[str, Any]) -> int:
    """How many instances of the shipped job the input series of a test group come from."""
    instances = set()
    for item in group.get("input_series", []):
        series = item["series"]
        if f'job="{JOB}"' in series and (match := re.search(r'instance="([^"]+)"', series)):
            instances.add(match.group(1))
    return len(instances)


def test_every_alert_has_cases_that_fire_and_cases_that_must_not(
    shipped: dict[str, dict[str, Any]],
) -> None:
    groups = rule_test_groups()
    for name, rule in shipped.items():
        cases = [
            (group, case)
            for group in groups
            for case in group.get("alert_rule_test", [])
            if case["alertname"] == name
        ]
        firing = [(g, c) for g, c in cases if c.get("exp_alerts")]
        quiet = [(g, c) for g, c in cases if not c.get("exp_alerts")]
        assert firing, f"{name}: no promtool case where it fires"
        assert quiet, f"{name}: no promtool case where it must stay quiet"
        # A quiet case in a group where the alert also fires (before it fires) does not count
        # alone: there must be a group written to stay quiet.
        assert any(
            not any(c.get("exp_alerts") for c in g["alert_rule_test"] if c["alertname"] == name)
            for g, _ in quiet
        ), f"{name}: no test group in which it never fires"
        for _, case in firing:
            for alert in case["exp_alerts"]:
                assert alert["exp_labels"]["severity"] == rule["labels"]["severity"], name
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}
                assert "instance" not in alert["exp_labels"], f"{name}: fires per replica"
        assert any(replicas_in(g) >= 2 for g, _ in cases), (
            f"{name}: no promtool case with two exporter replicas of one job"
        )


# --- Alertmanager -------------------------------------------------------------------------


def test_amtool_checks_the_example_config(amtool: str) -> None:
    result = run(amtool, "check-config", str(ALERTMANAGER_EXAMPLE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    assert "2 inhibit rules" in result.stdout


@pytest.mark.parametrize("name", sorted(EXPECTED_ALERTS))
def test_alertmanager_routes_each_alert_by_severity(
    amtool: str, shipped: dict[str, dict[str, Any]], name: str
) -> None:
    severity = shipped[name]["labels"]["severity"]
    result = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_EXAMPLE}",
        f"--verify.receivers={RECEIVERS[severity]}",
        f"alertname={name}",
        f"severity={severity}",
        f"job={JOB}",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == RECEIVERS[severity]


def test_alertmanager_inhibitions_cover_the_fleet_alerts(
    shipped: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    exporter_rule, drop_rule = config["inhibit_rules"]
    source = re.fullmatch(r'alertname=~"(.+)"', exporter_rule["source_matchers"][0])
    target = re.fullmatch(r'alertname=~"(.+)"', exporter_rule["target_matchers"][0])
    equal = ["job", *check_config(load_config()).settings.shard_labels]
    assert source and target and exporter_rule["equal"] == equal
    sources = {n for n in shipped if re.fullmatch(source.group(1), n)}
    targets = {n for n in shipped if re.fullmatch(target.group(1), n)}
    assert sources == {"LettaExporterDown", "LettaExporterPollFailing"}
    assert targets == {n for n in shipped if n.startswith("LettaEnvironment")}
    assert drop_rule["equal"] == equal


def test_inhibitions_hold_per_organisation_and_shard(amtool: str, tmp_path: Path) -> None:
    """amtool feeds a real Alertmanager with the shipped inhibitions and reads back which
    alerts it inhibits: only those of the organisation or shard whose exporter is down."""
    from tests.test_alerting_e2e import alertmanager, webhook_receiver

    stale = "LettaEnvironmentHeartbeatStale"
    sent = [
        # One job, two organisations: acme's exporter cannot poll, globex's can.
        ("LettaExporterPollFailing", "warning", {"organization": "acme"}),
        (stale, "warning", {"organization": "acme", "environment_id": "env-1"}),
        (stale, "warning", {"organization": "globex", "environment_id": "env-2"}),
        # One organisation in two shards: local's exporter is down, remote's is up.
        ("LettaExporterDown", "critical", {"shard": "local"}),
        ("LettaEnvironmentsNoneOnline", "critical", {"shard": "local"}),
        ("LettaEnvironmentsNoneOnline", "critical", {"shard": "remote"}),
        ("LettaEnvironmentsOnlineDrop", "critical", {"shard": "remote"}),
        # A replica down inhibits nothing: the other replica still serves.
        ("LettaExporterReplicaDown", "warning", {"shard": "other"}),
        (stale, "warning", {"shard": "other", "environment_id": "env-3"}),
    ]
    inhibited = {
        (stale, "acme", ""),
        ("LettaEnvironmentsNoneOnline", "", "local"),
        ("LettaEnvironmentsOnlineDrop", "", "remote"),
    }
    with webhook_receiver() as hooks, alertmanager(hooks.url, tmp_path) as am:
        url = f"--alertmanager.url={am.url}"
        for name, severity, labels in sent:
            extra = [f"{key}={value}" for key, value in labels.items()]
            added = run(
                amtool, "alert", "add", url, f"alertname={name}", f"severity={severity}",
                f"job={JOB}", *extra, "--annotation=summary=test",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr

        def states() -> dict[tuple[str, str, str], str]:
            listed = run(amtool, "alert", "query", url, "--active", "--inhibited", "--output=json")
            assert listed.returncode == 0, listed.stderr
            return {
                (
                    alert["labels"]["alertname"],
                    alert["labels"].get("organization", ""),
                    alert["labels"].get("shard", ""),
                ): alert["status"]["state"]
                for alert in json.loads(listed.stdout)
            }

        found = wait_until(lambda: len(states()) == len(sent) and states(), 10, "the alerts")
        assert {key for key, state in found.items() if state == "suppressed"} == inhibited
        assert all(state == "active" for key, state in found.items() if key not in inhibited)


def test_the_rules_fold_every_row_label_the_exporter_serves_on_its_info_series() -> None:
    """LettaEnvironmentOffline counts a machine by connection_name with every other label of
    letta_environment_info folded away: a label missing from ROW_LABELS would split a machine
    into its rows, and one re-registration would page."""
    rendered = render_fleet(
        fixture_snapshot(), render_options(environment_extra_labels=EXTRA_LABELS)
    ).text
    served = {
        name for labels, _ in samples_by_name(rendered)["letta_environment_info"] for name in labels
    }
    assert served - {"connection_name"} == set(ROW_LABELS)
