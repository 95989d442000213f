"""End to end on loopback: simulator -> two exporter replicas -> Prometheus with the shipped rules
(short thresholds from the same generator) -> Alertmanager with the example routing -> a
webhook receiver of the test's own. Everything real, every wait bounded."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml

from letta_simulator import start_simulator
from monitoring.rules import WATCHED
from monitoring.settings import load_config, merge
from tests.conftest import (
    API_KEY,
    TIME_TO_KNOW,
    exporter_process,
    free_port,
    require_tool,
    stop_process,
    wait_until,
)
from tests.test_alerts import ALERTMANAGER_EXAMPLE, JOB, rules_text

pytestmark = pytest.mark.slow

STALE = "LettaEnvironmentHeartbeatStale"
OFFLINE = "LettaEnvironmentOffline"
# Healthy heartbeats look at most ~3 s old here (1 s heartbeats, polls, scrapes and
# evaluations); 6 s is clear of that, and 2 s of `for` is two evaluations.
SHORT_RULES = {
    "alerts": {
        STALE: {"threshold": "6s", "for": "2s"},
        OFFLINE: {"threshold": "6s", "for": "2s", "lookback": "1m"},
    }
}
LEASE_TIMEOUT = 3.0  # the simulated relay clears a silent machine's lease after this long
START_TIMEOUT = 15.0  # a server to be ready, the first scrapes to land


# --- a webhook receiver -------------------------------------------------------------------


@dataclass
class Notification:
    path: str
    payload: dict[str, Any]
    received_at: float = field(default_factory=time.time)


@dataclass
class WebhookReceiver:
    """Collects Alertmanager's webhook notifications, by URL path, in arrival order."""

    url: str
    notifications: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def received(self) -> list[Notification]:
        with self.lock:
            return list(self.notifications)

    def alerts(self, alertname: str) -> list[tuple[str, dict[str, Any]]]:
        """(receiver path, alert) for every notified alert of that name, oldest first."""
        return [
            (n.path, alert)
            for n in self.received()
            for alert in n.payload.get("alerts", [])
            if alert["labels"].get("alertname") == alertname
        ]

    def latest_status(self, alertname: str, key: str) -> dict[str, str]:
        """The last notified status of each alert of that name, by its label ``key``."""
        status: dict[str, str] = {}
        for _, alert in self.alerts(alertname):
            status[alert["labels"].get(key, "")] = alert["status"]
        return status

    def first_notified(self, alertname: str) -> float:
        """When the first notification that fires an alert of that name arrived."""
        return min(
            n.received_at
            for n in self.received()
            for alert in n.payload.get("alerts", [])
            if alert["labels"].get("alertname") == alertname and alert["status"] == "firing"
        )


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    receiver: WebhookReceiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with receiver.lock:
                receiver.notifications.append(Notification(self.path, json.loads(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = WebhookReceiver(f"http://127.0.0.1:{server.server_port}")
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


# --- real servers -------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])


@contextmanager
def server_process(name: str, argv: list[str], port: int, workdir: Path) -> Iterator[Server]:
    """Run a Prometheus-style server until /-/ready answers; always stopped afterwards."""
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server(f"http://127.0.0.1:{port}", log_path)
    try:

        def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"{name} exited with {process.returncode}:\n{server.log_tail()}")
            return httpx.get(f"{server.url}/-/ready", timeout=1).status_code == 200

        wait_until(ready, START_TIMEOUT, f"{name} to be ready")
        yield server
    finally:
        stop_process(process)


def alertmanager_config(webhook: str) -> dict[str, Any]:
    """The shipped example, with its receivers pointed at ``webhook`` and its timers short."""
    config: dict[str, Any] = yaml.safe_load(ALERTMANAGER_EXAMPLE.read_text(encoding="utf-8"))
    config["global"]["resolve_timeout"] = "10s"

    def shorten(route: dict[str, Any]) -> None:
        for key, value in (("group_wait", "1s"), ("group_interval", "1s")):
            if key in route:
                route[key] = value
        if "repeat_interval" in route:
            route["repeat_interval"] = "1h"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    config["route"]["group_wait"] = config["route"]["group_interval"] = "1s"
    for receiver in config["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook + urlsplit(hook["url"]).path
            hook["send_resolved"] = True
    return config


@contextmanager
def alertmanager(webhook: str, workdir: Path) -> Iterator[Server]:
    binary = require_tool("prometheus-alertmanager", "alertmanager")
    config = workdir / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(webhook)), encoding="utf-8")
    (workdir / "am-data").mkdir()
    port = free_port()
    argv = [
        binary,
        f"--config.file={config}",
        f"--storage.path={workdir / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip: a single instance on loopback
        "--log.level=warn",
    ]
    with server_process("alertmanager", argv, port, workdir) as server:
        yield server


@contextmanager
def prometheus(
    targets: list[dict[str, Any]], am_url: str, rules: str, workdir: Path
) -> Iterator[Server]:
    """A real Prometheus scraping the static ``targets`` (with their labels) in the one job."""
    binary = require_tool("prometheus")
    (workdir / "rules.yml").write_text(rules, encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["rules.yml"],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [urlsplit(am_url).netloc]}]}]
        },
        "scrape_configs": [{"job_name": JOB, "static_configs": targets}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (workdir / "tsdb").mkdir()
    port = free_port()
    argv = [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--rules.alert.resend-delay=1s",
        "--log.level=warn",
    ]
    with server_process("prometheus", argv, port, workdir) as server:
        yield server


def query(prom: Server, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prom.url}/api/v1/query", params={"query": expr}, timeout=2)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def rule_names(prom: Server) -> set[str]:
    response = httpx.get(f"{prom.url}/api/v1/rules", timeout=2)
    response.raise_for_status()
    return {rule["name"] for group in response.json()["data"]["groups"] for rule in group["rules"]}


def scalar(prom: Server, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def wait_for(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    *servers: Server,
) -> Any:
    """wait_until, with the servers' logs on failure."""
    try:
        return wait_until(predicate, timeout, what, interval=0.25)
    except pytest.fail.Exception as exc:
        logs = "\n".join(f"--- {s.log_path.name}:\n{s.log_tail()}" for s in servers)
        raise pytest.fail.Exception(f"{exc}\n{logs}") from None


MARKER_JOB = "marker"  # a job no exporter has: its alert proves the earlier groups flushed


def flushed_after(am: Server, hooks: WebhookReceiver) -> None:
    """Post a new, uninhibited alert and wait until it is delivered: every group created
    before it has then passed its group_wait and been flushed, so an alert not delivered by
    now was held back, not late."""
    marker = {
        "labels": {"alertname": STALE, "severity": "warning", "job": MARKER_JOB},
        "annotations": {"summary": "marker"},
    }
    httpx.post(f"{am.url}/api/v2/alerts", json=[marker], timeout=5).raise_for_status()
    wait_for(
        lambda: any(a["labels"]["job"] == MARKER_JOB for _, a in hooks.alerts(STALE)),
        15,
        "the marker alert, sent after the others",
        am,
    )


def alerting_stack(
    stack: ExitStack, base_url: str, rules: str, workdir: Path
) -> tuple[WebhookReceiver, Server, Server]:
    """Two exporter replicas of one job polling ``base_url`` every second, Alertmanager with
    the example routing to a webhook of the test's, and Prometheus with ``rules`` scraping the
    replicas: (webhook, Alertmanager, Prometheus)."""
    flags = (
        f"--letta.base-url={base_url}",
        "--letta.poll-interval=1s",
        "--letta.online-threshold=3s",
    )
    # Two replicas of one job polling the same organisation: an alert must page once.
    replicas = [stack.enter_context(exporter_process(*flags)) for _ in range(2)]
    hooks = stack.enter_context(webhook_receiver())
    am = stack.enter_context(alertmanager(hooks.url, workdir))
    targets = [urlsplit(r.url).netloc for r in replicas]
    prom = stack.enter_context(prometheus([{"targets": targets}], am.url, rules, workdir))
    return hooks, am, prom


# --- the tests ----------------------------------------------------------------------------


def rules_evaluated_after(prom: Server, moment: float) -> bool:
    """True once Prometheus has evaluated the rule group at a time after ``moment``."""
    response = httpx.get(f"{prom.url}/api/v1/rules", timeout=2)
    response.raise_for_status()
    groups = response.json()["data"]["groups"]
    return bool(groups) and all(
        datetime.fromisoformat(g["lastEvaluation"]).timestamp() > moment for g in groups
    )


def test_dead_and_stuck_machines_page_once_through_alertmanager_and_resolve(
    workdir: Path,
) -> None:
    """Both ways a machine goes silent, end to end, with the seconds from its last heartbeat
    to the notification measured: the relay clears a dead watched machine's lease
    (LettaEnvironmentOffline), or keeps it stuck (LettaEnvironmentHeartbeatStale)."""
    with ExitStack() as stack:
        sim = start_simulator(
            fleet_size=30,
            seed=7,
            api_key=API_KEY,
            heartbeat_interval=1.0,
            churn=False,
            lease_timeout=LEASE_TIMEOUT,
        )
        stack.callback(sim.close)
        live = [spec for spec in sim.fleet.specs if not spec.never_connected]
        # Watched: one machine that dies and one that stays up; a third dies unwatched.
        dying, healthy, unwatched = live[0], live[1], live[2]
        names = (dying.connection_name, healthy.connection_name)
        assert all(re.fullmatch(r"[a-z0-9-]+", name) for name in names)
        watch = f'connection_name=~"{"|".join(names)}"'
        short = merge(SHORT_RULES, {"alerts": {OFFLINE: {"selector": watch}}})
        rules = rules_text(merge(load_config(), short))
        hooks, am, prom = alerting_stack(stack, sim.url, rules, workdir)
        servers = (prom, am)

        specs = {spec.id: spec for spec in sim.fleet.specs}
        connected = 30 - httpx.get(f"{sim.url}/_simulator/state").json()["offline"]
        assert connected >= 20

        # Both replicas scraped, the fleet's connected environments seen, the rules loaded.
        wait_for(
            lambda: scalar(prom, f'count(up{{job="{JOB}"}} == 1)') == 2,
            START_TIMEOUT,
            "Prometheus to scrape both exporter replicas",
            *servers,
        )
        leased = f'count(max without (instance) (letta_environment_connected{{job="{JOB}"}}) == 1)'
        wait_for(
            lambda: scalar(prom, leased) == connected,
            START_TIMEOUT,
            f"{connected} connected environments in Prometheus",
            *servers,
        )
        watched = f'count({WATCHED}{{job="{JOB}"}} == 1)'
        wait_for(
            lambda: scalar(prom, watched) == 2,
            START_TIMEOUT,
            "both watched machines recorded online",
            *servers,
        )
        # While every machine heartbeats, nothing is pending or firing: three more evaluations.
        settled = time.time() + 3
        wait_for(
            lambda: rules_evaluated_after(prom, settled),
            START_TIMEOUT,
            "three more rule evaluations",
            *servers,
        )
        assert query(prom, f'ALERTS{{alertname=~"{STALE}|{OFFLINE}"}}') == []
        assert hooks.alerts(STALE) == hooks.alerts(OFFLINE) == []

        # The machines go silent: six leases get stuck, two machines die (one watched).
        silenced_ids = {spec.id for spec in live[3:9]}
        httpx.post(f"{sim.url}/_simulator/silence", json={"ids": sorted(silenced_ids)})
        silenced_at = max(sim.fleet.silenced[i] for i in silenced_ids)
        died = httpx.post(
            f"{sim.url}/_simulator/stop",
            json={"names": [dying.connection_name, unwatched.connection_name]},
        ).json()["last_heartbeat"]

        def firing(alertname: str, key: str) -> set[str]:
            return {k for k, s in hooks.latest_status(alertname, key).items() if s == "firing"}

        wait_for(
            lambda: firing(OFFLINE, "connection_name") == {dying.connection_name},
            30,
            f"{OFFLINE} firing at the webhook for {dying.connection_name}",
            *servers,
        )
        # The unwatched machine died at the same moment: it would be pending or firing now.
        assert {
            a["metric"]["connection_name"] for a in query(prom, f'ALERTS{{alertname="{OFFLINE}"}}')
        } == {dying.connection_name}
        wait_for(
            lambda: firing(STALE, "environment_id") >= silenced_ids,
            30,
            f"{STALE} firing at the webhook for {sorted(silenced_ids)}",
            *servers,
        )

        # Exactly the silent environments were notified, nothing else, once each.
        assert set(hooks.latest_status(STALE, "environment_id")) == silenced_ids
        for alertname, key, expected in (
            (STALE, "environment_id", len(silenced_ids)),
            (OFFLINE, "connection_name", 1),
        ):
            notified = hooks.alerts(alertname)
            label_sets = {json.dumps(a["labels"], sort_keys=True) for _, a in notified}
            assert len(label_sets) == expected, (alertname, label_sets)  # not one per replica
            for path, alert in notified:
                labels = alert["labels"]
                assert path == "/hooks/letta-ticket"  # a warning opens a ticket
                assert labels["severity"] == "warning" and labels["job"] == JOB, labels
                assert "instance" not in labels and key in labels
                assert alert["annotations"]["runbook_url"].endswith(f"#{alertname.lower()}")
        for _, alert in hooks.alerts(STALE):
            spec = specs[alert["labels"]["environment_id"]]
            assert alert["labels"]["connection_name"] == spec.connection_name
            assert alert["labels"]["device_id"] == spec.device_id
            assert spec.connection_name in alert["annotations"]["description"]
        (_, offline_alert), *_ = hooks.alerts(OFFLINE)
        assert "its rows are offline" in offline_alert["annotations"]["description"]

        # The seconds from the last heartbeat to the notification, on each path.
        offline_after = hooks.first_notified(OFFLINE) - died[dying.connection_name]
        stale_after = hooks.first_notified(STALE) - silenced_at
        # Neither can come sooner than the facts allow: the relay's timeout, then `for`.
        assert offline_after >= LEASE_TIMEOUT + 2, offline_after
        assert stale_after >= 6 + 2, stale_after
        TIME_TO_KNOW.append(
            f"{OFFLINE} (lease cleared): {offline_after:.1f} s from the last heartbeat; "
            f"{STALE} (lease stuck): {stale_after:.1f} s (lease timeout {LEASE_TIMEOUT:g} s, "
            "heartbeat, poll, scrape and evaluation every 1 s, threshold 6 s, for 2 s, "
            "group_wait 1 s)"
        )

        # They come back: the dead machine under a new row (its old row stays, offline), the
        # stuck ones heartbeat again; both alerts resolve.
        httpx.delete(f"{sim.url}/_simulator/stop")
        httpx.delete(f"{sim.url}/_simulator/silence")
        rows = [row for row, _ in sim.fleet.rows(dying, sim.fleet.clock())]
        assert len(rows) == 2 and rows[0]["connectionId"] is None and rows[1]["connectionId"]
        wait_for(
            lambda: (
                hooks.latest_status(OFFLINE, "connection_name")
                == {dying.connection_name: "resolved"}
            ),
            30,
            f"{OFFLINE} resolved at the webhook",
            *servers,
        )
        wait_for(
            lambda: all(
                hooks.latest_status(STALE, "environment_id")[e] == "resolved" for e in silenced_ids
            ),
            20,
            f"{STALE} resolved at the webhook",
            *servers,
        )
        assert query(prom, f'ALERTS{{alertname=~"{STALE}|{OFFLINE}", alertstate="firing"}}') == []
        assert set(hooks.latest_status(STALE, "environment_id")) == silenced_ids
        assert set(hooks.latest_status(OFFLINE, "connection_name")) == {dying.connection_name}


def test_alertmanager_inhibits_fleet_alerts_while_the_exporter_is_down(workdir: Path) -> None:
    """The shipped inhibitions and routes, fed alerts straight through Alertmanager's API."""

    def alert(name: str, severity: str, job: str, **labels: str) -> dict[str, Any]:
        return {
            "labels": {"alertname": name, "severity": severity, "job": job, **labels},
            "annotations": {"summary": name},
        }

    with webhook_receiver() as hooks, alertmanager(hooks.url, workdir) as am:
        sent = [
            # job a: the exporter is down, so its environments' alerts are inhibited.
            alert("LettaExporterDown", "critical", "a"),
            alert(STALE, "warning", "a", environment_id="env-1"),
            alert("LettaEnvironmentsOnlineDrop", "critical", "a"),
            # job b: none online inhibits the (implied) drop alert of the same job.
            alert("LettaEnvironmentsNoneOnline", "critical", "b"),
            alert("LettaEnvironmentsOnlineDrop", "critical", "b"),
            # job c: nothing inhibits it; the info alert goes to the low-noise receiver.
            alert(STALE, "warning", "c", environment_id="env-2"),
            alert("LettaEnvironmentsUnrestrictedMode", "info", "c"),
        ]
        httpx.post(f"{am.url}/api/v2/alerts", json=sent, timeout=5).raise_for_status()

        def delivered() -> set[tuple[str, str, str]]:
            return {
                (n.path.rsplit("/", 1)[-1], a["labels"]["alertname"], a["labels"]["job"])
                for n in hooks.received()
                for a in n.payload["alerts"]
            }

        expected = {
            ("letta-pager", "LettaExporterDown", "a"),
            ("letta-pager", "LettaEnvironmentsNoneOnline", "b"),
            ("letta-ticket", STALE, "c"),
            ("letta-low-noise", "LettaEnvironmentsUnrestrictedMode", "c"),
        }
        wait_for(lambda: delivered() >= expected, 15, "the uninhibited alerts", am)

        def suppressed() -> set[tuple[str, str]]:
            response = httpx.get(f"{am.url}/api/v2/alerts", timeout=2)
            response.raise_for_status()
            return {
                (a["labels"]["alertname"], a["labels"]["job"])
                for a in response.json()
                if a["status"]["state"] == "suppressed" and a["status"]["inhibitedBy"]
            }

        held = {
            (STALE, "a"),
            ("LettaEnvironmentsOnlineDrop", "a"),
            ("LettaEnvironmentsOnlineDrop", "b"),
        }
        wait_for(lambda: suppressed() == held, 10, "the inhibited alerts held back", am)
        flushed_after(am, hooks)
        assert delivered() == expected | {("letta-ticket", STALE, MARKER_JOB)}


def test_an_organisation_that_cannot_poll_silences_only_its_own_alerts(workdir: Path) -> None:
    """Two organisations in one job, told apart by `organization`: acme's API fails, so its
    exporter serves an ageing fleet and its environments look silent; Alertmanager inhibits
    those alerts under acme's LettaExporterPollFailing, and delivers globex's."""
    polling = "LettaExporterPollFailing"
    short = merge(
        SHORT_RULES,
        {"missed_polls": 2, "alerts": {polling: {"for": "1s"}}},
    )
    rules = rules_text(merge(load_config(), short))
    with ExitStack() as stack:
        exporters = {}
        simulators = {}
        for seed, organization in enumerate(("acme", "globex"), start=11):
            sim = start_simulator(
                fleet_size=20, seed=seed, api_key=API_KEY, heartbeat_interval=1.0, churn=False
            )
            stack.callback(sim.close)
            simulators[organization] = sim
            flags = (
                f"--letta.base-url={sim.url}",
                "--letta.poll-interval=1s",
                "--letta.online-threshold=3s",
                "--letta.max-retries=0",
            )
            exporters[organization] = stack.enter_context(exporter_process(*flags))
        hooks = stack.enter_context(webhook_receiver())
        am = stack.enter_context(alertmanager(hooks.url, workdir))
        targets = [
            {"targets": [urlsplit(e.url).netloc], "labels": {"organization": organization}}
            for organization, e in exporters.items()
        ]
        prom = stack.enter_context(prometheus(targets, am.url, rules, workdir))
        servers = (prom, am)
        wait_for(
            lambda: scalar(prom, f'count(letta_exporter_up{{job="{JOB}"}} == 1)') == 2,
            START_TIMEOUT,
            "both organisations polled and scraped",
            *servers,
        )
        wait_for(
            lambda: STALE in rule_names(prom),
            START_TIMEOUT,
            "the rules to load",
            *servers,
        )
        acme_connected = {
            sample["metric"]["environment_id"]
            for sample in query(
                prom, f'letta_environment_connected{{job="{JOB}", organization="acme"}} == 1'
            )
        }
        assert acme_connected, "acme has no connected environment"
        httpx.post(
            f"{simulators['acme'].url}/_simulator/faults", json={"status": 503}
        ).raise_for_status()
        silenced = httpx.post(
            f"{simulators['globex'].url}/_simulator/silence", json={"fraction": 0.3}
        ).json()["silenced"]
        assert silenced

        def notified(alertname: str, organization: str) -> set[str]:
            return {
                alert["labels"].get("environment_id", "")
                for _, alert in hooks.alerts(alertname)
                if alert["labels"].get("organization") == organization
                and alert["status"] == "firing"
            }

        wait_for(
            lambda: (
                notified(polling, "acme") == {""} and notified(STALE, "globex") >= set(silenced)
            ),
            30,
            f"{polling} for acme and {STALE} for globex's silent environments",
            *servers,
        )
        # acme's environments fire in Prometheus too (their heartbeats stopped ageing in the
        # exporter's last good fleet)...
        acme_stale = f'ALERTS{{alertname="{STALE}", alertstate="firing", organization="acme"}}'
        wait_for(
            lambda: query(prom, acme_stale),
            20,
            f"{STALE} firing in Prometheus for acme",
            *servers,
        )

        def acme_in_alertmanager() -> list[dict[str, Any]]:
            response = httpx.get(
                f"{am.url}/api/v2/alerts",
                params={"filter": [f'alertname="{STALE}"', 'organization="acme"']},
                timeout=2,
            )
            response.raise_for_status()
            alerts: list[dict[str, Any]] = response.json()
            return alerts

        # ...and reach Alertmanager, which holds them back under acme's exporter alert.
        held = wait_for(acme_in_alertmanager, 10, f"acme's {STALE} in Alertmanager", am)
        assert all(a["status"]["state"] == "suppressed" for a in held), held
        assert all(a["status"]["inhibitedBy"] for a in held), held
        flushed_after(am, hooks)
        assert notified(STALE, "acme") == set()
        assert not any(
            a["labels"].get("organization") == "globex" for _, a in hooks.alerts(polling)
        )
