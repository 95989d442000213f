"""The bundle's settings, `alerts/config.yml`: parsed once, every error reported together."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from exporter import units

ROOT = Path(__file__).resolve().parent.parent
CONFIG_PATH = ROOT / "alerts" / "config.yml"
SEVERITIES = ("critical", "warning", "info")

_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_EQUALITY_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"([^"\\]*)"')


class ConfigError(ValueError):
    """The bundle's configuration is invalid; the message lists every problem found."""


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration such as `90s`, `5m` or `1h30m`."""
    return units.parse_duration(text, strict=True)


def _duration(value: Any) -> str:
    parse_duration(str(value))
    return str(value)


def _ratio(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ValueError(f"expected a ratio between 0 and 1 (exclusive), got {value!r}")
    return float(value)


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return value


def _severity(value: Any) -> str:
    if value not in SEVERITIES:
        raise ValueError(f"expected one of {', '.join(SEVERITIES)}, got {value!r}")
    return str(value)


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _matchers(value: Any) -> str:
    text = str(value).strip() if value is not None else ""
    if "{" in text or "}" in text:
        raise ValueError(f"write matchers without braces, got {value!r}")
    return text


def _labels(value: Any, *, empty: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or (not value and not empty):
        raise ValueError("expected a list of label names" + ("" if empty else ", not empty"))
    for label in value:
        if not isinstance(label, str) or not _LABEL_NAME.match(label):
            raise ValueError(f"not a label name: {label!r}")
    return tuple(value)


Parser = Callable[[Any], Any]
COMMON: dict[str, Parser] = {"severity": _severity, "for": _duration, "enabled": _flag}
# Every alert and what it takes besides COMMON, in the order of the rule file.
PARAMETERS: dict[str, dict[str, Parser]] = {
    "LettaExporterDown": {},
    "LettaExporterReplicaDown": {},
    "LettaExporterPollFailing": {},
    "LettaExporterRateLimited": {"ratio": _ratio, "window": _duration},
    "LettaEnvironmentHeartbeatStale": {"threshold": _duration},
    "LettaEnvironmentOffline": {
        "selector": _matchers,
        "threshold": _duration,
        "lookback": _duration,
    },
    "LettaEnvironmentsOnlineDrop": {
        "drop_ratio": _ratio,
        "compare_offset": _duration,
        "min_online_before": _count,
    },
    "LettaEnvironmentsNoneOnline": {"min_online_before": _count, "lookback": _duration},
    "LettaEnvironmentsVersionDrift": {"ratio": _ratio, "min_connected": _count},
    "LettaEnvironmentsUnrestrictedMode": {"selector": _matchers},
}
# The keys of COMMON and PARAMETERS whose values are used as text, never computed with: the
# mixin lets jsonnet put these in (`$._config`), so overriding them there takes effect.
TEXT_PARAMETERS = frozenset({"severity", "for", "window", "compare_offset", "lookback", "selector"})


@dataclass(frozen=True)
class Settings:
    """The checked global settings every rule and panel is built from."""

    runbook_base_url: str
    job_selector: str
    replica_labels: tuple[str, ...]
    shard_labels: tuple[str, ...]
    missed_polls: int
    online_threshold: str

    def select(self, metric: str, *matchers: str) -> str:
        """``metric{job selector, matchers...}``."""
        return f"{metric}{{{', '.join(m for m in (self.job_selector, *matchers) if m)}}}"

    def without(self, *extra: str) -> str:
        """The `without (...)` clause that folds replicas (and ``extra`` labels) together."""
        return f"without ({', '.join((*self.replica_labels, *extra))})"

    def runbook(self, alert: str) -> str:
        return f"{self.runbook_base_url}#{alert.lower()}"


@dataclass(frozen=True)
class Bundle:
    """The settings and every alert's parameters (disabled ones too: panels may use them)."""

    settings: Settings
    alerts: dict[str, dict[str, Any]]
    config: Mapping[str, Any]  # as written: the mixin's `_config`

    def enabled(self, name: str) -> bool:
        return bool(self.alerts[name]["enabled"])


GLOBAL_KEYS = (
    "runbook_base_url",
    "job_selector",
    "replica_labels",
    "shard_labels",
    "missed_polls",
    "online_threshold",
    "alerts",
)


def check_config(config: Mapping[str, Any]) -> Bundle:
    """The checked settings of ``config``; raises ConfigError listing every error."""
    errors: list[str] = [f"unknown key {key!r}" for key in sorted(set(config) - set(GLOBAL_KEYS))]
    errors += [f"{key}: missing" for key in GLOBAL_KEYS if key not in config]

    def check(key: str, parse: Parser, default: Any) -> Any:
        if key not in config:
            return default
        try:
            return parse(config[key])
        except ValueError as exc:
            errors.append(f"{key}: {exc}")
            return default

    base_url = str(config.get("runbook_base_url", ""))
    if not re.match(r"^https?://\S+$", base_url) or "#" in base_url:
        errors.append(f"runbook_base_url: expected an http(s) URL without #, got {base_url!r}")
    job_selector = check("job_selector", _matchers, "")
    if "job_selector" in config and "job" not in dict(_EQUALITY_MATCHER.findall(job_selector)):
        errors.append(
            "job_selector: must fix job with an = matcher (LettaExporterDown and the "
            f"inhibitions need the job label), got {job_selector!r}"
        )
    replicas = check("replica_labels", _labels, ())
    shards = check("shard_labels", lambda value: _labels(value, empty=True), ())
    if set(replicas) & {"job", *shards}:
        errors.append("replica_labels: must not hold job or a shard label")
    missed_polls = check("missed_polls", _count, 1)
    online_threshold = check("online_threshold", _duration, "2m")

    alerts = config.get("alerts", {})
    if not isinstance(alerts, Mapping):
        errors.append("alerts: expected a mapping of alert name to settings")
        alerts = {}
    errors += [f"alerts: unknown alert {name!r}" for name in sorted(set(alerts) - set(PARAMETERS))]
    checked: dict[str, dict[str, Any]] = {}
    for name, parsers in PARAMETERS.items():
        given = alerts.get(name)
        if not isinstance(given, Mapping):
            errors.append(f"alerts.{name}: missing (set enabled: false to drop it)")
            continue
        allowed = {**COMMON, **parsers}
        errors += [
            f"alerts.{name}: unknown key {key!r}" for key in sorted(set(given) - set(allowed))
        ]
        values: dict[str, Any] = {"enabled": True}
        for key, parse in allowed.items():
            if key not in given:
                if key != "enabled":
                    errors.append(f"alerts.{name}.{key}: missing")
                continue
            try:
                values[key] = parse(given[key])
            except ValueError as exc:
                errors.append(f"alerts.{name}.{key}: {exc}")
        checked[name] = values
    if errors:
        raise ConfigError("invalid configuration: " + "; ".join(errors))
    settings = Settings(base_url, job_selector, replicas, shards, missed_polls, online_threshold)
    return Bundle(settings, checked, copy.deepcopy(dict(config)))


def load_config(path: Path = CONFIG_PATH) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return document


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` applied, mappings merged key by key (neither is changed)."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
