"""The compose stack: its files exist, agree with each other and pass the real tools.

Prometheus' and Alertmanager's configs are checked by promtool and amtool inside a temporary
directory laid out like the containers' mounts, so the paths they use resolve as in the stack.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.config import DEFAULT_PORT
from letta_simulator import start_simulator
from tests.conftest import ROOT, free_port, require_tool

COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
SERVICES = {"simulator", "exporter", "prometheus", "alertmanager", "grafana"}
# What each service listens on inside its container: the exporter's default, the simulator's
# flag (checked below), and the upstream images' defaults.
CONTAINER_PORTS = {
    "simulator": 8378,
    "exporter": DEFAULT_PORT,
    "prometheus": 9090,
    "alertmanager": 9093,
    "grafana": 3000,
}


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


def services() -> dict[str, Any]:
    found = load_compose().get("services")
    assert isinstance(found, dict), "docker-compose.yml has no services"
    return found


def bind_mounts(service: str) -> list[tuple[Path, str]]:
    """(host path, container path) of a service's bind mounts; named volumes are skipped."""
    mounts = []
    for volume in services()[service].get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE_DIR / source).resolve(), target))
    return mounts


def mirror_mounts(service: str, root: Path) -> None:
    """Copy a service's bind mounts under ``root`` at their container paths."""
    for host, container in bind_mounts(service):
        assert host.exists(), f"{service}: {host.relative_to(ROOT)} does not exist (yet?)"
        destination = root / container.lstrip("/")
        destination.parent.mkdir(parents=True, exist_ok=True)
        if host.is_dir():
            shutil.copytree(host, destination)
        else:
            shutil.copy2(host, destination)


def host_path(service: str, container_path: str) -> Path:
    """The repository file a container path of ``service`` comes from."""
    for host, container in bind_mounts(service):
        if container_path == container or container_path.startswith(container.rstrip("/") + "/"):
            return host / Path(container_path).relative_to(container)
    raise AssertionError(f"{service}: nothing is mounted at {container_path}")


def test_compose_file_has_the_five_services_and_declares_its_volumes() -> None:
    document = load_compose()
    assert set(document["services"]) == SERVICES
    named = {
        volume.split(":")[0]
        for service in document["services"].values()
        for volume in service.get("volumes", [])
        if not volume.startswith((".", "/"))
    }
    assert named == set(document.get("volumes", {})), "named volumes must be declared"


def test_every_bind_mount_and_build_context_exists_in_the_repository() -> None:
    for name in SERVICES:
        for host, _ in bind_mounts(name):
            assert host.is_relative_to(ROOT), f"{name} mounts {host}, outside the repository"
            assert host.exists(), f"{name} mounts {host.relative_to(ROOT)}, which does not exist"
        build = services()[name].get("build")
        if build is not None:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no Dockerfile at {context}"


def test_the_exporter_memory_limit_is_the_kubernetes_one() -> None:
    deployment = yaml.safe_load((ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi")
    assert services()["exporter"]["mem_limit"] == f"{limit.removesuffix('Mi')}m"


def test_images_are_pinned_to_a_version() -> None:
    for name, service in services().items():
        image = service["image"]
        if "build" in service:
            continue
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: unpinned {image}"


def test_ports_are_published_on_loopback_to_what_each_service_listens_on() -> None:
    for name, service in services().items():
        ports = service.get("ports", [])
        assert ports, f"{name} publishes no port"
        for port in ports:
            host_ip, host_port, container_port = port.split(":")
            assert host_ip == "127.0.0.1", f"{name}: {port} is published beyond loopback"
            assert int(container_port) == CONTAINER_PORTS[name], f"{name}: {port}"
            assert host_port == container_port
    simulator_flags = " ".join(services()["simulator"]["command"])
    assert f"--web.listen-address=0.0.0.0:{CONTAINER_PORTS['simulator']}" in simulator_flags


def test_every_address_in_the_configs_is_a_service_of_the_stack() -> None:
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    targets = [
        target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    targets += [
        target
        for manager in prometheus["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    exporter_config = yaml.safe_load((COMPOSE_DIR / "exporter.yml").read_text())
    targets.append(exporter_config["letta.base-url"].removeprefix("http://"))
    targets.append(services()["grafana"]["environment"]["PROMETHEUS_URL"].removeprefix("http://"))
    for target in targets:
        host, _, port = target.partition(":")
        if host == "localhost":
            continue  # Prometheus scraping itself
        assert host in SERVICES, f"{target}: no such service"
        assert int(port) == CONTAINER_PORTS[host], f"{target}: {host} listens on another port"


# -- Prometheus and Alertmanager, checked by their own tools ---------------------------------


def test_prometheus_config_passes_promtool_with_the_shipped_rules(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    mirror_mounts("prometheus", tmp_path)
    result = subprocess.run(
        [promtool, "check", "config", str(tmp_path / "etc/prometheus/prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = re.search(r"SUCCESS: (\d+) rules found", output)
    assert found and int(found[1]) > 0, f"promtool loaded no rules:\n{output}"
    assert "letta-environments.rules.yml" in output


def test_prometheus_scrapes_the_job_the_shipped_rules_select() -> None:
    alerts_config = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text())
    selected = re.fullmatch(r'job="([^"]+)"', alerts_config["job_selector"])
    assert selected, alerts_config["job_selector"]
    prometheus = yaml.safe_load((COMPOSE_DIR / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: target
        for job in prometheus["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert jobs.get(selected[1]) == f"exporter:{DEFAULT_PORT}"


def test_alertmanager_config_passes_amtool(tmp_path: Path) -> None:
    amtool = require_tool("amtool")
    mirror_mounts("alertmanager", tmp_path)
    config = tmp_path / "etc/alertmanager/alertmanager.yml"
    assert config.is_file(), "the stack mounts no config at Alertmanager's default path"
    result = subprocess.run(
        [amtool, "check-config", str(config)], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output


# -- the exporter and the simulator -----------------------------------------------------------


def test_simulator_healthcheck_passes_against_a_live_simulator() -> None:
    test = services()["simulator"]["healthcheck"]["test"]
    assert test[:2] == ["CMD", "python"], test
    port = free_port()
    server = start_simulator(port=port, fleet_size=5)
    try:
        script = test[-1].replace(f":{CONTAINER_PORTS['simulator']}/", f":{port}/")
        result = subprocess.run(
            [sys.executable, *test[2:-1], script], capture_output=True, text=True, check=False
        )
    finally:
        server.close()
    assert result.returncode == 0, result.stderr


# -- Grafana --------------------------------------------------------------------------------------


def test_grafanas_provisioning_mounts_point_at_the_shipped_dashboards_and_prometheus() -> None:
    """Static: the mounts and provisioning files, read as Grafana would find them (no Grafana
    runs here)."""
    grafana = services()["grafana"]
    provisioning = host_path("grafana", "/etc/grafana/provisioning")
    assert provisioning == (ROOT / "grafana" / "provisioning").resolve()
    providers = [
        provider
        for file in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for provider in yaml.safe_load(file.read_text())["providers"]
    ]
    assert providers, "no dashboard provider is provisioned"
    for provider in providers:
        dashboards = host_path("grafana", provider["options"]["path"])
        assert sorted(dashboards.glob("*.json")), f"{provider['options']['path']}: no dashboards"
        assert dashboards == (ROOT / "grafana" / "dashboards").resolve()
    datasources = [
        source
        for file in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(file.read_text())["datasources"]
    ]
    assert [s["type"] for s in datasources] == ["prometheus"]
    url = re.sub(
        r"\$(\w+)|\$\{(\w+)\}",
        lambda m: str(grafana["environment"][m[1] or m[2]]),
        datasources[0]["url"],
    )
    assert url == f"http://prometheus:{CONTAINER_PORTS['prometheus']}"
