"""Configuration: every option defined once, then read from flags, environment and a YAML file.

Each option is one field of `Config`: its name, default, validation, help text, flag and
environment variable are written there and nowhere else; the parser, `--help`, the YAML keys
and the environment source are derived from the fields. Precedence, highest first: flags,
environment variables (`LETTA_API_KEY`, `LETTA_BASE_URL`), the `--config.file` YAML (flag names,
flat `letta.poll-interval: 30s` or nested `letta: {poll-interval: 30s}`), defaults. Every
problem is reported together, in one line.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import semver
import yaml
from pydantic import BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from exporter import __version__
from exporter.client import ClientSettings
from exporter.errors import ConfigError
from exporter.poller import PollSettings
from exporter.release_lookup import LookupSettings
from exporter.rendering import RenderOptions
from exporter.units import MiB, format_duration, format_size, parse_duration, parse_size

DEFAULT_PORT = 8377
DEFAULT_POLL_JITTER = 5.0  # and at most a tenth of the interval
# Without --letta.max-data-age, the fleet is withdrawn after this many intervals, or this long.
DATA_AGE_INTERVALS = 10
MIN_DATA_AGE = 600.0
EXTRA_LABELS = ("working_directory", "git_branch")
SOURCES = ("local", "remote")
LOG_LEVELS = ("debug", "info", "warn", "error")
# A row as the API sends it is ~890 bytes in the simulator's fleet (1,430 at most; a page of
# 1,000 at most 904,835): a page of --letta.page-size rows must fit in
# --letta.max-response-size with room to spare.
ROW_BYTES = 1024


@dataclass(frozen=True)
class Option:
    """How an option of `Config` is given: its flag (also its YAML key), `--help` metavar,
    environment variable, and how `--help` shows its default."""

    flag: str | None
    metavar: str = ""
    env: str | None = None
    show: Callable[[Any], str] = str
    default_text: str | None = None  # when the default is a rule, not a value
    also: str | None = None  # said of the default after it
    in_file: bool = True


# --- value parsers: each raises ValueError with a short reason ----------------------------


def _positive_int(text: Any) -> int:
    try:
        number = int(str(text).strip())
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if number < 1:
        raise ValueError(f"must be at least 1, got {number}")
    return number


def _non_negative_int(text: Any) -> int:
    try:
        number = int(str(text).strip())
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    return number


def _duration(text: Any) -> float:
    return parse_duration(text)


def _non_negative_duration(text: Any) -> float:
    if str(text).strip() in ("0", "0s") or (isinstance(text, float) and text == 0):
        return 0.0
    return parse_duration(text)


def _size(text: Any) -> int:
    return parse_size(text)


def _url(text: Any) -> str:
    url = str(text).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url


def _listen_address(text: Any) -> str:
    value = str(text).strip()
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected [host]:port, got {value!r}")
    return value


def _path_prefix(text: Any) -> str:
    value = str(text).strip()
    if not value.startswith("/") or value == "/":
        raise ValueError(f"must start with / and not be /, got {value!r}")
    return value


def _choice(choices: Sequence[str]) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    return parse


def _items(text: Any) -> list[Any]:
    return list(text) if isinstance(text, list | tuple) else str(text).split(",")


def _buckets(text: Any) -> tuple[float, ...]:
    try:
        bounds = tuple(parse_duration(str(item)) for item in _items(text))
    except ValueError as exc:
        raise ValueError(f"bad bucket bound: {exc}") from None
    if not bounds or list(bounds) != sorted(set(bounds)):
        raise ValueError("bucket bounds must be strictly increasing")
    return bounds


def _extra_labels(text: Any) -> tuple[str, ...]:
    labels = tuple(str(item).strip() for item in _items(text) if str(item).strip())
    unknown = [label for label in labels if label not in EXTRA_LABELS]
    if unknown:
        raise ValueError(
            f"unknown label(s) {', '.join(unknown)}; allowed: {', '.join(EXTRA_LABELS)}"
        )
    return labels


def _semver(text: Any) -> str:
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


def _secret(value: Any) -> SecretStr:
    return value if isinstance(value, SecretStr) else SecretStr(str(value).strip())


def _on(value: bool) -> str:
    return "on" if value else ""


def _list(values: tuple[Any, ...]) -> str:
    return ",".join(format_duration(v) if isinstance(v, float) else str(v) for v in values)


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]
Count = Annotated[int, BeforeValidator(_positive_int)]
Limit = Annotated[int, BeforeValidator(_non_negative_int)]
Flag = Annotated[bool, BeforeValidator(_bool)]
File = Annotated[Path, BeforeValidator(_file)]
URL = Annotated[str, BeforeValidator(_url)]
Text = Annotated[str, BeforeValidator(_text)]
DURATION = {"metavar": "DURATION", "show": format_duration}
SIZE = {"metavar": "SIZE", "show": format_size}


@dataclass(frozen=True)
class _Inputs:
    """What one `load_config` call reads besides the flags: its environment and config file."""

    environ: Mapping[str, str] = field(default_factory=dict)
    file: Mapping[str, Any] = field(default_factory=dict)


_INPUTS: ContextVar[_Inputs | None] = ContextVar("config_inputs", default=None)


class Config(BaseSettings):
    """Everything the exporter runs with, validated; each part takes its few settings from it."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=False)

    demo: Annotated[Flag, Option("demo", show=_on, in_file=False)] = Field(
        False, description="run against a built-in simulated fleet (no API key needed)"
    )
    listen_address: Annotated[
        str,
        BeforeValidator(_listen_address),
        Option("web.listen-address", "ADDR"),
    ] = Field(f":{DEFAULT_PORT}", description="address to serve metrics on")
    telemetry_path: Annotated[
        str, BeforeValidator(_path_prefix), Option("web.telemetry-path", "PATH")
    ] = Field("/metrics", description="path of the metrics endpoint")
    web_config_file: Annotated[File | None, Option("web.config.file", "FILE")] = Field(
        None, description="exporter-toolkit web config (TLS, basic auth, headers)"
    )
    base_url: Annotated[URL, Option("letta.base-url", "URL", env="LETTA_BASE_URL")] = Field(
        "https://api.letta.com", description="Letta API base URL"
    )
    api_key: Annotated[
        SecretStr, BeforeValidator(_secret), Option(None, env="LETTA_API_KEY", in_file=False)
    ] = Field(SecretStr(""), description="the Letta API key")
    api_key_file: Annotated[File | None, Option("letta.api-key-file", "FILE")] = Field(
        None, description="read the API key from this file (else env LETTA_API_KEY)"
    )
    ca_file: Annotated[File | None, Option("letta.ca-file", "FILE")] = Field(
        None, description="CA bundle to verify the Letta API's TLS certificate with"
    )
    poll_interval: Annotated[Duration, Option("letta.poll-interval", **DURATION)] = Field(
        60.0, description="how often to poll the API, e.g. 60s, 2m"
    )
    poll_jitter: Annotated[
        float,
        BeforeValidator(_non_negative_duration),
        Option("letta.poll-jitter", **DURATION, also="at most a tenth of the interval"),
    ] = Field(DEFAULT_POLL_JITTER, description="random delay added to each poll")
    poll_timeout: Annotated[
        Duration | None,
        Option("letta.poll-timeout", **DURATION, default_text="the interval less the jitter"),
    ] = Field(None, description="deadline of one whole poll, retries included")
    request_timeout: Annotated[Duration, Option("letta.request-timeout", **DURATION)] = Field(
        10.0, description="timeout of one HTTP request"
    )
    max_retries: Annotated[Limit, Option("letta.max-retries", "N")] = Field(
        3, description="retries of one request on 408/409/429/5xx and network errors"
    )
    retry_backoff: Annotated[Duration, Option("letta.retry-backoff", **DURATION)] = Field(
        0.5, description="first retry delay, doubled each time, with full jitter"
    )
    retry_backoff_max: Annotated[Duration, Option("letta.retry-backoff-max", **DURATION)] = Field(
        10.0, description="longest retry delay"
    )
    page_size: Annotated[Count, Option("letta.page-size", "N")] = Field(
        100, description="rows asked for per page"
    )
    max_pages: Annotated[Count, Option("letta.max-pages", "N")] = Field(
        10_000, description="give up a poll after this many pages"
    )
    max_rows: Annotated[Count, Option("letta.max-rows", "N")] = Field(
        200_000,
        description="give up a poll that brings more rows than this, however they are paged",
    )
    max_response_size: Annotated[Size, Option("letta.max-response-size", **SIZE)] = Field(
        8 * MiB,
        description="largest answer of the API, counted after decompression; a larger one is "
        "cut off and fails the poll",
    )
    online_only: Annotated[Flag, Option("letta.online-only", show=_on)] = Field(
        False, description="list only online environments (the onlineOnly filter)"
    )
    source: Annotated[
        str | None, BeforeValidator(_choice(SOURCES)), Option("letta.source", "SOURCE")
    ] = Field(None, description="list only environments of this source: local or remote")
    user_id: Annotated[Text | None, Option("letta.user-id", "ID")] = Field(
        None, description="list only this user's environments"
    )
    online_threshold: Annotated[Duration, Option("letta.online-threshold", **DURATION)] = Field(
        120.0, description="heartbeat age up to which a leased environment is online"
    )
    heartbeat_buckets: Annotated[
        tuple[float, ...],
        BeforeValidator(_buckets),
        Option("letta.heartbeat-buckets", "LIST", show=_list),
    ] = Field(
        (15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0),
        description="bucket bounds of the heartbeat age histogram, comma-separated",
    )
    max_data_age: Annotated[
        Duration | None,
        Option(
            "letta.max-data-age",
            **DURATION,
            default_text=f"the longer of {DATA_AGE_INTERVALS} intervals and "
            f"{format_duration(MIN_DATA_AGE)}",
        ),
    ] = Field(None, description="withdraw fleet metrics after this long without a successful poll")
    collector_environment: Annotated[Flag, Option("collector.environment", show=_on)] = Field(
        True, description="serve per-environment series"
    )
    environment_max: Annotated[Limit, Option("collector.environment.max", "N")] = Field(
        100_000, description="most environments with per-environment series"
    )
    environment_extra_labels: Annotated[
        tuple[str, ...],
        BeforeValidator(_extra_labels),
        Option("collector.environment.extra-labels", "LIST", show=_list),
    ] = Field(
        (),
        description="opt-in labels of letta_environment_info that may carry personal or "
        "project data: working_directory, git_branch",
    )
    version_target: Annotated[
        str | None, BeforeValidator(_semver), Option("version.target", "VERSION")
    ] = Field(
        None,
        description="pin the version counted as current (else the newest release of the "
        "registries, else the fleet's newest release)",
    )
    version_registry: Annotated[Flag, Option("version.registry", show=_on)] = Field(
        True, description="look the current release up in the npm registry"
    )
    version_registry_url: Annotated[URL, Option("version.registry-url", "URL")] = Field(
        "https://registry.npmjs.org", description="npm registry to ask"
    )
    version_package: Annotated[Text, Option("version.package", "NAME")] = Field(
        "@letta-ai/letta-code", description="npm package of Letta Code"
    )
    version_pypi: Annotated[Flag, Option("version.pypi", show=_on)] = Field(
        True, description="look the current release up on PyPI too (the newest of both counts)"
    )
    version_pypi_url: Annotated[URL, Option("version.pypi-url", "URL")] = Field(
        "https://pypi.org", description="PyPI, or a mirror with its JSON API"
    )
    version_pypi_package: Annotated[Text, Option("version.pypi-package", "NAME")] = Field(
        "letta", description="PyPI project of Letta Code"
    )
    version_refresh_interval: Annotated[
        Duration, Option("version.refresh-interval", **DURATION)
    ] = Field(3600.0, description="how often to ask the registries")
    version_registry_timeout: Annotated[
        Duration, Option("version.registry-timeout", **DURATION)
    ] = Field(10.0, description="deadline of one registry lookup, redirects and body included")
    version_max_response_size: Annotated[Size, Option("version.max-response-size", **SIZE)] = Field(
        16 * MiB, description="largest registry document, counted after decompression"
    )
    log_level: Annotated[
        str, BeforeValidator(_choice(LOG_LEVELS)), Option("log.level", "LEVEL")
    ] = Field("info", description="debug, info, warn or error")
    log_format: Annotated[
        str, BeforeValidator(_choice(("logfmt", "json"))), Option("log.format", "FORMAT")
    ] = Field("logfmt", description="logfmt or json")
    demo_fleet_size: Annotated[Count, Option("demo.fleet-size", "N")] = Field(
        200, description="environments in the --demo simulated fleet"
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Flags come in as keyword arguments; then the environment, then the file.
        return init_settings, _EnvironmentSource(settings_cls), _FileSource(settings_cls)

    @model_validator(mode="before")
    @classmethod
    def _jitter_follows_the_interval(cls, data: Any) -> Any:
        if isinstance(data, dict) and "poll_jitter" not in data and "poll_interval" in data:
            try:
                interval = parse_duration(data["poll_interval"])
            except ValueError:
                return data  # reported as the interval's own error
            return {**data, "poll_jitter": min(DEFAULT_POLL_JITTER, interval / 10)}
        return data

    @model_validator(mode="after")
    def _check_relations(self) -> Config:
        problems = []
        if self.poll_jitter >= self.poll_interval:
            problems.append("--letta.poll-jitter: must be shorter than --letta.poll-interval")
        if self.poll_timeout is not None and self.poll_timeout > self.poll_interval:
            problems.append("--letta.poll-timeout: must not exceed --letta.poll-interval")
        if self.retry_backoff > self.retry_backoff_max:
            problems.append("--letta.retry-backoff: must not exceed --letta.retry-backoff-max")
        if self.max_data_age is not None and self.max_data_age < self.poll_interval:
            problems.append("--letta.max-data-age: must be at least --letta.poll-interval")
        if self.max_response_size < self.page_size * ROW_BYTES:
            problems.append(
                f"--letta.max-response-size: too small for pages of --letta.page-size="
                f"{self.page_size} rows (at least {self.page_size * ROW_BYTES} bytes)"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
        return max(DATA_AGE_INTERVALS * self.poll_interval, MIN_DATA_AGE)

    def client_settings(self) -> ClientSettings:
        return ClientSettings(
            base_url=self.base_url,
            api_key=self.api_key,
            ca_file=self.ca_file,
            request_timeout=self.request_timeout,
            max_retries=self.max_retries,
            retry_backoff=self.retry_backoff,
            retry_backoff_max=self.retry_backoff_max,
            page_size=self.page_size,
            max_pages=self.max_pages,
            max_rows=self.max_rows,
            max_response_size=self.max_response_size,
            online_only=self.online_only,
            source=self.source,
            user_id=self.user_id,
        )

    def lookup_settings(self) -> tuple[LookupSettings, ...]:
        """One lookup per registry that is asked (none when a version is pinned)."""
        if self.version_target:
            return ()
        asked = (
            ("npm", self.version_registry, self.version_registry_url, self.version_package),
            ("pypi", self.version_pypi, self.version_pypi_url, self.version_pypi_package),
        )
        return tuple(
            LookupSettings(
                registry_url=url,
                package=package,
                timeout=self.version_registry_timeout,
                max_response_size=self.version_max_response_size,
                ca_file=self.ca_file,
                registry=registry,
            )
            for registry, on, url, package in asked
            if on
        )

    def render_options(self) -> RenderOptions:
        return RenderOptions(
            online_threshold=self.online_threshold,
            heartbeat_buckets=self.heartbeat_buckets,
            version_target=self.version_target,
            per_environment=self.collector_environment,
            environment_max=self.environment_max,
            extra_labels=self.environment_extra_labels,
        )

    def poll_settings(self) -> PollSettings:
        return PollSettings(
            timeout=self.effective_poll_timeout,
            interval=self.poll_interval,
            render=self.render_options(),
        )


def _options() -> Iterator[tuple[str, FieldInfo, Option]]:
    for name, info in Config.model_fields.items():
        option = next(m for m in info.metadata if isinstance(m, Option))
        yield name, info, option


class _EnvironmentSource(PydanticBaseSettingsSource):
    """The options that have an environment variable, from the environment `load_config` got."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = (_INPUTS.get() or _Inputs()).environ
        return {
            name: environ[option.env]
            for name, _info, option in _options()
            if option.env and environ.get(option.env, "").strip()
        }


class _FileSource(PydanticBaseSettingsSource):
    """The options of the `--config.file` YAML that `load_config` read."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict((_INPUTS.get() or _Inputs()).file)


def _help(info: FieldInfo, option: Option) -> str:
    default = option.default_text
    parts = []
    if option.env:
        parts.append(f"env {option.env}")
    if info.default is None and default is not None:
        parts.append(f"default: {default}")
    elif info.default is not None and (shown := option.show(info.default)):
        parts.append(f"default {shown}" + (f", {option.also}" if option.also else ""))
    return f"{info.description} ({'; '.join(parts)})" if parts else str(info.description)


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
    for name, info, option in _options():
        if option.flag is None:
            continue
        if not option.in_file and info.annotation is bool:  # a run mode: on when given
            parser.add_argument(
                f"--{option.flag}", dest=name, action="store_true", help=info.description
            )
        elif info.annotation is bool:
            parser.add_argument(
                f"--{option.flag}",
                dest=name,
                action=argparse.BooleanOptionalAction,
                help=_help(info, option),
            )
        else:
            parser.add_argument(
                f"--{option.flag}", dest=name, metavar=option.metavar, help=_help(info, option)
            )
    return parser


@dataclass(frozen=True)
class Invocation:
    """What the command line asked for: the config and the run mode."""

    config: Config
    once: bool
    explicit_registry_url: bool = False
    explicit_pypi_url: bool = False


def _in_file() -> dict[str, str]:
    """Option names of the YAML file (the flags), each to its field."""
    return {o.flag: name for name, _info, o in _options() if o.flag is not None and o.in_file}


def _flatten(document: Mapping[str, Any], keys: Mapping[str, str], prefix: str = "") -> Any:
    flat: dict[str, Any] = {}
    for key, value in document.items():
        name = f"{prefix}{key}".replace("_", "-")
        if isinstance(value, Mapping) and name not in keys:
            flat.update(_flatten(value, keys, f"{name}."))
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
    keys = _in_file()
    values: dict[str, Any] = {}
    for name, value in _flatten(document, keys).items():
        if name in keys:
            values[keys[name]] = value
        else:
            errors.append(f"--config.file: unknown option {name!r}")
    return values


def _read_key_file(path: Any, errors: list[str]) -> SecretStr | None:
    if not Path(str(path)).is_file():
        return None  # reported by the option's own check
    try:
        key = Path(str(path)).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(f"--letta.api-key-file: cannot read it: {type(exc).__name__}")
        return None
    if not key:
        errors.append("--letta.api-key-file: the file is empty")
        return None
    return SecretStr(key)


def _describe(exc: ValidationError) -> Iterator[str]:
    """Each problem as `--flag: reason`, in the order the options are defined."""
    flags = {name: option.flag for name, _info, option in _options()}
    for error in exc.errors(include_url=False, include_input=False):
        reason = str(error["ctx"]["error"]) if error["type"] == "value_error" else error["msg"]
        name = str(error["loc"][0]) if error["loc"] else ""
        yield f"--{flags[name]}: {reason}" if flags.get(name) else reason


def load_config(argv: Sequence[str], environ: Mapping[str, str]) -> Invocation:
    """Parse and check everything; raise one ConfigError naming every problem."""
    flags = vars(build_parser().parse_args(list(argv)))
    errors: list[str] = []
    file: dict[str, Any] = {}
    if "config_file" in flags:
        file = _read_config_file(flags.pop("config_file"), errors)
    once = bool(flags.pop("once", False))
    key_file = flags.get("api_key_file", file.get("api_key_file"))
    key_errors: list[str] = []
    if key_file is not None:
        key = _read_key_file(key_file, key_errors)
        if key is not None:
            flags["api_key"] = key
    elif not environ.get("LETTA_API_KEY", "").strip() and not flags.get("demo"):
        key_errors.append("no API key: set LETTA_API_KEY or --letta.api-key-file (or try --demo)")
    token = _INPUTS.set(_Inputs(environ=environ, file=file))
    config: Config | None = None
    try:
        config = Config(**flags)
    except ValidationError as exc:
        errors.extend(_describe(exc))
    finally:
        _INPUTS.reset(token)
    errors.extend(key_errors)
    if errors or config is None:
        raise ConfigError("; ".join(errors))
    return Invocation(
        config=config,
        once=once,
        explicit_registry_url="version_registry_url" in flags or "version_registry_url" in file,
        explicit_pypi_url="version_pypi_url" in flags or "version_pypi_url" in file,
    )
