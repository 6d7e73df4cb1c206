"""5. Restore drill overhead: pgbv's logical drill of a pg_dump archive (restore into a
scratch database, the copy's checks, exact row counts compared with live, drop)
against a raw `pg_restore --jobs N` of the same archive into an empty database,
alternating, several runs each.

The database is an order system: customers, orders, order_items and events
(payload text), with primary keys, foreign keys, CHECK constraints, secondary
indexes and RLS policies; it is sized so that its custom-format dump (pg_dump's
default compression) is at least --dump-mb. Both sides use the same pg_restore
(the embedded 18) with the same --jobs and flags (--no-owner --no-privileges
--exit-on-error); the raw side's CREATE DATABASE and DROP DATABASE are outside its
time, the drill's are inside its time (they are part of the drill).

    .venv/bin/python -m bench.bench_restore [--quick] [--dump-mb 500] [--runs 6] [--jobs 2]
"""

from __future__ import annotations

import statistics
import subprocess
import time

from bench.common import Cluster, Report, arguments, discard, pg_dump, workdir, write_config
from exporter.backups import source_for
from exporter.config import load_settings
from exporter.restore import drill

SCHEMA = """
CREATE TABLE customers (
    id bigint PRIMARY KEY, email text NOT NULL UNIQUE, name text NOT NULL,
    region text NOT NULL CHECK (region IN ('eu', 'us', 'apac')), created_at timestamptz NOT NULL);
CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id bigint NOT NULL REFERENCES customers,
    status text NOT NULL CHECK (status IN ('new', 'paid', 'shipped', 'cancelled')),
    total_cents bigint NOT NULL CHECK (total_cents >= 0), created_at timestamptz NOT NULL, note text);
CREATE INDEX orders_customer_idx ON orders (customer_id, created_at);
CREATE TABLE order_items (
    id bigint PRIMARY KEY, order_id bigint NOT NULL REFERENCES orders, sku text NOT NULL,
    quantity int NOT NULL CHECK (quantity > 0), price_cents bigint NOT NULL);
CREATE INDEX order_items_order_idx ON order_items (order_id);
CREATE TABLE events (
    id bigint PRIMARY KEY, order_id bigint NOT NULL, kind text NOT NULL, payload text NOT NULL, at timestamptz NOT NULL);
CREATE INDEX events_order_idx ON events (order_id, at);
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_by_region ON orders USING (customer_id > 0);
ALTER TABLE customers ENABLE ROW LEVEL SECURITY;
CREATE POLICY customers_self ON customers USING (true);
"""


def populate(cluster: Cluster, db: str, orders: int) -> None:
    customers = max(orders // 5, 10)
    chunk = 500_000
    with cluster.connect(db) as conn:
        conn.execute(SCHEMA)
        conn.execute("""
            INSERT INTO customers
            SELECT g, 'customer' || g || '@example.com', 'Customer ' || md5(g::text),
                   (ARRAY['eu', 'us', 'apac'])[1 + g %% 3], now() - g * interval '1 minute'
              FROM generate_series(1, %s) g""", [customers])
        for low in range(1, orders + 1, chunk):
            high = min(orders, low + chunk - 1)
            conn.execute("""
                INSERT INTO orders
                SELECT g, 1 + (g * 7919) %% %(customers)s, (ARRAY['new', 'paid', 'shipped', 'cancelled'])[1 + g %% 4],
                       (g * 31) %% 100000, now() - g * interval '10 seconds',
                       CASE WHEN g %% 3 = 0 THEN 'deliver to ' || md5(g::text) END
                  FROM generate_series(%(low)s::bigint, %(high)s::bigint) g""",
                         {"customers": customers, "low": low, "high": high})
            conn.execute("""
                INSERT INTO order_items
                SELECT g, 1 + (g - 1) / 3, 'SKU-' || ((g * 104729) %% 50000), 1 + g %% 5, (g * 17) %% 20000
                  FROM generate_series(%(low)s::bigint * 3 - 2, %(high)s::bigint * 3) g""", {"low": low, "high": high})
            conn.execute("""
                INSERT INTO events
                SELECT g, 1 + (g - 1) / 2, (ARRAY['created', 'paid', 'packed', 'shipped'])[1 + g %% 4],
                       translate(encode(sha256(g::text::bytea) || sha256((g + 1)::text::bytea)
                                        || sha256((-g)::text::bytea) || sha256((g * 7)::text::bytea)
                                        || sha256((g * 11)::text::bytea) || sha256((g * 13)::text::bytea)
                                        || sha256((g * 17)::text::bytea) || sha256((g * 19)::text::bytea)
                                        || sha256((g * 23)::text::bytea) || sha256((g * 29)::text::bytea), 'base64'),
                                 E'\n', ''),
                       now() - g * interval '5 seconds'
                  FROM generate_series(%(low)s::bigint * 2 - 1, %(high)s::bigint * 2) g""", {"low": low, "high": high})
        conn.execute("VACUUM ANALYZE")


def shop_dump(cluster: Cluster, base, dump_mb: float):
    """The shop database, sized so that its custom dump is at least dump_mb MiB, dumped to
    base/backups/shop.dump: (orders, dump path, seconds to build, seconds to dump)."""
    # Sized from the measured dump bytes per order (customers, 3 items, 2 events) with pg_dump's
    # default compression.
    orders = int(dump_mb * 1.05 * 2**20 / BYTES_PER_ORDER)  # 5 % margin over the size asked
    t = time.monotonic()
    cluster.execute("CREATE DATABASE shop")
    populate(cluster, "shop", orders)
    built = time.monotonic() - t
    backups = base / "backups"
    backups.mkdir()
    dump = backups / "shop.dump"
    return orders, dump, built, pg_dump(cluster, "shop", dump)


def raw_restore(cluster: Cluster, dump, jobs: int, n: int) -> float:
    name = f"raw_{n}"
    cluster.execute(f"CREATE DATABASE {name}")
    t = time.monotonic()
    subprocess.run([str(cluster.tool("pg_restore")), "--exit-on-error", "--no-owner", "--no-privileges",
                    f"--jobs={jobs}", f"--dbname={cluster.dsn(name)}", str(dump)], check=True, capture_output=True,
                   timeout=7200)
    seconds = time.monotonic() - t
    cluster.execute(f"DROP DATABASE {name}")
    return seconds


BYTES_PER_ORDER = 730
PHASES = ("leftovers", "create_database", "run_tool", "run_with_progress", "copy_checks", "copy_counts",
          "live_counts", "_drop_quietly")


class PhaseTimer:
    """Times the drill's steps by wrapping the names exporter.restore.logical calls (measurement
    only: each wrapper calls the original and adds up its time)."""

    def __init__(self):
        from exporter.restore import logical

        self.module = logical
        self.seconds: dict[str, float] = {}
        self._originals = {name: getattr(logical, name) for name in PHASES}
        for name, original in self._originals.items():
            setattr(logical, name, self._wrap(name, original))

    def _wrap(self, name, original):
        def timed(*a, **kw):
            t = time.monotonic()
            try:
                return original(*a, **kw)
            finally:
                self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - t
        return timed

    def take(self) -> dict[str, float]:
        out, self.seconds = self.seconds, {}
        return out


def main() -> None:
    def extra(p):
        p.add_argument("--dump-mb", type=float, default=None, help="smallest dump size in MiB (default 500, quick 20)")
        p.add_argument("--runs", type=int, default=None, help="runs of each side (default 6, quick 2)")
        p.add_argument("--jobs", type=int, default=2, help="pg_restore --jobs for both sides (default 2: the cores)")

    args = arguments(__doc__, extra)
    dump_mb = args.dump_mb or (20 if args.quick else 500)
    runs = args.runs or (2 if args.quick else 6)
    report = Report("restore", "5. Restore drill overhead", quick=args.quick)
    base = workdir("restore")
    cluster = Cluster(base, {"maintenance_work_mem": "256MB"}).start()
    try:
        orders, dump, built, dump_seconds = shop_dump(cluster, base, dump_mb)
        backups = dump.parent
        dump_bytes = dump.stat().st_size
        db_bytes = cluster.execute("SELECT pg_database_size('shop')")[0][0]
        print(f"database {db_bytes / 2**20:.0f} MiB built in {built:.0f} s; dump {dump_bytes / 2**20:.0f} MiB "
              f"in {dump_seconds:.0f} s", flush=True)
        if dump_bytes < dump_mb * 2**20:
            print(f"warning: the dump is {dump_bytes / 2**20:.0f} MiB, under the {dump_mb:g} MiB asked", flush=True)
        config = write_config(base / "pgbv.yml", [{
            "name": "shop", "dsn": cluster.dsn("shop"),
            "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump"},
            "checks": {"critical_tables": ["customers", "orders", "order_items", "events"],
                       "min_policies": {"orders": 1, "customers": 1, "order_items": 0, "events": 0},
                       "required_indexes": ["orders_customer_idx", "order_items_order_idx", "events_order_idx"],
                       "max_row_drop_percent": 1},
            "restore": {"enabled": True, "jobs": args.jobs, "timeout_minutes": 120, "rto_minutes": 60},
        }], spool_dir=str(base / "spool"))
        target = load_settings(config, {}).targets[0]
        info = source_for(target.backup).lookup().info
        assert info is not None and info.kind == "pg_dump custom", info

        raws, drills, details = [], [], []
        phases = PhaseTimer()
        raw_restore(cluster, dump, args.jobs, 0)  # warm-up: the archive in the page cache for both sides
        for n in range(1, runs + 1):
            # Alternating, and each side first in every other pair: what the previous restore
            # leaves behind (dirty pages being written, a dropped database's files) weighs on
            # both alike.
            if n % 2:
                raws.append(raw_restore(cluster, dump, args.jobs, n))
            t = time.monotonic()
            result = drill(target, info)
            drills.append(time.monotonic() - t)
            if not n % 2:
                raws.append(raw_restore(cluster, dump, args.jobs, n))
            problems = result.problems + [f"{c.name}: {c.message}" for c in result.failed_checks]
            details.append({"phases": phases.take(),
                            "restore_seconds": result.restore_seconds, "duration_seconds": result.duration_seconds,
                            "items": result.items, "problems": problems, "rows": result.rows})
            print(f"run {n}: raw {raws[-1]:.1f} s; drill {drills[-1]:.1f} s (its pg_restore {result.restore_seconds:.1f} s, "
                  f"{result.items} items){'; PROBLEMS ' + str(problems) if problems else ''}", flush=True)
        leftovers = cluster.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'pgbv_restore_%'")[0][0]
    finally:
        discard(cluster, base, args.keep)

    raw_med, drill_med = statistics.median(raws), statistics.median(drills)
    ratio = drill_med / raw_med
    inner = statistics.median(d["restore_seconds"] for d in details)
    report.say(f"Database: {db_bytes / 2**20:,.0f} MiB ({orders:,} orders, {orders * 3:,} order items, {orders * 2:,} "
               f"events, {max(orders // 5, 10):,} customers); custom-format dump (default compression): "
               f"{dump_bytes / 2**20:,.0f} MiB, written in {dump_seconds:.0f} s. pg_restore --jobs {args.jobs} "
               f"(embedded PostgreSQL 18, fsync off on the server). One untimed raw restore first (page cache), then "
               f"{runs} pairs, raw first in odd pairs and the drill first in even ones.")
    report.say()
    report.table(["run", "raw pg_restore", "drill (all)", "drill: its pg_restore", "drill: the rest", "drill / raw"],
                 [[n + 1, f"{r:.1f} s", f"{d:.1f} s", f"{x['restore_seconds']:.1f} s",
                   f"{d - x['restore_seconds']:.1f} s", f"{d / r:.3f}"]
                  for n, (r, d, x) in enumerate(zip(raws, drills, details))])
    report.say(f"Medians: raw {raw_med:.1f} s, drill {drill_med:.1f} s (its pg_restore {inner:.1f} s); drill / raw = "
               f"{ratio:.3f} (sums: {sum(drills) / sum(raws):.3f}). The rest of the drill is pg_restore --list, CREATE DATABASE, the copy's checks, exact "
               f"counts of {sum(v or 0 for v in details[-1]['rows'].values()):,} rows in 4 critical tables, live "
               f"estimates, the comparison and DROP DATABASE. Scratch databases left behind: {leftovers}.")
    report.say()
    labels = {"leftovers": "look for leftovers", "create_database": "CREATE DATABASE",
              "run_tool": "pg_restore --list", "run_with_progress": "pg_restore --verbose --jobs",
              "copy_checks": "the copy's checks", "copy_counts": "exact counts in the copy",
              "live_counts": "live counts (estimates)", "_drop_quietly": "DROP DATABASE"}
    report.say("Where the drill's time goes (median of the runs; the steps exporter/restore/logical.py calls, timed "
               "by wrappers in the bench process):")
    report.say()
    report.table(["step", "seconds"],
                 [[labels[p], f"{statistics.median(d['phases'].get(p, 0.0) for d in details):.2f}"] for p in PHASES])
    report.command(f"pg_restore --exit-on-error --no-owner --no-privileges --jobs={args.jobs} --dbname=<empty db> shop.dump")
    report.command("exporter.restore.drill(target, backup) (what `pgbv restore-drill` runs)")
    report.target("drill overhead vs raw pg_restore", "<= 1.10x", f"{ratio:.3f}x", ratio <= 1.10,
                  f"dump {dump_bytes / 2**20:,.0f} MiB" + ("" if dump_bytes >= 500 * 2**20 else " (< 500 MiB)"))
    report.data = {"raw": raws, "drill": drills, "details": details, "dump_bytes": dump_bytes, "db_bytes": db_bytes}
    report.finish(args.json)


if __name__ == "__main__":
    main()
