#!/usr/bin/env python3
"""Draws the fleet overview dashboard's main panels from a real Prometheus into a PNG.

The queries are the dashboard's own (grafana/dashboards/letta-fleet-overview.json), variables
filled in. Either point it at a Prometheus that scrapes the exporter:

    python scripts/render_dashboard_png.py --prometheus http://localhost:9090 --range 6h

or let it start the simulator, an exporter and a Prometheus itself and gather ~2 minutes of data:

    python scripts/render_dashboard_png.py --self-contained
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "letta-fleet-overview.json"
OUTPUT = ROOT / "docs" / "img" / "fleet-overview.png"
JOB = "letta-environments-exporter"

# Grafana's dark theme and its classic palette, so the picture reads like the dashboard.
BACKGROUND, PANEL, TEXT, MUTED, GRID = "#111217", "#181b1f", "#ccccdc", "#8e8e9e", "#2c3235"
STATE_COLOURS = {"online": "#73bf69", "stale": "#f2495c", "offline": "#8e8e8e"}
PALETTE = (
    "#7eb26d",
    "#eab839",
    "#6ed0e0",
    "#e24d42",
    "#1f78c1",
    "#ba43a9",
    "#705da0",
    "#508642",
    "#cca300",
    "#447ebc",
    "#c15c17",
)

Series = dict[str, list[tuple[float, float]]]


def panel_expr(dashboard: dict[str, Any], title: str) -> str:
    """The (first) query of the panel called ``title``."""
    for item in dashboard["panels"]:
        if item["title"] == title:
            expr: str = item["targets"][0]["expr"]
            return expr
    raise KeyError(f"no panel {title!r} in {DASHBOARD.name}")


@dataclass(frozen=True)
class Prometheus:
    """The HTTP query API of one Prometheus, with Grafana's variables filled in."""

    url: str
    variables: dict[str, str]

    def fill(self, expr: str) -> str:
        for variable, value in self.variables.items():
            expr = expr.replace(variable, value)
        return expr

    def _get(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=30)
        body = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"{params['query']!r}: {body.get('error', response.text)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def instant(self, expr: str, at: float) -> Series:
        result = self._get("/api/v1/query", {"query": self.fill(expr), "time": at})
        return {_name(s["metric"]): [(at, float(s["value"][1]))] for s in result}

    def range(self, expr: str, start: float, end: float, step: float) -> Series:
        params = {"query": self.fill(expr), "start": start, "end": end, "step": step}
        return {
            _name(s["metric"]): [(float(t), float(v)) for t, v in s["values"]]
            for s in self._get("/api/v1/query_range", params)
        }


def _name(metric: dict[str, str]) -> str:
    shown = {k: v for k, v in metric.items() if k not in ("__name__", "job", "instance", "pod")}
    return ",".join(shown.values()) or "value"


def last(series: Series) -> float:
    values = [points[-1][1] for points in series.values() if points]
    return values[0] if values else float("nan")


# --- drawing ------------------------------------------------------------------------------


def render(prometheus: Prometheus, start: float, end: float, output: Path, note: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.axes import Axes

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    step = max(1.0, round((end - start) / 240))

    def ranged(title: str) -> Series:
        return prometheus.range(panel_expr(dashboard, title), start, end, step)

    def style(ax: Axes, title: str) -> None:
        ax.set_facecolor(PANEL)
        ax.set_title(title, loc="left", color=TEXT, fontsize=11, fontweight="bold", pad=8)
        ax.tick_params(colors=MUTED, labelsize=8)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.grid(color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)

    def timeaxis(ax: Axes) -> None:
        ax.xaxis.set_major_formatter(
            mdates.DateFormatter("%H:%M" if end - start > 900 else "%H:%M:%S")  # type: ignore[no-untyped-call]
        )
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))  # type: ignore[no-untyped-call]
        ax.set_xlim(start / 86400, end / 86400)
        ax.set_ylim(bottom=0)

    def legend(ax: Axes) -> None:
        """Below the plot, as Grafana places it."""
        handles, names = ax.get_legend_handles_labels()
        ax.legend(
            handles,
            names,
            loc="upper left",
            bbox_to_anchor=(0.0, -0.1),
            ncol=min(len(names), 5),
            frameon=False,
            fontsize=8,
            labelcolor=TEXT,
            handlelength=1.0,
            columnspacing=1.2,
        )

    def stacked(ax: Axes, series: Series, colours: dict[str, str] | None = None) -> None:
        times = sorted({t for points in series.values() for t, _ in points})
        order = sorted(series, key=lambda name: -(series[name][-1][1] if series[name] else 0))
        layers = [[dict(series[name]).get(t, 0.0) for t in times] for name in order]
        palette = [
            (colours or {}).get(name, PALETTE[i % len(PALETTE)]) for i, name in enumerate(order)
        ]
        ax.stackplot(_dates(times), layers, labels=order, colors=palette, alpha=0.85, step="post")
        timeaxis(ax)
        legend(ax)

    figure = plt.figure(figsize=(16, 11), facecolor=BACKGROUND, dpi=100)
    grid = figure.add_gridspec(
        3,
        12,
        height_ratios=(0.5, 1, 1),
        hspace=0.5,
        wspace=0.9,
        left=0.03,
        right=0.99,
        top=0.9,
        bottom=0.08,
    )
    figure.suptitle(
        "Letta / Fleet overview",
        x=0.012,
        y=0.985,
        ha="left",
        color=TEXT,
        fontsize=16,
        fontweight="bold",
    )
    figure.text(0.012, 0.952, note, ha="left", color=MUTED, fontsize=9)

    # Stat row.
    stats = [
        ("Online", "{:.0f}", STATE_COLOURS["online"], False),
        ("Stale", "{:.0f}", STATE_COLOURS["stale"], True),
        ("Offline", "{:.0f}", STATE_COLOURS["offline"], False),
        ("Stale share of connected", "{:.0%}", STATE_COLOURS["stale"], False),
        ("Connected in unrestricted mode", "{:.0f}", "#ff9830", False),
        ("Outdated share (connected)", "{:.0%}", "#ff9830", False),
    ]
    for index, (title, fmt, colour, alarm) in enumerate(stats):
        ax = figure.add_subplot(grid[0, index * 2 : index * 2 + 2])
        value = last(prometheus.instant(panel_expr(dashboard, title), end))
        background = colour if alarm and value > 0 else PANEL
        ax.set_facecolor(background)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.text(
            0.06,
            0.9,
            textwrap.fill(title, 24),
            color=TEXT,
            fontsize=10,
            va="top",
            transform=ax.transAxes,
        )
        ax.text(
            0.5,
            0.36,
            fmt.format(value),
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=30,
            fontweight="bold",
            color="white" if background != PANEL else colour,
        )

    # Environments by state, over time; stale in red.
    ax = figure.add_subplot(grid[1, 0:8])
    style(ax, "Environments by state")
    for state, points in sorted(ranged("Environments by state").items()):
        times, values = zip(*points, strict=True)
        ax.step(
            _dates(times),
            values,
            where="post",
            label=state,
            linewidth=2.2 if state == "stale" else 1.6,
            color=STATE_COLOURS.get(state, MUTED),
        )
    timeaxis(ax)
    legend(ax)

    # Heartbeat-age distribution now, as the bar gauge shows it (per bucket, not cumulative).
    ax = figure.add_subplot(grid[1, 9:12])
    style(ax, "Heartbeat age distribution")
    buckets = prometheus.instant(panel_expr(dashboard, "Heartbeat age distribution"), end)
    bounds = sorted((float(name), values[-1][1]) for name, values in buckets.items())
    labels, counts, previous_bound, previous = [], [], 0.0, 0.0
    for bound, cumulative in bounds:
        low = _duration(previous_bound)
        labels.append(f"> {low}" if bound == float("inf") else f"{low} to {_duration(bound)}")
        counts.append(cumulative - previous)
        previous_bound, previous = bound, cumulative
    ax.barh(labels, counts, color="#5794f2", height=0.7)
    ax.invert_yaxis()
    for y, count in enumerate(counts):
        ax.text(count, y, f" {count:.0f}", va="center", color=TEXT, fontsize=8)
    ax.set_xlabel("connected environments", color=MUTED, fontsize=8)
    ax.grid(axis="y", visible=False)

    for column, title in enumerate(
        ("Online by OS", "Online by permission mode", "Version mix (connected)")
    ):
        ax = figure.add_subplot(grid[2, column * 4 : column * 4 + 4])
        style(ax, title)
        stacked(ax, ranged(title), {"unrestricted": "#ff9830"})

    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, facecolor=BACKGROUND, bbox_inches="tight", pad_inches=0.25)
    plt.close(figure)


def _dates(epochs: Sequence[float]) -> list[float]:
    """Epoch seconds as Matplotlib's dates (days since its 1970 epoch), for a date axis."""
    return [t / 86400 for t in epochs]


def _duration(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


# --- self-contained: simulator, exporter and Prometheus on loopback ------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if predicate():
                return
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


@contextlib.contextmanager
def _process(command: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[None]:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def self_contained(fleet_size: int, seconds: float) -> Iterator[tuple[str, float, str]]:
    """Simulator, exporter and Prometheus; yields (Prometheus URL, start time, a note) once
    ``seconds`` of data exist. A fifth of the connected environments go silent a third of
    the way in, so stale environments show."""
    from exporter.simulator import start_simulator

    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
    api_key = "render-key"
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="letta-render-")))
        simulator = start_simulator(
            fleet_size=fleet_size, seed=7, api_key=api_key, heartbeat_interval=1.0
        )
        stack.callback(simulator.close)
        exporter = f"127.0.0.1:{_free_port()}"
        stack.enter_context(
            _process(
                [
                    sys.executable,
                    "-m",
                    "exporter",
                    f"--web.listen-address={exporter}",
                    f"--letta.base-url={simulator.url}",
                    "--letta.poll-interval=1s",
                    "--letta.online-threshold=3s",
                    "--no-version.registry",
                ],
                workdir / "exporter.log",
                {**os.environ, "LETTA_API_KEY": api_key},
            )
        )
        _wait(lambda: httpx.get(f"http://{exporter}/-/ready", timeout=1).is_success, 30, "exporter")
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n"
            f'      - targets: ["{exporter}"]\n',
            encoding="utf-8",
        )
        prometheus = f"127.0.0.1:{_free_port()}"
        stack.enter_context(
            _process(
                [
                    prometheus_binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address={prometheus}",
                    "--log.level=warn",
                ],
                workdir / "prometheus.log",
            )
        )
        url = f"http://{prometheus}"
        _wait(lambda: httpx.get(f"{url}/-/ready", timeout=1).is_success, 30, "Prometheus")
        _wait(
            lambda: httpx.get(f"{url}/api/v1/query", params={"query": "letta_exporter_up"}).json()[
                "data"
            ]["result"],
            30,
            "the first scrape",
        )
        start = time.time()
        print(f"gathering {seconds:.0f}s of data from a simulated fleet", file=sys.stderr)
        time.sleep(seconds / 3)
        httpx.post(f"{simulator.url}/_simulator/silence", json={"fraction": 0.2}, timeout=5)
        time.sleep(seconds * 2 / 3)
        note = (
            f"Rendered from real query results: a simulated fleet of {fleet_size} environments "
            f"(heartbeat every 1 s, online threshold 3 s; a fifth of the connected ones go "
            f"silent a third of the way in), one exporter, Prometheus scraping every 1 s."
        )
        yield url, start, note


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL", help="a Prometheus scraping the exporter")
    source.add_argument(
        "--self-contained", action="store_true", help="start simulator, exporter and Prometheus"
    )
    parser.add_argument("--output", type=Path, default=OUTPUT, help=f"default: {OUTPUT}")
    parser.add_argument(
        "--range", type=_seconds, default="1h", help="time range for --prometheus (30m, 6h, 1d)"
    )
    parser.add_argument("--job", default=".*", help="regex for the job variable")
    parser.add_argument("--instance", default=".*", help="regex for the instance variable")
    parser.add_argument(
        "--seconds", type=float, default=100, help="data to gather when self-contained"
    )
    parser.add_argument("--fleet-size", type=int, default=200)
    args = parser.parse_args(argv)

    variables = {"$__rate_interval": "1m", "$job": args.job, "$instance": args.instance}
    try:
        if args.self_contained:
            with self_contained(args.fleet_size, args.seconds) as (url, start, note):
                end = time.time()
                variables["$job"] = JOB
                render(Prometheus(url, variables), start, end, args.output, note)
        else:
            end = time.time()
            start = end - args.range
            note = (
                f"Rendered from {args.prometheus}, job=~{args.job!r}, instance=~{args.instance!r}."
            )
            render(
                Prometheus(args.prometheus.rstrip("/"), variables), start, end, args.output, note
            )
    except (RuntimeError, httpx.HTTPError, KeyError) as exc:
        print(f"render_dashboard_png: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _seconds(duration: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(duration[:-1]) * units[duration[-1]]
    except (ValueError, KeyError, IndexError):
        raise argparse.ArgumentTypeError(f"not a duration like 30m or 6h: {duration!r}") from None


if __name__ == "__main__":
    raise SystemExit(main())
