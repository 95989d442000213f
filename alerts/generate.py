"""Regenerate the monitoring bundle from `alerts/config.yml`: the one command.

Writes alerts/letta-environments.rules.yml, deploy/kubernetes/prometheusrule.yaml,
grafana/dashboards/*.json and mixin/*.libsonnet; `--check` reports what is out of date.
The code is the `monitoring` package beside this directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitoring.__main__ import main

if __name__ == "__main__":
    raise SystemExit(main())
