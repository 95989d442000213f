"""The fleet's rules, pure: an environment's state, how far behind its version is, why it cannot
upgrade itself, the machine it runs on, and which environments the per-environment cap keeps.

Nothing here does I/O or reads a clock: every age is measured against the time the row's page
arrived, and the registry's answer comes in as plain data (`ReleaseInfo`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import NamedTuple

import semver

from exporter.exposition import clean
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
TOP_MODELS = 20  # CPU and GPU models named one by one; the rest are counted as `other`
_OS_VERSION = re.compile(r"\s*v?([0-9]+(?:\.[0-9]+)?)")


@dataclass(frozen=True)
class ReleaseInfo:
    """A registry's newest release and when each version was published (epoch seconds);
    `source` is the value of `letta_environments_latest_version_info`'s label: `registry`
    (npm's `latest` tag) or `pypi` (PyPI's newest release)."""

    latest: str
    published: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    fetched_at: float = 0.0
    source: str = "registry"


def newest_release(answers: Iterable[ReleaseInfo | None]) -> ReleaseInfo | None:
    """The answers of several registries as one: the newest `latest` of them (by semantic
    version; on a tie or an unparsable version, the first given), with its `source`, and each
    version's earliest publication in any of them (when it could first be installed)."""
    known = [answer for answer in answers if answer is not None]
    if not known:
        return None
    newest = known[0]
    for answer in known[1:]:
        parsed, best = parse_version(answer.latest), parse_version(newest.latest)
        if parsed is not None and (best is None or parsed > best):
            newest = answer
    published: dict[str, float] = {}
    for answer in known:
        for version, stamp in answer.published.items():
            published[version] = min(stamp, published.get(version, stamp))
    return ReleaseInfo(
        latest=newest.latest,
        published=MappingProxyType(published),
        fetched_at=max(answer.fetched_at for answer in known),
        source=newest.source,
    )


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


def normalise_mode(mode: str | None) -> str:
    if not mode:
        return UNKNOWN
    return MODE_ALIASES.get(mode, clean(mode, SHORT_LABEL))


def label_or_unknown(value: str | None) -> str:
    return clean(value, SHORT_LABEL) if value else UNKNOWN


@lru_cache(maxsize=4096)
def parse_version(text: str) -> semver.Version | None:
    """A Letta Code version such as `0.32.18` or `0.32.18-next.1`; None when not semver."""
    try:
        return semver.Version.parse(text.strip().removeprefix("v"))
    except (ValueError, TypeError):
        return None


def classify(environment: Environment, observed_at: float, online_threshold: float) -> str:
    """`online`, `stale` or `offline`, as of the time the row was fetched."""
    if not environment.connection_id:
        return "offline"
    if environment.last_heartbeat is None:
        return "stale"
    age = observed_at - environment.last_heartbeat / 1000
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
        label_or_unknown(machine.architecture),
        label_or_unknown(machine.os_name),
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
            os_label = plain[os_name] = label_or_unknown(os_name)
        version = environment.letta_code_version
        version_label = plain.get(version)
        if version_label is None:
            version_label = plain[version] = label_or_unknown(version)
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
    """Precedence: the operator's pin, then the registries' newest release, then the fleet's
    newest."""
    for version, source in (
        (pinned, "pinned"),
        (releases.latest if releases else None, releases.source if releases else "registry"),
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


def upgrade_blocker(update: UpdateAbility | None, commands: tuple[str, ...] | None) -> str | None:
    """Why Letta Code cannot upgrade itself here (a bounded set), or None when it can."""
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


def gaps(views: list[EnvironmentView], current: CurrentVersion | None) -> dict[str, str | None]:
    """`behind` of each distinct version in the fleet: semver compares once a version, not a row."""
    return {version: behind(version, current) for version in {v.version for v in views}}


def top_models(counts: Counter[str], limit: int = TOP_MODELS) -> list[tuple[str, int]]:
    """The ``limit`` most common names by count (then name), the rest summed as `other`."""
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    kept = sorted(ranked[:limit])
    rest = sum(n for _, n in ranked[limit:])
    return [*kept, ("other", rest)] if rest else kept


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
