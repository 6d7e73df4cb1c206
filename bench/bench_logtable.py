"""4. The log table at scale: backup_verification_log grown to 1,000,000 rows; the
migration's three functions, the success-ratio queries and every read pgbv itself
sends per run and per snapshot refresh, timed and with their plans
(EXPLAIN (ANALYZE, BUFFERS)).

The rows are shaped like real ones: verification_details is the document of a real
verification of the seed application (taken from a run at start), with the target,
the duration and the outcome varied. Ten targets share the log database (log_dsn),
each verified every 5 minutes: 2,880 rows a day, so 1,000,000 rows are 347 days of
history (cleanup never ran). app00 has restore drills, one a week; app01 has
restore drills enabled but none recorded yet (a new target: the worst case for
the "last drill" reads). The table grows by older history, so the 30-day window
is full from the first size on; what grows is only what lies behind it.

    .venv/bin/python -m bench.bench_logtable [--quick]
"""

from __future__ import annotations

import json
import re
import statistics
import time
from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from bench.common import SEED_CHECKS, Cluster, Report, arguments, discard, make_demo_template, workdir, write_config
from exporter import record, snapshot
from exporter.checks import log_functions, success_rate
from exporter.config import load_settings
from exporter.db import connect_dsn
from exporter.verify import verify_target

SIZES = (100_000, 300_000, 1_000_000)
TARGETS = 10
STEP_SECONDS = 30  # 10 targets every 5 minutes


def fill(conn: psycopg.Connection, start: int, end: int, details: dict, chunk: int = 100_000) -> None:
    """Rows start..end-1; row g was verified g*30 s ago, by target app{g % 10}."""
    for low in range(start, end, chunk):
        high = min(end, low + chunk)
        conn.execute(
            """
            INSERT INTO backup_verification_log
                (verified_at, backup_id, backup_age_hours, backup_size_mb, status, checks_passed, checks_failed,
                 error_details, verification_details, created_at)
            SELECT at, 'seed_app-' || to_char(at, 'YYYYMMDD') || '.dump', (g / 120) %% 24, 120, status,
                   CASE status WHEN 'failure' THEN 15 ELSE 16 END, CASE status WHEN 'failure' THEN 1 ELSE 0 END,
                   CASE status WHEN 'failure' THEN '{"failed": ["backup_age"]}'::jsonb END,
                   %(details)s::jsonb
                     || jsonb_build_object('target', 'app' || lpad((g %% 10)::text, 2, '0'),
                                           'trigger', 'schedule',
                                           'duration_seconds', 0.4 + (g %% 17) / 100.0)
                     || CASE WHEN g %% 20160 = 0 THEN jsonb_build_object('restore', jsonb_build_object(
                            'outcome', 'pass', 'duration_seconds', 41.5, 'kind', 'logical',
                            'rows', jsonb_build_object('organizations', 5, 'appointments', 20)))
                        ELSE '{}'::jsonb END,
                   at
              FROM (SELECT g, now() - g * interval '30 seconds' AS at,
                           CASE WHEN g %% 100 = 7 THEN 'failure' WHEN g %% 50 = 3 THEN 'warning' ELSE 'success' END
                             AS status
                      FROM generate_series(%(low)s::int, %(high)s::int - 1) AS g) AS s
            """,
            {"details": json.dumps(details), "low": low, "high": high},
        )


def timed(conn: psycopg.Connection, query, params, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        cur = conn.execute(query, params)
        if cur.description:
            cur.fetchall()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def scans(plan: dict) -> list[str]:
    """The scan nodes of a JSON plan: 'Index Scan on idx', 'Seq Scan on t'..."""
    out = []

    def walk(node: dict) -> None:
        kind = node.get("Node Type", "")
        if "Scan" in kind and kind not in ("Function Scan", "CTE Scan", "Subquery Scan", "Values Scan"):
            where = node.get("Index Name") or node.get("Relation Name") or ""
            out.append(f"{kind} {where}".strip())
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return out


_SCAN = re.compile(r"(Seq Scan|Index Only Scan|Index Scan|Bitmap Heap Scan|Bitmap Index Scan)(?: Backward)?"
                   r"(?: using (\S+))? on (\S+)")


def text_scans(plan: str) -> list[str]:
    return [f"{m.group(1)} {m.group(2) or m.group(3)}" for m in _SCAN.finditer(plan)]


def explain(conn: psycopg.Connection, query, params, fmt: str) -> object:
    # SERIALIZE (PostgreSQL 17+): the time to detoast and convert the result rows is counted too.
    prefix = sql.SQL(f"EXPLAIN (ANALYZE, BUFFERS, SERIALIZE{', FORMAT JSON' if fmt == 'json' else ''}) ")
    statement = prefix + (query if isinstance(query, sql.Composable) else sql.SQL(query))
    rows = conn.execute(statement, params).fetchall()
    return rows[0][0][0] if fmt == "json" else "\n".join(r[0] for r in rows)


class Recorder:
    """Stands in for a connection and keeps every statement pgbv sends through it, so the
    benchmark times and explains exactly what the current code sends."""

    def __init__(self, conn: psycopg.Connection):
        self._conn = conn
        self.sent: list[tuple[object, object]] = []

    def execute(self, query, params=None, **kwargs):
        self.sent.append((query, params))
        return self._conn.execute(query, params, **kwargs)

    def __getattr__(self, name):
        return getattr(self._conn, name)


def describe(conn: psycopg.Connection, query) -> str:
    text = " ".join((query.as_string(conn) if isinstance(query, sql.Composable) else str(query)).split())
    if "count(*) FILTER" in text:
        return "success ratio"
    if "'outcome'" in text:
        return "last good drill"
    if "? 'restore'" in text:
        return "last drill"
    if "status = 'success'" in text:
        return "last success"
    if "'trigger'" in text:
        return "already ran this period?"
    if "get_latest_backup_verification" in text and "get_backup_verification_history" in text:
        return "calls the functions, counts 7 days"
    if "pg_catalog" in text or "information_schema" in text:
        return "catalog: " + text[:50]
    if "verification_details" in text and "ORDER BY" in text:
        return "newest row"
    return text[:60]


def pgbv_reads(conn: psycopg.Connection, settings, now: datetime, base) -> list[tuple[str, str, object, object, bool]]:
    """(label, when pgbv sends it, query, params, headline): the migration's functions, then
    what pgbv's own code sends, recorded by calling it (snapshot.read_target, record's reads,
    the daemon's period test, the success_rate and log_functions checks)."""
    from exporter.checks.base import CheckContext
    from exporter.daemon import Daemon

    out: list[tuple[str, str, object, object, bool]] = [
        ("get_latest_backup_verification()", "the migration's function",
         "SELECT * FROM get_latest_backup_verification()", None, True),
        ("get_backup_verification_history(7)", "the migration's function; `pgbv history`",
         "SELECT * FROM get_backup_verification_history(7)", None, True),
    ]
    by_name = {t.name: t for t in settings.targets}

    def record_calls(who: str, call, keep=lambda label: True, headline=lambda label: False, prefix: str = "") -> None:
        recorder = Recorder(conn)
        with conn.transaction(force_rollback=True):  # as in pgbv: reads in a transaction
            call(recorder)
        for query, params in recorder.sent:
            label = describe(conn, query)
            if keep(label):
                out.append((f"{prefix}{label}", who, query, params, headline(label)))

    record_calls("every refresh, each target", lambda c: snapshot.read_target(c, by_name["app03"], True, now=now),
                 headline=lambda label: label == "success ratio", prefix="snapshot: ")
    for name, what in (("app00", "weekly drills"), ("app01", "drills enabled, none yet")):
        record_calls("every refresh, drill targets", lambda c, n=name: snapshot.read_target(c, by_name[n], True, now=now),
                     keep=lambda label: "drill" in label, prefix=f"snapshot ({name}, {what}): ")
    record_calls("every run", lambda c: record.previous_details(c, "app03"), prefix="run: previous details: ")
    record_calls("every run of a drill target", lambda c: record.last_good_drill(c, "app01"),
                 prefix="run: drill due? (app01, none yet): ")
    daemon = Daemon(settings)
    record_calls("every scheduled run (daemon)", lambda c: daemon._already_ran(c, by_name["app03"]), prefix="daemon: ")
    ctx = dict(target=by_name["app03"], backup=None, previous=None, now=now)
    record_calls("every run", lambda c: success_rate.CHECK.run(CheckContext(conn=c, log_conn=c, **ctx)),
                 headline=lambda label: label == "success ratio", prefix="success_rate check: ")
    record_calls("every run", lambda c: log_functions.CHECK.run(CheckContext(conn=c, log_conn=c, **ctx)),
                 prefix="log_functions check: ")
    return out


# What-if: the target as a real column, the alternative to what ships. pgbv filters on
# backup_verification_log_target(verification_details), a function declared costly so
# that the planner keeps to the target index instead of opening every document in the
# window (sql/20261127_index_..._target_function.sql); each matching row is still read
# from the heap for its status. A stored generated column with status included would be
# read by an index-only scan, at the price of a new column (a contract change) and a
# table rewrite: measured here, not shipped.
WHATIF_COLUMN = "whatif_target"
WHATIF_DDL = (
    f"ALTER TABLE backup_verification_log ADD COLUMN {WHATIF_COLUMN} text "
    "GENERATED ALWAYS AS (verification_details->>'target') STORED",
    f"CREATE INDEX whatif_target_status ON backup_verification_log ({WHATIF_COLUMN}, verified_at DESC) INCLUDE (status)",
    "VACUUM ANALYZE backup_verification_log",
)


def target_column_whatif(conn: psycopg.Connection, settings, now: datetime) -> dict:
    """Applies WHATIF_DDL on this benchmark's own table, measures the ratio read and the refresh
    with snapshot's ratio query pointed at the column (in this process only), then undoes it."""
    original = record.SUCCESS_RATIOS_SQL
    patched = original.replace(record.TARGET_OF, WHATIF_COLUMN)
    if patched == original:
        return {}
    t = time.monotonic()
    for statement in WHATIF_DDL:
        conn.execute(statement)
    build = time.monotonic() - t
    params = {"target": "app03", "now": now, "since_short": now - timedelta(days=7), "since_long": now - timedelta(days=30)}
    out: dict = {"build_seconds": build}
    try:
        plan = explain(conn, patched, params, "json")
        out["ratio_seconds"] = timed(conn, patched, params, 20)
        out["ratio_scans"] = scans(plan)
        out["ratio_plan"] = explain(conn, patched, params, "text")
        record.SUCCESS_RATIOS_SQL = patched
        t = time.perf_counter()
        for target in settings.targets:
            snapshot.read_target(conn, target, True, now=now)
        out["refresh_seconds"] = time.perf_counter() - t
    finally:
        record.SUCCESS_RATIOS_SQL = original
        conn.execute("DROP INDEX whatif_target_status")
        conn.execute(f"ALTER TABLE backup_verification_log DROP COLUMN {WHATIF_COLUMN}")
    return out


def main() -> None:
    args = arguments(__doc__)
    sizes = (20_000, 60_000) if args.quick else SIZES
    report = Report("logtable", f"4. The log table at {sizes[-1]:,} rows", quick=args.quick)
    base = workdir("logtable")
    cluster = Cluster(base, {"autovacuum": "off"}).start()  # VACUUM ANALYZE after each step, as autovacuum would
    try:
        # A real verification's document, as the template of every row.
        template = make_demo_template(cluster)
        cluster.create_db("seed_app", template)
        cluster.execute("TRUNCATE backup_verification_log", dbname="seed_app")
        seed = load_settings(write_config(base / "seed.yml", [{"name": "seed_app", "dsn": cluster.dsn("seed_app"),
                                                               "checks": SEED_CHECKS}],
                                          spool_dir=str(base / "spool")), {})
        verify_target(seed.targets[0])
        details = cluster.execute("SELECT verification_details FROM backup_verification_log", dbname="seed_app")[0][0]
        details_bytes = len(json.dumps(details))

        cluster.create_db("central_log")
        cluster.migrate_sql("central_log")
        log_dsn = cluster.dsn("central_log")
        indexes = [r[0] for r in cluster.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'backup_verification_log' ORDER BY indexname",
            dbname="central_log")]
        backup = {"source": "directory", "path": str(base), "pattern": "none"}
        targets = []
        for i in range(TARGETS):
            drills = i in (0, 1)
            targets.append({"name": f"app{i:02d}", "dsn": log_dsn, "log_dsn": log_dsn, "checks": SEED_CHECKS,
                            "backup": backup, "restore": {"enabled": drills}})
        settings = load_settings(write_config(base / "pgbv.yml", targets, spool_dir=str(base / "spool")), {})

        steps = []
        whatif: dict = {}
        plans: dict[str, str] = {}
        done = 0
        # A session with pgbv's own settings (db.connect_dsn): no statement prepared on the
        # server, no parallel query, its lock timeout; writable, and a statement timeout long
        # enough to load a million rows. Every read below is planned as pgbv's are.
        conn = connect_dsn(log_dsn, None, target=settings.targets[0], read_only=False, autocommit=True,
                           statement_timeout_seconds=3600)
        for size in sizes:
            t = time.monotonic()
            fill(conn, done, size, details)
            done = size
            conn.execute("VACUUM ANALYZE backup_verification_log")
            loaded = time.monotonic() - t
            table_bytes = conn.execute("SELECT pg_total_relation_size('backup_verification_log')").fetchone()[0]
            now = datetime.now(timezone.utc)
            # The snapshot refresh: every target's picture, as the daemon reads it (connection excluded).
            passes = []
            per_target = {}
            for _ in range(3):
                if passes and passes[0] > 3:
                    break  # one pass is enough to see seconds
                t = time.perf_counter()
                for target in settings.targets:
                    s = time.perf_counter()
                    snapshot.read_target(conn, target, True, now=now)
                    per_target.setdefault(target.name, []).append(time.perf_counter() - s)
                passes.append(time.perf_counter() - t)
            measured = []
            for label, who, query, params, headline in pgbv_reads(conn, settings, now, base):
                plan = explain(conn, query, params, "json")
                server = (plan["Execution Time"] + plan.get("Serialization", {}).get("Time", 0.0)) / 1000
                repeat = 20 if server < 0.05 else 3 if server < 1 else 1
                measured.append({"label": label, "who": who, "seconds": timed(conn, query, params, repeat),
                                 "server": server, "scans": scans(plan), "headline": headline})
                if size == sizes[-1] and headline:
                    plans[label] = explain(conn, query, params, "text")
            # cleanup_old_backup_verification_logs(90): timed in a transaction rolled back, so the
            # table keeps its rows; its DELETE's plan through auto_explain (nested statements).
            notices: list[str] = []
            conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
            with conn.transaction(force_rollback=True):
                conn.execute("LOAD 'auto_explain'")
                for setting, value in (("log_min_duration", "0"), ("log_analyze", "on"), ("log_buffers", "on"),
                                       ("log_nested_statements", "on"), ("log_level", "notice")):
                    conn.execute(f"SET LOCAL auto_explain.{setting} = {value}")
                t = time.perf_counter()
                deleted = conn.execute("SELECT cleanup_old_backup_verification_logs(90)").fetchone()[0]
                cleanup_seconds = time.perf_counter() - t
            conn.execute("RESET ALL")
            delete_plan = next((n for n in notices if "DELETE" in n), "\n".join(notices))
            measured.append({"label": "cleanup_old_backup_verification_logs(90)", "who": "daily (daemon), `pgbv cleanup`",
                             "seconds": cleanup_seconds, "server": cleanup_seconds, "headline": True,
                             "scans": text_scans(delete_plan), "deleted": deleted})
            if size == sizes[-1]:
                plans["cleanup_old_backup_verification_logs(90)"] = delete_plan
            steps.append({"rows": size, "load_seconds": loaded, "table_bytes": table_bytes,
                          "refresh": statistics.median(passes),
                          "per_target": {k: statistics.median(v) for k, v in per_target.items()},
                          "queries": measured})
            if size == sizes[-1]:
                whatif = target_column_whatif(conn, settings, now)
            print(f"{size:,} rows ({table_bytes / 2**20:.0f} MiB, loaded in {loaded:.1f} s): refresh of {TARGETS} "
                  f"targets {statistics.median(passes) * 1000:.1f} ms", flush=True)
            for m in measured:
                print(f"   {m['label']:45s} {m['seconds'] * 1000:10.3f} ms  {', '.join(m['scans'])}", flush=True)
        conn.close()
    finally:
        discard(cluster, base, args.keep)

    last = steps[-1]
    report.say(f"verification_details: the document of a real run of the seed application ({details_bytes:,} bytes "
               f"as JSON) with target, trigger and duration set per row; {TARGETS} targets in one log database; "
               f"one row every {STEP_SECONDS} s (each target every 5 min). Table with its 5 indexes: "
               + ", ".join(f"{s['rows']:,} rows = {s['table_bytes'] / 2**20:.0f} MiB" for s in steps)
               + ". VACUUM ANALYZE after each load (autovacuum would). Times are medians of 20 executions "
               "(3 for those over 50 ms, 1 over 1 s) over one open connection; the cleanup ran once per size, in a "
               "transaction rolled back.")
    report.say()
    report.say("Round trip: from psycopg's execute to the last row fetched and decoded (what pgbv waits for). "
               "Server: EXPLAIN (ANALYZE, SERIALIZE) execution plus serialization time (detoasting and output "
               "included) at the largest size.")
    report.say()
    def at(step: dict, label: str) -> str:
        found = [m for m in step["queries"] if m["label"] == label]
        return f"{found[0]['seconds'] * 1000:.3f} ms" if found else "-"

    report.table(["query", "sent", *[f"round trip, {s['rows']:,} rows" for s in steps],
                  f"server, {last['rows']:,}", f"scans at {last['rows']:,}"],
                 [[m["label"], m["who"], *[at(s, m["label"]) for s in steps],
                   f"{m['server'] * 1000:.3f} ms", "; ".join(m["scans"]) or "-"] for m in last["queries"]])
    report.say("Indexes of backup_verification_log (from the migrations in sql/): "
               + "; ".join(f"`{d}`" for d in indexes) + ".")
    report.say()
    report.say("cleanup_old_backup_verification_logs(90) deleted "
               + ", ".join(f"{s['queries'][-1].get('deleted', 0):,} rows at {s['rows']:,}" for s in steps)
               + " (rolled back).")
    report.say()
    if whatif:
        ratio_now = next((m for m in last["queries"] if m["label"] == "snapshot: success ratio"), None)
        report.say(f"What-if (not what pgbv ships: the alternative that changes the table's columns), on the same {last['rows']:,} rows: "
                   f"the target as a stored generated column with an index on (target, verified_at DESC) INCLUDE "
                   f"(status) (added, indexed and vacuumed in {whatif['build_seconds']:.1f} s; a table rewrite), and "
                   f"snapshot's ratio query reading the column: the ratio read "
                   f"{ratio_now['seconds'] * 1000 if ratio_now else float('nan'):.1f} ms -> "
                   f"{whatif['ratio_seconds'] * 1000:.1f} ms ({'; '.join(whatif['ratio_scans'])}); the refresh of "
                   f"{TARGETS} targets {last['refresh'] * 1000:.1f} ms -> {whatif['refresh_seconds'] * 1000:.1f} ms.")
        report.say()
        plans["what-if: snapshot: success ratio, from the column"] = whatif["ratio_plan"]
    report.say(f"Snapshot refresh (read_target for all {TARGETS} targets, median of 3 passes): "
               + ", ".join(f"{s['rows']:,} rows: {s['refresh'] * 1000:.1f} ms" for s in steps) + ".")
    report.say()
    report.table(["target", *[f"{s['rows']:,} rows" for s in steps]],
                 [[name, *[f"{s['per_target'][name] * 1000:.2f} ms" for s in steps]] for name in last["per_target"]])
    report.say(f"Plans at {last['rows']:,} rows:")
    report.say()
    for label, plan in plans.items():
        report.say(f"`{label}`:")
        report.say()
        report.code(plan)

    latest = last["queries"][0]["seconds"]
    report.target(f"get_latest_backup_verification() at {last['rows']:,} rows", "< 1 ms",
                  f"{latest * 1000:.3f} ms (server {last['queries'][0]['server'] * 1000:.3f} ms)", latest < 0.001)
    # The log table's reads: scans of backup_verification_log or its indexes (catalog look-ups of
    # the checks read small system tables, where a sequential scan is the right plan).
    reads = [{**m, "scans": [x for x in m["scans"] if "backup_verification_log" in x]}
             for m in last["queries"] if not m["label"].startswith("cleanup")]
    # A bitmap heap scan is driven by bitmap index scans: it counts as a read through an index.
    bad = [f"{m['label']} ({'; '.join(m['scans'])})" for m in reads
           if any(not s.startswith(("Index Scan", "Index Only Scan", "Bitmap")) for s in m["scans"])]
    bitmap: list[str] = []
    earlier = sorted({f"{m['label']} at {s['rows']:,}" for s in steps[:-1] for m in s["queries"]
                      if not m["label"].startswith("cleanup")
                      and any(x.startswith("Seq Scan") and "backup_verification_log" in x for x in m["scans"])})
    report.target(f"every read uses an index or index-only scan (at {last['rows']:,} rows)", "no Seq Scan",
                  "all index scans" if not bad and not bitmap else "; ".join(bad + [f"{b} (bitmap)" for b in bitmap]),
                  not bad and not bitmap,
                  (("sequential scans at smaller sizes, where the 30-day window is most of the table: "
                    + "; ".join(earlier) + ". ") if earlier else "")
                  + "An index scan here still reads and detoasts every row it walks: see the times")
    slow = [f"{m['label']}: {m['seconds'] * 1000:.1f} ms" for m in reads if m["seconds"] > 0.010]
    report.target(f"reads stay cheap at {last['rows']:,} rows (not an issue target; for the notes)", "each < 10 ms",
                  "all < 10 ms" if not slow else "; ".join(slow), None)
    growth = last["refresh"] / steps[0]["refresh"]
    report.target("snapshot refresh does not slow down as the table grows",
                  f"{steps[0]['rows']:,} -> {last['rows']:,} rows: within 1.5x",
                  " -> ".join(f"{s['refresh'] * 1000:.1f} ms" for s in steps) + f" ({growth:.2f}x)", growth <= 1.5,
                  f"with the target column (what-if): {whatif['refresh_seconds'] * 1000:.1f} ms at {last['rows']:,}"
                  if whatif else "")
    report.data = {"steps": steps, "details_bytes": details_bytes, "indexes": indexes,
                   "whatif": {k: v for k, v in whatif.items() if k != "ratio_plan"}}
    report.finish(args.json)


if __name__ == "__main__":
    main()
