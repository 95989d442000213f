"""Real Letta Code listeners, pinned releases from PyPI, against the simulated platform: what
they send reaches the exporter's series, and the alerts see them die, freeze and restart.

Everything here is real: the `letta` client (its own Node), the simulator's registration and
relay WebSocket, the exporter's CLI, Prometheus, Alertmanager and a webhook receiver.
"""

from __future__ import annotations

import os
import platform
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from letta_simulator import SimulatorHTTPServer, start_simulator
from letta_simulator.listeners import ReRegistration
from monitoring.rules import WATCHED
from monitoring.settings import load_config, merge
from tests.conftest import API_KEY, TIME_TO_KNOW, exporter_process, wait_until
from tests.fleet import Samples, samples_by_name, total
from tests.letta_code import CURRENT, OLDER, Listener, install, node_version
from tests.test_alerting_e2e import (
    OFFLINE,
    START_TIMEOUT,
    alerting_stack,
    query,
    rules_evaluated_after,
    scalar,
    wait_for,
)
from tests.test_alerts import JOB, rules_text

pytestmark = pytest.mark.slow

HEARTBEAT = 1.0  # the relay pings every second
LEASE_TIMEOUT = 3.0  # and clears a silent listener's lease after three
NPM_LATEST = "0.32.18"  # what npm's `latest` tag said when this was written; PyPI said 0.34.12
# A watched machine pages after 10 s without a row online: longer than a restart of the real
# client takes here (1-2 s idle, a few seconds with the machine busy), so a restart pages nobody.
OFFLINE_FOR = 10.0
OFFLINE_RULES = {
    "alerts": {OFFLINE: {"threshold": "6s", "for": f"{OFFLINE_FOR:g}s", "lookback": "1m"}}
}


@pytest.fixture(scope="session")
def letta_code() -> dict[str, Path]:
    """The `letta` command of each pinned release, installed into the cache side by side."""
    with ThreadPoolExecutor(2) as pool:
        commands = dict(zip((CURRENT, OLDER), pool.map(install, (CURRENT, OLDER)), strict=True))
    return commands


def platform_side(
    rule: ReRegistration = ReRegistration.SAME_ROW, lease_timeout: float = LEASE_TIMEOUT
) -> SimulatorHTTPServer:
    """The simulated platform with no synthetic fleet: only what registers is listed."""
    sim = start_simulator(
        fleet_size=0,
        api_key=API_KEY,
        heartbeat_interval=HEARTBEAT,
        lease_timeout=lease_timeout,
        reregistration=rule,
    )
    sim.latest["npm"] = NPM_LATEST
    return sim


def listed(sim: SimulatorHTTPServer) -> list[dict[str, Any]]:
    """The rows `GET /v1/environments` lists, as the exporter pages them."""
    response = httpx.get(
        f"{sim.url}/v1/environments",
        headers={"Authorization": f"Bearer {API_KEY}"},
        params={"limit": "1000"},
        timeout=5,
    )
    response.raise_for_status()
    rows: list[dict[str, Any]] = response.json()["connections"]
    return rows


def online(sim: SimulatorHTTPServer, name: str) -> dict[str, Any] | None:
    """The leased row of that connection name, if one holds a lease."""
    return next((r for r in listed(sim) if r["connectionName"] == name and r["connectionId"]), None)


def start(
    stack: ExitStack,
    sim: SimulatorHTTPServer,
    command: Path,
    workdir: Path,
    name: str,
    key: str = API_KEY,
) -> Listener:
    home = workdir / name
    home.mkdir()
    listener = Listener(command, name, sim.url, key, home)
    stack.callback(listener.stop)
    listener.start()
    return listener


def until_online(sim: SimulatorHTTPServer, listener: Listener) -> dict[str, Any]:
    def leased() -> dict[str, Any] | None:
        assert listener.process is not None
        if listener.process.poll() is not None:
            pytest.fail(
                f"{listener.name} exited {listener.process.returncode}:\n"
                f"{listener.output()[-2000:]}"
            )
        return online(sim, listener.name)

    row: dict[str, Any] = wait_until(leased, 60, f"{listener.name} to register and connect")
    return row


def series(exporter_url: str) -> Samples:
    return samples_by_name(httpx.get(f"{exporter_url}/metrics", timeout=5).content)


def info_of(samples: Samples, name: str) -> dict[str, str]:
    rows = [
        labels
        for labels, _ in samples.get("letta_environment_info", [])
        if labels["connection_name"] == name
    ]
    assert len(rows) == 1, rows
    return rows[0]


def value(samples: Samples, name: str, **labels: str) -> float:
    return total(samples.get(name, []), **labels)


def os_release() -> dict[str, str]:
    fields = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, _, raw = line.partition("=")
        fields[key] = raw.strip('"')
    return fields


# --- what a real client sends, through the real exporter ----------------------------------


def test_every_fact_a_real_client_sends_reaches_the_exporter(
    letta_code: dict[str, Path], workdir: Path
) -> None:
    """Two releases side by side: each fact either sent reaches `letta_environment_info` exactly,
    and the current release is PyPI's (npm's `latest` lags), so only the older one is behind."""
    with ExitStack() as stack:
        sim = platform_side()
        stack.callback(sim.close)
        new = start(stack, sim, letta_code[CURRENT], workdir, "lab-current")
        old = start(stack, sim, letta_code[OLDER], workdir, "lab-older")
        sent = {listener.name: until_online(sim, listener) for listener in (new, old)}
        registry = (
            f"--version.registry-url={sim.url}/_registry",
            f"--version.pypi-url={sim.url}/_pypi",
        )
        flags = (
            f"--letta.base-url={sim.url}",
            "--letta.poll-interval=1s",
            "--letta.online-threshold=3s",
        )
        both = stack.enter_context(exporter_process(*flags, *registry))
        npm_only = stack.enter_context(exporter_process(*flags, registry[0], "--no-version.pypi"))
        samples = wait_until(
            lambda: (
                (s := series(both.url))
                and value(s, "letta_environments", state="online") == 2
                and s
            ),
            20,
            "both listeners online in the exporter",
        )

        machine = sent["lab-current"]["metadata"]["machine"]
        host = os_release()
        for name, version in (("lab-current", CURRENT), ("lab-older", OLDER)):
            labels = info_of(samples, name)
            metadata = sent[name]["metadata"]
            # Facts of the machine and the install, from the machine itself.
            assert labels["version"] == metadata["lettaCodeVersion"] == version
            assert labels["node_version"] == metadata["nodeVersion"]
            assert metadata["nodeVersion"] == node_version(letta_code[version]).strip()
            assert labels["os"] == metadata["os"] == sys.platform
            assert labels["device_id"] == sent[name]["deviceId"]
            assert labels["user_id"] == sent[name]["userId"]
            assert metadata["self_update"]["reason"] == (
                "This Letta Code runtime is managed by a Python package installer."
            )
            if version == OLDER:
                assert "machine" not in metadata
                machine_labels = (labels[k] for k in ("runtime", "arch", "os_name", "os_version"))
                assert tuple(machine_labels) == ("unknown",) * 4
        labels = info_of(samples, "lab-current")
        assert machine["osName"] == labels["os_name"] == host["NAME"]
        assert machine["osVersion"] == labels["os_version"] == host["VERSION_ID"]
        assert (
            labels["arch"]
            == machine["architecture"]
            == {"x86_64": "x64", "aarch64": "arm64"}[platform.machine()]
        )
        in_container = machine.get("model") == "Container"
        assert labels["runtime"] == ("container" if in_container else "host")
        assert (
            value(
                samples,
                "letta_environments_machine",
                state="online",
                runtime=labels["runtime"],
                os_name=host["NAME"],
            )
            == 1
        )
        assert value(samples, "letta_environments_memory_bytes_count") == 1  # only 0.34 says
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        assert value(samples, "letta_environments_memory_bytes_sum") == machine["memoryBytes"]
        assert machine["memoryBytes"] == memory
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
        assert machine["cpu"] == cpu
        assert value(samples, "letta_environments_cpu", cpu=cpu) == 1

        # The current release is the newest of both channels: PyPI's, so 0.33 is behind.
        assert (
            value(samples, "letta_environments_latest_version_info", version=CURRENT, source="pypi")
            == 1
        )
        assert value(samples, "letta_environments_outdated", behind="minor") == 1
        assert value(samples, "letta_environments_not_upgradable", reason="python_installer") == 1
        assert value(samples, "letta_environments_upgradable") == 0
        # With npm alone, `latest` is older than both: the fleet would count as current.
        npm = wait_until(
            lambda: (s := series(npm_only.url)) and value(s, "letta_environments") == 2 and s,
            20,
            "the npm-only exporter's fleet",
        )
        assert (
            value(
                npm, "letta_environments_latest_version_info", version=NPM_LATEST, source="registry"
            )
            == 1
        )
        assert value(npm, "letta_environments_outdated") == 0


def test_a_healthy_client_stays_online_through_many_relay_timeouts(
    letta_code: dict[str, Path], workdir: Path
) -> None:
    """Five lease timeouts of a client that only answers the relay's pings: one lease, never
    dropped, its heartbeat always younger than the timeout."""
    with ExitStack() as stack:
        sim = platform_side()
        stack.callback(sim.close)
        listener = start(stack, sim, letta_code[CURRENT], workdir, "steady")
        first = until_online(sim, listener)
        exporter = stack.enter_context(
            exporter_process(
                f"--letta.base-url={sim.url}",
                "--letta.poll-interval=1s",
                "--letta.online-threshold=3s",
            )
        )
        watched_until = time.monotonic() + 5 * LEASE_TIMEOUT
        beats = set()
        while time.monotonic() < watched_until:
            row = online(sim, "steady")
            assert row is not None, "the lease dropped"
            assert row["connectionId"] == first["connectionId"]  # no reconnect
            assert row["connectedAt"] == first["connectedAt"]
            assert time.time() - row["lastHeartbeat"] / 1000 < LEASE_TIMEOUT
            beats.add(row["lastHeartbeat"])
            samples = series(exporter.url)
            assert value(samples, "letta_environments", state="online") == 1
            assert value(samples, "letta_environments", state="offline") == 0
            time.sleep(0.25)  # the sampling rate of a watch over a fixed span, not a wait
        assert len(beats) >= 5 * LEASE_TIMEOUT / HEARTBEAT - 2, sorted(beats)  # pongs, each second


def test_a_wrong_key_is_refused_and_never_listed(
    letta_code: dict[str, Path], workdir: Path
) -> None:
    with ExitStack() as stack:
        sim = platform_side()
        stack.callback(sim.close)
        intruder = start(stack, sim, letta_code[CURRENT], workdir, "intruder", key="not-the-key")
        assert intruder.process is not None
        code = intruder.process.wait(timeout=60)
        assert code != 0
        assert "401" in intruder.output()
        assert listed(sim) == []


@pytest.mark.parametrize("rule", list(ReRegistration), ids=[r.value for r in ReRegistration])
def test_a_restart_under_the_same_name_is_the_same_machine(
    letta_code: dict[str, Path], workdir: Path, rule: ReRegistration
) -> None:
    """Killed and started again: the same device and name register again; under either rule the
    platform might follow, the machine is online again under its `connection_name`."""
    with ExitStack() as stack:
        # A minute's lease timeout: what clears the lease at once is the killed socket's end.
        sim = platform_side(rule, lease_timeout=60)
        stack.callback(sim.close)
        listener = start(stack, sim, letta_code[CURRENT], workdir, "restarted")
        before = until_online(sim, listener)
        listener.kill()
        wait_until(lambda: online(sim, "restarted") is None, 10, "the lease cleared on SIGKILL")
        listener.start()
        after = until_online(sim, listener)
        assert after["deviceId"] == before["deviceId"]
        assert after["connectionId"] != before["connectionId"]
        rows = [r for r in listed(sim) if r["connectionName"] == "restarted"]
        if rule is ReRegistration.SAME_ROW:
            assert after["id"] == before["id"] and len(rows) == 1
        else:
            assert after["id"] != before["id"] and len(rows) == 2
        exporter = stack.enter_context(
            exporter_process(
                f"--letta.base-url={sim.url}",
                "--letta.poll-interval=1s",
                "--letta.online-threshold=3s",
            )
        )
        samples = series(exporter.url)
        assert value(samples, "letta_environments", state="online") == 1
        assert value(samples, "letta_environments", state="offline") == len(rows) - 1


# --- the alerts, end to end ---------------------------------------------------------------


def test_killed_and_frozen_clients_page_and_a_restarted_one_does_not(
    letta_code: dict[str, Path], workdir: Path
) -> None:
    """Three watched real clients: one SIGKILLed (its socket closes), one SIGSTOPped (its socket
    stays open, silent), one killed and started again under its name. The first two reach the
    webhook as LettaEnvironmentOffline, with the seconds from their last heartbeat printed; the
    third is back before the threshold and pages nobody."""
    names = ("lc-killed", "lc-frozen", "lc-restarted")
    watch = f'connection_name=~"{"|".join(names)}"'
    rules = rules_text(
        merge(load_config(), merge(OFFLINE_RULES, {"alerts": {OFFLINE: {"selector": watch}}}))
    )
    with ExitStack() as stack:
        sim = platform_side()
        stack.callback(sim.close)
        clients = {name: start(stack, sim, letta_code[CURRENT], workdir, name) for name in names}
        for client in clients.values():
            until_online(sim, client)
        hooks, am, prom = alerting_stack(stack, sim.url, rules, workdir)
        servers = (prom, am)
        wait_for(
            lambda: scalar(prom, f'count({WATCHED}{{job="{JOB}"}} == 1)') == 3,
            START_TIMEOUT * 2,
            "the three watched machines recorded online",
            *servers,
        )

        # SIGKILL one, SIGSTOP another, restart the third: all at once.
        clients["lc-killed"].kill()
        clients["lc-frozen"].signal(signal.SIGSTOP)
        restarted = clients["lc-restarted"]
        down = time.monotonic()
        restarted.kill()
        restarted.start()
        until_online(sim, restarted)
        restart_took = time.monotonic() - down
        assert restart_took < OFFLINE_FOR - 3, f"the restart took {restart_took:.1f} s"

        def last_heartbeat(name: str) -> float:
            (row,) = [r for r in listed(sim) if r["connectionName"] == name]
            return float(row["lastHeartbeat"]) / 1000

        def firing() -> set[str]:
            return {
                k
                for k, s in hooks.latest_status(OFFLINE, "connection_name").items()
                if s == "firing"
            }

        wait_for(
            lambda: firing() == {"lc-killed", "lc-frozen"},
            60,
            f"{OFFLINE} firing at the webhook for the killed and the frozen client",
            *servers,
        )
        killed_after = _first_firing(hooks, "lc-killed") - last_heartbeat("lc-killed")
        frozen_after = _first_firing(hooks, "lc-frozen") - last_heartbeat("lc-frozen")
        # Neither can come sooner than the facts allow: `for`, and for the frozen one the
        # relay's timeout before its lease is cleared.
        assert killed_after >= OFFLINE_FOR, killed_after
        assert frozen_after >= LEASE_TIMEOUT + OFFLINE_FOR, frozen_after
        TIME_TO_KNOW.append(
            f"{OFFLINE}, real Letta Code {CURRENT}: SIGKILL {killed_after:.1f} s, SIGSTOP "
            f"{frozen_after:.1f} s from the last heartbeat (relay ping every {HEARTBEAT:g} s, "
            f"lease timeout {LEASE_TIMEOUT:g} s, poll, scrape and evaluation every 1 s, "
            f"for {OFFLINE_FOR:g} s, group_wait 1 s; a restart took {restart_took:.1f} s)"
        )
        # The restarted client was never pending, let alone notified.
        settled = time.time() + 3
        wait_for(
            lambda: rules_evaluated_after(prom, settled),
            START_TIMEOUT,
            "three more rule evaluations",
            *servers,
        )
        assert "lc-restarted" not in hooks.latest_status(OFFLINE, "connection_name")
        assert "lc-restarted" not in {
            a["metric"]["connection_name"] for a in query(prom, f'ALERTS{{alertname="{OFFLINE}"}}')
        }
        for _, alert in hooks.alerts(OFFLINE):
            assert alert["labels"]["severity"] == "warning" and "instance" not in alert["labels"]

        # The frozen one thaws: it reconnects by itself, and its alert resolves.
        clients["lc-frozen"].signal(signal.SIGCONT)
        wait_for(
            lambda: hooks.latest_status(OFFLINE, "connection_name").get("lc-frozen") == "resolved",
            60,
            f"{OFFLINE} resolved for the thawed client",
            *servers,
        )


def _first_firing(hooks: Any, name: str) -> float:
    return min(
        n.received_at
        for n in hooks.received()
        for alert in n.payload.get("alerts", [])
        if alert["labels"].get("alertname") == OFFLINE
        and alert["labels"].get("connection_name") == name
        and alert["status"] == "firing"
    )
