"""Metric families of the fleet: pure functions of a snapshot, rendered once per poll.

Nothing here does I/O or reads a clock: every age is measured against the time the row's page
arrived, so the same snapshot always renders the same bytes.
"""

from __future__ import annotations

import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from operator import attrgetter
from typing import Any, NamedTuple

import semver

from exporter.config import Config
from exporter.exposition import clean, family, format_value, label_value, labels
from exporter.models import Connection, SelfUpdate
from exporter.releases import ReleaseInfo
from exporter.snapshot import Environment, FleetSnapshot, MachineFacts, UpdateAbility

STATES = ("online", "stale", "offline")
BEHIND = ("major", "minor", "patch", "prerelease")
UPGRADE_COMMAND = "upgrade-letta-code"
NOT_UPGRADABLE_REASONS = (
    "desktop_managed",
    "source_checkout",
    "python_installer",
    "not_writable",
    "unsupported",
    "no_upgrade_command",
    "unknown",
)
MODE_ALIASES = {
    "default": "standard",
    "bypassPermissions": "unrestricted",
    "fullAccess": "unrestricted",
}
UNKNOWN = "unknown"
SHORT_LABEL = 64
LONG_LABEL = 256
PATH_LABEL = 1024
CACHED = "Cached from the last successful poll of the Letta API."
BATCH = 4096  # environments per piece of rendered text: bounds the text alive beside the bytes
RUNTIMES = ("desktop", "sandbox", "container", "host", UNKNOWN)
MEMORY_BUCKETS = tuple(float(2**n * 2**30) for n in range(1, 10))  # 2 GiB .. 512 GiB
TOP_MODELS = 20  # CPU and GPU models named one by one; the rest are counted as `other`
_OS_VERSION = re.compile(r"\s*v?([0-9]+(?:\.[0-9]+)?)")


class Host(NamedTuple):
    """The machine labels of an environment: runtime, arch, os_name, os_version."""

    runtime: str
    arch: str
    os_name: str
    os_version: str


_UNKNOWN_HOST = {
    kind: Host(kind, UNKNOWN, UNKNOWN, UNKNOWN) for kind in ("desktop", "sandbox", UNKNOWN)
}


class EnvironmentView(NamedTuple):
    """One environment as the metrics see it: state and normalised labels."""

    environment: Environment
    observed_at: float
    state: str
    os: str
    mode: str
    version: str
    host: Host

    @property
    def connected(self) -> bool:
        return self.state != "offline"

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds between the last heartbeat and the fetch; never negative (clock skew)."""
        if self.environment.last_heartbeat is None:
            return None
        return max(0.0, self.observed_at - self.environment.last_heartbeat / 1000)


@dataclass(frozen=True, slots=True)
class FleetExposition:
    """The rendered fleet families and what rendering them found."""

    text: bytes
    environments: int
    dropped_environments: int


def normalise_mode(mode: str | None) -> str:
    if not mode:
        return UNKNOWN
    return MODE_ALIASES.get(mode, clean(mode, SHORT_LABEL))


def _label_or_unknown(value: str | None) -> str:
    return clean(value, SHORT_LABEL) if value else UNKNOWN


@lru_cache(maxsize=4096)
def parse_version(text: str) -> semver.Version | None:
    """A Letta Code version such as `0.32.18` or `0.32.18-next.1`; None when not semver."""
    try:
        return semver.Version.parse(text.strip().removeprefix("v"))
    except (ValueError, TypeError):
        return None


def classify(
    connection: Connection | Environment, observed_at: float, online_threshold: float
) -> str:
    """`online`, `stale` or `offline`, as of the time the row was fetched."""
    if not connection.connection_id:
        return "offline"
    if connection.last_heartbeat is None:
        return "stale"
    age = observed_at - connection.last_heartbeat / 1000
    return "online" if age < online_threshold else "stale"


def device_kind(device_id: str) -> str:
    """`desktop` for Letta Code Desktop, `sandbox` for a Letta Cloud sandbox, else `unknown`."""
    if device_id.startswith("desktop:"):
        return "desktop"
    if device_id.startswith("sandbox-"):
        return "sandbox"
    return UNKNOWN


def os_version_label(version: str | None) -> str:
    """The first two numeric parts: `15.1.1` -> `15.1`, `10.0.22631` -> `10.0`, `12`."""
    match = _OS_VERSION.match(version) if version else None
    return clean(match.group(1), SHORT_LABEL) if match else UNKNOWN


def host_labels(kind: str, machine: MachineFacts | None) -> Host:
    """Where an environment runs: its `device_kind` first, then what `machine` says."""
    if machine is None:
        return _UNKNOWN_HOST[kind]
    if kind == UNKNOWN:
        kind = "container" if machine.model == "Container" else "host"
    return Host(
        kind,
        _label_or_unknown(machine.architecture),
        _label_or_unknown(machine.os_name),
        os_version_label(machine.os_version),
    )


def view(snapshot: FleetSnapshot, online_threshold: float) -> list[EnvironmentView]:
    # Labels repeat across the fleet: normalise each distinct upstream value once.
    plain: dict[str | None, str] = {}
    modes: dict[str | None, str] = {}
    # Rows share equal machine facts (see SnapshotBuilder): key the labels by that object.
    hosts: dict[tuple[str, int], Host] = {}
    views = []
    for environment, observed_at in snapshot.observations():
        os_name = environment.os
        os_label = plain.get(os_name)
        if os_label is None:
            os_label = plain[os_name] = _label_or_unknown(os_name)
        version = environment.letta_code_version
        version_label = plain.get(version)
        if version_label is None:
            version_label = plain[version] = _label_or_unknown(version)
        mode = environment.current_mode
        mode_label = modes.get(mode)
        if mode_label is None:
            mode_label = modes[mode] = normalise_mode(mode)
        machine = environment.machine
        host_key = (device_kind(environment.device_id), id(machine))
        host = hosts.get(host_key)
        if host is None:
            host = hosts[host_key] = host_labels(host_key[0], machine)
        views.append(
            EnvironmentView(
                environment,
                observed_at,
                classify(environment, observed_at, online_threshold),
                os_label,
                mode_label,
                version_label,
                host,
            )
        )
    return views


def latest_version(views: Iterable[EnvironmentView]) -> str | None:
    """The newest non-prerelease version seen in the fleet, as written upstream."""
    best: tuple[semver.Version, str] | None = None
    for version in {v.version for v in views}:
        parsed = parse_version(version)
        if parsed is None or parsed.prerelease:
            continue
        if best is None or parsed > best[0]:
            best = (parsed, version)
    return best[1] if best else None


@dataclass(frozen=True, slots=True)
class CurrentVersion:
    """The version counted as current and where it came from: pinned, registry or observed."""

    version: str
    parsed: semver.Version
    source: str


def current_version(
    views: list[EnvironmentView], pinned: str | None, releases: ReleaseInfo | None
) -> CurrentVersion | None:
    """Precedence: the operator's pin, then the registry's `latest`, then the fleet's newest."""
    for version, source in (
        (pinned, "pinned"),
        (releases.latest if releases else None, "registry"),
        (latest_version(views), "observed"),
    ):
        parsed = parse_version(version) if version else None
        if version and parsed is not None:
            return CurrentVersion(version=version, parsed=parsed, source=source)
    return None


def behind(version: str, current: CurrentVersion | None) -> str | None:
    """How far ``version`` is behind the current one: major, minor, patch, prerelease or None."""
    parsed = parse_version(version)
    if current is None or parsed is None or parsed >= current.parsed:
        return None
    target = current.parsed
    if parsed.major != target.major:
        return "major"
    if parsed.minor != target.minor:
        return "minor"
    if parsed.patch != target.patch:
        return "patch"
    return "prerelease"


def not_upgradable_reason(connection: Connection) -> str | None:
    """Why Letta Code cannot upgrade itself here (a bounded set), or None when it can."""
    metadata = connection.metadata
    if metadata is None:
        return "unknown"
    return upgrade_blocker(metadata.self_update, metadata.supported_commands)


def upgrade_blocker(
    update: SelfUpdate | UpdateAbility | None, commands: tuple[str, ...] | None
) -> str | None:
    """`not_upgradable_reason` from the two facts it depends on."""
    if update is None:
        return "unknown"
    if update.supported:
        if not update.writable:  # the reason names the install path: its words say nothing
            return "not_writable"
        return None if commands and UPGRADE_COMMAND in commands else "no_upgrade_command"
    text = (update.reason or "").lower()
    if "python" in text:  # "... managed by a Python package installer." (PyPI `letta`)
        return "python_installer"
    if "desktop" in text:
        return "desktop_managed"
    if "source" in text or "checkout" in text or "git" in text:
        return "source_checkout"
    if not update.writable or "writ" in text or "permission" in text:
        return "not_writable"
    return "unsupported"


def node_major(node_version: str | None) -> str:
    """`22` from `v22.11.0`; `unknown` when absent or odd."""
    if not node_version:
        return UNKNOWN
    head = node_version.strip().removeprefix("v").split(".", 1)[0]
    return head if head.isdigit() and len(head) <= 4 else UNKNOWN


def environments_family(views: list[EnvironmentView]) -> str:
    """# HELP letta_environments Environments by state, OS, permission mode and version. ...
    # TYPE letta_environments gauge
    """
    counts = Counter((v.state, v.os, v.mode, v.version) for v in views)
    return family(
        "letta_environments",
        "gauge",
        f"Environments by state, OS, permission mode and Letta Code version. {CACHED}",
        (
            ("", labels((("state", s), ("os", o), ("mode", m), ("version", ver))), n)
            for (s, o, m, ver), n in sorted(counts.items())
        ),
    )


def latest_version_family(current: CurrentVersion | None) -> str:
    """# HELP letta_environments_latest_version_info The Letta Code version counted as current...
    # TYPE letta_environments_latest_version_info gauge
    """
    samples = []
    if current is not None:
        pairs = (("version", clean(current.version, SHORT_LABEL)), ("source", current.source))
        samples.append(("", labels(pairs), 1))
    return family(
        "letta_environments_latest_version_info",
        "gauge",
        "The Letta Code version counted as current, valued 1; source is pinned (operator), "
        f"registry (npm latest) or observed (newest release in the fleet). {CACHED}",
        samples,
    )


def gaps(views: list[EnvironmentView], current: CurrentVersion | None) -> dict[str, str | None]:
    """`behind` of each distinct version in the fleet: semver compares once a version, not a row."""
    return {version: behind(version, current) for version in {v.version for v in views}}


def outdated_family(views: list[EnvironmentView], gap_of: dict[str, str | None]) -> str:
    """# HELP letta_environments_outdated Environments running a version older than the current...
    # TYPE letta_environments_outdated gauge
    """
    counts = Counter((v.state, gap) for v in views if (gap := gap_of[v.version]))
    return family(
        "letta_environments_outdated",
        "gauge",
        "Environments running a Letta Code version older than the current one, by semantic "
        "version order, and how far behind (major, minor, patch, prerelease); unknown versions "
        f"never count. {CACHED}",
        (
            ("", labels((("state", state), ("behind", gap))), counts[(state, gap)])
            for state in STATES
            for gap in BEHIND
        ),
    )


def upgrade_families(views: list[EnvironmentView], gap_of: dict[str, str | None]) -> str:
    """Outdated, connected environments that can upgrade themselves, and why the others cannot.

    # HELP letta_environments_upgradable Outdated, connected environments that can upgrade...
    # TYPE letta_environments_upgradable gauge
    # HELP letta_environments_not_upgradable Outdated, connected environments that cannot...
    # TYPE letta_environments_not_upgradable gauge
    """
    # Rows share their self_update and command list objects (see SnapshotBuilder): key by them.
    blockers: dict[tuple[int, int], str | None] = {}
    reasons: Counter[str | None] = Counter()
    for v in views:
        if v.state == "offline" or not gap_of[v.version]:
            continue
        update, commands = v.environment.self_update, v.environment.supported_commands
        key = (id(update), id(commands))
        if key not in blockers:
            blockers[key] = upgrade_blocker(update, commands)
        reasons[blockers[key]] += 1
    return family(
        "letta_environments_upgradable",
        "gauge",
        "Outdated, connected environments whose Letta Code can upgrade itself: self_update "
        f"supported and writable, and the upgrade-letta-code command. {CACHED}",
        [("", "", reasons[None])],
    ) + family(
        "letta_environments_not_upgradable",
        "gauge",
        "Outdated, connected environments that cannot upgrade themselves, by reason "
        "(desktop_managed, source_checkout, python_installer, not_writable, unsupported, "
        f"no_upgrade_command, unknown). {CACHED}",
        (("", labels((("reason", r),)), reasons[r]) for r in NOT_UPGRADABLE_REASONS),
    )


def node_major_family(views: list[EnvironmentView]) -> str:
    """# HELP letta_environments_node_major Environments by Node.js major version and state. ...
    # TYPE letta_environments_node_major gauge
    """
    majors: dict[str | None, str] = {}
    counts: Counter[tuple[str, str]] = Counter()
    for v in views:
        node = v.environment.node_version
        major = majors.get(node)
        if major is None:
            major = majors[node] = node_major(node)
        counts[(major, v.state)] += 1
    return family(
        "letta_environments_node_major",
        "gauge",
        f"Environments by the major version of the Node.js runtime and state. {CACHED}",
        (
            ("", labels((("major", major), ("state", state))), n)
            for (major, state), n in sorted(counts.items())
        ),
    )


def machine_family(views: list[EnvironmentView]) -> str:
    """# HELP letta_environments_machine Environments by state and the machine they run on. ...
    # TYPE letta_environments_machine gauge
    """
    counts = Counter((v.state, v.host) for v in views)
    return family(
        "letta_environments_machine",
        "gauge",
        "Environments by state and the machine they run on (metadata.machine, Letta Code "
        "0.34+): runtime (desktop, sandbox, container, host, unknown), architecture, OS name "
        f"and OS version (two numeric parts); unknown when not reported. {CACHED}",
        (
            (
                "",
                labels(
                    (
                        ("state", state),
                        ("runtime", host.runtime),
                        ("arch", host.arch),
                        ("os_name", host.os_name),
                        ("os_version", host.os_version),
                    )
                ),
                n,
            )
            for (state, host), n in sorted(counts.items())
        ),
    )


def memory_family(views: list[EnvironmentView]) -> str:
    """# HELP letta_environments_memory_bytes Memory of the machines of connected environments...
    # TYPE letta_environments_memory_bytes histogram
    """
    sizes = sorted(
        size
        for v in views
        if v.connected
        and v.environment.machine is not None
        and (size := v.environment.machine.memory_bytes) is not None
        and math.isfinite(size)
    )
    samples: list[tuple[str, str, float]] = []
    index = 0
    for bound in MEMORY_BUCKETS:
        while index < len(sizes) and sizes[index] <= bound:
            index += 1
        samples.append(("_bucket", labels((("le", repr(bound)),)), index))
    samples.append(("_bucket", labels((("le", "+Inf"),)), len(sizes)))
    samples.append(("_sum", "", sum(sizes)))
    samples.append(("_count", "", len(sizes)))
    return family(
        "letta_environments_memory_bytes",
        "histogram",
        "Memory of the machines of connected environments that report it (metadata.machine."
        f"memoryBytes: the container's limit where that is lower). {CACHED}",
        samples,
    )


def top_models(counts: Counter[str], limit: int = TOP_MODELS) -> list[tuple[str, int]]:
    """The ``limit`` most common names by count (then name), the rest summed as `other`."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = sorted(ranked[:limit])
    rest = sum(n for _, n in ranked[limit:])
    return [*kept, ("other", rest)] if rest else kept


def hardware_families(views: list[EnvironmentView]) -> str:
    """Connected environments by CPU model and by GPU model, at most `TOP_MODELS` of each.

    # HELP letta_environments_cpu Connected environments by CPU model. ...
    # TYPE letta_environments_cpu gauge
    # HELP letta_environments_gpu Connected environments by GPU model. ...
    # TYPE letta_environments_gpu gauge
    """
    by_machine = Counter(
        machine for v in views if v.connected and (machine := v.environment.machine) is not None
    )
    cpus: Counter[str] = Counter()
    gpus: Counter[str] = Counter()
    for machine, n in by_machine.items():
        cpus[_label_or_unknown(machine.cpu)] += n
        if machine.gpus is None:
            gpus[UNKNOWN] += n
        elif not machine.gpus:
            gpus["none"] += n
        else:
            for name in {_label_or_unknown(gpu) for gpu in machine.gpus}:
                gpus[name] += n
    return family(
        "letta_environments_cpu",
        "gauge",
        f"Connected environments that report their machine, by CPU model (the {TOP_MODELS} "
        f"most common; the rest as other). {CACHED}",
        (("", labels((("cpu", name),)), n) for name, n in top_models(cpus)),
    ) + family(
        "letta_environments_gpu",
        "gauge",
        "Connected environments that report their machine, by GPU model: an environment "
        f"counts once for each model it has, none when it has no GPU (the {TOP_MODELS} most "
        f"common; the rest as other). {CACHED}",
        (("", labels((("gpu", name),)), n) for name, n in top_models(gpus)),
    )


def release_timestamp_family(views: list[EnvironmentView], releases: ReleaseInfo | None) -> str:
    """# HELP letta_code_release_timestamp_seconds When a Letta Code version was published. ...
    # TYPE letta_code_release_timestamp_seconds gauge
    """
    published = releases.published if releases else {}
    present = sorted({v.version for v in views if v.version in published})
    return family(
        "letta_code_release_timestamp_seconds",
        "gauge",
        "When each Letta Code version present in the fleet was published, from the npm "
        f"registry. {CACHED}",
        (("", labels((("version", version),)), published[version]) for version in present),
    )


def self_update_family(views: list[EnvironmentView]) -> str:
    """# HELP letta_environments_self_update Connected environments by self-update ability. ...
    # TYPE letta_environments_self_update gauge
    """
    by_answer = Counter(v.environment.self_update for v in views if v.state != "offline")
    counts: Counter[tuple[str, str]] = Counter()
    for update, n in by_answer.items():
        if update is None:
            counts[(UNKNOWN, UNKNOWN)] += n
        else:
            counts[(str(update.supported).lower(), str(update.writable).lower())] += n
    return family(
        "letta_environments_self_update",
        "gauge",
        "Connected environments by whether Letta Code says it can update itself (supported) "
        f"and may write its install (writable); unknown when not reported. {CACHED}",
        (
            ("", labels((("supported", s), ("writable", w))), n)
            for (s, w), n in sorted(counts.items())
        ),
    )


def heartbeat_age_family(views: list[EnvironmentView], bounds: tuple[float, ...]) -> str:
    """# HELP letta_environments_heartbeat_age_seconds Heartbeat age of connected environments. ...
    # TYPE letta_environments_heartbeat_age_seconds histogram
    """
    ages = sorted(age for v in views if v.connected and (age := v.heartbeat_age) is not None)
    samples: list[tuple[str, str, float]] = []
    index = 0
    for bound in bounds:
        while index < len(ages) and ages[index] <= bound:
            index += 1
        samples.append(("_bucket", labels((("le", repr(float(bound))),)), index))
    samples.append(("_bucket", labels((("le", "+Inf"),)), len(ages)))
    samples.append(("_sum", "", sum(ages)))
    samples.append(("_count", "", len(ages)))
    return family(
        "letta_environments_heartbeat_age_seconds",
        "histogram",
        "Age of the last heartbeat of connected environments that reported one, at the time "
        f"their page was fetched. {CACHED}",
        samples,
    )


_TIMESTAMP_FAMILIES = (
    ("last_heartbeat", "last_heartbeat", "Time of the environment's last heartbeat."),
    ("last_seen", "last_seen_at", "Time the environment was last seen."),
    ("connected", "connected_at", "Time the environment's current lease began."),
    ("first_seen", "first_seen_at", "Time the environment was first seen."),
)


def capped(views: list[EnvironmentView], limit: int) -> list[EnvironmentView]:
    """At most ``limit`` environments, in `id` order: connected ones first, then by `id`.

    Ids that become the same label value once bounded (past 256 characters, lone surrogates)
    keep the first environment's series only: Prometheus refuses duplicate series.
    """
    if any(len(v.environment.id) > LONG_LABEL or not v.environment.id.isascii() for v in views):
        seen: set[str] = set()
        unique = []
        for v in views:
            bounded = clean(v.environment.id, LONG_LABEL)
            if bounded not in seen:
                seen.add(bounded)
                unique.append(v)
        views = unique
    if len(views) > limit:
        # Connected environments matter most to an on-call person; the rest fill the cap by id.
        views = sorted(views, key=lambda v: (v.state == "offline", v.environment.id))[:limit]
    return sorted(views, key=lambda v: v.environment.id)


def environment_families(
    kept: list[EnvironmentView], extra_labels: tuple[str, ...]
) -> Iterator[str]:
    """Per-environment families of ``kept`` (see `capped`), in pieces of text to concatenate.

    # HELP letta_environment_info Metadata of one environment, valued 1. ...
    # TYPE letta_environment_info gauge
    # HELP letta_environment_connected Whether the environment holds a lease (1) or not (0). ...
    # TYPE letta_environment_connected gauge
    """
    # This loop runs once per environment and family: values that repeat across the fleet
    # are escaped once, each line is one f-string, and text is handed over a batch at a time.
    names: dict[str, str] = {}
    tails: dict[tuple[object, ...], str] = {}
    with_directory = "working_directory" in extra_labels
    with_branch = "git_branch" in extra_labels
    selectors: list[str] = []
    batches = [(n, n + BATCH) for n in range(0, len(kept), BATCH)]
    yield (
        "# HELP letta_environment_info Metadata of one environment, valued 1. "
        f"{CACHED}\n# TYPE letta_environment_info gauge\n"
    )
    for first, end in batches:
        lines = []
        for v in kept[first:end]:
            e = v.environment
            env_id = label_value(e.id, LONG_LABEL)
            selectors.append(f'{{environment_id="{env_id}"}} ')
            name = names.get(e.connection_name)
            if name is None:
                name = names[e.connection_name] = label_value(e.connection_name, LONG_LABEL)
            key: tuple[object, ...] = (v.os, v.mode, v.version, e.node_version, e.user_id, v.host)
            if with_directory or with_branch:
                key += (e.working_directory, e.git_branch)
            tail = tails.get(key)
            if tail is None:
                tail = tails[key] = _info_tail(v, with_directory, with_branch)
            lines.append(
                f'letta_environment_info{{environment_id="{env_id}",'
                f'device_id="{label_value(e.device_id, LONG_LABEL)}",'
                f'connection_name="{name}",{tail} 1\n'
            )
        yield "".join(lines)
    yield (
        "# HELP letta_environment_connected Whether the environment holds a lease (1) or not "
        f"(0). {CACHED}\n# TYPE letta_environment_connected gauge\n"
    )
    for first, end in batches:
        yield "".join(
            f"letta_environment_connected{selector}{0 if v.state == 'offline' else 1}\n"
            for v, selector in zip(kept[first:end], selectors[first:end], strict=True)
        )
    for name, attribute, help_text in _TIMESTAMP_FAMILIES:
        metric = f"letta_environment_{name}_timestamp_seconds"
        yield (
            f"# HELP {metric} {help_text} Absent when upstream has none. {CACHED}\n"
            f"# TYPE {metric} gauge\n"
        )
        millis_of = attrgetter(attribute)
        for first, end in batches:
            lines = []
            for v, selector in zip(kept[first:end], selectors[first:end], strict=True):
                millis = millis_of(v.environment)
                if millis is not None:
                    seconds = millis / 1000
                    if math.isfinite(seconds) and not seconds.is_integer():
                        lines.append(f"{metric}{selector}{seconds!r}\n")
                    else:
                        lines.append(f"{metric}{selector}{format_value(seconds)}\n")
            yield "".join(lines)
    release(selectors)


def release(items: list[Any]) -> None:
    """Empty a large list a batch at a time: freeing 100,000 rows in one statement holds the
    GIL for milliseconds on end, and a scrape waits for it."""
    while items:
        del items[-BATCH:]


def _info_tail(v: EnvironmentView, with_directory: bool, with_branch: bool) -> str:
    """The labels of an info line after `connection_name`, up to the closing brace."""
    e = v.environment
    pairs = [
        ("os", v.os),
        ("mode", v.mode),
        ("version", v.version),
        ("node_version", _label_or_unknown(e.node_version)),
        ("user_id", clean(e.user_id or "", LONG_LABEL)),
        ("runtime", v.host.runtime),
        ("arch", v.host.arch),
        ("os_name", v.host.os_name),
        ("os_version", v.host.os_version),
    ]
    if with_directory:
        pairs.append(("working_directory", clean(e.working_directory or "", PATH_LABEL)))
    if with_branch:
        pairs.append(("git_branch", clean(e.git_branch or "", LONG_LABEL)))
    return labels(pairs)[1:]


def render_fleet(
    snapshot: FleetSnapshot, config: Config, releases: ReleaseInfo | None = None
) -> FleetExposition:
    """All fleet families of one snapshot (and the registry's answer) as exposition text."""
    views = view(snapshot, config.online_threshold)
    current = current_version(views, config.version_target, releases)
    gap_of = gaps(views, current)
    aggregates = [
        environments_family(views),
        latest_version_family(current),
        outdated_family(views, gap_of),
        upgrade_families(views, gap_of),
        self_update_family(views),
        heartbeat_age_family(views, config.heartbeat_buckets),
        node_major_family(views),
        release_timestamp_family(views, releases),
        machine_family(views),
        memory_family(views),
        hardware_families(views),
    ]
    # Written a piece at a time: beside the growing bytes, only one piece of text is alive.
    out = io.BytesIO()
    out.write("".join(aggregates).encode("utf-8"))
    dropped = 0
    if config.collector_environment:
        kept = capped(views, config.environment_max)
        dropped = len(views) - len(kept)
        for text in environment_families(kept, config.environment_extra_labels):
            out.write(text.encode("utf-8"))
        release(kept)
    environments = len(views)
    release(views)
    return FleetExposition(
        text=out.getvalue(), environments=environments, dropped_environments=dropped
    )
