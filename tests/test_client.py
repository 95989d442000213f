"""Pagination, retries and guards of the API client, over httpx.MockTransport (no patching)."""

from __future__ import annotations

import email.utils
import gzip
import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from exporter.client import EnvironmentsClient, parse_retry_after
from exporter.errors import (
    AuthError,
    HTTPStatusError,
    InvalidResponseError,
    PaginationError,
    RateLimitedError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)
from tests.conftest import API_KEY, client_settings

NOW = 1_800_000_000.0


def _row(env_id: str) -> dict[str, Any]:
    return {
        "id": env_id,
        "connectedAt": None,
        "connectionId": None,
        "connectionName": env_id,
        "deviceId": "d",
        "firstSeenAt": 1,
        "lastHeartbeat": None,
        "lastSeenAt": 2,
        "organizationId": "o",
        "podId": None,
    }


def _page(ids: list[str], more: bool) -> httpx.Response:
    return httpx.Response(200, json={"connections": [_row(i) for i in ids], "hasNextPage": more})


class FakeClock:
    """A monotonic clock that sleeping advances; records every sleep."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _client(
    handler: Callable[[httpx.Request], httpx.Response],
    clock: FakeClock | None = None,
    codes: list[str] | None = None,
    **config: Any,
) -> EnvironmentsClient:
    clock = clock or FakeClock()
    return EnvironmentsClient(
        client_settings(**config),
        transport=httpx.MockTransport(handler),
        observe=(codes.append if codes is not None else None),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        wall_clock=lambda: NOW,
        jitter=lambda: 1.0,
    )


def _ids(client: EnvironmentsClient, deadline: float = 10_000.0) -> list[str]:
    return [c.id for p in client.iter_pages(deadline) for c in p.rows.connections]


def test_pages_follow_the_cursor_with_every_filter_as_strings() -> None:
    seen: list[dict[str, str]] = []
    pages = {None: (["a", "b"], True), "b": (["c", "d"], True), "d": (["e"], False)}

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/environments"
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        params = dict(request.url.params)
        seen.append(params)
        return _page(*pages[params.get("after")])

    client = _client(handler, page_size=2, online_only=True, source="remote", user_id="user-7")
    assert _ids(client) == ["a", "b", "c", "d", "e"]
    assert seen[0] == {"limit": "2", "onlineOnly": "true", "source": "remote", "userId": "user-7"}
    assert [p.get("after") for p in seen] == [None, "b", "d"]


def test_no_filters_are_sent_unless_configured() -> None:
    seen: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return _page(["a"], False)

    assert _ids(_client(handler)) == ["a"]
    assert seen == [{"limit": "100"}]


def test_a_server_that_returns_fewer_rows_than_asked_is_paged_to_the_end() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        start = 0 if after is None else int(after[1:]) + 1
        ids = [f"e{i:03d}" for i in range(start, min(start + 7, 30))]
        return _page(ids, start + 7 < 30)

    assert _ids(_client(handler, page_size=100)) == [f"e{i:03d}" for i in range(30)]


def test_early_end_stops_even_when_the_page_is_full() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return _page(["a", "b"], False)

    assert _ids(_client(handler, page_size=2)) == ["a", "b"]
    assert len(calls) == 1


def test_a_repeated_cursor_is_a_pagination_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _page(["a", "b"], True)  # the same page forever

    with pytest.raises(PaginationError, match="repeats cursor"):
        _ids(_client(handler))


def test_an_empty_page_that_claims_more_is_a_pagination_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return _page(["a"], True) if "after" not in request.url.params else _page([], True)

    with pytest.raises(PaginationError, match="empty but hasNextPage"):
        _ids(_client(handler))


def test_max_pages_bounds_a_poll() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after", "0")
        return _page([str(int(after) + 1)], True)

    with pytest.raises(PaginationError, match="max-pages=5"):
        _ids(_client(handler, max_pages=5))


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_retryable_statuses_are_retried_with_capped_exponential_backoff(status: int) -> None:
    responses = [httpx.Response(status)] * 3 + [_page(["a"], False)]
    clock, codes = FakeClock(), []

    def handler(request: httpx.Request) -> httpx.Response:
        return responses.pop(0)

    client = _client(handler, clock, codes, max_retries=3, retry_backoff=0.5, retry_backoff_max=1.5)
    assert _ids(client) == ["a"]
    assert clock.sleeps == [0.5, 1.0, 1.5]  # doubled, capped; jitter fixed at 1.0 here
    assert codes == [str(status)] * 3 + ["200"]


def test_full_jitter_scales_the_backoff() -> None:
    responses = [httpx.Response(503), _page(["a"], False)]
    clock = FakeClock()
    client = EnvironmentsClient(
        client_settings(retry_backoff=2.0),
        transport=httpx.MockTransport(lambda r: responses.pop(0)),
        sleep=clock.sleep,
        monotonic=clock.monotonic,
        jitter=lambda: 0.25,
    )
    assert _ids(client) == ["a"]
    assert clock.sleeps == [0.5]


def test_retries_give_up_after_max_retries_with_the_right_error() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(429)

    with pytest.raises(RateLimitedError, match="after 3 attempt"):
        _ids(_client(handler, max_retries=2))
    assert len(calls) == 3
    with pytest.raises(HTTPStatusError, match="HTTP 502"):
        _ids(_client(lambda r: httpx.Response(502), max_retries=1))


@pytest.mark.parametrize("status", [401, 403])
def test_auth_failures_are_not_retried_and_say_what_is_wrong(status: int) -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(status)

    with pytest.raises(AuthError, match="API key is invalid") as info:
        _ids(_client(handler))
    assert len(calls) == 1
    assert API_KEY not in str(info.value)


def test_other_client_errors_are_not_retried() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(404)

    with pytest.raises(HTTPStatusError, match="HTTP 404"):
        _ids(_client(handler))
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": email.utils.formatdate(NOW + 12, usegmt=True)}, 12.0),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
    ],
)
def test_retry_after_is_honoured(headers: dict[str, str], expected: float) -> None:
    responses = [httpx.Response(429, headers=headers), _page(["a"], False)]
    clock = FakeClock()
    assert _ids(_client(lambda r: responses.pop(0), clock)) == ["a"]
    assert clock.sleeps == [pytest.approx(expected)]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, 0.0),
        ({"retry-after-ms": "x", "Retry-After": "2"}, 2.0),
        ({"Retry-After": email.utils.formatdate(NOW - 60, usegmt=True)}, 0.0),
    ],
)
def test_parse_retry_after_edge_cases(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(httpx.Headers(headers), NOW) == expected


def test_a_retry_after_past_the_deadline_fails_now_instead_of_sleeping() -> None:
    clock = FakeClock()
    client = _client(lambda r: httpx.Response(429, headers={"Retry-After": "120"}), clock)
    with pytest.raises(RateLimitedError, match="deadline"):
        _ids(client, deadline=clock.now + 60)
    assert clock.sleeps == []


def test_the_next_poll_waits_out_a_retry_after_before_calling_again() -> None:
    clock, calls = FakeClock(), []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(clock.now)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "30"})
        return _page(["a"], False)

    client = _client(handler, clock, max_retries=0)
    with pytest.raises(RateLimitedError):
        _ids(client, deadline=clock.now + 100)
    assert _ids(client, deadline=clock.now + 100) == ["a"]
    assert calls[1] - calls[0] == pytest.approx(30)


def test_backoff_never_sleeps_past_the_poll_deadline() -> None:
    clock = FakeClock()
    client = _client(
        lambda r: httpx.Response(503),
        clock,
        max_retries=10,
        retry_backoff=4.0,
        retry_backoff_max=64.0,
    )
    with pytest.raises(HTTPStatusError, match="deadline"):
        _ids(client, deadline=clock.now + 20)
    assert sum(clock.sleeps) < 20


@pytest.mark.parametrize(
    ("exc", "error", "code"),
    [
        (httpx.ReadTimeout("slow"), UpstreamTimeoutError, "timeout"),
        (httpx.ConnectTimeout("slow"), UpstreamTimeoutError, "timeout"),
        (httpx.ConnectError("refused"), UpstreamConnectionError, "connection_error"),
        (httpx.RemoteProtocolError("truncated"), UpstreamConnectionError, "connection_error"),
    ],
)
def test_transport_failures_are_retried_then_translated(
    exc: Exception, error: type[Exception], code: str
) -> None:
    codes: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    with pytest.raises(error):
        _ids(_client(handler, codes=codes, max_retries=2))
    assert codes == [code] * 3

    outcomes: list[Any] = [exc, _page(["a"], False)]

    def recovering(request: httpx.Request) -> httpx.Response:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert _ids(_client(recovering)) == ["a"]


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"connections": [', b'{"rows": []}'])
def test_a_body_that_is_not_the_documented_list_is_an_invalid_response(body: bytes) -> None:
    with pytest.raises(InvalidResponseError, match="page 1"):
        _ids(_client(lambda r: httpx.Response(200, content=body)))


def test_invalid_rows_are_reported_per_page_not_raised() -> None:
    rows = [_row("a"), {**_row("b"), "lastSeenAt": "never"}]

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"connections": rows, "hasNextPage": False}))

    (fetched,) = list(_client(handler).iter_pages(10_000))
    assert [c.id for c in fetched.rows.connections] == ["a"]
    assert len(fetched.rows.invalid) == 1
    assert fetched.received_at == NOW


def test_a_page_with_more_rows_than_asked_is_accepted_but_rows_are_bounded_per_poll() -> None:
    def pages(last: int) -> Callable[[httpx.Request], httpx.Response]:
        def handler(request: httpx.Request) -> httpx.Response:
            page = int(request.url.params.get("after", "p0-0")[1:].split("-")[0]) + 1
            return _page([f"p{page}-{i:03d}" for i in range(300)], page < last)  # limit: 100

        return handler

    assert len(_ids(_client(pages(3), page_size=100, max_rows=1000))) == 900
    with pytest.raises(PaginationError, match=r"more than --letta.max-rows=1000 rows \(1200 with"):
        _ids(_client(pages(10), page_size=100, max_rows=1000))


def test_a_flood_of_json_values_is_refused_before_decoding() -> None:
    codes: list[str] = []
    body = b'{"connections": [' + b"{}," * 400_000 + b'{}], "hasNextPage": false}'
    client = _client(
        lambda r: httpx.Response(200, content=body), codes=codes, max_response_size=2 << 20
    )
    with pytest.raises(
        InvalidResponseError,
        match=r"holds 800006 JSON values; real rows filling --letta.max-response-size=2MiB "
        r"hold at most 262144$",
    ):
        _ids(client)
    assert codes == ["200"]  # not retried


def test_an_answer_over_the_cap_is_cut_off_and_not_retried() -> None:
    codes: list[str] = []
    body = gzip.compress(b'{"connections": [' + b" " * (3 << 20) + b'], "hasNextPage": false}')
    client = _client(
        lambda r: httpx.Response(200, headers={"content-encoding": "gzip"}, stream=_Stream(body)),
        codes=codes,
        max_response_size=1 << 20,
    )
    with pytest.raises(InvalidResponseError, match=r"inflates to more than 1MiB \(--letta.max"):
        _ids(client)
    assert codes == ["200"]


def test_an_error_page_is_read_only_when_small() -> None:
    stream = _Stream(b"x" * (10 << 20))
    client = _client(lambda r: httpx.Response(404, stream=stream))
    with pytest.raises(HTTPStatusError, match="HTTP 404"):
        _ids(client)
    assert stream.sent <= 64 * 1024 + 64 * 1024  # the limit, and one chunk


class _Stream(httpx.SyncByteStream):
    """A body streamed in 64 KiB chunks, counting what was taken."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sent = 0

    def __iter__(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), 64 * 1024):
            chunk = self.data[start : start + 64 * 1024]
            self.sent += len(chunk)
            yield chunk


def test_the_api_key_is_not_in_the_client_repr() -> None:
    client = _client(lambda r: _page([], False))
    assert API_KEY not in repr(client)
