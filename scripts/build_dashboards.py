#!/usr/bin/env python3
"""Writes the Grafana dashboards in grafana/dashboards/ from the panel definitions below.

Edit this file, not the JSON, then run `python scripts/build_dashboards.py`; `--check` exits 1
when a JSON file differs from what this file builds (the tests run it).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "grafana" / "dashboards"

Json = dict[str, Any]

DATASOURCE: Json = {"type": "prometheus", "uid": "${datasource}"}
TAGS = ["letta", "letta-environments-exporter"]

# Every query selects its series with these matchers.
SEL = 'job=~"$job", instance=~"$instance"'
ENV_SEL = f'{SEL}, environment_id="$environment"'

# Two exporter replicas polling the same organisation serve the same fleet: count the fleet
# once, from the replica (per job and any other target label) whose last poll succeeded last.
FRESHEST = (
    f"topk without(instance, pod) (1, letta_exporter_last_success_timestamp_seconds{{{SEL}}})"
)


def fresh(expr: str) -> str:
    """``expr`` restricted to the series of the freshest replica."""
    return f"(\n  {expr}\n  and on(job, instance) {FRESHEST}\n)"


def fleet_sum(by: str, matchers: str = "") -> str:
    """`letta_environments` summed (by ``by`` when given) over the freshest replica."""
    grouping = f" by ({by})" if by else ""
    extra = f", {matchers}" if matchers else ""
    return f"sum{grouping} {fresh(f'letta_environments{{{SEL}{extra}}}')}"


def or_zero(expr: str, by: str = "", state: str = 'state=~".+"') -> str:
    """``expr`` or 0 while the fleet families are served: `letta_environments` omits zero
    counts, but `letta_environments_outdated` always has all three states, so it stands in.
    ``by`` must be the grouping of ``expr`` ("" or "state") so that `or` matches."""
    grouping = f" by ({by})" if by else ""
    return f"{expr}\nor sum{grouping} (0 * letta_environments_outdated{{{SEL}, {state}}})"


def state_count(state: str) -> str:
    """Environments in one state, 0 rather than nothing when there are none."""
    return or_zero(fleet_sum("", f'state="{state}"'), state=f'state="{state}"')


def heartbeat_age(selector: str) -> str:
    return f"time() - letta_environment_last_heartbeat_timestamp_seconds{{{selector}}}"


def environment_state(selector: str) -> str:
    """2 online, 1 stale (lease held, heartbeat older than $online_threshold or missing),
    0 offline (no lease); the same rule the exporter applies."""
    connected = f"letta_environment_connected{{{selector}}}"
    return (
        "max by (environment_id) (\n"
        f"  (\n    {connected}\n    * on(job, instance, environment_id)\n"
        f"      (1 + (({heartbeat_age(selector)}) < bool $online_threshold))\n  )\n"
        f"  or {connected}\n)"
    )


# --- panels ------------------------------------------------------------------------------


def target(
    expr: str,
    legend: str = "__auto",
    *,
    ref: str = "A",
    instant: bool = False,
    fmt: str = "time_series",
) -> Json:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": fmt,
        "instant": instant,
        "legendFormat": legend,
        "range": not instant,
        "refId": ref,
    }


def thresholds(*steps: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


GREEN = thresholds((None, "green"))
STALE_RED = thresholds((None, "green"), (1, "red"))


def value_map(values: dict[str, tuple[str, str]]) -> list[Json]:
    """A value mapping: raw value -> (text, colour)."""
    return [
        {
            "type": "value",
            "options": {
                value: {"index": index, "text": text, "color": color}
                for index, (value, (text, color)) in enumerate(values.items())
            },
        }
    ]


STATE_COLOURS = {"online": "green", "stale": "red", "offline": "#8e8e8e"}
STATE_MAP = value_map(
    {"2": ("Online", "green"), "1": ("Stale", "red"), "0": ("Offline", "#8e8e8e")}
)
UP_MAP = value_map({"1": ("Up", "green"), "0": ("Down", "red")})


def colour_by_name(colours: dict[str, str]) -> list[Json]:
    return [
        {
            "matcher": {"id": "byName", "options": name},
            "properties": [{"id": "color", "value": {"mode": "fixed", "fixedColor": colour}}],
        }
        for name, colour in colours.items()
    ]


def panel(
    kind: str,
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    grid: tuple[int, int, int, int],
    *,
    options: Json | None = None,
    custom: Json | None = None,
    overrides: Sequence[Json] = (),
    steps: Json | None = None,
    mappings: Sequence[Json] = (),
    decimals: int | None = None,
    minimum: float | None = None,
    transformations: Sequence[Json] = (),
) -> Json:
    x, y, w, h = grid
    defaults: Json = {
        "color": {"mode": "thresholds" if steps else "palette-classic"},
        "mappings": list(mappings),
        "thresholds": steps or GREEN,
        "unit": unit,
    }
    if custom is not None:
        defaults["custom"] = custom
    if decimals is not None:
        defaults["decimals"] = decimals
    if minimum is not None:
        defaults["min"] = minimum
    result: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": defaults, "overrides": list(overrides)},
        "options": options or {},
        "targets": [dict(t, refId=chr(ord("A") + i)) for i, t in enumerate(targets)],
    }
    if transformations:
        result["transformations"] = list(transformations)
    return result


def stat(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    grid: tuple[int, int, int, int],
    *,
    colour_mode: str = "value",
    sparkline: bool = True,
    text_mode: str = "auto",
    **kwargs: Any,
) -> Json:
    options = {
        "colorMode": colour_mode,
        "graphMode": "area" if sparkline else "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showPercentChange": False,
        "textMode": text_mode,
        "wideLayout": True,
    }
    return panel("stat", title, description, unit, targets, grid, options=options, **kwargs)


def timeseries(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    grid: tuple[int, int, int, int],
    *,
    stacked: bool = False,
    fill: int = 10,
    legend_calcs: Sequence[str] = ("lastNotNull", "max"),
    **kwargs: Any,
) -> Json:
    custom = {
        "drawStyle": "line",
        "fillOpacity": 60 if stacked else fill,
        "gradientMode": "none",
        "lineInterpolation": "stepAfter",
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        "axisSoftMin": 0,
    }
    options = {
        "legend": {
            "calcs": list(legend_calcs),
            "displayMode": "table",
            "placement": "right",
            "showLegend": True,
            "sortBy": "Last *",
            "sortDesc": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        "timeseries",
        title,
        description,
        unit,
        targets,
        grid,
        options=options,
        custom=custom,
        **kwargs,
    )


def bargauge(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    grid: tuple[int, int, int, int],
    **kwargs: Any,
) -> Json:
    options = {
        "displayMode": "gradient",
        "orientation": "horizontal",
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "auto",
        "sizing": "auto",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "maxVizHeight": 300,
    }
    return panel("bargauge", title, description, unit, targets, grid, options=options, **kwargs)


def table(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Json],
    grid: tuple[int, int, int, int],
    *,
    hidden: Sequence[str] = ("Time", "__name__", "job", "instance", "pod"),
    order: Sequence[str] = (),
    renames: dict[str, str] | None = None,
    sort_by: str | None = None,
    **kwargs: Any,
) -> Json:
    options: Json = {
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "countRows": False},
        "showHeader": True,
    }
    if sort_by:
        options["sortBy"] = [{"displayName": sort_by, "desc": True}]
    organize = {
        "id": "organize",
        "options": {
            "excludeByName": dict.fromkeys(hidden, True),
            "indexByName": {name: index for index, name in enumerate(order)},
            "renameByName": renames or {},
        },
    }
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False}
    return panel(
        "table",
        title,
        description,
        unit,
        targets,
        grid,
        options=options,
        custom=custom,
        transformations=[organize],
        **kwargs,
    )


def row(title: str, y: int) -> Json:
    """A layout row: no query, so no datasource, unit or description."""
    return {
        "type": "row",
        "title": title,
        "collapsed": False,
        "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
        "panels": [],
    }


# --- dashboard ---------------------------------------------------------------------------


def variables(*, environment: bool = False) -> list[Json]:
    def query(name: str, label: str, expr: str, **extra: Any) -> Json:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "definition": expr,
            "query": {"query": expr, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
            "refresh": 2,
            "regex": "",
            "sort": 1,
            "hide": 0,
            "current": {},
            "options": [],
            **extra,
        }

    result: list[Json] = [
        {
            "name": "datasource",
            "label": "Data Source",
            "type": "datasource",
            "query": "prometheus",
            "regex": "",
            "hide": 0,
            "current": {},
            "options": [],
            "refresh": 1,
            "includeAll": False,
            "multi": False,
        },
        query(
            "job",
            "Job",
            "label_values(letta_exporter_build_info, job)",
            includeAll=True,
            multi=True,
        ),
        # "All" is every instance of the chosen jobs, even one that no longer serves build_info.
        query(
            "instance",
            "Instance",
            'label_values(letta_exporter_build_info{job=~"$job"}, instance)',
            includeAll=True,
            multi=True,
            allValue=".*",
        ),
    ]
    if environment:
        result.append(
            query(
                "environment",
                "Environment",
                f"label_values(letta_environment_info{{{SEL}}}, environment_id)",
                includeAll=False,
                multi=False,
            )
        )
        result.append(
            {
                "name": "online_threshold",
                "label": "Online threshold (s)",
                "description": "The exporter's --letta.online-threshold in seconds: a connected "
                "environment whose heartbeat is older is stale.",
                "type": "textbox",
                "query": "120",
                "current": {"text": "120", "value": "120"},
                "options": [{"selected": True, "text": "120", "value": "120"}],
                "hide": 0,
            }
        )
    return result


def links(own_uid: str) -> list[Json]:
    return [
        {
            "title": title,
            "type": "link",
            "url": f"/d/{uid}/{uid}",
            "icon": "dashboard",
            "includeVars": True,
            "keepTime": True,
            "asDropdown": False,
            "targetBlank": False,
            "tags": [],
            "tooltip": "",
        }
        for uid, title in DASHBOARDS.items()
        if uid != own_uid
    ]


def dashboard(uid: str, description: str, panels: list[Json], *, environment: bool = False) -> Json:
    for index, item in enumerate(panels, start=1):
        item["id"] = index
    return {
        "uid": uid,
        "title": DASHBOARDS[uid],
        "description": description,
        "tags": TAGS,
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": links(uid),
        "panels": panels,
        "refresh": "1m",
        "schemaVersion": 39,
        "templating": {"list": variables(environment=environment)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "version": 1,
        "weekStart": "",
    }


DASHBOARDS = {
    "letta-fleet-overview": "Letta / Fleet overview",
    "letta-environment-detail": "Letta / Environment detail",
    "letta-exporter-health": "Letta / Exporter health",
}

DETAIL_LINK = (
    "/d/letta-environment-detail/letta-environment-detail?${datasource:queryparam}"
    "&${job:queryparam}&${instance:queryparam}&var-environment=${__value.raw}"
    "&${__url_time_range}"
)
ENVIRONMENT_LINK_OVERRIDE: Json = {
    "matcher": {"id": "byName", "options": "environment_id"},
    "properties": [{"id": "links", "value": [{"title": "Environment detail", "url": DETAIL_LINK}]}],
}

FRESH_NOTE = (
    " With several exporter replicas for one organisation, counts come from the replica whose "
    "last poll succeeded last, so they do not double."
)


def fleet_overview() -> Json:
    connected_count = fleet_sum("", 'state!="offline"')
    ready = f'{SEL}, supported="true", writable="true"'
    stalest = (
        "topk(20,\n"
        + fresh(
            f"({heartbeat_age(SEL)})\n"
            "  * on(job, instance, environment_id)\n"
            "    group_left(connection_name, device_id, os, mode, version)\n"
            f"    letta_environment_info{{{SEL}}}\n"
            f"  and on(job, instance, environment_id) (letta_environment_connected{{{SEL}}} == 1)"
        )
        + "\n)"
    )
    stalest_columns = ["environment_id", "connection_name", "Value", "os", "mode", "version"]
    panels = [
        row("Now", 0),
        stat(
            "Online",
            "Environments that hold a lease and heartbeated within the exporter's online "
            "threshold." + FRESH_NOTE,
            "short",
            [target(state_count("online"), "online")],
            (0, 1, 4, 4),
            steps=thresholds((None, "green")),
        ),
        stat(
            "Stale",
            "STALE: environments that still hold a lease but have not heartbeated within the "
            "online threshold (or never did). They look connected but may not answer. Red "
            "when any." + FRESH_NOTE,
            "short",
            [target(state_count("stale"), "stale")],
            (4, 1, 4, 4),
            colour_mode="background",
            steps=STALE_RED,
        ),
        stat(
            "Offline",
            "Environments known to the API that hold no lease." + FRESH_NOTE,
            "short",
            [target(state_count("offline"), "offline")],
            (8, 1, 4, 4),
            steps=thresholds((None, "#8e8e8e")),
        ),
        stat(
            "Stale share of connected",
            "Stale environments as a share of those holding a lease (online + stale). "
            "Orange from 5 %, red from 20 %.",
            "percentunit",
            [
                target(
                    f"(\n{state_count('stale')}\n)\n/\n{connected_count}",
                    "stale share",
                )
            ],
            (12, 1, 4, 4),
            steps=thresholds((None, "green"), (0.05, "orange"), (0.2, "red")),
            decimals=1,
        ),
        stat(
            "Connected in unrestricted mode",
            "Connected environments (online or stale) whose permission mode is `unrestricted` "
            "(including the legacy `bypassPermissions`): agents there run tools without asking. "
            "The table further down lists them.",
            "short",
            [
                target(
                    or_zero(fleet_sum("", 'state!="offline", mode="unrestricted"')),
                    "unrestricted",
                )
            ],
            (16, 1, 4, 4),
            steps=thresholds((None, "green"), (1, "orange")),
        ),
        stat(
            "Data age",
            "Time since the last successful poll of the Letta API (by the freshest replica; "
            "with several jobs, the worst job). The numbers here are at most this old; see "
            "Exporter health when it grows.",
            "s",
            [
                target(
                    "max(time() - max without(instance, pod) "
                    f"(letta_exporter_last_success_timestamp_seconds{{{SEL}}}))",
                    "age",
                )
            ],
            (20, 1, 4, 4),
            steps=thresholds((None, "green"), (300, "orange"), (900, "red")),
            decimals=0,
        ),
        timeseries(
            "Environments by state",
            "Online, stale and offline environments over time; stale is drawn in red." + FRESH_NOTE,
            "short",
            [target(or_zero(fleet_sum("state"), "state"), "{{state}}")],
            (0, 5, 16, 8),
            overrides=colour_by_name(STATE_COLOURS),
            minimum=0,
        ),
        bargauge(
            "Heartbeat age distribution",
            "Connected environments by the age of their last heartbeat at fetch time "
            "(the exporter's `letta_environments_heartbeat_age_seconds` histogram): each bar "
            "counts those at most that old and older than the bar above. Anything past the "
            "online threshold is stale.",
            "short",
            [
                target(
                    "sum by (le) "
                    + fresh(f"letta_environments_heartbeat_age_seconds_bucket{{{SEL}}}"),
                    "{{le}}",
                    instant=True,
                    fmt="heatmap",
                )
            ],
            (16, 5, 8, 8),
            steps=thresholds((None, "blue")),
        ),
        table(
            "Stalest connected environments",
            "The 20 connected environments (holding a lease) with the oldest last heartbeat. "
            "Rows past the online threshold are stale; click an id for its detail.",
            "s",
            [target(stalest, instant=True, fmt="table")],
            (0, 13, 14, 10),
            order=stalest_columns,
            renames={"Value": "heartbeat age"},
            sort_by="heartbeat age",
            overrides=[
                ENVIRONMENT_LINK_OVERRIDE,
                {
                    "matcher": {"id": "byName", "options": "heartbeat age"},
                    "properties": [
                        {"id": "custom.cellOptions", "value": {"type": "color-background"}},
                        {"id": "decimals", "value": 0},
                    ],
                },
            ],
            steps=thresholds((None, "green"), (120, "red")),
        ),
        panel(
            "heatmap",
            "Heartbeat age distribution over time",
            "The heartbeat-age histogram over time: each cell counts connected environments "
            "whose heartbeat age falls in that bucket. Cells creeping upwards are environments "
            "going silent.",
            "s",
            [
                target(
                    "sum by (le) "
                    + fresh(f"letta_environments_heartbeat_age_seconds_bucket{{{SEL}}}"),
                    "{{le}}",
                    fmt="heatmap",
                )
            ],
            (14, 13, 10, 10),
            options={
                "calculate": False,
                "cellGap": 1,
                "color": {
                    "mode": "scheme",
                    "scheme": "Oranges",
                    "scale": "exponential",
                    "exponent": 0.5,
                    "steps": 64,
                    "reverse": False,
                    "fill": "dark-orange",
                },
                "yAxis": {"axisPlacement": "left", "unit": "s", "reverse": False},
                "cellValues": {"unit": "short"},
                "rowsFrame": {"layout": "auto", "value": "environments"},
                "filterValues": {"le": 1e-9},
                "tooltip": {"mode": "single", "yHistogram": True, "showColorScale": False},
                "legend": {"show": True},
                "exemplars": {"color": "rgba(255,0,255,0.7)"},
            },
        ),
        row("Platforms", 23),
        timeseries(
            "Online by OS",
            "Online environments by operating system (Node's `process.platform`; `unknown` "
            "when the environment sent no metadata)." + FRESH_NOTE,
            "short",
            [target(fleet_sum("os", 'state="online"'), "{{os}}")],
            (0, 24, 12, 8),
            stacked=True,
        ),
        timeseries(
            "Online by permission mode",
            "Online environments by permission mode; legacy `default` and `bypassPermissions` "
            "count as `standard` and `unrestricted`." + FRESH_NOTE,
            "short",
            [target(fleet_sum("mode", 'state="online"'), "{{mode}}")],
            (12, 24, 12, 8),
            stacked=True,
            overrides=colour_by_name({"unrestricted": "orange"}),
        ),
        row("Versions", 32),
        timeseries(
            "Version mix (connected)",
            "Connected environments (online or stale) by Letta Code version; a rollout shows "
            "as one band growing." + FRESH_NOTE,
            "short",
            [target(fleet_sum("version", 'state!="offline"'), "{{version}}")],
            (0, 33, 12, 8),
            stacked=True,
        ),
        stat(
            "Outdated share (connected)",
            "Connected environments running a version older than the current one (semantic "
            "version order; prereleases are older than their release; unknown versions never "
            "count).",
            "percentunit",
            [
                target(
                    "sum "
                    + fresh(f'letta_environments_outdated{{{SEL}, state!="offline"}}')
                    + f"\n/\n{connected_count}",
                    "outdated",
                )
            ],
            (12, 33, 4, 8),
            steps=thresholds((None, "green"), (0.25, "orange"), (0.5, "red")),
            decimals=0,
        ),
        stat(
            "Outdated by state",
            "Environments whose version is older than the current one, by state.",
            "short",
            [
                target(
                    "sum by (state) " + fresh(f"letta_environments_outdated{{{SEL}}}"), "{{state}}"
                )
            ],
            (16, 33, 4, 8),
            sparkline=False,
            text_mode="value_and_name",
            steps=thresholds((None, "text")),
        ),
        stat(
            "Current version",
            "The version counted as current and its source: `pinned` (--version.target), "
            "`registry` (npm latest of @letta-ai/letta-code) or `observed` (the newest release "
            "seen in the fleet).",
            "none",
            [
                target(
                    "max by (version, source) "
                    + fresh(f"letta_environments_latest_version_info{{{SEL}}}"),
                    "{{version}} ({{source}})",
                    instant=True,
                )
            ],
            (20, 33, 4, 8),
            sparkline=False,
            text_mode="name",
            steps=thresholds((None, "blue")),
        ),
        row("Self-update and permissions", 41),
        bargauge(
            "Self-update readiness",
            "Connected environments by what their `self_update` metadata says: supported and "
            "writable can update themselves; `unknown` when the metadata is absent.",
            "short",
            [
                target(
                    "sum by (supported, writable) "
                    + fresh(f"letta_environments_self_update{{{SEL}}}"),
                    "supported={{supported}} writable={{writable}}",
                    instant=True,
                )
            ],
            (0, 42, 8, 8),
            steps=thresholds((None, "blue")),
        ),
        stat(
            "Can self-update",
            "Share of connected environments whose metadata says self-update is supported and "
            "the install path is writable.",
            "percentunit",
            [
                target(
                    f"sum {fresh(f'letta_environments_self_update{{{ready}}}')}"
                    f"\n/\nsum {fresh(f'letta_environments_self_update{{{SEL}}}')}",
                    "can self-update",
                )
            ],
            (8, 42, 4, 8),
            steps=thresholds((None, "orange"), (0.5, "green")),
            decimals=0,
        ),
        table(
            "Connected environments in unrestricted mode",
            "Connected environments whose permission mode is `unrestricted` (or the legacy "
            "`bypassPermissions`); click an id for its detail.",
            "none",
            [
                target(
                    fresh(
                        f'letta_environment_info{{{SEL}, mode="unrestricted"}}\n'
                        "  and on(job, instance, environment_id) "
                        f"(letta_environment_connected{{{SEL}}} == 1)"
                    ),
                    instant=True,
                    fmt="table",
                )
            ],
            (12, 42, 12, 8),
            hidden=("Time", "__name__", "Value", "job", "instance", "pod", "mode"),
            order=["environment_id", "connection_name", "user_id", "device_id", "os", "version"],
            overrides=[ENVIRONMENT_LINK_OVERRIDE],
        ),
        row("Version drift and upgrades", 50),
        timeseries(
            "Outdated (connected) by how far behind",
            "Connected environments older than the current version, by the first part of the "
            "version that differs: major, minor, patch, or prerelease (a prerelease of the "
            "current release).",
            "short",
            [
                target(
                    "sum by (behind) "
                    + fresh(f'letta_environments_outdated{{{SEL}, state!="offline"}}'),
                    "{{behind}}",
                )
            ],
            (0, 51, 8, 8),
            stacked=True,
            overrides=colour_by_name({"major": "red", "minor": "orange", "patch": "yellow"}),
        ),
        stat(
            "Can upgrade themselves",
            "Outdated, connected environments whose Letta Code can upgrade itself (self_update "
            "supported and writable, and the upgrade-letta-code command): send them "
            "`upgrade-letta-code`.",
            "short",
            [target("sum " + fresh(f"letta_environments_upgradable{{{SEL}}}"), "upgradable")],
            (8, 51, 4, 8),
            steps=thresholds((None, "green")),
        ),
        bargauge(
            "Why the others cannot",
            "Outdated, connected environments that cannot upgrade themselves, by reason; they "
            "need the manual command their metadata gives (see the VersionDrift runbook).",
            "short",
            [
                target(
                    "sum by (reason) " + fresh(f"letta_environments_not_upgradable{{{SEL}}}"),
                    "{{reason}}",
                    instant=True,
                )
            ],
            (12, 51, 6, 8),
            steps=thresholds((None, "orange")),
        ),
        bargauge(
            "Age of the versions in use",
            "For each Letta Code version connected environments run: how long ago it was "
            "published, from the npm registry's release dates.",
            "s",
            [
                target(
                    "max by (version) (\n  time() - "
                    + fresh(f"letta_code_release_timestamp_seconds{{{SEL}}}")
                    + "\n)\nand on(version) "
                    + fleet_sum("version", 'state!="offline"'),
                    "{{version}}",
                    instant=True,
                )
            ],
            (18, 51, 6, 8),
            steps=thresholds((None, "green"), (14 * 86400, "orange"), (60 * 86400, "red")),
        ),
        timeseries(
            "Node.js major version (connected)",
            "Connected environments by the major version of their Node.js runtime: runtime "
            "drift next to Letta Code's own.",
            "short",
            [
                target(
                    "sum by (major) "
                    + fresh(f'letta_environments_node_major{{{SEL}, state!="offline"}}'),
                    "Node {{major}}",
                )
            ],
            (0, 59, 24, 7),
            stacked=True,
        ),
    ]
    return dashboard(
        "letta-fleet-overview",
        "Letta Code environments of an organisation: how many are online, stale and offline, "
        "on which platforms and versions, and which need attention.",
        panels,
    )


def environment_detail() -> Json:
    info = fresh(f"letta_environment_info{{{ENV_SEL}}}")

    def info_stat(title: str, label: str, description: str, x: int) -> Json:
        return stat(
            title,
            description,
            "none",
            [target(f"max by ({label}) {info}", f"{{{{{label}}}}}", instant=True)],
            (x, 1, 3, 4),
            sparkline=False,
            text_mode="name",
            steps=thresholds((None, "text")),
        )

    def lease_time(metric: str) -> str:
        return f"max by (environment_id) {fresh(f'{metric}{{{ENV_SEL}}} * 1000')}"

    state = environment_state(ENV_SEL)
    panels = [
        row("$environment", 0),
        stat(
            "State",
            "Online: holds a lease and heartbeated within the online threshold (the "
            "`Online threshold` variable: set it to the exporter's --letta.online-threshold). "
            "STALE: holds a lease but its heartbeat is older or missing. Offline: no lease.",
            "none",
            [target(state, "state")],
            (0, 1, 4, 4),
            colour_mode="background",
            sparkline=False,
            mappings=STATE_MAP,
            steps=thresholds((None, "text")),
        ),
        stat(
            "Heartbeat age",
            "Time since the environment's last heartbeat, as the Letta API reported it at the "
            "last poll. Red past the exporter's default online threshold (120 s).",
            "s",
            [target(f"max by (environment_id) {fresh(heartbeat_age(ENV_SEL))}", "age")],
            (4, 1, 4, 4),
            steps=thresholds((None, "green"), (120, "red")),
            decimals=0,
        ),
        info_stat("Version", "version", "Letta Code version the environment reports.", 8),
        info_stat("Mode", "mode", "Permission mode (legacy aliases normalised).", 11),
        info_stat("OS", "os", "Node's `process.platform` of the environment.", 14),
        stat(
            "Lease began",
            "When the current lease (connection) began; empty while offline.",
            "dateTimeFromNow",
            [target(lease_time("letta_environment_connected_timestamp_seconds"), "lease")],
            (17, 1, 4, 4),
            sparkline=False,
            steps=thresholds((None, "text")),
        ),
        stat(
            "First seen",
            "When the Letta API first saw this environment.",
            "dateTimeFromNow",
            [target(lease_time("letta_environment_first_seen_timestamp_seconds"), "first seen")],
            (21, 1, 3, 4),
            sparkline=False,
            steps=thresholds((None, "text")),
        ),
        table(
            "Metadata",
            "Everything the exporter knows about this environment (`letta_environment_info`).",
            "none",
            [target(info, instant=True, fmt="table")],
            (0, 5, 24, 4),
            hidden=("Time", "__name__", "Value", "job", "pod"),
            order=[
                "environment_id",
                "connection_name",
                "device_id",
                "user_id",
                "os",
                "mode",
                "version",
                "node_version",
            ],
        ),
        panel(
            "state-timeline",
            "Connection history",
            "The environment's state over time: online (green), STALE (red, lease held but "
            "no recent heartbeat) and offline (grey, no lease).",
            "none",
            [target(state, "state")],
            (0, 9, 24, 5),
            options={
                "mergeValues": True,
                "showValue": "auto",
                "alignValue": "left",
                "rowHeight": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "single", "sort": "none"},
            },
            custom={"fillOpacity": 80, "lineWidth": 0},
            mappings=STATE_MAP,
            steps=thresholds((None, "text")),
        ),
        timeseries(
            "Heartbeat age over time",
            "Seconds since the last heartbeat at each poll: a sawtooth near zero while online, "
            "a climbing line once the environment goes silent.",
            "s",
            [target(f"max by (environment_id) {fresh(heartbeat_age(ENV_SEL))}", "heartbeat age")],
            (0, 14, 12, 8),
            legend_calcs=("lastNotNull", "max"),
            minimum=0,
        ),
        timeseries(
            "Lease age over time",
            "Time since the current lease began: every drop to zero is a reconnect, every gap "
            "is time offline.",
            "s",
            [
                target(
                    "max by (environment_id) "
                    + fresh(f"time() - letta_environment_connected_timestamp_seconds{{{ENV_SEL}}}"),
                    "lease age",
                )
            ],
            (12, 14, 12, 8),
            minimum=0,
        ),
        stat(
            "Last seen",
            "When the Letta API last saw this environment.",
            "dateTimeFromNow",
            [target(lease_time("letta_environment_last_seen_timestamp_seconds"), "last seen")],
            (0, 22, 6, 3),
            sparkline=False,
            steps=thresholds((None, "text")),
        ),
        stat(
            "Connected",
            "1 while the environment holds a lease (`letta_environment_connected`).",
            "none",
            [
                target(
                    f"max by (environment_id) {fresh(f'letta_environment_connected{{{ENV_SEL}}}')}",
                    "connected",
                )
            ],
            (6, 22, 6, 3),
            sparkline=False,
            colour_mode="background",
            mappings=value_map({"1": ("Connected", "green"), "0": ("No lease", "#8e8e8e")}),
            steps=thresholds((None, "text")),
        ),
        stat(
            "Node.js",
            "Node.js version the environment runs on.",
            "none",
            [target(f"max by (node_version) {info}", "{{node_version}}", instant=True)],
            (12, 22, 6, 3),
            sparkline=False,
            text_mode="name",
            steps=thresholds((None, "text")),
        ),
        stat(
            "Connection name",
            "The name the environment connected with.",
            "none",
            [target(f"max by (connection_name) {info}", "{{connection_name}}", instant=True)],
            (18, 22, 6, 3),
            sparkline=False,
            text_mode="name",
            steps=thresholds((None, "text")),
        ),
    ]
    return dashboard(
        "letta-environment-detail",
        "One Letta Code environment: its state, heartbeat, version, mode and connection history.",
        panels,
        environment=True,
    )


def exporter_health() -> Json:
    def per_poll(counter: str) -> str:
        return (
            f"sum by (job, instance) (rate({counter}{{{SEL}}}[$__rate_interval]))\n/\n"
            "sum by (job, instance) "
            f'(rate(letta_exporter_polls_total{{{SEL}, result="success"}}[$__rate_interval]))'
        )

    panels = [
        stat(
            "Exporter up",
            "Whether each exporter's last poll of the Letta API succeeded (`letta_exporter_up`).",
            "none",
            [target(f"letta_exporter_up{{{SEL}}}", "{{instance}}")],
            (0, 0, 6, 4),
            colour_mode="background",
            sparkline=False,
            mappings=UP_MAP,
            steps=thresholds((None, "red"), (1, "green")),
        ),
        stat(
            "Scraped by Prometheus",
            "Whether Prometheus reached each exporter at its last scrape (`up`).",
            "none",
            [target(f"up{{{SEL}}}", "{{instance}}")],
            (6, 0, 6, 4),
            colour_mode="background",
            sparkline=False,
            mappings=UP_MAP,
            steps=thresholds((None, "red"), (1, "green")),
        ),
        stat(
            "Last success age / poll interval",
            "Time since the last successful poll, in poll intervals: about 1 when healthy; "
            "orange from 3; red from 10, where (by default) the fleet series are withdrawn.",
            "none",
            [
                target(
                    f"(time() - letta_exporter_last_success_timestamp_seconds{{{SEL}}})\n"
                    f"/ on(job, instance) letta_exporter_poll_interval_seconds{{{SEL}}}",
                    "{{instance}}",
                )
            ],
            (12, 0, 6, 4),
            decimals=1,
            steps=thresholds((None, "green"), (3, "orange"), (10, "red")),
        ),
        stat(
            "Failed polls",
            "Share of polls that failed over the rate interval, all exporters together.",
            "percentunit",
            [
                target(
                    f'sum(rate(letta_exporter_polls_total{{{SEL}, result!="success"}}'
                    "[$__rate_interval]))\n/\n"
                    f"sum(rate(letta_exporter_polls_total{{{SEL}}}[$__rate_interval]))",
                    "failed",
                )
            ],
            (18, 0, 6, 4),
            decimals=1,
            steps=thresholds((None, "green"), (0.01, "orange"), (0.2, "red")),
        ),
        timeseries(
            "Last success age against the poll interval",
            "Seconds since each exporter's last successful poll, next to its configured poll "
            "interval: the age should stay a sawtooth below about one interval.",
            "s",
            [
                target(
                    f"time() - letta_exporter_last_success_timestamp_seconds{{{SEL}}}",
                    "{{instance}} last success age",
                ),
                target(
                    f"letta_exporter_poll_interval_seconds{{{SEL}}}",
                    "{{instance}} poll interval",
                ),
            ],
            (0, 4, 12, 8),
            minimum=0,
        ),
        timeseries(
            "Poll duration",
            "Wall time of each exporter's last poll (every page of the list), next to the poll "
            "interval it has to fit in.",
            "s",
            [
                target(f"letta_exporter_poll_duration_seconds{{{SEL}}}", "{{instance}} duration"),
                target(
                    f"letta_exporter_poll_interval_seconds{{{SEL}}}",
                    "{{instance}} poll interval",
                ),
            ],
            (12, 4, 12, 8),
            minimum=0,
        ),
        timeseries(
            "Poll results",
            "Polls per minute by result (`success`, `auth_error`, `rate_limited`, "
            "`http_error`, `timeout`, ...); only results that happened are drawn.",
            "opm",
            [
                target(
                    "60 * sum by (instance, result) "
                    f"(rate(letta_exporter_polls_total{{{SEL}}}[$__rate_interval])) > 0",
                    "{{instance}} {{result}}",
                )
            ],
            (0, 12, 12, 8),
            stacked=True,
        ),
        timeseries(
            "Upstream API requests by status code",
            "Requests per minute to the Letta API by HTTP status code, or `timeout` / "
            "`connection_error` when no answer came.",
            "reqpm",
            [
                target(
                    "60 * sum by (code) "
                    f"(rate(letta_exporter_api_requests_total{{{SEL}}}[$__rate_interval]))",
                    "{{code}}",
                )
            ],
            (12, 12, 12, 8),
            stacked=True,
        ),
        timeseries(
            "Invalid upstream records per poll",
            "Rows of the environments list skipped per successful poll because they failed "
            "validation; anything above zero means the API sends something the exporter does "
            "not understand (see its log).",
            "short",
            [target(per_poll("letta_exporter_invalid_records_total"), "{{instance}}")],
            (0, 20, 12, 8),
            minimum=0,
        ),
        timeseries(
            "Environments over the cap per poll",
            "Environments left without per-environment series per successful poll because of "
            "--collector.environment.max.",
            "short",
            [target(per_poll("letta_exporter_environments_dropped_total"), "{{instance}}")],
            (12, 20, 12, 8),
            minimum=0,
        ),
        timeseries(
            "Scrape duration",
            "How long Prometheus took to scrape each exporter (`scrape_duration_seconds`); "
            "scrapes only read a cached snapshot, so this stays small.",
            "s",
            [target(f"scrape_duration_seconds{{{SEL}}}", "{{instance}}")],
            (0, 28, 8, 8),
            minimum=0,
        ),
        timeseries(
            "Samples per scrape",
            "Samples Prometheus took from each exporter per scrape "
            "(`scrape_samples_scraped`); grows with the fleet when per-environment series are "
            "on.",
            "short",
            [target(f"scrape_samples_scraped{{{SEL}}}", "{{instance}}")],
            (8, 28, 8, 8),
            minimum=0,
        ),
        table(
            "Exporter versions",
            "The exporter version each instance runs (`letta_exporter_build_info`).",
            "none",
            [target(f"letta_exporter_build_info{{{SEL}}}", instant=True, fmt="table")],
            (16, 28, 8, 8),
            hidden=("Time", "__name__", "Value"),
            order=["job", "instance", "version"],
        ),
    ]
    return dashboard(
        "letta-exporter-health",
        "The letta-environments-exporter itself: is it polling, how long polls take, what the "
        "Letta API answers.",
        panels,
    )


BUILDERS = {
    "letta-fleet-overview": fleet_overview,
    "letta-environment-detail": environment_detail,
    "letta-exporter-health": exporter_health,
}


def render(uid: str) -> str:
    return json.dumps(BUILDERS[uid](), indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for uid in BUILDERS:
        path = OUT / f"{uid}.json"
        text = render(uid)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.relative_to(ROOT))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    if stale:
        print(
            f"out of date: {', '.join(map(str, stale))}; run python scripts/build_dashboards.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
