"""The Grafana dashboards, built with Grafana's own SDK (grafana-foundation-sdk).

Fleet numbers read the recording rules of `monitoring.rules`, the series the alerts read;
per-environment queries use the same expression builders as the alerts, over the dashboard's
`$job`/`$instance` selection. Layout is by rows: the SDK places the panels of a row left to
right, so every row's widths add up to 24.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar, cast

from grafana_foundation_sdk.builders import bargauge, heatmap, prometheus, stat, statetimeline
from grafana_foundation_sdk.builders import dashboard as grafana
from grafana_foundation_sdk.builders import table as tables
from grafana_foundation_sdk.builders import timeseries as series
from grafana_foundation_sdk.builders.common import (
    ReduceDataOptions,
    StackingConfig,
    VizLegendOptions,
    VizTooltipOptions,
)
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prom

from monitoring import rules
from monitoring.rules import heartbeat, heartbeat_age, with_names
from monitoring.settings import Bundle, parse_duration

DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["letta", "letta-environments-exporter"]
JOB = 'job=~"$job"'  # recorded series have no instance label left to select
INSTANCE = 'instance=~"$instance"'
ENVIRONMENT = 'environment_id="$environment"'
UNRESTRICTED_MODE = 'mode="unrestricted"'
FAILED = 'result!="success"'
TITLES = {
    "letta-fleet-overview": "Letta / Fleet overview",
    "letta-environment-detail": "Letta / Environment detail",
    "letta-exporter-health": "Letta / Exporter health",
}
DETAIL_LINK = (
    "/d/letta-environment-detail/letta-environment-detail?${datasource:queryparam}"
    "&${job:queryparam}&${instance:queryparam}&var-environment=${__value.raw}"
    "&${__url_time_range}"
)
P = TypeVar("P")
STATE_COLOURS = {"online": "green", "stale": "red", "offline": "#8e8e8e"}
GREY = "#8e8e8e"
COUNTED_AS_ALERTS = (
    " Counted by the recording rules the alerts read, one count however many replicas poll."
)


# --- building blocks ----------------------------------------------------------------------


def recorded(name: str, *matchers: str) -> str:
    """A recorded series of the shipped rules, for the chosen jobs."""
    return f"{name}{{{', '.join((JOB, *matchers))}}}"


def query(
    expr: str, legend: str = "__auto", *, instant: bool = False, table: bool = False
) -> prometheus.Dataquery:
    target = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(DATASOURCE)
    target = target.instant() if instant or table else target.range()
    return target.format(prom.PromQueryFormat.TABLE) if table else target


def steps(*pairs: tuple[float | None, str]) -> grafana.ThresholdsConfig:
    return (
        grafana.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=colour) for value, colour in pairs])
    )


def value_map(values: dict[str, tuple[str, str]]) -> list[model.ValueMapping]:
    options = {
        value: model.ValueMappingResult(text=text, color=colour, index=index)
        for index, (value, (text, colour)) in enumerate(values.items())
    }
    return [model.ValueMap(options=options)]


STATE_MAP = value_map({"2": ("Online", "green"), "1": ("Stale", "red"), "0": ("Offline", GREY)})
UP_MAP = value_map({"1": ("Up", "green"), "0": ("Down", "red")})


def fixed_colour(colour: str) -> list[model.DynamicConfigValue]:
    return [model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": colour})]


def runbooks(bundle: Bundle, *alerts: str) -> list[Builder[model.DashboardLink]]:
    """Panel links to the runbooks of ``alerts``."""
    return [
        grafana.DashboardLink(f"Runbook: {name}")
        .url(bundle.settings.runbook(name))
        .target_blank(True)
        for name in alerts
    ]


def common_fields(panel: P, title: str, description: str, unit: str, targets: Sequence[Any]) -> P:
    """What every panel has: title, description, unit, the data source and its queries."""
    built: Any = panel
    built = built.title(title).description(description).unit(unit).datasource(DATASOURCE)
    for index, target in enumerate(targets):
        built = built.with_target(target.ref_id(chr(ord("A") + index)))
    return cast(P, built)


def stat_panel(
    title: str,
    description: str,
    unit: str,
    *targets: Any,
    width: int,
    height: int = 4,
    colours: grafana.ThresholdsConfig | None = None,
    background: bool = False,
    sparkline: bool = True,
    text: common.BigValueTextMode = common.BigValueTextMode.AUTO,
) -> stat.Panel:
    return (
        common_fields(stat.Panel(), title, description, unit, targets)
        .span(width)
        .height(height)
        .thresholds(colours or steps((None, "green")))
        .color_mode(
            common.BigValueColorMode.BACKGROUND if background else common.BigValueColorMode.VALUE
        )
        .graph_mode(common.BigValueGraphMode.AREA if sparkline else common.BigValueGraphMode.NONE)
        .text_mode(text)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def up_panel(title: str, description: str, expr: str) -> stat.Panel:
    """A red/green stat per instance of a 0/1 series."""
    return stat_panel(
        title,
        description,
        "none",
        query(expr, "{{instance}}"),
        width=4,
        background=True,
        sparkline=False,
        colours=steps((None, "red"), (1, "green")),
    ).mappings(UP_MAP)


def graph(
    title: str,
    description: str,
    unit: str,
    *targets: Any,
    width: int,
    height: int = 8,
    stacked: bool = False,
) -> series.Panel:
    legend = (
        VizLegendOptions()
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.RIGHT)
        .show_legend(True)
        .calcs(["lastNotNull", "max"])
        .sort_by("Last *")
        .sort_desc(True)
    )
    panel = (
        common_fields(series.Panel(), title, description, unit, targets)
        .span(width)
        .height(height)
        .min(0)
        .line_interpolation(common.LineInterpolation.STEP_AFTER)
        .show_points(common.VisibilityMode.NEVER)
        .fill_opacity(60 if stacked else 10)
        .legend(legend)
        .tooltip(
            VizTooltipOptions()
            .mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING)
        )
    )
    if stacked:
        panel = panel.stacking(StackingConfig().mode(common.StackingMode.NORMAL))
    return panel


def bars(
    title: str, description: str, unit: str, *targets: Any, width: int, colour: str
) -> bargauge.Panel:
    return (
        common_fields(bargauge.Panel(), title, description, unit, targets)
        .span(width)
        .height(8)
        .thresholds(steps((None, colour)))
        .display_mode(common.BarGaugeDisplayMode.GRADIENT)
        .orientation(common.VizOrientation.HORIZONTAL)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )


def table_panel(
    title: str,
    description: str,
    unit: str,
    target: Any,
    *,
    width: int,
    height: int,
    hidden: Sequence[str] = ("Time", "__name__", "Value", "job", "instance", "pod"),
    order: Sequence[str] = (),
    renames: dict[str, str] | None = None,
) -> tables.Panel:
    organize = model.DataTransformerConfig(
        id_val="organize",
        options={
            "excludeByName": dict.fromkeys(hidden, True),
            "indexByName": {name: index for index, name in enumerate(order)},
            "renameByName": renames or {},
        },
    )
    return (
        common_fields(tables.Panel(), title, description, unit, [target])
        .span(width)
        .height(height)
        .cell_height(common.TableCellHeight.SM)
        .with_transformation(organize)
    )


def link_environments(panel: tables.Panel) -> tables.Panel:
    """Each environment id links to the detail dashboard."""
    link = model.DynamicConfigValue(
        id_val="links", value=[{"title": "Environment detail", "url": DETAIL_LINK}]
    )
    return panel.override_by_name("environment_id", [link])


def variables(bundle: Bundle, *, environment: bool = False) -> list[Builder[model.VariableModel]]:
    def query_variable(name: str, label: str, definition: str) -> grafana.QueryVariable:
        return (
            grafana.QueryVariable(name)
            .id(name)
            .label(label)
            .datasource(DATASOURCE)
            .query(definition)
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )

    build_info = bundle.settings.select("letta_exporter_build_info")
    chosen = bundle.settings.select("letta_exporter_build_info", JOB)
    result: list[Builder[model.VariableModel]] = [
        grafana.DatasourceVariable("datasource")
        .id("datasource")
        .label("Data Source")
        .type("prometheus"),
        query_variable("job", "Job", f"label_values({build_info}, job)")
        .include_all(True)
        .multi(True),
        # "All" is every instance of the chosen jobs, even one that no longer serves build_info.
        query_variable("instance", "Instance", f"label_values({chosen}, instance)")
        .include_all(True)
        .multi(True)
        .all_value(".*"),
    ]
    if environment:
        info = f"letta_environment_info{{{JOB}, {INSTANCE}}}"
        threshold = f"{parse_duration(bundle.settings.online_threshold):g}"
        result += [
            query_variable("environment", "Environment", f"label_values({info}, environment_id)"),
            grafana.TextBoxVariable("online_threshold")
            .id("online_threshold")
            .label("Online threshold (s)")
            .description(
                "The exporter's --letta.online-threshold in seconds: a connected environment "
                "whose heartbeat is older is stale."
            )
            .default_value(threshold),
        ]
    return result


Rows = Sequence[tuple[str, Sequence[Any]]]


def dashboard(bundle: Bundle, uid: str, description: str, layout: Rows, **kw: bool) -> Any:
    board = (
        grafana.Dashboard(TITLES[uid])
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .time("now-6h", "now")
        .refresh("1m")
        .timezone("")
        .variables(variables(bundle, **kw))
        .links(
            [
                grafana.DashboardLink(title)
                .type(model.DashboardLinkType.LINK)
                .icon("dashboard")
                .url(f"/d/{other}/{other}")
                .include_vars(True)
                .keep_time(True)
                for other, title in TITLES.items()
                if other != uid
            ]
        )
    )
    for title, panels in layout:
        board = board.with_row(grafana.Row(title))
        for item in panels:
            board = board.with_panel(item)
    built = board.build()
    for number, item in enumerate(built.panels or [], start=1):
        item.id_val = number
    return built


# --- the fleet overview -------------------------------------------------------------------


def fleet_overview(bundle: Bundle) -> Any:
    s = replace(bundle.settings, job_selector=f"{JOB}, {INSTANCE}")

    def fleet(metric: str, by: str = "", *matchers: str) -> str:
        """One replica's count of ``metric`` (summed by ``by``): the same fold as the rules."""
        grouping = f" by ({by})" if by else ""
        return f"sum{grouping} (max {s.without()} ({s.select(metric, *matchers)}))"

    def state(name: str) -> str:
        return recorded(rules.BY_STATE, f'state="{name}"')

    connected = recorded(rules.CONNECTED_SUM)
    buckets = fleet("letta_environments_heartbeat_age_seconds_bucket", "le")
    stalest = (
        "topk(20,\n"
        + with_names(s, heartbeat_age(s), "connection_name", "device_id", "os", "mode", "version")
        + "\n)"
    )
    in_use = fleet("letta_environments", "version", 'state!="offline"')
    now = [
        stat_panel(
            "Online",
            "Environments that hold a lease and heartbeated within the exporter's online "
            "threshold." + COUNTED_AS_ALERTS,
            "short",
            query(recorded(rules.ONLINE), "{{job}}"),
            width=4,
        ).links(runbooks(bundle, "LettaEnvironmentsNoneOnline", "LettaEnvironmentsOnlineDrop")),
        stat_panel(
            "Stale",
            "STALE: environments that still hold a lease but have not heartbeated within the "
            "online threshold (or never did). They look connected but may not answer. Red "
            "when any." + COUNTED_AS_ALERTS,
            "short",
            query(state("stale"), "{{job}}"),
            width=4,
            colours=steps((None, "green"), (1, "red")),
            background=True,
        ),
        stat_panel(
            "Offline",
            "Environments known to the API that hold no lease." + COUNTED_AS_ALERTS,
            "short",
            query(state("offline"), "{{job}}"),
            width=4,
            colours=steps((None, GREY)),
        ),
        stat_panel(
            "Stale share of connected",
            "Stale environments as a share of those holding a lease (online + stale). "
            "Orange from 5 %, red from 20 %.",
            "percentunit",
            query(f"sum without (state) ({state('stale')})\n/\n{connected}", "{{job}}"),
            width=4,
            colours=steps((None, "green"), (0.05, "orange"), (0.2, "red")),
        ).decimals(1),
        stat_panel(
            "Connected in unrestricted mode",
            "Environments in `unrestricted` permission mode (including the legacy "
            "`bypassPermissions`) that the LettaEnvironmentsUnrestrictedMode alert watches "
            "(its selector; connected ones by default): agents there run tools without asking. "
            "The table further down lists the connected ones." + COUNTED_AS_ALERTS,
            "short",
            query(recorded(rules.UNRESTRICTED), "{{job}}"),
            width=4,
            colours=steps((None, "green"), (1, "orange")),
        ).links(runbooks(bundle, "LettaEnvironmentsUnrestrictedMode")),
        stat_panel(
            "Data age",
            "Time since the last successful poll of the Letta API, by the freshest replica of "
            "each job. The numbers here are at most this old; see Exporter health when it "
            "grows.",
            "s",
            query(
                "time() - max without (instance, pod) "
                f"({s.select('letta_exporter_last_success_timestamp_seconds')})",
                "{{job}}",
            ),
            width=4,
            colours=steps((None, "green"), (300, "orange"), (900, "red")),
        ).decimals(0),
        graph(
            "Environments by state",
            "Online, stale and offline environments over time; stale is drawn in red."
            + COUNTED_AS_ALERTS,
            "short",
            query(recorded(rules.BY_STATE), "{{state}}"),
            width=16,
        )
        .override_by_name("online", fixed_colour(STATE_COLOURS["online"]))
        .override_by_name("stale", fixed_colour(STATE_COLOURS["stale"]))
        .override_by_name("offline", fixed_colour(STATE_COLOURS["offline"])),
        bars(
            "Heartbeat age distribution",
            "Connected environments by the age of their last heartbeat at fetch time "
            "(the exporter's `letta_environments_heartbeat_age_seconds` histogram): each bar "
            "counts those at most that old. Anything past the online threshold is stale.",
            "short",
            query(buckets, "{{le}}", instant=True).format(prom.PromQueryFormat.HEATMAP),
            width=8,
            colour="blue",
        ),
        link_environments(
            table_panel(
                "Stalest connected environments",
                "The 20 connected environments (holding a lease) with the oldest last "
                "heartbeat, computed as the LettaEnvironmentHeartbeatStale alert computes it "
                "(-1: never heartbeated). Rows past the online threshold are stale; click an id "
                "for its detail.",
                "s",
                query(stalest, table=True),
                width=14,
                height=10,
                hidden=("Time", "__name__", "job"),
                order=["environment_id", "connection_name", "Value", "os", "mode", "version"],
                renames={"Value": "heartbeat age"},
            )
        )
        .thresholds(
            steps((None, "green"), (parse_duration(bundle.settings.online_threshold), "red"))
        )
        .links(runbooks(bundle, "LettaEnvironmentHeartbeatStale")),
        common_fields(
            heatmap.Panel(),
            "Heartbeat age distribution over time",
            "The heartbeat-age histogram over time: each cell counts connected environments "
            "whose heartbeat age falls in that bucket. Cells creeping upwards are environments "
            "going silent.",
            "s",
            [query(buckets, "{{le}}").format(prom.PromQueryFormat.HEATMAP)],
        )
        .span(10)
        .height(10)
        .calculate(False),
    ]
    platforms = [
        graph(
            "Online by OS",
            "Online environments by operating system (Node's `process.platform`; `unknown` "
            "when the environment sent no metadata).",
            "short",
            query(fleet("letta_environments", "os", 'state="online"'), "{{os}}"),
            width=12,
            stacked=True,
        ),
        graph(
            "Online by permission mode",
            "Online environments by permission mode; legacy `default` and `bypassPermissions` "
            "count as `standard` and `unrestricted`.",
            "short",
            query(fleet("letta_environments", "mode", 'state="online"'), "{{mode}}"),
            width=12,
            stacked=True,
        ).override_by_name("unrestricted", fixed_colour("orange")),
    ]
    versions = [
        graph(
            "Version mix (connected)",
            "Connected environments (online or stale) by Letta Code version; a rollout shows "
            "as one band growing.",
            "short",
            query(in_use, "{{version}}"),
            width=12,
            stacked=True,
        ),
        stat_panel(
            "Outdated share (connected)",
            "Connected environments running a version older than the current one (semantic "
            "version order; prereleases are older than their release; unknown versions never "
            "count)." + COUNTED_AS_ALERTS,
            "percentunit",
            query(recorded(rules.OUTDATED_RATIO), "{{job}}"),
            width=4,
            height=8,
            colours=steps((None, "green"), (0.25, "orange"), (0.5, "red")),
        )
        .decimals(0)
        .links(runbooks(bundle, "LettaEnvironmentsVersionDrift")),
        stat_panel(
            "Outdated by state",
            "Environments whose version is older than the current one, by state."
            + COUNTED_AS_ALERTS,
            "short",
            query(recorded(rules.OUTDATED_BY_STATE), "{{state}}"),
            width=4,
            height=8,
            sparkline=False,
            text=common.BigValueTextMode.VALUE_AND_NAME,
            colours=steps((None, "text")),
        ),
        stat_panel(
            "Current version",
            "The version counted as current and its source: `pinned` (--version.target), "
            "`registry` (npm latest of @letta-ai/letta-code), `pypi` (PyPI's newest `letta`, "
            "when newer than npm's) or `observed` (the newest release seen in the fleet).",
            "none",
            query(
                f"max by (version, source) ({s.select('letta_environments_latest_version_info')})",
                "{{version}} ({{source}})",
                instant=True,
            ),
            width=4,
            height=8,
            sparkline=False,
            text=common.BigValueTextMode.NAME,
            colours=steps((None, "blue")),
        ),
    ]
    ready = ('supported="true"', 'writable="true"')
    permissions = [
        bars(
            "Self-update readiness",
            "Connected environments by what their `self_update` metadata says: supported and "
            "writable can update themselves; `unknown` when the metadata is absent.",
            "short",
            query(
                fleet("letta_environments_self_update", "supported, writable"),
                "supported={{supported}} writable={{writable}}",
                instant=True,
            ),
            width=8,
            colour="blue",
        ),
        stat_panel(
            "Can self-update",
            "Share of connected environments whose metadata says self-update is supported and "
            "the install path is writable.",
            "percentunit",
            query(
                f"{fleet('letta_environments_self_update', '', *ready)}\n/\n"
                f"{fleet('letta_environments_self_update')}",
                "can self-update",
            ),
            width=4,
            height=8,
            colours=steps((None, "orange"), (0.5, "green")),
        ).decimals(0),
        link_environments(
            table_panel(
                "Connected environments in unrestricted mode",
                "Connected environments whose permission mode is `unrestricted` (or the legacy "
                "`bypassPermissions`); click an id for its detail.",
                "none",
                query(
                    f"max {s.without()} "
                    f"({s.select('letta_environment_info', UNRESTRICTED_MODE)})\n"
                    f"  and on (environment_id) ({rules.connected(s)} == 1)",
                    table=True,
                ),
                width=12,
                height=8,
                hidden=("Time", "__name__", "Value", "job", "mode"),
                order=["environment_id", "connection_name", "user_id", "device_id", "os"],
            )
        ),
    ]
    drift = [
        graph(
            "Outdated (connected) by how far behind",
            "Connected environments older than the current version, by the first part of the "
            "version that differs: major, minor, patch, or prerelease (a prerelease of the "
            "current release).",
            "short",
            query(fleet("letta_environments_outdated", "behind", 'state!="offline"'), "{{behind}}"),
            width=8,
            stacked=True,
        )
        .override_by_name("major", fixed_colour("red"))
        .override_by_name("minor", fixed_colour("orange"))
        .override_by_name("patch", fixed_colour("yellow")),
        stat_panel(
            "Can upgrade themselves",
            "Outdated, connected environments whose Letta Code can upgrade itself (self_update "
            "supported and writable, and the upgrade-letta-code command): send them "
            "`upgrade-letta-code`.",
            "short",
            query(fleet("letta_environments_upgradable"), "upgradable"),
            width=4,
            height=8,
        ),
        bars(
            "Why the others cannot",
            "Outdated, connected environments that cannot upgrade themselves, by reason; they "
            "need the manual command their metadata gives (see the VersionDrift runbook).",
            "short",
            query(fleet("letta_environments_not_upgradable", "reason"), "{{reason}}", instant=True),
            width=6,
            colour="orange",
        ).links(runbooks(bundle, "LettaEnvironmentsVersionDrift")),
        bars(
            "Age of the versions in use",
            "For each Letta Code version connected environments run: how long ago it was "
            "published, from the release dates of the npm registry and PyPI.",
            "s",
            query(
                "max by (version) (\n  time() - "
                f"{s.select('letta_code_release_timestamp_seconds')}\n)\nand on (version) {in_use}",
                "{{version}}",
                instant=True,
            ),
            width=6,
            colour="green",
        ).thresholds(steps((None, "green"), (14 * 86400, "orange"), (60 * 86400, "red"))),
        graph(
            "Node.js major version (connected)",
            "Connected environments by the major version of their Node.js runtime: runtime "
            "drift next to Letta Code's own.",
            "short",
            query(
                fleet("letta_environments_node_major", "major", 'state!="offline"'),
                "Node {{major}}",
            ),
            width=24,
            height=7,
            stacked=True,
        ),
    ]
    watched = recorded(rules.WATCHED)
    machines = [
        stat_panel(
            "Watched machines down",
            "Machines that LettaEnvironmentOffline watches (its selector in alerts/config.yml; "
            "none by default) that are listed but have no row online: lease cleared, or "
            "held without heartbeating. The alert also fires for a watched machine whose rows "
            "left the list. From the recording rule the alert reads.",
            "short",
            query(
                f"count without (connection_name) ({watched} == 0)\nor\n"
                f"0 * {recorded(rules.REPLICAS_SERVING)}",
                "{{job}}",
            ),
            width=4,
            height=8,
            background=True,
            colours=steps((None, "green"), (1, "red")),
        ).links(runbooks(bundle, "LettaEnvironmentOffline")),
        table_panel(
            "Watched machines",
            "Every watched machine listed now (by connection name): online while any of its "
            "rows is online, as LettaEnvironmentOffline counts it.",
            "none",
            query(watched, table=True),
            width=8,
            height=8,
            hidden=("Time", "__name__", "job"),
            order=["connection_name", "Value"],
            renames={"Value": "state"},
        )
        .mappings(value_map({"1": ("Online", "green"), "0": ("Not online", "red")}))
        .links(runbooks(bundle, "LettaEnvironmentOffline")),
        graph(
            "Connected by runtime",
            "Connected environments by where Letta Code runs: `desktop` (Letta Code Desktop), "
            "`sandbox` (Letta Cloud), `container`, `host`, or `unknown` (no machine reported, "
            "before Letta Code 0.34).",
            "short",
            query(
                fleet("letta_environments_machine", "runtime", 'state!="offline"'), "{{runtime}}"
            ),
            width=12,
            stacked=True,
        ),
        bars(
            "Connected by architecture",
            "Connected environments by CPU architecture of their machine (`unknown`: not "
            "reported).",
            "short",
            query(
                fleet("letta_environments_machine", "arch", 'state!="offline"'),
                "{{arch}}",
                instant=True,
            ),
            width=8,
            colour="blue",
        ),
        bars(
            "Connected by OS version",
            "Connected environments by operating system and its version (first two parts), "
            "as their machine reports them.",
            "short",
            query(
                fleet("letta_environments_machine", "os_name, os_version", 'state!="offline"'),
                "{{os_name}} {{os_version}}",
                instant=True,
            ),
            width=16,
            colour="blue",
        ),
    ]
    return dashboard(
        bundle,
        "letta-fleet-overview",
        "Letta Code environments of an organisation: how many are online, stale and offline, "
        "on which platforms and versions, and which need attention.",
        [
            ("Now", now),
            ("Platforms", platforms),
            ("Versions", versions),
            ("Self-update and permissions", permissions),
            ("Version drift and upgrades", drift),
            ("Machines", machines),
        ],
    )


# --- one environment ----------------------------------------------------------------------


def environment_detail(bundle: Bundle) -> Any:
    s = replace(bundle.settings, job_selector=f"{JOB}, {INSTANCE}, {ENVIRONMENT}")
    info = f"max {s.without()} ({s.select('letta_environment_info')})"
    age = f"time() - {heartbeat(s)}"
    connected = rules.connected(s)
    # 2 online, 1 stale (lease held, heartbeat older than $online_threshold or missing),
    # 0 offline (no lease): the rule the exporter applies.
    state = f"{connected}\n* (1 + (({age}) < bool $online_threshold))\nor\n{connected}"

    def since(metric: str) -> str:
        return f"max {s.without()} ({s.select(metric)}) * 1000"

    def info_stat(title: str, label: str, description: str, width: int) -> stat.Panel:
        return stat_panel(
            title,
            description,
            "none",
            query(f"max by ({label}) ({info})", f"{{{{{label}}}}}", instant=True),
            width=width,
            sparkline=False,
            text=common.BigValueTextMode.NAME,
            colours=steps((None, "text")),
        )

    def moment(title: str, metric: str, description: str, width: int, height: int) -> stat.Panel:
        return stat_panel(
            title,
            description,
            "dateTimeFromNow",
            query(since(metric), title.lower()),
            width=width,
            height=height,
            sparkline=False,
            colours=steps((None, "text")),
        )

    now = [
        stat_panel(
            "State",
            "Online: holds a lease and heartbeated within the online threshold (the "
            "`Online threshold` variable: set it to the exporter's --letta.online-threshold). "
            "STALE: holds a lease but its heartbeat is older or missing. Offline: no lease.",
            "none",
            query(state, "state"),
            width=4,
            background=True,
            sparkline=False,
            colours=steps((None, "text")),
        ).mappings(STATE_MAP),
        stat_panel(
            "Heartbeat age",
            "Time since the environment's last heartbeat, as the Letta API reported it at the "
            "last poll. Red past the exporter's online threshold.",
            "s",
            query(age, "age"),
            width=4,
            colours=steps(
                (None, "green"), (parse_duration(bundle.settings.online_threshold), "red")
            ),
        ).decimals(0),
        info_stat("Version", "version", "Letta Code version the environment reports.", 3),
        info_stat("Mode", "mode", "Permission mode (legacy aliases normalised).", 3),
        info_stat("OS", "os", "Node's `process.platform` of the environment.", 3),
        moment(
            "Lease began",
            "letta_environment_connected_timestamp_seconds",
            "When the current lease (connection) began; empty while offline.",
            4,
            4,
        ),
        moment(
            "First seen",
            "letta_environment_first_seen_timestamp_seconds",
            "When the Letta API first saw this environment.",
            3,
            4,
        ),
        table_panel(
            "Metadata",
            "Everything the exporter knows about this environment (`letta_environment_info`).",
            "none",
            query(info, table=True),
            width=24,
            height=4,
            hidden=("Time", "__name__", "Value", "job"),
            order=[
                "environment_id",
                "connection_name",
                "device_id",
                "user_id",
                "os",
                "mode",
                "version",
                "node_version",
                "runtime",
                "arch",
                "os_name",
                "os_version",
            ],
        ),
    ]
    history = [
        common_fields(
            statetimeline.Panel(),
            "Connection history",
            "The environment's state over time: online (green), STALE (red, lease held but "
            "no recent heartbeat) and offline (grey, no lease).",
            "none",
            [query(state, "state")],
        )
        .span(24)
        .height(5)
        .merge_values(True)
        .fill_opacity(80)
        .line_width(0)
        .thresholds(steps((None, "text")))
        .mappings(STATE_MAP),
        graph(
            "Heartbeat age over time",
            "Seconds since the last heartbeat at each poll: a sawtooth near zero while online, "
            "a climbing line once the environment goes silent.",
            "s",
            query(age, "heartbeat age"),
            width=12,
        ),
        graph(
            "Lease age over time",
            "Time since the current lease began: every drop to zero is a reconnect, every gap "
            "is time offline.",
            "s",
            query(
                f"time() - max {s.without()} "
                f"({s.select('letta_environment_connected_timestamp_seconds')})",
                "lease age",
            ),
            width=12,
        ),
        moment(
            "Last seen",
            "letta_environment_last_seen_timestamp_seconds",
            "When the Letta API last saw this environment.",
            6,
            3,
        ),
        stat_panel(
            "Connected",
            "1 while the environment holds a lease (`letta_environment_connected`).",
            "none",
            query(connected, "connected"),
            width=6,
            height=3,
            sparkline=False,
            background=True,
            colours=steps((None, "text")),
        ).mappings(value_map({"1": ("Connected", "green"), "0": ("No lease", GREY)})),
        info_stat("Node.js", "node_version", "Node.js version the environment runs on.", 6).height(
            3
        ),
        info_stat(
            "Connection name", "connection_name", "The name the environment connected with.", 6
        ).height(3),
    ]
    return dashboard(
        bundle,
        "letta-environment-detail",
        "One Letta Code environment: its state, heartbeat, version, mode and connection history.",
        [("$environment", now), ("History", history)],
        environment=True,
    )


# --- the exporter -------------------------------------------------------------------------


def exporter_health(bundle: Bundle) -> Any:
    s = replace(bundle.settings, job_selector=f"{JOB}, {INSTANCE}")
    missed = bundle.settings.missed_polls

    def per_poll(counter: str) -> str:
        polls = s.select("letta_exporter_polls_total", 'result="success"')
        return (
            f"sum by (job, instance) (rate({s.select(counter)}[$__rate_interval]))\n/\n"
            f"sum by (job, instance) (rate({polls}[$__rate_interval]))"
        )

    def per_instance(metric: str, what: str) -> Any:
        return query(s.select(metric), "{{instance}} " + what)

    replicas = [
        stat_panel(
            "Replicas serving",
            "Replicas of each job (and shard or organisation) whose last successful poll is "
            f"at most {missed} poll intervals old: what LettaExporterReplicaDown and "
            "LettaExporterPollFailing count. Red at none.",
            "short",
            query(recorded(rules.REPLICAS_SERVING), "{{job}}"),
            width=6,
            background=True,
            sparkline=False,
            colours=steps((None, "red"), (1, "green")),
        ).links(runbooks(bundle, "LettaExporterPollFailing", "LettaExporterDown")),
        stat_panel(
            "Replicas down or not polling",
            "Replicas of each job (and shard or organisation) that are not scraped or have "
            f"had no successful poll for more than {missed} poll intervals: what "
            "LettaExporterReplicaDown fires on while another replica serves.",
            "short",
            query(recorded(rules.REPLICAS_FAILING), "{{job}}"),
            width=6,
            background=True,
            sparkline=False,
            colours=steps((None, "green"), (1, "orange")),
        ).links(runbooks(bundle, "LettaExporterReplicaDown")),
        up_panel(
            "Exporter up",
            "Whether each exporter's last poll of the Letta API succeeded (`letta_exporter_up`).",
            s.select("letta_exporter_up"),
        ),
        up_panel(
            "Scraped by Prometheus",
            "Whether Prometheus reached each exporter at its last scrape (`up`).",
            s.select("up"),
        ),
        stat_panel(
            "Last success age / poll interval",
            "Time since the last successful poll, in poll intervals: about 1 when healthy; "
            f"orange past {missed}, where a replica counts as not polling.",
            "none",
            query(
                f"(time() - {s.select('letta_exporter_last_success_timestamp_seconds')})\n"
                f"/ {s.select('letta_exporter_poll_interval_seconds')}",
                "{{instance}}",
            ),
            width=4,
            colours=steps((None, "green"), (missed, "orange"), (10, "red")),
        ).decimals(1),
    ]
    polls = [
        graph(
            "Last success age against the poll interval",
            "Seconds since each exporter's last successful poll, next to its configured poll "
            "interval: the age should stay a sawtooth below about one interval.",
            "s",
            query(
                f"time() - {s.select('letta_exporter_last_success_timestamp_seconds')}",
                "{{instance}} last success age",
            ),
            per_instance("letta_exporter_poll_interval_seconds", "poll interval"),
            width=12,
        ),
        graph(
            "Poll duration",
            "Wall time of each exporter's last poll (every page of the list), next to the poll "
            "interval it has to fit in.",
            "s",
            per_instance("letta_exporter_poll_duration_seconds", "duration"),
            per_instance("letta_exporter_poll_interval_seconds", "poll interval"),
            width=12,
        ),
        graph(
            "Poll results",
            "Polls per minute by result (`success`, `auth_error`, `rate_limited`, "
            "`http_error`, `timeout`, ...); only results that happened are drawn.",
            "opm",
            query(
                "60 * sum by (instance, result) "
                f"(rate({s.select('letta_exporter_polls_total')}[$__rate_interval])) > 0",
                "{{instance}} {{result}}",
            ),
            width=12,
            stacked=True,
        ),
        graph(
            "Upstream API requests by status code",
            "Requests per minute to the Letta API by HTTP status code, or `timeout` / "
            "`connection_error` when no answer came. LettaExporterRateLimited watches the "
            "share of 429s.",
            "reqpm",
            query(
                "60 * sum by (code) "
                f"(rate({s.select('letta_exporter_api_requests_total')}[$__rate_interval]))",
                "{{code}}",
            ),
            width=12,
            stacked=True,
        ).links(runbooks(bundle, "LettaExporterRateLimited")),
        stat_panel(
            "Failed polls",
            "Share of polls that failed over the rate interval, all exporters together.",
            "percentunit",
            query(
                f"sum(rate({s.select('letta_exporter_polls_total', FAILED)}"
                "[$__rate_interval]))\n/\n"
                f"sum(rate({s.select('letta_exporter_polls_total')}[$__rate_interval]))",
                "failed",
            ),
            width=4,
            height=8,
            colours=steps((None, "green"), (0.01, "orange"), (0.2, "red")),
        ).decimals(1),
        graph(
            "Invalid upstream records per poll",
            "Rows of the environments list skipped per successful poll because they failed "
            "validation; anything above zero means the API sends something the exporter does "
            "not understand (see its log).",
            "short",
            query(per_poll("letta_exporter_invalid_records_total"), "{{instance}}"),
            width=10,
        ),
        graph(
            "Environments over the cap per poll",
            "Environments left without per-environment series per successful poll because of "
            "--collector.environment.max.",
            "short",
            query(per_poll("letta_exporter_environments_dropped_total"), "{{instance}}"),
            width=10,
        ),
    ]
    scrapes = [
        graph(
            "Scrape duration",
            "How long Prometheus took to scrape each exporter (`scrape_duration_seconds`); "
            "scrapes only read a cached snapshot, so this stays small.",
            "s",
            query(s.select("scrape_duration_seconds"), "{{instance}}"),
            width=8,
        ),
        graph(
            "Samples per scrape",
            "Samples Prometheus took from each exporter per scrape "
            "(`scrape_samples_scraped`); grows with the fleet when per-environment series are "
            "on.",
            "short",
            query(s.select("scrape_samples_scraped"), "{{instance}}"),
            width=8,
        ),
        table_panel(
            "Exporter versions",
            "The exporter version each instance runs (`letta_exporter_build_info`).",
            "none",
            query(s.select("letta_exporter_build_info"), table=True),
            width=8,
            height=8,
            hidden=("Time", "__name__", "Value"),
            order=["job", "instance", "version"],
        ),
    ]
    return dashboard(
        bundle,
        "letta-exporter-health",
        "The letta-environments-exporter itself: is it polling, how long polls take, what the "
        "Letta API answers.",
        [("Replicas", replicas), ("Polls", polls), ("Scrapes", scrapes)],
    )


BUILDERS: dict[str, Callable[[Bundle], Any]] = {
    "letta-fleet-overview": fleet_overview,
    "letta-environment-detail": environment_detail,
    "letta-exporter-health": exporter_health,
}


def dashboard_document(bundle: Bundle, uid: str) -> dict[str, Any]:
    """The dashboard ``uid`` as plain JSON data."""
    document: dict[str, Any] = json.loads(json.dumps(BUILDERS[uid](bundle), cls=JSONEncoder))
    return document
