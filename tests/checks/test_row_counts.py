"""row_counts against a real database: estimates from the leaves' statistics, exact
counts where they are small, stale or empty, drops from the highest count of the
window (kept until accepted), partitioned tables, empty tables, and a constant
number of statements whatever the number of tables."""

from datetime import datetime, timedelta, timezone

import psycopg
from psycopg import sql

from exporter.checks.base import CheckContext
from exporter.checks.row_counts import CHECK, Acceptance
from exporter.checks.runner import run_check
from exporter.db import connect
from tests.checks.catalog_support import (
    as_user, dbname, locked, make_tables, role_without_privileges, run_prepared,
)
from tests.checks.helpers import check_once
from tests.conftest import SEED_CHECKS, make_target, execute as _sql

SEED_COUNTS = {
    "organizations": 1, "profiles": 17, "agents": 2, "appointments": 23,
    "contacts": 10, "call_logs": 4, "knowledge_base_chunks": 8,
}


def checks_with(**keys):
    return {**SEED_CHECKS, **keys}


def baseline_of(result) -> dict:
    """What the next run reads from this one (verify.py lifts row_baseline into verification_details)."""
    return {"row_baseline": result.data["row_baseline"]}


def deleted(dsn: str, statement: str) -> None:
    # The server publishes a session's counters within a second of commit (at most 10 s
    # when the session then sits idle); a test asks for it at once instead of waiting.
    _sql(dsn, statement, "SELECT pg_stat_force_next_flush()")


def test_first_run_on_demo_is_a_clean_pass_counted_exactly(demo_db):
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "pass", result.message
    assert result.message == "65 rows in 7 critical tables (all counted exactly); no previous run to compare with"
    assert result.data["row_counts"] == SEED_COUNTS
    assert set(result.data["row_count_methods"].values()) == {"exact"}


def test_tables_above_exact_count_max_rows_use_estimates(demo_db):
    # A database made from a template starts with no counters: ANALYZE sets them, as
    # autovacuum does on a live server.
    _sql(demo_db, "ANALYZE")
    target = make_target(demo_db, checks=checks_with(exact_count_max_rows=10))
    result = check_once(CHECK, target)
    assert result.outcome == "pass", result.message
    assert result.data["row_counts"] == SEED_COUNTS
    # Below 10 rows: counted; 10 and more: the estimate.
    assert result.data["row_count_methods"] == {
        name: "exact" if rows < 10 else "estimate" for name, rows in SEED_COUNTS.items()
    }
    assert result.message.startswith("65 rows in 7 critical tables (4 counted exactly)")


def test_unchanged_second_run_passes(demo_db):
    first = check_once(CHECK, make_target(demo_db))
    second = check_once(CHECK, make_target(demo_db), previous=baseline_of(first))
    assert second.outcome == "pass"
    assert second.message == (
        "65 rows in 7 critical tables (all counted exactly); no drop beyond 10% from the highest count of the last 7 days"
    )


def test_rows_deleted_between_runs_fail_naming_table_and_both_numbers(demo_db):
    target = make_target(demo_db)
    first = check_once(CHECK, target)
    _sql(demo_db, "DELETE FROM appointments WHERE id > 3")  # no ANALYZE: counted exactly anyway
    second = check_once(CHECK, target, previous=baseline_of(first))
    assert second.outcome == "fail"
    today = datetime.now(timezone.utc).date().isoformat()
    assert (f"appointments has 3 rows, 87.0% below its highest count of the last 7 days (23 on {today}; "
            "more than 10%)") in second.message
    assert second.message.endswith("if intended: pgbv accept-rows --target app")
    assert second.data["row_counts"]["appointments"] == 3


def test_a_drop_within_the_limit_passes(demo_db):
    target = make_target(demo_db)
    first = check_once(CHECK, target)
    _sql(demo_db, "DELETE FROM appointments WHERE id = 23")  # 1 of 23: 4.3%
    second = check_once(CHECK, target, previous=baseline_of(first))
    assert second.outcome == "pass", second.message
    loose = make_target(demo_db, checks={**SEED_CHECKS, "max_row_drop_percent": 4})
    assert check_once(CHECK, loose, previous=baseline_of(first)).outcome == "fail"


def test_a_run_recorded_before_baselines_is_compared_by_its_row_counts(demo_db):
    previous = {"row_counts": {**SEED_COUNTS, "appointments": 50}}
    result = check_once(CHECK, make_target(demo_db), previous=previous)
    assert result.outcome == "fail"
    assert "appointments has 23 rows, 54.0% below" in result.message


def test_previous_without_a_usable_count_is_no_comparison(demo_db):
    previous = {"row_counts": {"appointments": None, "contacts": "ten"}}
    result = check_once(CHECK, make_target(demo_db), previous=previous)
    assert result.outcome == "pass"
    assert result.message.endswith("no previous run to compare with")


def test_truncated_table_is_counted_exactly_and_fails_unless_allowed(demo_db):
    _sql(demo_db, "TRUNCATE call_logs")
    result = check_once(CHECK, make_target(demo_db))
    assert result.outcome == "fail"
    assert "call_logs is empty" in result.message
    assert result.data["row_counts"]["call_logs"] == 0
    assert result.data["row_count_methods"]["call_logs"] == "exact"

    allowed = make_target(demo_db, checks={**SEED_CHECKS, "allow_empty_tables": ["call_logs"]})
    assert check_once(CHECK, allowed).outcome == "pass"


def test_never_analyzed_table_gets_an_exact_count(demo_db):
    _sql(
        demo_db,
        "CREATE TABLE leads (id int) WITH (autovacuum_enabled = false)",
        "INSERT INTO leads SELECT generate_series(1, 42)",
        "ANALYZE agents",
    )
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ["leads", "agents"]}))
    assert result.outcome == "pass", result.message
    assert result.data["row_counts"] == {"leads": 42, "agents": 2}
    assert result.data["row_count_methods"] == {"leads": "exact", "agents": "exact"}
    # Even where no table is small enough to count: never analyzed means stale.
    large_only = make_target(demo_db, checks={"critical_tables": ["leads", "agents"], "exact_count_max_rows": 0})
    result = check_once(CHECK, large_only)
    assert result.data["row_count_methods"] == {"leads": "exact", "agents": "estimate"}
    assert result.data["stale_statistics"] == ["leads"]

    # A table new since the last run is not compared, and the message says so.
    again = check_once(
        CHECK, make_target(demo_db, checks={"critical_tables": ["leads", "agents"]}), previous={"row_counts": {"agents": 2}}
    )
    assert again.outcome == "pass"
    assert again.message == ("44 rows in 2 critical tables (all counted exactly); no drop beyond 10% from the highest "
                             "count of the last 7 days (no earlier count for leads)")


def test_exact_count_quotes_schema_and_table_names(demo_db):
    _sql(
        demo_db,
        'CREATE SCHEMA "Sales Ops"',
        'CREATE TABLE "Sales Ops"."Leads ""2026""" (id int) WITH (autovacuum_enabled = false)',
        'INSERT INTO "Sales Ops"."Leads ""2026""" SELECT generate_series(1, 5)',
    )
    name = 'Sales Ops.Leads "2026"'
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": [name]}))
    assert result.outcome == "pass", result.message
    assert result.data["row_counts"] == {name: 5}


def test_missing_and_hostile_tables_are_skipped_but_named(demo_db):
    _sql(demo_db, "CREATE TABLE t (id int)")
    hostile = 'x"; DROP TABLE t; --'
    result = check_once(CHECK, make_target(demo_db, checks={"critical_tables": ["agents", hostile]}))
    assert result.outcome == "pass"
    assert result.message == (f"2 rows in 1 critical table (all counted exactly); no previous run to compare with; "
                              f"not found (see critical_tables): {hostile}")
    assert result.data["row_counts"] == {"agents": 2}
    with psycopg.connect(demo_db) as conn:
        assert conn.execute("SELECT to_regclass('public.t') IS NOT NULL").fetchone()[0]


def test_constant_statements_and_the_exact_count_limit(make_db):
    dsn = make_db()
    names = make_tables(dsn, 200)

    def run(tables, **keys):
        return run_prepared(CHECK, make_target(dsn, checks={"critical_tables": tables, **keys}))

    five, five_statements = run(names[:5])
    hundred, hundred_statements = run(names[:100])
    assert five.data["row_count_methods"] == dict.fromkeys(names[:5], "exact")
    assert hundred.outcome == "pass" and hundred.data["row_counts"] == dict.fromkeys(names[:100], 3)
    # find_tables, the leaves' statistics, SET LOCAL row_security, the counts
    assert five_statements == hundred_statements == 4

    # Never analyzed, so stale: past the limit the rest are unknown, said so.
    over, over_statements = run(names)
    assert over.outcome == "warn"
    assert list(over.data["row_count_methods"].values()).count("exact") == 100
    assert list(over.data["row_count_methods"].values()).count("unknown") == 100
    assert "row count unknown for t100, t101" in over.message and "run ANALYZE" in over.message
    assert over_statements == five_statements

    _sql(dsn, "ANALYZE")
    # Small tables are counted exactly up to the limit; the rest use their (trusted) estimates.
    large, large_statements = run(names)
    assert large.outcome == "pass", large.message
    assert list(large.data["row_count_methods"].values()).count("exact") == 100
    assert large.data["row_counts"] == dict.fromkeys(names, 3)
    assert large_statements == five_statements
    small, small_statements = run(names[:5], exact_count_max_rows=0)
    estimated, estimated_statements = run(names, exact_count_max_rows=0)
    assert set(estimated.data["row_count_methods"].values()) == {"estimate"}
    assert estimated.data["row_counts"] == dict.fromkeys(names, 3)
    assert small_statements == estimated_statements == 2


def test_timeout_while_counting_is_an_error(demo_db):
    _sql(demo_db, "TRUNCATE call_logs")  # now needs an exact count, which waits for the lock
    with locked(demo_db, "call_logs"):
        result = check_once(CHECK, make_target(demo_db, statement_timeout_seconds=0.5))
    assert result.outcome == "error"
    assert "timed out" in result.message


def test_lock_timeout_is_an_error(demo_db):
    _sql(demo_db, "TRUNCATE call_logs")
    with locked(demo_db, "call_logs"):
        result = check_once(CHECK, make_target(demo_db, statement_timeout_seconds=10))
    assert result.outcome == "error"
    assert "lock_timeout" in result.message


def test_no_select_privilege_is_an_error(demo_db, pg_server):
    # Rows, and no statistics to go by: only count(*) could say how many.
    _sql(demo_db, "CREATE TABLE fresh (id int) WITH (autovacuum_enabled = false)",
         "INSERT INTO fresh SELECT generate_series(1, 3)")
    with role_without_privileges(pg_server, dbname(demo_db)) as role:
        result = check_once(CHECK, make_target(as_user(demo_db, role), checks={"critical_tables": ["fresh"]}))
    assert result.outcome == "error"
    assert result.message.startswith("permission denied")


def test_an_empty_table_is_known_without_privileges(demo_db, pg_server):
    # A truncated table has no statistics (reltuples -1) but no page either: empty for
    # certain, without the count(*) this role may not run.
    _sql(demo_db, "TRUNCATE call_logs")
    with role_without_privileges(pg_server, dbname(demo_db)) as role:
        result = check_once(CHECK, make_target(as_user(demo_db, role),
                                               checks={"critical_tables": ["call_logs"]}))
    assert result.outcome == "fail", result.message
    assert "call_logs is empty" in result.message
    assert result.data["row_counts"] == {"call_logs": 0}


def test_rows_hidden_by_row_level_security_are_an_error_not_an_empty_table(demo_db, pg_server):
    _sql(
        demo_db,
        "CREATE TABLE secrets (id int) WITH (autovacuum_enabled = false)",
        "INSERT INTO secrets SELECT generate_series(1, 7)",
        "ALTER TABLE secrets ENABLE ROW LEVEL SECURITY",
        "CREATE POLICY nothing ON secrets USING (false)",
    )
    with role_without_privileges(pg_server, dbname(demo_db)) as role:
        pg_server.execute(sql.SQL("GRANT SELECT ON secrets TO {}").format(sql.Identifier(role)), dbname=dbname(demo_db))
        result = check_once(CHECK, make_target(as_user(demo_db, role), checks={"critical_tables": ["secrets"]}))
    assert result.outcome == "error"
    assert "row-level security" in result.message


def accept_once(target, previous, acceptance):
    """One row_counts run as `pgbv accept-rows` runs it."""
    with connect(target) as conn:
        ctx = CheckContext(target=target, conn=conn, log_conn=conn, backup=None, previous=previous,
                           now=datetime.now(timezone.utc), accept=acceptance)
        return run_check(CHECK, ctx)


EVENTS = [
    "CREATE TABLE events (id int, at date NOT NULL) PARTITION BY RANGE (at)",
    "CREATE TABLE events_2026_10 PARTITION OF events FOR VALUES FROM ('2026-10-01') TO ('2026-11-01')",
    "CREATE TABLE events_2026_11 PARTITION OF events FOR VALUES FROM ('2026-11-01') TO ('2026-12-01')"
    " PARTITION BY RANGE (at)",
    "CREATE TABLE events_2026_11a PARTITION OF events_2026_11 FOR VALUES FROM ('2026-11-01') TO ('2026-11-15')",
    "CREATE TABLE events_2026_11b PARTITION OF events_2026_11 FOR VALUES FROM ('2026-11-15') TO ('2026-12-01')",
    "INSERT INTO events SELECT g, date '2026-10-01' + (g % 61) FROM generate_series(1, 3000) g",
    "SELECT pg_stat_force_next_flush()",  # else ANALYZE's figures and then the INSERT's are added
    "ANALYZE events",  # the parent's reltuples, which autovacuum never refreshes
]


def test_truncated_partitioned_table_fails(make_db):
    dsn = make_db()
    _sql(dsn, *EVENTS)
    for max_rows in (1_000_000, 0):  # counted exactly, and from the leaves' statistics
        target = make_target(dsn, checks={"critical_tables": ["events"], "exact_count_max_rows": max_rows})
        healthy = check_once(CHECK, target)
        assert healthy.outcome == "pass", healthy.message
        assert healthy.data["row_counts"] == {"events": 3000}
    assert healthy.data["row_count_methods"] == {"events": "estimate"}

    _sql(dsn, "TRUNCATE events")
    with psycopg.connect(dsn) as conn:  # the fault of issue 13: the parent still says 3000
        assert conn.execute("SELECT reltuples FROM pg_class WHERE relname = 'events'").fetchone()[0] == 3000
    for max_rows in (1_000_000, 0):
        target = make_target(dsn, checks={"critical_tables": ["events"], "exact_count_max_rows": max_rows})
        after = check_once(CHECK, target, previous=baseline_of(healthy))
        assert after.outcome == "fail", after.message
        assert after.data["row_counts"] == {"events": 0}
        assert "events is empty" in after.message and "events has 0 rows, 100.0% below" in after.message


def test_deletion_checked_before_any_analyze_fails_from_the_estimate(make_db):
    dsn = make_db()
    _sql(dsn, "CREATE TABLE orders (id int) WITH (autovacuum_enabled = false)",
         "INSERT INTO orders SELECT generate_series(1, 5000)", "SELECT pg_stat_force_next_flush()", "ANALYZE orders")
    target = make_target(dsn, checks={"critical_tables": ["orders"], "exact_count_max_rows": 1000})
    first = check_once(CHECK, target)
    assert first.outcome == "pass" and first.data["row_count_methods"] == {"orders": "estimate"}
    deleted(dsn, "DELETE FROM orders WHERE id > 1000")  # 80%, and no ANALYZE
    second = check_once(CHECK, target, previous=baseline_of(first))
    assert second.outcome == "fail", second.message
    assert "orders has 1000 rows, 80.0% below its highest count" in second.message
    # Estimated 1000, no longer below exact_count_max_rows... counted exactly as a suspect drop all the same.
    assert second.data["row_counts"] == {"orders": 1000}


def test_lost_statistics_are_stale_and_counted_exactly(make_db):
    dsn = make_db()
    _sql(dsn, "CREATE TABLE orders (id int) WITH (autovacuum_enabled = false)",
         "INSERT INTO orders SELECT generate_series(1, 5000)", "SELECT pg_stat_force_next_flush()",
         "ANALYZE orders", "SELECT pg_stat_force_next_flush()",
         "SELECT pg_stat_reset_single_table_counters('orders'::regclass)")  # as pg_stat_reset() or a crash does
    result = check_once(CHECK, make_target(dsn, checks={"critical_tables": ["orders"], "exact_count_max_rows": 0}))
    assert result.outcome == "pass", result.message
    assert result.data["row_counts"] == {"orders": 5000}
    assert result.data["row_count_methods"] == {"orders": "exact"}
    assert result.data["stale_statistics"] == ["orders"]


def test_slow_leak_fails_on_the_run_the_total_passes_the_limit(make_db):
    dsn = make_db()
    _sql(dsn, "CREATE TABLE orders (id int)", "INSERT INTO orders SELECT generate_series(1, 1000)")
    target = make_target(dsn, checks={"critical_tables": ["orders"]})
    day = datetime.now(timezone.utc)
    result = check_once(CHECK, target, now=day)
    outcomes = []
    for step, keep in enumerate((950, 902, 857), start=1):  # 5% a day: 5.0%, 9.8%, 14.3% in all
        _sql(dsn, f"DELETE FROM orders WHERE id > {keep}")
        result = check_once(CHECK, target, previous=baseline_of(result), now=day + timedelta(days=step))
        outcomes.append(result.outcome)
    assert outcomes == ["pass", "pass", "fail"]
    assert "orders has 857 rows, 14.3% below its highest count of the last 7 days (1000 on" in result.message


def test_slow_leak_within_one_day_adds_up_too(make_db):
    dsn = make_db()
    _sql(dsn, "CREATE TABLE orders (id int)", "INSERT INTO orders SELECT generate_series(1, 1000)")
    target = make_target(dsn, checks={"critical_tables": ["orders"]})
    result = check_once(CHECK, target)
    outcomes = []
    for keep in (950, 902, 857):
        _sql(dsn, f"DELETE FROM orders WHERE id > {keep}")
        result = check_once(CHECK, target, previous=baseline_of(result))
        outcomes.append(result.outcome)
    assert outcomes == ["pass", "pass", "fail"]


def test_a_drop_keeps_failing_beyond_the_window_until_accepted(demo_db):
    target = make_target(demo_db)
    day = datetime.now(timezone.utc)
    first = check_once(CHECK, target, now=day)
    _sql(demo_db, "DELETE FROM knowledge_base_chunks WHERE id IN (SELECT id FROM knowledge_base_chunks LIMIT 4)")  # 8 -> 4
    result = first
    for step in (1, 2, 10):  # the next run, the day after, and past the 7-day window
        result = check_once(CHECK, target, previous=baseline_of(result), now=day + timedelta(days=step))
        assert result.outcome == "fail", (step, result.message)
        assert "knowledge_base_chunks has 4 rows, 50.0% below" in result.message

    accepted = accept_once(target, baseline_of(result), Acceptance(by="alice", reason="purged test chunks",
                                                                   tables=("knowledge_base_chunks",)))
    assert accepted.outcome == "pass", accepted.message
    assert accepted.data["accepted_rows"] == {
        "by": "alice", "reason": "purged test chunks", "tables": {"knowledge_base_chunks": {"from": 8, "to": 4}},
    }
    assert "new counts accepted by alice (purged test chunks): knowledge_base_chunks 8 -> 4" in accepted.message
    after = check_once(CHECK, target, previous=baseline_of(accepted))
    assert after.outcome == "pass", after.message


def test_acceptance_of_one_table_leaves_the_others_failing(demo_db):
    target = make_target(demo_db)
    first = check_once(CHECK, target)
    _sql(demo_db, "DELETE FROM knowledge_base_chunks WHERE id IN (SELECT id FROM knowledge_base_chunks LIMIT 4)",
         "DELETE FROM appointments WHERE id > 3")
    accepted = accept_once(target, baseline_of(first), Acceptance(by="alice", tables=("knowledge_base_chunks",)))
    assert accepted.outcome == "fail"
    assert "appointments has 3 rows" in accepted.message and "knowledge_base_chunks has" not in accepted.message
    assert check_once(CHECK, target, previous=baseline_of(accepted)).outcome == "fail"


def test_the_window_forgets_counts_older_than_it(demo_db):
    target = make_target(demo_db)
    today = datetime.now(timezone.utc).date()
    old = (today - timedelta(days=7)).isoformat()
    recent = (today - timedelta(days=6)).isoformat()
    # 400 appointments 7 days ago is outside a 7-day window (today and the 6 days before).
    stored = {"row_baseline": {"window_days": 7, "tables": {"appointments": [[old, 400], [recent, 24]]}}}
    result = check_once(CHECK, target, previous=stored)
    assert result.outcome == "pass", result.message
    # Read by the configured spelling (runs before baselines were keyed by the table), stored by the table.
    assert result.data["row_baseline"]["tables"]["public.appointments"] == [[recent, 24], [today.isoformat(), 23]]
    wide = make_target(demo_db, checks=checks_with(row_drop_window_days=8))
    assert check_once(CHECK, wide, previous=stored).outcome == "fail"


def test_counters_that_counted_rows_twice_are_stale(make_db):
    # INSERT then ANALYZE within a second in one session: the INSERT's counts, still
    # pending, are added after ANALYZE set the counters: 2000 live rows in 1000.
    dsn = make_db()
    _sql(dsn, "CREATE TABLE orders (id int) WITH (autovacuum_enabled = false)",
         "INSERT INTO orders SELECT generate_series(1, 1000)", "ANALYZE orders", "SELECT pg_stat_force_next_flush()")
    with psycopg.connect(dsn) as conn:
        live = conn.execute("SELECT pg_stat_get_live_tuples('orders'::regclass)").fetchone()[0]
    result = check_once(CHECK, make_target(dsn, checks={"critical_tables": ["orders"], "exact_count_max_rows": 0}))
    assert result.data["row_counts"] == {"orders": 1000}, live
    if live == 2000:  # the double count happened (the usual case)
        assert result.data["stale_statistics"] == ["orders"]
        assert result.data["row_count_methods"] == {"orders": "exact"}


def test_after_a_gap_longer_than_the_window_the_last_count_stands(demo_db):
    long_ago = (datetime.now(timezone.utc).date() - timedelta(days=20)).isoformat()
    stored = {"row_baseline": {"window_days": 7, "tables": {"appointments": [[long_ago, 50]]}}}
    result = check_once(CHECK, make_target(demo_db), previous=stored)
    assert result.outcome == "fail"
    assert f"appointments has 23 rows, 54.0% below its highest count of the last 7 days (50 on {long_ago}" in result.message


PGBENCH_TABLES = ["pgbench_accounts", "pgbench_branches", "pgbench_tellers"]


def test_healthy_pgbench_database_passes_run_after_run(make_db, pg_server):
    # A database as a new DBA tries pgbench: healthy runs pass, counted exactly and from
    # the statistics; 80 % of the accounts deleted fails either way.
    from exporter.pgtools import find_tool, run_tool

    dsn = make_db()
    pgbench = find_tool("pgbench", pg_server.version_num)
    run_tool(pgbench, ["-i", "-s", "1", "--quiet", dsn], timeout=300)
    for max_rows in (1_000_000, 0):
        target = make_target(dsn, checks={"critical_tables": PGBENCH_TABLES, "exact_count_max_rows": max_rows})
        first = check_once(CHECK, target)
        assert first.outcome == "pass", first.message
        assert first.data["row_counts"] == {"pgbench_accounts": 100_000, "pgbench_branches": 1, "pgbench_tellers": 10}
        _sql(dsn, "VACUUM ANALYZE pgbench_accounts")
        second = check_once(CHECK, target, previous=baseline_of(first))
        assert second.outcome == "pass", second.message
        assert second.data["row_counts"]["pgbench_accounts"] == 100_000
        assert second.data["row_count_methods"]["pgbench_accounts"] == ("exact" if max_rows else "estimate")
    deleted(dsn, "DELETE FROM pgbench_accounts WHERE aid > 20000")
    for max_rows in (1_000_000, 0):
        target = make_target(dsn, checks={"critical_tables": PGBENCH_TABLES, "exact_count_max_rows": max_rows})
        third = check_once(CHECK, target, previous=baseline_of(second))
        assert third.outcome == "fail", third.message
        assert "pgbench_accounts has 20000 rows, 80.0% below" in third.message


def test_stale_statistics_the_role_may_not_count_warn_naming_the_table(make_db, pg_server):
    # 80 % deleted, then the counters reset (as a crash does): the catalog still says
    # 5000 and this role may not count(*). That figure is no confirmed count.
    dsn = make_db()
    _sql(dsn, "CREATE TABLE orders (id int) WITH (autovacuum_enabled = false)",
         "INSERT INTO orders SELECT generate_series(1, 5000)", "SELECT pg_stat_force_next_flush()",
         "ANALYZE orders", "CREATE TABLE fine (id int)", "INSERT INTO fine SELECT generate_series(1, 20)",
         "ANALYZE fine", "DELETE FROM orders WHERE id > 1000", "SELECT pg_stat_force_next_flush()",
         "SELECT pg_stat_reset_single_table_counters('orders'::regclass)")
    with role_without_privileges(pg_server, dbname(dsn)) as role:
        target = make_target(as_user(dsn, role), checks={"critical_tables": ["orders", "fine"]})
        result = check_once(CHECK, target)
    assert result.outcome == "warn", result.message
    assert ("row count not confirmed for orders: statistics stale (counters reset or not yet analyzed) and the role "
            "may not count them: grant SELECT or run ANALYZE") in result.message
    assert result.data["stale_statistics"] == ["orders"]
    # The unconfirmed figure does not become a baseline; the confirmed one does.
    assert list(result.data["row_baseline"]["tables"]) == ["public.fine"]


def test_a_run_with_other_critical_tables_keeps_the_baselines_of_the_rest(demo_db):
    target = make_target(demo_db)
    first = check_once(CHECK, target)
    # One run (a DBA trying a single table) with another list: the others are carried forward.
    other = make_target(demo_db, checks=checks_with(critical_tables=["contacts"]))
    middle = check_once(CHECK, other, previous=baseline_of(first))
    assert middle.outcome == "pass", middle.message
    assert middle.data["row_baseline"]["tables"] == first.data["row_baseline"]["tables"]
    _sql(demo_db, "DELETE FROM knowledge_base_chunks WHERE id IN (SELECT id FROM knowledge_base_chunks LIMIT 4)")
    after = check_once(CHECK, target, previous=baseline_of(middle))
    assert after.outcome == "fail", after.message
    assert "knowledge_base_chunks has 4 rows, 50.0% below" in after.message


def test_a_table_respelled_finds_its_baseline(demo_db):
    first = check_once(CHECK, make_target(demo_db))
    assert "public.knowledge_base_chunks" in first.data["row_baseline"]["tables"]
    _sql(demo_db, "DELETE FROM knowledge_base_chunks WHERE id IN (SELECT id FROM knowledge_base_chunks LIMIT 4)")
    respelled = make_target(demo_db, checks=checks_with(critical_tables=["public.knowledge_base_chunks", "appointments"]))
    after = check_once(CHECK, respelled, previous=baseline_of(first))
    assert after.outcome == "fail", after.message
    assert "public.knowledge_base_chunks has 4 rows, 50.0% below" in after.message
    # A run recorded before baselines were keyed by the table: its spelling still finds it.
    today = datetime.now(timezone.utc).date().isoformat()
    old = {"row_baseline": {"window_days": 7, "tables": {"knowledge_base_chunks": [[today, 8]]}}}
    assert check_once(CHECK, make_target(demo_db), previous=old).outcome == "fail"


def test_baselines_not_counted_age_out_unless_failing(demo_db):
    today = datetime.now(timezone.utc).date()
    old = (today - timedelta(days=9)).isoformat()
    stored = {"row_baseline": {"window_days": 7, "failing": ["public.gone_failing"], "tables": {
        "public.gone_old": [[old, 5]], "public.gone_failing": [[old, 9]],
    }}}
    result = check_once(CHECK, make_target(demo_db), previous=stored)
    tables = result.data["row_baseline"]["tables"]
    assert "public.gone_old" not in tables and tables["public.gone_failing"] == [[old, 9]]
    assert result.data["row_baseline"]["failing"] == ["public.gone_failing"]


def test_one_table_under_two_spellings_is_counted_once(demo_db):
    target = make_target(demo_db, checks=checks_with(critical_tables=["contacts", "public.contacts", "agents"]))
    result = check_once(CHECK, target)
    assert result.outcome == "pass", result.message
    assert result.message.startswith("12 rows in 2 critical tables")
    assert result.data["row_counts"] == {"contacts": 10, "agents": 2}


def test_carried_baselines_are_bounded_newest_first(demo_db, monkeypatch):
    from exporter.checks import row_counts

    monkeypatch.setattr(row_counts, "MAX_CARRIED_TABLES", 2)
    today = datetime.now(timezone.utc).date()
    days = [(today - timedelta(days=back)).isoformat() for back in range(3)]
    stored = {"row_baseline": {"window_days": 7, "tables": {
        f"public.gone_{back}": [[day, 5]] for back, day in enumerate(days)}}}
    result = check_once(CHECK, make_target(demo_db), previous=stored)
    carried = [name for name in result.data["row_baseline"]["tables"] if name.startswith("public.gone_")]
    assert carried == ["public.gone_0", "public.gone_1"]
