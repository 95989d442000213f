"""Every dashboard query, variables filled in, against a real Prometheus that scrapes two
exporter replicas polling the simulator and evaluates the shipped rules: each must return data,
the fleet must not double, and a panel shows what the alert over the same number reads."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from letta_simulator import start_simulator
from monitoring import rules
from monitoring.files import render_rules
from monitoring.settings import check_config, load_config, merge
from tests.conftest import (
    API_KEY,
    ROOT,
    exporter_process,
    free_port,
    require_tool,
    stop_process,
    wait_until,
)
from tests.test_dashboards import BUNDLE, UIDS, load, query_panels

pytestmark = pytest.mark.slow

JOB = "letta-environments-exporter"
FLEET_SIZE = 60
ONLINE_THRESHOLD = 3  # seconds, as --letta.online-threshold below
RATE_WINDOW = "30s"  # stands in for $__rate_interval; short, so the test stays short
STALE_FRACTION = 0.3
# The dashboards read the shipped recording rules: this Prometheus evaluates them, with
# LettaEnvironmentOffline watching some machines (it watches none as shipped).
WATCH = 'runtime=~"host|container"'
WATCHING = merge(load_config(), {"alerts": {"LettaEnvironmentOffline": {"selector": WATCH}}})
# No panel is excused from returning data: the simulated fleet has every kind of environment
# the dashboards single out (stale, unrestricted, outdated, prerelease, no metadata).


@dataclass(frozen=True)
class Stack:
    """The running Prometheus and what the queries' variables stand for."""

    prometheus: str
    instances: tuple[str, ...]
    environment: str
    at: float
    simulator: str = ""

    def variables(self, instance: str = ".*") -> dict[str, str]:
        return {
            "$__rate_interval": RATE_WINDOW,
            "$job": JOB,
            "$instance": instance,
            "$environment": self.environment,
            "$online_threshold": str(ONLINE_THRESHOLD),
        }

    def fill(self, expr: str, instance: str = ".*") -> str:
        """``expr`` with its Grafana variables replaced as Grafana would."""
        for variable, value in self.variables(instance).items():
            expr = expr.replace(variable, value)
        return expr

    def query(
        self, expr: str, instance: str = ".*", at: float | None = None
    ) -> list[dict[str, Any]]:
        """The instant vector ``expr`` (Grafana variables filled in) yields at ``at``."""
        expr = self.fill(expr, instance)
        moment = self.at if at is None else at
        response = httpx.get(
            f"{self.prometheus}/api/v1/query", params={"query": expr, "time": moment}, timeout=10
        )
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", body["data"]["resultType"]
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query_range(self, expr: str) -> list[dict[str, Any]]:
        """The range query Grafana runs for a time-series panel, over the last 20 s."""
        expr = self.fill(expr)
        response = httpx.get(
            f"{self.prometheus}/api/v1/query_range",
            params={"query": expr, "start": self.at - 20, "end": self.at, "step": 2},
            timeout=10,
        )
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


def prometheus_config(targets: list[str], rules: Path) -> str:
    quoted = ", ".join(f'"{target}"' for target in targets)
    return (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{rules}]\n"
        f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
        f"      - targets: [{quoted}]\n"
    )


@contextmanager
def run_prometheus(binary: str, directory: Path, targets: list[str]) -> Iterator[str]:
    """A real Prometheus scraping ``targets`` every second; yields its URL."""
    rules = directory / "rules.yml"
    rules.write_text(render_rules(check_config(WATCHING)), encoding="utf-8")
    (directory / "prometheus.yml").write_text(prometheus_config(targets, rules), encoding="utf-8")
    url = f"http://127.0.0.1:{free_port()}"
    log_path = directory / "prometheus.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            lambda: (
                process.poll() is None and httpx.get(f"{url}/-/ready", timeout=1).status_code == 200
            ),
            30,
            f"Prometheus to be ready (log: {log_path})",
        )
        assert process.poll() is None, log_path.read_text()
        yield url
    finally:
        stop_process(process)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_tool("prometheus")
    with ExitStack() as resources:
        simulator = start_simulator(
            fleet_size=FLEET_SIZE, seed=7, api_key=API_KEY, heartbeat_interval=1.0
        )
        resources.callback(simulator.close)
        args = (
            f"--letta.base-url={simulator.url}",
            "--letta.poll-interval=1s",
            f"--letta.online-threshold={ONLINE_THRESHOLD}s",
            # The simulator's registry document: release dates for the drift panels.
            f"--version.registry-url={simulator.url}/_registry",
            f"--version.pypi-url={simulator.url}/_pypi",
        )
        # Two replicas polling the same organisation, as a highly available deployment runs.
        replicas = [resources.enter_context(exporter_process(*args)) for _ in range(2)]
        silenced = httpx.post(
            f"{simulator.url}/_simulator/silence", json={"fraction": STALE_FRACTION}, timeout=5
        ).json()["silenced"]
        assert silenced, "the simulator silenced no environment"
        instances = tuple(replica.url.removeprefix("http://") for replica in replicas)
        directory = tmp_path_factory.mktemp("prometheus")
        prometheus = resources.enter_context(run_prometheus(binary, directory, list(instances)))

        def samples() -> bool:
            # Enough data for a 30s window: >= 10 scrapes of each replica.
            result = Stack(prometheus, instances, "", time.time()).query(
                f'count_over_time(letta_exporter_up{{job="{JOB}"}}[{RATE_WINDOW}]) >= 10'
            )
            return len(result) == len(instances)

        wait_until(samples, 45, "Prometheus to hold 10 s of scrapes of both exporters", 1.0)
        # A moment when the two replicas agree on the fleet, so that the per-state counts add
        # up: each is the larger of the replicas' counts, so while an environment changes
        # state between their polls it counts in both states.
        now = wait_until(
            lambda: replicas_agree(Stack(prometheus, instances, "", 0.0), time.time() - 1),
            30,
            "a moment when both replicas report the same fleet",
            0.5,
        )
        online = Stack(prometheus, instances, "", now).query(
            f'letta_environment_connected{{job="{JOB}"}} == 1 and on(job, instance, environment_id)'
            f' (time() - letta_environment_last_heartbeat_timestamp_seconds{{job="{JOB}"}}'
            f" < {ONLINE_THRESHOLD})"
        )
        assert online, "no online environment to show in the detail dashboard"
        yield Stack(
            prometheus, instances, online[0]["metric"]["environment_id"], now, simulator.url
        )


def per_replica_counts(stack: Stack, at: float) -> dict[str, dict[str, float]]:
    """Each replica's count of environments by state, at ``at``."""
    counts: dict[str, dict[str, float]] = {}
    for sample in stack.query(
        f'sum by (instance, state) (letta_environments{{job="{JOB}"}})', at=at
    ):
        metric = sample["metric"]
        counts.setdefault(metric["instance"], {})[metric["state"]] = float(sample["value"][1])
    return counts


def replicas_agree(stack: Stack, at: float) -> float | None:
    """``at`` if both replicas report the same counts over the 2 s before it and the rules
    have recorded them."""
    for moment in (at - 2, at - 1, at):
        counts = list(per_replica_counts(stack, moment).values())
        if len(counts) != 2 or counts[0] != counts[1]:
            return None
    # The rules saw them agree too (they evaluate on their own schedule).
    recorded = stack.query(f'sum({rules.BY_STATE}{{job="{JOB}"}})', at=at)
    rows = sum(counts[0].values())
    return at if recorded and float(recorded[0]["value"][1]) == rows else None


def panel_queries() -> list[tuple[str, str, str, bool]]:
    return [
        (name, f"{item['title']}/{target['refId']}", target["expr"], target.get("instant", False))
        for name, item in query_panels()
        for target in item["targets"]
    ]


@pytest.mark.parametrize(
    ("name", "panel", "expr", "instant"),
    panel_queries(),
    ids=[f"{name}:{panel}" for name, panel, _, _ in panel_queries()],
)
def test_panel_returns_data(stack: Stack, name: str, panel: str, expr: str, instant: bool) -> None:
    result = stack.query(expr)
    assert result, f"{UIDS[name]} / {panel} returned no data:\n{expr}"
    values = [float(sample["value"][1]) for sample in result]
    assert all(math.isfinite(value) for value in values), f"{panel}: {values}"
    if not instant:  # Grafana runs it as a range query over the dashboard's time range
        assert stack.query_range(expr), f"{UIDS[name]} / {panel} has no range data:\n{expr}"


def panel_expr(name: str, title: str) -> str:
    (item,) = [item for item in load(name)["panels"] if item["title"] == title]
    expr: str = item["targets"][0]["expr"]
    return expr


def single_value(stack: Stack, expr: str) -> float:
    (sample,) = stack.query(expr)
    return float(sample["value"][1])


def test_two_replicas_do_not_double_the_fleet(stack: Stack) -> None:
    overview = "letta-fleet-overview.json"
    counts = {
        state: single_value(stack, panel_expr(overview, state.capitalize()))
        for state in ("online", "stale", "offline")
    }
    # Machines re-register under new rows and old rows age out, so the number of rows moves:
    # the panels show what one replica saw at that moment, never the two added up.
    per_replica = {
        float(sample["value"][1])
        for sample in stack.query(f'sum by (instance) (letta_environments{{job="{JOB}"}})')
    }
    assert sum(counts.values()) in per_replica and sum(counts.values()) >= FLEET_SIZE, (
        counts,
        per_replica,
    )
    by_state = {
        sample["metric"]["state"]: float(sample["value"][1])
        for sample in stack.query(panel_expr(overview, "Environments by state"))
    }
    assert by_state == counts


def test_silenced_environments_show_as_stale(stack: Stack) -> None:
    overview = "letta-fleet-overview.json"
    assert single_value(stack, panel_expr(overview, "Stale")) >= 1
    assert single_value(stack, panel_expr(overview, "Stale share of connected")) > 0
    rows = stack.query(panel_expr(overview, "Stalest connected environments"))
    assert len(rows) == 20
    stalest = max(rows, key=lambda row: float(row["value"][1]))
    assert float(stalest["value"][1]) > ONLINE_THRESHOLD
    assert {"connection_name", "os", "mode", "version"} <= set(stalest["metric"])


def test_the_unrestricted_count_matches_its_table(stack: Stack) -> None:
    # The stat falls back to 0 when its query finds nothing, so check it counts for real.
    overview = "letta-fleet-overview.json"
    rows = stack.query(panel_expr(overview, "Connected environments in unrestricted mode"))
    assert {row["metric"]["mode"] for row in rows} == {"unrestricted"}
    assert single_value(stack, panel_expr(overview, "Connected in unrestricted mode")) == len(rows)


def test_the_detail_dashboard_shows_the_chosen_environment_online(stack: Stack) -> None:
    detail = "letta-environment-detail.json"
    assert single_value(stack, panel_expr(detail, "State")) == 2  # online
    (row,) = stack.query(panel_expr(detail, "Metadata"))
    assert row["metric"]["environment_id"] == stack.environment


def test_the_picture_script_renders_from_this_prometheus(stack: Stack, tmp_path: Path) -> None:
    output = tmp_path / "overview.png"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "render_dashboard_png.py"),
            f"--prometheus={stack.prometheus}",
            "--range=30s",
            f"--job={JOB}",
            f"--output={output}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert output.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert output.stat().st_size > 20_000, "an almost empty picture"


def test_the_instance_variable_selects_one_replica(stack: Stack) -> None:
    # Grafana escapes a chosen value for a regex matcher; PromQL needs the backslashes doubled.
    chosen = stack.instances[0]
    escaped = re.escape(chosen).replace("\\", "\\\\")
    result = stack.query(panel_expr("letta-exporter-health.json", "Exporter up"), escaped)
    assert [sample["metric"]["instance"] for sample in result] == [chosen]


# Shared quantities: (dashboard, panel, the recorded series the alerts named read).
SHARED = [
    ("letta-fleet-overview.json", "Online", rules.ONLINE, ("LettaEnvironmentsNoneOnline",)),
    ("letta-fleet-overview.json", "Environments by state", rules.BY_STATE, ()),
    (
        "letta-fleet-overview.json",
        "Outdated share (connected)",
        rules.OUTDATED_RATIO,
        ("LettaEnvironmentsVersionDrift",),
    ),
    (
        "letta-fleet-overview.json",
        "Connected in unrestricted mode",
        rules.UNRESTRICTED,
        ("LettaEnvironmentsUnrestrictedMode",),
    ),
    (
        "letta-fleet-overview.json",
        "Watched machines",
        rules.WATCHED,
        ("LettaEnvironmentOffline",),
    ),
    (
        "letta-exporter-health.json",
        "Replicas serving",
        rules.REPLICAS_SERVING,
        ("LettaExporterReplicaDown", "LettaExporterPollFailing"),
    ),
    (
        "letta-exporter-health.json",
        "Replicas down or not polling",
        rules.REPLICAS_FAILING,
        ("LettaExporterReplicaDown",),
    ),
]


def by_labels(result: list[dict[str, Any]], *drop: str) -> dict[str, float]:
    return {
        json.dumps({k: v for k, v in r["metric"].items() if k not in drop}, sort_keys=True): float(
            r["value"][1]
        )
        for r in result
    }


def test_panels_show_what_alerts_read_while_replicas_disagree(stack: Stack) -> None:
    """With two replicas that poll at different moments, at an instant when they report
    different fleets, each panel over a number an alert watches returns the alert's input."""
    shipped = {rule["alert"]: rule["expr"] for rule in rules.alerting_rules(check_config(WATCHING))}
    # Environments going silent now change state at each replica's own next poll.
    online_now = [
        sample["metric"]["environment_id"]
        for sample in stack.query(
            f'letta_environment_connected{{job="{JOB}"}} == 1', at=time.time() - 1
        )
        if sample["metric"]["environment_id"] != stack.environment
    ]
    httpx.post(
        f"{stack.simulator}/_simulator/silence", json={"ids": online_now[:8]}, timeout=5
    ).raise_for_status()

    def disagreeing() -> float | None:
        at = time.time() - 1.5
        counts = list(per_replica_counts(stack, at).values())
        return at if len(counts) == 2 and counts[0] != counts[1] else None

    at = wait_until(
        disagreeing, 30, "an instant when the two replicas report different fleets", 0.1
    )
    for dashboard, title, series, alerts in SHARED:
        for alert in alerts:
            assert series in shipped[alert], f"{alert} does not read {series}"
        panel = by_labels(stack.query(panel_expr(dashboard, title), at=at), "__name__")
        alert_input = by_labels(
            stack.query(f"{series}{{{BUNDLE.settings.job_selector}}}", at=at), "__name__"
        )
        assert panel, f"{title}: no data"
        assert panel == alert_input, (title, panel, alert_input)

    # Per environment: the stalest table's ages are the ages HeartbeatStale compares.
    rows = stack.query(
        panel_expr("letta-fleet-overview.json", "Stalest connected environments"), at=at
    )
    ages = {
        sample["metric"]["environment_id"]: float(sample["value"][1])
        for sample in stack.query(rules.heartbeat_age(BUNDLE.settings), at=at)
    }
    assert len(rows) == 20
    for row in rows:
        assert float(row["value"][1]) == ages[row["metric"]["environment_id"]], row
    # ...while the replicas' own heartbeat timestamps differ (they polled at other moments).
    differ = stack.query(
        f'count by (environment_id) (count_values by (environment_id) ("ts", '
        f'letta_environment_last_heartbeat_timestamp_seconds{{job="{JOB}"}})) > 1',
        at=at,
    )
    assert differ, "the replicas report the same heartbeats: they poll at the same moments"
