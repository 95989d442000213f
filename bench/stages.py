"""The stages of one poll, timed in-process on page bodies the simulator wrote: no HTTP.

Separates what the exporter spends (parse, snapshot, render, gzip) from what the network and
the upstream spend, so that a change to one stage can be measured before and after.
"""

from __future__ import annotations

import gc
import json
import statistics
import time
import tracemalloc
import zlib
from collections.abc import Callable
from typing import Any

import pydantic_core
from pydantic import SecretStr

from exporter.config import Config
from exporter.models import ValidRows, load_page
from exporter.rendering import render_fleet
from exporter.selfmetrics import ExporterMetrics
from exporter.snapshot import FleetSnapshot, SnapshotBuilder
from letta_simulator import SimulatedFleet
from letta_simulator.schema import EnvironmentListResponse

GZIP_LEVELS = (1, 2, 3, 4, 6, 9)


DEFAULT_PAGE_SIZE: int = Config.model_fields["page_size"].default  # what users get


def page_bodies(size: int, page_size: int = DEFAULT_PAGE_SIZE, seed: int = 1) -> list[bytes]:
    """Every page of a simulated fleet of ``size``, as the API would send them."""
    fleet = SimulatedFleet(size=size, seed=seed, churn=False, max_page_size=page_size)
    bodies: list[bytes] = []
    query = {"limit": str(page_size)}
    while True:
        _, _, body = fleet.list_page(query)
        bodies.append(body)
        document = json.loads(body)
        if not document["hasNextPage"]:
            return bodies
        query["after"] = document["connections"][-1]["id"]


def bench_config(**overrides: Any) -> Config:
    base = {"api_key": SecretStr("bench"), "poll_jitter": 0.0}
    return Config(**{**base, **overrides})


def build_snapshot(bodies: list[bytes], observed_at: float) -> FleetSnapshot:
    builder = SnapshotBuilder()
    for body in bodies:
        page = parse_page(body)
        builder.add(observed_at, page.connections, len(page.invalid))
    return builder.build(observed_at)


def parse_page(body: bytes) -> ValidRows:
    """A page decoded, then validated 100 rows a call, as the client does it."""
    return load_page(body).validate()


def _timed(repeats: int, run: Callable[[], object], *, quiet: bool = True) -> list[float]:
    times = []
    for _ in range(repeats):
        gc.collect()
        if quiet:
            gc.disable()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
        gc.enable()
    return times


def _render_times(
    bodies: list[bytes], now: float, config: Config, repeats: int
) -> tuple[bytes, list[float]]:
    snapshot = build_snapshot(bodies, now)
    times = _timed(repeats, lambda: render_fleet(snapshot, config.render_options()))
    return render_fleet(snapshot, config.render_options()).text, times


def page_decodes(bodies: list[bytes]) -> list[float]:
    """Seconds each page's decode takes: one call, the GIL held throughout, so the longest is
    the longest a scrape waits on a page while a poll runs."""
    times = []
    gc.collect()
    gc.disable()
    try:
        for body in bodies:
            started = time.perf_counter()
            pydantic_core.from_json(body)
            times.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return times


def own_registry_render(repeats: int) -> list[float]:
    """Seconds to render the exporter's own registry, as each scrape does."""
    metrics = ExporterMetrics(60.0)
    metrics.render()
    return _timed(max(repeats, 30), metrics.render, quiet=False)


def measure_stages(
    size: int, repeats: int = 3, page_sizes: tuple[int, ...] = (DEFAULT_PAGE_SIZE,)
) -> dict[str, Any]:
    """Seconds per stage (lists of repeats) at the first page size, gzip sizes by level,
    snapshot bytes per row, and each page size's page decode times."""
    first, *further = page_sizes
    bodies = page_bodies(size, first)
    now = time.time()
    config = bench_config(page_size=first)
    result: dict[str, Any] = {"size": size, "page_size": first, "pages": len(bodies)}
    decodes = {str(first): page_decodes(bodies)}
    for page_size in further:
        decodes[str(page_size)] = page_decodes(page_bodies(size, page_size))
    result["page_decode"] = decodes
    result["own_registry"] = own_registry_render(repeats)
    result["body_bytes"] = sum(len(body) for body in bodies)
    result["json_loads"] = _timed(repeats, lambda: [json.loads(b) for b in bodies])
    result["parse"] = _timed(repeats, lambda: [parse_page(b) for b in bodies])
    # The alternative: validate straight from the bytes, one call (and one GIL hold) a page.
    result["parse_one_call"] = _timed(
        repeats, lambda: [EnvironmentListResponse.model_validate_json(b) for b in bodies]
    )
    result["parse_snapshot"] = _timed(repeats, lambda: build_snapshot(bodies, now))
    # The trap this design avoids: full collections while the previous snapshot is alive.
    previous = build_snapshot(bodies, now)
    result["parse_snapshot_gc_on"] = _timed(
        repeats, lambda: build_snapshot(bodies, now), quiet=False
    )
    del previous
    rendered, result["render"] = _render_times(bodies, now, config, repeats)
    result["exposition_bytes"] = len(rendered)
    gzip: dict[str, dict[str, Any]] = {}
    for level in GZIP_LEVELS:

        def compress(level: int = level) -> bytes:
            compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
            return compressor.compress(rendered) + compressor.flush()

        gzip[str(level)] = {"seconds": _timed(repeats, compress), "bytes": len(compress())}
    result["gzip"] = gzip
    gc.collect()
    tracemalloc.start()
    kept = build_snapshot(bodies, now)
    result["snapshot_bytes_per_row"] = tracemalloc.get_traced_memory()[0] / max(
        1, sum(1 for _ in kept.observations())
    )
    tracemalloc.stop()
    return result


def summary(result: dict[str, Any]) -> str:
    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.3f}s [{min(values):.3f}-{max(values):.3f}]"

    lines = [
        f"size {result['size']}: {result['pages']} pages of {result['page_size']}, "
        f"{result['body_bytes'] / 1e6:.1f} MB"
    ]
    for key in (
        "json_loads",
        "parse",
        "parse_one_call",
        "parse_snapshot",
        "parse_snapshot_gc_on",
        "render",
    ):
        lines.append(f"  {key:22} {med(result[key])}")
    lines.append(f"  exposition             {result['exposition_bytes'] / 1e6:.1f} MB")
    for level, entry in result["gzip"].items():
        lines.append(
            f"  gzip {level}                 {med(entry['seconds'])} {entry['bytes'] / 1e6:.2f} MB"
        )
    lines.append(f"  snapshot               {result['snapshot_bytes_per_row']:.0f} B/row")
    for page_size, times in result["page_decode"].items():
        lines.append(
            f"  decode, pages of {page_size:6} median {statistics.median(times) * 1000:.2f} ms, "
            f"longest {max(times) * 1000:.2f} ms"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    # python -m bench.stages SIZES [PAGE_SIZES]: the first page size gets every stage.
    def numbers(text: str) -> list[int]:
        return [int(part) for part in text.split(",")]

    pages = tuple(numbers(sys.argv[2])) if len(sys.argv) > 2 else (DEFAULT_PAGE_SIZE,)
    for size in numbers(sys.argv[1] if len(sys.argv) > 1 else "10000"):
        print(summary(measure_stages(size, page_sizes=pages)), flush=True)
