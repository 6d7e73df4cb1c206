"""backup_content against backup_readable on the same custom-format dump: the first
reads the archive's table of contents (and asks the live database one statement or
four), the second reads the whole archive through `pg_restore -f /dev/null`.

The database is bench_restore's order system (customers, orders, order_items,
events with primary keys, indexes and RLS policies), sized so that its custom dump
(pg_dump's default compression) is at least --dump-mb. Both checks run as `pgbv
verify` runs them (exporter.checks.runner.run_check in a read-only session), in
alternation, several runs each; the TOC read alone (exporter.backups.toc) is timed
too. The page cache holds the archive for both (one untimed full read first).

    .venv/bin/python -m bench.bench_content [--quick] [--dump-mb 300] [--runs 5]
"""

from __future__ import annotations

import statistics
import time
from datetime import datetime, timezone

from bench.bench_restore import shop_dump
from bench.common import Cluster, Report, arguments, discard, fmt_ms, workdir, write_config
from exporter.backups import source_for
from exporter.backups.toc import read_archive_toc
from exporter.checks.backup_content import CHECK as CONTENT
from exporter.checks.backup_readable import CHECK as READABLE
from exporter.checks.base import CheckContext
from exporter.checks.runner import run_check
from exporter.config import load_settings
from exporter.db import connect


def timed_check(check, target, lookup) -> tuple[float, str, str]:
    with connect(target) as conn:
        ctx = CheckContext(target=target, conn=conn, log_conn=conn, backup=lookup, previous=None,
                           now=datetime.now(timezone.utc))
        started = time.monotonic()
        result = run_check(check, ctx)
        return time.monotonic() - started, result.outcome, result.message


def main() -> None:
    def extra(p):
        p.add_argument("--dump-mb", type=float, default=None, help="smallest dump size in MiB (default 300, quick 10)")
        p.add_argument("--runs", type=int, default=None, help="runs of each check (default 5, quick 2)")

    args = arguments(__doc__, extra)
    dump_mb = args.dump_mb or (10 if args.quick else 300)
    runs = args.runs or (2 if args.quick else 5)
    report = Report("content", "backup_content vs backup_readable", quick=args.quick)
    base = workdir("content")
    cluster = Cluster(base).start()
    try:
        orders, dump, built, dump_seconds = shop_dump(cluster, base, dump_mb)
        backups = dump.parent
        dump_bytes = dump.stat().st_size
        print(f"database built in {built:.0f} s; dump {dump_bytes / 2**20:.0f} MiB in {dump_seconds:.0f} s", flush=True)
        config = write_config(base / "pgbv.yml", [{
            "name": "shop", "dsn": cluster.dsn("shop"),
            "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump", "timeout_seconds": 3600},
            "checks": {"critical_tables": ["customers", "orders", "order_items", "events"],
                       "min_policies": {"orders": 1, "customers": 1, "order_items": 0, "events": 0},
                       "required_indexes": ["orders_customer_idx", "order_items_order_idx", "events_order_idx"]},
        }], spool_dir=str(base / "spool"))
        target = load_settings(config, {}).targets[0]
        lookup = source_for(target.backup).lookup()
        assert lookup.info is not None and lookup.info.kind == "pg_dump custom", lookup

        timed_check(READABLE, target, lookup)  # warm-up: the archive in the page cache
        content, readable, toc_reads = [], [], []
        outcomes = set()
        for n in range(runs):
            pair = [(CONTENT, content), (READABLE, readable)]
            for check, into in (pair if n % 2 == 0 else pair[::-1]):
                seconds, outcome, message = timed_check(check, target, lookup)
                into.append(seconds)
                outcomes.add((check.name, outcome, message))
            t = time.monotonic()
            toc = read_archive_toc(dump, "pg_dump custom", 60)
            toc_reads.append(time.monotonic() - t)
            print(f"run {n + 1}: backup_content {fmt_ms(content[-1])}, backup_readable {fmt_ms(readable[-1])}, "
                  f"TOC alone {fmt_ms(toc_reads[-1])}", flush=True)
    finally:
        discard(cluster, base, args.keep)

    c_med, r_med, toc_med = statistics.median(content), statistics.median(readable), statistics.median(toc_reads)
    report.say(f"Dump: {dump_bytes / 2**20:,.0f} MiB custom format (default compression), {len(toc.entries)} TOC "
               f"entries, {orders:,} orders; {runs} runs of each check, alternating, after one untimed full read.")
    report.say()
    report.table(["run", "backup_content", "backup_readable", "TOC read alone"],
                 [[n + 1, fmt_ms(c), fmt_ms(r), fmt_ms(x)] for n, (c, r, x) in enumerate(zip(content, readable, toc_reads))])
    report.say(f"Medians: backup_content {fmt_ms(c_med)} (of which the TOC read {fmt_ms(toc_med)}), backup_readable "
               f"{fmt_ms(r_med)}: backup_content costs {c_med / r_med * 100:.2f} % of the full read "
               f"({r_med / c_med:,.0f}x cheaper).")
    for name, outcome, message in sorted(outcomes):
        report.say(f"- {name}: {outcome}: {message}")
    report.command("exporter.checks.runner.run_check(backup_content | backup_readable, ctx)")
    report.target("backup_content cost vs backup_readable (not an issue target; for the notes)", "n/a",
                  f"{fmt_ms(c_med)} vs {fmt_ms(r_med)}", None, f"dump {dump_bytes / 2**20:,.0f} MiB")
    report.data = {"content": content, "readable": readable, "toc": toc_reads, "dump_bytes": dump_bytes}
    report.finish(args.json)


if __name__ == "__main__":
    main()
