"""2. Verification cost against schema size: one full verification (every check that
runs on schedule; the restore drill is measured by bench_restore) of databases of
10, 1,000 and 10,000 tables, each table with a primary key, a CHECK constraint, a
secondary index, row-level security with 2 policies and rows (analyzed). Every
table is named in critical_tables, required_tables, min_policies (so rls_policies
and index_coverage cover it) and its index in required_indexes; the backup source
is a directory holding a real pg_dump of the database (backup_age, backup_size and
backup_readable, which reads the archive to its end); WAL archiving is on.

Statements are counted by pg_stat_statements (track = top, utility statements
included) in the target's database: everything pgbv sent during the run.

    .venv/bin/python -m bench.bench_verify [--quick] [--runs N]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter

from bench.common import (
    PYTHON, ROOT, Cluster, Report, arguments, create_tables, discard, median, pg_dump, tables_checks, workdir,
    write_config)
from exporter.config import load_settings
from exporter.verify import verify_target

SIZES = (10, 1_000, 10_000)


def config_load(config) -> dict[str, float]:
    import yaml

    text = config.read_text()
    out = {}
    t = time.perf_counter()
    load_settings(config, {})
    out["load_settings"] = time.perf_counter() - t
    t = time.perf_counter()
    yaml.safe_load(text)
    out["yaml.safe_load"] = time.perf_counter() - t
    if hasattr(yaml, "CSafeLoader"):
        t = time.perf_counter()
        yaml.load(text, Loader=yaml.CSafeLoader)
        out["yaml CSafeLoader"] = time.perf_counter() - t
    return out


def statements(cluster: Cluster, dbname: str) -> tuple[int, Counter, list[tuple]]:
    rows = cluster.execute(
        "SELECT calls, query, total_exec_time FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
        "WHERE d.datname = %s AND s.toplevel", [dbname])
    kinds: Counter = Counter()
    for calls, query, _ in rows:
        first = query.lstrip().split(None, 1)[0].upper() if query.strip() else "?"
        kinds[first if first in ("BEGIN", "COMMIT", "ROLLBACK", "SET", "SAVEPOINT", "RELEASE") else "query"] += calls
    slowest = sorted(rows, key=lambda r: -r[2])[:3]
    return sum(r[0] for r in rows), kinds, slowest


def main() -> None:
    def extra(p):
        p.add_argument("--runs", type=int, default=None, help="measured runs per size (default 3, quick 2)")
        p.add_argument("--sizes", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                       help="comma-separated table counts (default 10,1000,10000)")

    args = arguments(__doc__, extra)
    sizes = args.sizes or ((10, 300) if args.quick else SIZES)
    runs = args.runs or (2 if args.quick else 3)
    report = Report("verify", "2. Verification cost against schema size", quick=args.quick)
    base = workdir("verify")
    cluster = Cluster(base, {
        "shared_preload_libraries": "pg_stat_statements", "pg_stat_statements.track": "top",
        "pg_stat_statements.track_utility": "on", "pg_stat_statements.max": "10000",
        "max_locks_per_transaction": "1024",  # pg_dump locks every table of the 10,000
        "archive_mode": "on", "archive_command": "/bin/true",
    }).start()
    cluster.execute("CREATE EXTENSION pg_stat_statements")
    results = []
    try:
        for size in sizes:
            db = f"schema_{size}"
            cluster.execute(f"CREATE DATABASE {db}")
            cluster.migrate_sql(db)
            started = time.monotonic()
            with cluster.connect(db) as conn:
                create_tables(conn, size, rows=20)
            built = time.monotonic() - started
            cluster.execute("SELECT pg_switch_wal()")  # something archived, as on a live server
            backups = base / f"backups_{size}"
            backups.mkdir()
            dump_seconds = pg_dump(cluster, db, backups / f"{db}.dump")
            dump_bytes = (backups / f"{db}.dump").stat().st_size
            config = write_config(base / f"pgbv_{size}.yml", [{
                "name": db, "dsn": cluster.dsn(db), "statement_timeout_seconds": 60,
                "backup": {"source": "directory", "path": str(backups), "pattern": "*.dump", "min_size_mb": 0.001},
                "checks": {**tables_checks(size), "wal_archiving_max_age_minutes": 60},
            }], spool_dir=str(base / "spool"))
            target = load_settings(config, {}).targets[0]
            print(f"schema {size}: built in {built:.1f} s, pg_dump {dump_seconds:.1f} s ({dump_bytes:,} bytes)", flush=True)

            verify_target(target)  # warm-up; also gives the next runs a previous run to compare row counts with
            walls, counts, per_check = [], [], {}
            kinds = Counter()
            slowest = []
            outcomes = {}
            for _ in range(runs):
                cluster.execute("SELECT pg_stat_statements_reset()")
                t = time.monotonic()
                result = verify_target(target)
                walls.append(time.monotonic() - t)
                total, kinds, slowest = statements(cluster, db)
                counts.append(total)
                for check in result.checks:
                    per_check.setdefault(check.name, []).append(check.duration_seconds or 0.0)
                outcomes = {c.name: c.outcome for c in result.checks}
            loading = config_load(config)
            # The CLI, process start and imports included, as cron would run it.
            t = time.monotonic()
            cli = subprocess.run([PYTHON, "-m", "exporter", "verify", "--config", str(config), "--no-record",
                                  "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
            cli_wall = time.monotonic() - t
            report.command(f".venv/bin/python -m exporter verify --config pgbv_{size}.yml --no-record --format json")
            not_passed = {k: v for k, v in outcomes.items() if v != "pass"}
            results.append({
                "tables": size, "build_seconds": built, "dump_bytes": dump_bytes, "walls": walls,
                "wall": median(walls), "statements": counts, "kinds": dict(kinds),
                "checks": {k: median(v) for k, v in per_check.items()}, "cli_wall": cli_wall,
                "cli_exit": cli.returncode, "not_passed": not_passed, "status": result.status,
                "slowest": [(round(ms, 1), q[:100]) for _, q, ms in slowest],
                "config_load": loading,
            })
            print(f"  wall {', '.join(f'{w:.3f}' for w in walls)} s; statements {counts}; {dict(kinds)}; "
                  f"CLI {cli_wall:.2f} s exit {cli.returncode}; not passed: {not_passed}", flush=True)
            cluster.execute(f"DROP DATABASE {db}")
            shutil.rmtree(backups, ignore_errors=True)
    finally:
        discard(cluster, base, args.keep)

    report.say(f"PostgreSQL 18 (embedded wheel), fsync off; {runs} measured runs per size after one warm-up run; "
               f"time is `verify_target()` in one process (connect, backup lookup, every check, the insert "
               f"into backup_verification_log); 'CLI' is `pgbv verify --no-record` as a new process (Python start "
               f"and imports included). Statements: pg_stat_statements in the target's database, every top-level "
               f"statement pgbv sent, BEGIN/COMMIT included.")
    report.say()
    report.table(
        ["tables", "wall (median)", "runs", "statements / run", "of which BEGIN/COMMIT/SET", "CLI wall", "status",
         "dump size"],
        [[f"{r['tables']:,}", f"{r['wall']:.3f} s", " / ".join(f"{w:.3f}" for w in r["walls"]),
          " / ".join(str(c) for c in r["statements"]),
          sum(v for k, v in r["kinds"].items() if k != "query"), f"{r['cli_wall']:.2f} s", r["status"],
          f"{r['dump_bytes'] / 2**20:.1f} MiB"] for r in results])
    names = list(results[-1]["checks"])
    report.say("Seconds per check (median of the runs):")
    report.say()
    report.table(["check"] + [f"{r['tables']:,} tables" for r in results],
                 [[n] + [f"{r['checks'].get(n, 0):.3f}" for r in results] for n in names])
    for r in results:
        if r["not_passed"]:
            report.say(f"- {r['tables']:,} tables: checks not passing: {json.dumps(r['not_passed'])}")
    report.say()
    report.say("Loading the configuration (every table named in 4 lists), in this process: "
               + "; ".join(f"{r['tables']:,} tables: " + ", ".join(f"{k} {v:.3f} s" for k, v in r["config_load"].items())
                           for r in results) + ".")
    report.say()
    report.say(f"Slowest statements at {results[-1]['tables']:,} tables (pg_stat_statements total ms, query start):")
    report.say()
    for ms, query in results[-1]["slowest"]:
        report.say(f"- {ms} ms: `{' '.join(query.split())}`")
    report.say()

    flat = len({c for r in results for c in r["statements"]}) == 1
    report.target("statement count independent of table count", "constant",
                  ", ".join(f"{r['tables']:,}: {r['statements'][0]}" for r in results), flat)
    big = results[-1]
    note = "" if big["tables"] >= 10_000 else "quick run: not 10,000 tables. "
    report.target(f"{big['tables']:,} tables verified", "< 2 s", f"{big['wall']:.2f} s (CLI {big['cli_wall']:.2f} s)",
                  big["wall"] < 2.0 and big["tables"] >= 10_000 or (args.quick and big["wall"] < 2.0), note)
    report.data = {"results": results}
    report.finish(args.json)


if __name__ == "__main__":
    main()
