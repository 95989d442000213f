"""The Prometheus rules: recording rules for every fleet number, and the alerts over them.

The dashboards read the same recorded series (and build per-environment queries with the same
functions), so a panel and an alert never count the same thing two ways.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Mapping
from typing import Any

from monitoring.settings import Bundle, Settings, parse_duration

RULES_GROUP = "letta-environments.rules"
ALERTS_GROUP = "letta-environments.alerts"
CONNECTED = 'state=~"online|stale"'

# The recorded series: one per fleet number, de-duplicated across replicas.
BY_STATE = "job_state:letta_environments:sum"
OUTDATED_BY_STATE = "job_state:letta_environments_outdated:max"
ONLINE = "job:letta_environments_online:sum"
CONNECTED_SUM = "job:letta_environments_connected:sum"
OUTDATED_RATIO = "job:letta_environments_outdated_connected:ratio"
UNRESTRICTED = "job:letta_environments_unrestricted:sum"
REPLICAS_SERVING = "job:letta_exporter_replicas_serving:count"
REPLICAS_FAILING = "job:letta_exporter_replicas_failing:count"
WATCHED = "job_connection:letta_environment_watched_online:max"

# The labels of letta_environment_info that describe one row, not the machine (its
# connection_name) or the target: folded away to count a machine once, whatever its rows.
ROW_LABELS = (
    "environment_id",
    "device_id",
    "os",
    "mode",
    "version",
    "node_version",
    "user_id",
    "runtime",
    "arch",
    "os_name",
    "os_version",
    "working_directory",
    "git_branch",
)
NOTHING = 'connection_name!~".*"'  # matches no series: what an empty watch selector means


# --- expressions shared with the dashboards ---------------------------------------------------


def poll_age_over(s: Settings, comparison: str) -> str:
    """Replicas whose last successful poll is ``comparison`` (`>` or `<=`) the allowed age."""
    return (
        f"time() - {s.select('letta_exporter_last_success_timestamp_seconds')}\n"
        f"  {comparison} {s.missed_polls} * {s.select('letta_exporter_poll_interval_seconds')}"
    )


def heartbeat(s: Settings, *matchers: str) -> str:
    """Each environment's last heartbeat, one value across replicas."""
    metric = s.select("letta_environment_last_heartbeat_timestamp_seconds", *matchers)
    return f"max {s.without()} ({metric})"


def connected(s: Settings, *matchers: str) -> str:
    """1 while an environment holds a lease, one value across replicas."""
    return f"max {s.without()} ({s.select('letta_environment_connected', *matchers)})"


def heartbeat_age(s: Settings, *matchers: str, above: float | None = None) -> str:
    """Heartbeat age of each leased environment (only those older than ``above`` seconds),
    or -1 for a leased environment that never reported a heartbeat."""
    older = "" if above is None else f"\n      > {above:g}"
    return f"""\
(
    (time() - {heartbeat(s, *matchers)}){older}
  or
    -(
        {connected(s, *matchers)}
      unless
        {heartbeat(s, *matchers)}
    )
)
and
{connected(s, *matchers)} == 1"""


def with_names(s: Settings, expr: str, *labels: str) -> str:
    """``expr`` per environment, with ``labels`` of `letta_environment_info` joined on.

    topk keeps one info series per environment even while replicas disagree after a rename.
    """
    names = ", ".join(labels)
    info = s.select("letta_environment_info")
    return f"""\
(
{textwrap.indent(expr, "    ")}
)
* on (environment_id) group_left ({names})
  topk by (environment_id) (
    1, max by (environment_id, {names}) ({info})
  )"""


def watched_online(s: Settings, selector: str, threshold: float) -> str:
    """One series per watched machine (connection name) listed now: 1 while any of its rows is
    online (leased, heartbeat younger than ``threshold`` seconds), else 0."""
    info = s.select("letta_environment_info", selector or NOTHING)
    return f"""\
max {s.without(*ROW_LABELS)} (
    {info}
  * on (environment_id) group_left ()
    (
        (
            {connected(s)} == 1
          and on (environment_id)
            time() - {heartbeat(s)} < {threshold:g}
        )
      or on (environment_id)
        0 * {connected(s)}
    )
)"""


def listed_machines(s: Settings) -> str:
    """One series per connection name with a row in the list now, watched or not."""
    return f"max {s.without(*ROW_LABELS)} ({s.select('letta_environment_info')})"


def unrestricted(s: Settings, selector: str) -> str:
    """Environments in unrestricted mode matching ``selector``, one count across replicas."""
    metric = s.select("letta_environments", 'mode="unrestricted"', selector)
    return f"max {s.without()} (\n  sum without (state, os, mode, version) (\n    {metric}\n  )\n)"


# --- recording rules ----------------------------------------------------------------------


def recording_rules(bundle: Bundle) -> list[dict[str, Any]]:
    """Fleet sums, de-duplicated across replicas: each replica's sum, then the max of them."""
    s = bundle.settings
    outdated = s.select("letta_environments_outdated")
    no_replicas = f"0 * count {s.without()} ({s.select('up')})"
    offline = bundle.alerts["LettaEnvironmentOffline"]

    def replicas(expr: str) -> str:
        return f"count {s.without()} (\n    {expr}\n)"

    record = [
        # letta_environments serves only non-zero series; the outdated family always has all
        # three states, so `0 * outdated` fills the missing states with zeros.
        (
            BY_STATE,
            f"""\
max {s.without()} (
    sum without (os, mode, version) ({s.select("letta_environments")})
  or
    0 * sum without (behind) ({outdated})
)""",
        ),
        # Summed over `behind` (major, minor, patch, prerelease) first.
        (OUTDATED_BY_STATE, f"max {s.without()} (sum without (behind) ({outdated}))"),
        (ONLINE, f'sum without (state) ({BY_STATE}{{state="online"}})'),
        (CONNECTED_SUM, f"sum without (state) ({BY_STATE}{{{CONNECTED}}})"),
        (
            OUTDATED_RATIO,
            f"sum without (state) ({OUTDATED_BY_STATE}{{{CONNECTED}}})\n  / ({CONNECTED_SUM} > 0)",
        ),
        (
            UNRESTRICTED,
            unrestricted(s, bundle.alerts["LettaEnvironmentsUnrestrictedMode"]["selector"]),
        ),
        (
            WATCHED,
            watched_online(s, offline["selector"], parse_duration(offline["threshold"])),
        ),
        # Both replica counts are 0 rather than absent while the job has targets, so panels
        # show 0 and alerts compare with `> 0`.
        (REPLICAS_SERVING, f"{replicas(poll_age_over(s, '<='))}\nor\n{no_replicas}"),
        # Down (not scraped) or scraped but not polling: the replica's series are gone or old.
        (
            REPLICAS_FAILING,
            replicas(f"{s.select('up')} == 0\n  or\n    {poll_age_over(s, '>')}")
            + f"\nor\n{no_replicas}",
        ),
    ]
    return [{"record": name, "expr": expr + "\n"} for name, expr in record]


# --- alerts -------------------------------------------------------------------------------

Alert = tuple[str, str, str]  # expression, summary, description


def _exporter_down(s: Settings, p: Mapping[str, Any]) -> Alert:
    # Per group of replicas (job and any shard or organisation label): every one of them
    # fails its scrapes; or no target of the job at all. absent() of a selector keeps the
    # labels its `=` matchers fix, so the alert carries `job` for routing and inhibition.
    return (
        f"max {s.without()} ({s.select('up')}) == 0\nor\nabsent({s.select('up')})\n",
        "No replica of the Letta environments exporter is up.",
        "No target of job {{ $labels.job }} has been scraped successfully for "
        f"{p['for']}; no other Letta alert can fire while the exporter is down.",
    )


def _replica_down(s: Settings, p: Mapping[str, Any]) -> Alert:
    return (
        f"{REPLICAS_FAILING} > 0\nand\n{REPLICAS_SERVING} > 0\n",
        "A replica of the Letta environments exporter is down or cannot poll.",
        "{{ $value }} replica(s) of {{ $labels.job }} are not scraped or have had no "
        f"successful poll for more than {s.missed_polls} poll intervals, while another still "
        "serves fresh data; the fleet alerts keep working.",
    )


def _poll_failing(s: Settings, p: Mapping[str, Any]) -> Alert:
    return (
        f"count {s.without()} (\n  {poll_age_over(s, '>')}\n)\nunless\n{REPLICAS_SERVING} > 0\n",
        "The exporter has not polled the Letta API successfully for several poll intervals.",
        "{{ $value }} replica(s) of {{ $labels.job }} have had no successful poll of the "
        f"Letta API for more than {s.missed_polls} poll intervals (or none since they "
        "started); the fleet metrics are getting old.",
    )


def _rate_limited(s: Settings, p: Mapping[str, Any]) -> Alert:
    window, ratio = p["window"], p["ratio"]
    requests = "letta_exporter_api_requests_total"
    return (
        f"""\
(
    sum {s.without("code")} (rate({s.select(requests, 'code="429"')}[{window}]))
  /
    sum {s.without("code")} (rate({s.select(requests)}[{window}]))
) > {ratio:g}
""",
        "The Letta API keeps answering the exporter with 429 Too Many Requests.",
        "{{ $value | humanizePercentage }} of the requests of {{ $labels.job }} to the Letta "
        f"API were answered 429 over the last {window} (threshold {_percent(ratio)}).",
    )


def _heartbeat_stale(s: Settings, p: Mapping[str, Any]) -> Alert:
    threshold = p["threshold"]
    # The value is the heartbeat age, or -1 for a leased environment that never reported one.
    stale = heartbeat_age(s, above=parse_duration(threshold))
    return (
        with_names(s, stale, "connection_name", "device_id") + "\n",
        "An environment holds a lease but has stopped heartbeating.",
        "{{ $labels.connection_name }} ({{ $labels.environment_id }} on device "
        "{{ $labels.device_id }}) holds a lease but {{ if lt $value 0.0 }}has never reported "
        "a heartbeat{{ else }}last heartbeated {{ $value | humanizeDuration }} ago{{ end }} "
        f"(threshold {threshold}).",
    )


def _offline(s: Settings, p: Mapping[str, Any]) -> Alert:
    lookback = p["lookback"]
    # 0: listed, no row online; -1: watched within lookback, no row of that name listed now
    # (left out of the selector or renamed does not count), while a replica serves the fleet:
    # an exporter that is down is LettaExporterDown's, not every machine's.
    return (
        f"""\
    {WATCHED} == 0
  or
    (
        0 * max_over_time({WATCHED}[{lookback}]) - 1
      unless
        {listed_machines(s)}
      and ignoring (connection_name)
        {REPLICAS_SERVING} > 0
    )
""",
        "A watched Letta Code machine is not online.",
        "{{ $labels.connection_name }} is watched and has not been online for "
        f"{p['for']}: " + "{{ if lt $value 0.0 }}none of its rows is listed any more"
        "{{ else }}its rows are offline or hold a lease without heartbeating{{ end }} "
        f"(heartbeat threshold {p['threshold']}, remembered for {lookback}).",
    )


def _online_drop(s: Settings, p: Mapping[str, Any]) -> Alert:
    offset = p["compare_offset"]
    return (
        f"""\
(1 - {ONLINE} / {ONLINE} offset {offset}) > {p["drop_ratio"]:g}
  and {ONLINE} offset {offset} >= {p["min_online_before"]}
""",
        "The number of online Letta Code environments fell sharply.",
        "The online environments of {{ $labels.job }} fell by "
        "{{ $value | humanizePercentage }} against "
        f"{offset} ago (threshold {_percent(p['drop_ratio'])}).",
    )


def _none_online(s: Settings, p: Mapping[str, Any]) -> Alert:
    lookback, least = p["lookback"], p["min_online_before"]
    return (
        f"{ONLINE} == 0\n  and max_over_time({ONLINE}[{lookback}]) >= {least}\n",
        "No Letta Code environment is online.",
        "No environment of {{ $labels.job }} is online, although "
        f"{least} or more were within the last {lookback}.",
    )


def _version_drift(s: Settings, p: Mapping[str, Any]) -> Alert:
    return (
        f"{OUTDATED_RATIO} > {p['ratio']:g}\n  and {CONNECTED_SUM} >= {p['min_connected']}\n",
        "Many connected environments run an outdated Letta Code version.",
        "{{ $value | humanizePercentage }} of the connected environments of {{ $labels.job }} "
        "run a Letta Code version older than the current release "
        "(letta_environments_latest_version_info: pinned, the newest of npm and PyPI, or "
        "newest seen) "
        f"(threshold {_percent(p['ratio'])}); "
        "letta_environments_upgradable says how many can upgrade themselves.",
    )


def _unrestricted(s: Settings, p: Mapping[str, Any]) -> Alert:
    return (
        f"{UNRESTRICTED} > 0\n",
        "Environments run in unrestricted mode, approving every tool call automatically.",
        "{{ $value }} environment(s) of {{ $labels.job }} matching "
        f"{p['selector']} run in unrestricted permission mode: every tool call is approved "
        "without asking.",
    )


ALERTS: dict[str, Callable[[Settings, Mapping[str, Any]], Alert]] = {
    "LettaExporterDown": _exporter_down,
    "LettaExporterReplicaDown": _replica_down,
    "LettaExporterPollFailing": _poll_failing,
    "LettaExporterRateLimited": _rate_limited,
    "LettaEnvironmentHeartbeatStale": _heartbeat_stale,
    "LettaEnvironmentOffline": _offline,
    "LettaEnvironmentsOnlineDrop": _online_drop,
    "LettaEnvironmentsNoneOnline": _none_online,
    "LettaEnvironmentsVersionDrift": _version_drift,
    "LettaEnvironmentsUnrestrictedMode": _unrestricted,
}


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def alerting_rules(bundle: Bundle) -> list[dict[str, Any]]:
    s = bundle.settings
    rules = []
    for name, build in ALERTS.items():
        params = bundle.alerts[name]
        if not bundle.enabled(name):
            continue
        expr, summary, description = build(s, params)
        rules.append(
            {
                "alert": name,
                "expr": expr,
                "for": params["for"],
                "labels": {"severity": params["severity"]},
                "annotations": {
                    "summary": summary,
                    "description": description,
                    "runbook_url": s.runbook(name),
                },
            }
        )
    return rules


def rules_document(bundle: Bundle) -> dict[str, Any]:
    """The rule file: the recording rules' group, then the alerts' group.

    promtool tests name this order in `group_eval_order`; Prometheus itself runs the groups
    side by side, so an alert may see sums one evaluation old, which no `for:` notices.
    """
    return {
        "groups": [
            {"name": RULES_GROUP, "rules": recording_rules(bundle)},
            {"name": ALERTS_GROUP, "rules": alerting_rules(bundle)},
        ]
    }
