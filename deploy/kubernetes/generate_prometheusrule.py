"""Render `prometheusrule.yaml` from the shipped rules, `alerts/letta-environments.rules.yml`.

`python deploy/kubernetes/generate_prometheusrule.py` rewrites it; `--check` only reports
whether it is current (exit 1 when it has drifted). The rules stay the one source of truth.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_PATH = HERE.parent.parent / "alerts" / "letta-environments.rules.yml"
OUTPUT_PATH = HERE / "prometheusrule.yaml"
NAME = "letta-environments-exporter"

HEADER = """\
# GENERATED from alerts/letta-environments.rules.yml by
# deploy/kubernetes/generate_prometheusrule.py: do not edit by hand. After the rules change,
# run `python deploy/kubernetes/generate_prometheusrule.py`; a test fails on drift.
# Your Prometheus' ruleSelector must match these labels (kube-prometheus-stack selects
# `release: <its release name>` by default: add that label).
"""


class _BlockStyleDumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as `|` blocks, as in the rules file."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockStyleDumper.add_representer(str, _represent_str)


def render_prometheus_rule(rules_text: str) -> str:
    """The PrometheusRule manifest whose spec is the rule file's groups, unchanged."""
    rules: Any = yaml.safe_load(rules_text)
    if not isinstance(rules, dict) or set(rules) != {"groups"}:
        raise ValueError("the rule file must be a mapping with `groups` only")
    if not isinstance(rules["groups"], list) or not rules["groups"]:
        raise ValueError("the rule file has no groups")
    resource = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": NAME,
            "labels": {
                "app.kubernetes.io/name": NAME,
                "app.kubernetes.io/component": "alerting-rules",
            },
        },
        "spec": {"groups": rules["groups"]},
    }
    body = yaml.dump(
        resource, Dumper=_BlockStyleDumper, sort_keys=False, allow_unicode=True, width=10_000
    )
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the output has drifted")
    parser.add_argument("--rules", type=Path, default=RULES_PATH, help="the Prometheus rule file")
    parser.add_argument("--output", type=Path, default=OUTPUT_PATH, help="the manifest to write")
    args = parser.parse_args(argv)
    try:
        rendered = render_prometheus_rule(args.rules.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as exc:
        print(f"generate_prometheusrule: {args.rules}: {exc}", file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else None
        if current != rendered:
            print(
                f"{args.output} is out of date with {args.rules}: "
                "run python deploy/kubernetes/generate_prometheusrule.py",
                file=sys.stderr,
            )
            return 1
        return 0
    args.output.write_text(rendered, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
