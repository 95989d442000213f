"""One benchmark run: for each fleet size, scrapes, polls and memory, side by side."""

from __future__ import annotations

import http.client
import statistics
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.load import Scrapes, scrape, scrape_during
from bench.procs import ExporterCLI, Simulator, Target, memory_of, reset_peak
from bench.stages import DEFAULT_PAGE_SIZE

FURTHER_PAGE_SIZE = 1000  # the simulator's largest page
MiB = 2**20
LATENCIES_MS = (0, 50)
SERVERS = ("exporter", "floor", "usual")


@dataclass
class Settings:
    sizes: tuple[int, ...] = (1_000, 10_000, 100_000)
    # The first page size gets every measurement; each further one the measurements a page
    # size changes (polls, scrapes during a poll, memory), side by side with the first.
    page_sizes: tuple[int, ...] = (DEFAULT_PAGE_SIZE, FURTHER_PAGE_SIZE)
    repeats: int = 3
    budget: float = 6.0  # seconds a scrape cell may take (each client scrapes at least once)
    usual: bool = True
    memory: bool = True
    memory_polls: int = 4  # polls of the exporter CLI over which its peak RSS is read
    log: bool = True


@dataclass
class Cell:
    """One scrape cell: a server, an encoding, a number of concurrent clients."""

    server: str
    gzipped: bool
    clients: int
    latencies: list[float]
    body_bytes: int
    errors: int = 0


@dataclass
class SizeResult:
    size: int
    page_size: int = DEFAULT_PAGE_SIZE
    full: bool = True  # every measurement, or only those a page size changes
    exposition_bytes: int = 0
    gzip_bytes: int = 0
    series: dict[str, int] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    idle: dict[str, list[float]] = field(default_factory=dict)
    during_poll: dict[str, list[float]] = field(default_factory=dict)
    polls: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Runner:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def say(self, text: str) -> None:
        if self.settings.log:
            print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def run(self) -> list[SizeResult]:
        results = []
        for size in self.settings.sizes:
            # One simulator per fleet size serves every page size: the same rows, paged apart.
            simulator = Simulator(size, max(self.settings.page_sizes))
            try:
                self.say(f"{size} environments: simulator at {simulator.url}")
                first, *further = self.settings.page_sizes
                results.append(self.run_case(simulator, size, first, full=True))
                for page_size in further:
                    results.append(self.run_case(simulator, size, page_size, full=False))
            finally:
                simulator.close()
        return results

    def run_case(self, simulator: Simulator, size: int, page_size: int, full: bool) -> SizeResult:
        started = time.perf_counter()
        result = SizeResult(size=size, page_size=page_size, full=full)
        self.say(f"{size} environments, pages of {page_size}")
        with tempfile.TemporaryDirectory(prefix="letta-bench-") as scratch:
            self._exporter_and_floor(simulator, result, Path(scratch))
        if full and self.settings.usual:
            self._usual(simulator, result)
        if self.settings.memory:
            self._memory(simulator, result)
        result.seconds = time.perf_counter() - started
        self.say(f"{size} environments, pages of {page_size}: done in {result.seconds:.0f}s")
        return result

    # --- scrapes ---------------------------------------------------------------------
    def _cells(self, server: str, port: int, result: SizeResult) -> None:
        repeats = self.settings.repeats
        # The usual design renders everything on every scrape: its first scrape is as warm
        # as any (and costs seconds at 100,000), so it gets no untimed warm-up.
        warmup = server != "usual"
        for gzipped in (False, True):
            for clients in (1, 8):
                per_client = 30 * repeats if clients == 1 else 8 * repeats
                scrapes = scrape(
                    port,
                    gzipped=gzipped,
                    clients=clients,
                    per_client=per_client,
                    budget=self.settings.budget,
                    warmup=warmup,
                )
                warmup = False
                result.cells.append(
                    Cell(
                        server,
                        gzipped,
                        clients,
                        scrapes.latencies,
                        scrapes.body_bytes,
                        scrapes.errors,
                    )
                )
                self.say(
                    f"  {server:8} {'gzip ' if gzipped else 'plain'} x{clients}: "
                    f"p50 {percentile(scrapes.latencies, 50) * 1000:.1f} ms, "
                    f"p99 {percentile(scrapes.latencies, 99) * 1000:.1f} ms "
                    f"(n={len(scrapes.latencies)})"
                )

    def _exporter_and_floor(self, simulator: Simulator, result: SizeResult, scratch: Path) -> None:
        exporter = Target(
            "exporter", f"--base-url={simulator.url}", f"--page-size={result.page_size}"
        )
        try:
            if not result.full:  # the same exposition whatever the page size: no scrape cells
                self._during_poll(simulator, exporter, result)
                self._polls(simulator, exporter, result)
                return
            bodies = {}
            for gzipped in (False, True):
                connection = http.client.HTTPConnection("127.0.0.1", exporter.port, timeout=600)
                headers = {"Accept-Encoding": "gzip"} if gzipped else {}
                connection.request("GET", "/metrics", headers=headers)
                bodies[gzipped] = connection.getresponse().read()
                connection.close()
            result.exposition_bytes, result.gzip_bytes = len(bodies[False]), len(bodies[True])
            result.series["exporter"] = sum(
                1 for line in bodies[False].splitlines() if line and not line.startswith(b"#")
            )
            (scratch / "plain").write_bytes(bodies[False])
            (scratch / "gzip").write_bytes(bodies[True])
            del bodies
            self._cells("exporter", exporter.port, result)
            self._during_poll(simulator, exporter, result)
            self._polls(simulator, exporter, result)
        finally:
            exporter.close()
        floor = Target("floor", f"--plain={scratch / 'plain'}", f"--gzip={scratch / 'gzip'}")
        try:
            self._cells("floor", floor.port, result)
        finally:
            floor.close()

    def _usual(self, simulator: Simulator, result: SizeResult) -> None:
        self.say("  usual: setting labelled Gauges from a snapshot")
        built = time.perf_counter()
        usual = Target("usual", f"--base-url={simulator.url}", f"--page-size={result.page_size}")
        try:
            result.series["usual"] = int(usual.command("series")["series"])
            result.memory["usual_build_seconds"] = time.perf_counter() - built
            self._cells("usual", usual.port, result)
            result.memory["usual_rss"] = memory_of(usual.process.pid)["VmHWM"]
        finally:
            usual.close()

    def _during_poll(self, simulator: Simulator, exporter: Target, result: SizeResult) -> None:
        """Scrapes while a poll runs, then as many idle; at 0 ms per page (the simulator then
        competes for the same two cores) and at 50 ms (an upstream elsewhere, as in life)."""
        for millis in LATENCIES_MS:
            simulator.latency(millis)
            for gzipped in (False, True):
                key = f"{'gzip' if gzipped else 'plain'}@{millis}"
                during = Scrapes()
                polls = 0
                while polls < 1 or (polls < self.settings.repeats and len(during.latencies) < 100):
                    polled = scrape_during(
                        exporter.port, gzipped=gzipped, busy=lambda: exporter.command("poll")
                    )
                    during.latencies += polled.latencies
                    polls += 1
                idle = scrape(
                    exporter.port,
                    gzipped=gzipped,
                    clients=1,
                    per_client=max(len(during.latencies), 30),
                    budget=3600,
                    warmup=False,
                )
                result.during_poll[key] = during.latencies
                result.idle[key] = idle.latencies
                busy_p99 = percentile(during.latencies, 99) * 1000
                idle_p99 = percentile(idle.latencies, 99) * 1000
                self.say(
                    f"  scrape {key} ms/page during {polls} poll(s): p99 {busy_p99:.1f} ms "
                    f"vs idle {idle_p99:.1f} ms (n={len(during.latencies)})"
                )
        simulator.latency(0)

    # --- polls -----------------------------------------------------------------------
    def _polls(self, simulator: Simulator, exporter: Target, result: SizeResult) -> None:
        for millis in LATENCIES_MS:
            simulator.latency(millis)
            entry: dict[str, list[float]] = {
                "exporter_wall": [],
                "exporter_cpu": [],
                "bare_wall": [],
                "bare_cpu": [],
            }
            for _ in range(self.settings.repeats):
                for kind, command in (("bare", "bare"), ("exporter", "poll")):
                    answer = exporter.command(command)
                    if not answer.get("ok", False):
                        raise RuntimeError(f"{command} failed at {result.size}: {answer}")
                    entry[f"{kind}_wall"].append(answer["wall"])
                    entry[f"{kind}_cpu"].append(answer["cpu"])
            result.polls[str(millis)] = entry
            self.say(
                f"  poll at {millis} ms/page: exporter {median(entry['exporter_wall']):.2f}s wall "
                f"{median(entry['exporter_cpu']):.2f}s CPU; bare {median(entry['bare_wall']):.2f}s "
                f"wall {median(entry['bare_cpu']):.2f}s CPU"
            )
        simulator.latency(0)

    # --- memory ----------------------------------------------------------------------
    def _memory(self, simulator: Simulator, result: SizeResult) -> None:
        """Peak RSS of the real exporter CLI over polls, with scrapes as two Prometheus would;
        then with 8 concurrent scrapes; then again without per-environment series."""
        poll_wall = median(result.polls.get("0", {}).get("exporter_wall", [1.0]))
        interval = max(1.0, round(poll_wall * 1.5 + 0.5))
        measured = self._cli_memory(simulator, result.page_size, interval, poll_wall, burst=True)
        lean = self._cli_memory(
            simulator,
            result.page_size,
            interval,
            poll_wall,
            "--no-collector.environment",
            burst=False,
        )
        measured["peak_polls_no_environment"] = lean["peak_polls"]
        measured["after_first_poll_no_environment"] = lean["after_first_poll"]
        result.memory.update(measured)
        self.say(
            f"  exporter RSS: {measured['after_first_poll'] / MiB:.0f} MiB after the first poll, "
            f"peak {measured['peak_polls'] / MiB:.0f} MiB over {self.settings.memory_polls} "
            f"polls, {measured['peak_burst'] / MiB:.0f} MiB with 8 concurrent scrapes; "
            f"{lean['peak_polls'] / MiB:.0f} MiB without per-environment series"
        )

    def _cli_memory(
        self,
        simulator: Simulator,
        page_size: int,
        interval: float,
        poll_wall: float,
        *flags: str,
        burst: bool,
    ) -> dict[str, Any]:
        exporter = ExporterCLI(simulator.url, f"{interval:g}s", page_size, *flags)
        try:
            exporter.wait_for_polls(1, timeout=120 + 5 * poll_wall)
            after_first = exporter.memory()
            stop = threading.Event()

            def prometheus_pair() -> None:  # two replicas, gzip, a scrape every second each
                while not stop.is_set():
                    scrape(
                        exporter.port, gzipped=True, clients=2, per_client=1, budget=0, warmup=False
                    )
                    stop.wait(1.0)

            scraper = threading.Thread(target=prometheus_pair)
            scraper.start()
            try:
                exporter.wait_for_polls(
                    self.settings.memory_polls,
                    timeout=120 + 3 * self.settings.memory_polls * interval,
                )
            finally:
                stop.set()
                scraper.join()
            polls = exporter.memory()
            measured: dict[str, Any] = {
                "poll_interval": interval,
                "polls": self.settings.memory_polls,
                "after_first_poll": after_first["VmRSS"],
                "peak_polls": polls["VmHWM"],
                "rss_polls": polls["VmRSS"],
                "peak": polls["VmHWM"],
            }
            if burst:
                peaks = {}
                for gzipped in (False, True):
                    measured["peak_resettable"] = reset_peak(exporter.process.pid)
                    scrape(
                        exporter.port,
                        gzipped=gzipped,
                        clients=8,
                        per_client=2,
                        budget=0,
                        warmup=False,
                    )
                    peaks["gzip" if gzipped else "plain"] = exporter.memory()["VmHWM"]
                measured["peak_burst"] = max(peaks.values())
                measured["peak_burst_plain"] = peaks["plain"]
                measured["peak_burst_gzip"] = peaks["gzip"]
                measured["peak"] = max(polls["VmHWM"], *peaks.values())
            return measured
        finally:
            exporter.close()


def as_dict(results: list[SizeResult]) -> list[dict[str, Any]]:
    return [asdict(result) for result in results]
