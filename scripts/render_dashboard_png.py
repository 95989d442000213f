#!/usr/bin/env python3
"""Draws the main panels of the fleet overview from a real Prometheus into a PNG.

The queries are the dashboard's own (grafana/dashboards/letta-fleet-overview.json), variables
filled in; the picture's caption says where the numbers came from. The Prometheus must scrape
the exporter and evaluate the shipped rules (alerts/letta-environments.rules.yml):

    python scripts/render_dashboard_png.py --prometheus http://localhost:9090 --range 6h
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "letta-fleet-overview.json"
OUTPUT = ROOT / "docs" / "img" / "fleet-overview.png"
STATS = ("Online", "Stale", "Offline", "Connected in unrestricted mode")
GRAPHS = (
    "Environments by state",
    "Online by OS",
    "Online by permission mode",
    "Version mix (connected)",
)
COLOURS = {"online": "#73bf69", "stale": "#f2495c", "offline": "#8e8e8e", "unrestricted": "#ff9830"}
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def query(url: str, expr: str, **params: Any) -> list[dict[str, Any]]:
    path = "query_range" if "step" in params else "query"
    response = httpx.get(f"{url}/api/v1/{path}", params={"query": expr, **params}, timeout=30)
    body = response.json()
    if body.get("status") != "success":
        raise RuntimeError(f"{expr!r}: {body.get('error', response.text)}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def legend(series: dict[str, Any], fmt: str) -> str:
    labels = series["metric"]
    for name, value in labels.items():
        fmt = fmt.replace(f"{{{{{name}}}}}", value)
    return fmt


def render(url: str, job: str, seconds: float, output: Path, caption: str) -> None:
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    variables = {"$__rate_interval": "1m", "$job": job, "$instance": ".*"}

    def expr(title: str) -> tuple[str, str]:
        target = panels[title]["targets"][0]
        text = target["expr"]
        for name, value in variables.items():
            text = text.replace(name, value)
        return text, target["legendFormat"]

    end = time.time()
    start, step = end - seconds, max(1.0, seconds / 240)
    plt.style.use("dark_background")
    figure, axes = plt.subplot_mosaic(
        [
            [title for title in STATS for _ in range(3)],
            [GRAPHS[0]] * 12,
            [title for title in GRAPHS[1:] for _ in range(4)],
        ],
        figsize=(16, 10),
        height_ratios=(0.4, 1, 1),
        layout="constrained",
    )
    figure.suptitle("Letta / Fleet overview", x=0.01, ha="left", fontsize=16, fontweight="bold")
    figure.supxlabel(textwrap.fill(caption, 190), x=0.01, ha="left", fontsize=9, color="#aaaabb")
    for title in STATS:
        result = query(url, expr(title)[0], time=end)
        value = sum(float(sample["value"][1]) for sample in result)
        ax = axes[title]
        ax.set_axis_off()
        ax.set_title(title, loc="left", fontsize=11)
        colour = COLOURS.get(title.lower(), "#ff9830" if "unrestricted" in title else "white")
        ax.text(0.5, 0.4, f"{value:.0f}", ha="center", va="center", fontsize=32, color=colour)
    for title in GRAPHS:
        text, fmt = expr(title)
        ax = axes[title]
        ax.set_title(title, loc="left", fontsize=11)
        for series in query(url, text, start=start, end=end, step=step):
            name = legend(series, fmt)
            times = [(float(t) - end) / 60 for t, _ in series["values"]]
            values = [float(v) for _, v in series["values"]]
            ax.step(times, values, where="post", label=name, color=COLOURS.get(name))
        ax.set_xlabel("minutes before the picture", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.2)
        ax.legend(fontsize=8, loc="upper left", ncol=3, frameon=False)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, metavar="URL")
    parser.add_argument("--range", default="1h", help="time range: 30s, 30m, 6h, 1d")
    parser.add_argument("--job", default=".*", help="regex for the job variable")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--caption", default="", help="what the data is (appended)")
    args = parser.parse_args(argv)
    try:
        seconds = float(args.range[:-1]) * UNITS[args.range[-1]]
        caption = (
            f"Rendered from real query results of a Prometheus (job=~{args.job!r}, last "
            f"{args.range}) by scripts/render_dashboard_png.py. {args.caption}"
        ).strip()
        render(args.prometheus.rstrip("/"), args.job, seconds, args.output, caption)
    except (ValueError, KeyError, RuntimeError, httpx.HTTPError) as exc:
        print(f"render_dashboard_png: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
