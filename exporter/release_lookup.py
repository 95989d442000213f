"""The current Letta Code release, from the registries that publish it.

Letta Code is published on npm (`@letta-ai/letta-code`, whose `latest` tag its own updater
follows) and on PyPI (`letta`, which carries its own Node); the two channels need not agree.
One lookup per registry, each on its own schedule (hourly by default) and cached; a failed
lookup keeps its last good answer and never fails a poll. `fleet.newest_release` combines them.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exporter import __version__, clock
from exporter.body import (
    ACCEPT_ENCODING,
    BodyError,
    BodyTooLargeError,
    DeadlinePassedError,
    read_body,
)
from exporter.fleet import ReleaseInfo
from exporter.sockets import OpenSockets
from exporter.units import format_size

log = logging.getLogger(__name__)

MAX_REDIRECTS = 5


class Packument(BaseModel):
    """The parts of an npm package document the exporter reads."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    dist_tags: dict[str, str] = Field(alias="dist-tags")
    time: dict[str, str] = Field(default_factory=dict)


def parse_packument(body: bytes, fetched_at: float) -> ReleaseInfo:
    """Parse at the edge; raises ValueError when the document has no usable `latest` tag."""
    try:
        packument = Packument.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(f"not an npm package document ({exc.error_count()} error(s))") from None
    latest = packument.dist_tags.get("latest")
    if not latest:
        raise ValueError("the package has no 'latest' dist-tag")
    published: dict[str, float] = {}
    for version, stamp in packument.time.items():
        if version in ("created", "modified"):
            continue
        try:
            published[version] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue  # one odd date does not cost the others
    return ReleaseInfo(
        latest=latest,
        published=MappingProxyType(published),
        fetched_at=fetched_at,
        source="registry",
    )


class _PyPIFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    upload_time_iso_8601: str | None = None
    yanked: bool = False


class _PyPIInfo(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    version: str


class PyPIProject(BaseModel):
    """The parts of PyPI's JSON document of a project (`/pypi/NAME/json`) the exporter reads."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    info: _PyPIInfo
    releases: dict[str, list[_PyPIFile]] = Field(default_factory=dict)


def parse_pypi_project(body: bytes, fetched_at: float) -> ReleaseInfo:
    """`info.version` is PyPI's newest release (never a pre-release unless only those exist);
    a version's publication is its first file's upload, yanked files left out."""
    try:
        project = PyPIProject.model_validate_json(body)
    except ValidationError as exc:
        raise ValueError(f"not a PyPI project document ({exc.error_count()} error(s))") from None
    if not project.info.version:
        raise ValueError("the project has no version")
    published: dict[str, float] = {}
    for version, files in project.releases.items():
        stamps = []
        for file in files:
            if file.yanked or not file.upload_time_iso_8601:
                continue
            try:
                stamps.append(datetime.fromisoformat(file.upload_time_iso_8601).timestamp())
            except ValueError:
                continue  # one odd date does not cost the others
        if stamps:
            published[version] = min(stamps)
    return ReleaseInfo(
        latest=project.info.version,
        published=MappingProxyType(published),
        fetched_at=fetched_at,
        source="pypi",
    )


@dataclass(frozen=True, slots=True)
class LookupSettings:
    """What the lookup reads: which registry and package, how long to wait, how much to read."""

    registry_url: str
    package: str
    timeout: float
    max_response_size: int
    ca_file: Path | None
    registry: str = "npm"
    """`npm` (a package document) or `pypi` (PyPI's JSON API)."""

    @property
    def document_url(self) -> str:
        if self.registry == "pypi":
            return f"{self.registry_url}/pypi/{quote(self.package, safe='')}/json"
        return f"{self.registry_url}/{quote(self.package, safe='@')}"


class ReleaseLookup:
    """Asks the registry for the package's document; keeps the last good answer."""

    def __init__(
        self,
        settings: LookupSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        observe: Callable[[str, str], None] | None = None,
        wall_clock: Callable[[], float] = clock.wall_clock,
        monotonic: Callable[[], float] = clock.monotonic,
    ) -> None:
        self._url = settings.document_url
        self.registry = settings.registry
        self._parse = parse_pypi_project if settings.registry == "pypi" else parse_packument
        self._timeout = settings.timeout
        self._max_size = settings.max_response_size
        self._monotonic = monotonic
        self._observe = observe or (lambda registry, result: None)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._closed = False
        self._sockets = OpenSockets()
        self._failing: str | None = None
        self.current: ReleaseInfo | None = None
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            # The registry is public: trust the system CAs, and the Letta API's CA as well
            # (a TLS-inspecting proxy in front of both is the usual reason for a CA file).
            verify = ssl.create_default_context()
            verify.load_verify_locations(cafile=str(settings.ca_file))
        self._http = httpx.Client(
            timeout=settings.timeout,
            headers={
                # The full document: the abbreviated one (application/vnd.npm.install-v1+json)
                # has no `time`, and the publication times are what the drift metrics read.
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": f"letta-environments-exporter/{__version__}",
            },
            transport=transport,
            verify=verify,
            # Followed here, not by httpx: it reads a redirect's body whole, without a cap.
            follow_redirects=False,
        )

    def close(self) -> None:
        """Release the connections; a lookup in flight ends at once, unreported."""
        self._closed = True
        self._sockets.shut_down()
        self._http.close()

    def refresh(self) -> bool:
        """Look the release up once; never raises. True when the answer was refreshed."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            result, detail = self._lookup()
        finally:
            self._lock.release()
        if self._closed:
            return False  # shutting down: the lookup was abandoned, not failed
        self._observe(self.registry, result)
        if result == "success":
            if self._failing is not None:
                log.info("release lookup in %s recovered", self.registry)
            self._failing = None
            return True
        if self._failing != result:
            log.warning(
                "release lookup in %s failed (%s): %s; keeping %s",
                self.registry,
                result,
                detail,
                self.current.latest if self.current else "the fleet's newest release",
            )
        self._failing = result
        return False

    def _lookup(self) -> tuple[str, str]:
        deadline = self._monotonic() + self._timeout  # the whole lookup, body included
        trace = {"trace": self._sockets.trace()}
        request = self._http.build_request("GET", self._url, extensions=trace)
        try:
            for _ in range(MAX_REDIRECTS + 1):
                # Each request, redirects included, gets only what is left of the deadline.
                remaining = deadline - self._monotonic()
                if remaining <= 0:
                    return "timeout", "DeadlinePassedError"
                request.extensions = {
                    **request.extensions,
                    "timeout": httpx.Timeout(remaining).as_dict(),
                }
                response = self._http.send(request, stream=True)
                try:
                    if response.next_request is not None:
                        request = response.next_request  # its body is never read
                        request.extensions = {**request.extensions, **trace}
                        continue
                    if response.status_code != 200:
                        return "http_error", f"HTTP {response.status_code} from {request.url}"
                    body = read_body(
                        response, self._max_size, deadline=deadline, monotonic=self._monotonic
                    )
                    break
                finally:
                    response.close()
            else:
                return "http_error", f"more than {MAX_REDIRECTS} redirects from {self._url}"
        except (httpx.TimeoutException, DeadlinePassedError) as exc:
            return "timeout", type(exc).__name__
        except httpx.TransportError as exc:
            return "connection_error", type(exc).__name__
        except BodyTooLargeError as exc:
            size = format_size(self._max_size)
            return "invalid_response", f"the document {exc} (--version.max-response-size={size})"
        except BodyError as exc:
            return "invalid_response", f"the document: {exc}"
        try:
            self.current = self._parse(body, self._wall_clock())
        except ValueError as exc:
            return "invalid_response", str(exc)
        return "success", ""
