"""Configuration: flags, environment and an optional YAML file, checked once, all errors together.

Precedence, highest first: command-line flags, environment variables (`LETTA_API_KEY`,
`LETTA_BASE_URL`), the `--config.file` YAML, defaults. The YAML file uses the flag names, either
flat (`letta.poll-interval: 30s`) or nested (`letta: {poll-interval: 30s}`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from exporter import __version__
from exporter.errors import ConfigError
from exporter.rendering import RenderOptions
from exporter.units import MiB, parse_duration, parse_size

DEFAULT_PORT = 8377
DEFAULT_HEARTBEAT_BUCKETS = (
    15.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
    21600.0,
    86400.0,
)
EXTRA_LABELS = ("working_directory", "git_branch")
SOURCES = ("local", "remote")
LOG_LEVELS = ("debug", "info", "warn", "error")
# A row as the API sends it is ~700 bytes (813 at most in the simulator's fleet): a page of
# --letta.page-size rows must fit in --letta.max-response-size with room to spare.
ROW_BYTES = 1024


class Secret:
    """A string that never shows itself in a repr, a str() or a log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Config:
    """Everything the exporter runs with, validated."""

    api_key: Secret = field(default_factory=lambda: Secret(""))
    base_url: str = "https://api.letta.com"
    ca_file: Path | None = None
    listen_address: str = f":{DEFAULT_PORT}"
    telemetry_path: str = "/metrics"
    web_config_file: Path | None = None
    poll_interval: float = 60.0
    poll_jitter: float = 5.0
    poll_timeout: float | None = None
    request_timeout: float = 10.0
    max_retries: int = 3
    retry_backoff: float = 0.5
    retry_backoff_max: float = 10.0
    page_size: int = 100
    max_pages: int = 10_000
    max_rows: int = 200_000
    max_response_size: int = 8 * MiB
    online_only: bool = False
    source: str | None = None
    user_id: str | None = None
    online_threshold: float = 120.0
    heartbeat_buckets: tuple[float, ...] = DEFAULT_HEARTBEAT_BUCKETS
    max_data_age: float | None = None
    collector_environment: bool = True
    environment_max: int = 100_000
    environment_extra_labels: tuple[str, ...] = ()
    log_level: str = "info"
    log_format: str = "logfmt"
    version_target: str | None = None
    version_registry: bool = True
    version_registry_url: str = "https://registry.npmjs.org"
    version_package: str = "@letta-ai/letta-code"
    version_refresh_interval: float = 3600.0
    version_registry_timeout: float = 10.0
    version_max_response_size: int = 16 * MiB
    demo: bool = False
    demo_fleet_size: int = 200

    @property
    def effective_poll_timeout(self) -> float:
        """A poll's deadline: by default the interval less the jitter, so that a poll cut at
        its deadline has ended before the next one can start."""
        if self.poll_timeout is not None:
            return self.poll_timeout
        return self.poll_interval - self.poll_jitter

    @property
    def effective_max_data_age(self) -> float:
        """How long the last good fleet is served without a successful poll."""
        if self.max_data_age is not None:
            return self.max_data_age
        return max(10 * self.poll_interval, 600.0)

    def render_options(self) -> RenderOptions:
        return RenderOptions(
            online_threshold=self.online_threshold,
            heartbeat_buckets=self.heartbeat_buckets,
            version_target=self.version_target,
            per_environment=self.collector_environment,
            environment_max=self.environment_max,
            extra_labels=self.environment_extra_labels,
        )


# --- value parsers: each raises ValueError with a short reason ----------------------------


def _positive_int(text: str) -> int:
    try:
        number = int(str(text).strip())
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def _non_negative_int(text: str) -> int:
    try:
        number = int(str(text).strip())
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def _non_negative_duration(text: str) -> float:
    if str(text).strip() in ("0", "0s"):
        return 0.0
    return parse_duration(text)


def _base_url(text: str) -> str:
    url = str(text).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url


def _listen_address(text: str) -> str:
    value = str(text).strip()
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected [host]:port, got {value!r}")
    return value


def _path_prefix(text: str) -> str:
    value = str(text).strip()
    if not value.startswith("/") or value == "/":
        raise ValueError(f"must start with / and not be /, got {value!r}")
    return value


def _choice(choices: Sequence[str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = str(text).strip()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _buckets(text: str | Sequence[Any]) -> tuple[float, ...]:
    items = text if isinstance(text, list | tuple) else str(text).split(",")
    try:
        bounds = tuple(parse_duration(str(item)) for item in items)
    except ValueError as exc:
        raise ValueError(f"bad bucket bound: {exc}") from None
    if not bounds or list(bounds) != sorted(set(bounds)):
        raise ValueError("bucket bounds must be strictly increasing")
    return bounds


def _extra_labels(text: str | Sequence[Any]) -> tuple[str, ...]:
    items = text if isinstance(text, list | tuple) else str(text).split(",")
    labels = tuple(str(item).strip() for item in items if str(item).strip())
    unknown = [label for label in labels if label not in EXTRA_LABELS]
    if unknown:
        raise ValueError(
            f"unknown label(s) {', '.join(unknown)}; allowed: {', '.join(EXTRA_LABELS)}"
        )
    return labels


def _semver(text: Any) -> str:
    import semver

    value = str(text).strip()
    try:
        semver.Version.parse(value.removeprefix("v"))
    except ValueError:
        raise ValueError(f"not a semantic version: {value!r}") from None
    return value


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _text(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    return text


def _file(value: Any) -> Path:
    path = Path(str(value))
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    return path


@dataclass(frozen=True)
class _Option:
    flag: str
    dest: str
    parse: Callable[[Any], Any]
    help: str
    metavar: str = ""
    boolean: bool = False


_OPTIONS: tuple[_Option, ...] = (
    _Option(
        "web.listen-address",
        "listen_address",
        _listen_address,
        f"address to serve metrics on (default :{DEFAULT_PORT})",
        "ADDR",
    ),
    _Option(
        "web.telemetry-path",
        "telemetry_path",
        _path_prefix,
        "path of the metrics endpoint (default /metrics)",
        "PATH",
    ),
    _Option(
        "web.config.file",
        "web_config_file",
        _file,
        "exporter-toolkit web config (TLS, basic auth, headers)",
        "FILE",
    ),
    _Option(
        "letta.base-url",
        "base_url",
        _base_url,
        "Letta API base URL (env LETTA_BASE_URL; default https://api.letta.com)",
        "URL",
    ),
    _Option(
        "letta.api-key-file",
        "api_key_file",
        _file,
        "read the API key from this file (else env LETTA_API_KEY)",
        "FILE",
    ),
    _Option(
        "letta.ca-file",
        "ca_file",
        _file,
        "CA bundle to verify the Letta API's TLS certificate with",
        "FILE",
    ),
    _Option(
        "letta.poll-interval",
        "poll_interval",
        parse_duration,
        "how often to poll the API, e.g. 60s, 2m (default 60s)",
        "DURATION",
    ),
    _Option(
        "letta.poll-jitter",
        "poll_jitter",
        _non_negative_duration,
        "random delay added to each poll (default 5s, at most a tenth of the interval)",
        "DURATION",
    ),
    _Option(
        "letta.poll-timeout",
        "poll_timeout",
        parse_duration,
        "deadline of one whole poll, retries included (default: the interval less the jitter)",
        "DURATION",
    ),
    _Option(
        "letta.request-timeout",
        "request_timeout",
        parse_duration,
        "timeout of one HTTP request (default 10s)",
        "DURATION",
    ),
    _Option(
        "letta.max-retries",
        "max_retries",
        _non_negative_int,
        "retries of one request on 408/409/429/5xx and network errors (default 3)",
        "N",
    ),
    _Option(
        "letta.retry-backoff",
        "retry_backoff",
        parse_duration,
        "first retry delay, doubled each time, with full jitter (default 500ms)",
        "DURATION",
    ),
    _Option(
        "letta.retry-backoff-max",
        "retry_backoff_max",
        parse_duration,
        "longest retry delay (default 10s)",
        "DURATION",
    ),
    _Option(
        "letta.page-size", "page_size", _positive_int, "rows asked for per page (default 100)", "N"
    ),
    _Option(
        "letta.max-pages",
        "max_pages",
        _positive_int,
        "give up a poll after this many pages (default 10000)",
        "N",
    ),
    _Option(
        "letta.max-rows",
        "max_rows",
        _positive_int,
        "give up a poll that brings more rows than this, however they are paged (default 200000)",
        "N",
    ),
    _Option(
        "letta.max-response-size",
        "max_response_size",
        parse_size,
        "largest answer of the API, counted after decompression; a larger one is cut off "
        "and fails the poll (default 8MiB)",
        "SIZE",
    ),
    _Option(
        "letta.online-only",
        "online_only",
        _bool,
        "list only online environments (the onlineOnly filter)",
        boolean=True,
    ),
    _Option(
        "letta.source",
        "source",
        _choice(SOURCES),
        "list only environments of this source: local or remote",
        "SOURCE",
    ),
    _Option("letta.user-id", "user_id", _text, "list only this user's environments", "ID"),
    _Option(
        "letta.online-threshold",
        "online_threshold",
        parse_duration,
        "heartbeat age up to which a leased environment is online (default 120s)",
        "DURATION",
    ),
    _Option(
        "letta.heartbeat-buckets",
        "heartbeat_buckets",
        _buckets,
        "bucket bounds of the heartbeat age histogram, comma-separated",
        "LIST",
    ),
    _Option(
        "letta.max-data-age",
        "max_data_age",
        parse_duration,
        "withdraw fleet metrics after this long without a successful poll "
        "(default: the longer of 10 intervals and 10m)",
        "DURATION",
    ),
    _Option(
        "collector.environment",
        "collector_environment",
        _bool,
        "serve per-environment series (default on)",
        boolean=True,
    ),
    _Option(
        "collector.environment.max",
        "environment_max",
        _non_negative_int,
        "most environments with per-environment series (default 100000)",
        "N",
    ),
    _Option(
        "collector.environment.extra-labels",
        "environment_extra_labels",
        _extra_labels,
        "opt-in labels of letta_environment_info that may carry personal or project data: "
        "working_directory, git_branch",
        "LIST",
    ),
    _Option(
        "version.target",
        "version_target",
        _semver,
        "pin the version counted as current (else the registry's latest, else the fleet's "
        "newest release)",
        "VERSION",
    ),
    _Option(
        "version.registry",
        "version_registry",
        _bool,
        "look the current release up in the npm registry (default on)",
        boolean=True,
    ),
    _Option(
        "version.registry-url",
        "version_registry_url",
        _base_url,
        "npm registry to ask (default https://registry.npmjs.org)",
        "URL",
    ),
    _Option(
        "version.package",
        "version_package",
        _text,
        "npm package of Letta Code (default @letta-ai/letta-code)",
        "NAME",
    ),
    _Option(
        "version.refresh-interval",
        "version_refresh_interval",
        parse_duration,
        "how often to ask the registry (default 1h)",
        "DURATION",
    ),
    _Option(
        "version.registry-timeout",
        "version_registry_timeout",
        parse_duration,
        "timeout of one registry request (default 10s)",
        "DURATION",
    ),
    _Option(
        "version.max-response-size",
        "version_max_response_size",
        parse_size,
        "largest registry document, counted after decompression (default 16MiB)",
        "SIZE",
    ),
    _Option(
        "log.level",
        "log_level",
        _choice(LOG_LEVELS),
        "debug, info, warn or error (default info)",
        "LEVEL",
    ),
    _Option(
        "log.format",
        "log_format",
        _choice(("logfmt", "json")),
        "logfmt or json (default logfmt)",
        "FORMAT",
    ),
    _Option(
        "demo.fleet-size",
        "demo_fleet_size",
        _positive_int,
        "environments in the --demo simulated fleet (default 200)",
        "N",
    ),
)

_BY_FLAG = {option.flag: option for option in _OPTIONS}


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str) -> Any:
        raise ConfigError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="letta-environments-exporter",
        description="Prometheus exporter for fleets of Letta Code environments.",
        epilog="Environment: LETTA_API_KEY (required unless --demo), LETTA_BASE_URL.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        help="YAML file with any of the options below, by flag name",
    )
    parser.add_argument(
        "--once", action="store_true", help="poll once, print the exposition to stdout and exit"
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run against a built-in simulated fleet (no API key needed)",
    )
    for option in _OPTIONS:
        if option.boolean:
            parser.add_argument(
                f"--{option.flag}",
                dest=option.dest,
                action=argparse.BooleanOptionalAction,
                help=option.help,
            )
        else:
            parser.add_argument(
                f"--{option.flag}", dest=option.dest, metavar=option.metavar, help=option.help
            )
    return parser


@dataclass(frozen=True)
class Invocation:
    """What the command line asked for: the config and the run mode."""

    config: Config
    once: bool
    explicit_registry_url: bool = False


def _flatten(document: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}".replace("_", "-")
        if isinstance(value, Mapping) and f"{name}" not in _BY_FLAG:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _read_config_file(path: str, errors: list[str]) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        errors.append(f"--config.file: cannot read {path!r}: {exc.strerror}")
        return {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        errors.append(f"--config.file: {path!r} is not valid YAML{where}")
        return {}
    if document is None:
        return {}
    if not isinstance(document, Mapping):
        errors.append(f"--config.file: {path!r} must hold a mapping of option names")
        return {}
    values: dict[str, Any] = {}
    for name, value in _flatten(document).items():
        option = _BY_FLAG.get(name)
        if option is None:
            errors.append(f"--config.file: unknown option {name!r}")
        else:
            values[option.dest] = value
    return values


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Invocation:
    """Parse and check everything; raise one ConfigError naming every problem."""
    namespace = vars(build_parser().parse_args(list(argv)))
    errors: list[str] = []
    raw: dict[str, Any] = {}
    if "config_file" in namespace:
        raw.update(_read_config_file(namespace.pop("config_file"), errors))
    if environ.get("LETTA_BASE_URL"):
        raw["base_url"] = environ["LETTA_BASE_URL"]
    once = bool(namespace.pop("once", False))
    demo = bool(namespace.pop("demo", False))
    raw.update(namespace)

    values: dict[str, Any] = {"demo": demo}
    for option in _OPTIONS:
        if option.dest not in raw:
            continue
        try:
            values[option.dest] = option.parse(raw[option.dest])
        except ValueError as exc:
            errors.append(f"--{option.flag}: {exc}")

    key_file = values.pop("api_key_file", None)
    api_key = ""
    if key_file is not None:
        try:
            api_key = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(f"--letta.api-key-file: cannot read it: {type(exc).__name__}")
        else:
            if not api_key:
                errors.append("--letta.api-key-file: the file is empty")
    else:
        api_key = environ.get("LETTA_API_KEY", "").strip()
    if not api_key and not demo and key_file is None:
        errors.append("no API key: set LETTA_API_KEY or --letta.api-key-file (or try --demo)")
    values["api_key"] = Secret(api_key)

    if "poll_jitter" not in values and "poll_interval" in values:
        values["poll_jitter"] = min(5.0, values["poll_interval"] / 10)
    if errors:
        raise ConfigError("; ".join(errors))
    config = Config(**values)
    _check_relations(config, errors)
    if errors:
        raise ConfigError("; ".join(errors))
    return Invocation(config=config, once=once, explicit_registry_url="version_registry_url" in raw)


def _check_relations(config: Config, errors: list[str]) -> None:
    if config.poll_jitter >= config.poll_interval:
        errors.append("--letta.poll-jitter: must be shorter than --letta.poll-interval")
    if config.poll_timeout is not None and config.poll_timeout > config.poll_interval:
        errors.append("--letta.poll-timeout: must not exceed --letta.poll-interval")
    if config.retry_backoff > config.retry_backoff_max:
        errors.append("--letta.retry-backoff: must not exceed --letta.retry-backoff-max")
    if config.max_data_age is not None and config.max_data_age < config.poll_interval:
        errors.append("--letta.max-data-age: must be at least --letta.poll-interval")
    if config.max_response_size < config.page_size * ROW_BYTES:
        errors.append(
            f"--letta.max-response-size: too small for pages of --letta.page-size="
            f"{config.page_size} rows (at least {config.page_size * ROW_BYTES} bytes)"
        )
