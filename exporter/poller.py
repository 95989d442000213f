"""One poll: page through the API, build a snapshot, render it, publish it whole.

This is the job boundary: upstream errors are caught here, counted, logged once per streak,
and the last good snapshot stays.
"""

from __future__ import annotations

import gc
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from exporter import clock
from exporter.client import EnvironmentsClient
from exporter.errors import UpstreamError
from exporter.fleet import ReleaseInfo
from exporter.rendering import RenderOptions, render_fleet
from exporter.selfmetrics import ExporterMetrics
from exporter.snapshot import SnapshotBuilder
from exporter.store import GZIP_LEVEL, GzipPrefix, PublishedExposition, Store

log = logging.getLogger(__name__)

# While a poll runs, a scrape waiting for the GIL gets it within 0.2 ms rather than 5 ms (the
# default), so that its p99 stays near idle; measured in bench/ at no visible cost to the poll.
POLL_SWITCH_INTERVAL = 0.0002


@contextmanager
def _quiet_collector() -> Iterator[None]:
    """Pause the cyclic GC: a poll allocates many small objects and makes no cycles worth it
    (but httpx's: see `_fetch`); full collections over the rows would double the parse time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@contextmanager
def _scrapes_first() -> Iterator[None]:
    """Hand the GIL to a waiting thread (a scrape) sooner while a poll keeps it busy."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(min(previous, POLL_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


@dataclass(frozen=True, slots=True)
class PollSettings:
    """What a poll reads: its deadline, the interval it should keep within, how to render."""

    timeout: float
    interval: float
    render: RenderOptions


class Poller:
    """Owns all upstream I/O; ``poll_once`` never raises."""

    def __init__(
        self,
        settings: PollSettings,
        client: EnvironmentsClient,
        store: Store,
        metrics: ExporterMetrics,
        *,
        releases: Callable[[], ReleaseInfo | None] = lambda: None,
        wall_clock: Callable[[], float] = clock.wall_clock,
        monotonic: Callable[[], float] = clock.monotonic,
    ) -> None:
        self._settings = settings
        self._releases = releases
        self._client = client
        self._store = store
        self._metrics = metrics
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._started = 0.0  # when the running poll started
        self._skipped = 0  # polls skipped while this one runs
        self._overrunning = False  # in a streak of polls that overran the interval
        self._failing: str | None = None  # the failure kind of the current streak
        self._last_invalid = 0

    def poll_once(self) -> bool:
        """Poll, publish on success; True when the poll succeeded.

        Called while a poll still runs (it overran the interval), it returns at once: the
        skip is counted, and logged once for a streak of overrunning polls, not every tick.
        """
        if not self._lock.acquire(blocking=False):
            self._metrics.polls_skipped.inc()
            self._skipped += 1
            level = logging.DEBUG if self._overrunning else logging.WARNING
            self._overrunning = True
            log.log(
                level,
                "a poll is still running after %.1fs (interval %gs); polls are skipped until "
                "it ends",
                self._monotonic() - self._started,
                self._settings.interval,
            )
            return False
        try:
            self._started = self._monotonic()
            self._skipped = 0
            return self._poll()
        finally:
            if not self._skipped:
                self._overrunning = False  # a poll that kept within its interval ends a streak
            self._lock.release()

    def stop(self) -> None:
        """The exporter is shutting down: a poll that fails from now on was abandoned, not
        failed, and is neither counted nor logged as an error."""
        self._stopping.set()

    def _poll(self) -> bool:
        started = self._started
        try:
            with _quiet_collector(), _scrapes_first():
                fleet = self._fetch(started + self._settings.timeout)
        except Exception as exc:
            if self._stopping.is_set():  # its client was closed under it
                log.info("poll abandoned: the exporter is shutting down")
                return False
            if isinstance(exc, UpstreamError):
                self._fail(exc.kind, str(exc), started)
                return False
            # A bug must not stop the schedule; keep the last good fleet.
            log.exception("poll failed unexpectedly")
            self._fail("internal_error", "internal error", started)
            return False
        self._store.publish(fleet)
        duration = self._monotonic() - started
        self._metrics.poll_duration.set(duration)
        self._metrics.polls.labels(result="success").inc()
        self._metrics.up.set(1)
        self._metrics.last_success.set(fleet.completed_at)
        if self._failing is not None:
            log.info("poll recovered after %s", self._failing)
            self._failing = None
        log.debug("poll succeeded: %d environments in %.3fs", fleet.environments, duration)
        return True

    def _fetch(self, deadline: float) -> PublishedExposition:
        builder = SnapshotBuilder()
        first_invalid = None
        for fetched in self._client.iter_pages(deadline):
            invalid = fetched.rows.invalid
            if invalid and first_invalid is None:
                first_invalid = invalid[0]
            builder.add(fetched.received_at, fetched.rows.connections, len(invalid))
            del fetched  # the page's models go now: the collection below need not walk them
            # The young generation only: it frees what each request leaves in reference cycles
            # (httpx's request and response objects, ~5 KB a request, no body among them)
            # without walking the rows kept so far.
            gc.collect(0)
        snapshot = builder.build(self._wall_clock())
        if builder.invalid_records:
            self._metrics.invalid_records.inc(builder.invalid_records)
        if builder.invalid_records != self._last_invalid:
            # Logged when the count changes, not every poll: one bad row is not a log storm.
            level = logging.WARNING if builder.invalid_records else logging.INFO
            log.log(
                level,
                "skipped %d invalid upstream row(s)%s",
                builder.invalid_records,
                f"; first: {first_invalid}" if first_invalid else "",
            )
            self._last_invalid = builder.invalid_records
        if builder.duplicates:
            log.debug("ignored %d row(s) seen on an earlier page", builder.duplicates)
        rendered = render_fleet(snapshot, self._settings.render, self._releases())
        if rendered.dropped_environments:
            self._metrics.dropped.inc(rendered.dropped_environments)
        completed_at = snapshot.completed_at
        # The snapshot is not kept, and is let go before compressing: scrapes need only bytes.
        del snapshot
        builder.discard()
        return PublishedExposition(
            plain=rendered.text,
            gzipped=GzipPrefix(rendered.text, GZIP_LEVEL),
            environments=rendered.environments,
            completed_at=completed_at,
            published_monotonic=self._monotonic(),
        )

    def _fail(self, kind: str, message: str, started: float) -> None:
        self._metrics.poll_duration.set(self._monotonic() - started)
        self._metrics.polls.labels(result=kind).inc()
        self._metrics.up.set(0)
        if self._failing != kind:
            log.error("poll failed (%s): %s; serving the last good fleet", kind, message)
            self._failing = kind
        else:
            log.debug("poll failed again (%s): %s", kind, message)
