"""docs/benchmarks.md and docs/img/benchmarks.png from one run's results."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.run import percentile
from exporter.models import ROW_BATCH
from exporter.poller import POLL_SWITCH_INTERVAL
from exporter.store import GZIP_LEVEL

HERE = Path(__file__).resolve().parent
LIBRARIES = ("prometheus-client", "pydantic", "pydantic-core", "httpx", "matplotlib")
MiB = 2**20


@dataclass
class Machine:
    nproc: int
    cpu: str
    python: str
    platform: str
    libraries: dict[str, str]
    date: str
    load_start: tuple[float, float, float]
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    seconds: float = 0.0
    memory_total: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def current(cls) -> Machine:
        cpu = platform.processor() or "unknown"
        memory_total = 0
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    memory_total = int(line.split()[1]) * 1024
        except OSError:
            pass
        libraries = {}
        for name in LIBRARIES:
            try:
                libraries[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                libraries[name] = "not installed"
        return cls(
            nproc=os.cpu_count() or 0,
            cpu=cpu,
            python=platform.python_version(),
            platform=platform.platform(),
            libraries=libraries,
            date=time.strftime("%Y-%m-%d %H:%M %Z"),
            load_start=os.getloadavg(),
            memory_total=memory_total,
        )

    def finish(self, seconds: float) -> None:
        self.load_end = os.getloadavg()
        self.seconds = seconds

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- formatting ---------------------------------------------------------------------------
def ms(seconds: float) -> str:
    value = seconds * 1000
    if value != value:  # NaN: nothing measured
        return "n/a"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def secs(seconds: float) -> str:
    return f"{seconds:.2f}"


def mib(size: float) -> str:
    return f"{size / MiB:,.0f} MiB"


def mb(size: float) -> str:
    return f"{size / 1e6:,.1f} MB"


def ratio(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{value:,.0f}x" if value >= 100 else f"{value:.2f}x"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float], unit: Any = secs) -> str:
    if not values:
        return "n/a"
    return f"{unit(med(values))} [{unit(min(values))}-{unit(max(values))}]"


def size_label(size: int) -> str:
    return f"{size:,}"


# --- results ------------------------------------------------------------------------------
# A run's results come by fleet size, then in the order of its page sizes (bench.run).
def page_sizes(raw: dict[str, Any]) -> list[int]:
    """The run's page sizes, the first (every measurement) first."""
    sizes: list[int] = raw["settings"]["page_sizes"]
    return sizes


def main_page_size(raw: dict[str, Any]) -> int:
    return page_sizes(raw)[0]


def results_at(raw: dict[str, Any], page_size: int) -> list[dict[str, Any]]:
    """One result per fleet size, at that page size."""
    return [r for r in raw["sizes"] if r["page_size"] == page_size]


def main_results(raw: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per fleet size, at the first page size: the one with every measurement."""
    return results_at(raw, main_page_size(raw))


def pages_label(sizes: list[int]) -> str:
    return " and ".join(f"{size:,}" for size in sizes)


def cell(result: dict[str, Any], server: str, gzipped: bool, clients: int) -> list[float]:
    for entry in result["cells"]:
        if (entry["server"], entry["gzipped"], entry["clients"]) == (server, gzipped, clients):
            latencies: list[float] = entry["latencies"]
            return latencies
    return []


@dataclass
class Verdict:
    target: str
    measured: str
    limit: str
    passed: bool | None  # None: not measured in this run
    kind: str = ""

    @property
    def word(self) -> str:
        return {True: "PASS", False: "**MISS**", None: "not measured"}[self.passed]


def verdicts(result: dict[str, Any]) -> list[Verdict]:
    """The exporter's performance targets, as ratios from this run, at the size given."""
    out = []
    for gzipped in (False, True):
        for clients in (1, 8):
            name = f"{'gzip' if gzipped else 'plain'}, {clients} client{'s' if clients > 1 else ''}"
            exporter = percentile(cell(result, "exporter", gzipped, clients), 99)
            floor = percentile(cell(result, "floor", gzipped, clients), 99)
            value = exporter / floor
            out.append(
                Verdict(
                    f"scrape p99 vs static-bytes floor ({name})",
                    f"{ms(exporter)} ms vs {ms(floor)} ms = {ratio(value)}",
                    "<= 2x",
                    value <= 2 if value == value else None,
                    "floor",
                )
            )
    for gzipped in (False, True):
        for clients in (1, 8):
            name = f"{'gzip' if gzipped else 'plain'}, {clients} client{'s' if clients > 1 else ''}"
            exporter = percentile(cell(result, "exporter", gzipped, clients), 99)
            usual = percentile(cell(result, "usual", gzipped, clients), 99)
            value = usual / exporter
            out.append(
                Verdict(
                    f"scrape p99 vs the usual design ({name})",
                    f"{ms(usual)} ms / {ms(exporter)} ms = {ratio(value)} faster",
                    ">= 50x faster",
                    value >= 50 if value == value else None,
                    "usual",
                )
            )
    for millis, limit in (("50", 1.5), ("0", 3.0)):
        polls = result["polls"].get(millis)
        if not polls:
            out.append(Verdict(f"poll wall time at {millis} ms/page", "n/a", "", None, "poll"))
            continue
        exporter, bare = med(polls["exporter_wall"]), med(polls["bare_wall"])
        value = exporter / bare
        out.append(
            Verdict(
                f"poll wall time vs bare paging at {millis} ms/page",
                f"{secs(exporter)} s vs {secs(bare)} s = {ratio(value)}",
                f"<= {limit:g}x",
                value <= limit,
                "poll",
            )
        )
    for key in sorted(result["during_poll"], key=_during_order):
        during = percentile(result["during_poll"][key], 99)
        idle = percentile(result["idle"].get(key, []), 99)
        value = during / idle
        encoding, millis = key.split("@")
        out.append(
            Verdict(
                f"scrape p99 during a poll vs idle ({encoding}, 1 client, {millis} ms/page)",
                f"{ms(during)} ms vs {ms(idle)} ms = {ratio(value)}",
                "<= 2x",
                value <= 2 if value == value else None,
                f"during-{encoding}",
            )
        )
    peak = result["memory"].get("peak")
    out.append(
        Verdict(
            "peak RSS of the exporter process",
            mib(peak) if peak else "n/a",
            "< 400 MB",
            (peak < 400e6) if peak else None,
            "memory" if not peak or result["memory"]["peak_polls"] >= 400e6 else "memory-burst",
        )
    )
    return out


# Why a target is missed, by kind; printed only for the targets this run missed. Every figure
# in these texts is read from the run (or from the code), never written in.
def why(kind: str, raw: dict[str, Any], result: dict[str, Any]) -> str:
    stages = raw.get("stages") or {}
    size = size_label(result["size"])
    page = result["page_size"]
    if kind == "floor":
        own = stages.get("own_registry")
        cost = (
            f" ({ms(med(own))} ms in-process here, ProcessCollector reads included)" if own else ""
        )
        return (
            "A scrape sends the bytes of the last poll as they are (no copy, one `sendall`) plus "
            f"the exporter's own small registry, rendered per scrape by prometheus-client{cost}, "
            "so its p50 sits near the floor's. Its p99 is one run's slowest few scrapes on a "
            "shared machine and moves between runs more than the p50 does (compare the range "
            "column); with 8 clients the scrapes also queue for the GIL."
        )
    if kind == "usual":
        slowest = max(
            (percentile(cell(result, "usual", gzipped, 1), 99) for gzipped in (False, True)),
            default=float("nan"),
        )
        return (
            "This ratio is the usual design's p99 over the exporter's: it misses where the "
            "exporter's own p99 strays far from its floor (see the first point), not because the "
            f"usual design is quick; one of its scrapes takes up to {ms(slowest)} ms at {size} "
            "environments."
        )
    if kind == "poll":
        spent = ""
        if stages:
            snapshot = med(stages["parse_snapshot"]) - med(stages["parse"])
            gzip = stages["gzip"].get(str(GZIP_LEVEL), {}).get("seconds", [])
            spent = (
                f" (in-process at {size_label(stages['size'])}: {secs(med(stages['parse']))} s "
                f"to decode and validate, {secs(max(snapshot, 0.0))} s more for the snapshot, "
                f"{secs(med(stages['render']))} s to render, {secs(med(gzip))} s of gzip)"
            )
        return (
            "A poll spends CPU the bare loop does not: decoding and validating every row, "
            f"building the snapshot, rendering and gzip{spent}. Pages are validated while the "
            "next one is fetched, so when the upstream is slow most of this hides behind it; at "
            "0 ms a page the simulator builds pages on the same cores."
        )
    if kind == "during-gzip":
        compared = " (see the page sizes compared below)" if len(page_sizes(raw)) > 1 else ""
        idle = percentile(result["idle"].get("gzip@0", []), 50)
        decode = stages.get("page_decode", {}).get(str(page))
        longest = (
            f" (the longest decode of a {page:,}-row page took {ms(max(decode))} ms here)"
            if decode
            else ""
        )
        return (
            f"A gzip scrape at {size} environments takes {ms(idle)} ms (p50) when idle, so a 2x "
            "target leaves only milliseconds of slack. During a poll the scrape thread waits "
            "for the GIL each time it needs it: a poll decodes each page in one call that holds "
            f"the GIL{longest}, and at 0 ms a page the simulator takes one of the cores. The "
            f"exporter hands the GIL over within {POLL_SWITCH_INTERVAL * 1000:g} ms while it "
            "polls and frees large structures a batch at a time; smaller pages shorten the "
            f"longest wait{compared}, decoding in another process would remove it."
        )
    if kind == "during-plain":
        return "See the gzip case: the same waits for the GIL, on a larger scrape."
    if kind == "memory-burst":
        return (
            "The peak over polls is under the target; the rest comes from scrapes in flight "
            "while a poll builds the next exposition: each holds the exporter's own small "
            "registry and its socket buffers, and the previous exposition stays alive until "
            "the swap."
        )
    if kind == "memory":
        served = mb(result["exposition_bytes"] + result["gzip_bytes"])
        row = stages.get("snapshot_bytes_per_row")
        lean = f" (~{mb(row * result['size'])})" if row else ""
        return (
            f"During a poll the previous exposition (plain and gzip, {served} at {size}) is "
            f"still served while the new snapshot{lean}, its views and the new exposition "
            "are built; freed memory stays with the process (pymalloc arenas) between polls."
        )
    return ""


def scrape_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| environments | encoding | clients | server | p50 ms | p99 ms | range ms | n | body |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for gzipped in (False, True):
            for clients in (1, 8):
                for server in ("exporter", "floor", "usual"):
                    values = cell(result, server, gzipped, clients)
                    if not values:
                        continue
                    body = next(
                        entry["body_bytes"]
                        for entry in result["cells"]
                        if (entry["server"], entry["gzipped"], entry["clients"])
                        == (server, gzipped, clients)
                    )
                    lines.append(
                        f"| {size_label(result['size'])} | {'gzip' if gzipped else 'plain'} "
                        f"| {clients} | {server} | {ms(percentile(values, 50))} "
                        f"| {ms(percentile(values, 99))} | {ms(min(values))}-{ms(max(values))} "
                        f"| {len(values)} | {mb(body)} |"
                    )
    return lines


def ratio_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| environments | encoding | clients | exporter / floor (p99) | usual / exporter (p99) |",
        "|---:|---|---:|---:|---:|",
    ]
    for result in results:
        for gzipped in (False, True):
            for clients in (1, 8):
                exporter = percentile(cell(result, "exporter", gzipped, clients), 99)
                floor = percentile(cell(result, "floor", gzipped, clients), 99)
                usual = percentile(cell(result, "usual", gzipped, clients), 99)
                lines.append(
                    f"| {size_label(result['size'])} | {'gzip' if gzipped else 'plain'} "
                    f"| {clients} | {ratio(exporter / floor)} | {ratio(usual / exporter)} |"
                )
    return lines


def _during_order(key: str) -> tuple[float, str]:
    encoding, _, millis = key.partition("@")
    return float(millis or 0), encoding


def during_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| environments | rows/page | ms/page | encoding | idle p50 / p99 ms "
        "| during a poll p50 / p99 ms | p99 ratio | n |",
        "|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for result in results:
        for key in sorted(result["during_poll"], key=_during_order):
            idle, during = result["idle"].get(key, []), result["during_poll"][key]
            encoding, _, millis = key.partition("@")
            lines.append(
                f"| {size_label(result['size'])} | {size_label(result['page_size'])} "
                f"| {millis} | {encoding} "
                f"| {ms(percentile(idle, 50))} / {ms(percentile(idle, 99))} "
                f"| {ms(percentile(during, 50))} / {ms(percentile(during, 99))} "
                f"| {ratio(percentile(during, 99) / percentile(idle, 99))} | {len(during)} |"
            )
    return lines


def poll_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| environments | rows/page | ms/page | exporter wall s | exporter CPU s | bare wall s "
        "| bare CPU s | wall ratio |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        for millis, polls in sorted(result["polls"].items(), key=lambda item: float(item[0])):
            lines.append(
                f"| {size_label(result['size'])} | {size_label(result['page_size'])} | {millis} "
                f"| {spread(polls['exporter_wall'])} | {spread(polls['exporter_cpu'])} "
                f"| {spread(polls['bare_wall'])} | {spread(polls['bare_cpu'])} "
                f"| {ratio(med(polls['exporter_wall']) / med(polls['bare_wall']))} |"
            )
    return lines


def exposition(result: dict[str, Any]) -> str:
    """Its sizes, plain and gzip; measured with the first page size (the same bytes at any)."""
    if not result["exposition_bytes"]:
        return "as above"
    return f"{mb(result['exposition_bytes'])} / {mb(result['gzip_bytes'])}"


def memory_table(results: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| environments | rows/page | exposition plain / gzip | RSS after the first poll "
        "| peak RSS over the polls (2 scrapers) | peak RSS, 8 concurrent scrapes (plain / gzip) "
        "| peak RSS over the polls, `--no-collector.environment` | usual design, peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        memory = result["memory"]
        if "peak" not in memory:
            continue
        usual = memory.get("usual_rss")
        lines.append(
            f"| {size_label(result['size'])} | {size_label(result['page_size'])} "
            f"| {exposition(result)} "
            f"| {mib(memory['after_first_poll'])} | {mib(memory['peak_polls'])} "
            f"| {mib(memory['peak_burst_plain'])} / {mib(memory['peak_burst_gzip'])} "
            f"| {mib(memory['peak_polls_no_environment'])} "
            f"| {mib(usual) if usual else 'n/a' if result['full'] else '-'} |"
        )
    return lines


def stage_tables(stages: dict[str, Any]) -> list[str]:
    rows = [
        ("json.loads of every page (no validation), for scale", "json_loads"),
        (
            f"parse every page (`parse_page`: decode, then validate {ROW_BATCH} rows a call)",
            "parse",
        ),
        ("validate every page from its bytes in one call, for comparison", "parse_one_call"),
        ("parse + lean snapshot, collector quiet (as a poll runs)", "parse_snapshot"),
        ("parse + lean snapshot, collector on, previous snapshot alive", "parse_snapshot_gc_on"),
        ("render the fleet families (`render_fleet`)", "render"),
    ]
    lines = [
        f"At {size_label(stages['size'])} environments ({stages['pages']:,} pages of "
        f"{size_label(stages['page_size'])} rows, "
        f"{mb(stages['body_bytes'])} of JSON; exposition {mb(stages['exposition_bytes'])}; "
        f"lean snapshot {stages['snapshot_bytes_per_row']:.0f} bytes per environment):",
        "",
        "| stage | seconds, median [range] |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {spread(stages[key])} |" for label, key in rows]
    if stages.get("own_registry"):
        lines.append(
            "| render the exporter's own registry (as each scrape does), milliseconds "
            f"| {spread(stages['own_registry'], ms)} |"
        )
    if stages.get("page_decode"):
        lines += [
            "",
            "Each page is decoded in one call that holds the GIL; the longest such call is the "
            "longest a scrape waits on the poll's decoding:",
            "",
            "| rows/page | pages | decode of one page, median ms | longest ms |",
            "|---:|---:|---:|---:|",
        ]
        for page, times in stages["page_decode"].items():
            lines.append(
                f"| {size_label(int(page))} | {len(times):,} | {ms(med(times))} "
                f"| {ms(max(times))} |"
            )
    lines += [
        "",
        "| gzip level | seconds, median [range] | size | vs level 1 |",
        "|---:|---:|---:|---:|",
    ]
    base = stages["gzip"]["1"]["bytes"] if "1" in stages["gzip"] else None
    for level, entry in sorted(stages["gzip"].items(), key=lambda item: int(item[0])):
        versus = f"{entry['bytes'] / base - 1:+.1%}" if base else ""
        name = f"{level} (the exporter's)" if int(level) == GZIP_LEVEL else level
        lines.append(f"| {name} | {spread(entry['seconds'])} | {mb(entry['bytes'])} | {versus} |")
    return lines


def page_size_table(raw: dict[str, Any]) -> list[str]:
    """At the largest fleet, what each page size measured, side by side."""
    largest = max(r["size"] for r in raw["sizes"])
    results = [r for r in raw["sizes"] if r["size"] == largest]
    decodes = (raw.get("stages") or {}).get("page_decode", {})
    lines = [
        "| rows/page | requests a poll | poll wall s, 0 / 50 ms a page | poll CPU s, 0 ms "
        "| vs bare paging, 0 / 50 ms | longest page decode ms "
        "| scrape p99 during a poll vs idle, gzip / plain, 0 ms | peak RSS over the polls |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        polls = result["polls"]

        def wall(millis: str, kind: str = "exporter", polls: dict[str, Any] = polls) -> float:
            return med(polls.get(millis, {}).get(f"{kind}_wall", []))

        def during(encoding: str, result: dict[str, Any] = result) -> str:
            key = f"{encoding}@0"
            busy = percentile(result["during_poll"].get(key, []), 99)
            return ratio(busy / percentile(result["idle"].get(key, []), 99))

        decode = decodes.get(str(result["page_size"]))
        peak = result["memory"].get("peak_polls")
        lines.append(
            f"| {size_label(result['page_size'])} "
            f"| {-(-result['size'] // result['page_size']):,} "
            f"| {secs(wall('0'))} / {secs(wall('50'))} "
            f"| {secs(med(polls.get('0', {}).get('exporter_cpu', [])))} "
            f"| {ratio(wall('0') / wall('0', 'bare'))} / {ratio(wall('50') / wall('50', 'bare'))} "
            f"| {ms(max(decode)) if decode else 'n/a'} "
            f"| {during('gzip')} / {during('plain')} "
            f"| {mib(peak) if peak else 'n/a'} |"
        )
    return lines


def _static(name: str) -> list[str]:
    path = HERE / name
    return path.read_text().rstrip("\n").splitlines() if path.exists() else []


def render_markdown(raw: dict[str, Any], plot_name: str) -> str:
    machine = raw["machine"]
    results = main_results(raw)
    every = raw["sizes"]
    pages = page_sizes(raw)
    first = main_page_size(raw)
    largest = max(results, key=lambda result: result["size"])
    checks = verdicts(largest)
    missed = [check for check in checks if check.passed is False]
    unmeasured = [check for check in checks if check.passed is None]
    libraries = ", ".join(f"{name} {version}" for name, version in machine["libraries"].items())
    load = "/".join(f"{value:.2f}" for value in machine["load_start"])
    load_end = "/".join(f"{value:.2f}" for value in machine["load_end"])
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`.venv/bin/python -m bench`; `--help` for its options) "
        "from one run; do not edit by hand. The simulator (`--no-churn`), the servers under "
        "test and the real exporter run as separate processes on loopback; the scrape clients "
        "send `Accept: text/plain;version=0.0.4` and time each response to its last byte. "
        f"Every figure is measured at the exporter's default page size, {first:,} rows "
        "(`--letta.page-size`), which is what users get"
        + (
            f"; polls, scrapes during a poll and memory also at pages of {pages_label(pages[1:])}, "
            "side by side"
            if len(pages) > 1
            else ""
        )
        + ". What the numbers mean, and what we changed, is at the end.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| date | {machine['date']} |",
        f"| CPUs (nproc) | {machine['nproc']} |",
        f"| CPU model | {machine['cpu']} |",
        f"| memory | {mib(machine['memory_total'])} |",
        f"| platform | {machine['platform']} |",
        f"| Python | {machine['python']} |",
        f"| libraries | {libraries} |",
        f"| load average (1/5/15 min) at start, end | {load}; {load_end} |",
        f"| run time | {machine['seconds'] / 60:.1f} min |",
        "",
        f"## Targets at {size_label(largest['size'])} environments",
        "",
        f"The exporter's performance targets, as ratios from this one run, at pages of {first:,}.",
        "",
        "| target | measured | limit | result |",
        "|---|---|---|---|",
    ]
    lines += [f"| {c.target} | {c.measured} | {c.limit} | {c.word} |" for c in checks]
    met = sum(1 for check in checks if check.passed)
    lines += [
        "",
        f"**{met} of {len(checks)} targets met"
        + (f"; missed: {'; '.join(check.target for check in missed)}" if missed else "")
        + (f"; not measured: {len(unmeasured)}" if unmeasured else "")
        + ".**",
    ]
    if largest["size"] != 100_000:
        lines += [
            "",
            "(The targets are set at 100,000 environments; this run stopped short.)",
        ]
    kinds = list(dict.fromkeys(check.kind for check in missed))
    if kinds:
        lines += ["", "Why:", ""]
        lines += [f"- {text}" for text in (why(kind, raw, largest) for kind in kinds) if text]
    lines += [
        "",
        f"![scrape latency, poll time and memory by fleet size](img/{plot_name})",
        "",
        "## Scrape latency",
        "",
        "`exporter` is the exporter's own HTTP server, serving what its last poll rendered; "
        "`floor` a minimal `http.server` on loopback serving the same bytes (the physical floor "
        "of a Python server on this machine); `usual` long-lived prometheus-client `Gauge`s "
        "with labels, set from the same snapshot, served by `prometheus_client.start_http_server` "
        "(`generate_latest()` per scrape, gzip at the library's level 9). With 8 clients, all "
        "scrape at once, back to back; range is the fastest and slowest scrape of the cell.",
        "",
        *scrape_table(results),
        "",
        *ratio_table(results),
        "",
        "## Scrape latency while a poll runs",
        "",
        "One client scrapes back to back while the exporter polls, then as many times again "
        "while it is idle. At 0 ms per page the poll is as busy as it gets and the simulator "
        f"builds pages on the same {machine['nproc']} cores; at 50 ms the upstream is "
        "elsewhere, as in life.",
        "",
        *during_table(every),
        "",
        "## Poll time",
        "",
        "Wall and CPU time of one poll (page, parse, snapshot, render, gzip, publish) against "
        "a bare httpx loop fetching the same pages from the same simulator without parsing; "
        "both in the same process, one after the other, median [range] of "
        f"{raw['settings']['repeats']}. The simulator's own time to build each page is in both.",
        "",
        *poll_table(every),
        "",
        "## Memory",
        "",
        "Resident memory of the real exporter (`python -m exporter`, a separate process, "
        "per-environment series on), read from `/proc/PID/status` (`VmRSS`, "
        f"`VmHWM`): after its first poll; the peak over {raw['settings'].get('memory_polls', 4)} "
        "polls spaced 1.5x the poll time while "
        "two scrapers (a Prometheus HA pair) scrape with gzip every second; and the peak while 8 "
        "clients scrape at once; then the peak over polls without per-environment series. "
        "For Kubernetes, request at least the peak over polls and set the limit above the "
        "8-scrape peak.",
        "",
        *memory_table(every),
    ]
    if len(pages) > 1:
        lines += [
            "",
            f"## Page size at {size_label(largest['size'])} environments",
            "",
            "The same fleet paged at each page size of the run, from the tables above. Smaller "
            "pages mean more requests, so a poll waits longer on a slow upstream; larger pages "
            "hold the GIL longer per decode, which scrapes during a poll feel, and need more "
            "memory for the page in flight.",
            "",
            *page_size_table(raw),
        ]
    if not all(r["memory"].get("peak_resettable", True) for r in results if r["memory"]):
        lines += [
            "",
            "(The kernel did not let the peak be reset between phases here: the 8-scrape "
            "figures are peaks since the start.)",
        ]
    if raw.get("stages"):
        lines += ["", "## Poll stages, in-process", "", *stage_tables(raw["stages"])]
    notes = _static("notes.md")
    if notes:
        lines += ["", *notes]
    changes = _static("changes.md")
    if changes:
        lines += ["", *changes]
    return "\n".join(lines) + "\n"


def write_plot(raw: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = main_results(raw)
    first, *further = page_sizes(raw)
    sizes = [result["size"] for result in results]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)

    ax = axes[0]
    styles = {"exporter": ("tab:blue", "o"), "floor": ("tab:gray", "s"), "usual": ("tab:red", "^")}
    for server, (colour, marker) in styles.items():
        for gzipped, line in ((False, "-"), (True, "--")):
            values = [percentile(cell(r, server, gzipped, 1), 99) * 1000 for r in results]
            if all(v != v for v in values):
                continue
            ax.plot(
                sizes,
                values,
                line,
                color=colour,
                marker=marker,
                label=f"{server}, {'gzip' if gzipped else 'plain'}",
            )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="environments",
        ylabel="ms",
        title="Scrape p99, 1 client",
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[1]
    for page, colours, marker in (
        (first, {"exporter": "tab:blue", "bare": "tab:gray"}, "o"),
        *((page, {"exporter": "tab:purple"}, "d") for page in further),
    ):
        cases = results_at(raw, page)
        for millis, line in (("0", "-"), ("50", "--")):
            for kind, colour in colours.items():
                values = [med(r["polls"].get(millis, {}).get(f"{kind}_wall", [])) for r in cases]
                ax.plot(
                    [r["size"] for r in cases],
                    values,
                    line,
                    color=colour,
                    marker=marker,
                    label=f"{'poll' if kind == 'exporter' else 'bare paging'}, {millis} ms/page"
                    f"{f', pages of {page:,}' if further else ''}",
                )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="environments",
        ylabel="seconds",
        title="Poll wall time (median)"
        if further
        else f"Poll wall time (median), pages of {first:,}",
    )
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)

    ax = axes[2]
    for key, label, colour in (
        ("after_first_poll", "after the first poll", "tab:green"),
        ("peak_polls", "peak over polls", "tab:blue"),
        ("peak_burst", "peak, 8 concurrent scrapes", "tab:orange"),
        ("usual_rss", "usual design, peak", "tab:red"),
    ):
        points = [(r["size"], r["memory"][key] / MiB) for r in results if r["memory"].get(key)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", color=colour, label=label)
    ax.axhline(400e6 / MiB, color="black", linestyle=":", label="target: 400 MB")
    ax.set(xscale="log", xlabel="environments", ylabel="MiB", title="Exporter RSS")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)

    machine = raw["machine"]
    figure.suptitle(
        f"letta-environments-exporter, {machine['date']}, {machine['nproc']} CPUs "
        f"({machine['cpu']}), Python {machine['python']}",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(raw: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write `benchmarks.md` and `img/benchmarks.png` under ``out``."""
    plot = out / "img" / "benchmarks.png"
    write_plot(raw, plot)
    markdown = out / "benchmarks.md"
    markdown.write_text(render_markdown(raw, plot.name))
    return markdown, plot


if __name__ == "__main__":
    import json
    import sys

    # Re-render from a run's raw results (`python -m bench --json FILE`): python -m bench.report
    # FILE [OUT]; the numbers stay those of the run.
    source = Path(sys.argv[1])
    written = write_report(
        json.loads(source.read_text()), Path(sys.argv[2] if len(sys.argv) > 2 else "docs")
    )
    print(*written)
