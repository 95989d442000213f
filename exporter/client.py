"""HTTP client of the Letta Environments API: cursor pagination, retries, guards.

It knows nothing of metrics: each request's outcome is reported to an optional observer
(``"200"``, ``"429"``, ``"timeout"``, ...), and failures are raised as ``UpstreamError``s.
"""

from __future__ import annotations

import contextlib
import email.utils
import logging
import math
import random
import ssl
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from exporter import __version__, clock
from exporter.body import (
    ACCEPT_ENCODING,
    BodyError,
    BodyTooLargeError,
    DeadlinePassedError,
    read_body,
)
from exporter.errors import (
    AuthError,
    HTTPStatusError,
    InvalidResponseError,
    PaginationError,
    RateLimitedError,
    UpstreamConnectionError,
    UpstreamError,
    UpstreamTimeoutError,
)
from exporter.models import InvalidJSONError, Page, ValidationError, ValidRows, load_page
from exporter.sockets import OpenSockets
from exporter.units import format_size

log = logging.getLogger(__name__)

LIST_PATH = "/v1/environments"
RETRYABLE_STATUS = frozenset({408, 409, 429})
# A page may hold one JSON value per this many bytes of --letta.max-response-size. Real rows
# hold one per 9 bytes (only the required fields) to ~15 (the simulator's fleet), so a real page
# under the cap passes; without it, 1 MiB of `[{},{},...]` decodes to 25 MiB of dicts, with it
# decoding costs at most ~10x the cap (measured: short distinct strings, the worst case).
BYTES_PER_VALUE = 8
ERROR_BODY_LIMIT = 64 * 1024  # an error page larger than this is not read, the connection dropped


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """What the client reads: where the API is, how to call it, which rows and how many."""

    base_url: str
    api_key: SecretStr
    ca_file: Path | None
    request_timeout: float
    max_retries: int
    retry_backoff: float
    retry_backoff_max: float
    page_size: int
    max_pages: int
    max_rows: int
    max_response_size: int
    online_only: bool
    source: str | None
    user_id: str | None


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """A page's valid rows and the wall-clock time its body arrived."""

    rows: ValidRows
    received_at: float


def parse_retry_after(headers: httpx.Headers, now: float) -> float | None:
    """Seconds to wait from `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


class EnvironmentsClient:
    """Pages through `GET /v1/environments` with one reused `httpx.Client`."""

    def __init__(
        self,
        settings: ClientSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        observe: Callable[[str], None] | None = None,
        sleep: Callable[[float], object] | None = None,
        monotonic: Callable[[], float] = clock.monotonic,
        wall_clock: Callable[[], float] = clock.wall_clock,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._settings = settings
        self._observe = observe or (lambda code: None)
        self._closed = threading.Event()
        # Waits end early when the client is closed: a shutdown does not sit out a backoff.
        self._sleep = sleep or self._closed.wait
        self._sockets = OpenSockets()
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._jitter = jitter
        self._not_before = 0.0  # monotonic time before which upstream asked us not to call
        # One worker for every poll: a request the deadline gave up on (headers trickling in
        # a byte at a time) delays the next poll's requests, never piles up threads.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fetch")
        verify: ssl.SSLContext | bool = True
        if settings.ca_file is not None:
            verify = ssl.create_default_context(cafile=str(settings.ca_file))
        self._http = httpx.Client(
            base_url=settings.base_url,
            headers={
                "Authorization": f"Bearer {settings.api_key.get_secret_value()}",
                "Accept": "application/json",
                "Accept-Encoding": ACCEPT_ENCODING,
                "User-Agent": f"letta-environments-exporter/{__version__}",
            },
            timeout=settings.request_timeout,
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        """Release the connections; a request in flight ends at once, failing its poll."""
        self._closed.set()
        self._worker.shutdown(wait=False, cancel_futures=True)
        self._sockets.shut_down()
        self._http.close()

    def __repr__(self) -> str:
        return f"EnvironmentsClient(base_url={self._settings.base_url!r})"

    def iter_pages(self, deadline: float) -> Iterator[FetchedPage]:
        """Every page of the list, in order; ``deadline`` is a `time.monotonic()` value.

        Requests run on a worker thread and the poll waits for each only until its deadline,
        so that no upstream (a body trickling in a byte at a time, headers that never end)
        holds a poll past it. While a page's rows are validated, the next page is already
        being fetched: its cursor is known once the body is decoded. One request is in
        flight at a time, as without it.
        """
        params: dict[str, str] = {"limit": str(self._settings.page_size)}
        if self._settings.online_only:
            params["onlineOnly"] = "true"
        if self._settings.source:
            params["source"] = self._settings.source
        if self._settings.user_id:
            params["userId"] = self._settings.user_id
        cursors: set[str] = set()
        rows = 0
        pending = self._worker.submit(self._fetch, dict(params), deadline)
        next_page: Future[tuple[bytes, float]] | None = None
        try:
            for number in range(1, self._settings.max_pages + 1):
                body, received_at = self._result(pending, deadline, number)
                loaded = self._load(number, body)
                del body
                rows += len(loaded.rows)
                if rows > self._settings.max_rows:
                    raise PaginationError(
                        f"more than --letta.max-rows={self._settings.max_rows} rows "
                        f"({rows} with page {number})"
                    )
                cursor = loaded.last_id
                repeated = cursor is not None and cursor in cursors
                next_page = None
                if loaded.has_next_page and cursor is not None and not repeated:
                    cursors.add(cursor)
                    params["after"] = cursor
                    if number < self._settings.max_pages:
                        sent = threading.Event()
                        next_page = self._worker.submit(self._fetch, dict(params), deadline, sent)
                        # Validating holds the GIL in stretches: let the request leave first.
                        sent.wait(self._left(deadline))
                has_next_page = loaded.has_next_page
                fetched = FetchedPage(rows=loaded.validate(), received_at=received_at)
                del loaded  # the decoded JSON goes now, not once the next page is decoded
                yield fetched
                del fetched
                if not has_next_page:
                    return
                if cursor is None:
                    raise PaginationError(f"page {number} is empty but hasNextPage is true")
                if repeated:
                    raise PaginationError(f"page {number} repeats cursor {cursor[:64]!r}")
                if next_page is None:
                    break  # that was the last page --letta.max-pages allows
                pending = next_page
        finally:
            pending.cancel()  # a request not started yet is not made; one under way ends alone
            if next_page is not None:
                next_page.cancel()
        raise PaginationError(f"more than --letta.max-pages={self._settings.max_pages} pages")

    def _result(
        self, pending: Future[tuple[bytes, float]], deadline: float, number: int
    ) -> tuple[bytes, float]:
        """The fetched page, or a timeout once the poll's deadline has passed."""
        try:
            return pending.result(timeout=self._left(deadline))
        except FutureTimeoutError:
            # The request goes on in the worker until its next read, and stops there.
            raise UpstreamTimeoutError(
                f"the poll's deadline passed while page {number} was arriving"
            ) from None

    def _left(self, deadline: float) -> float | None:
        """Seconds to wait for the worker until ``deadline``; None (no limit) for infinity."""
        return None if deadline == math.inf else max(0.0, deadline - self._monotonic())

    def _load(self, number: int, body: bytes) -> Page:
        try:
            return load_page(body)
        except InvalidJSONError as exc:
            raise InvalidResponseError(f"page {number}: {exc}") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = ".".join(str(part) for part in first["loc"]) or "body"
            raise InvalidResponseError(
                f"page {number}: not an environment list ({where}: {first['msg']})"
            ) from None

    def _fetch(
        self, params: dict[str, str], deadline: float, sent: threading.Event | None = None
    ) -> tuple[bytes, float]:
        """One page's body and the wall-clock time it arrived; ``sent`` is set once the
        request is on the wire (or when there is no more to wait for)."""
        try:
            body = self._get(params, deadline, sent)
        finally:
            if sent is not None:
                sent.set()
        return body, self._wall_clock()

    def _get(
        self, params: dict[str, str], deadline: float, sent: threading.Event | None = None
    ) -> bytes:
        """One page's body, with retries; raises an ``UpstreamError`` when it cannot."""
        attempt = 0
        while True:
            self._wait_until(self._not_before, deadline)
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                raise UpstreamTimeoutError("the poll's deadline passed before the page arrived")
            error: UpstreamError
            retry_after: float | None = None
            try:
                status, headers, body = self._request(
                    params, min(self._settings.request_timeout, remaining), deadline, sent
                )
            except httpx.TimeoutException as exc:
                self._observe("timeout")
                error = UpstreamTimeoutError(f"{type(exc).__name__} calling {LIST_PATH}")
            except httpx.TransportError as exc:
                self._observe("connection_error")
                error = UpstreamConnectionError(f"{type(exc).__name__} calling {LIST_PATH}")
            except DeadlinePassedError:
                self._observe("timeout")
                raise UpstreamTimeoutError(
                    f"the poll's deadline passed while the answer from {LIST_PATH} was arriving"
                ) from None
            except BodyTooLargeError as exc:
                self._observe("200")  # not retried: the same upstream would send the same
                size = format_size(self._settings.max_response_size)
                raise InvalidResponseError(
                    f"the answer from {LIST_PATH} {exc} (--letta.max-response-size={size})"
                ) from None
            except BodyError as exc:
                self._observe("200")
                raise InvalidResponseError(f"the answer from {LIST_PATH}: {exc}") from None
            else:
                self._observe(str(status))
                if body is not None:
                    self._check_values(body)
                    return body
                if status in (401, 403):
                    raise AuthError(
                        f"HTTP {status} from {LIST_PATH}: the API key is invalid or not allowed "
                        "to list environments"
                    )
                retry_after = parse_retry_after(headers, self._wall_clock())
                if status == 429:
                    error = RateLimitedError(f"HTTP 429 from {LIST_PATH}")
                else:
                    error = HTTPStatusError(f"HTTP {status} from {LIST_PATH}")
                if status not in RETRYABLE_STATUS and status < 500:
                    raise error
            if retry_after is not None:
                self._not_before = self._monotonic() + retry_after
            if attempt >= self._settings.max_retries or self._closed.is_set():
                raise _with_note(error, f"after {attempt + 1} attempt(s)")
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            if self._monotonic() + delay >= deadline:
                raise _with_note(error, "the next retry would pass the poll's deadline")
            log.debug("retrying %s in %.2fs: %s", LIST_PATH, delay, error)
            self._sleep(delay)
            attempt += 1

    def _request(
        self,
        params: dict[str, str],
        timeout: float,
        deadline: float,
        sent: threading.Event | None,
    ) -> tuple[int, httpx.Headers, bytes | None]:
        """One request: its status, headers, and its body when the status is 2xx.

        The body is streamed under --letta.max-response-size; an error's body is read only
        when it is small (so that the connection can be used again), and never kept.
        """
        with self._http.stream(
            "GET",
            LIST_PATH,
            params=params,
            timeout=timeout,
            extensions={"trace": self._sockets.trace(_trace_sent(sent))},
        ) as response:
            status = response.status_code
            limit = self._settings.max_response_size
            if not 200 <= status < 300:
                with contextlib.suppress(BodyError):
                    read_body(
                        response, ERROR_BODY_LIMIT, deadline=deadline, monotonic=self._monotonic
                    )
                return status, response.headers, None
            body = read_body(response, limit, deadline=deadline, monotonic=self._monotonic)
            return status, response.headers, body

    def _check_values(self, body: bytes) -> None:
        """Refuse a body with more JSON values than real rows would fill the cap with.

        Each value but the first follows one of `,:[{`, so their count bounds the values.
        """
        values = sum(body.count(mark) for mark in (b",", b":", b"[", b"{"))
        allowed = self._settings.max_response_size // BYTES_PER_VALUE
        if values > allowed:
            raise InvalidResponseError(
                f"the answer from {LIST_PATH} holds {values} JSON values; real rows filling "
                f"--letta.max-response-size={format_size(self._settings.max_response_size)} "
                f"hold at most {allowed}"
            )

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter."""
        ceiling = min(self._settings.retry_backoff_max, self._settings.retry_backoff * 2**attempt)
        return float(ceiling * self._jitter())

    def _wait_until(self, not_before: float, deadline: float) -> None:
        delay = not_before - self._monotonic()
        if delay <= 0:
            return
        if self._monotonic() + delay >= deadline:
            raise RateLimitedError("upstream asked to wait (Retry-After) past the poll's deadline")
        self._sleep(delay)


def _trace_sent(sent: threading.Event | None) -> Callable[[str, dict[str, Any]], None] | None:
    """An httpcore `trace` callback that sets ``sent`` when the response is awaited."""
    if sent is None:
        return None

    def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith("receive_response_headers.started"):
            sent.set()

    return trace


def _with_note(error: UpstreamError, note: str) -> UpstreamError:
    return type(error)(f"{error} ({note})")
