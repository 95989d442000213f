"""`python -m bench` (or `make bench`): the exporter's benchmark, written to docs/.

.venv/bin/python -m bench                         # 1,000, 10,000 and 100,000; ~25 min
.venv/bin/python -m bench --sizes 1000,10000 --repeats 2 --out /tmp/bench
.venv/bin/python -m bench --page-sizes 100        # only the exporter's default page size
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from bench.report import Machine, write_report
from bench.run import DEFAULT_PAGE_SIZE, FURTHER_PAGE_SIZE, Runner, Settings, as_dict
from bench.stages import measure_stages

ROOT = Path(__file__).resolve().parent.parent


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of sizes: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be positive")
    return tuple(dict.fromkeys(sizes))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Scrape latency, poll time and memory of the exporter, side by side with "
        "their floors and the usual prometheus-client design, against the simulator.",
    )
    parser.add_argument(
        "--sizes", type=_sizes, default=(1_000, 10_000, 100_000), help="fleet sizes (1000,10000)"
    )
    parser.add_argument(
        "--page-sizes",
        type=_sizes,
        default=(DEFAULT_PAGE_SIZE, FURTHER_PAGE_SIZE),
        help="rows per page; the first (the exporter's default) gets every measurement, the "
        "others those a page size changes "
        f"({DEFAULT_PAGE_SIZE},{FURTHER_PAGE_SIZE})",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="polls per case; scrapes scale with it (3)"
    )
    parser.add_argument(
        "--budget", type=float, default=6.0, help="seconds per scrape cell, at least (6)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs",
        help="directory for benchmarks.md and img/benchmarks.png (docs/)",
    )
    parser.add_argument("--json", type=Path, help="also write the raw results to this file")
    parser.add_argument(
        "--memory-polls", type=int, default=4, help="polls of the exporter CLI for its RSS (4)"
    )
    parser.add_argument("--no-usual", action="store_true", help="skip the usual design")
    parser.add_argument("--no-memory", action="store_true", help="skip the exporter CLI's RSS")
    parser.add_argument(
        "--no-stages", action="store_true", help="skip the in-process stage timings"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    settings = Settings(
        sizes=args.sizes,
        page_sizes=args.page_sizes,
        repeats=args.repeats,
        budget=args.budget,
        usual=not args.no_usual,
        memory=not args.no_memory,
        memory_polls=max(1, args.memory_polls),
        log=not args.quiet,
    )
    machine = Machine.current()
    started = time.time()
    results = Runner(settings).run()
    stages = None
    if not args.no_stages:
        if settings.log:
            print(f"[bench] stages in-process at {max(settings.sizes)} environments", flush=True)
        stages = measure_stages(
            max(settings.sizes), repeats=args.repeats, page_sizes=settings.page_sizes
        )
    machine.finish(time.time() - started)
    args.out.mkdir(parents=True, exist_ok=True)
    raw = {
        "machine": machine.as_dict(),
        "settings": {
            "sizes": list(args.sizes),
            "page_sizes": list(settings.page_sizes),
            "repeats": args.repeats,
            "budget": args.budget,
            "usual": settings.usual,
            "memory": settings.memory,
            "memory_polls": settings.memory_polls,
        },
        "sizes": as_dict(results),
        "stages": stages,
    }
    if args.json is not None:
        args.json.write_text(json.dumps(raw, indent=1) + "\n")
    markdown, plot = write_report(raw, args.out)
    if settings.log:
        print(f"[bench] wrote {markdown} and {plot}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
