"""The current Letta Code release, as its own updater sees it: the npm registry's `latest` tag.

Looked up on its own schedule (hourly by default), cached; a failed lookup keeps the last good
answer and never fails a poll.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Callable
from datetime import datetime
from types import MappingProxyType
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exporter import __version__, clock
from exporter.config import Config
from exporter.fleet import ReleaseInfo

log = logging.getLogger(__name__)

LOOKUP_RESULTS = ("success", "http_error", "timeout", "connection_error", "invalid_response")


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
    return ReleaseInfo(latest=latest, published=MappingProxyType(published), fetched_at=fetched_at)


class ReleaseLookup:
    """Asks the registry for the package's document; keeps the last good answer."""

    def __init__(
        self,
        config: Config,
        *,
        transport: httpx.BaseTransport | None = None,
        observe: Callable[[str], None] | None = None,
        wall_clock: Callable[[], float] = clock.wall_clock,
    ) -> None:
        self._url = f"{config.version_registry_url}/{quote(config.version_package, safe='@')}"
        self._observe = observe or (lambda result: None)
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        self._failing: str | None = None
        self.current: ReleaseInfo | None = None
        verify: ssl.SSLContext | bool = True
        if config.ca_file is not None:
            # The registry is public: trust the system CAs, and the Letta API's CA as well
            # (a TLS-inspecting proxy in front of both is the usual reason for a CA file).
            verify = ssl.create_default_context()
            verify.load_verify_locations(cafile=str(config.ca_file))
        self._http = httpx.Client(
            timeout=config.version_registry_timeout,
            headers={
                "Accept": "application/json",
                "User-Agent": f"letta-environments-exporter/{__version__}",
            },
            transport=transport,
            verify=verify,
            follow_redirects=True,
        )

    def close(self) -> None:
        self._http.close()

    def refresh(self) -> bool:
        """Look the release up once; never raises. True when the answer was refreshed."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            result, detail = self._lookup()
        finally:
            self._lock.release()
        self._observe(result)
        if result == "success":
            if self._failing is not None:
                log.info("release lookup recovered")
            self._failing = None
            return True
        if self._failing != result:
            log.warning(
                "release lookup failed (%s): %s; keeping %s",
                result,
                detail,
                self.current.latest if self.current else "the fleet's newest release",
            )
        self._failing = result
        return False

    def _lookup(self) -> tuple[str, str]:
        try:
            response = self._http.get(self._url)
        except httpx.TimeoutException as exc:
            return "timeout", type(exc).__name__
        except httpx.TransportError as exc:
            return "connection_error", type(exc).__name__
        if response.status_code != 200:
            return "http_error", f"HTTP {response.status_code} from {self._url}"
        try:
            self.current = parse_packument(response.content, self._wall_clock())
        except ValueError as exc:
            return "invalid_response", str(exc)
        return "success", ""
