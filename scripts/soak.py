#!/usr/bin/env python3
"""Soak: hundreds of polls of a churning simulated fleet, with RSS sampled as they go.

Everything runs in this process: the simulator (on loopback), the real client, poller and
HTTP server, so /proc/self/status shows the exporter's memory. A clock that advances one step
per poll makes the fleet churn (heartbeats advance, environments go stale, offline and back);
every few polls the whole fleet is replaced by one with new ids, as if the fleet turned over.
Before each sample the cyclic GC runs, so RSS shows what stays alive, not what awaits a sweep.

    python scripts/soak.py --polls 500 --fleet-size 2000
    python scripts/soak.py --polls 100 --fleet-size 500 --json   # what tests/test_soak.py runs

The verdict is `flat` when RSS after the warm-up grows by less than the threshold (exit 0),
else `growing` (exit 1).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import disable_created_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, beside scripts/

from pydantic import SecretStr

from bench.procs import memory_of
from exporter.client import EnvironmentsClient
from exporter.config import Config
from exporter.poller import Poller
from exporter.selfmetrics import ExporterMetrics
from exporter.server import ExporterHTTPServer, serve_in_background
from exporter.store import Store
from letta_simulator import SimulatedFleet, start_simulator

MIB = 1024 * 1024


class StepClock:
    """Wall-clock time that moves only when told to: one step per poll."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def soak(args: argparse.Namespace) -> dict[str, Any]:
    clock = StepClock()
    simulator = start_simulator(
        fleet_size=args.fleet_size, seed=1, api_key="soak", churn=True, clock=clock
    )
    config = Config(api_key=SecretStr("soak"), base_url=simulator.url, page_size=args.page_size)
    disable_created_metrics()  # as the exporter's command line does
    metrics = ExporterMetrics(config.poll_interval)
    state = Store()
    client = EnvironmentsClient(
        config.client_settings(), observe=metrics.observe_request, wall_clock=clock
    )
    poller = Poller(config.poll_settings(), client, state, metrics, wall_clock=clock)
    server = ExporterHTTPServer(
        ("127.0.0.1", 0),
        store=state,
        metrics=metrics,
        telemetry_path="/metrics",
        max_data_age=float("inf"),
    )
    serve_in_background(server)
    scraper = httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}", timeout=10)
    leaked: list[bytes] = []  # --leak: proves the verdict can say `growing`
    samples: list[dict[str, Any]] = []
    failed = 0
    started = time.monotonic()
    try:
        for number in range(args.polls + 1):
            if number and number % args.reseed_every == 0:  # the fleet turns over: new ids
                simulator.fleet = SimulatedFleet(
                    size=args.fleet_size, seed=number, churn=True, clock=clock
                )
            if number % 7 == 3:
                simulator.fleet.silence(fraction=0.2)
            elif number % 7 == 5:
                simulator.fleet.unsilence()
            clock.now += args.step
            if not poller.poll_once():
                failed += 1
            encoding = "gzip" if number % 2 else "identity"  # both paths, one scrape a poll
            response = scraper.get("/metrics", headers={"Accept-Encoding": encoding})
            if response.status_code != 200:
                raise RuntimeError(f"scrape failed: HTTP {response.status_code}")
            if args.leak:
                leaked.append(bytes([number % 256]) * args.leak)  # touched, so resident
            if number % args.sample_every == 0:
                gc.collect()
                fleet = state.fleet
                samples.append(
                    {
                        "poll": number,
                        "elapsed": round(time.monotonic() - started, 2),
                        "rss_mib": round(memory_of(os.getpid())["VmRSS"] / MIB, 2),
                        "environments": fleet.environments if fleet else 0,
                        "failed": failed,
                    }
                )
                if not args.json:
                    _print_row(samples[-1])
    finally:
        scraper.close()
        server.shutdown()
        server.server_close()
        client.close()
        simulator.close()
    return _verdict(samples, args, failed)


def _print_row(sample: dict[str, Any]) -> None:
    if sample["poll"] == 0:
        print(f"{'poll':>6} {'elapsed_s':>10} {'rss_mib':>9} {'environments':>13} {'failed':>7}")
    print(
        f"{sample['poll']:>6} {sample['elapsed']:>10.2f} {sample['rss_mib']:>9.2f} "
        f"{sample['environments']:>13} {sample['failed']:>7}",
        flush=True,
    )


def _verdict(
    samples: list[dict[str, Any]], args: argparse.Namespace, failed: int
) -> dict[str, Any]:
    warm = [s for s in samples if s["poll"] >= args.polls * args.warmup]
    if len(warm) < 4:
        raise SystemExit("too few samples after the warm-up: lower --sample-every")
    head = statistics.median(s["rss_mib"] for s in warm[:3])
    tail = statistics.median(s["rss_mib"] for s in warm[-3:])
    polls = [s["poll"] for s in warm]
    slope = statistics.linear_regression(polls, [s["rss_mib"] for s in warm]).slope * 100
    growth = tail - head
    return {
        "verdict": "flat" if growth < args.threshold_mib and failed == 0 else "growing",
        "growth_mib": round(growth, 2),
        "slope_mib_per_100_polls": round(slope, 3),
        "threshold_mib": args.threshold_mib,
        "warmup_polls": warm[0]["poll"],
        "polls": args.polls,
        "failed_polls": failed,
        "fleet_size": args.fleet_size,
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=500)
    parser.add_argument("--fleet-size", type=int, default=2000)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--step", type=float, default=30.0, help="clock seconds per poll")
    parser.add_argument("--reseed-every", type=int, default=50, help="polls per fleet turnover")
    parser.add_argument("--sample-every", type=int, default=10)
    parser.add_argument("--warmup", type=float, default=0.2, help="share of polls to ignore")
    parser.add_argument("--threshold-mib", type=float, default=8.0)
    parser.add_argument("--leak", type=int, default=0, help="bytes to leak per poll (self-test)")
    parser.add_argument("--json", action="store_true", help="print one JSON summary line only")
    args = parser.parse_args(argv)
    summary = soak(args)
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"verdict: {summary['verdict']}: RSS grew {summary['growth_mib']} MiB from poll "
            f"{summary['warmup_polls']} to poll {args.polls} (threshold {args.threshold_mib} MiB; "
            f"slope {summary['slope_mib_per_100_polls']} MiB per 100 polls; "
            f"{summary['failed_polls']} failed polls)"
        )
    return 0 if summary["verdict"] == "flat" else 1


if __name__ == "__main__":
    raise SystemExit(main())
