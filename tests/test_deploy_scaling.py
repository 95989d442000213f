"""docs/scaling.md: its examples pass the real tools, and its claims hold for the shipped rules.

Every fenced YAML block is a complete file: Prometheus configs go through `promtool check
config`, rule files through `promtool check rules`, Kubernetes resources through
kubernetes-validate. The claims about replicas and shards run as `promtool test rules` cases
against `alerts/letta-environments.rules.yml`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import ROOT, require_tool

DOC = ROOT / "docs" / "scaling.md"
RULES = ROOT / "alerts" / "letta-environments.rules.yml"
KUBERNETES_VERSION = "1.37.0"


def yaml_blocks() -> list[tuple[str, dict[str, Any]]]:
    """(first comment line, parsed document) of every ```yaml block of the page."""
    blocks = re.findall(r"^```yaml\n(.*?)^```$", DOC.read_text(), re.MULTILINE | re.DOTALL)
    parsed = []
    for block in blocks:
        title = block.splitlines()[0]
        assert title.startswith("# "), f"a YAML block should open with a comment naming it: {title}"
        document = yaml.safe_load(block)
        assert isinstance(document, dict), title
        parsed.append((title, document))
    return parsed


def blocks_with(key: str) -> list[tuple[str, dict[str, Any]]]:
    return [(title, document) for title, document in yaml_blocks() if key in document]


def exporter_job() -> str:
    selector = yaml.safe_load((ROOT / "alerts" / "config.yml").read_text())["job_selector"]
    job = re.fullmatch(r'job="([^"]+)"', selector)
    assert job, selector
    return job[1]


def promtool(*args: str) -> str:
    result = subprocess.run(
        [require_tool("promtool"), *args], capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


def test_the_page_has_the_examples_it_promises() -> None:
    titles = [title for title, _ in yaml_blocks()]
    assert len(blocks_with("scrape_configs")) == 4, titles
    assert blocks_with("groups") == [], "the shipped rules need no extra rule file"
    assert "## Measured figures" in DOC.read_text()


@pytest.mark.parametrize(
    "title", [title for title, _ in blocks_with("scrape_configs")], ids=lambda t: t[2:]
)
def test_prometheus_configs_pass_promtool(title: str, tmp_path: Path) -> None:
    [document] = [d for t, d in blocks_with("scrape_configs") if t == title]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(document))
    assert "SUCCESS" in promtool("check", "config", str(config))


def test_configs_that_scrape_an_exporter_use_the_job_the_rules_select() -> None:
    for title, document in blocks_with("scrape_configs"):
        for job in document["scrape_configs"]:
            targets = [t for s in job["static_configs"] for t in s["targets"]]
            if any(t.endswith(":8377") for t in targets):
                assert job["job_name"] == exporter_job(), title
            if job.get("metrics_path") == "/federate":
                assert job["honor_labels"] is True, title
                assert any(f'job="{exporter_job()}"' in m for m in job["params"]["match[]"])


def test_kubernetes_examples_validate_and_fit_the_shipped_manifests() -> None:
    deployment = yaml.safe_load((ROOT / "deploy/kubernetes/deployment.yaml").read_text())
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    kinds = {document.get("kind"): document for _, document in yaml_blocks()}
    budget = kinds["PodDisruptionBudget"]
    kubernetes_validate.validate(budget, KUBERNETES_VERSION, strict=True)
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    overlay = kinds["Kustomization"]
    assert overlay["replicas"] == [{"name": deployment["metadata"]["name"], "count": 2}]
    assert "../../deploy/kubernetes" in overlay["resources"]


# -- the claims, against the shipped rules ------------------------------------------------------


def fleet_series(instance: str, online: int, **labels: str) -> dict[str, str]:
    extra = "".join(f', {key}="{value}"' for key, value in labels.items())
    return {
        "series": (
            f'letta_environments{{job="{exporter_job()}", instance="{instance}", '
            f'state="online", os="linux", mode="standard", version="0.32.18"{extra}}}'
        ),
        "values": f"{online}x30",
    }


def up_series(instance: str, value: int, **labels: str) -> dict[str, str]:
    extra = "".join(f', {key}="{v}"' for key, v in labels.items())
    return {
        "series": f'up{{job="{exporter_job()}", instance="{instance}"{extra}}}',
        "values": f"{value}x30",
    }


def run_rule_tests(tmp_path: Path, tests: list[dict[str, Any]]) -> None:
    test_file = tmp_path / "scaling.test.yml"
    test_file.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(RULES)],
                "evaluation_interval": "1m",
                "group_eval_order": ["letta-environments.rules", "letta-environments.alerts"],
                "tests": tests,
            },
            sort_keys=False,
        )
    )
    output = promtool("test", "rules", str(test_file))
    assert "SUCCESS" in output


def test_two_replicas_count_once_and_one_down_is_no_page(tmp_path: Path) -> None:
    job = exporter_job()
    run_rule_tests(
        tmp_path,
        [
            {
                # Both replicas see 7 online environments; replica b stops being scraped.
                "interval": "1m",
                "input_series": [
                    fleet_series("a:8377", 7),
                    fleet_series("b:8377", 7),
                    up_series("a:8377", 1),
                    up_series("b:8377", 0),
                ],
                "promql_expr_test": [
                    {
                        "expr": "job:letta_environments_online:sum",
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": f'job:letta_environments_online:sum{{job="{job}"}}',
                                "value": 7,
                            }
                        ],
                    }
                ],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": "LettaExporterDown", "exp_alerts": []}
                ],
            }
        ],
    )


def test_shards_keep_their_own_counts_and_a_down_shard_pages(tmp_path: Path) -> None:
    job = exporter_job()
    record = "job:letta_environments_online:sum"
    run_rule_tests(
        tmp_path,
        [
            {
                # Shard local has 7 online environments, shard remote 5; local's exporter is
                # down from the start, remote's is up.
                "interval": "1m",
                "input_series": [
                    fleet_series("exporter-local:8377", 7, shard="local"),
                    fleet_series("exporter-remote:8377", 5, shard="remote"),
                    up_series("exporter-local:8377", 0, shard="local"),
                    up_series("exporter-remote:8377", 1, shard="remote"),
                ],
                "promql_expr_test": [
                    {
                        "expr": record,
                        "eval_time": "10m",
                        "exp_samples": [
                            {"labels": f'{record}{{job="{job}", shard="local"}}', "value": 7},
                            {"labels": f'{record}{{job="{job}", shard="remote"}}', "value": 5},
                        ],
                    },
                    {
                        "expr": f"sum without (shard) ({record})",
                        "eval_time": "10m",
                        "exp_samples": [{"labels": f'{{job="{job}"}}', "value": 12}],
                    },
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "LettaExporterDown",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "job": job,
                                    "shard": "local",
                                    "severity": "critical",
                                },
                                "exp_annotations": {
                                    "summary": (
                                        "No replica of the Letta environments exporter is up."
                                    ),
                                    "description": (
                                        f"No target of job {job} has been scraped "
                                        "successfully for 3m; no other Letta alert can fire "
                                        "while the exporter is down."
                                    ),
                                    "runbook_url": (
                                        "https://github.com/letta-ai/letta-environments-exporter"
                                        "/blob/main/docs/runbooks.md#lettaexporterdown"
                                    ),
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    )


def test_shards_without_a_shard_label_would_be_merged(tmp_path: Path) -> None:
    """Why the page insists on the label: told apart by instance only, the larger count wins."""
    job = exporter_job()
    record = "job:letta_environments_online:sum"
    run_rule_tests(
        tmp_path,
        [
            {
                "interval": "1m",
                "input_series": [
                    fleet_series("exporter-local:8377", 7),
                    fleet_series("exporter-remote:8377", 5),
                ],
                "promql_expr_test": [
                    {
                        "expr": record,
                        "eval_time": "10m",
                        "exp_samples": [{"labels": f'{record}{{job="{job}"}}', "value": 7}],
                    }
                ],
            }
        ],
    )
