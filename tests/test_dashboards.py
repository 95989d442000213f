"""The Grafana dashboards and provisioning files, checked statically: structure, conventions and
every PromQL expression against the exporter's metric contract (docs/metrics.md)."""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from monitoring.rules import rules_document
from monitoring.settings import check_config, load_config

BUNDLE = check_config(load_config())
RECORDED = {
    rule["record"]
    for group in rules_document(BUNDLE)["groups"]
    for rule in group["rules"]
    if "record" in rule
}
ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
UIDS = {
    "letta-fleet-overview.json": "letta-fleet-overview",
    "letta-environment-detail.json": "letta-environment-detail",
    "letta-exporter-health.json": "letta-exporter-health",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Where grafana/provisioning/dashboards/letta.yml expects grafana/dashboards/ to be mounted.
PROVIDER_PATH = "/var/lib/grafana/dashboards/letta"

# Grafana variables -> values that parse; the job and instance values are sentinels so that
# the matchers using them can be recognised after parsing.
JOB, INSTANCE = "sentinel-job", "sentinel-instance"
RATE_INTERVAL = timedelta(minutes=1, seconds=7)
ENVIRONMENT = "env-0123456789abcdef"
SUBSTITUTIONS = {
    "$__rate_interval": "1m7s",
    "$job": JOB,
    "$instance": INSTANCE,
    "$environment": ENVIRONMENT,
    "$online_threshold": "120",
}
# Series Prometheus adds to every scrape target.
PROMETHEUS_SERIES = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}


def contract() -> set[str]:
    """Every series name docs/metrics.md promises, histograms expanded to their series."""
    names: set[str] = set()
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    for name, kind in re.findall(r"^\| `([a-z_:]+)` \| (\w+)", text, flags=re.MULTILINE):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
    return names


CONTRACT = contract()


def load(name: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((DASHBOARDS / name).read_text(encoding="utf-8"))
    return document


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in dashboard["panels"]:
        yield item
        yield from item.get("panels", [])  # panels inside collapsed rows


def query_panels() -> list[tuple[str, dict[str, Any]]]:
    """(dashboard file, panel) for every panel that queries; rows are only layout."""
    return [
        (name, item) for name in UIDS for item in all_panels(load(name)) if item["type"] != "row"
    ]


def expressions() -> list[tuple[str, str, str]]:
    return [
        (name, f"{item['title']}/{target['refId']}", target["expr"])
        for name, item in query_panels()
        for target in item["targets"]
    ]


def substitute(expr: str) -> str:
    for variable in sorted(SUBSTITUTIONS, key=len, reverse=True):
        expr = expr.replace(variable, SUBSTITUTIONS[variable])
    return expr


def nodes(expr: promql_parser.Expr) -> list[promql_parser.Expr]:
    """Every node of the syntax tree, depth first."""
    found: list[promql_parser.Expr] = []

    def visit(node: promql_parser.Expr) -> bool:
        found.append(node)
        return True

    promql_parser.walk(expr, pre_visit=visit)
    return found


def test_the_dashboards_are_built_with_grafanas_sdk_by_the_one_generator() -> None:
    # tests/test_bundle.py checks that the JSON is what monitoring/dashboards.py builds.
    source = (ROOT / "monitoring" / "dashboards.py").read_text(encoding="utf-8")
    assert "from grafana_foundation_sdk.builders import" in source
    assert "gridPos" not in source and "grid_pos" not in source, "the SDK lays panels out"
    assert not (ROOT / "scripts" / "build_dashboards.py").exists()


def test_exactly_the_three_dashboards_exist_with_stable_unique_uids() -> None:
    assert sorted(path.name for path in DASHBOARDS.glob("*.json")) == sorted(UIDS)
    uids = [load(name)["uid"] for name in UIDS]
    assert uids == list(UIDS.values())
    assert len(set(uids)) == len(uids)
    titles = [load(name)["title"] for name in UIDS]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("name", UIDS)
def test_dashboard_settings(name: str) -> None:
    dashboard = load(name)
    assert 36 <= dashboard["schemaVersion"] <= 41, "Grafana 10/11 schema"
    assert dashboard.get("id") is None, "an exported id would clash on import"
    assert "letta" in dashboard["tags"]
    assert dashboard["description"]
    assert dashboard["time"] == {"from": "now-6h", "to": "now"}
    assert dashboard["refresh"] == "1m"
    ids = [item["id"] for item in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("name", UIDS)
def test_panels_are_laid_out_in_rows(name: str) -> None:
    items = load(name)["panels"]
    assert items[0]["type"] == "row", "the first thing on a dashboard is a row"
    for row, following in itertools.pairwise(items):
        if row["type"] == "row":
            assert following["type"] != "row", f"row {row['title']} is empty"
            assert following["gridPos"]["y"] == row["gridPos"]["y"] + 1


@pytest.mark.parametrize("name", UIDS)
def test_panels_fit_the_grid_without_overlapping(name: str) -> None:
    taken: dict[tuple[int, int], str] = {}
    for item in load(name)["panels"]:
        grid = item["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, item["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{item['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = item["title"]


@pytest.mark.parametrize("name", UIDS)
def test_variables(name: str) -> None:
    variables = {v["name"]: v for v in load(name)["templating"]["list"]}
    datasource = variables["datasource"]
    assert (datasource["type"], datasource["query"], datasource["label"]) == (
        "datasource",
        "prometheus",
        "Data Source",
    )
    # The jobs offered are those the rules select (alerts/config.yml: job_selector).
    selector = BUNDLE.settings.job_selector
    expected = {
        "job": f"label_values(letta_exporter_build_info{{{selector}}}, job)",
        "instance": f'label_values(letta_exporter_build_info{{{selector}, job=~"$job"}}, instance)',
    }
    if name == "letta-environment-detail.json":
        expected["environment"] = (
            'label_values(letta_environment_info{job=~"$job", instance=~"$instance"}, '
            "environment_id)"
        )
        assert variables["online_threshold"]["query"] == "120"  # the exporter's default
    for variable, query in expected.items():
        assert variables[variable]["type"] == "query"
        assert variables[variable]["datasource"] == DATASOURCE
        assert variables[variable]["query"] == query
    assert set(variables) == set(expected) | {"datasource"} | (
        {"online_threshold"} if name == "letta-environment-detail.json" else set()
    )


def test_each_dashboard_links_to_the_other_two() -> None:
    for name, uid in UIDS.items():
        dashboard = load(name)
        linked = {re.fullmatch(r"/d/([\w-]+)/[\w-]+", link["url"]) for link in dashboard["links"]}
        assert None not in linked, dashboard["links"]
        targets = {match.group(1) for match in linked if match}
        assert targets == set(UIDS.values()) - {uid}
        assert all(link["includeVars"] and link["keepTime"] for link in dashboard["links"])


RUNBOOK_PANELS = {
    # panel title -> the alerts over the number it shows
    "Online": {"LettaEnvironmentsNoneOnline", "LettaEnvironmentsOnlineDrop"},
    "Connected in unrestricted mode": {"LettaEnvironmentsUnrestrictedMode"},
    "Stalest connected environments": {"LettaEnvironmentHeartbeatStale"},
    "Outdated share (connected)": {"LettaEnvironmentsVersionDrift"},
    "Why the others cannot": {"LettaEnvironmentsVersionDrift"},
    "Replicas serving": {"LettaExporterPollFailing", "LettaExporterDown"},
    "Replicas down or not polling": {"LettaExporterReplicaDown"},
    "Upstream API requests by status code": {"LettaExporterRateLimited"},
    "Watched machines down": {"LettaEnvironmentOffline"},
    "Watched machines": {"LettaEnvironmentOffline"},
}


def test_alert_panels_link_to_their_runbooks() -> None:
    from tests.test_alerts import runbook_anchors

    anchors = runbook_anchors()
    base = BUNDLE.settings.runbook_base_url
    linked: dict[str, set[str]] = {}
    for _, item in query_panels():
        for link in item.get("links", []):
            url = link["url"]
            assert url.startswith(base + "#") and url.split("#", 1)[1] in anchors, url
            assert link["title"].startswith("Runbook: ")
            linked.setdefault(item["title"], set()).add(link["title"].removeprefix("Runbook: "))
    assert linked == RUNBOOK_PANELS
    # Every alert has a panel that leads to its runbook.
    assert set().union(*RUNBOOK_PANELS.values()) == set(BUNDLE.alerts)


def test_every_data_link_points_at_an_existing_dashboard() -> None:
    text = "".join((DASHBOARDS / name).read_text(encoding="utf-8") for name in UIDS)
    targets = set(re.findall(r'"url": "/d/([\w-]+)/', text))
    assert targets <= set(UIDS.values())
    # The tables of environments link each id to the detail dashboard.
    assert (
        "var-environment=${__value.raw}" in (DASHBOARDS / "letta-fleet-overview.json").read_text()
    )


@pytest.mark.parametrize(
    ("name", "item"), query_panels(), ids=[f"{n}:{p['title']}" for n, p in query_panels()]
)
def test_panel_conventions(name: str, item: dict[str, Any]) -> None:
    assert item["description"].strip(), "every panel says what it shows"
    assert item["fieldConfig"]["defaults"]["unit"], "every panel has a unit"
    assert item["datasource"] == DATASOURCE
    assert item["targets"], "every panel queries"
    refs = [target["refId"] for target in item["targets"]]
    assert len(refs) == len(set(refs))
    for target in item["targets"]:
        assert target["datasource"] == DATASOURCE
        assert target["expr"].strip()


def expression_problems(expr: str, *, per_environment: bool = False) -> list[str]:
    """What is wrong with one panel query: unknown variables or metrics, a selector without
    the $job/$instance (and, with ``per_environment``, $environment) matchers, a range other
    than $__rate_interval. Raises when the query does not parse."""
    text = substitute(expr)
    if "$" in text:
        return [f"unknown Grafana variable in {text!r}"]
    problems = []
    tree = promql_parser.parse(text)
    required = [
        ("job", promql_parser.MatchOp.Re, JOB),
        ("instance", promql_parser.MatchOp.Re, INSTANCE),
    ]
    selectors = [node for node in nodes(tree) if isinstance(node, promql_parser.VectorSelector)]
    if not selectors:
        problems.append("selects no series")
    for selector in selectors:
        matchers = [(m.name, m.op, m.value) for m in selector.matchers.matchers]
        if ":" in str(selector.name):
            # A recorded series of the shipped rules: replicas are folded, only $job applies.
            if selector.name not in RECORDED:
                problems.append(f"{selector.name} is not recorded by the shipped rules")
            if required[0] not in matchers:
                problems.append(f"{selector}: no job matcher")
            continue
        if selector.name not in CONTRACT | PROMETHEUS_SERIES:
            problems.append(
                f"{selector.name} is neither in docs/metrics.md nor added by Prometheus"
            )
        wanted = list(required)
        if per_environment and str(selector.name).startswith("letta_environment_"):
            wanted.append(("environment_id", promql_parser.MatchOp.Equal, ENVIRONMENT))
        problems += [f"{selector}: no {want[0]} matcher" for want in wanted if want not in matchers]
    for node in nodes(tree):
        if isinstance(node, promql_parser.MatrixSelector) and node.range != RATE_INTERVAL:
            problems.append(f"{node}: use [$__rate_interval]")
        if isinstance(node, promql_parser.SubqueryExpr):
            problems.append(f"{node}: a subquery")
    return problems


@pytest.mark.parametrize(
    ("name", "panel", "expr"), expressions(), ids=[f"{n}:{p}" for n, p, _ in expressions()]
)
def test_expression(name: str, panel: str, expr: str) -> None:
    per_environment = name == "letta-environment-detail.json"
    assert expression_problems(expr, per_environment=per_environment) == []


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ('letta_environments{job=~"$job", instance=~"$instance", state="$state"}', "variable"),
        ('node_load1{job=~"$job", instance=~"$instance"}', "node_load1 is neither"),
        ('letta_exporter_up{job=~"$job"}', "no instance matcher"),
        ('letta_exporter_up{job="$job", instance=~"$instance"}', "no job matcher"),
        ('rate(letta_exporter_polls_total{job=~"$job", instance=~"$instance"}[5m])', "use ["),
        ("time()", "selects no series"),
        ('job:letta_environments_online:sum{instance=~"$instance"}', "no job matcher"),
        ('job:letta_environments_elsewhere:sum{job=~"$job"}', "is not recorded"),
        (
            'max_over_time(letta_exporter_up{job=~"$job", instance=~"$instance"}'
            "[$__rate_interval:])",
            "a subquery",
        ),
    ],
)
def test_expression_problems_are_found(expr: str, problem: str) -> None:
    assert any(problem in found for found in expression_problems(expr))


def test_a_recorded_series_needs_only_the_job() -> None:
    assert expression_problems('job:letta_environments_online:sum{job=~"$job"}') == []


def test_a_per_environment_query_must_select_the_environment() -> None:
    expr = 'letta_environment_connected{job=~"$job", instance=~"$instance"}'
    assert expression_problems(expr) == []
    (problem,) = expression_problems(expr, per_environment=True)
    assert problem.endswith("no environment_id matcher")


def test_the_contract_is_read_from_the_docs() -> None:
    # Guards the parser of docs/metrics.md above: an empty contract would pass anything.
    assert {
        "letta_environments",
        "letta_environments_heartbeat_age_seconds_bucket",
        "letta_environment_info",
        "letta_exporter_polls_total",
        "letta_exporter_build_info",
    } <= CONTRACT


def test_the_datasource_provisioning() -> None:
    document = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    assert document["apiVersion"] == 1
    (source,) = document["datasources"]
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["url"] == "$PROMETHEUS_URL"
    assert source["access"] == "proxy"


def test_the_dashboard_provisioning_loads_these_files() -> None:
    document = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "letta.yml").read_text())
    assert document["apiVersion"] == 1
    (provider,) = document["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == PROVIDER_PATH
    # The README tells to mount grafana/dashboards/ there, and that folder holds the dashboards.
    readme = (GRAFANA / "README.md").read_text(encoding="utf-8")
    assert f"grafana/dashboards:{PROVIDER_PATH}" in readme.replace("./grafana", "grafana")
    assert all((DASHBOARDS / name).is_file() for name in UIDS)
