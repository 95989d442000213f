"""Command line: `letta-environments-exporter` and `python -m exporter`."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler  # type: ignore[import-untyped]
from apscheduler.triggers.interval import IntervalTrigger  # type: ignore[import-untyped]
from prometheus_client import disable_created_metrics
from pydantic import SecretStr

from exporter import __version__, logs
from exporter.client import EnvironmentsClient
from exporter.config import Config, load_config
from exporter.errors import ConfigError
from exporter.fleet import newest_release
from exporter.poller import Poller
from exporter.release_lookup import ReleaseLookup
from exporter.selfmetrics import ExporterMetrics
from exporter.server import ExporterHTTPServer, parse_listen_address, serve_in_background
from exporter.store import Store
from exporter.webconfig import load_web_config

log = logging.getLogger("exporter")
PROG = "letta-environments-exporter"


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    try:
        invocation = load_config(
            sys.argv[1:] if argv is None else argv, os.environ if environ is None else environ
        )
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    config = invocation.config
    logs.configure(config.log_level, config.log_format)
    # `_created` series double every counter for no use to this exporter's readers.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    simulator = None
    if config.demo:
        from letta_simulator import start_simulator

        simulator = start_simulator(fleet_size=config.demo_fleet_size)
        demo_changes: dict[str, object] = {
            "base_url": simulator.url,
            "api_key": config.api_key
            if config.api_key.get_secret_value()
            else SecretStr("demo-key"),
        }
        if not invocation.explicit_registry_url:
            demo_changes["version_registry_url"] = f"{simulator.url}/_registry"
        if not invocation.explicit_pypi_url:
            demo_changes["version_pypi_url"] = f"{simulator.url}/_pypi"
        config = config.model_copy(update=demo_changes)
    try:
        if invocation.once:
            return _run_once(config)
        return _run_forever(config)
    finally:
        if simulator is not None:
            simulator.close()


@dataclass(frozen=True)
class _Polling:
    """Everything a poll needs, wired once for both run modes; `close` releases it."""

    store: Store
    client: EnvironmentsClient
    lookups: tuple[ReleaseLookup, ...]
    poller: Poller

    def close(self) -> None:
        self.client.close()
        for lookup in self.lookups:
            lookup.close()

    def refresh_releases(self, timeout: float) -> None:
        """Every registry once, side by side, waited for at most ``timeout`` (a lookup's own
        deadline: what outlasts it, a slow name lookup say, goes on in the background)."""
        threads = [
            threading.Thread(
                target=lookup.refresh, name=f"release-lookup-{lookup.registry}", daemon=True
            )
            for lookup in self.lookups
        ]
        for thread in threads:
            thread.start()
        waited_until = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, waited_until - time.monotonic()))


def _asked(config: Config) -> tuple[str, ...]:
    """The registries whose release lookup runs."""
    return tuple(settings.registry for settings in config.lookup_settings())


def _polling(config: Config, metrics: ExporterMetrics) -> _Polling:
    store = Store()
    client = EnvironmentsClient(config.client_settings(), observe=metrics.observe_request)
    lookups = tuple(
        ReleaseLookup(settings, observe=metrics.observe_release_lookup)
        for settings in config.lookup_settings()
    )
    poller = Poller(
        config.poll_settings(),
        client,
        store,
        metrics,
        releases=lambda: newest_release(lookup.current for lookup in lookups),
    )
    return _Polling(store=store, client=client, lookups=lookups, poller=poller)


def _run_once(config: Config) -> int:
    metrics = ExporterMetrics(config.poll_interval, process=False, registries=_asked(config))
    polling = _polling(config, metrics)
    try:
        polling.refresh_releases(config.version_registry_timeout)
        ok = polling.poller.poll_once()
    finally:
        polling.close()
    fleet = polling.store.fleet
    if not ok or fleet is None:
        print(f"{PROG}: error: the poll failed (see the log above)", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(fleet.plain + metrics.render())
    sys.stdout.flush()
    return 0


class _StopRequested(Exception):
    """Raised by the signal handler to end the main loop."""


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    # No locks in a signal handler (an Event.set() here can deadlock against itself when
    # signals arrive in a burst): raise instead, and let a second signal end the process.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise _StopRequested


def _run_forever(config: Config) -> int:
    try:
        web = load_web_config(config.web_config_file)
    except ConfigError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    metrics = ExporterMetrics(config.poll_interval, registries=_asked(config))
    polling = _polling(config, metrics)
    poller = polling.poller
    try:
        host, port = parse_listen_address(config.listen_address)
        server = ExporterHTTPServer(
            (host, port),
            store=polling.store,
            metrics=metrics,
            telemetry_path=config.telemetry_path,
            max_data_age=config.effective_max_data_age,
            web=web,
        )
    except OSError as exc:
        print(
            f"{PROG}: error: cannot listen on {config.listen_address}: {exc.strerror}",
            file=sys.stderr,
        )
        polling.close()
        return 2
    serve_in_background(server)
    bound_port = server.server_port
    shown = "localhost" if host in ("0.0.0.0", "") else host
    log.info(
        "letta-environments-exporter %s polling %s every %gs; metrics at %s://%s:%s%s",
        __version__,
        config.base_url,
        config.poll_interval,
        server.scheme,
        shown,
        bound_port,
        config.telemetry_path,
    )
    if config.demo:
        print(
            f"Demo: simulated fleet at {config.base_url}; open "
            f"http://{shown}:{bound_port}{config.telemetry_path} (Ctrl-C to stop)",
            file=sys.stderr,
            flush=True,
        )

    # Once before the first poll (bounded by the registry timeout), so that the first fleet
    # already compares against the registries' release; then each on its own schedule.
    polling.refresh_releases(config.version_registry_timeout)
    scheduler = BackgroundScheduler(timezone=UTC)
    for lookup in polling.lookups:
        scheduler.add_job(
            lookup.refresh,
            IntervalTrigger(seconds=config.version_refresh_interval),
            id=f"release-lookup-{lookup.registry}",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
    scheduler.add_job(
        poller.poll_once,
        IntervalTrigger(seconds=config.poll_interval, jitter=config.poll_jitter or None),
        id="poll",
        # A tick while a poll still runs reaches the poller, which counts it and logs the
        # overrun once; with 1, the scheduler would warn at every tick instead.
        max_instances=2,
        coalesce=True,
        misfire_grace_time=None,
        next_run_time=datetime.now(UTC),
    )
    scheduler.start()

    signal.signal(signal.SIGTERM, _on_stop_signal)
    signal.signal(signal.SIGINT, _on_stop_signal)
    try:
        while True:
            # Not signal.pause(): a signal the kernel hands to another thread (the process'
            # SIGTERM may land on any) would leave it asleep; the handler runs in this thread
            # within a second instead.
            time.sleep(1.0)
    except _StopRequested:
        pass
    log.info("shutting down")
    poller.stop()  # a poll under way is abandoned when its client closes below
    scheduler.shutdown(wait=False)
    server.shutdown()
    server.server_close()
    polling.close()
    return 0
