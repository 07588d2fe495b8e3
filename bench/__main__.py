"""Run every benchmark, print one table, and record the figures in docs/performance.md.

    python -m bench              # full scale (about a minute); updates docs/performance.md
    python -m bench --quick      # small scale, prints only (the smoke test runs this)
    python -m bench --no-write   # full scale, prints only
    python -m bench --write PATH # write the figures section into PATH instead
    python -m bench --scale      # 10k, 100k, 1M parked runs (minutes); updates docs/performance.md
    nox -s bench                 # the same, in a fresh virtualenv

Every figure is compared with a baseline measured in the same run on the same machine
(plain sqlite3, a raw Redis client loop, ...), so the ratios travel between machines
better than the absolute numbers. Benchmarks that need a server run only when its
variable is set (ACTORFLOW_REDIS_URL, ACTORFLOW_PG_DSN, ACTORFLOW_KAFKA_BOOTSTRAP) and are
skipped, with the reason printed, otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import os
import platform
import sqlite3
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from bench import latency as latency_bench
from bench import sqlite as sqlite_bench
from bench.sqlite import Row

DOC = Path(__file__).resolve().parent.parent / "docs" / "performance.md"
BEGIN = "<!-- bench:begin (written by `python -m bench`; edit outside these markers) -->"
END = "<!-- bench:end -->"
SCALE_BEGIN = (
    "<!-- scale:begin (written by `python -m bench --scale`; edit outside these markers) -->"
)
SCALE_END = "<!-- scale:end -->"


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a benchmark entry point, sync or async."""
    if inspect.iscoroutinefunction(fn):
        return trio.run(fn, *args)
    return fn(*args)


def _streaming(quick: bool) -> list[Row]:
    """bench/streaming.py (another module's figures), when ACTORFLOW_REDIS_URL is set."""
    if not os.environ.get("ACTORFLOW_REDIS_URL"):
        print("streaming: skipped (set ACTORFLOW_REDIS_URL to run bench/streaming.py)")
        return []
    module = importlib.import_module("bench.streaming")
    events = 1_000 if quick else 10_000
    run = getattr(module, "run", None)
    if run is None:
        _call(module.main, events)
        return []
    figures = _call(run, events)
    if not figures:
        print("streaming: skipped (no Redis reachable)")
        return []
    raw = figures.get("raw_xadd")
    rows = []
    for name, value in figures.items():
        ratio = "baseline" if name == "raw_xadd" else (f"{value / raw:.2f} x raw" if raw else "")
        rows.append(Row(f"Redis Streams: {name} ({events:,} events)", value, "events/s", ratio))
    return rows


def _kafka(quick: bool) -> list[Row]:
    """bench/kafka.py, when ACTORFLOW_KAFKA_BOOTSTRAP is set: the relay and a connector
    beside confluent-kafka's own produce and consume rates, against the same broker."""
    if not os.environ.get("ACTORFLOW_KAFKA_BOOTSTRAP"):
        print("kafka: skipped (set ACTORFLOW_KAFKA_BOOTSTRAP to run bench/kafka.py)")
        return []
    module = importlib.import_module("bench.kafka")
    events = 1_000 if quick else 3_000
    figures = _call(module.run, events)
    if not figures:
        return []
    produce, consume = figures["raw_produce"], figures["raw_consume"]
    memory = figures["memory_connector"]
    return [
        Row(f"Kafka: confluent-kafka produce ({events:,} events)", produce, "events/s", "baseline"),
        Row(f"Kafka: confluent-kafka consume ({events:,} events)", consume, "events/s", "baseline"),
        Row(
            f"Kafka: outbox relay -> KafkaStreamer ({events:,} events)",
            figures["relay"],
            "events/s",
            f"{figures['relay'] / produce:.2f} x raw produce",
        ),
        Row(
            f"Kafka: connector <- MemorySource ({events:,} events)", memory, "events/s", "baseline"
        ),
        Row(
            f"Kafka: connector <- KafkaStreamer ({events:,} events)",
            figures["connector"],
            "events/s",
            f"{figures['connector'] / memory:.2f} x MemorySource, "
            f"{figures['connector'] / consume:.3f} x raw consume",
        ),
        Row(
            f"Kafka: connector <- KafkaStreamer, async_commits ({events:,} events)",
            figures["connector_async_commits"],
            "events/s",
            f"{figures['connector_async_commits'] / memory:.2f} x MemorySource, "
            f"{figures['connector_async_commits'] / consume:.3f} x raw consume",
        ),
    ]


def _postgres(quick: bool) -> list[Row]:
    """bench/postgres*.py, when ACTORFLOW_PG_DSN is set (they print their own figures)."""
    dsn = os.environ.get("ACTORFLOW_PG_DSN")
    modules = sorted(p.stem for p in Path(__file__).parent.glob("postgres*.py"))
    if not modules:
        return []
    if not dsn:
        print(f"postgres: skipped (set ACTORFLOW_PG_DSN to run {', '.join(modules)})")
        return []
    for name in modules:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "run", None) or getattr(module, "main", None)
        if entry is None:
            print(f"postgres: bench/{name}.py has no main() or run(); skipped")
            continue
        print(f"postgres: bench/{name}.py")
        count = 500 if quick else 4_000
        parameters = inspect.signature(entry).parameters
        _call(entry, *([dsn, count][: len(parameters)]))
    return []


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"trio {trio.__version__}"
    )


def table(rows: list[Row]) -> str:
    lines = ["| figure | value | unit | compared with the baseline |", "|---|---:|---|---|"]
    for row in rows:
        value = f"{row.value:,.2f}" if row.value < 10 else f"{row.value:,.0f}"
        lines.append(f"| {row.name.strip()} | {value} | {row.unit} | {row.ratio} |")
    return "\n".join(lines)


def write_doc(path: Path, rows: list[Row], command: str, seconds: float) -> None:
    """Replace the figures section of ``path`` (between the markers), keeping the rest."""
    section = "\n".join(
        [
            BEGIN,
            "",
            f"Measured {datetime.date.today().isoformat()} with `{command}` "
            f"({seconds:.0f} s) on {_machine()}.",
            "",
            table(rows),
            "",
            END,
        ]
    )
    text = path.read_text() if path.exists() else "# Performance\n\n" + BEGIN + "\n" + END + "\n"
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
        start, end = text.find(BEGIN), text.find(END)
    path.write_text(text[:start] + section + text[end + len(END) :])


def _scale(args: argparse.Namespace) -> int:
    from bench import scale

    sizes = (
        tuple(int(size.replace("_", "")) for size in args.sizes.split(","))
        if args.sizes
        else scale.SIZES
    )
    print(f"actorflow scale benchmark ({', '.join(f'{n:,}' for n in sizes)}) on {_machine()}")
    started = time.perf_counter()
    text = scale.main(sizes)
    seconds = time.perf_counter() - started
    target = args.write or (None if args.no_write else DOC)
    if target is not None:
        command = "python -m bench --scale" + (f" --sizes {args.sizes}" if args.sizes else "")
        section = "\n".join(
            [
                SCALE_BEGIN,
                "",
                f"Measured {datetime.date.today().isoformat()} with `{command}` "
                f"({seconds:.0f} s) on {_machine()}.",
                "",
                text,
                "",
                SCALE_END,
            ]
        )
        doc = target.read_text() if target.exists() else "# Performance\n"
        start, end = doc.find(SCALE_BEGIN), doc.find(SCALE_END)
        if start < 0 or end < start:
            doc = doc.rstrip("\n") + "\n\n" + section + "\n"
        else:
            doc = doc[:start] + section + doc[end + len(SCALE_END) :]
        target.write_text(doc)
        print(f"wrote the scale figures into {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small scale; prints only")
    parser.add_argument("--no-write", action="store_true", help="do not write the doc")
    parser.add_argument("--write", type=Path, help="write the figures into this file")
    parser.add_argument(
        "--scale",
        action="store_true",
        help="parked runs with timers at 10k, 100k, 1M (bench/scale.py; not in the quick run)",
    )
    parser.add_argument(
        "--sizes", help="comma-separated run counts for --scale (default 10000,100000,1000000)"
    )
    args = parser.parse_args(argv)
    if args.scale:
        return _scale(args)
    command = "python -m bench" + (" --quick" if args.quick else "")
    started = time.perf_counter()
    rows: list[Row] = []
    failed = False
    print(f"actorflow benchmarks ({'quick' if args.quick else 'full'} scale) on {_machine()}")
    sections: list[tuple[str, Callable[[], list[Row]]]] = [
        (
            "sqlite",
            lambda: sqlite_bench.measure(sqlite_bench.QUICK if args.quick else sqlite_bench.FULL),
        ),
        (
            "latency",
            lambda: latency_bench.measure(
                latency_bench.QUICK if args.quick else latency_bench.FULL
            ),
        ),
        ("streaming", lambda: _streaming(args.quick)),
        ("kafka", lambda: _kafka(args.quick)),
        ("postgres", lambda: _postgres(args.quick)),
    ]
    for what, section in sections:
        try:
            rows.extend(section())
        except Exception:
            failed = True
            print(f"{what}: FAILED", file=sys.stderr)
            traceback.print_exc()
    seconds = time.perf_counter() - started
    print()
    width = max((len(row.name) for row in rows), default=20)
    for row in rows:
        print(f"{row.name:<{width}}  {row.value:>12,.1f} {row.unit:<14} {row.ratio}")
    print(f"\n({seconds:.0f} s; `{command}`)")
    target = args.write or (None if args.quick or args.no_write else DOC)
    if target is not None and rows:
        write_doc(target, rows, command, seconds)
        print(f"wrote the figures into {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
