"""The Kubernetes manifests: schema-valid, consistent with each other, the image and the exporter.

Core resources are validated by kubernetes-validate; the Prometheus Operator's CRDs have no
schema there, so their structure is checked here and the rules inside run through promtool.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from bench.procs import memory_of
from exporter import __version__
from exporter.config import DEFAULT_PORT
from tests.conftest import ROOT, exporter_process, require_tool, wait_until
from tests.fleet import served_value
from tests.hostile import HostileServer

K8S_DIR = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "alerts" / "letta-environments.rules.yml"
# The oldest and the newest Kubernetes versions checked; kubernetes-validate ships both schemas.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CORE_MANIFESTS = ("deployment.yaml", "service.yaml", "secret.example.yaml")
# Fleet size the Deployment's resources are sized for (its comment states it).
SIZED_FOR_ENVIRONMENTS = 10_000


def manifest(name: str) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d is not None]
    assert len(documents) == 1, f"{name}: expected one resource, found {len(documents)}"
    document: dict[str, Any] = documents[0]
    return document


def container() -> dict[str, Any]:
    [only] = manifest("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    number, unit = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * units[unit]


def quantity_millicores(quantity: str) -> int:
    return int(quantity[:-1]) if quantity.endswith("m") else int(float(quantity) * 1000)


def job_of_the_shipped_rules() -> str:
    selector = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text())["job_selector"]
    job = re.fullmatch(r'job="([^"]+)"', selector)
    assert job, selector
    return job[1]


# -- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", CORE_MANIFESTS)
def test_core_resources_validate_against_the_kubernetes_schema(name: str, version: str) -> None:
    kubernetes_validate.validate(manifest(name), version, strict=True)


def test_the_validator_rejects_a_broken_deployment() -> None:
    """A control: the same call does reject a misspelt field."""
    broken = manifest("deployment.yaml")
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


# -- the Deployment ----------------------------------------------------------------------------


def test_pod_runs_non_root_read_only_without_capabilities_under_runtime_default_seccomp() -> None:
    pod = manifest("deployment.yaml")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    security = container()["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert "add" not in security["capabilities"]
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user, "the Dockerfile sets no numeric USER"
    assert pod["securityContext"]["runAsUser"] == int(user[1])
    assert pod["securityContext"]["runAsGroup"] == int(user[2])


def test_probes_and_port_are_the_exporters() -> None:
    spec = container()
    [port] = spec["ports"]
    assert port["containerPort"] == DEFAULT_PORT
    assert spec["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": port["name"]}
    assert spec["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": port["name"]}


def test_api_key_comes_from_the_example_secret() -> None:
    env = {variable["name"]: variable for variable in container()["env"]}
    reference = env["LETTA_API_KEY"]["valueFrom"]["secretKeyRef"]
    secret = manifest("secret.example.yaml")
    assert reference["name"] == secret["metadata"]["name"]
    assert reference["key"] in secret["stringData"]
    assert all("value" not in variable for variable in env.values() if "KEY" in variable["name"])


def test_resources_have_requests_within_limits_and_state_their_fleet_size() -> None:
    resources = container()["resources"]
    for kind in ("cpu", "memory"):
        assert kind in resources["requests"] and kind in resources["limits"], kind
    assert quantity_bytes(resources["requests"]["memory"]) <= quantity_bytes(
        resources["limits"]["memory"]
    )
    assert quantity_millicores(resources["requests"]["cpu"]) <= quantity_millicores(
        resources["limits"]["cpu"]
    )
    comment = (K8S_DIR / "deployment.yaml").read_text()
    assert f"{SIZED_FOR_ENVIRONMENTS:,} environments" in comment


def test_memory_figures_hold_for_the_stated_fleet_size() -> None:
    """The exporter polling and serving that many environments settles within the request, and
    stays within the limit even when the API and the registry then send the costliest answers
    the caps let in."""
    resources = container()["resources"]
    server = HostileServer(fleet_size=SIZED_FOR_ENVIRONMENTS)
    try:
        with exporter_process(
            "--letta.poll-interval=2s",
            "--letta.poll-jitter=0s",
            f"--version.registry-url={server.url}/registry",
            "--no-version.pypi",
            "--version.refresh-interval=2s",
            env={"LETTA_BASE_URL": server.url},
        ) as exporter:
            # More polls and full scrapes: the peak of steady operation.
            def polled(times: int) -> bool:
                success = served_value(exporter.url, "letta_exporter_polls_total", result="success")
                return success >= times

            for times in (2, 3, 4):
                wait_until(lambda times=times: polled(times), 30, f"{times} successful polls")
            body = httpx.get(exporter.url + "/metrics", timeout=30).text
            resident = memory_of(exporter.process.pid)["VmRSS"]
            server.mode, server.registry_mode = "string_flood", "gzip_bomb"
            wait_until(
                lambda: (
                    served_value(
                        exporter.url, "letta_exporter_polls_total", result="pagination_error"
                    )
                    and served_value(
                        exporter.url,
                        "letta_exporter_release_lookups_total",
                        result="invalid_response",
                    )
                ),
                60,
                "a refused page and a refused registry document",
            )
            peak = memory_of(exporter.process.pid)["VmHWM"]
    finally:
        server.close()
    assert body.count("letta_environment_connected{") == SIZED_FOR_ENVIRONMENTS
    assert peak < quantity_bytes(resources["limits"]["memory"]), f"peak {peak >> 20} MiB"
    assert resident < quantity_bytes(resources["requests"]["memory"]), f"{resident >> 20} MiB"


def test_probe_paths_answer_200_on_a_live_exporter() -> None:
    spec = container()
    with exporter_process("--demo") as exporter:
        for probe in ("livenessProbe", "readinessProbe"):
            path = spec[probe]["httpGet"]["path"]
            assert httpx.get(exporter.url + path, timeout=5).status_code == 200, probe


# -- Service and ServiceMonitor ------------------------------------------------------------------


def test_service_selects_the_pods_and_names_the_job_the_rules_select() -> None:
    service = manifest("service.yaml")
    deployment = manifest("deployment.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == container()["ports"][0]["name"]
    # The Operator's default job label is the Service's name.
    assert service["metadata"]["name"] == job_of_the_shipped_rules()


def test_servicemonitor_scrapes_the_service_metrics_port() -> None:
    monitor = manifest("servicemonitor.yaml")
    service = manifest("service.yaml")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "ServiceMonitor"
    assert set(monitor["spec"]) == {"selector", "endpoints"}, "no jobLabel/namespaceSelector"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    port_names = {port["name"] for port in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        interval = int(endpoint["interval"].removesuffix("s"))
        assert 0 < int(endpoint["scrapeTimeout"].removesuffix("s")) <= interval


# -- the PrometheusRule ----------------------------------------------------------------------------


def test_prometheusrule_spec_is_the_shipped_rule_file() -> None:
    # Both come from the one generator (tests/test_bundle.py checks them for drift).
    rule = manifest("prometheusrule.yaml")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


def test_prometheusrule_structure_is_what_the_operator_accepts() -> None:
    rule = manifest("prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["metadata"]["name"]
    assert set(rule["spec"]) == {"groups"}
    group_keys = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset"}
    rule_keys = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
    names = [group["name"] for group in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), "group names must be unique"
    for group in rule["spec"]["groups"]:
        assert set(group) <= group_keys, set(group) - group_keys
        for entry in group["rules"]:
            assert set(entry) <= rule_keys, set(entry) - rule_keys
            assert ("alert" in entry) != ("record" in entry), entry
            assert isinstance(entry["expr"], str) and entry["expr"].strip()


def test_prometheusrule_spec_passes_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    spec = manifest("prometheusrule.yaml")["spec"]
    rules_file = tmp_path / "spec.rules.yml"
    rules_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    count = sum(len(group["rules"]) for group in spec["groups"])
    assert f"SUCCESS: {count} rules found" in output


# -- the kustomization ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = manifest("kustomization.yaml")
    manifests = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests - {"secret.example.yaml"}
    assert len(kustomization["resources"]) == len(set(kustomization["resources"]))
    [image] = kustomization["images"]
    name, _, tag = container()["image"].partition(":")
    assert name == image["name"]
    assert tag == image["newTag"] == __version__, "the image tags follow the project's version"
