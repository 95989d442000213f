"""Metric families of the fleet: pure functions of a snapshot, rendered once per poll.

Nothing here does I/O or reads a clock: every age is measured against the time the row's page
arrived, so the same snapshot always renders the same bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import semver

from exporter.config import Config
from exporter.exposition import clean, escape_label_value, family, format_value, labels
from exporter.models import Connection
from exporter.releases import ReleaseInfo
from exporter.snapshot import FleetSnapshot

STATES = ("online", "stale", "offline")
BEHIND = ("major", "minor", "patch", "prerelease")
UPGRADE_COMMAND = "upgrade-letta-code"
NOT_UPGRADABLE_REASONS = (
    "desktop_managed",
    "source_checkout",
    "not_writable",
    "unsupported",
    "no_upgrade_command",
    "unknown",
)
MODE_ALIASES = {"default": "standard", "bypassPermissions": "unrestricted"}
UNKNOWN = "unknown"
SHORT_LABEL = 64
LONG_LABEL = 256
PATH_LABEL = 1024
CACHED = "Cached from the last successful poll of the Letta API."


@dataclass(frozen=True, slots=True)
class EnvironmentView:
    """One environment as the metrics see it: state and normalised labels."""

    connection: Connection
    observed_at: float
    state: str
    os: str
    mode: str
    version: str

    @property
    def connected(self) -> bool:
        return self.state != "offline"

    @property
    def heartbeat_age(self) -> float | None:
        """Seconds between the last heartbeat and the fetch; never negative (clock skew)."""
        if self.connection.last_heartbeat is None:
            return None
        return max(0.0, self.observed_at - self.connection.last_heartbeat / 1000)


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


def classify(connection: Connection, observed_at: float, online_threshold: float) -> str:
    """`online`, `stale` or `offline`, as of the time the row was fetched."""
    if not connection.connection_id:
        return "offline"
    if connection.last_heartbeat is None:
        return "stale"
    age = observed_at - connection.last_heartbeat / 1000
    return "online" if age < online_threshold else "stale"


def view(snapshot: FleetSnapshot, online_threshold: float) -> list[EnvironmentView]:
    views = []
    for connection, observed_at in snapshot.observations():
        metadata = connection.metadata
        views.append(
            EnvironmentView(
                connection=connection,
                observed_at=observed_at,
                state=classify(connection, observed_at, online_threshold),
                os=_label_or_unknown(metadata.os if metadata else None),
                mode=normalise_mode(connection.current_mode),
                version=_label_or_unknown(metadata.letta_code_version if metadata else None),
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
    update = metadata.self_update if metadata else None
    if update is None:
        return "unknown"
    text = (update.reason or "").lower()
    if update.supported and update.writable:
        commands = metadata.supported_commands if metadata else None
        return None if commands and UPGRADE_COMMAND in commands else "no_upgrade_command"
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


def outdated_family(views: list[EnvironmentView], current: CurrentVersion | None) -> str:
    """# HELP letta_environments_outdated Environments running a version older than the current...
    # TYPE letta_environments_outdated gauge
    """
    counts = Counter((v.state, gap) for v in views if (gap := behind(v.version, current)))
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


def upgrade_families(views: list[EnvironmentView], current: CurrentVersion | None) -> str:
    """Outdated, connected environments that can upgrade themselves, and why the others cannot.

    # HELP letta_environments_upgradable Outdated, connected environments that can upgrade...
    # TYPE letta_environments_upgradable gauge
    # HELP letta_environments_not_upgradable Outdated, connected environments that cannot...
    # TYPE letta_environments_not_upgradable gauge
    """
    reasons: Counter[str | None] = Counter(
        not_upgradable_reason(v.connection)
        for v in views
        if v.connected and behind(v.version, current)
    )
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
        f"(desktop_managed, source_checkout, not_writable, unsupported, no_upgrade_command, "
        f"unknown). {CACHED}",
        (("", labels((("reason", r),)), reasons[r]) for r in NOT_UPGRADABLE_REASONS),
    )


def node_major_family(views: list[EnvironmentView]) -> str:
    """# HELP letta_environments_node_major Environments by Node.js major version and state. ...
    # TYPE letta_environments_node_major gauge
    """
    counts = Counter(
        (node_major(v.connection.metadata.node_version if v.connection.metadata else None), v.state)
        for v in views
    )
    return family(
        "letta_environments_node_major",
        "gauge",
        f"Environments by the major version of the Node.js runtime and state. {CACHED}",
        (
            ("", labels((("major", major), ("state", state))), n)
            for (major, state), n in sorted(counts.items())
        ),
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
    counts: Counter[tuple[str, str]] = Counter()
    for v in views:
        if not v.connected:
            continue
        metadata = v.connection.metadata
        update = metadata.self_update if metadata else None
        if update is None:
            counts[(UNKNOWN, UNKNOWN)] += 1
        else:
            counts[(str(update.supported).lower(), str(update.writable).lower())] += 1
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


def environment_families(
    views: list[EnvironmentView], limit: int, extra_labels: tuple[str, ...]
) -> tuple[str, int]:
    """Per-environment families for at most ``limit`` environments; returns (text, dropped).

    # HELP letta_environment_info Metadata of one environment, valued 1. ...
    # TYPE letta_environment_info gauge
    # HELP letta_environment_connected Whether the environment holds a lease (1) or not (0). ...
    # TYPE letta_environment_connected gauge
    """
    kept = views
    if len(views) > limit:
        # Connected environments matter most to an on-call person; the rest fill the cap by id.
        kept = sorted(views, key=lambda v: (not v.connected, v.connection.id))[:limit]
    kept = sorted(kept, key=lambda v: v.connection.id)
    ids = [escape_label_value(clean(v.connection.id, LONG_LABEL)) for v in kept]

    info_lines = []
    for v, env_id in zip(kept, ids, strict=True):
        c = v.connection
        metadata = c.metadata
        pairs = [
            ("device_id", clean(c.device_id, LONG_LABEL)),
            ("connection_name", clean(c.connection_name, LONG_LABEL)),
            ("os", v.os),
            ("mode", v.mode),
            ("version", v.version),
            ("node_version", _label_or_unknown(metadata.node_version if metadata else None)),
            ("user_id", clean(c.user_id or "", LONG_LABEL)),
        ]
        if "working_directory" in extra_labels:
            pairs.append(
                (
                    "working_directory",
                    clean((metadata.working_directory if metadata else None) or "", PATH_LABEL),
                )
            )
        if "git_branch" in extra_labels:
            pairs.append(
                ("git_branch", clean((metadata.git_branch if metadata else None) or "", LONG_LABEL))
            )
        rest = labels(pairs)[1:]
        info_lines.append(f'letta_environment_info{{environment_id="{env_id}",{rest} 1\n')

    parts = [
        "# HELP letta_environment_info Metadata of one environment, valued 1. "
        f"{CACHED}\n# TYPE letta_environment_info gauge\n",
        *info_lines,
        "# HELP letta_environment_connected Whether the environment holds a lease (1) or not "
        f"(0). {CACHED}\n# TYPE letta_environment_connected gauge\n",
        *(
            f'letta_environment_connected{{environment_id="{env_id}"}} {int(v.connected)}\n'
            for v, env_id in zip(kept, ids, strict=True)
        ),
    ]
    for name, attribute, help_text in _TIMESTAMP_FAMILIES:
        metric = f"letta_environment_{name}_timestamp_seconds"
        parts.append(f"# HELP {metric} {help_text} Absent when upstream has none. {CACHED}\n")
        parts.append(f"# TYPE {metric} gauge\n")
        for v, env_id in zip(kept, ids, strict=True):
            millis = getattr(v.connection, attribute)
            if millis is not None:
                parts.append(
                    f'{metric}{{environment_id="{env_id}"}} {format_value(millis / 1000)}\n'
                )
    return "".join(parts), len(views) - len(kept)


def render_fleet(
    snapshot: FleetSnapshot, config: Config, releases: ReleaseInfo | None = None
) -> FleetExposition:
    """All fleet families of one snapshot (and the registry's answer) as exposition text."""
    views = view(snapshot, config.online_threshold)
    current = current_version(views, config.version_target, releases)
    parts = [
        environments_family(views),
        latest_version_family(current),
        outdated_family(views, current),
        upgrade_families(views, current),
        self_update_family(views),
        heartbeat_age_family(views, config.heartbeat_buckets),
        node_major_family(views),
        release_timestamp_family(views, releases),
    ]
    dropped = 0
    if config.collector_environment:
        text, dropped = environment_families(
            views, config.environment_max, config.environment_extra_labels
        )
        parts.append(text)
    return FleetExposition(
        text="".join(parts).encode("utf-8"),
        environments=len(views),
        dropped_environments=dropped,
    )
