"""Rendering: a snapshot, the fleet's rules and a few options in, exposition bytes out, once a poll.

Pure: no I/O, no clock, no configuration object; the same snapshot always renders the same bytes.
Each family builder's docstring shows the `# HELP`/`# TYPE` lines it emits.
"""

from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from exporter.exposition import clean, family, format_value, label_value, labels
from exporter.fleet import (
    BEHIND,
    LONG_LABEL,
    NOT_UPGRADABLE_REASONS,
    SHORT_LABEL,
    STATES,
    TOP_MODELS,
    UNKNOWN,
    CurrentVersion,
    EnvironmentView,
    ReleaseInfo,
    capped,
    current_version,
    gaps,
    label_or_unknown,
    node_major,
    top_models,
    upgrade_blocker,
    view,
)
from exporter.snapshot import FleetSnapshot

PATH_LABEL = 1024

CACHED = "Cached from the last successful poll of the Letta API."
BATCH = 4096  # environments per piece of rendered text: bounds the text alive beside the bytes
MEMORY_BUCKETS = tuple(float(2**n * 2**30) for n in range(1, 10))  # 2 GiB .. 512 GiB


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """The settings rendering reads: when a heartbeat is too old to be online, the histogram's
    bounds, the pinned version, and whether and how many per-environment series to serve."""

    online_threshold: float
    heartbeat_buckets: tuple[float, ...]
    version_target: str | None
    per_environment: bool
    environment_max: int
    extra_labels: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FleetExposition:
    """The rendered fleet families and what rendering them found."""

    text: bytes
    environments: int
    dropped_environments: int


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
        "registry (npm latest), pypi (PyPI's newest, when newer than npm's) or observed (newest "
        f"release in the fleet). {CACHED}",
        samples,
    )


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


def histogram_samples(
    values: list[float], bounds: tuple[float, ...]
) -> list[tuple[str, str, float]]:
    """The `_bucket`, `_sum` and `_count` samples of a histogram over ``values``."""
    ordered = sorted(values)
    samples: list[tuple[str, str, float]] = []
    index = 0
    for bound in bounds:
        while index < len(ordered) and ordered[index] <= bound:
            index += 1
        samples.append(("_bucket", labels((("le", repr(float(bound))),)), index))
    samples.append(("_bucket", labels((("le", "+Inf"),)), len(ordered)))
    samples.append(("_sum", "", sum(ordered)))
    samples.append(("_count", "", len(ordered)))
    return samples


def memory_family(views: list[EnvironmentView]) -> str:
    """# HELP letta_environments_memory_bytes Memory of the machines of connected environments...
    # TYPE letta_environments_memory_bytes histogram
    """
    sizes = [
        size
        for v in views
        if v.connected
        and v.environment.machine is not None
        and (size := v.environment.machine.memory_bytes) is not None
        and 0 < size < math.inf
    ]
    return family(
        "letta_environments_memory_bytes",
        "histogram",
        "Memory of the machines of connected environments that report it (metadata.machine."
        f"memoryBytes: the container's limit where that is lower). {CACHED}",
        histogram_samples(sizes, MEMORY_BUCKETS),
    )


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
        cpus[label_or_unknown(machine.cpu)] += n
        if machine.gpus is None:
            gpus[UNKNOWN] += n
        elif not machine.gpus:
            gpus["none"] += n
        else:
            for name in {label_or_unknown(gpu) for gpu in machine.gpus}:
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
        f"registry and PyPI (the earlier of the two). {CACHED}",
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
    ages = [age for v in views if v.connected and (age := v.heartbeat_age) is not None]
    return family(
        "letta_environments_heartbeat_age_seconds",
        "histogram",
        "Age of the last heartbeat of connected environments that reported one, at the time "
        f"their page was fetched. {CACHED}",
        histogram_samples(ages, bounds),
    )


_TIMESTAMP_FAMILIES = (
    ("last_heartbeat", "last_heartbeat", "Time of the environment's last heartbeat."),
    ("last_seen", "last_seen_at", "Time the environment was last seen."),
    ("connected", "connected_at", "Time the environment's current lease began."),
    ("first_seen", "first_seen_at", "Time the environment was first seen."),
)


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
    free_in_batches(selectors)


def free_in_batches(items: list[Any]) -> None:
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
        ("node_version", label_or_unknown(e.node_version)),
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
    snapshot: FleetSnapshot, options: RenderOptions, releases: ReleaseInfo | None = None
) -> FleetExposition:
    """All fleet families of one snapshot (and the registry's answer) as exposition text."""
    views = view(snapshot, options.online_threshold)
    current = current_version(views, options.version_target, releases)
    gap_of = gaps(views, current)
    aggregates = [
        environments_family(views),
        latest_version_family(current),
        outdated_family(views, gap_of),
        upgrade_families(views, gap_of),
        self_update_family(views),
        heartbeat_age_family(views, options.heartbeat_buckets),
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
    if options.per_environment:
        kept = capped(views, options.environment_max)
        dropped = len(views) - len(kept)
        for text in environment_families(kept, options.extra_labels):
            out.write(text.encode("utf-8"))
        free_in_batches(kept)
    environments = len(views)
    free_in_batches(views)
    return FleetExposition(
        text=out.getvalue(), environments=environments, dropped_environments=dropped
    )
