"""Regenerate every file of the monitoring bundle from `alerts/config.yml`.

`python alerts/generate.py` (or `python -m monitoring`) writes the rule file, the
PrometheusRule, the Grafana dashboards and the mixin; `--check` only reports the files that are
out of date (exit 1). A bad configuration is one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from monitoring.files import render_all, stale_files
from monitoring.settings import CONFIG_PATH, ROOT, ConfigError, check_config, load_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="generate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG_PATH, help="the settings file")
    parser.add_argument(
        "--root", type=Path, default=ROOT, help="where the generated files go (the repository)"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when a generated file is not current"
    )
    args = parser.parse_args(argv)
    try:
        bundle = check_config(load_config(args.config))
    except (ConfigError, OSError, yaml.YAMLError) as exc:
        print(f"generate.py: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.check:
        stale = stale_files(bundle, args.root)
        if stale:
            print(
                f"out of date: {', '.join(stale)}; run python alerts/generate.py",
                file=sys.stderr,
            )
            return 1
        return 0
    for path, text in render_all(bundle).items():
        target = args.root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
